"""Several RPC endpoints behind one web3 provider: health scoring, fail-over, pinned reads.

``FallbackProvider`` holds one provider per configured endpoint (``[rpc] url`` first, then
``fallback_urls``; each a ``RetryingHTTPProvider`` that does not retry by itself) and sends
every request or batch to the first *eligible* endpoint in this order:

1. healthy endpoints in configured order (the primary while it is healthy);
2. then the unhealthy ones, least penalised first (a last resort, never skipped outright).

Health. Every failure (a named ``RpcUnavailable``: timeout, connection, HTTP 5xx/429,
malformed or short answer, overload error) adds 1 to the endpoint's *penalty*, which halves
every ``half_life`` seconds; the endpoint is healthy while its penalty is below 0.5 and its
head is not more than ``max_lag_blocks`` behind the highest head seen on the other endpoints
(after each head the keeper reads, the other endpoints' heads are asked in the background when
older than ``HEAD_FRESH_SECONDS``: one ``eth_blockNumber`` a second per other endpoint at most).
So one failure takes an endpoint out for one half-life, k failures in a row for about
log2(2k) half-lives, and an endpoint that fails often (a flaky primary) stays out until it has
been quiet long enough. Latency is tracked (EWMA) and shown, not ranked on.

Fail-over. A request that fails on one endpoint is sent to the next at once (no back-off in
between: the back-off belongs to the endpoint that failed). Only when every endpoint failed
in one round does the provider wait (``RetryPolicy`` back-off) and start another round, at
most ``policy.max_retries`` more. A request still unanswered after ``hedge_after`` seconds is
sent to the next endpoint too (a hedge) and the first good answer wins, so an endpoint that
hangs costs ``hedge_after``, not the client timeout. Answers that are errors of the request
itself (a revert, a bad parameter) are answers, returned as they are.

Pinned reads. Reads of one decision name one block by hash (EIP-1898, see
keeper.chain.multicall); the provider learns the number of every block it sees in an answer,
and an endpoint whose known head is below a request's pinned block is not asked (its head is
asked once first when it is unknown or old). An endpoint that still answers "block not found"
for a pinned read is treated as behind and the next one is asked. Multicall3's getBlockNumber
check stays the last line: an answer from another block's state is refused there.

Transactions. ``eth_sendRawTransaction`` goes to the first eligible endpoint like every
request: the primary while it is healthy. Sending the same signed bytes to another endpoint
after a failure is safe: it is the same transaction, with the same nonce and hash.

Chain id. ``check_chain_ids`` asks every endpoint at start-up; a wrong chain id is
``EndpointWrongChain`` naming the endpoint (redacted). An endpoint unreachable at start-up is
checked before its first use, and excluded (logged) if it answers for another chain.

Secrets: an endpoint appears only as its index and ``redact_url`` form, in logs, errors and
metrics labels.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from keeper.chain.errors import RpcRateLimited, RpcUnavailable, WrongChain
from keeper.chain.transport import RetryPolicy, RetryStats, answers_chain_id
from keeper.secrets import redact_url

log = logging.getLogger(__name__)

#: Penalty below which an endpoint counts as healthy: one failure keeps it out for one
#: half-life.
HEALTHY_BELOW = 0.5
#: A known head older than this is asked again before an endpoint is skipped as behind.
HEAD_FRESH_SECONDS = 1.0
#: Block hashes whose number is remembered (to know the height a hash-pinned read needs).
KNOWN_HASHES = 4096

#: Methods whose block parameter (at this position) pins the request to a block.
_BLOCK_PARAM = {
    "eth_call": 1,
    "eth_estimateGas": 1,
    "eth_getBalance": 1,
    "eth_getCode": 1,
    "eth_getTransactionCount": 1,
    "eth_getStorageAt": 2,
}
#: Node wordings for a block it does not have (anvil, geth, erigon, hosted RPCs).
_MISSING_BLOCK_WORDS = ("not found", "unknown block", "canonical", "header for hash")


class EndpointWrongChain(WrongChain):
    """A configured RPC endpoint answers for another chain than the deployment's."""

    def __init__(self, index: int, endpoint: str, expected: int, actual: int) -> None:
        super().__init__(expected, actual, f"RPC endpoint {index} ({endpoint})")
        self.index, self.endpoint = index, endpoint


class NoEndpointEligible(RpcUnavailable):
    """Every endpoint failed (every round), or none can serve the pinned block."""


