"""New heads by subscription (eth_subscribe newHeads) on a real anvil over WebSocket.

Blocks are mined by the test (``evm_mine``); every wait is on a condition with a generous
timeout, never on a duration. The connection is cut by a TCP forwarder the test closes and
reopens on the same port; a node without subscriptions is played by a WebSocket server that
forwards every request to anvil and refuses ``eth_subscribe``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from keeper.chain.heads import UNSUPPORTED, HeadSubscription
from keeper.config import load_config_data
from keeper.deployment import deploy_protocol
from keeper.devnet import Anvil
from keeper.secrets import clear_registry
from keeper.service import KeeperService
from tests.conftest import LOG_DIR


@pytest.fixture(scope="module")
def node() -> Iterator[Anvil]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with Anvil(log_path=LOG_DIR / f"anvil-heads-{worker}.log") as n:
        yield n
    clear_registry()


def ws_of(url: str) -> str:
    return url.replace("http://", "ws://")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class TcpForwarder:
    """Loopback TCP forwarding to anvil on a fixed port; ``cut()`` closes the listener and
    every connection (the keeper sees its WebSocket drop), ``resume()`` listens again on the
    same port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.port = 0
        self.resume()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def resume(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        self.port = s.getsockname()[1]
        s.listen(16)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            return
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self._listener is not None
        # shutdown() first: it wakes the accept() of the other thread, which would otherwise
        # keep the port bound after close().
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


class NoSubscriptions:
    """A WebSocket JSON-RPC endpoint that forwards every request to anvil over HTTP and
    answers ``eth_subscribe`` with an error, as a provider without subscriptions does."""

    def __init__(self, upstream: str) -> None:
        from websockets.sync.server import serve

        self.upstream = upstream
        self.refused = 0

        def handler(ws: Any) -> None:
            for message in ws:
                msg = json.loads(message)
                if isinstance(msg, dict) and msg.get("method") == "eth_subscribe":
                    self.refused += 1
                    error = {"code": -32601, "message": "the method eth_subscribe does not exist"}
                    ws.send(json.dumps({"jsonrpc": "2.0", "id": msg.get("id"), "error": error}))
                    continue
                req = urllib.request.Request(
                    self.upstream, data=message if isinstance(message, bytes) else
                    message.encode(), headers={"Content-Type": "application/json"},
                )  # fmt: skip
                with urllib.request.urlopen(req, timeout=30) as resp:
                    ws.send(resp.read().decode())

        self._server = serve(handler, "127.0.0.1", 0)
        self.port = self._server.socket.getsockname()[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()


def head_number(node: Anvil) -> int:
    return int(str(node.rpc("eth_blockNumber")), 16)


def test_heads_arrive_by_subscription_and_resubscribe_after_a_cut(node: Anvil) -> None:
    assert node.port is not None
    fwd = TcpForwarder(node.port)
    ids: list[str] = []
    seen: list[int] = []
    sub = HeadSubscription(fwd.url, on_head=lambda h: seen.append(h.number),
                           on_subscribed=ids.append, timeout=5).start()  # fmt: skip
    try:
        wait_for(lambda: sub.live, "the subscription")
        for _ in range(3):
            node.rpc("evm_mine")
        wait_for(lambda: sub.latest is not None and sub.latest.number == head_number(node),
                 "the mined heads")  # fmt: skip
        assert sub.heads >= 3 and seen[-3:] == list(range(head_number(node) - 2,
                                                          head_number(node) + 1))  # fmt: skip
        latest = sub.latest
        assert latest is not None
        block = node.rpc("eth_getBlockByNumber", [hex(latest.number), False])
        assert isinstance(block, dict) and block["hash"] == latest.hash
        assert sub.fresh_head(60) == latest
        # The connection is cut: the subscription is not live (the block loop polls) ...
        fwd.cut()
        wait_for(lambda: not sub.live, "the cut to be noticed")
        assert sub.fresh_head(60) is None
        node.rpc("evm_mine")  # a block while it is down
        fwd.resume()
        # ... and when the endpoint is back it subscribes again, under a new id, and follows.
        wait_for(lambda: sub.subscriptions == 2 and sub.live, "the resubscription")
        assert len(ids) == 2 and ids[0] != ids[1] and sub.subscription_id == ids[1]
        for _ in range(2):
            node.rpc("evm_mine")
        wait_for(lambda: sub.latest is not None and sub.latest.number == head_number(node),
                 "heads after the resubscription")  # fmt: skip
    finally:
        sub.stop()
        fwd.cut()


def test_refused_subscription_is_reported_unsupported(node: Anvil) -> None:
    server = NoSubscriptions(node.url)
    sub = HeadSubscription(server.url, timeout=5).start()
    try:
        wait_for(lambda: sub.state == UNSUPPORTED, "the refusal")
        assert server.refused == 1 and sub.heads == 0 and sub.fresh_head(60) is None
    finally:
        sub.stop()
        server.close()


@pytest.fixture(scope="module")
def deployment(
    node: Anvil, contracts_built: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 60}))
    path = tmp_path_factory.mktemp("heads") / "deployment.json"
    deploy_protocol(w3).write(path)
    return path


