"""Several RPC endpoints (keeper.chain.fallback) on the real thing: anvil, the deployed
protocol, the fault proxy in front of the first endpoint and a second endpoint.

Reads keep working when the first endpoint drops every request (without back-off on it), the
provider fails over and back, an endpoint whose head is behind the pinned block is not asked
for pinned reads, a signed transaction goes to the primary and, when it fails, to the next,
a fallback on another chain is a named start-up error, and no URL secret reaches a message,
a repr or a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from bench.keeper_setup import free_port
from keeper.chain import Chain, RetryPolicy, RpcUnavailable, WrongChain
from keeper.chain.fallback import EndpointWrongChain, FallbackProvider
from keeper.config import ConfigError, RpcConfig, load_config_data
from keeper.deployment import Deployment, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.fault_proxy import FaultProxy
from keeper.metrics import KeeperMetrics
from keeper.service import KeeperService
from keeper.status import probe_endpoints

#: anvil's dev account #3 (public, devnet only): signs the broadcast test's transfers.
DEV_KEY_3 = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"


@pytest.fixture(scope="module")
def deployment(w3: Web3, contracts_built: None) -> Deployment:
    return deploy_protocol(w3)


@pytest.fixture()
def proxy(anvil: Anvil) -> Iterator[FaultProxy]:
    with FaultProxy(anvil.url, seed=7) as p:
        yield p


class Clock:
    """The provider's clock, moved by the test (health decays with time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _connect(first: str, deployment: Deployment, *fallbacks: str, **kw: object) -> Chain:
    kw.setdefault("retry", RetryPolicy(max_retries=1, base_delay=0.01, seed=1))
    return Chain.connect(first, deployment, fallback_urls=fallbacks, timeout=5.0, **kw)  # type: ignore[arg-type]


def _provider(chain: Chain) -> FallbackProvider:
    provider = chain.w3.provider
    assert isinstance(provider, FallbackProvider)
    return provider


def _accounts(deployment: Deployment) -> list[int]:
    return [deployment.backstop_account]


def test_reads_keep_working_when_the_first_endpoint_drops_everything(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy
) -> None:
    chain = _connect(proxy.url, deployment, anvil.url)
    fb = _provider(chain)
    direct = Chain.connect(anvil.url, deployment)
    proxy.add("drop")  # every request to the first endpoint, from now on
    head = chain.head()
    snap = chain.view(head).snapshot(_accounts(deployment))
    expected = direct.view(head).snapshot(_accounts(deployment))
    assert proxy.counts["drop"] >= 1
    assert (snap.block, snap.timestamp, snap.accounts) == (
        expected.block,
        expected.timestamp,
        expected.accounts,
    )
    first, second = fb.states()
    assert not first.healthy and first.failures >= 1
    assert second.healthy and second.failures == 0
    # Retried on the next endpoint at once, never after a back-off on the first.
    assert fb.stats.waits == []
    assert fb.failovers >= 1
    # Once unhealthy, the first endpoint is not asked again for the next read (only for its
    # head, in the background).
    asked = [m for m in proxy.methods if m != "eth_blockNumber"]
    chain.view(chain.head()).snapshot(_accounts(deployment))
    assert [m for m in proxy.methods if m != "eth_blockNumber"] == asked


def test_fails_over_and_back(anvil: Anvil, deployment: Deployment, proxy: FaultProxy) -> None:
    clock = Clock()
    chain = _connect(proxy.url, deployment, anvil.url, unhealthy_seconds=5.0)
    fb = _provider(chain)
    fb.clock = clock
    rule = proxy.add("http_500", times=1)
    chain.head()
    assert rule.fired == 1
    first, second = fb.states()
    assert (first.healthy, first.failures, second.healthy) == (False, 1, True)

    # While the first is unhealthy, the second answers (the first is not asked).
    def reads() -> int:
        return proxy.methods.count("eth_getBlockByNumber")

    asked = reads()
    chain.head()
    assert reads() == asked
    # One failure is forgotten after about one half-life: the first endpoint is primary again.
    clock.now += 5.0 * 1.1
    assert fb.states()[0].healthy
    chain.head()
    assert reads() == asked + 1


def test_every_endpoint_down_is_a_named_error_after_bounded_rounds(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy
) -> None:
    with FaultProxy(anvil.url, seed=8) as second:
        chain = _connect(proxy.url, deployment, second.url)
        fb = _provider(chain)
        proxy.add("http_500")
        second.add("http_500")
        with pytest.raises(RpcUnavailable, match="no RPC endpoint answered"):
            chain.head()
        # max_retries=1: two rounds over both endpoints, one back-off between them.
        assert (proxy.counts["http_500"], second.counts["http_500"]) == (2, 2)
        assert len(fb.stats.waits) == 1 and fb.stats.gave_up == 1


