"""Keeper bugs the soak run (bench/soak.py) found, each pinned by a test on the real service,
the real protocol and a real anvil (the e2e devnet of tests/test_keeper_e2e.py):

- a lost record: the bounty of a final transaction was read in the one pass that saw it become
  final; a fault (or a kill) there left the row without its bounty for good;
- a duplicate send: an instrument's settlement sent again at the next price round while the
  first transaction had no receipt yet (the second reverts; main fixed this case for
  settlements too), and the same for an account (a liquidation decided while its flag is
  pending, at the nonce the flag moves); one transaction per target without a receipt now;
- an RPC fault during the simulation was taken for a revert and backed the account off;
- the periodic consistency check compared the index (at its cursor) with the head, so every
  change in between was an error (and a trade in between a whole re-index).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from keeper.config import load_config_data
from keeper.deployment import bind
from keeper.devnet.fault_proxy import FaultProxy
from keeper.service import KeeperService
from keeper.store import Store
from keeper.store.models import Decision, DecisionOutcome, Transaction
from tests.test_keeper_e2e import ANVIL_KEY_1, KEY_ENV, Devnet, _drive, _rows, devnet

pytestmark = pytest.mark.anvil
__all__ = ["devnet"]  # the fixture, imported


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, ANVIL_KEY_1)
    return f"sqlite:///{tmp_path / 'k.db'}"


@pytest.fixture
def proxy(devnet: Devnet) -> Iterator[FaultProxy]:
    with FaultProxy(devnet.anvil.url, seed=1) as p:
        yield p


def _service(net: Devnet, url: str, rpc_url: str | None = None, **rpc: object) -> KeeperService:
    data = net.config(url)
    data["rpc"] = {**data["rpc"], **({"url": rpc_url} if rpc_url else {}), **rpc}
    data["metrics"]["enabled"] = False
    service = KeeperService(load_config_data(data))
    service.open()
    return service


def test_bounty_of_a_final_transaction_is_recorded_after_an_interrupted_pass(
    devnet: Devnet, url: str
) -> None:
    net = devnet
    service = _service(net, url)
    try:
        net.move(0.70, 0.75, 1.3)
        _drive(service, net, 10)
    finally:
        service.close()
    _, txs = _rows(url)
    paid = [t for t in txs if t.status == "final" and t.bounty]
    assert paid, "the crash must pay the keeper liquidation bounties"
    onchain = int(net.ch.functions.bounties(net.keeper).call())
    assert sum(t.bounty or 0 for t in txs) == onchain
    # What a fault (or a kill) between "final" and the receipt's bounty read leaves behind.
    store = Store.open(url)
    for t in paid:
        assert t.id is not None
        store.update_transaction(t.id, bounty=None)
    store.close()
    service = _service(net, url)
    try:
        service.tick()
    finally:
        service.close()
    _, txs = _rows(url)
    assert all(t.bounty is not None for t in txs if t.status == "final")
    assert sum(t.bounty or 0 for t in txs) == onchain


def test_one_transaction_in_flight_per_target(devnet: Devnet, url: str) -> None:
    net = devnet
    w3 = net.w3
    service = _service(net, url)
    try:
        _drive(service, net, 1)
        expiry = max(int(i["expiry"]) for i in net.deployment.instruments)
        w3.provider.make_request("evm_setNextBlockTimestamp", [expiry + 60])
        net.move(1.0, 1.0)  # post-expiry rounds, mined
        w3.provider.make_request("evm_setAutomine", [False])
        service.tick()  # settlements sent, none mined
        _, txs = _rows(url)
        first = Counter(_targets(url).values())
        assert first and all(t.status == "pending" for t in txs)
        _drop_then_new_round(net)
        service.tick()
        again = Counter(_targets(url).values())
        assert again == first, "a second transaction for a target with one in flight"
        skipped = service.metrics.skipped.labels("in_flight")._value.get()
        assert skipped >= sum(first.values())
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        service.close()


def test_no_second_transaction_for_an_account_with_one_in_flight(devnet: Devnet, url: str) -> None:
    net = devnet
    w3 = net.w3
    service = _service(net, url)
    try:
        _drive(service, net, 1)
        net.move(0.85, 0.88, 1.2)  # margin calls: flags
        w3.provider.make_request("evm_setAutomine", [False])
        service.tick()  # sent, none mined
        first = Counter(_targets(url).values())
        assert first, "the move must call some accounts"
        _drop_then_new_round(net, 0.8)  # the market falls further
        service.tick()
        # A flagged-in-flight account now liquidatable: another key, the same account.
        again = Counter(_targets(url).values())
        assert all(again[t] == 1 for t in first), "a second transaction for an account"
        assert service.metrics.skipped.labels("in_flight")._value.get() >= 1
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        service.close()


def _drop_then_new_round(net: Devnet, price_factor: float = 1.0) -> None:
    """The node loses the keeper's pending transactions (they stay in flight for the keeper);
    a new round of every feed (prices times ``price_factor``) is mined."""
    w3 = net.w3
    w3.provider.make_request("anvil_dropAllTransactions", [])
    for u in net.deployment.underlyings:
        sym = u["symbol"]
        for feed, f in ((f"{sym}/USD", price_factor), (f"{sym}/IV", 1)):
            c = bind(w3, net.deployment, f"MockAggregator:{feed}")
            c.functions.setAnswer(round(int(c.functions.answer().call()) * f)).transact(
                {"from": w3.eth.accounts[0], "gas": 200_000}
            )
    w3.provider.make_request("evm_mine", [])


def _targets(url: str) -> dict[int, str]:
    """tx id -> the target (account or instrument) of its decision."""
    store = Store.open(url)
    try:
        with store.session() as s:
            rows = s.exec(
                select(Transaction, Decision).where(Transaction.decision_id == Decision.id)
            ).all()
            return {t.id: d.account for t, d in rows if t.id is not None}
    finally:
        store.close()


def test_rpc_fault_in_simulation_is_no_revert(devnet: Devnet, url: str, proxy: FaultProxy) -> None:
    net = devnet
    service = _service(net, url, proxy.url, max_retries=0)
    try:
        _drive(service, net, 1)
        net.move(0.70, 0.75, 1.3)
        # The first chunk's simulation batch fails (eth_simulateV1 on anvil; eth_estimateGas on a
        # node without it): the block job fails.
        proxy.add("http_500", methods=["eth_simulateV1", "eth_estimateGas"], times=1)
        service.tick()
        assert proxy.counts["http_500"] == 1
        decisions, txs = _rows(url)
        assert not [d for d in decisions if d.outcome == DecisionOutcome.SIMULATION_REVERTED]
        assert all(d.backoff_until is None for d in decisions)
        _drive(service, net, 4)  # the next runs act
        decisions, txs = _rows(url)
        assert any(t.status == "final" for t in txs)
        assert not [d for d in decisions if "Rpc" in (d.outcome_detail or "")]
    finally:
        service.close()


def test_consistency_check_compares_at_the_indexed_block(
    devnet: Devnet, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    net = devnet
    service = _service(net, url)
    try:
        indexed = service.indexer.cursor()
        # The chain moves on before the next block run: an account's nonce changes.
        a = net.market.accounts[0]
        usdc = bind(net.w3, net.deployment, "MockERC20:USDC")
        usdc.functions.mint(a.owner, 10**6).transact({"from": a.owner})
        usdc.functions.approve(net.ch.address, 10**6).transact({"from": a.owner})
        h = net.ch.functions.deposit(a.account, 0, 10**6).transact({"from": a.owner})
        net.w3.eth.wait_for_transaction_receipt(h)
        assert net.w3.eth.block_number > (indexed or 0)
        with caplog.at_level(logging.ERROR, logger="keeper.service"):
            service.consistency()
        assert not [r for r in caplog.records if "disagrees" in r.getMessage()]
        assert service.indexer.cursor() == indexed  # no re-index
    finally:
        service.close()
