"""HTTP JSON-RPC with bounded retries: every transient fault is retried, every other one named.

Transient (retried with exponential back-off, ``RetryPolicy``):
  connection refused or dropped, a timeout, HTTP 5xx, HTTP 429 (waiting at least its
  ``Retry-After``), a body cut short, a body that is not JSON or not a JSON-RPC answer, a batch
  answer with missing or duplicate elements, and JSON-RPC errors that nodes use for overload
  (``-32005`` limit exceeded, ``-32603`` internal error, ``-32002`` resource unavailable, or
  words like "rate limit").
Not transient (returned or raised at once): any other JSON-RPC error (a revert, a bad
  parameter: retrying cannot change the answer) and other HTTP statuses (401, 403, 404 ...).

When the retries are spent the last fault is raised as a named ``RpcUnavailable`` subclass
(``RpcTimeout``, ``RpcRateLimited``, ``RpcMalformedReply``), its message built here and
scrubbed of the URL's credentials, with no chained cause. Retrying is safe for every method the
keeper uses: reads are idempotent, and ``eth_sendRawTransaction`` of the same signed bytes is
the same transaction (a repeat is "already known", or "nonce too low" once it has mined, which
``TxManager`` tells apart from a foreign nonce use by asking for the hash).

web3's own retries (a fixed allowlist of methods, no ``Retry-After``) are switched off, so that
there is one bounded retry loop and its counts are ours (``RetryStats``).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import requests
from web3 import HTTPProvider
from web3.types import RPCEndpoint, RPCResponse

from keeper.chain.errors import (
    RpcMalformedReply,
    RpcRateLimited,
    RpcTimeout,
    RpcUnavailable,
    scrub,
)
from keeper.secrets import redact_url

log = logging.getLogger(__name__)

#: JSON-RPC error codes that mean "overloaded / try again" on common nodes and RPC providers.
_RANGE_REFUSAL_WORDS = (
    "block range",
    "range too large",
    "range is too",
    "too many results",
    "more than 10000 results",
    "query returned more than",
    "response size",
    "log response size",
)
TRANSIENT_RPC_CODES = frozenset({-32005, -32603, -32002, 429})
_CUT_SHORT = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
_TRANSIENT_WORDS = ("rate limit", "too many requests", "limit exceeded", "try again", "timeout")


@dataclass
class RetryPolicy:
    """Bounded exponential back-off: attempt k (k = 1..max_retries) waits
    min(max_delay, base_delay x 2^(k-1)) x jitter(0.5..1), or the server's Retry-After when
    longer; a Retry-After above ``max_retry_after`` is not waited out but raised at once
    (``RpcRateLimited.retry_after``), so a caller can schedule instead of blocking."""

    max_retries: int = 3
    base_delay: float = 0.1
    max_delay: float = 5.0
    max_retry_after: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    seed: int | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        backoff = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        backoff *= 0.5 + 0.5 * self._rng.random()
        return float(max(backoff, retry_after or 0.0))


@dataclass
class RetryStats:
    """What the retry loop saw (for metrics and tests)."""

    requests: int = 0
    retries: int = 0
    gave_up: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    waits: list[float] = field(default_factory=list)


class _Transient(Exception):
    """One transient fault (internal: retried, or turned into a named error)."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        retry_after: float | None = None,
        error: type[RpcUnavailable] = RpcUnavailable,
    ) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.retry_after, self.error = kind, detail, retry_after, error


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_transient_rpc_error(error: Any) -> bool:
    if not isinstance(error, dict):
        return False
    text = str(error.get("message", "")).lower()
    if "revert" in text:
        return False  # a revert is an answer, whatever code the node gave it
    if any(w in text for w in _RANGE_REFUSAL_WORDS):
        # An eth_getLogs range/result cap (Infura, Alchemy: -32005 too): retrying the same
        # range can never succeed; the indexer shrinks its chunk instead.
        return False
    return error.get("code") in TRANSIENT_RPC_CODES or any(w in text for w in _TRANSIENT_WORDS)


def _classify_exception(exc: BaseException) -> _Transient | None:
    """A transient fault, or None when ``exc`` is not one (it is then raised as named)."""
    if isinstance(exc, requests.HTTPError):
        response = exc.response
        status = response.status_code if response is not None else 0
        if status == 429:
            after = _retry_after(
                response.headers.get("Retry-After") if response is not None else None
            )
            return _Transient("http_429", "HTTP 429", retry_after=after, error=RpcRateLimited)
        if status >= 500:
            return _Transient(f"http_{status}", f"HTTP {status}")
        return None
    if isinstance(exc, requests.Timeout):
        return _Transient("timeout", type(exc).__name__, error=RpcTimeout)
    if isinstance(exc, _CUT_SHORT):
        return _Transient("truncated", type(exc).__name__, error=RpcMalformedReply)
    if isinstance(exc, requests.ConnectionError | ConnectionError):
        return _Transient("connection", type(exc).__name__)
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return _Transient("malformed", "the answer is not JSON", error=RpcMalformedReply)
    return None


