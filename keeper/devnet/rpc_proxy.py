"""A counting HTTP proxy in front of anvil: the number of HTTP requests is the number of
JSON-RPC round trips, whatever the client library does internally. It ignores the request
path and userinfo, so URLs carrying fake credentials reach the real node."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class CountingProxy:
    def __init__(self, upstream: str, *, reject_batches: bool = False) -> None:
        self.upstream = upstream
        #: Answer every batch with one JSON-RPC error, as nodes without batch support do.
        self.reject_batches = reject_batches
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
                if proxy.reject_batches and isinstance(msg, list):
                    refusal = {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32600, "message": "batch requests are not supported"},
                    }
                    self._reply(json.dumps(refusal).encode())
                    return
                req = urllib.request.Request(
                    proxy.upstream, data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=120) as resp:
                    self._reply(resp.read())

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