def test_an_endpoint_behind_the_pinned_block_is_not_asked(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy
) -> None:
    with FaultProxy(anvil.url, seed=9) as lagging, FaultProxy(anvil.url, seed=10) as third:
        # Behind from the start: every head the keeper learns of it (at start-up, in the
        # background after each head read) is 3 blocks below the block the reads are pinned to.
        lagging.lag_blocks = 3
        chain = _connect(proxy.url, deployment, lagging.url, third.url)
        head = chain.head()  # from the first endpoint: the real head
        proxy.add("drop", methods=["eth_call"])  # the first endpoint fails the reads
        snap = chain.view(head).snapshot(_accounts(deployment))
        assert snap.block == head
        assert "eth_call" not in lagging.methods  # asked for its head only
        assert "eth_blockNumber" in lagging.methods
        assert "eth_call" in third.methods
        assert proxy.counts["drop"] >= 1


def test_a_signed_transaction_goes_to_the_primary_then_to_the_next(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy
) -> None:
    with FaultProxy(anvil.url, seed=11) as second:
        chain = _connect(proxy.url, deployment, second.url)
        w3 = chain.w3
        acct = w3.eth.account.from_key(DEV_KEY_3)

        def transfer() -> bytes:
            tx = {
                "to": acct.address,
                "value": 1,
                "gas": 21_000,
                "gasPrice": 2 * int(w3.eth.gas_price),
                "nonce": w3.eth.get_transaction_count(acct.address, "pending"),
                "chainId": deployment.chain_id,
            }
            raw = acct.sign_transaction(tx).raw_transaction
            return bytes(w3.eth.send_raw_transaction(raw))

        tx_hash = transfer()
        assert "eth_sendRawTransaction" in proxy.methods
        assert "eth_sendRawTransaction" not in second.methods
        assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 1
        proxy.add("drop", methods=["eth_sendRawTransaction"])
        tx_hash = transfer()
        assert "eth_sendRawTransaction" in second.methods
        assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 1


def test_a_fallback_on_another_chain_is_a_named_start_up_error(
    anvil: Anvil, deployment: Deployment
) -> None:
    wrong = pytest.raises(EndpointWrongChain, match=r"RPC endpoint 1 .* chain id 99")
    with Anvil(chain_id=99) as other, wrong as info:
        Chain.connect(anvil.url, deployment, fallback_urls=[other.url])
    assert isinstance(info.value, WrongChain)
    assert (info.value.index, info.value.actual, info.value.expected) == (
        1,
        99,
        deployment.chain_id,
    )