def run_service(
    ws_url: str, http_url: str, dep: Path, tmp_path: Path
) -> tuple[KeeperService, threading.Thread]:
    cfg = load_config_data(
        {
            "rpc": {"url": http_url, "ws_url": ws_url, "chain_id": 31337, "timeout_seconds": 10},
            "deployment": {"file": str(dep)},
            "store": {"url": f"sqlite:///{tmp_path}/keeper.db"},
            "decisions": {"confirmations": 1, "block_poll_interval_seconds": 0.2},
            "metrics": {"enabled": False},
            "service": {"dry_run": True, "watchdog_seconds": 600,
                        "consistency_interval_seconds": 0},
        },
        environ={},
    )  # fmt: skip
    svc = KeeperService(cfg)
    thread = threading.Thread(target=svc.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    return svc, thread


def heads_by(svc: KeeperService, source: str) -> float:
    return svc.metrics.heads.labels(source)._value.get()


def wait_until_processed(svc: KeeperService, target: int) -> None:
    wait_for(lambda: processed(svc) == target, f"block {target}")


def processed(svc: KeeperService) -> int:
    last = svc._last_processed
    return -1 if last is None else last.number


def running(svc: KeeperService, node: Anvil) -> None:
    """Past start-up (whose own catch-up processes the head it reads without the block loop)
    and the block loop scheduled."""
    wait_for(lambda: svc._scheduler is not None and svc._scheduler.running, "the block loop")
    wait_until_processed(svc, head_number(node))


def warm_up(svc: KeeperService, node: Anvil) -> None:
    """Subscribed, and one head received by it: until then the loop polls (it has no head of
    the subscription to go by), so a block mined earlier may be learnt either way."""
    running(svc, node)
    wait_for(lambda: svc.heads is not None and svc.heads.live, "the keeper's subscription")
    node.rpc("evm_mine")
    target = head_number(node)
    wait_for(lambda: svc.heads.heads >= 1 and processed(svc) == target, "the first head")


def test_service_follows_heads_by_subscription_and_polls_when_refused(
    node: Anvil, deployment: Path, tmp_path: Path
) -> None:
    # 1. Subscription: every new block is learnt from it, none by polling the head.
    svc, thread = run_service(ws_of(node.url), node.url, deployment, tmp_path / "a")
    try:
        warm_up(svc, node)
        polled, subscribed = heads_by(svc, "poll"), heads_by(svc, "subscription")
        for _ in range(3):
            node.rpc("evm_mine")
            target = head_number(node)
            wait_until_processed(svc, target)
        assert heads_by(svc, "subscription") >= subscribed + 3
        assert heads_by(svc, "poll") == polled
        assert svc.metrics.head_subscriptions._value.get() == 1
    finally:
        svc.stop()
        thread.join(timeout=60)
    # 2. A node that refuses eth_subscribe: the keeper polls and still follows every block.
    server = NoSubscriptions(node.url)
    svc, thread = run_service(server.url, node.url, deployment, tmp_path / "b")
    try:
        wait_for(lambda: svc.heads is not None and svc.heads.state == UNSUPPORTED, "the refusal")
        running(svc, node)
        for _ in range(3):
            node.rpc("evm_mine")
            target = head_number(node)
            wait_until_processed(svc, target)
        assert heads_by(svc, "poll") >= 3
        assert heads_by(svc, "subscription") == 0
        assert server.refused == 1
    finally:
        svc.stop()
        thread.join(timeout=60)
        server.close()


def test_service_resubscribes_after_the_connection_is_cut(
    node: Anvil, deployment: Path, tmp_path: Path
) -> None:
    assert node.port is not None
    fwd = TcpForwarder(node.port)
    svc, thread = run_service(fwd.url, node.url, deployment, tmp_path)
    try:
        warm_up(svc, node)
        fwd.cut()
        wait_for(lambda: not svc.heads.live, "the cut to be noticed")
        node.rpc("evm_mine")  # while the WebSocket is down: learnt by polling over HTTP...
        fwd.resume()
        wait_for(lambda: svc.metrics.head_subscriptions._value.get() == 2, "the resubscription")
        received = svc.heads.heads
        node.rpc("evm_mine")  # the new subscription's first head (a poll may get there first)
        wait_for(lambda: svc.heads.heads > received, "a head by the new subscription")
        wait_until_processed(svc, head_number(node))
        before = heads_by(svc, "subscription")
        for _ in range(2):  # ... and after it, by the new subscription again
            node.rpc("evm_mine")
            target = head_number(node)
            wait_until_processed(svc, target)
        assert heads_by(svc, "subscription") >= before + 2
    finally:
        svc.stop()
        thread.join(timeout=60)
        fwd.cut()
