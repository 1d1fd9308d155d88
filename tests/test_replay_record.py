"""Replay proves the keeper's record complete and true (keeper/replay/record.py).

One module-scoped run of the REAL keeper service on a real anvil: a seeded market, an oracle
crash, the keeper's margin calls and liquidations sent, mined and recorded in a real SQLite
store. The replay of that store is clean; then each test copies the store, deletes, inserts,
reorders or alters ONE thing, and expects exactly the mismatch that names it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from web3 import Web3

from keeper.chain import Chain
from keeper.config import load_config_data
from keeper.deployment import bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import seed_market
from keeper.replay.cli import run as run_cli
from keeper.replay.report import read_report
from keeper.service import KeeperService
from keeper.store import Decision, Store, Transaction

pytestmark = pytest.mark.anvil

KEY_ENV = "KEEPER_REPLAY_RECORD_KEY"
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
LOG_DIR = Path(__file__).resolve().parents[1] / "var" / "test-logs"


@dataclasses.dataclass
class KeeperRun:
    node: Anvil
    deployment_path: Path
    db: Path
    keeper: str
    first: int  # the keeper's first block
    last: int


def _move(w3: Web3, dep: Any, factor: float, vol_factor: float) -> None:
    for u in dep.underlyings:
        for feed, f in ((f"{u['symbol']}/USD", factor), (f"{u['symbol']}/IV", vol_factor)):
            c = bind(w3, dep, f"MockAggregator:{feed}")
            x = round(int(c.functions.answer().call()) * f)
            w3.eth.wait_for_transaction_receipt(
                c.functions.setAnswer(x).transact({"from": w3.eth.accounts[0]})
            )


@pytest.fixture(scope="module")
def krun(tmp_path_factory: pytest.TempPathFactory, contracts_built: None) -> Iterator[KeeperRun]:
    d = tmp_path_factory.mktemp("replay-record")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with (
        pytest.MonkeyPatch.context() as mp,
        Anvil(log_path=LOG_DIR / f"anvil-replay-record-{worker}.log") as node,
    ):
        mp.setenv(KEY_ENV, ANVIL_KEY_1)
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        dep = deploy_protocol(w3)
        dep_path = d / "deployment.json"
        dep.write(dep_path)
        chain = Chain.connect(node.url, dep)
        seed_market(w3, dep, chain, 12, seed=11)
        chain.close()
        db = d / "keeper.db"
        cfg = load_config_data(
            {
                "rpc": {"url": node.url, "chain_id": node.chain_id},
                "deployment": {"file": str(dep_path)},
                "store": {"url": f"sqlite:///{db}"},
                "signer": {"key_env": KEY_ENV},
                "fees": {"max_fee_per_gas": "500 gwei", "priority_fee": "1 gwei"},
                "decisions": {
                    "min_profit": 0,
                    "confirmations": 1,
                    "block_poll_interval_seconds": 0.2,
                },
                "metrics": {"bind": "127.0.0.1:9"},  # never started: no start_metrics()
                "service": {"watchdog_seconds": 60},
            }
        )
        first = w3.eth.block_number + 1
        service = KeeperService(cfg)
        service.open()
        try:
            for rounds, move in ((2, None), (10, (0.70, 1.3))):
                if move is not None:
                    _move(w3, dep, *move)
                for _ in range(rounds):
                    service.tick()
                    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
                service.tick()
        finally:
            service.close()
        yield KeeperRun(node, dep_path, db, w3.eth.accounts[1].lower(), first, w3.eth.block_number)


def _rows(db: Path) -> tuple[list[Decision], list[Transaction]]:
    with Store.open(f"sqlite:///{db}") as store, store.session() as s:
        return list(s.exec(select(Decision)).all()), list(s.exec(select(Transaction)).all())


def _replay(krun: KeeperRun, db: Path, out: Path, *keepers: str) -> tuple[int, dict[str, Any]]:
    status = run_cli(
        deployment=krun.deployment_path,
        rpc=krun.node.url,
        state_dump=None,
        first=krun.first,
        last=krun.last,
        db=f"sqlite:///{db}",
        json_out=out,
        html_out=None,
        accounts=[],
        progress=False,
        keepers=list(keepers),
    )
    report = read_report(out)
    return status, {**report["summary"], "mismatches": report["mismatches"]}


def _tamper(krun: KeeperRun, tmp: Path, *sql: tuple[str, tuple[Any, ...]]) -> Path:
    db = tmp / "tampered.db"
    shutil.copy(krun.db, db)
    con = sqlite3.connect(db)
    with con:
        for stmt, args in sql:
            con.execute(stmt, args)
    con.close()
    return db


def _liquidation(krun: KeeperRun, n: int = 0) -> tuple[Decision, Transaction]:
    decisions, txs = _rows(krun.db)
    by_id = {d.id: d for d in decisions}
    pairs = [
        (by_id[t.decision_id], t)
        for t in txs
        if t.decision_id is not None and by_id[t.decision_id].action == "liquidate"
    ]
    return pairs[n]


def _kinds(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m["kind"], f["field"]) for m in report["mismatches"] for f in m["fields"]}


def test_the_keepers_record_replays_clean(krun: KeeperRun, tmp_path: Path) -> None:
    decisions, txs = _rows(krun.db)
    acted = [t for t in txs if t.decision_id is not None]
    assert {d.action for d in decisions} >= {"liquidate"}, "the crash must liquidate"
    assert acted and all(t.status in ("final", "mined") for t in txs)
    status, report = _replay(krun, krun.db, tmp_path / "r.json")
    assert report["mismatches"] == [] and status == 0, report["mismatches"][:3]
    summary = report["summary"]
    assert f"{len(acted)} keeper transactions on chain" in summary
    assert f"{len(txs)} tx rows checked (0 pending)" in summary


def test_deleting_a_liquidations_rows_is_caught(krun: KeeperRun, tmp_path: Path) -> None:
    """Both rows gone: the chain still holds the transaction the keeper sent. Without the
    store's tx table, the keeper's address comes from --keeper."""
    dec, tx = _liquidation(krun)
    db = _tamper(
        krun,
        tmp_path,
        ("DELETE FROM tx_attempt WHERE tx_id = ?", (tx.id,)),
        ("DELETE FROM tx WHERE id = ?", (tx.id,)),
        ("DELETE FROM decision WHERE id = ?", (dec.id,)),
    )
    status, report = _replay(krun, db, tmp_path / "r.json", krun.keeper)
    assert status == 1
    (m,) = report["mismatches"]
    assert m["kind"] == "unrecorded_transaction" and m["block"] == tx.block_number
    assert m["account"] == dec.account
    assert m["fields"][0] == {"field": "tx", "expected": tx.mined_hash, "found": None}
    assert m["message"].startswith("liquidate transaction ")


def test_every_tx_row_deleted_keeper_given(krun: KeeperRun, tmp_path: Path) -> None:
    """An empty tx table does not hide the keeper: every sent decision misses its row and
    every transaction on chain is unrecorded."""
    _, txs = _rows(krun.db)
    db = _tamper(krun, tmp_path, ("DELETE FROM tx_attempt", ()), ("DELETE FROM tx", ()))
    status, report = _replay(krun, db, tmp_path / "r.json", krun.keeper)
    assert status == 1
    kinds = [m["kind"] for m in report["mismatches"]]
    assert kinds.count("unrecorded_transaction") == len(txs)
    assert kinds.count("missing_transaction") == len(txs)
    assert set(kinds) == {"unrecorded_transaction", "missing_transaction"}


def test_deleting_only_the_decision(krun: KeeperRun, tmp_path: Path) -> None:
    dec, tx = _liquidation(krun)
    db = _tamper(krun, tmp_path, ("DELETE FROM decision WHERE id = ?", (dec.id,)))
    status, report = _replay(krun, db, tmp_path / "r.json")
    assert status == 1
    (m,) = report["mismatches"]
    assert (m["kind"], m["tx_id"], m["fields"][0]["field"]) == ("transaction", tx.id, "decision_id")


def test_inserted_sent_decision_without_transaction(krun: KeeperRun, tmp_path: Path) -> None:
    """A copy of a real liquidation decision (same block, same figures: it re-derives fine)
    that claims to have been sent: its transaction is missing."""
    dec, _ = _liquidation(krun)
    cols = [c for c in Decision.model_fields if c != "id"]
    db = _tamper(
        krun,
        tmp_path,
        (
            f"INSERT INTO decision ({', '.join(cols)}) SELECT "
            + ", ".join("'copy'" if c == "action_key" else c for c in cols)
            + " FROM decision WHERE id = ?",
            (dec.id,),
        ),
    )
    status, report = _replay(krun, db, tmp_path / "r.json")
    assert status == 1
    (m,) = report["mismatches"]
    assert m["kind"] == "missing_transaction" and m["decision_id"] != dec.id
    assert m["block"] == dec.block_number


def test_inserted_transaction_not_on_chain(krun: KeeperRun, tmp_path: Path) -> None:
    _, tx = _liquidation(krun)
    claim = "0x" + Web3.keccak(text="claimBounty()")[:4].hex().removeprefix("0x")
    fake = "0x" + "ab" * 32
    db = _tamper(
        krun,
        tmp_path,
        (
            'INSERT INTO tx (decision_id, created_at, updated_at, sender, nonce, "to", value,'
            " data, gas_limit, chain_id, status, final, mined_hash, block_number, block_hash,"
            " gas_used, effective_gas_price, bounty) SELECT NULL, created_at, updated_at,"
            ' sender, nonce + 1000, "to", value, ?, gas_limit, chain_id, status, final, ?,'
            " block_number, block_hash, gas_used, effective_gas_price, 0 FROM tx WHERE id = ?",
            (claim, fake, tx.id),
        ),
    )
    status, report = _replay(krun, db, tmp_path / "r.json")
    assert status == 1
    (m,) = report["mismatches"]
    assert m["kind"] == "transaction" and m["fields"][0] == {
        "field": "mined_hash",
        "expected": None,
        "found": fake,
    }


def test_reordered_transactions(krun: KeeperRun, tmp_path: Path) -> None:
    """Two liquidations' tx rows swap decisions: each calldata now disagrees with its
    decision's account and nonce."""
    (d0, t0), (d1, t1) = _liquidation(krun, 0), _liquidation(krun, 1)
    db = _tamper(
        krun,
        tmp_path,
        ("UPDATE tx SET decision_id = NULL WHERE id = ?", (t0.id,)),
        ("UPDATE tx SET decision_id = ? WHERE id = ?", (d0.id, t1.id)),
        ("UPDATE tx SET decision_id = ? WHERE id = ?", (d1.id, t0.id)),
    )
    status, report = _replay(krun, db, tmp_path / "r.json")
    assert status == 1
    mms = [m for m in report["mismatches"] if "calldata" in m["message"]]
    assert {m["tx_id"] for m in mms} == {t0.id, t1.id}
    assert all(m["kind"] == "transaction" for m in report["mismatches"])
    assert all("account" in [f["field"] for f in m["fields"]] for m in mms)


