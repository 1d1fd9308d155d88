"""Connecting to the node: HTTP or WebSocket, start-up verification, raw JSON-RPC batches.

``connect(url, deployment)`` builds the Web3 client and runs ``verify_deployment`` before it
returns: chain id, then for every contract of the deployment file code present, code hash and
ABI hash. The first mismatch raises its named error (keeper.chain.errors) and nothing else
is done. The URL only ever appears redacted in messages (``redact_url``); errors raised by the
HTTP/WebSocket libraries are replaced by ``RpcUnavailable`` with a scrubbed message, without
chaining the original (whose text and traceback carry the full URL).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from web3 import Web3
from web3.middleware import Web3Middleware
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from keeper.abi import ABI_DIR
from keeper.chain.errors import (
    AbiMismatch,
    BlockNotAvailable,
    CodeHashMismatch,
    MissingCodeHash,
    MissingContract,
    NoCodeAtAddress,
    RpcError,
    RpcMalformedReply,
    RpcTimeout,
    RpcUnavailable,
    WrongChain,
    scrub,
)
from keeper.chain.transport import RetryingHTTPProvider, RetryPolicy, answers_chain_id
from keeper.deployment import Deployment, code_hash
from keeper.secrets import redact_url, register_url

#: The canonical Multicall3 address (deterministic deployment on most public chains).
CANONICAL_MULTICALL3 = "0xcA11bde05977b3631167028862bE2a173976CA11"
#: A batch that times out is halved while its halves hold at least this many requests.
SPLIT_MIN_BATCH = 4

log = logging.getLogger(__name__)


class _ScrubFilter(logging.Filter):
    """Scrubs the credentials of every registered RPC URL from log records of the libraries
    that log endpoints (web3's providers and urllib3 log the URL/path at DEBUG)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.urls:
            msg = record.getMessage()
            for url in self.urls:
                msg = scrub(msg, url)
            record.msg, record.args = msg, ()
        return True


_SCRUB = _ScrubFilter()
_SCRUBBED_LOGGERS = (
    "web3.providers.HTTPProvider",
    "web3.providers.WebSocketProvider",
    "web3._utils.http_session_manager.HTTPSessionManager",
    "urllib3.connectionpool",
    "websockets.client",
    __name__,
)


def _install_log_scrub(url: str) -> None:
    # The keeper-wide registry (keeper.secrets) learns the URL's credentials too, so the
    # handler-level RedactingFilter of keeper.logs and redacting_errors mask them everywhere.
    register_url(url)
    _SCRUB.urls.add(url)
    for name in _SCRUBBED_LOGGERS:
        logger = logging.getLogger(name)
        if _SCRUB not in logger.filters:
            logger.addFilter(_SCRUB)


class SyncWebSocketProvider(JSONBaseProvider):
    """A blocking JSON-RPC client over one WebSocket (web3 8 ships only an async one).

    Requests and batches only; subscriptions belong to the block loop. One lock serialises
    the socket; a dropped connection is reopened and the request retried, with the bounded
    back-off of ``policy`` (keeper.chain.transport.RetryPolicy).
    """

    def __init__(self, url: str, timeout: float = 30.0, policy: RetryPolicy | None = None) -> None:
        super().__init__()
        self._url = url
        self._timeout = timeout
        self.policy = policy or RetryPolicy()
        self.retries = 0
        self._lock = threading.Lock()
        self._ws: Any = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"SyncWebSocketProvider({redact_url(self._url)})"

    def _socket(self) -> Any:
        if self._ws is None:
            from websockets.sync.client import connect as ws_connect

            try:
                self._ws = ws_connect(
                    self._url, open_timeout=self._timeout, max_size=2**27, legacy=True
                )
            except Exception as exc:
                raise RpcUnavailable(
                    f"cannot open {redact_url(self._url)}: {scrub(str(exc), self._url)}"
                ) from None
        return self._ws

    def _exchange(self, payload: Any, ids: set[int]) -> list[dict[str, Any]]:
        retry = 0
        while True:
            try:
                return self._exchange_once(payload, set(ids))
            except RpcUnavailable:
                if retry >= self.policy.max_retries:
                    raise
                retry += 1
                self.retries += 1
                self.policy.sleep(self.policy.delay(retry))

    def _exchange_once(self, payload: Any, ids: set[int]) -> list[dict[str, Any]]:
        with self._lock:
            ws = self._socket()
            try:
                ws.send(json.dumps(payload))
                got: list[dict[str, Any]] = []
                while ids:
                    reply = json.loads(ws.recv(timeout=self._timeout))
                    for item in reply if isinstance(reply, list) else [reply]:
                        if item.get("id") in ids:
                            ids.discard(item["id"])
                            got.append(item)
                return got
            except Exception as exc:
                self.close()
                raise RpcUnavailable(
                    f"{redact_url(self._url)}: {scrub(repr(exc), self._url)}"
                ) from None

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        rid = next(self._ids)
        payload = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        return cast(RPCResponse, self._exchange(payload, {rid})[0])

    def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        payload = []
        for method, params in batch_requests:
            payload.append(
                {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
            )
        got = self._exchange(payload, {p["id"] for p in payload})
        return cast(list[RPCResponse], sorted(got, key=lambda r: r["id"]))

    def is_connected(self, show_traceback: bool = False) -> bool:
        return answers_chain_id(self, show_traceback)

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            finally:
                self._ws = None


def _endpoint_provider(url: str, timeout: float, retry: RetryPolicy | None) -> Any:
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("ws", "wss"):
        return SyncWebSocketProvider(url, timeout=timeout, policy=retry)
    if scheme in ("http", "https"):
        return RetryingHTTPProvider(url, timeout=timeout, policy=retry)
    raise RpcUnavailable(f"unsupported RPC URL scheme {scheme!r} ({redact_url(url)})")


def make_web3(
    url: str,
    *,
    timeout: float = 30.0,
    retry: RetryPolicy | None = None,
    fallback_urls: Sequence[str] = (),
    unhealthy_seconds: float = 30.0,
    max_lag_blocks: int = 2,
    hedge_after_seconds: float | None = 1.0,
) -> Web3:
    """A Web3 client for ``http(s)://`` or ``ws(s)://`` (nothing is requested yet). HTTP
    retries transient faults as ``retry`` says (keeper.chain.transport; default 3 retries).

    With ``fallback_urls`` the client is a ``FallbackProvider`` (keeper.chain.fallback) over
    ``url`` then each fallback: a failed request goes to the next endpoint at once, and
    ``retry`` bounds the rounds over all of them (each endpoint does not retry by itself);
    ``unhealthy_seconds`` is the half-life of an endpoint's failure penalty; a request
    unanswered after ``hedge_after_seconds`` is sent to the next endpoint too."""
    for u in (url, *fallback_urls):
        _install_log_scrub(u)
    if not fallback_urls:
        w3 = Web3(_endpoint_provider(url, timeout, retry))
    else:
        from keeper.chain.fallback import FallbackProvider

        policy = retry or RetryPolicy()
        once = RetryPolicy(max_retries=0, sleep=policy.sleep)
        endpoints = [(u, _endpoint_provider(u, timeout, once)) for u in (url, *fallback_urls)]
        w3 = Web3(
            FallbackProvider(
                endpoints,
                policy=policy,
                half_life=unhealthy_seconds,
                max_lag_blocks=max_lag_blocks,
                hedge_after=(
                    hedge_after_seconds
                    if hedge_after_seconds is not None and hedge_after_seconds < timeout
                    else None
                ),
            )
        )
    w3.middleware_onion.add(ChainIdCache, name="chain_id_cache")
    return w3


class ChainIdCache(Web3Middleware):
    """Answers ``eth_chainId`` from memory after the first successful answer.

    web3's validation middleware asks the node for the chain id before every ``eth_call``,
    ``eth_estimateGas`` and ``eth_sendRawTransaction``: four round trips a block for nothing.
    The id is checked against the deployment at start-up; a node that later answers for another
    chain refuses our signed transactions (EIP-155) anyway."""

    def __init__(self, w3: Any) -> None:
        super().__init__(w3)
        self._answer: RPCResponse | None = None

    def wrap_make_request(self, make_request: Any) -> Any:
        def middleware(method: RPCEndpoint, params: Any) -> RPCResponse:
            if method != "eth_chainId":
                return cast(RPCResponse, make_request(method, params))
            if self._answer is None:
                reply = cast(RPCResponse, make_request(method, params))
                if "result" not in reply:
                    return reply
                self._answer = reply
            return self._answer

        return middleware


@dataclass(frozen=True)
class BlockRef:
    """A block the keeper reads at: every read of one decision names this exact block."""

    number: int
    hash: str  # 0x-hex
    timestamp: int
    parent_hash: str

    def rpc_param(self) -> dict[str, Any]:
        """EIP-1898 block parameter: the state of exactly this block, and an error (instead
        of another block's state) if it is no longer canonical after a reorg."""
        return {"blockHash": self.hash, "requireCanonical": True}


class Rpc:
    """Raw JSON-RPC through the Web3 provider; every node error comes back named."""

    def __init__(self, w3: Web3, url: str) -> None:
        self.w3 = w3
        self.url = url
        self.redacted = redact_url(url)
        self.batching = True  # cleared when the node refuses JSON-RPC batches
        #: The most requests one batch may carry (None: no limit seen), halved each time the
        #: node refuses a batch as too large.
        self.max_batch: int | None = None

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RpcUnavailable:
            raise
        except (OSError, ValueError, TimeoutError) as exc:
            raise RpcUnavailable(f"{self.redacted}: {scrub(repr(exc), self.url)}") from None
        except Exception as exc:
            name = type(exc).__name__
            if "Connection" in name or "Timeout" in name or "HTTPError" in name:
                raise RpcUnavailable(f"{self.redacted}: {scrub(repr(exc), self.url)}") from None
            raise

    def request(self, method: str, params: Sequence[Any]) -> Any:
        reply = self._guard(self.w3.provider.make_request, RPCEndpoint(method), list(params))
        if "error" in reply:
            raise RpcError(method, scrub(str(reply["error"]), self.url))
        return reply["result"]

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
        """Every call in as few HTTP requests as the node accepts (one when it takes the whole
        batch); raw replies in call order."""
        if not calls:
            return []
        reqs = [(RPCEndpoint(m), list(p)) for m, p in calls]
        if not self.batching:
            return self._one_by_one(reqs)
        size = self.max_batch or len(reqs)
        out: list[dict[str, Any]] = []
        for i in range(0, len(reqs), size):
            out += self._batch(reqs[i : i + size])
        return out

    def _batch(self, reqs: list[tuple[RPCEndpoint, Any]]) -> list[dict[str, Any]]:
        if not self.batching:
            return self._one_by_one(reqs)
        provider = cast(JSONBaseProvider, self.w3.provider)
        try:
            replies = self._guard(provider.make_batch_request, reqs)
        except RpcTimeout:
            # Unanswered within the timeout on every retry: a batch too heavy for the node
            # would time out again on every block and the keeper would never move on. Halve
            # it (and keep the smaller size) down to SPLIT_MIN_BATCH; a node that answers
            # nothing still raises. A broadcast is not split: the node may have taken its
            # transactions, and TxManager follows a send that failed in transport.
            sends = any(m == "eth_sendRawTransaction" for m, _ in reqs)
            if len(reqs) < 2 * SPLIT_MIN_BATCH or sends:
                raise
            half = (len(reqs) + 1) // 2
            self.max_batch = half
            log.warning(
                "%s timed out on a JSON-RPC batch of %d; batches of at most %d from now on",
                self.redacted, len(reqs), half,
            )  # fmt: skip
            return self._chunked(reqs)
        if not isinstance(replies, list):
            error = scrub(str(replies.get("error", replies)), self.url)
            if len(reqs) > 1:
                # Refused as a whole: a size cap (anvil answers "Invalid request" to a batch
                # too large) -- halve it, and keep the smaller size for the following batches.
                half = (len(reqs) + 1) // 2
                self.max_batch = half
                log.warning(
                    "%s refused a JSON-RPC batch of %d (%s); batches of at most %d from now on",
                    self.redacted, len(reqs), error, half,
                )  # fmt: skip
                return self._chunked(reqs)
            # Not even a batch of one: no batch support. One request per element from now
            # on -- more round trips (one per aggregate3 chunk, still not one per account)
            # rather than no reads at all.
            log.warning(
                "%s refused a JSON-RPC batch (%s); sending requests one by one",
                self.redacted,
                error,
            )
            self.batching = False
            return self._one_by_one(reqs)
        if len(replies) != len(reqs):  # the retrying provider checks this; others may not
            raise RpcMalformedReply(
                f"{self.redacted}: batch of {len(reqs)} requests, {len(replies)} replies"
            )
        return [dict(r) for r in replies]

    def _chunked(self, reqs: list[tuple[RPCEndpoint, Any]]) -> list[dict[str, Any]]:
        """``reqs`` in batches of the current ``max_batch``, which a batch may lower meanwhile."""
        out: list[dict[str, Any]] = []
        while len(out) < len(reqs):
            size = self.max_batch or len(reqs)
            out += self._batch(reqs[len(out) : len(out) + size])
        return out

    def _one_by_one(self, reqs: list[tuple[RPCEndpoint, Any]]) -> list[dict[str, Any]]:
        return [dict(self._guard(self.w3.provider.make_request, m, p)) for m, p in reqs]

    def block(self, ident: int | str = "latest") -> BlockRef:
        tag = hex(ident) if isinstance(ident, int) else ident
        b = self.request("eth_getBlockByNumber", [tag, False])
        if b is None:
            raise BlockNotAvailable(ident if isinstance(ident, int) else -1, str(ident))
        return _block_ref(b)

    def block_by_hash(self, block_hash: str) -> BlockRef:
        b = self.request("eth_getBlockByHash", [block_hash, False])
        if b is None:
            raise BlockNotAvailable(-1, block_hash, "unknown hash")
        return _block_ref(b)


def _block_ref(b: dict[str, Any]) -> BlockRef:
    def h(x: Any) -> str:
        return x if isinstance(x, str) else "0x" + bytes(x).hex()

    def n(x: Any) -> int:
        return int(x, 16) if isinstance(x, str) else int(x)

    return BlockRef(n(b["number"]), h(b["hash"]), n(b["timestamp"]), h(b["parentHash"]))


def abi_file_sha256(abi_name: str) -> str:
    """SHA-256 of the keeper's checked-in ABI file (abi/<name>.json, canonical text)."""
    return hashlib.sha256((ABI_DIR / f"{abi_name}.json").read_bytes()).hexdigest()


def verify_deployment(rpc: Rpc, deployment: Deployment) -> str:
    """Check the node against the deployment file; returns the Multicall3 address to use.

    Order: chain id; then per contract (file order): code present, code hash, ABI hash.
    """
    chain_id = int(rpc.request("eth_chainId", []), 16)
    if chain_id != deployment.chain_id:
        raise WrongChain(deployment.chain_id, chain_id)
    # Several endpoints (keeper.chain.fallback): every one must serve the same chain.
    check_chain_ids = getattr(rpc.w3.provider, "check_chain_ids", None)
    if callable(check_chain_ids):
        check_chain_ids(deployment.chain_id)
    if "ClearingHouse" not in deployment.contracts:
        raise MissingContract("ClearingHouse")
    for name, entry in deployment.contracts.items():
        address = Web3.to_checksum_address(entry["address"])
        code = bytes.fromhex(rpc.request("eth_getCode", [address, "latest"])[2:])
        if not code:
            raise NoCodeAtAddress(name, address)
        recorded = entry.get("code_hash")
        if not recorded:
            raise MissingCodeHash(name)
        actual = code_hash(code)
        if actual.lower() != recorded.lower():
            raise CodeHashMismatch(name, address, recorded, actual)
        abi_name = entry.get("abi", name)
        if not (ABI_DIR / f"{abi_name}.json").is_file():
            raise AbiMismatch(name, abi_name, entry.get("abi_sha256", ""), "<no abi file>")
        on_disk = abi_file_sha256(abi_name)
        if entry.get("abi_sha256") != on_disk:
            raise AbiMismatch(name, abi_name, entry.get("abi_sha256", ""), on_disk)
    if "Multicall3" in deployment.contracts:
        return Web3.to_checksum_address(deployment.contracts["Multicall3"]["address"])
    # Public chains: the canonical deployment (checked for code, as the others are).
    if rpc.request("eth_getCode", [CANONICAL_MULTICALL3, "latest"]) in ("0x", "0x0", ""):
        raise MissingContract("Multicall3")
    return CANONICAL_MULTICALL3
