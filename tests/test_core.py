"""KeeperCore end to end on a real anvil with the deployed protocol, on real stores.

One anvil per module; each test starts from the same seeded chain (evm_snapshot/evm_revert):
hedged and naked books before an oracle crash. The keeper's actions go through TxManager as
real signed transactions; their effects are read back from the contracts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from keeper.chain import Chain, decode_revert, revert_data_of
from keeper.config import FeesConfig
from keeper.core import KeeperCore
from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.fees import FeePolicy
from keeper.orders import dev_matcher
from keeper.pipeline.assess import assess
from keeper.pipeline.types import DecisionPolicy
from keeper.signer import Signer
from keeper.store import Decision, DecisionOutcome, Store, TxStatus
from keeper.transactions import TxManager
from tests.conftest import LOG_DIR

WAD = 10**18
MNEMONIC = "test test test test test test test test test test test junk"
Account.enable_unaudited_hdwallet_features()


def dev_key(index: int) -> str:
    acct = Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(acct.key).hex()


@dataclass
class World:
    node: Anvil
    w3: Web3
    dep: Deployment
    ch: Contract
    eth_feed: Contract
    eth_vol: Contract
    accounts: dict[str, int]
    snapshot_id: str


def _send(w3: Web3, fn, sender: str) -> dict:  # type: ignore[no-untyped-def]
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


def set_eth(world: World, price: int) -> None:
    _send(world.w3, world.eth_feed.functions.setAnswer(price * 10**8), world.w3.eth.accounts[0])
    vol = world.eth_vol.functions.answer().call()
    _send(world.w3, world.eth_vol.functions.setAnswer(vol), world.w3.eth.accounts[0])


@pytest.fixture(scope="module")
def world(contracts_built: None) -> Iterator[World]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with Anvil(log_path=LOG_DIR / f"anvil-core-{worker}.log") as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 60}))
        dep = deploy_protocol(w3)
        ch = bind(w3, dep, "ClearingHouse")
        usdc = bind(w3, dep, "MockERC20:USDC")
        eth_feed = bind(w3, dep, "MockAggregator:ETH/USD")
        eth_vol = bind(w3, dep, "MockAggregator:ETH/IV")
        matcher = w3.eth.accounts[0]
        ins = dep.instruments
        perp = next(i["id"] for i in ins if i["underlying"] == 0 and i["expiry"] == 0)
        fut = next(
            i["id"] for i in ins if i["underlying"] == 0 and i["expiry"] and i["kind"] == "future"
        )
        call = next(i for i in ins if i["underlying"] == 0 and i["kind"] == "call")
        users = {
            "lp": (w3.eth.accounts[1], 10_000_000),
            "naked": (w3.eth.accounts[2], 600),  # 1 perp long: liquidatable at 2800
            "thin": (w3.eth.accounts[3], 700),  # 1 perp long: margin call at 2800
            "healthy": (w3.eth.accounts[4], 5_000),  # 1 perp long
            "hedged": (w3.eth.accounts[6], 700),  # perp long + future short
            "option": (w3.eth.accounts[7], 20_000),  # short call + long perp
        }
        accounts = {}
        for name, (who, amount) in users.items():
            a = account_id(who)
            accounts[name] = a
            _send(w3, usdc.functions.mint(who, amount * 10**6), who)
            _send(w3, usdc.functions.approve(ch.address, amount * 10**6), who)
            _send(w3, ch.functions.deposit(a, 0, amount * 10**6), who)
        lp = accounts["lp"]
        world = World(node, w3, dep, ch, eth_feed, eth_vol, accounts, "")
        set_eth(world, 3000)
        orders = dev_matcher(w3, ch)
        for name in ("naked", "thin", "healthy", "hedged"):
            _send(w3, orders.trade(accounts[name], lp, perp, WAD, 3000 * WAD), matcher)
        _send(w3, orders.trade(lp, accounts["hedged"], fut, WAD, 3000 * WAD), matcher)
        # The 2500 call, sold near its model mark (~535 at spot 3000): inside the price band.
        _send(w3, orders.trade(lp, accounts["option"], call["id"], 2 * WAD, 530 * WAD), matcher)
        _send(w3, orders.trade(accounts["option"], lp, perp, WAD, 3000 * WAD), matcher)
        world.snapshot_id = str(node.rpc("evm_snapshot"))
        yield world


@pytest.fixture
def fresh(world: World) -> Iterator[World]:
    """The seeded chain, as it was after the fixture's set-up."""
    assert world.node.rpc("evm_revert", [world.snapshot_id]) is True
    world.snapshot_id = str(world.node.rpc("evm_snapshot"))
    yield world


