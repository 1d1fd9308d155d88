"""The keeper service end to end on a real anvil with the deployed protocol, on SQLite and on
PostgreSQL: a seeded market of hedged and naked books, an oracle crash, and the keeper's margin
calls, liquidations, bounties and settlements — each checked on-chain — then a restart that
must resume without duplicates or gaps, and a `keeper run` process stopped by SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from web3 import Web3

from keeper.chain import Chain
from keeper.config import load_config_data
from keeper.deployment import Deployment, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import SeededMarket, seed_market
from keeper.service import KeeperService
from keeper.store import Store
from keeper.store.models import Decision, Transaction

pytestmark = pytest.mark.anvil

WAD = 10**18
KEY_ENV = "KEEPER_E2E_KEY"
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Devnet:
    def __init__(self, anvil: Anvil, tmp: Path) -> None:
        self.anvil = anvil
        self.w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
        self.deployment: Deployment = deploy_protocol(self.w3)
        self.deployment_file = tmp / "deployment.json"
        self.deployment.write(self.deployment_file)
        self.chain = Chain.connect(anvil.url, self.deployment)
        self.market: SeededMarket = seed_market(self.w3, self.deployment, self.chain, 18, seed=11)
        self.ch = bind(self.w3, self.deployment, "ClearingHouse")
        self.keeper = self.w3.eth.accounts[1]

    def config(self, store_url: str, **service: Any) -> dict[str, Any]:
        return {
            "rpc": {"url": self.anvil.url, "chain_id": self.anvil.chain_id},
            "deployment": {"file": str(self.deployment_file)},
            "store": {"url": store_url},
            "signer": {"key_env": KEY_ENV},
            "fees": {"max_fee_per_gas": "500 gwei", "priority_fee": "1 gwei"},
            "decisions": {"min_profit": 0, "confirmations": 1, "block_poll_interval_seconds": 0.2},
            "metrics": {"bind": f"127.0.0.1:{_port()}"},
            "service": {"watchdog_seconds": 60, **service},
        }

    def move(self, factor_eth: float, factor_btc: float, vol_factor: float = 1.0) -> None:
        for u, f in zip(self.deployment.underlyings, (factor_eth, factor_btc), strict=False):
            price = bind(self.w3, self.deployment, f"MockAggregator:{u['symbol']}/USD")
            vol = bind(self.w3, self.deployment, f"MockAggregator:{u['symbol']}/IV")
            p = int(price.functions.answer().call())
            v = int(vol.functions.answer().call())
            for c, x in ((price, round(p * f)), (vol, round(v * vol_factor))):
                h = c.functions.setAnswer(x).transact({"from": self.w3.eth.accounts[0]})
                self.w3.eth.wait_for_transaction_receipt(h)

    def nonces(self) -> dict[int, int]:
        return {
            a.account: int(self.ch.functions.accountState(a.account).call()[0])
            for a in self.market.accounts
        }

    def events(self, name: str, since: int) -> list[Any]:
        return list(getattr(self.ch.events, name)().get_logs(from_block=since))


@pytest.fixture
def devnet(
    tmp_path: Path, contracts_built: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Devnet]:
    monkeypatch.setenv(KEY_ENV, ANVIL_KEY_1)
    with Anvil() as anvil:
        net = Devnet(anvil, tmp_path)
        yield net
        net.chain.close()


def _drive(service: KeeperService, net: Devnet, rounds: int = 8) -> None:
    """Blocks keep coming (as on a live chain) while the keeper works through them."""
    for _ in range(rounds):
        service.tick()
        net.w3.provider.make_request("evm_mine", [])
    service.tick()


def _rows(store_url: str) -> tuple[list[Decision], list[Transaction]]:
    store = Store.open(store_url)
    try:
        with store.session() as s:
            return list(s.exec(select(Decision)).all()), list(s.exec(select(Transaction)).all())
    finally:
        store.close()


def test_crash_liquidations_restart_and_settlement(devnet: Devnet, store_url: str) -> None:
    net = devnet
    cfg = load_config_data(net.config(store_url))
    service = KeeperService(cfg)
    port = service.start_metrics()
    service.open()
    try:
        _drive(service, net, 2)
        decisions, txs = _rows(store_url)
        assert txs == [], "nothing to do in a healthy market"
        assert {d.state for d in decisions} == {"healthy"}
        assert len({d.account for d in decisions}) >= len(net.market.accounts)

        # The crash: the engine's verdict right after it decides who may be touched.
        before = net.nonces()
        crash_block = net.w3.eth.block_number + 1
        net.move(0.70, 0.75, 1.3)
        snap = net.chain.view().snapshot(list(before))
        verdict = {a: snap.full_check(a).state for a in before}
        assert 2 in verdict.values(), "the seeded market must have under-water books"
        _drive(service, net, 10)

        liquidations = net.events("Liquidation", crash_block)
        flags = net.events("MarginCall", crash_block)
        liquidated = {int(e["args"]["account"]) for e in liquidations}
        flagged = {int(e["args"]["account"]) for e in flags}
        assert {a for a, s in verdict.items() if s == 2} <= liquidated
        healthy = {a for a, s in verdict.items() if s == 0}
        assert not (healthy & (liquidated | flagged)), "a healthy account was touched"
        after = net.nonces()
        assert all(after[a] == before[a] for a in healthy)
        for e in liquidations:
            assert e["args"]["liquidator"] == net.keeper
        # Bounties: on-chain credit == what the keeper recorded from its receipts.
        onchain = int(net.ch.functions.bounties(net.keeper).call())
        assert onchain > 0
        decisions, txs = _rows(store_url)
        assert sum(t.bounty or 0 for t in txs) == onchain
        assert all(t.status in ("final", "mined") for t in txs), [t.status for t in txs]
        assert len({t.decision_id for t in txs}) == len(txs)
        # Liquidated books are smaller or gone; positions went to the backstop at mark.
        for a in liquidated:
            _ids, qty = net.ch.functions.positionsOf(a).call()
            seeded = next(x for x in net.market.accounts if x.account == a)
            assert sum(abs(q) for q in qty) < sum(abs(q) for _, q in seeded.positions)

        if port is not None:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            assert "keeper_bounty_earned_wad_total" in body
            assert "keeper_decisions_total" in body
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
            assert health["status"] == "ok"
    finally:
        service.close()

    # Restart on the same database: same chain state, nothing new to send, no gap.
    n_tx = len(txs)
    service = KeeperService(cfg)
    service.open()
    try:
        _drive(service, net, 3)
        _decisions2, txs2 = _rows(store_url)
        assert len(txs2) == n_tx, "a restart re-sent a decision"

        # Expiry: past the dated instruments, with fresh rounds; the keeper settles them.
        expiry = max(int(i["expiry"]) for i in net.deployment.instruments)
        net.w3.provider.make_request("evm_setNextBlockTimestamp", [expiry + 60])
        since = net.w3.eth.block_number + 1
        net.move(1.0, 1.0)
        _drive(service, net, 6)
        settled = {int(e["args"]["instrument"]) for e in net.events("InstrumentSettled", since)}
        dated = {int(i["id"]) for i in net.deployment.instruments if int(i["expiry"]) != 0}
        assert dated <= settled
        holders = net.events("PositionSettled", since)
        assert holders, "holders of expired instruments were settled"
    finally:
        service.close()


def test_lag_gauge_says_how_far_behind_the_block_in_progress_is(
    devnet: Devnet, tmp_path: Path
) -> None:
    """keeper_lag_blocks (and /health's lag) while a block is processed: head minus the last
    processed block; 0 once it is done."""
    net = devnet
    service = KeeperService(load_config_data(net.config(f"sqlite:///{tmp_path / 'k.db'}")))
    service.open()
    try:
        service.tick()
        assert service.metrics.lag._value.get() == 0
        for _ in range(3):
            net.w3.provider.make_request("evm_mine", [])
        core = service.runtime.core
        seen: list[tuple[float, int]] = []
        on_block = core.on_block

        def watched(*args: Any, **kwargs: Any) -> Any:
            seen.append((service.metrics.lag._value.get(), service.health.lag_blocks))
            return on_block(*args, **kwargs)

        core.on_block = watched  # type: ignore[method-assign]  # observe the real call
        report = service.tick()
        assert report is not None and report.processed
        assert seen == [(3, 3)]
        assert service.metrics.lag._value.get() == 0 and service.health.lag_blocks == 0
    finally:
        service.close()


def test_keeper_run_process_over_websocket_liquidates_and_stops_on_sigterm(
    devnet: Devnet, tmp_path: Path
) -> None:
    """`keeper run` as an operator runs it, with a WebSocket endpoint configured (every read and
    every send then goes over the one WebSocket): it liquidates after a crash, then SIGTERM
    stops it with exit status 0."""
    net = devnet
    data = net.config(f"sqlite:///{tmp_path / 'k.db'}")
    data["rpc"]["ws_url"] = net.anvil.url.replace("http://", "ws://")
    path = tmp_path / "keeper.toml"
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    port = int(data["metrics"]["bind"].rsplit(":", 1)[1])
    env = {**os.environ, KEY_ENV: ANVIL_KEY_1}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keeper", "run", "--config", str(path), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                healthy = json.loads(r.read())["status"] == "ok"
                if healthy:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert healthy, proc.stderr.read().decode() if proc.poll() is not None else "no health"
        crash_block = net.w3.eth.block_number + 1
        net.move(0.70, 0.75, 1.3)
        liquidations: list[Any] = []
        while not liquidations and time.monotonic() < deadline and proc.poll() is None:
            net.w3.provider.make_request("evm_mine", [])
            liquidations = net.events("Liquidation", crash_block)
            time.sleep(0.3)
        assert liquidations, "the keeper process did not liquidate after the crash"
        assert {e["args"]["liquidator"] for e in liquidations} == {net.keeper}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        logs = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
        assert any(x["msg"] == "signal received, stopping" for x in logs)
        assert any(x.get("transport") == "websocket" for x in logs), "the keeper used HTTP"
        assert ANVIL_KEY_1[2:] not in err.decode() + out.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    decisions, _ = _rows(f"sqlite:///{tmp_path / 'k.db'}")
    assert decisions, "the keeper recorded its first sweep before stopping"
