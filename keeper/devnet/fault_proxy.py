"""A fault-injecting JSON-RPC proxy on loopback, between the keeper and anvil.

Every way a hosted RPC misbehaves in production, on demand and reproducibly:

* ``rpc_error``: a JSON-RPC error answer (default ``-32005`` "limit exceeded", as hosted RPCs
  send when a quota is hit); in a batch, every element gets it;
* ``http_500`` / ``http_429``: an HTTP error status; 429 carries ``Retry-After``;
* ``timeout``: the request is forwarded (the node sees it) and the answer is held back longer
  than the client waits (``hang_seconds``);
* ``drop``: the connection is closed before the request reaches the node;
* ``drop_after``: forwarded (the node acts on it), then closed without an answer;
* ``truncate``: the full ``Content-Length`` is announced and half the body sent, then closed;
* ``malformed``: a 200 answer whose body is not JSON;
* ``short_batch``: a batch answer with its last element missing (valid JSON, incomplete);
  it hits batches only (a single request does not match the rule and is not counted);
* ``wrong_block``: every ``eth_call`` of the request runs at "latest" instead of the block it
  was pinned to (what anvil does to a call pinned to the head while the next block is mined,
  and what a load balancer in front of nodes at different heights can do);
* lag: with ``lag_blocks = N``, ``eth_blockNumber`` and ``eth_getBlockByNumber("latest")``
  answer for the block N below the node's head (a load-balanced RPC behind the others).

Rules (``add``) pick the requests they hit by method (a batch matches when any element does),
fire a bounded number of ``times`` and/or at a ``rate`` drawn from a seeded generator, so a
random fault run is replayable from its seed. ``counts`` says how many of each were injected.
The upstream can be switched (``upstream = ...``) while running, e.g. after anvil restarted on
another port; an unreachable upstream is answered with HTTP 502, as a gateway does.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

FAULT_KINDS = (
    "rpc_error",
    "http_500",
    "http_429",
    "timeout",
    "drop",
    "drop_after",
    "truncate",
    "malformed",
    "short_batch",
    "wrong_block",
)


@dataclass
class FaultRule:
    kind: str
    methods: frozenset[str] | None = None  # None: every method
    times: int | None = None  # None: unlimited
    rate: float = 1.0  # probability that a matching request is hit
    retry_after: int = 1  # seconds, for http_429
    hang_seconds: float = 2.0  # for timeout
    error_code: int = -32005
    error_message: str = "limit exceeded"
    min_batch: int = 0  # only batches of at least this many requests (0: any request)
    fired: int = 0

    def matches(self, methods: list[str], *, batch: bool = True) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.kind == "short_batch" and not batch:
            return False  # nothing to cut short: not a fault, so not counted as one
        if len(methods) < self.min_batch or (self.min_batch and not batch):
            return False
        return self.methods is None or any(m in self.methods for m in methods)


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 (kernel-chosen port). Use as a context manager."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        upstream_timeout: float = 60.0,
        record_methods: bool = True,
    ) -> None:
        self.upstream = upstream
        #: Off for long runs (the soak): ``methods`` would grow with every request.
        self.record_methods = record_methods
        self.upstream_timeout = upstream_timeout
        self.lag_blocks = 0
        self.rules: list[FaultRule] = []
        self.counts: Counter[str] = Counter()  # faults injected, by kind (and "lag")
        self.requests = 0  # HTTP requests received
        self.methods: list[str] = []  # every JSON-RPC method received, in order
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def do_POST(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for it (0.5 s by default, per test).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # --- programming --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def add(
        self,
        kind: str,
        *,
        methods: Iterable[str] | None = None,
        times: int | None = None,
        rate: float = 1.0,
        **options: Any,
    ) -> FaultRule:
        """Inject ``kind`` into matching requests; returns the rule (``fired`` counts hits)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (one of {', '.join(FAULT_KINDS)})")
        rule = FaultRule(
            kind,
            frozenset(methods) if methods is not None else None,
            times,
            rate,
            **options,
        )
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """No more faults, no lag (counters kept)."""
        with self._lock:
            self.rules = []
            self.lag_blocks = 0

    def reset_counts(self) -> None:
        with self._lock:
            self.counts = Counter()
            self.requests = 0
            self.methods = []

    @property
    def injected(self) -> int:
        return sum(n for k, n in self.counts.items() if k != "lag")

    # --- serving ------------------------------------------------------------------------

    def _pick(self, methods: list[str], *, batch: bool) -> FaultRule | None:
        with self._lock:
            self.requests += 1
            if self.record_methods:
                self.methods += methods
            for rule in self.rules:
                if rule.matches(methods, batch=batch) and self._rng.random() < rule.rate:
                    rule.fired += 1
                    self.counts[rule.kind] += 1
                    return rule
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        try:
            msg = json.loads(body)
        except ValueError:
            msg = None
        items = msg if isinstance(msg, list) else [msg] if isinstance(msg, dict) else []
        methods = [str(i.get("method", "?")) for i in items if isinstance(i, dict)]
        rule = self._pick(methods, batch=isinstance(msg, list))
        kind = rule.kind if rule else None
        if kind == "drop":
            return _close(h)
        if kind in ("http_500", "http_429"):
            assert rule is not None
            headers = {"Retry-After": str(rule.retry_after)} if kind == "http_429" else {}
            status = 429 if kind == "http_429" else 500
            return _send(h, status, b"Too Many Requests" if status == 429 else b"boom", headers)
        if kind == "rpc_error":
            assert rule is not None
            return _send(h, 200, json.dumps(_errors(msg, rule)).encode())
        if kind == "wrong_block":
            for item in items:
                if isinstance(item, dict) and item.get("method") == "eth_call":
                    item["params"] = [item["params"][0], "latest"]
            body = json.dumps(msg).encode()
        try:
            out = self._forward(msg, body)
        except OSError:
            return _send(h, 502, b"bad gateway: upstream unreachable")
        if kind == "timeout":
            assert rule is not None
            time.sleep(rule.hang_seconds)  # the client has given up by now
        if kind in ("drop_after", "timeout"):
            return _close(h)
        if kind == "truncate":
            return _send(h, 200, out, truncate=True)
        if kind == "malformed":
            return _send(h, 200, b'{"jsonrpc":"2.0","id":1,"result":' + out[:7] + b"\x00<html>")
        if kind == "short_batch":
            replies = json.loads(out)
            if isinstance(replies, list) and replies:
                out = json.dumps(replies[:-1]).encode()
        _send(h, 200, out)

    def _post(self, payload: bytes) -> bytes:
        req = urllib.request.Request(
            self.upstream, data=payload, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.upstream_timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:  # the node's own HTTP error: pass it on as is
            return bytes(exc.read())

    def _forward(self, msg: Any, body: bytes) -> bytes:
        lag = self.lag_blocks
        if lag <= 0 or msg is None:
            return self._post(body)
        items = msg if isinstance(msg, list) else [msg]
        if not any(_lagged(i) for i in items):
            return self._post(body)
        head = int(json.loads(self._post(_rpc("eth_blockNumber", [])))["result"], 16)
        behind = max(head - lag, 0)
        with self._lock:
            self.counts["lag"] += 1
        replies = []
        for item in items:
            if not _lagged(item):
                replies.append(json.loads(self._post(json.dumps(item).encode())))
            elif item["method"] == "eth_blockNumber":
                replies.append({"jsonrpc": "2.0", "id": item.get("id"), "result": hex(behind)})
            else:
                params = [hex(behind), *item["params"][1:]]
                reply = json.loads(self._post(_rpc(item["method"], params)))
                reply["id"] = item.get("id")
                replies.append(reply)
        return json.dumps(replies if isinstance(msg, list) else replies[0]).encode()

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def _lagged(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    method, params = item.get("method"), item.get("params") or []
    return method == "eth_blockNumber" or (
        method == "eth_getBlockByNumber" and bool(params) and params[0] in ("latest", "pending")
    )


def _rpc(method: str, params: list[Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def _errors(msg: Any, rule: FaultRule) -> Any:
    def one(item: Any) -> dict[str, Any]:
        rid = item.get("id") if isinstance(item, dict) else None
        error = {"code": rule.error_code, "message": rule.error_message}
        return {"jsonrpc": "2.0", "id": rid, "error": error}

    return [one(i) for i in msg] if isinstance(msg, list) else one(msg)


def _send(
    h: BaseHTTPRequestHandler,
    status: int,
    out: bytes,
    headers: dict[str, str] | None = None,
    *,
    truncate: bool = False,
) -> None:
    with contextlib.suppress(OSError):  # the client may have gone (it timed out)
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(out)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if truncate:
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(out[: len(out) // 2] if truncate else out)
        h.wfile.flush()
    if truncate:
        _close(h)


def _close(h: BaseHTTPRequestHandler) -> None:
    """Close the connection without (the rest of) an answer."""
    h.close_connection = True
    with contextlib.suppress(OSError):
        h.wfile.flush()
        h.connection.shutdown(2)  # SHUT_RDWR
