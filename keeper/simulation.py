"""Simulating a chunk of actions before they are sent: each one's verdict, what it returned,
the gas it uses and the gas limit to send it with, in one or two JSON-RPC batches.

Two ways, chosen by what the node answers:

* ``eth_simulateV1`` (Geth, Reth, anvil): one request per action, each on its own against
  ``latest`` (one request with several calls would run them one after the other, each seeing
  the state the previous ones left). A simulation executes the call once; ``eth_estimateGas``
  searches for the smallest limit that succeeds and executes it a dozen times: on anvil at
  10,000 accounts, 32 estimates cost ~150 ms against ~20 ms for the simulations. Its
  ``gasUsed`` is what a receipt would say: net of the refund. A limit of that much can run out
  before the refund is paid, so a second batch simulates each action again *with* the limit
  ``net * (100 + margin) / 100`` (what the keeper would send) and keeps it where that
  succeeds; where it does not, the limit is ``gas_limit_bound(net)`` (below), which holds
  without a second look.
* ``eth_call`` plus ``eth_estimateGas`` per action (every node): the node's own estimate,
  times ``(100 + margin) / 100``. Used from the first reply saying the node has no
  ``eth_simulateV1`` on.

The gas cost the profitability rule counts is the gas the action *uses* (net): what the
liquidator pays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: JSON-RPC error codes and message words of a node without a method.
_METHOD_NOT_FOUND = -32601
_UNSUPPORTED_WORDS = (
    "not found",
    "does not exist",
    "not supported",
    "unsupported",
    "not available",
)


def gas_limit_bound(net: int) -> int:
    """A gas limit under which a call that used ``net`` gas (net of its refund) succeeds again
    on the same state, rounded up.

    * EIP-3529 caps the refund at a fifth of the gas the execution consumed: consumed - refund
      = net with refund <= consumed / 5, so consumed <= 5/4 * net.
    * A CALL passes on at most 63/64 of the gas left (EIP-150): the 1/64 held back at each
      level is available again on return but must be there at the call. The clearing house
      calls the verifier, the oracles and the tokens; a token behind a proxy is one level
      more: two levels, (64/63)^2.
    """
    return -(-net * 5 * 64 * 64 // (4 * 63 * 63))


def with_margin(gas: int, margin_percent: int) -> int:
    return gas * (100 + margin_percent) // 100


class BatchRpc(Protocol):
    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Verdict:
    """One action's simulation: ``error`` is None when it succeeded."""

    returned: bytes  # the call's return data (its revert data when it reverted)
    gas_used: int  # net of the refund, as a receipt says it; 0 when it reverted
    gas_limit: int  # the limit to send with, the policy's margin included
    error: dict[str, Any] | None  # a JSON-RPC error object: {"message", "data"?}


@dataclass(frozen=True)
class Simulation:
    base_fee: int  # of the latest block
    verdicts: list[Verdict]
    round_trips: int
    method: str  # "eth_simulateV1" or "eth_estimateGas"