LIQUIDATOR_INDEX = 8


def keeper(
    world: World, url: str, policy: DecisionPolicy | None = None
) -> tuple[KeeperCore, TxManager, Store, Chain]:
    store = Store.open(url)
    chain = Chain.connect(world.node.url, world.dep)
    fees = FeePolicy(FeesConfig(max_fee_per_gas=50 * 10**9, priority_fee=10**6))
    txm = TxManager(
        store,
        world.w3,
        Signer.from_env("K", {"K": dev_key(LIQUIDATOR_INDEX)}),
        fees,
        chain_id=world.node.chain_id,
        confirmations=1,
        stuck_after_seconds=600,
    )
    txm.start()
    core = KeeperCore(chain, store, txm, policy or DecisionPolicy(), liquidator=txm.signer.address)
    return core, txm, store, chain


def settle(world: World, txm: TxManager, store: Store) -> None:
    """Wait for every transaction of the liquidator to be mined, then record the receipts."""
    for tx in store.open_transactions(txm.signer.address):
        assert tx.id is not None
        for att in store.attempts(tx.id):
            world.w3.eth.wait_for_transaction_receipt(att.hash)  # type: ignore[arg-type]
    txm.poll()


def nonces(world: World) -> dict[str, int]:
    return {n: world.ch.functions.accountState(a).call()[0] for n, a in world.accounts.items()}


def test_assessment_equals_the_onchain_verifier(fresh: World) -> None:
    set_eth(fresh, 2800)
    chain = Chain.connect(fresh.node.url, fresh.dep)
    view = chain.view()
    snap = view.snapshot(fresh.accounts.values())
    for a in assess(snap, fresh.accounts.values(), DecisionPolicy()):
        on_chain = fresh.ch.functions.marginOf(a.account).call(block_identifier=view.block.number)
        assert a.result is not None and a.result.to_abi() == tuple(on_chain)
        assert not a.lenient
    states = {a.account: a.state for a in assess(snap, fresh.accounts.values(), DecisionPolicy())}
    acc = fresh.accounts
    assert states[acc["naked"]] == "liquidatable"
    assert states[acc["thin"]] == "margin_call"
    assert states[acc["healthy"]] == states[acc["hedged"]] == "healthy"