def _check_single(reply: Any) -> None:
    if not isinstance(reply, dict) or not ("result" in reply or "error" in reply):
        raise _Transient("malformed", "not a JSON-RPC answer", error=RpcMalformedReply)
    if "error" in reply and is_transient_rpc_error(reply["error"]):
        code = reply["error"].get("code")
        text = str(reply["error"].get("message", "")).lower()
        limited = code in (-32005, 429) or "limit" in text or "too many" in text
        raise _Transient(
            "rpc_error",
            f"JSON-RPC error {code}",
            error=RpcRateLimited if limited else RpcUnavailable,
        )


def _check_batch(replies: Any, expected: int) -> None:
    if isinstance(replies, dict):
        # One answer for the whole batch: an overload error is retried; any other is the node
        # refusing batches, which keeper.chain.rpc.Rpc handles (one request per element).
        _check_single(replies)
        return
    if not isinstance(replies, list):
        raise _Transient("malformed", "not a JSON-RPC batch answer", error=RpcMalformedReply)
    ids = [r.get("id") if isinstance(r, dict) else None for r in replies]
    if len(replies) != expected or len(set(ids)) != expected:
        raise _Transient(
            "short_batch",
            f"{expected} requests, {len(replies)} answers ({len(set(ids))} distinct ids)",
            error=RpcMalformedReply,
        )
    for reply in replies:
        _check_single(reply)


def answers_chain_id(provider: Any, show_traceback: bool = False) -> bool:
    """``is_connected`` of the keeper's providers: does ``eth_chainId`` get an answer?"""
    try:
        return "result" in provider.make_request(RPCEndpoint("eth_chainId"), [])
    except RpcUnavailable:
        if show_traceback:
            raise
        return False


class RetryingHTTPProvider(HTTPProvider):
    """web3's HTTPProvider with one bounded retry loop for requests and batches."""

    def __init__(self, url: str, *, timeout: float, policy: RetryPolicy | None = None) -> None:
        super().__init__(
            url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
        )
        self._url = url
        self.policy = policy or RetryPolicy()
        self.stats = RetryStats()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RetryingHTTPProvider({redact_url(self._url)})"

    def __str__(self) -> str:
        return f"RPC connection {redact_url(self._url)}"

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        def once() -> RPCResponse:
            reply = HTTPProvider.make_request(self, method, params)
            _check_single(reply)
            return reply

        return cast(RPCResponse, self._with_retries(str(method), once))

    def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        def once() -> list[RPCResponse] | RPCResponse:
            replies = HTTPProvider.make_batch_request(self, batch_requests)
            _check_batch(replies, len(batch_requests))
            return replies

        label = f"batch of {len(batch_requests)}"
        return cast(list[RPCResponse] | RPCResponse, self._with_retries(label, once))

    def _with_retries(self, what: str, once: Callable[[], Any]) -> Any:
        policy = self.policy
        retry = 0
        while True:
            with self._stats_lock:
                self.stats.requests += 1
            try:
                return once()
            except _Transient as t:
                fault = t
            except Exception as exc:
                classified = _classify_exception(exc)
                if classified is None:
                    if isinstance(exc, requests.HTTPError):
                        status = exc.response.status_code if exc.response is not None else "?"
                        raise RpcUnavailable(
                            f"{redact_url(self._url)}: {what}: HTTP {status}"
                        ) from None
                    raise
                fault = classified
            with self._stats_lock:
                self.stats.faults[fault.kind] += 1
            too_long = fault.retry_after is not None and fault.retry_after > policy.max_retry_after
            if retry >= policy.max_retries or too_long:
                with self._stats_lock:
                    self.stats.gave_up += 1
                raise self._named(fault, what, retry) from None
            retry += 1
            wait = policy.delay(retry, fault.retry_after)
            with self._stats_lock:
                self.stats.retries += 1
                self.stats.waits.append(wait)
            log.info(
                "transient RPC fault: retrying",
                extra={"what": what, "fault": fault.kind, "retry": retry, "wait": round(wait, 3)},
            )
            policy.sleep(wait)

    def _named(self, fault: _Transient, what: str, retries: int) -> RpcUnavailable:
        detail = scrub(f"{what}: {fault.detail}", self._url)
        message = f"{redact_url(self._url)}: {detail} ({fault.kind}; {retries} retries)"
        error = fault.error(message)
        if isinstance(error, RpcRateLimited):
            error.retry_after = fault.retry_after
        return error
