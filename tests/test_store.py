"""keeper.store on a real SQLite file and a real PostgreSQL schema (the same tests on both)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, StatementError

from keeper.secrets import clear_registry, register_secret
from keeper.store import (
    Decision,
    DuplicateSubmission,
    IndexedBlock,
    NonceNotInitialised,
    Store,
    Transaction,
    TxAttempt,
    TxStatus,
)
from keeper.store.db import DECISION_BATCH
from keeper.store.migrate import head

WAD = 10**18
BIG = -(2**255) + 12345  # int256 minimum region: 78 digits
SENDER = "0x" + "ab" * 20


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as st:
        yield st


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def a_decision(**over: object) -> Decision:
    fields: dict[str, object] = dict(
        block_number=100,
        block_hash=h(100),
        account="0x" + "11" * 20,
        inputs_digest=h(7),
        loss_matrix={"ETH": [0, -3 * WAD, 2**200, BIG], "BTC": [1, 2, 3]},
        requirement=2**200 + 1,
        initial_margin=(2**200 + 1) * 5 // 4,
        equity=BIG,
        witness={"ETH": 3, "BTC": 0},
        state="liquidatable",
        action="liquidate",
        fraction=WAD // 2,
        expected_bounty=123456789012345678901234567890,
    )
    fields.update(over)
    return Decision(**fields)


def test_fresh_store_has_current_revision(store: Store) -> None:
    assert store.schema_revision() == head()
    if store.backend == "sqlite":
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_decision_round_trip_is_exact(store: Store) -> None:
    saved = store.add_decision(a_decision())
    assert saved.id is not None
    got = store.decision(saved.id)
    assert got is not None
    assert got.requirement == 2**200 + 1 and isinstance(got.requirement, int)
    assert got.equity == BIG
    assert got.expected_bounty == 123456789012345678901234567890
    assert got.loss_matrix == {"ETH": [0, -3 * WAD, 2**200, BIG], "BTC": [1, 2, 3]}
    assert got.witness == {"ETH": 3, "BTC": 0}
    assert got.created_at.tzinfo is not None
    # Stored as text, not as a float: the raw column is the exact decimal string.
    with store.engine.connect() as conn:
        raw = conn.execute(text("SELECT equity FROM decision WHERE id = :i"), {"i": saved.id})
        assert raw.scalar() == str(BIG)


@pytest.mark.parametrize(
    "bad",
    [{"requirement": 1.5}, {"loss_matrix": {"ETH": [0.1]}}, {"equity": True}, {"fraction": 10**80}],
)
def test_floats_and_oversized_values_are_refused(store: Store, bad: dict[str, object]) -> None:
    with pytest.raises(StatementError):
        store.add_decision(a_decision(**bad))


def test_many_decisions_are_one_transaction_across_flushes(store: Store) -> None:
    """add_decisions flushes DECISION_BATCH rows at a time in one transaction: every row of
    every flush lands, and a bad row in the last flush leaves none of them."""
    n = 2 * DECISION_BATCH + 1
    good = [a_decision(block_number=200, action="none", account=f"0x{k:040x}") for k in range(n)]
    store.add_decisions(good)
    bad = [a_decision(block_number=201, action="none") for _ in range(n - 1)]
    with pytest.raises(StatementError):
        store.add_decisions([*bad, a_decision(block_number=201, requirement=1.5)])
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT block_number, COUNT(*) FROM decision GROUP BY block_number")
        ).all()
    assert {int(b): int(c) for b, c in rows} == {200: n}


def test_cursor_blocks_and_rollback(store: Store) -> None:
    assert store.cursor("clearing") is None
    blocks = [IndexedBlock(number=n, hash=h(n), parent_hash=h(n - 1)) for n in range(1, 11)]
    store.record_blocks(blocks)
    store.set_cursor("clearing", 10, h(10))
    store.set_cursor("oracle", 4, h(4))
    cur = store.cursor("clearing")
    assert cur is not None and (cur.block_number, cur.block_hash) == (10, h(10))
    assert store.latest_block().number == 10  # type: ignore[union-attr]
    # A reorg back to block 6: blocks 7..10 are forgotten, cursors beyond 6 move back to it.
    assert store.rollback_after(6) == 4
    assert store.latest_block().number == 6  # type: ignore[union-attr]
    assert store.block(7) is None
    cur = store.cursor("clearing")
    assert cur is not None and (cur.block_number, cur.block_hash) == (6, h(6))
    assert store.cursor("oracle").block_number == 4  # type: ignore[union-attr]
    # Re-indexing a block overwrites it.
    store.record_blocks([IndexedBlock(number=6, hash=h(666), parent_hash=h(5))])
    assert store.block(6).hash == h(666)  # type: ignore[union-attr]


def a_tx(decision_id: int | None) -> Transaction:
    return Transaction(
        decision_id=decision_id,
        sender=SENDER.upper().replace("0X", "0x"),  # stored lower-case
        to="0x" + "22" * 20,
        data="0x1234",
        gas_limit=300_000,
        chain_id=31337,
    )


def test_nonces_are_taken_in_order_and_never_twice(store: Store) -> None:
    with pytest.raises(NonceNotInitialised):
        store.insert_transaction(a_tx(None))
    store.set_next_nonce(SENDER, 5)
    d1 = store.add_decision(a_decision())
    d2 = store.add_decision(a_decision(block_number=101))
    t1 = store.insert_transaction(a_tx(d1.id))
    assert (t1.nonce, t1.sender, t1.status) == (5, SENDER, TxStatus.PENDING)
    # The same decision again: refused by the database, and the nonce is not consumed.
    with pytest.raises(DuplicateSubmission):
        store.insert_transaction(a_tx(d1.id))
    assert store.next_nonce(SENDER) == 6
    t2 = store.insert_transaction(a_tx(d2.id))
    t3 = store.insert_transaction(a_tx(None))  # no decision (a cancellation): allowed, repeatable
    t4 = store.insert_transaction(a_tx(None))
    assert [t2.nonce, t3.nonce, t4.nonce] == [6, 7, 8]
    assert store.transaction_for_decision(d1.id).id == t1.id  # type: ignore[arg-type,union-attr]
    assert [t.nonce for t in store.open_transactions(SENDER)] == [5, 6, 7, 8]
    store.update_transaction(t1.id, status=TxStatus.FINAL, final=True)  # type: ignore[arg-type]
    assert store.max_open_nonce(SENDER) == 8
    assert [t.nonce for t in store.open_transactions(SENDER)] == [6, 7, 8]


def test_in_flight_and_final_without_bounty(store: Store) -> None:
    """The keeper's two soak-found queries: one transaction without a receipt per target, and
    final transactions whose bounty is still to be read."""
    store.set_next_nonce(SENDER, 0)
    target = "0x" + "11" * 20
    d1 = store.add_decision(a_decision(account=target))
    d2 = store.add_decision(a_decision(account="instrument:3"))
    assert store.in_flight(target) is None
    t1 = store.insert_transaction(a_tx(d1.id))
    t2 = store.insert_transaction(a_tx(d2.id))
    assert t1.id is not None and t2.id is not None
    assert store.in_flight(target).id == t1.id  # type: ignore[union-attr]
    assert store.in_flight("instrument:3").id == t2.id  # type: ignore[union-attr]
    store.update_transaction(t1.id, status=TxStatus.MINED, mined_hash=h(1))
    assert store.in_flight(target) is None  # its receipt is there: the next decision sees it
    assert store.final_without_bounty(SENDER) == []
    store.update_transaction(t1.id, status=TxStatus.FINAL, final=True)
    store.update_transaction(t2.id, status=TxStatus.REVERTED, final=True, mined_hash=h(2))
    assert [t.id for t in store.final_without_bounty(SENDER)] == [t1.id]
    store.update_transaction(t1.id, bounty=0)
    assert store.final_without_bounty(SENDER) == []


def test_concurrent_nonce_allocation(store_url: str) -> None:
    """Two stores on one database (two keepers) take nonces concurrently: all distinct, no gap."""
    stores = [Store.open(store_url), Store.open(store_url)]
    stores[0].set_next_nonce(SENDER, 0)
    got: list[int] = []
    lock = threading.Lock()

    def worker(st: Store) -> None:
        for _ in range(15):
            n = st.insert_transaction(a_tx(None)).nonce
            with lock:
                got.append(n)

    threads = [threading.Thread(target=worker, args=(st,)) for st in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for st in stores:
        st.close()
    assert sorted(got) == list(range(60))


def test_attempts_keep_every_hash(store: Store) -> None:
    store.set_next_nonce(SENDER, 0)
    tx = store.insert_transaction(a_tx(None))
    assert tx.id is not None
    fees = [(10**9, 10**8), (12 * 10**8, 12 * 10**7), (2**70, 2**65)]
    for i, (mf, tip) in enumerate(fees):
        store.add_attempt(
            TxAttempt(
                tx_id=tx.id,
                hash=h(1000 + i),
                raw="0x02",
                max_fee_per_gas=mf,
                max_priority_fee_per_gas=tip,
            )
        )
    got = store.attempts(tx.id)
    assert [a.hash for a in got] == [h(1000), h(1001), h(1002)]
    assert got[2].max_fee_per_gas == 2**70
    store.settle_attempts(tx.id, h(1000))  # the original mined after all
    assert [a.status for a in store.attempts(tx.id)] == ["mined", "replaced", "replaced"]
    done = store.update_transaction(
        tx.id, status=TxStatus.FINAL, mined_hash=h(1000), effective_gas_price=2**66, gas_used=21000
    )
    assert store.transaction(tx.id).effective_gas_price == 2**66  # type: ignore[union-attr]
    assert done.status == TxStatus.FINAL


def test_datetimes_are_utc(store: Store) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    d = store.add_decision(a_decision(created_at=moment))
    assert store.decision(d.id).created_at == moment  # type: ignore[arg-type,union-attr]


def test_free_text_is_scrubbed_before_it_is_written(store: Store) -> None:
    secret = "0x" + "5e" * 32
    register_secret(secret)
    try:
        d = store.add_decision(
            a_decision(outcome="reverted", outcome_detail=f"reverted while signing with {secret}")
        )
        store.set_next_nonce(SENDER, 0)
        tx = store.insert_transaction(a_tx(d.id))
        store.update_transaction(tx.id, revert_reason=f"err {secret[2:].upper()}")  # type: ignore[arg-type]
        with store.engine.connect() as conn:
            rows = [conn.execute(text(f"SELECT * FROM {t}")).all() for t in ("decision", "tx")]
        dump = repr(rows).lower()
        assert "5e5e5e5e" not in dump and "***" in dump
    finally:
        clear_registry()


def test_unknown_decision_is_not_a_duplicate(store: Store) -> None:
    store.set_next_nonce(SENDER, 3)
    with pytest.raises(IntegrityError):
        store.insert_transaction(a_tx(987654))
    assert store.next_nonce(SENDER) == 3  # rolled back with the failed insert
