"""The soak run, short (bench/soak.py runs it for 10 minutes): the real keeper behind a
fault-injecting RPC on a real anvil with the demo market (12 accounts, one cycle of drift, vol
spike, crash, recovery and expiry). No duplicate, no lost record, the keeper alive, faults
injected, decisions made and at least one liquidation carried out on chain.

The audit that says "0 duplicates, 0 lost records" is itself checked against the same frozen
chain: copies of the keeper's store, each tampered in one way (a transaction row deleted, a
bounty misrecorded, a second on-chain transaction of the keeper's address attached to a
decision), must each be caught.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlmodel import select
from web3 import Web3

from keeper.devnet.soak import SoakChain, SoakOptions, run_soak
from keeper.devnet.soak_audit import Audit, audit
from keeper.devnet.soak_report import format_report
from keeper.store import Store
from keeper.store.models import Decision, Transaction, TxAttempt

pytestmark = pytest.mark.anvil


def _copy(store_url: str, dest: Path) -> str:
    src = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    dst = sqlite3.connect(dest)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return f"sqlite:///{dest}"


def _audit(c: SoakChain, url: str, last: int | None = None) -> Audit:
    store = Store.open(url)
    try:
        return audit(c.w3, c.deployment, store, c.keeper, c.blocks[0], last or c.blocks[1])
    finally:
        store.close()


def _liquidation_tx(url: str) -> Transaction:
    store = Store.open(url)
    try:
        with store.session() as s:
            rows = s.exec(
                select(Transaction, Decision)
                .where(Transaction.decision_id == Decision.id)
                .where(Decision.action == "liquidate")
                .where(Transaction.status == "final")
            ).all()
        assert rows, "no final liquidation transaction to tamper with"
        return rows[0][0]
    finally:
        store.close()


def _tampering_is_caught(c: SoakChain, tmp: Path) -> None:
    # A transaction row (and its attempts) lost: its on-chain transaction is untracked and
    # its decision has no transaction.
    url = _copy(c.store_url, tmp / "lost.db")
    tx = _liquidation_tx(url)
    store = Store.open(url)
    with store.session() as s:
        for a in s.exec(select(TxAttempt).where(TxAttempt.tx_id == tx.id)).all():
            s.delete(a)
        s.delete(s.get(Transaction, tx.id))
        s.commit()
    store.close()
    got = _audit(c, url)
    assert got.lost["untracked_tx"] == 1 and got.lost["decision_without_tx"] == 1
    assert got.duplicates_total == 0

    # A bounty recorded wrong.
    url = _copy(c.store_url, tmp / "bounty.db")
    store = Store.open(url)
    store.update_transaction(tx.id, bounty=(tx.bounty or 0) + 1)  # type: ignore[arg-type]
    store.close()
    got = _audit(c, url)
    assert got.lost["bounty_mismatch"] == 1 and got.lost_total == 1

    # The decision's call sent a second time from the keeper's address (it reverts: the
    # account's nonce moved) and attached to the same decision: a duplicate.
    url = _copy(c.store_url, tmp / "dup.db")
    w3 = c.w3
    to = Web3.to_checksum_address(tx.to or "")
    h = w3.eth.send_transaction({"from": c.keeper, "to": to, "data": tx.data, "gas": tx.gas_limit})
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    w3.eth.wait_for_transaction_receipt(h, timeout=60)
    store = Store.open(url)
    fee = 10**10
    store.add_attempt(TxAttempt(tx_id=tx.id, hash="0x" + bytes(h).hex(), raw="0x",
                                max_fee_per_gas=fee, max_priority_fee_per_gas=fee))  # fmt: skip
    store.close()
    got = _audit(c, url, w3.eth.block_number)
    assert got.duplicates["mined_per_decision"] == 1
    # ... and, reverted, it was decided before the first one mined: sent while in flight.
    assert got.duplicates["sent_while_in_flight"] == 1
    assert got.lost["hash_mismatch"] == 1  # the row names the other hash as the mined one


def test_short_soak_has_no_duplicates_and_no_lost_records(
    tmp_path: Path, contracts_built: None
) -> None:
    opts = SoakOptions(duration=40, accounts=12, fault_rate=0.03, seed=3, out=tmp_path / "soak")
    checked: list[bool] = []

    def after_audit(c: SoakChain) -> None:
        _tampering_is_caught(c, tmp_path)
        checked.append(True)

    report = run_soak(opts, say=lambda _m: None, after_audit=after_audit)
    print(format_report(report))
    assert checked == [True]
    assert report.keeper_alive and report.keeper_exit_status == 0
    assert report.duplicates_total == 0, report.problems
    assert report.lost_records_total == 0, report.problems
    assert report.faults_injected_total > 0
    assert report.faults_survived > 0
    assert sum(report.decisions.values()) > 0 and report.decisions_acted_on > 0
    assert report.liquidations_acted >= 1
    assert report.effects.get("Liquidation", 0) >= 1
    assert report.ok
