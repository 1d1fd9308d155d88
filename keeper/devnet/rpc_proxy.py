"""A counting HTTP proxy in front of anvil: the number of HTTP requests is the number of
JSON-RPC round trips, whatever the client library does internally. It ignores the request
path and userinfo, so URLs carrying fake credentials reach the real node.

It can also play a hosted node's limits and faults: ``max_log_range`` refuses eth_getLogs over
more blocks (JSON-RPC -32005, Infura's wording), ``outage_after_logs`` makes every request
fail with HTTP 503 after that many eth_getLogs were answered (and ``outage`` does so now),
``logs_hook`` rewrites eth_getLogs results (a lagging node answering from a reorged block)."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class CountingProxy:
    def __init__(
        self,
        upstream: str,
        *,
        reject_batches: bool = False,
        max_batch: int | None = None,
        max_log_range: int | None = None,
        outage_after_logs: int | None = None,
    ) -> None:
        self.upstream = upstream
        self.max_log_range = max_log_range
        self.outage_after_logs = outage_after_logs
        self.outage = False
        #: Applied to every eth_getLogs result before it is returned.
        self.logs_hook: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
        self.log_ranges: list[tuple[int, int]] = []  # eth_getLogs (from, to) answered
        self.refused_log_ranges: list[tuple[int, int]] = []
        #: Answer every batch with one JSON-RPC error, as nodes without batch support do.
        self.reject_batches = reject_batches
        #: Answer a batch of more elements with one "Invalid request" error, as a node with a
        #: request size cap does (anvil refuses very large batches so).
        self.max_batch = max_batch
        self.refused_batches = 0
        self.requests = 0  # HTTP round trips
        self.calls = 0  # JSON-RPC calls inside them (a batch counts each element)
        self.methods: list[str] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                msg = json.loads(body)
                items = msg if isinstance(msg, list) else [msg]
                with proxy._lock:
                    proxy.requests += 1
                    proxy.calls += len(items)
                    proxy.methods += [i.get("method", "?") for i in items]
                    proxy.paths.append(self.path)
                if proxy.outage:
                    self._unavailable()
                    return
                too_big = proxy.max_batch is not None and len(items) > proxy.max_batch
                if isinstance(msg, list) and (proxy.reject_batches or too_big):
                    message = "Invalid request" if too_big else "batch requests are not supported"
                    refusal = {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32600, "message": message},
                    }
                    with proxy._lock:
                        proxy.refused_batches += 1
                    self._reply(json.dumps(refusal).encode())
                    return
                refused = {id(i): e for i in items if (e := proxy._refusal(i)) is not None}
                hooked = proxy.logs_hook is not None and any(
                    i.get("method") == "eth_getLogs" for i in items
                )
                if not refused and not hooked:
                    self._reply(proxy._forward(body))
                    return
                passed = [i for i in items if id(i) not in refused]
                answers = json.loads(proxy._forward(json.dumps(passed).encode())) if passed else []
                by_id = {a.get("id"): a for a in answers}
                for i in items:
                    a = by_id.get(i.get("id"))
                    if proxy.logs_hook and i.get("method") == "eth_getLogs" and a and "result" in a:
                        a["result"] = proxy.logs_hook(a["result"])
                out = [refused.get(id(i)) or by_id[i.get("id")] for i in items]
                self._reply(json.dumps(out if isinstance(msg, list) else out[0]).encode())

            def _unavailable(self) -> None:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _reply(self, out: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _forward(self, body: bytes) -> bytes:
        req = urllib.request.Request(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            return bytes(resp.read())

    def _refusal(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """The error a capped node answers to this eth_getLogs, or None (forward it)."""
        if item.get("method") != "eth_getLogs":
            return None
        flt = (item.get("params") or [{}])[0]
        try:
            rng = (int(flt["fromBlock"], 16), int(flt["toBlock"], 16))
        except (KeyError, TypeError, ValueError):  # tags ("latest"), block hashes
            rng = (0, 0)
        with self._lock:
            if self.max_log_range is not None and rng[1] - rng[0] + 1 > self.max_log_range:
                self.refused_log_ranges.append(rng)
                message = f"query exceeds max block range {self.max_log_range}"
                error = {"code": -32005, "message": message}
                return {"jsonrpc": "2.0", "id": item.get("id"), "error": error}
            self.log_ranges.append(rng)
            cap = self.outage_after_logs
            if cap is not None and len(self.log_ranges) >= cap:
                self.outage = True  # from the next request on: this one is still answered
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def reset(self) -> None:
        with self._lock:
            self.requests = self.calls = 0
            self.methods, self.paths = [], []

    def __enter__(self) -> CountingProxy:
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