def test_crash_flags_liquidates_and_spares_the_healthy(fresh: World, tmp_path: Path) -> None:
    core, txm, store, chain = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}")
    acc, ch = fresh.accounts, fresh.ch
    first = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert first.actions_sent == [] and first.by_state == {"healthy": len(acc)}
    assert first.decisions_recorded == len(acc)  # every account's first assessment
    before = nonces(fresh)

    set_eth(fresh, 2800)
    report = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    n = nonces(fresh)
    assert sorted(report.actions_sent) == sorted(
        [f"flag:{acc['thin']}:{before['thin']}", f"liquidate:{acc['naked']}:{before['naked']}"]
    )
    assert report.rpc_round_trips <= 12
    settle(fresh, txm, store)
    # Flagged (no nonce bump), partially liquidated (nonce bumped), the others untouched.
    assert ch.functions.accountState(acc["thin"]).call()[1] != 0
    for name in ("healthy", "hedged", "option", "lp", "thin"):
        assert n[name] == before[name], name
    liq_row = next(d for d in store.decisions_for(str(acc["naked"])) if d.action == "liquidate")
    assert liq_row.fraction is not None and 0 < liq_row.fraction < WAD  # partial
    tx = store.transaction_for_decision(liq_row.id or 0)
    assert tx is not None and tx.status == TxStatus.FINAL
    receipt = fresh.w3.eth.get_transaction_receipt(tx.mined_hash)  # type: ignore[arg-type]
    (event,) = ch.events.Liquidation().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["fraction"] == liq_row.fraction
    assert ch.functions.bounties(txm.signer.address).call() == liq_row.expected_bounty > 0
    # Restored above maintenance by the chosen fraction.
    assert ch.functions.marginOf(acc["naked"]).call()[5] < 2

    # Restored above MM, not IM, and the liquidation cleared no flag it had: a margin call.
    again = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert again.actions_sent == [f"flag:{acc['naked']}:{n['naked']}"]
    settle(fresh, txm, store)
    core.on_block(chain.view(), {acc["naked"]}, acc.values(), market_changed=False)
    # Nothing changed but the time: the next block sends nothing and records nothing.
    fresh.node.rpc("evm_increaseTime", [7])
    fresh.node.rpc("evm_mine")
    calm = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert calm.actions_sent == [] and calm.decisions_recorded == 0
    assert calm.states == {acc["naked"]: "flagged_grace", acc["thin"]: "flagged_grace"}
    # A BTC round moves no ETH-only book: only the watched (flagged) books are re-margined.
    btc = bind(fresh.w3, fresh.dep, "MockAggregator:BTC/USD")
    _send(fresh.w3, btc.functions.setAnswer(61_000 * 10**8), fresh.w3.eth.accounts[0])
    quiet = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert quiet.accounts_assessed == 2 and quiet.rpc_round_trips == 1
    bounty_before = ch.functions.bounties(txm.signer.address).call()

    # Deep crash: the naked book is under water -> full close (no penalty, so no bounty: sent
    # as maintenance), then its debt is resolved.
    set_eth(fresh, 2000)
    deep = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert f"liquidate:{acc['naked']}:{n['naked']}" in deep.actions_sent
    settle(fresh, txm, store)
    full = store.decision_by_key(f"liquidate:{acc['naked']}:{n['naked']}")
    assert full is not None and full.fraction == WAD
    assert full.expected_bounty == 0 and full.outcome == "sent"  # no top-up from insurance
    # Every bounty credited is what the model expected (the thin book went under MM too).
    rows = [store.decision_by_key(k) for k in deep.actions_sent if k.startswith("liquidate")]
    gained = ch.functions.bounties(txm.signer.address).call() - bounty_before
    assert gained == sum(r.expected_bounty or 0 for r in rows if r is not None)
    assert ch.functions.positionsOf(acc["naked"]).call() == [[], []]
    assert ch.functions.balanceOf(acc["naked"], 0).call() < 0
    view = chain.view()
    bad = core.on_block(view, {acc["naked"]}, acc.values(), market_changed=False)
    assert f"resolve_bad_debt:{acc['naked']}:{n['naked'] + 1}" in bad.actions_sent
    settle(fresh, txm, store)
    assert ch.functions.balanceOf(acc["naked"], 0).call() == 0


def test_grace_period_then_liquidation(fresh: World, tmp_path: Path) -> None:
    core, txm, store, chain = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}")
    acc, ch = fresh.accounts, fresh.ch
    set_eth(fresh, 2800)
    core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    settle(fresh, txm, store)
    # The partially liquidated book is in margin call now: flagged at the next block.
    touched = {acc["thin"], acc["naked"]}
    core.on_block(chain.view(), touched, acc.values(), market_changed=False)
    settle(fresh, txm, store)
    grace = core.on_block(chain.view(), touched, acc.values(), market_changed=False)
    assert grace.by_state.get("flagged_grace") == 2 and grace.actions_sent == []
    fresh.node.rpc("evm_increaseTime", [3601])
    set_eth(fresh, 2800)  # fresh rounds after the jump
    thin_nonce = ch.functions.accountState(acc["thin"]).call()[0]
    over = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert f"liquidate:{acc['thin']}:{thin_nonce}" in over.actions_sent
    settle(fresh, txm, store)
    # Past grace the target is IM: the account leaves the margin call entirely.
    assert ch.functions.marginOf(acc["thin"]).call()[5] == 0


def test_restart_sends_no_duplicate(fresh: World, store_url: str) -> None:
    core, txm, store, chain = keeper(fresh, store_url)
    acc = fresh.accounts
    set_eth(fresh, 2800)
    view = chain.view()
    first = core.on_block(view, set(), acc.values(), market_changed=True)
    assert len(first.actions_sent) == 2
    settle(fresh, txm, store)
    sent_before = len(store.transactions(txm.signer.address))
    store.close()

    # A new process on the same database and the same chain state (the same pinned block).
    core2, txm2, store2, _ = keeper(fresh, store_url)
    again = core2.on_block(view, set(), acc.values(), market_changed=True)
    assert again.actions_sent == []
    assert again.skipped.get("duplicate") == 2
    assert again.decisions_recorded == 0
    assert len(store2.transactions(txm2.signer.address)) == sent_before
    store2.close()


