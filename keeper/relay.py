"""Private submission: liquidations sent to a private relay instead of the public mempool.

A liquidation seen in the public mempool can be copied by a competitor with a higher tip (the
bounty goes to whoever is included first). A private relay (Flashbots Protect and the like)
hands the transaction to block builders without publishing it. The relay speaks JSON-RPC:

- ``eth_sendPrivateTransaction`` with ``{"tx": raw, "maxBlockNumber": hex, "preferences":
  {"fast": bool}}``: the relay drops the transaction after ``maxBlockNumber``;
- ``eth_sendRawTransaction`` with the raw transaction, as to a node (relays that take it so).

``Relay.send`` returns when the relay accepted the bytes and raises ``RelayError`` when it
refused them or could not be reached; ``keeper.transactions.TxManager`` then broadcasts the
same signed bytes (same nonce: one effect whichever copy is included) to the public node at
once, and does the same when the relay has not had them included within
``relay.fallback_after_blocks`` blocks. The relay URL may carry an API key: it is registered
with ``keeper.secrets`` and appears only redacted in errors and logs.
"""

from __future__ import annotations

import itertools
from typing import Any

import requests

from keeper.config import RelayConfig
from keeper.secrets import redact_url, register_url, scrub


class RelayError(RuntimeError):
    """The relay refused a transaction or could not be reached (message scrubbed)."""


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.url = config.url
        self.redacted = redact_url(config.url)
        self.actions = frozenset(config.actions)
        self.fallback_after_blocks = config.fallback_after_blocks
        self._ids = itertools.count(1)
        self._session = requests.Session()
        register_url(config.url)

    def __repr__(self) -> str:
        return f"Relay({self.redacted}, {self.config.method})"

    def takes(self, action: str | None) -> bool:
        """Whether transactions of this decision action go through the relay."""
        return action is not None and action in self.actions

    def params(self, raw: str, max_block: int) -> list[Any]:
        if self.config.method == "eth_sendRawTransaction":
            return [raw]
        return [
            {
                "tx": raw,
                "maxBlockNumber": hex(max_block),
                "preferences": {"fast": self.config.fast},
            }
        ]

    def send(self, raw: str, max_block: int) -> Any:
        """Hand ``raw`` (0x-hex signed transaction) to the relay; its answer (normally the
        transaction hash). Raises ``RelayError`` on a refusal or a transport failure."""
        payload: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": self.config.method,
            "params": self.params(raw, max_block),
        }
        try:
            response = self._session.post(
                self.url, json=payload, timeout=self.config.timeout_seconds
            )
        except requests.RequestException as exc:
            # The exception text carries the full URL (path and query too, where API keys sit,
            # not all of them recognisable as keys): only the exception's type goes out.
            raise RelayError(f"relay {self.redacted} unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise RelayError(f"relay {self.redacted} answered HTTP {response.status_code}")
        try:
            reply = response.json()
        except ValueError:
            raise RelayError(f"relay {self.redacted} answered with something not JSON") from None
        if not isinstance(reply, dict):
            raise RelayError(f"relay {self.redacted} answered with no JSON-RPC object")
        if "error" in reply:
            error = reply["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise RelayError(f"relay {self.redacted} refused: {scrub(str(message))}")
        if "result" not in reply:
            raise RelayError(f"relay {self.redacted} answered with no result")
        return reply["result"]

    def close(self) -> None:
        self._session.close()