class Simulator:
    """Simulates chunks of transactions (``{"from", "to", "data"}``) against ``latest``."""

    def __init__(self, rpc: BatchRpc, *, gas_margin_percent: int) -> None:
        self.rpc = rpc
        self.margin = gas_margin_percent
        #: None until the node has answered an eth_simulateV1; False once it said it has none.
        self.simulate_v1: bool | None = None

    def run(self, txs: list[dict[str, str]]) -> Simulation:
        if self.simulate_v1 is not False:
            done = self._simulated(txs)
            if done is not None:
                self.simulate_v1 = True
                return done
            self.simulate_v1 = False
            log.warning("the node has no eth_simulateV1: eth_call and eth_estimateGas from now on")
        return self._estimated(txs)

    # --- eth_simulateV1 -------------------------------------------------------------------

    def _simulated(self, txs: list[dict[str, str]]) -> Simulation | None:
        calls: list[tuple[str, list[Any]]] = [("eth_getBlockByNumber", ["latest", False])]
        calls += [_simulate(tx) for tx in txs]
        replies = self.rpc.batch(calls)
        if any(_unsupported(r) for r in replies[1:]):
            return None
        base = _base_fee(replies[0])
        first = [_outcome(r) for r in replies[1:]]
        # Second look: the limit the keeper would send, where the first one succeeded.
        retry = [k for k, v in enumerate(first) if v.error is None]
        limits = {k: with_margin(first[k].gas_used, self.margin) for k in retry}
        held: set[int] = set()
        trips = 1
        if retry:
            again = self.rpc.batch([_simulate(dict(txs[k], gas=hex(limits[k]))) for k in retry])
            trips += 1
            held = {k for k, r in zip(retry, again, strict=True) if _outcome(r).error is None}
        verdicts = []
        for k, v in enumerate(first):
            if v.error is not None:
                verdicts.append(v)
                continue
            limit = (
                limits[k] if k in held else with_margin(gas_limit_bound(v.gas_used), self.margin)
            )
            verdicts.append(Verdict(v.returned, v.gas_used, limit, None))
        return Simulation(base, verdicts, trips, "eth_simulateV1")

    # --- eth_call + eth_estimateGas ----------------------------------------------------------

    def _estimated(self, txs: list[dict[str, str]]) -> Simulation:
        calls: list[tuple[str, list[Any]]] = [("eth_getBlockByNumber", ["latest", False])]
        for tx in txs:
            calls += [("eth_call", [tx, "latest"]), ("eth_estimateGas", [tx, "latest"])]
        replies = self.rpc.batch(calls)
        verdicts = []
        for k in range(len(txs)):
            call, estimate = replies[1 + 2 * k], replies[2 + 2 * k]
            failed = call if "error" in call else estimate if "error" in estimate else None
            if failed is not None:
                verdicts.append(Verdict(b"", 0, 0, failed["error"]))
                continue
            gas = int(estimate["result"], 16)
            returned = bytes.fromhex(call["result"][2:])
            verdicts.append(Verdict(returned, gas, with_margin(gas, self.margin), None))
        return Simulation(_base_fee(replies[0]), verdicts, 1, "eth_estimateGas")


def _simulate(tx: dict[str, str]) -> tuple[str, list[Any]]:
    # validation off: no balance, nonce or fee checks, as eth_call; the simulated block is the
    # one after latest, where the transaction would be mined.
    return (
        "eth_simulateV1",
        [{"blockStateCalls": [{"calls": [tx]}], "validation": False}, "latest"],
    )


def _unsupported(reply: dict[str, Any]) -> bool:
    error = reply.get("error")
    if not isinstance(error, dict):
        return False
    if error.get("code") == _METHOD_NOT_FOUND:
        return True
    message = str(error.get("message", "")).lower()
    return "method" in message and any(w in message for w in _UNSUPPORTED_WORDS)


def _outcome(reply: dict[str, Any]) -> Verdict:
    """A one-call eth_simulateV1 reply as a verdict (gas limit left to the caller)."""
    if "error" in reply:
        return Verdict(b"", 0, 0, reply["error"])
    try:
        call = reply["result"][0]["calls"][0]
        returned = bytes.fromhex(str(call.get("returnData") or "0x")[2:])
        ok = int(call["status"], 16) == 1
        used = int(call["gasUsed"], 16)
    except (KeyError, IndexError, TypeError, ValueError):
        return Verdict(b"", 0, 0, {"message": f"malformed eth_simulateV1 reply: {reply!r:.200}"})
    if ok:
        return Verdict(returned, used, 0, None)
    error: dict[str, Any] = {"message": (call.get("error") or {}).get("message", "reverted")}
    if returned:
        error["data"] = "0x" + returned.hex()
    return Verdict(returned, 0, 0, error)


def _base_fee(reply: dict[str, Any]) -> int:
    head = reply.get("result") or {}
    return int(head.get("baseFeePerGas") or "0x0", 16)