# (table, column, new value, the (kind, field) pairs expected -- exactly these)
_TX_FIELDS = [
    ("tx", "nonce", 99_999, {("transaction", "nonce")}),
    ("tx", "gas_used", 1, {("transaction", "gas_used")}),
    ("tx", "gas_limit", 1, {("transaction", "gas_limit")}),
    ("tx", "effective_gas_price", 1, {("transaction", "effective_gas_price")}),
    ("tx", "block_number", 1, {("transaction", "block_number"), ("transaction", "block_number")}),
    ("tx", "block_hash", "0x" + "00" * 32, {("transaction", "block_hash")}),
    ("tx", "bounty", 1, {("transaction", "bounty")}),
    ("tx", "data", "0x", {("transaction", "data"), ("transaction", "action")}),
    ("tx", "status", "reverted", {("transaction", "status")}),
    ("tx", "sender", "0x" + "11" * 20, {("transaction", "sender")}),
    ("tx", "mined_hash", "0x" + "cd" * 32, {("transaction", "mined_hash")}),
    ("decision", "equity", 1, {("decision", "equity")}),
    ("decision", "state", "healthy", {("decision", "state")}),
    ("decision", "expected_bounty", 1, {("decision", "expected_bounty")}),
    ("decision", "fraction", 1, {("decision", "expected_bounty"), ("transaction", "fraction")}),
    ("decision", "account_nonce", 77, {("decision", "account_nonce"), ("transaction", "nonce")}),
    ("decision", "witness", "[0, 0]", {("decision", "witness"), ("transaction", "witness")}),
    ("decision", "block_hash", "0x" + "00" * 32, {("decision", "block_hash")}),
]


@pytest.mark.parametrize(
    ("table", "column", "value", "expected"),
    _TX_FIELDS,
    ids=[f"{t}.{c}" for t, c, _, _ in _TX_FIELDS],
)
def test_one_altered_field_is_exactly_its_mismatch(
    krun: KeeperRun,
    tmp_path: Path,
    table: str,
    column: str,
    value: Any,
    expected: set[tuple[str, str]],
) -> None:
    dec, tx = _liquidation(krun)
    row = tx.id if table == "tx" else dec.id
    db = _tamper(krun, tmp_path, (f"UPDATE {table} SET {column} = ? WHERE id = ?", (value, row)))
    status, report = _replay(krun, db, tmp_path / "r.json")
    assert status == 1
    assert _kinds(report) == expected, report["mismatches"]
    for m in report["mismatches"]:
        assert m["decision_id"] == dec.id or m["tx_id"] == tx.id