def test_simulation_revert_is_recorded_and_backs_off(fresh: World, tmp_path: Path) -> None:
    core, txm, store, chain = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}")
    acc = fresh.accounts
    set_eth(fresh, 2800)
    stale = chain.view()
    # The account moves after the keeper's block: its liquidation would use a stale nonce.
    who = fresh.w3.eth.accounts[2]
    usdc = bind(fresh.w3, fresh.dep, "MockERC20:USDC")
    _send(fresh.w3, usdc.functions.mint(who, 10**6), who)
    _send(fresh.w3, usdc.functions.approve(fresh.ch.address, 10**6), who)
    _send(fresh.w3, fresh.ch.functions.deposit(acc["naked"], 0, 10**6), who)
    report = core.on_block(stale, {acc["naked"]}, [acc["naked"]], market_changed=False)
    assert report.actions_sent == [] and report.skipped == {"simulation_reverted": 1}
    (row,) = [d for d in store.decisions_for(str(acc["naked"])) if d.action == "liquidate"]
    assert row.outcome == DecisionOutcome.SIMULATION_REVERTED
    assert row.outcome_detail is not None and "StaleAccountNonce" in row.outcome_detail
    assert row.backoff_until == stale.block.number + 2 and row.action_key is None
    assert store.transactions(txm.signer.address) == []
    # Backed off: the same block again is not simulated, let alone sent.
    again = core.on_block(stale, {acc["naked"]}, [acc["naked"]], market_changed=False)
    assert again.skipped == {"backoff": 1} and again.decisions_recorded == 0
    # The back-off is recorded: a restarted keeper keeps it.
    core2, _, _, _ = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}")
    assert core2.on_block(stale, set(), [acc["naked"]], False).skipped == {"backoff": 1}


def test_refused_send_releases_the_key_and_retries_after_backoff(
    fresh: World, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    store = Store.open(url)
    chain = Chain.connect(fresh.node.url, fresh.dep)
    broke = Account.create()  # no ether: the node refuses its transactions
    fees = FeePolicy(FeesConfig(max_fee_per_gas=50 * 10**9, priority_fee=10**6))
    txm = TxManager(
        store,
        fresh.w3,
        Signer.from_env("K", {"K": "0x" + bytes(broke.key).hex()}),
        fees,
        chain_id=fresh.node.chain_id,
        confirmations=1,
        stuck_after_seconds=600,
    )
    txm.start()
    core = KeeperCore(chain, store, txm, DecisionPolicy(), liquidator=broke.address)
    acc = fresh.accounts
    set_eth(fresh, 2800)
    view = chain.view()
    report = core.on_block(view, set(), [acc["naked"]], market_changed=False)
    assert report.skipped == {"send_failed": 1} and report.actions_sent == []
    (row,) = [d for d in store.decisions_for(str(acc["naked"])) if d.action == "liquidate"]
    assert row.action_key is None and row.outcome == DecisionOutcome.SEND_FAILED
    assert row.backoff_until == view.block.number + 2
    # Funded, and past the back-off: the same action goes out.
    fresh.w3.eth.wait_for_transaction_receipt(
        fresh.w3.eth.send_transaction(
            {"from": fresh.w3.eth.accounts[0], "to": broke.address, "value": 10**18}
        )
    )
    fresh.node.rpc("evm_mine")
    later = core.on_block(chain.view(), set(), [acc["naked"]], market_changed=False)
    assert later.actions_sent == [f"liquidate:{acc['naked']}:{row.account_nonce}"]


def test_unprofitable_is_skipped_and_recorded(fresh: World, tmp_path: Path) -> None:
    policy = DecisionPolicy(min_profit=10**30)
    core, txm, store, chain = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}", policy)
    acc = fresh.accounts
    set_eth(fresh, 2800)
    report = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    # The flag is maintenance (no bounty): sent. The liquidation does not pay: skipped.
    assert report.actions_sent == [f"flag:{acc['thin']}:{nonces(fresh)['thin']}"]
    assert report.skipped == {"unprofitable": 1}
    (row,) = [d for d in store.decisions_for(str(acc["naked"])) if d.action == "liquidate"]
    assert row.outcome == DecisionOutcome.UNPROFITABLE and row.outcome_detail is not None
    assert row.action_key is None and row.expected_gas_cost is not None
    settle(fresh, txm, store)
    again = core.on_block(chain.view(), set(), acc.values(), market_changed=True)
    assert again.skipped == {"unprofitable": 1} and again.actions_sent == []
    assert not any(d.block_number == again.block for d in store.decisions_for(str(acc["naked"])))


