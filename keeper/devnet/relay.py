"""A local private relay for devnets and tests: a JSON-RPC server that holds transactions.

It answers what a Flashbots-Protect-style relay answers (``eth_sendPrivateTransaction`` with
``{"tx": raw, "maxBlockNumber": ...}``, or ``eth_sendRawTransaction``) and, instead of handing
the transactions to block builders, releases them to the upstream node (anvil) itself:

* ``release_after = k``: ``k`` blocks after it received a transaction (0: at once);
* ``release_after = None``: never (a relay that accepts and silently drops);
* ``reject = True``: refuses every transaction with a JSON-RPC error.

A released transaction is sent with ``eth_sendRawTransaction``; the node's answer (a hash, or
an error such as "nonce too low" when the keeper's public fall-back already mined the same
nonce) is kept in ``released``. ``relay_status`` (a JSON-RPC method of its own) reports what
was received and released, so a test in another process can watch it.

By hand, in front of a running anvil::

    python -m keeper.devnet.relay --upstream http://127.0.0.1:8545 --release-after 2
    # prints its URL; set it as [relay] url in keeper.toml

It ignores the request path and userinfo: a URL carrying fake credentials reaches it.
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.request
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from eth_utils import keccak


@dataclass
class Held:
    hash: str
    raw: str
    method: str
    received_block: int
    max_block: int | None
    released: bool = False
    #: The node's answer to the release: ``result`` (a hash) or ``error`` (its message).
    result: str | None = None
    error: str | None = None


class LocalRelay:
    def __init__(
        self,
        upstream: str,
        *,
        release_after: int | None = 0,
        reject: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_seconds: float = 0.05,
    ) -> None:
        self.upstream = upstream
        self.release_after = release_after
        self.reject = reject
        self.poll_seconds = poll_seconds
        self.held: list[Held] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    msg = json.loads(body)
                    reply = relay._answer(msg)
                except Exception as exc:  # a malformed request: answered, never fatal
                    reply = _error(None, -32700, f"bad request: {type(exc).__name__}")
                out = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._host = host
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_address[1]}"

    # --- JSON-RPC ---------------------------------------------------------------------------

    def _answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid = msg.get("id")
        method = msg.get("method")
        params = msg.get("params") or []
        with self._lock:
            self.requests += 1
        if method == "relay_status":
            with self._lock:
                return {"jsonrpc": "2.0", "id": rid, "result": [asdict(h) for h in self.held]}
        if method not in ("eth_sendPrivateTransaction", "eth_sendRawTransaction"):
            return _error(rid, -32601, f"method {method} not supported by this relay")
        if self.reject:
            return _error(rid, -32000, "relay refuses the transaction")
        if method == "eth_sendPrivateTransaction":
            spec = params[0]
            raw = spec["tx"]
            max_block = int(spec["maxBlockNumber"], 16) if "maxBlockNumber" in spec else None
        else:
            raw, max_block = params[0], None
        tx_hash = "0x" + keccak(hexstr=raw).hex()
        with self._lock:
            if not any(h.hash == tx_hash for h in self.held):
                block = self._block_number()
                self.held.append(Held(tx_hash, raw, method, block, max_block))
        return {"jsonrpc": "2.0", "id": rid, "result": tx_hash}

    # --- releasing --------------------------------------------------------------------------

    def _upstream(self, method: str, params: list[Any]) -> dict[str, Any]:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        req = urllib.request.Request(
            self.upstream, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            reply: dict[str, Any] = json.loads(resp.read())
        return reply

    def _block_number(self) -> int:
        return int(self._upstream("eth_blockNumber", [])["result"], 16)

    def _release_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            if self.release_after is None:
                continue
            try:
                head = self._block_number()
            except OSError:
                continue  # the node restarting: try again at the next tick
            with self._lock:
                due = [
                    h
                    for h in self.held
                    if not h.released and head >= h.received_block + self.release_after
                ]
            for h in due:
                try:
                    reply = self._upstream("eth_sendRawTransaction", [h.raw])
                except OSError as exc:
                    reply = {"error": {"message": f"upstream unreachable: {exc}"}}
                with self._lock:
                    h.released = True
                    if "error" in reply:
                        h.error = str(reply["error"].get("message", reply["error"]))
                    else:
                        h.result = reply.get("result")

    # --- running ----------------------------------------------------------------------------

    def start(self) -> LocalRelay:
        for target in (self._server.serve_forever, self._release_loop):
            t = threading.Thread(target=target, daemon=True, name="local-relay")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> LocalRelay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keeper.devnet.relay",
        description="A local private relay that holds transactions and releases them to a node.",
    )
    parser.add_argument("--upstream", required=True, help="the node's JSON-RPC URL (anvil)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--release-after", type=int, default=0, metavar="K",
        help="release each transaction K blocks after it arrived (default 0: at once)",
    )  # fmt: skip
    mode.add_argument("--never", action="store_true", help="accept and never release")
    mode.add_argument("--reject", action="store_true", help="refuse every transaction")
    args = parser.parse_args(argv)
    relay = LocalRelay(
        args.upstream,
        release_after=None if args.never else args.release_after,
        reject=args.reject,
        host=args.host,
        port=args.port,
    )
    relay.start()
    print(relay.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
