"""The fault-injecting JSON-RPC proxy itself (keeper.devnet.fault_proxy), seen by a plain HTTP
client with no retries: each fault kind produces exactly its symptom, rules fire as programmed
and a seeded random run is replayable."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from keeper.devnet import Anvil
from keeper.devnet.fault_proxy import FaultProxy
from tests.conftest import LOG_DIR


@pytest.fixture(scope="module")
def node() -> Iterator[Anvil]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with Anvil(log_path=LOG_DIR / f"anvil-fault-proxy-{worker}.log") as n:
        yield n


@pytest.fixture
def proxy(node: Anvil) -> Iterator[FaultProxy]:
    with FaultProxy(node.url, seed=7) as p:
        yield p


def call(url: str, method: str, params: list[Any] | None = None, timeout: float = 10) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    return requests.post(url, json=body, timeout=timeout)


def batch(url: str, *methods: str) -> requests.Response:
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": []} for i, m in enumerate(methods)]
    return requests.post(url, json=body, timeout=10)


def head(node: Anvil) -> int:
    return int(str(node.rpc("eth_blockNumber")), 16)


def test_passes_through_without_faults(proxy: FaultProxy, node: Anvil) -> None:
    assert call(proxy.url, "eth_chainId").json()["result"] == hex(node.chain_id)
    replies = batch(proxy.url, "eth_chainId", "eth_blockNumber").json()
    assert [r["id"] for r in replies] == [0, 1]
    assert proxy.injected == 0 and proxy.requests == 2
    assert proxy.methods == ["eth_chainId", "eth_chainId", "eth_blockNumber"]


def test_rpc_error_answers_every_element(proxy: FaultProxy) -> None:
    proxy.add("rpc_error", times=2)
    assert call(proxy.url, "eth_chainId").json()["error"]["code"] == -32005
    replies = batch(proxy.url, "eth_chainId", "eth_blockNumber").json()
    assert [(r["id"], r["error"]["code"]) for r in replies] == [(0, -32005), (1, -32005)]
    assert "result" in call(proxy.url, "eth_chainId").json()  # times=2: spent
    assert proxy.counts["rpc_error"] == 2


def test_http_statuses(proxy: FaultProxy) -> None:
    proxy.add("http_429", times=1, retry_after=7)
    proxy.add("http_500", times=1)
    r = call(proxy.url, "eth_chainId")
    assert (r.status_code, r.headers["Retry-After"]) == (429, "7")
    assert call(proxy.url, "eth_chainId").status_code == 500
    assert call(proxy.url, "eth_chainId").status_code == 200


def test_timeout_reaches_the_node_but_never_answers_in_time(proxy: FaultProxy, node: Anvil) -> None:
    before = head(node)
    proxy.add("timeout", times=1, hang_seconds=1.0)
    with pytest.raises(requests.Timeout):
        call(proxy.url, "evm_mine", timeout=0.3)
    assert head(node) == before + 1  # forwarded: the node acted on it


def test_drop_before_and_after_forwarding(proxy: FaultProxy, node: Anvil) -> None:
    before = head(node)
    proxy.add("drop", times=1)
    with pytest.raises(requests.ConnectionError):
        call(proxy.url, "evm_mine")
    assert head(node) == before  # never reached the node
    proxy.add("drop_after", times=1)
    with pytest.raises(requests.ConnectionError):
        call(proxy.url, "evm_mine")
    assert head(node) == before + 1  # reached it; only the answer was lost


def test_truncated_and_malformed_bodies(proxy: FaultProxy) -> None:
    host, port = "127.0.0.1", int(proxy.url.rsplit(":", 1)[1])
    proxy.add("truncate", times=1)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    conn.request("POST", "/", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    proxy.add("malformed", times=1)
    r = call(proxy.url, "eth_chainId")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)


def test_short_batch_loses_its_last_answer(proxy: FaultProxy) -> None:
    proxy.add("short_batch", times=1)
    replies = batch(proxy.url, "eth_chainId", "eth_blockNumber", "net_version").json()
    assert [r["id"] for r in replies] == [0, 1]


def test_short_batch_passes_single_requests_by(proxy: FaultProxy, node: Anvil) -> None:
    # A single request has nothing to cut short: not hit, not counted as a fault.
    proxy.add("short_batch")
    assert call(proxy.url, "eth_chainId").json()["result"] == hex(node.chain_id)
    assert proxy.counts["short_batch"] == 0
    assert len(batch(proxy.url, "eth_chainId", "eth_blockNumber").json()) == 1
    assert proxy.counts["short_batch"] == 1


def test_methods_not_recorded_on_request(node: Anvil) -> None:
    with FaultProxy(node.url, record_methods=False) as p:
        call(p.url, "eth_chainId")
        assert p.requests == 1 and p.methods == []


def test_lagging_head(proxy: FaultProxy, node: Anvil) -> None:
    node.rpc("anvil_mine", ["0x5"])
    now = head(node)
    proxy.lag_blocks = 3
    assert int(call(proxy.url, "eth_blockNumber").json()["result"], 16) == now - 3
    block = call(proxy.url, "eth_getBlockByNumber", ["latest", False]).json()["result"]
    assert int(block["number"], 16) == now - 3
    body = [
        {"jsonrpc": "2.0", "id": 5, "method": "eth_blockNumber", "params": []},
        {"jsonrpc": "2.0", "id": 6, "method": "eth_getBlockByNumber", "params": ["0x1", False]},
        {"jsonrpc": "2.0", "id": 7, "method": "eth_chainId", "params": []},
    ]
    replies = requests.post(proxy.url, json=body, timeout=10).json()
    assert [r["id"] for r in replies] == [5, 6, 7]
    assert int(replies[0]["result"], 16) == now - 3
    assert int(replies[1]["result"]["number"], 16) == 1  # explicit numbers are not moved
    assert proxy.counts["lag"] == 3


def test_rules_by_method_and_seeded_rate(node: Anvil) -> None:
    def run(seed: int) -> list[int]:
        with FaultProxy(node.url, seed=seed) as p:
            p.add("http_500", methods=["eth_blockNumber"], rate=0.5)
            out = [call(p.url, "eth_blockNumber").status_code for _ in range(30)]
            assert call(p.url, "eth_chainId").status_code == 200  # other methods untouched
            assert p.counts["http_500"] == out.count(500)
            return out

    first = run(11)
    assert 0 < first.count(500) < 30
    assert run(11) == first  # replayable from the seed
    assert run(12) != first


def test_upstream_switch_and_unreachable_upstream(proxy: FaultProxy, node: Anvil) -> None:
    proxy.upstream = "http://127.0.0.1:9"  # nothing listens there
    assert call(proxy.url, "eth_chainId").status_code == 502
    proxy.upstream = node.url
    assert call(proxy.url, "eth_chainId").status_code == 200
    with pytest.raises(ValueError, match="unknown fault kind"):
        proxy.add("gremlins")