def test_expired_instruments_and_holders_are_settled(fresh: World, tmp_path: Path) -> None:
    core, txm, store, chain = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}")
    acc, ch, w3 = fresh.accounts, fresh.ch, fresh.w3
    expiry = max(i["expiry"] for i in fresh.dep.instruments)
    core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert core.next_expiry == expiry
    # Before expiry: nothing to settle.
    assert core.settle_expired(chain.view()).actions_sent == []
    fresh.node.rpc("evm_setNextBlockTimestamp", [expiry])
    set_eth(fresh, 3100)  # a round published at expiry (ETH only: BTC stays unsettled)
    at_expiry = fresh.eth_feed.functions.latestRoundData().call()[0]
    set_eth(fresh, 3150)  # and a later one: the settlement names the first
    report = core.settle_expired(chain.view())
    eth_expiring = [
        i["id"] for i in fresh.dep.instruments if i["underlying"] == 0 and i["expiry"] == expiry
    ]
    assert sorted(report.actions_sent) == sorted(
        k for k in report.actions_sent if k.startswith("settle_instrument:")
    )
    assert {int(k.split(":")[1]) for k in report.actions_sent} == set(eth_expiring)
    assert {int(k.split(":")[2]) for k in report.actions_sent} == {at_expiry}
    settle(fresh, txm, store)
    assert all(ch.functions.instruments(i).call()[3] for i in eth_expiring)  # settled
    assert all(ch.functions.settlementPrice(i).call() == 3100 * WAD for i in eth_expiring)
    for row in (store.decisions_for(f"instrument:{i}")[-1] for i in eth_expiring):
        tx = store.transaction_for_decision(row.id or 0)
        assert tx is not None and tx.status == TxStatus.FINAL  # mined, not reverted
    hedged_nonce = ch.functions.accountState(acc["hedged"]).call()[0]
    holders = core.settle_expired(chain.view())
    assert f"settle_account:{acc['hedged']}:{hedged_nonce}" in holders.actions_sent
    settle(fresh, txm, store)
    fut_ids = set(eth_expiring)
    for name in ("hedged", "option", "lp"):
        ids, _ = ch.functions.positionsOf(acc[name]).call()
        assert not fut_ids & set(ids), name
    # BTC's dated instruments wait for a post-expiry BTC round: not due until one comes.
    core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert core.next_expiry is None
    btc = bind(w3, fresh.dep, "MockAggregator:BTC/USD")
    # Strictly after expiry: anvil gives blocks mined within one wall-clock second the same
    # timestamp, so the round could otherwise land at expiry itself.
    after = max(int(w3.eth.get_block("latest")["timestamp"]), expiry) + 1
    fresh.node.rpc("evm_setNextBlockTimestamp", [after])
    _send(w3, btc.functions.setAnswer(btc.functions.answer().call()), w3.eth.accounts[0])
    core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert core.next_expiry == expiry
    rows: list[Decision] = store.decisions_for(f"instrument:{eth_expiring[0]}")
    assert rows and rows[0].action == "settle_instrument"
    assert w3.eth.get_block("latest")["timestamp"] > expiry