@dataclass
class Endpoint:
    """One configured endpoint, its provider and its health (guarded by the provider lock)."""

    index: int
    url: str
    provider: Any  # RetryingHTTPProvider or SyncWebSocketProvider (make_request/batch)
    redacted: str = ""
    penalty: float = 0.0
    penalty_at: float = 0.0
    head: int | None = None
    head_at: float = 0.0
    latency: float | None = None  # EWMA seconds of successful requests
    requests: int = 0
    failures: int = 0
    chain_ok: bool | None = None  # None: not checked yet (unreachable at start-up)
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.redacted = redact_url(self.url)

    @property
    def label(self) -> str:
        return f"{self.index} ({self.redacted})"


@dataclass(frozen=True)
class EndpointState:
    """What ``keeper status`` and the metrics show of one endpoint."""

    index: int
    endpoint: str  # redacted URL
    healthy: bool
    penalty: float
    head: int | None
    latency_ms: float | None
    requests: int
    failures: int
    last_error: str | None


class _Behind(Exception):
    """The endpoint's head is below the pinned block: asked again only as a last resort."""


class _Excluded(Exception):
    """The endpoint answers for another chain: never asked."""


@dataclass
class _Attempt:
    """What one pass over the endpoints left behind when no endpoint answered."""

    errors: list[str] = field(default_factory=list)
    last_exc: RpcUnavailable | None = None
    missing_block_reply: Any = None
    retry_after: float | None = None