def test_no_url_secret_in_errors_reprs_logs_or_metrics(
    anvil: Anvil,
    deployment: Deployment,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_path = "0123456789abcdef0123456789abcdef"
    key_query = "Sup3rSecretQueryKey42"
    with FaultProxy(anvil.url, seed=12) as second:
        first_url = f"{proxy.url}/v3/{key_path}"
        port = second.url.rsplit(":", 1)[1]
        second_url = f"http://user:pa55w0rdXYZ@127.0.0.1:{port}/?apikey={key_query}"
        caplog.set_level(logging.DEBUG)
        chain = _connect(first_url, deployment, second_url)
        fb = _provider(chain)
        metrics = KeeperMetrics()
        metrics.watch_endpoints(fb.states)
        proxy.add("drop")
        chain.head()  # fails over (logged)
        second.add("http_500")
        with pytest.raises(RpcUnavailable) as info:
            chain.head()
        cfg = RpcConfig(url=first_url, fallback_urls=(second_url,), chain_id=31337)
        texts = [
            str(info.value),
            repr(fb),
            repr(cfg),
            caplog.text,
            metrics.render().decode(),
            repr(fb.states()),
        ]
        assert "keeper_rpc_endpoint_healthy" in texts[4]
        for text in texts:
            for secret in (key_path, key_query, "pa55w0rdXYZ"):
                assert secret not in text


def test_config_fallback_urls(anvil: Anvil) -> None:
    base = {"rpc": {"url": anvil.url, "chain_id": 31337}, "deployment": {"file": "d.json"}}
    env = {"KEEPER__RPC__FALLBACK_URLS": '["https://b.example/v2/abcdef0123456789abcdef"]'}
    cfg = load_config_data(base, env)
    assert cfg.rpc.fallback_urls == ("https://b.example/v2/abcdef0123456789abcdef",)
    assert "abcdef0123456789abcdef" not in repr(cfg.rpc)
    bad = {**base, "rpc": {**base["rpc"], "fallback_urls": ["ftp://x.example/key"]}}
    with pytest.raises(ConfigError, match=r"rpc\.fallback_urls"):
        load_config_data(bad, {})
    twice = {**base, "rpc": {**base["rpc"], "fallback_urls": ["http://a:1", "http://a:1"]}}
    with pytest.raises(ConfigError, match="listed twice"):
        load_config_data(twice, {})


def test_status_shows_every_endpoint_redacted(anvil: Anvil) -> None:
    key = "0123456789abcdef0123456789abcdef"
    anvil.rpc("evm_mine")  # a head above genesis, whichever test used the session's node first
    lines = probe_endpoints([anvil.url, f"http://127.0.0.1:1/v3/{key}"], timeout=2.0)
    up, down = lines
    assert (up.index, up.chain_id, up.error) == (0, 31337, None)
    assert up.head is not None and up.head >= 1
    assert (down.index, down.head) == (1, None)
    assert down.error is not None and down.error.startswith("RpcUnavailable")
    assert key not in repr(lines) and down.endpoint == "http://127.0.0.1:1/***"


def test_an_endpoint_down_at_start_up_is_checked_before_its_first_use(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy
) -> None:
    with FaultProxy(anvil.url, seed=13) as second:
        second.add("drop")
        chain = _connect(proxy.url, deployment, second.url)
        fb = _provider(chain)
        assert [e.chain_ok for e in fb.endpoints] == [True, None]
        second.clear()
        second.reset_counts()
        proxy.add("drop")
        chain.head()
        assert second.methods[:2] == ["eth_chainId", "eth_getBlockByNumber"]
        assert fb.endpoints[1].chain_ok is True


def test_a_hanging_endpoint_is_overtaken_by_the_next(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy
) -> None:
    with FaultProxy(anvil.url, seed=14) as second:
        chain = _connect(proxy.url, deployment, second.url, hedge_after_seconds=0.2)
        fb = _provider(chain)
        rule = proxy.add("timeout", times=1, hang_seconds=3.0)  # below the 5-s client timeout
        head = chain.head()
        assert rule.fired == 1 and fb.hedges == 1
        assert head.number == Web3(Web3.HTTPProvider(anvil.url)).eth.block_number
        assert "eth_getBlockByNumber" in second.methods
        assert fb.failovers == 1 and fb.stats.waits == []


def test_a_primary_that_falls_behind_is_passed_over_for_the_head(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy
) -> None:
    chain = _connect(proxy.url, deployment, anvil.url, max_lag_blocks=2)
    fb = _provider(chain)
    fb.clock = Clock()  # heads compared at one instant, however slow the machine
    proxy.lag_blocks = 5
    real = Web3(Web3.HTTPProvider(anvil.url)).eth.block_number
    assert chain.head().number == real - 5  # the primary's answer; the other's head is asked
    deadline = time.monotonic() + 10
    while fb.states()[1].head is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the background head check of endpoint 1
    first, second = fb.states()
    assert (first.head, second.head) == (real - 5, real)
    assert not first.healthy and second.healthy
    assert chain.head().number == real


def test_an_endpoint_without_the_pinned_block_is_passed_over(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy
) -> None:
    # Another node of the same chain id whose chain does not hold the pinned block (a fork),
    # though its head is higher: it answers "not found" for the block's hash.
    with (
        Anvil() as fork,
        FaultProxy(fork.url, seed=15) as forked,
        FaultProxy(anvil.url, seed=16) as third,
    ):
        real = Web3(Web3.HTTPProvider(anvil.url)).eth.block_number
        fork.rpc("anvil_mine", [hex(real + 10)])
        chain = _connect(proxy.url, deployment, forked.url, third.url)
        head = chain.head()
        proxy.add("drop", methods=["eth_call"])
        snap = chain.view(head).snapshot(_accounts(deployment))
        assert snap.block == head
        # Asked (its head is high enough), answered "not found", then the third was asked.
        assert "eth_call" in forked.methods and "eth_call" in third.methods


def test_the_keeper_fails_over_and_back(
    anvil: Anvil, deployment: Deployment, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The keeper service itself (read-only): it keeps processing blocks while its first
    endpoint drops everything, shows it in its metrics, and reads from it again once it is
    healthy."""
    deployment.write(tmp_path / "deployment.json")
    cfg = load_config_data(
        {
            "rpc": {
                "url": proxy.url,
                "fallback_urls": [anvil.url],
                "chain_id": 31337,
                "timeout_seconds": 10,
                "unhealthy_seconds": 5,
            },
            "deployment": {"file": str(tmp_path / "deployment.json")},
            "store": {"url": f"sqlite:///{tmp_path}/keeper.db"},
            "decisions": {"confirmations": 1},
            "metrics": {"enabled": False},
            "service": {"dry_run": True, "consistency_interval_seconds": 0},
        },
        environ={},
    )
    svc = KeeperService(cfg)
    svc.open()
    try:
        assert svc.chain is not None
        fb = _provider(svc.chain)
        clock = fb.clock = Clock()

        def healthy_gauge(index: int) -> str:
            for line in svc.metrics.render().decode().splitlines():
                if line.startswith(f'keeper_rpc_endpoint_healthy{{endpoint="{index}"'):
                    return line.rsplit(" ", 1)[1]
            raise AssertionError(f"no healthy gauge for endpoint {index}")

        assert healthy_gauge(0) == "1.0"
        proxy.add("drop")
        anvil.rpc("evm_mine")
        report = svc.tick()
        assert report is not None and report.processed
        assert svc.health.last_block == report.head == _direct_head(anvil)
        assert proxy.counts["drop"] >= 1
        assert healthy_gauge(0) == "0.0" and healthy_gauge(1) == "1.0"

        proxy.clear()
        clock.now += 5 * 10  # the failures are forgotten
        calls = proxy.methods.count("eth_call")
        anvil.rpc("evm_mine")
        report = svc.tick()
        assert report is not None and report.processed
        assert proxy.methods.count("eth_call") > calls  # the block's reads went to it again
        assert healthy_gauge(0) == "1.0"
    finally:
        svc.close()


def _direct_head(anvil: Anvil) -> int:
    return int(Web3(Web3.HTTPProvider(anvil.url)).eth.block_number)


def test_websocket_primary_with_http_fallbacks(
    anvil: Anvil, deployment: Deployment, tmp_path: Path
) -> None:
    """``ws_url`` and ``fallback_urls`` together: the WebSocket endpoint carries reads and
    heads while it is up; when it is down the keeper service keeps processing blocks through
    the HTTP fallback, and the head subscription's failures stop nothing."""
    deployment.write(tmp_path / "deployment.json")
    dead = f"ws://127.0.0.1:{free_port()}"

    def service(ws_url: str, fallbacks: list[str]) -> KeeperService:
        cfg = load_config_data(
            {
                "rpc": {
                    "url": anvil.url,
                    "ws_url": ws_url,
                    "fallback_urls": fallbacks,
                    "chain_id": 31337,
                    "timeout_seconds": 5,
                },
                "deployment": {"file": str(tmp_path / "deployment.json")},
                "store": {"url": f"sqlite:///{tmp_path}/keeper-{len(ws_url)}-{len(fallbacks)}.db"},
                "decisions": {"confirmations": 1},
                "metrics": {"enabled": False},
                "service": {"dry_run": True, "consistency_interval_seconds": 0},
            },
            environ={},
        )
        return KeeperService(cfg)

    live = service(anvil.url.replace("http://", "ws://"), [anvil.url])
    live.open()
    try:
        assert live.chain is not None
        states = _provider(live.chain).states()
        assert [s.healthy for s in states] == [True, True]
        anvil.rpc("evm_mine")
        report = live.tick()
        assert report is not None and report.processed
        ws, http = _provider(live.chain).states()
        assert ws.endpoint.startswith("ws://") and ws.failures == 0
        assert ws.requests > 5 * http.requests  # the WebSocket endpoint carried the reads
    finally:
        live.close()

    # The HTTP ``url`` stays behind the WebSocket endpoint even without fallback_urls (and is
    # not listed twice when it is one of them).
    for fallbacks in ([anvil.url], []):
        down = service(dead, fallbacks)
        down.open()  # the dead WebSocket endpoint is passed over from the first request
        try:
            assert down.chain is not None
            for _ in range(2):
                anvil.rpc("evm_mine")
                report = down.tick()
                assert report is not None and report.processed
                assert down.health.last_block == report.head == _direct_head(anvil)
            first, second = _provider(down.chain).states()
            assert not first.healthy and second.healthy
            assert second.endpoint == anvil.url.removesuffix("/")  # redacted = as given here
        finally:
            down.close()