def test_cured_flag_is_cleared_on_chain(fresh: World, tmp_path: Path) -> None:
    """A flagged account back above IM (the price came back; no deposit) is cleared with
    clearFlag, which succeeds on-chain; switched off, nothing is sent."""
    acc, ch = fresh.accounts, fresh.ch
    thin = acc["thin"]
    off, _, _, chain = keeper(
        fresh, f"sqlite:///{tmp_path / 'off.db'}", DecisionPolicy(clear_cured_flags=False)
    )
    core, txm, store, _ = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}")
    set_eth(fresh, 2800)
    core.on_block(chain.view(), set(), [thin], market_changed=False)
    settle(fresh, txm, store)
    flagged_at = ch.functions.accountState(thin).call()[1]
    assert flagged_at != 0
    set_eth(fresh, 3000)
    assert ch.functions.marginOf(thin).call()[5] == 0  # healthy again, still flagged
    assert off.on_block(chain.view(), {thin}, [thin], market_changed=False).actions_sent == []
    nonce = ch.functions.accountState(thin).call()[0]
    report = core.on_block(chain.view(), {thin}, [thin], market_changed=False)
    assert report.actions_sent == [f"clear_flag:{thin}:{nonce}:{flagged_at}"]
    settle(fresh, txm, store)
    assert ch.functions.accountState(thin).call() == [nonce, 0]
    (row,) = [d for d in store.decisions_for(str(thin)) if d.action == "clear_flag"]
    tx = store.transaction_for_decision(row.id or 0)
    assert tx is not None and tx.status == TxStatus.FINAL
    receipt = fresh.w3.eth.get_transaction_receipt(tx.mined_hash)  # type: ignore[arg-type]
    assert ch.events.MarginCallCleared().process_receipt(receipt, errors=DISCARD)
    # Nothing left to do for it.
    assert core.on_block(chain.view(), {thin}, [thin], market_changed=False).actions_sent == []
    # Below IM again at the same nonce (clearFlag does not bump it): flagged again.
    set_eth(fresh, 2800)
    again = core.on_block(chain.view(), {thin}, [thin], market_changed=False)
    assert again.actions_sent == [f"flag:{thin}:{nonce}"]
    settle(fresh, txm, store)
    assert ch.functions.accountState(thin).call()[1] != 0


def test_solvent_loan_gets_nothing_and_bad_debt_is_resolved(fresh: World, tmp_path: Path) -> None:
    """No position, cash below zero, WETH collateral: while the model equity is >= 0 (even
    below maintenance) it is a loan and the keeper sends nothing (resolveBadDebt would revert
    NoBadDebt); once the equity is below zero it sends resolveBadDebt, which succeeds."""
    w3, ch, dep = fresh.w3, fresh.ch, fresh.dep
    who = w3.eth.accounts[5]
    loan = account_id(who)
    weth = bind(w3, dep, "MockERC20:WETH")
    _send(w3, weth.functions.mint(who, WAD), who)
    _send(w3, weth.functions.approve(ch.address, WAD), who)
    _send(w3, ch.functions.deposit(loan, 1, WAD), who)
    perp = next(i["id"] for i in dep.instruments if i["underlying"] == 0 and i["expiry"] == 0)
    lp, matcher = fresh.accounts["lp"], w3.eth.accounts[0]
    orders = dev_matcher(w3, ch)
    _send(w3, orders.trade(loan, lp, perp, WAD, 3000 * WAD), matcher)
    _send(w3, orders.trade(lp, loan, perp, WAD, 2900 * WAD), matcher)  # closed at a loss
    assert ch.functions.positionsOf(loan).call() == [[], []]
    assert ch.functions.balanceOf(loan, 0).call() == -100 * WAD
    core, txm, store, chain = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}")
    for price, state in ((3000, "healthy"), (120, "liquidatable")):
        set_eth(fresh, price)  # at 120: 1 WETH counts 108 against a debt of 100
        report = core.on_block(chain.view(), {loan}, [loan], market_changed=False)
        assert report.states == {loan: state} and report.actions_sent == [], price
        with pytest.raises(ContractCustomError) as exc:
            ch.functions.resolveBadDebt(loan).call({"from": txm.signer.address})
        assert decode_revert(revert_data_of(exc.value) or b"").name == "NoBadDebt"
    assert store.transactions(txm.signer.address) == []
    set_eth(fresh, 100)  # 90 against 100: equity below zero
    nonce = ch.functions.accountState(loan).call()[0]
    report = core.on_block(chain.view(), {loan}, [loan], market_changed=False)
    assert report.actions_sent == [f"resolve_bad_debt:{loan}:{nonce}"]
    settle(fresh, txm, store)
    assert ch.functions.balanceOf(loan, 0).call() == 0
    assert ch.functions.balanceOf(loan, 1).call() == 0
    (row,) = [d for d in store.decisions_for(str(loan)) if d.action == "resolve_bad_debt"]
    tx = store.transaction_for_decision(row.id or 0)
    assert tx is not None and tx.status == TxStatus.FINAL