class FallbackProvider(JSONBaseProvider):
    """One web3 provider over several endpoints; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, Any]],
        *,
        policy: RetryPolicy | None = None,
        half_life: float = 30.0,
        max_lag_blocks: int = 2,
        hedge_after: float | None = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not endpoints:
            raise ValueError("a fallback provider needs at least one endpoint")
        self.endpoints = [Endpoint(i, url, p) for i, (url, p) in enumerate(endpoints)]
        self.policy = policy or RetryPolicy()
        self.half_life = half_life
        self.max_lag_blocks = max_lag_blocks
        #: Seconds without an answer after which the next endpoint is asked too (None: never).
        self.hedge_after = hedge_after
        self.stats = RetryStats()
        #: Fail-overs: a request answered by another endpoint than the first one asked.
        self.failovers = 0
        #: Requests also sent to the next endpoint because the one asked was slow.
        self.hedges = 0
        # Requests run on these threads so that a slow endpoint can be overtaken; a hedged
        # request left behind finishes here (bounded by the endpoint's client timeout).
        self._pool = self._new_pool()
        self.clock = clock
        self._lock = threading.RLock()
        self._numbers: OrderedDict[str, int] = OrderedDict()  # block hash -> number
        self._expected_chain: int | None = None
        self._probing: set[int] = set()  # endpoints whose head is being asked in the background

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=4 * len(self.endpoints), thread_name_prefix="rpc-endpoint"
        )

    def __repr__(self) -> str:
        return f"FallbackProvider({', '.join(e.redacted for e in self.endpoints)})"

    # --- health ------------------------------------------------------------------------

    def _penalty(self, ep: Endpoint, now: float) -> float:
        if ep.penalty == 0.0:
            return 0.0
        return ep.penalty * math.pow(0.5, (now - ep.penalty_at) / self.half_life)

    def _fresh(self, ep: Endpoint, now: float) -> bool:
        return ep.head is not None and now - ep.head_at <= 2 * HEAD_FRESH_SECONDS

    def _best_head(self, now: float) -> int | None:
        heads = [e.head for e in self.endpoints if e.head is not None and self._fresh(e, now)]
        return max(heads) if heads else None

    def _healthy(self, ep: Endpoint, now: float, best: int | None) -> bool:
        if ep.chain_ok is False:
            return False
        if self._penalty(ep, now) >= HEALTHY_BELOW:
            return False
        # Behind: only heads learned at about the same time are compared (an endpoint not
        # asked for a while is not behind for that).
        behind = (
            best is not None
            and ep.head is not None
            and self._fresh(ep, now)
            and ep.head < best - self.max_lag_blocks
        )
        return not behind

    def _failed(self, ep: Endpoint, error: str) -> None:
        now = self.clock()
        with self._lock:
            ep.penalty = self._penalty(ep, now) + 1.0
            ep.penalty_at = now
            ep.failures += 1
            ep.last_error = error
            self.stats.faults[f"endpoint_{ep.index}"] += 1

    def _answered(self, ep: Endpoint, seconds: float) -> None:
        with self._lock:
            ep.latency = seconds if ep.latency is None else 0.8 * ep.latency + 0.2 * seconds

    def _saw_head(self, ep: Endpoint, number: int, *, latest: bool) -> None:
        """``latest``: the endpoint's head is exactly this; otherwise it has at least it."""
        with self._lock:
            if latest or ep.head is None or number > ep.head:
                ep.head, ep.head_at = number, self.clock()

    def states(self) -> list[EndpointState]:
        now = self.clock()
        with self._lock:
            best = self._best_head(now)
            return [
                EndpointState(
                    e.index,
                    e.redacted,
                    self._healthy(e, now, best),
                    round(self._penalty(e, now), 3),
                    e.head,
                    None if e.latency is None else round(e.latency * 1000, 1),
                    e.requests,
                    e.failures,
                    e.last_error,
                )
                for e in self.endpoints
            ]

    def order(self) -> list[Endpoint]:
        """The endpoints to try, in turn: healthy in configured order, then the others by
        penalty (a pinned request puts those below its block last, see ``_round``)."""
        now = self.clock()
        with self._lock:
            best = self._best_head(now)
            usable = [e for e in self.endpoints if e.chain_ok is not False]
            healthy = [e for e in usable if self._healthy(e, now, best)]
            rest = sorted(
                (e for e in usable if e not in healthy), key=lambda e: self._penalty(e, now)
            )
        return healthy + rest

    def _below(self, ep: Endpoint, pinned: int) -> bool:
        """Is ``ep`` known to be below block ``pinned``? A head that is unknown, or below and
        older than ``HEAD_FRESH_SECONDS``, is asked first."""
        with self._lock:
            head, age = ep.head, self.clock() - ep.head_at
        if head is not None and head >= pinned:
            return False
        if head is None or age > HEAD_FRESH_SECONDS:
            try:
                self._check_chain(ep)
                reply = self._send(ep, [(RPCEndpoint("eth_blockNumber"), [])], batch=False)
            except RpcUnavailable:
                return True  # failed (and penalised): a last resort
            if "result" in reply:
                self._saw_head(ep, int(reply["result"], 16), latest=True)
            with self._lock:
                head = ep.head
        return head is None or head < pinned

    # --- chain id ----------------------------------------------------------------------

    def check_chain_ids(self, expected: int) -> None:
        """Asks every endpoint for its chain id; ``EndpointWrongChain`` on a mismatch. An
        unreachable endpoint is logged and checked before its first use."""
        self._expected_chain = expected
        for ep in self.endpoints:
            try:
                self._check_chain(ep, at_start=True)
            except RpcUnavailable as exc:
                log.warning(
                    "RPC endpoint %s unreachable at start-up (%s); its chain id is checked "
                    "before it is used",
                    ep.label, exc,
                )  # fmt: skip

    def _check_chain(self, ep: Endpoint, *, at_start: bool = False) -> None:
        if ep.chain_ok is not None or self._expected_chain is None:
            return
        reply = self._send(ep, [(RPCEndpoint("eth_chainId"), [])], batch=False)
        if "result" not in reply:
            raise RpcUnavailable(f"{ep.redacted}: eth_chainId answered an error")
        actual = int(reply["result"], 16)
        if actual == self._expected_chain:
            ep.chain_ok = True
            return
        ep.chain_ok = False
        error = EndpointWrongChain(ep.index, ep.redacted, self._expected_chain, actual)
        if at_start:
            raise error
        log.error("RPC endpoint excluded: %s", error)

    # --- requests ----------------------------------------------------------------------

    def _send(self, ep: Endpoint, reqs: list[tuple[RPCEndpoint, Any]], *, batch: bool) -> Any:
        """One request (or batch) to one endpoint; a failure is penalised and re-raised."""
        with self._lock:
            ep.requests += 1
            self.stats.requests += 1
        t0 = time.perf_counter()
        try:
            if batch:
                reply = ep.provider.make_batch_request(reqs)
            else:
                reply = ep.provider.make_request(*reqs[0])
        except RpcUnavailable as exc:
            self._failed(ep, str(exc))
            raise
        self._answered(ep, time.perf_counter() - t0)
        return reply

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        reply: RPCResponse = self._run([(method, params)], batch=False)
        return reply

    def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        replies: list[RPCResponse] | RPCResponse = self._run(list(batch_requests), batch=True)
        return replies

    def _run(self, reqs: list[tuple[RPCEndpoint, Any]], *, batch: bool) -> Any:
        what = f"batch of {len(reqs)}" if batch else str(reqs[0][0])
        pinned = self._pinned(reqs)
        attempt = _Attempt()
        for round_ in range(self.policy.max_retries + 1):
            attempt = _Attempt()
            answered = self._round(reqs, batch, pinned, attempt)
            if answered is not None:
                ep, n, reply = answered
                if n > 0 or round_ > 0:
                    with self._lock:
                        self.failovers += 1
                        self.stats.retries += n
                    log.info(
                        "RPC fail-over", extra={"what": what, "endpoint": ep.label, "round": round_}
                    )
                return reply
            if attempt.missing_block_reply is not None and attempt.last_exc is None:
                return attempt.missing_block_reply  # every endpoint: the caller names it
            if round_ == self.policy.max_retries:
                break
            wait = self.policy.delay(round_ + 1, attempt.retry_after)
            with self._lock:
                self.stats.retries += 1
                self.stats.waits.append(wait)
            log.info(
                "every RPC endpoint failed: retrying",
                extra={"what": what, "round": round_ + 1, "wait": round(wait, 3)},
            )
            self.policy.sleep(wait)
        with self._lock:
            self.stats.gave_up += 1
        if attempt.missing_block_reply is not None:
            return attempt.missing_block_reply
        error_type = type(attempt.last_exc) if attempt.last_exc is not None else NoEndpointEligible
        error = error_type(
            f"{what}: no RPC endpoint answered ({self.policy.max_retries} retries): "
            + "; ".join(attempt.errors[-len(self.endpoints) :])
        )
        if attempt.retry_after is not None and isinstance(error, RpcRateLimited):
            error.retry_after = attempt.retry_after
        raise error from None

    def _round(
        self,
        reqs: list[tuple[RPCEndpoint, Any]],
        batch: bool,
        pinned: int | None,
        attempt: _Attempt,
    ) -> tuple[Endpoint, int, Any] | None:
        """One pass over ``order()``: (endpoint, endpoints asked before it, answer), or None
        when none answered. The next endpoint is asked as soon as one fails, or, with the one
        asked still silent after ``hedge_after`` seconds, alongside it (the first good answer
        wins; a late one is dropped, its endpoint's health still recorded). An endpoint known
        to be below ``pinned`` is asked only after every other one. Every network call,
        the chain id and head checks included, runs on the pool: the caller only waits."""
        queue = self.order()
        behind: list[Endpoint] = []  # below the pinned block: a last resort
        pending: dict[Future[Any], tuple[Endpoint, int]] = {}
        started = 0

        def start_next() -> bool:
            nonlocal started
            if queue:
                ep, last_resort = queue.pop(0), False
            elif behind:
                ep, last_resort = behind.pop(0), True
            else:
                return False
            fut = self._pool.submit(self._attempt, ep, reqs, batch, pinned, last_resort)
            pending[fut] = (ep, started)
            started += 1
            return True

        more = start_next()
        while pending:
            done, _ = wait(
                pending, timeout=self.hedge_after if more else None, return_when=FIRST_COMPLETED
            )
            if not done:  # the endpoint asked is slow: ask the next one too
                more = start_next()
                if more:
                    with self._lock:
                        self.hedges += 1
                continue
            failed = False
            for fut in done:
                ep, n = pending.pop(fut)
                failed = True
                try:
                    reply = fut.result()
                except _Behind:
                    behind.append(ep)
                    continue
                except _Excluded:
                    continue
                except RpcUnavailable as exc:
                    self._note_failure(attempt, ep, exc)
                    continue
                if pinned is not None and _misses_block(reply):
                    # Behind (or another fork): it does not have the pinned block yet.
                    with self._lock:
                        if ep.head is None or ep.head >= pinned:
                            ep.head, ep.head_at = pinned - 1, self.clock()
                    attempt.missing_block_reply = reply
                    attempt.errors.append(f"{ep.index}: does not have block {pinned}")
                    continue
                self._learn(ep, reqs, reply)
                return ep, n, reply
            if failed or not pending:
                more = start_next()
        return None

    def _attempt(
        self,
        ep: Endpoint,
        reqs: list[tuple[RPCEndpoint, Any]],
        batch: bool,
        pinned: int | None,
        last_resort: bool,
    ) -> Any:
        """One endpoint's turn (on the pool): its chain id when not checked yet, its head when
        the request is pinned above what is known of it, then the request."""
        self._check_chain(ep)
        if ep.chain_ok is False:
            raise _Excluded
        if pinned is not None and not last_resort and self._below(ep, pinned):
            raise _Behind
        return self._send(ep, reqs, batch=batch)

    @staticmethod
    def _note_failure(attempt: _Attempt, ep: Endpoint, exc: RpcUnavailable) -> None:
        attempt.errors.append(f"{ep.index}: {exc}")
        attempt.last_exc = exc
        after = getattr(exc, "retry_after", None)
        if after is not None:
            attempt.retry_after = max(attempt.retry_after or 0.0, after)

    # --- what answers teach ------------------------------------------------------------

    def _pinned(self, reqs: list[tuple[RPCEndpoint, Any]]) -> int | None:
        """The highest block the requests are pinned to (None: none is)."""
        highest: int | None = None
        for method, params in reqs:
            n = self._pinned_one(str(method), params if isinstance(params, list) else [])
            if n is not None and (highest is None or n > highest):
                highest = n
        return highest

    def _pinned_one(self, method: str, params: list[Any]) -> int | None:
        if method == "eth_getBlockByNumber" and params:
            return _hex_number(params[0])
        pos = _BLOCK_PARAM.get(method)
        if pos is None or len(params) <= pos:
            return None
        ref = params[pos]
        if isinstance(ref, dict):
            if "blockHash" in ref:
                with self._lock:
                    return self._numbers.get(str(ref["blockHash"]).lower())
            return _hex_number(ref.get("blockNumber"))
        return _hex_number(ref)

    def _learn(self, ep: Endpoint, reqs: list[tuple[RPCEndpoint, Any]], reply: Any) -> None:
        replies = reply if isinstance(reply, list) else [reply]
        for (method, params), r in zip(reqs, replies, strict=False):
            if not isinstance(r, dict) or "result" not in r:
                continue
            result = r["result"]
            if method == "eth_blockNumber" and isinstance(result, str):
                self._saw_head(ep, int(result, 16), latest=True)
                self._cross_check(ep)
            elif method in ("eth_getBlockByNumber", "eth_getBlockByHash") and isinstance(
                result, dict
            ):
                number = _hex_number(result.get("number"))
                block_hash = result.get("hash")
                if number is None:
                    continue
                head_tag = params[0] if method == "eth_getBlockByNumber" and params else None
                latest = head_tag in ("latest", "pending")
                self._saw_head(ep, number, latest=latest)
                if latest:
                    self._cross_check(ep)
                if isinstance(block_hash, str):
                    with self._lock:
                        self._numbers[block_hash.lower()] = number
                        while len(self._numbers) > KNOWN_HASHES:
                            self._numbers.popitem(last=False)

    def _cross_check(self, source: Endpoint) -> None:
        """After a head from ``source``: the other endpoints' heads, when older than
        ``HEAD_FRESH_SECONDS``, are asked in the background (one ``eth_blockNumber`` each),
        so that a primary that falls behind is seen as behind (``max_lag_blocks``)."""
        now = self.clock()
        with self._lock:
            due = [
                e
                for e in self.endpoints
                if e is not source
                and e.chain_ok is not False
                and e.index not in self._probing
                and (e.head is None or now - e.head_at > HEAD_FRESH_SECONDS)
            ]
            self._probing.update(e.index for e in due)
        for e in due:
            self._pool.submit(self._probe_head, e)

    def _probe_head(self, ep: Endpoint) -> None:
        try:
            self._check_chain(ep)
            if ep.chain_ok is not False:
                reply = self._send(ep, [(RPCEndpoint("eth_blockNumber"), [])], batch=False)
                if "result" in reply:
                    self._saw_head(ep, int(reply["result"], 16), latest=True)
        except RpcUnavailable:
            pass  # penalised by _send; the next head check asks again
        except Exception:  # a background probe must never take the keeper down
            log.exception("RPC head check of endpoint %s failed", ep.label)
        finally:
            with self._lock:
                self._probing.discard(ep.index)

    def is_connected(self, show_traceback: bool = False) -> bool:
        return answers_chain_id(self, show_traceback)

    def close(self) -> None:
        # Idle threads end now; a request after close() gets a new pool (HTTP needs no reopen).
        pool, self._pool = self._pool, self._new_pool()
        pool.shutdown(wait=False)
        for ep in self.endpoints:
            close = getattr(ep.provider, "close", None)
            if callable(close):
                close()


def _hex_number(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def _misses_block(reply: Any) -> bool:
    """Does any answer say the node does not have the block the request is pinned to?"""
    for r in reply if isinstance(reply, list) else [reply]:
        if isinstance(r, dict) and "error" in r:
            text = str(r["error"]).lower()
            if "revert" not in text and any(w in text for w in _MISSING_BLOCK_WORDS):
                return True
    return False