def test_dry_run_decides_and_records_but_never_sends(fresh: World, tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    chain = Chain.connect(fresh.node.url, fresh.dep)
    liquidator = fresh.w3.eth.accounts[LIQUIDATOR_INDEX]
    core = KeeperCore(chain, store, None, DecisionPolicy(), liquidator=liquidator)
    acc = fresh.accounts
    set_eth(fresh, 2800)
    before = nonces(fresh)
    report = core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    assert report.actions_sent == [] and nonces(fresh) == before
    outcomes = {d.action: d.outcome for d in store.decisions_for(str(acc["naked"]))}
    assert outcomes["liquidate"] == "dry_run"
    # Once per change, not once per block.
    again = core.on_block(chain.view(), set(), acc.values(), market_changed=True)
    assert again.decisions_recorded == 0
    store.close()


def test_pending_settlement_is_not_sent_again_on_a_new_round(fresh: World, store_url: str) -> None:
    """The settle key carries the feed round; a round published while the settlement is still
    pending must not send a second settleInstrument (it would revert InstrumentAlreadySettled
    once the first is mined: gas for nothing). Seen in `keeper demo`, where feeds move every
    block."""
    core, txm, store, chain = keeper(fresh, store_url)
    acc, w3, node = fresh.accounts, fresh.w3, fresh.node
    expiry = max(i["expiry"] for i in fresh.dep.instruments)
    core.on_block(chain.view(), set(), acc.values(), market_changed=False)
    node.rpc("evm_setNextBlockTimestamp", [expiry + 60])
    set_eth(fresh, 3100)
    node.rpc("evm_setAutomine", [False])
    try:
        first = core.settle_expired(chain.view())
        assert first.actions_sent and all(
            k.startswith("settle_instrument:") for k in first.actions_sent
        )
        # Not mined yet: out of the pool, as if still waiting for a block. A new round lands.
        node.rpc("anvil_dropAllTransactions")
        fresh.eth_feed.functions.setAnswer(3105 * 10**8).transact({"from": w3.eth.accounts[0]})
        node.rpc("evm_mine")
        again = core.settle_expired(chain.view())
    finally:
        node.rpc("evm_setAutomine", [True])
    assert not any(k.startswith("settle_instrument:") for k in again.actions_sent)
    assert again.skipped.get("in_flight") == len(first.actions_sent)
    assert len(store.transactions(txm.signer.address)) == len(first.actions_sent)
    store.close()


def test_funding_is_poked_once_per_interval_and_recorded(fresh: World, tmp_path: Path) -> None:
    """The funding job pokes every perpetual whose interval has passed, once (its key names
    the poke it advances from), records the decision and its transaction like a settlement,
    and the snapshot's equity then carries the accrued funding (marginOf to the wei)."""
    core, txm, store, chain = keeper(fresh, f"sqlite:///{tmp_path / 'k.db'}")
    acc, ch, w3 = fresh.accounts, fresh.ch, fresh.w3
    perps = [i["id"] for i in fresh.dep.instruments if i["expiry"] == 0]
    assert core.poke_funding(chain.view()).actions_sent == []  # within the first interval
    last = {p: ch.functions.fundingState(p).call()[1] for p in perps}
    fresh.node.rpc("evm_increaseTime", [3600])
    btc = bind(w3, fresh.dep, "MockAggregator:BTC/USD")
    _send(w3, btc.functions.setAnswer(btc.functions.answer().call()), w3.eth.accounts[0])
    set_eth(fresh, 2990)  # the perp traded at 3000: longs pay, clamped at 0.1% of 2990
    report = core.poke_funding(chain.view())
    assert sorted(report.actions_sent) == sorted(f"poke_funding:{p}:{last[p]}" for p in perps)
    again = core.poke_funding(chain.view())  # not mined yet: the keys are taken
    assert again.actions_sent == []
    settle(fresh, txm, store)
    eth_perp = next(
        i["id"] for i in fresh.dep.instruments if i["expiry"] == 0 and i["underlying"] == 0
    )
    index, polled, *_ = ch.functions.fundingState(eth_perp).call()
    assert index == 2_990_000_000_000_000_000 and polled > last[eth_perp]
    assert ch.functions.accruedFunding(acc["naked"]).call() == -index  # 1 long
    for p in perps:
        (row,) = store.decisions_for(f"instrument:{p}")
        assert (row.action, row.state, row.instrument) == ("poke_funding", "funding", p)
        tx = store.transaction_for_decision(row.id or 0)
        assert tx is not None and tx.status == TxStatus.FINAL
    assert core.poke_funding(chain.view()).actions_sent == []  # the next interval has not passed
    view = chain.view()
    snap = view.snapshot(acc.values())
    for a in acc.values():
        assert _as_tuple(snap.full_check(a).to_abi()) == _as_tuple(view.call("marginOf", a))


def _as_tuple(x: object) -> object:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x
