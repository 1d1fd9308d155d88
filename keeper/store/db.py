"""Opening the store (SQLite or PostgreSQL by URL), bringing its schema to the current revision
(``keeper.store.migrate``), and the queries the keeper needs. Everything that must be atomic (a
nonce and the transaction that uses it, a reorg rollback) happens in one database transaction
here, never across calls."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, event, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select, update

from keeper.secrets import redact_url, redacting_errors, register_url
from keeper.store.models import (
    AttemptStatus,
    Decision,
    IndexCursor,
    IndexedBlock,
    NonceState,
    Transaction,
    TxAttempt,
    TxStatus,
)
from keeper.store.types import utcnow

#: Decisions per flush in ``Store.add_decisions`` (one transaction for all of them).
DECISION_BATCH = 250


class StoreError(RuntimeError):
    """Base of every store failure."""


class SchemaVersionMismatch(StoreError):
    """The database's schema is not one this keeper can migrate from: ``found`` is what it
    holds (None: tables without any version record), ``expected`` the head revision."""

    def __init__(self, found: str | None, expected: str, hint: str = "") -> None:
        what = "an unversioned schema" if found is None else f"schema {found}"
        super().__init__(
            f"the database holds {what}, this keeper needs revision {expected} and has no "
            "migration from it: "
            + (hint or "use a fresh database, or a keeper release that knows that schema")
        )
        self.found = found
        self.expected = expected


class DuplicateSubmission(StoreError):
    """A transaction for this decision already exists (possibly from before a restart)."""

    def __init__(self, decision_id: int) -> None:
        super().__init__(f"decision {decision_id} already has a transaction")
        self.decision_id = decision_id


class BatchRefused(StoreError):
    """The database refused a batch insert (a unique key taken by another writer since it was
    checked): nothing of the batch was written; the caller inserts the rows one by one."""


class LeaseLost(BatchRefused):
    """Cluster mode: the lease a decision or its transaction needs is no longer this keeper's
    (expired, taken over, or too close to expiry): nothing was written."""


class Fence(Protocol):
    """Cluster mode's checks inside the store's own transactions (keeper.cluster.member): a
    decision is recorded, a transaction stored and an attempt signed only while this keeper
    holds the lease they belong to. Without a fence (a single keeper) nothing is checked."""

    def admit_decisions(self, s: Session, decisions: Sequence[Decision]) -> list[bool]:
        """Per decision: may it be recorded (its lease held, with the token acted under)?"""
        ...

    def admit_transactions(self, s: Session, txs: Sequence[Transaction]) -> None:
        """Raises ``LeaseLost`` unless every transaction's decision still holds its action key
        and its lease is still held."""
        ...

    def admit_attempts(self, s: Session, tx_ids: Sequence[int]) -> None:
        """Raises ``LeaseLost`` unless every transaction is still pending (not failed by the
        keeper that took over from a keeper thought dead)."""
        ...


class NonceNotInitialised(StoreError):
    """No nonce row for a signer: the nonce manager must reconcile with the chain first."""


def normalise_url(url: str) -> str:
    """SQLAlchemy URL with the psycopg 3 driver for ``postgresql://``."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (status, metrics) never block the writer; NORMAL sync is durable in WAL mode
    # except for the last transactions on power loss, which reconciliation with the chain heals.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql+psycopg://"):
        return create_engine(url, pool_pre_ping=True)
    raise StoreError(f"unsupported store URL {redact_url(url)}")


class Store:
    """The keeper's database. Open with ``Store.open(url)``; close with ``close()``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Cluster mode's lease checks (``Fence``); None for a single keeper.
        self.fence: Fence | None = None

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect, then create the schema in an empty database or upgrade an existing one to
        the head revision, in one transaction. Raises ``SchemaVersionMismatch`` for a database
        this keeper has no migration from (a newer keeper's, or an unversioned one)."""
        # The migrations import this module (the engine, the errors): imported when used.
        from keeper.store.migrate import upgrade

        register_url(url)  # a password in the URL never shows in a log or an error
        with redacting_errors(StoreError):
            engine = make_engine(url)
            try:
                with engine.begin() as conn:
                    upgrade(conn)
            except BaseException:
                engine.dispose()
                raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    # --- schema ------------------------------------------------------------------------------

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        from keeper.store.migrate import current

        with self.engine.connect() as conn:
            return current(conn)

    # --- index cursor and blocks -------------------------------------------------------------

    def cursor(self, stream: str) -> IndexCursor | None:
        with self.session() as s:
            return s.get(IndexCursor, stream)

    def set_cursor(self, stream: str, block_number: int, block_hash: str) -> None:
        with self.session() as s:
            row = s.get(IndexCursor, stream)
            if row is None:
                s.add(IndexCursor(stream=stream, block_number=block_number, block_hash=block_hash))
            else:
                row.block_number, row.block_hash, row.updated_at = (
                    block_number,
                    block_hash,
                    utcnow(),
                )

    def record_blocks(self, blocks: Sequence[IndexedBlock]) -> None:
        """Insert or overwrite blocks (by number)."""
        with self.session() as s:
            for block in blocks:
                s.merge(IndexedBlock.model_validate(block.model_dump()))

    def block(self, number: int) -> IndexedBlock | None:
        with self.session() as s:
            return s.get(IndexedBlock, number)

    def latest_block(self) -> IndexedBlock | None:
        with self.session() as s:
            return s.exec(
                select(IndexedBlock).order_by(col(IndexedBlock.number).desc()).limit(1)
            ).first()

    def rollback_after(self, number: int) -> int:
        """Forget every block above ``number`` (a reorg's common ancestor) and move every cursor
        beyond it back to it, in one transaction. Returns the number of blocks removed."""
        with self.session() as s:
            keep = s.get(IndexedBlock, number)
            removed = s.exec(delete(IndexedBlock).where(col(IndexedBlock.number) > number)).rowcount
            for cur in s.exec(select(IndexCursor).where(col(IndexCursor.block_number) > number)):
                cur.block_number = number
                cur.block_hash = keep.hash if keep else ""
                cur.updated_at = utcnow()
            return int(removed or 0)

    # --- decisions ---------------------------------------------------------------------------

    def add_decision(self, decision: Decision) -> Decision:
        with self.session() as s:
            s.add(decision)
            s.flush()
            s.refresh(decision)
            return decision

    def add_decisions(self, decisions: list[Decision]) -> None:
        """Insert many decisions in one transaction (a block's no-action records), flushed
        ``DECISION_BATCH`` at a time: the ORM's work between two statements stays short (in
        cluster mode PostgreSQL ends a session idle in a transaction for ``lease_ttl -
        safety_margin``; 100,000 rows flushed at once outlasted it)."""
        if not decisions:
            return
        with self.session() as s:
            for i in range(0, len(decisions), DECISION_BATCH):
                s.add_all(decisions[i : i + DECISION_BATCH])
                s.flush()

    def decision(self, decision_id: int) -> Decision | None:
        with self.session() as s:
            return s.get(Decision, decision_id)

    # --- decisions: the decision loop's queries -----------------------------------------

    def add_action_decision(self, decision: Decision) -> Decision | None:
        """Insert a decision carrying an ``action_key``; None when the key is already taken
        (the unique index decides, so two keepers or a restarted one never both get it)."""
        try:
            if self.fence is None:
                return self.add_decision(decision)
            with self.session() as s:
                if not self.fence.admit_decisions(s, [decision])[0]:
                    return None
                s.add(decision)
                s.flush()
                s.refresh(decision)
                return decision
        except IntegrityError:
            if decision.action_key and self.decision_by_key(decision.action_key) is not None:
                return None
            raise

    def add_action_decisions(self, decisions: list[Decision]) -> list[Decision | None]:
        """``add_action_decision`` for many rows in one transaction: the inserted row, or None
        where the key is already taken. Taken keys are looked up first; a key another writer
        takes between that look-up and the insert fails the whole insert, and the rows are
        then inserted one by one, the unique index deciding each."""
        keys = [d.action_key for d in decisions if d.action_key]
        with self.session() as s:
            taken = set(
                s.exec(select(Decision.action_key).where(col(Decision.action_key).in_(keys)))
            )
        fresh, seen = [], set(taken)
        for d in decisions:
            if d.action_key and d.action_key not in seen:
                fresh.append(d)
                seen.add(d.action_key)
        try:
            with self.session() as s:
                if self.fence is not None:
                    admitted = self.fence.admit_decisions(s, fresh)
                    fresh = [d for d, ok in zip(fresh, admitted, strict=True) if ok]
                s.add_all(fresh)
                s.flush()
        except IntegrityError:
            for d in fresh:
                d.id = None  # a rolled-back flush leaves the ids it assigned
            one_by_one = {id(d): self.add_action_decision(d) for d in fresh}
            return [one_by_one.get(id(d)) for d in decisions]
        inserted = {id(d) for d in fresh}
        return [d if id(d) in inserted else None for d in decisions]

    def taken_keys(self, action_keys: Sequence[str]) -> set[str]:
        """Which of ``action_keys`` a decision holds (one query, in chunks of 500 keys)."""
        out: set[str] = set()
        with self.session() as s:
            for i in range(0, len(action_keys), 500):
                chunk = list(action_keys[i : i + 500])
                query = select(Decision.action_key).where(col(Decision.action_key).in_(chunk))
                out.update(k for k in s.exec(query) if k is not None)
        return out

    def decision_by_key(self, action_key: str) -> Decision | None:
        with self.session() as s:
            return s.exec(select(Decision).where(Decision.action_key == action_key)).first()

    def update_decision(self, decision_id: int, **fields: Any) -> Decision:
        with self.session() as s:
            row = s.get(Decision, decision_id)
            if row is None:
                raise StoreError(f"no decision {decision_id}")
            for name, value in fields.items():
                setattr(row, name, value)
            return row

    def latest_decisions(self) -> dict[str, Decision]:
        """The most recent decision per account (by id)."""
        with self.session() as s:
            latest = (
                select(Decision.account, func.max(Decision.id).label("id"))
                .group_by(col(Decision.account))
                .subquery()
            )
            rows = s.exec(select(Decision).join(latest, col(Decision.id) == latest.c.id))
            return {d.account: d for d in rows}

    def backoffs(self, from_block: int) -> dict[str, int]:
        """Per account, the furthest recorded back-off that ends after ``from_block``."""
        with self.session() as s:
            rows = s.exec(
                select(Decision.account, func.max(Decision.backoff_until))
                .where(col(Decision.backoff_until) > from_block)
                .group_by(col(Decision.account))
            )
            return {a: b for a, b in rows if b is not None}

    def decisions_for(self, account: str) -> list[Decision]:
        with self.session() as s:
            return list(
                s.exec(
                    select(Decision).where(Decision.account == account).order_by(col(Decision.id))
                )
            )

    # --- nonces and transactions -------------------------------------------------------------

    def next_nonce(self, sender: str) -> int | None:
        with self.session() as s:
            row = s.get(NonceState, sender.lower())
            return row.next_nonce if row else None

    def set_next_nonce(self, sender: str, nonce: int) -> None:
        with self.session() as s:
            row = s.get(NonceState, sender.lower())
            if row is None:
                s.add(NonceState(sender=sender.lower(), next_nonce=nonce))
            else:
                row.next_nonce, row.updated_at = nonce, utcnow()

    def insert_transaction(self, tx: Transaction) -> Transaction:
        """Take the signer's next nonce and insert ``tx`` with it, atomically.

        The nonce row is updated first (``UPDATE ... RETURNING``): that write locks the row on
        PostgreSQL and the database on SQLite, so two keepers sharing the store never take the
        same nonce. If the insert fails (a duplicate decision), the nonce increment is rolled
        back with it: no gap.
        """
        sender = tx.sender.lower()
        with self.session() as s:
            taken = s.exec(
                update(NonceState)
                .where(col(NonceState.sender) == sender)
                .values(next_nonce=col(NonceState.next_nonce) + 1, updated_at=utcnow())
                .returning(col(NonceState.next_nonce))
            ).scalar_one_or_none()
            if taken is None:
                raise NonceNotInitialised(f"no nonce state for {sender}: reconcile first")
            tx.sender = sender
            tx.nonce = int(taken) - 1
            if self.fence is not None:
                self.fence.admit_transactions(s, [tx])
            s.add(tx)
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                if tx.decision_id is not None and self.transaction_for_decision(tx.decision_id):
                    raise DuplicateSubmission(tx.decision_id) from None
                raise  # another constraint (an unknown decision id): not a duplicate
            s.refresh(tx)
            return tx

    def insert_transactions(self, txs: list[Transaction]) -> list[Transaction]:
        """``insert_transaction`` for many transactions of one sender in one database
        transaction: consecutive nonces in list order, taken by one ``UPDATE ... RETURNING``.
        Raises ``BatchRefused`` (nothing written, no nonce taken) when an insert fails: the
        caller inserts them one by one, which names the duplicate."""
        senders = {tx.sender.lower() for tx in txs}
        if len(senders) != 1:
            raise StoreError(f"one sender per batch, not {len(senders)}")
        (sender,) = senders
        with self.session() as s:
            taken = s.exec(
                update(NonceState)
                .where(col(NonceState.sender) == sender)
                .values(next_nonce=col(NonceState.next_nonce) + len(txs), updated_at=utcnow())
                .returning(col(NonceState.next_nonce))
            ).scalar_one_or_none()
            if taken is None:
                raise NonceNotInitialised(f"no nonce state for {sender}: reconcile first")
            first = int(taken) - len(txs)
            for k, tx in enumerate(txs):
                tx.sender, tx.nonce = sender, first + k
            if self.fence is not None:
                self.fence.admit_transactions(s, txs)
            s.add_all(txs)
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                for tx in txs:
                    tx.id = None
                raise BatchRefused(f"{len(txs)} transactions refused as a batch") from None
            return txs

    def insert_gap_filler(self, tx: Transaction) -> Transaction:
        """Insert ``tx`` at the nonce it already carries, without taking one from the nonce row:
        a filler for a nonce that was handed out but never reached the chain (its transaction
        was refused), which would otherwise block every later nonce of the signer."""
        tx.sender = tx.sender.lower()
        with self.session() as s:
            s.add(tx)
            s.flush()
            s.refresh(tx)
            return tx

    def attempt_by_hash(self, tx_hash: str) -> TxAttempt | None:
        with self.session() as s:
            return s.exec(select(TxAttempt).where(TxAttempt.hash == tx_hash)).first()

    def renonce_transaction(self, tx_id: int) -> Transaction:
        """Give a transaction that never reached the chain the signer's next nonce (its own was
        taken by another sender). Same atomic ``UPDATE ... RETURNING`` as ``insert_transaction``.
        """
        with self.session() as s:
            row = s.get(Transaction, tx_id)
            if row is None:
                raise StoreError(f"no transaction {tx_id}")
            taken = s.exec(
                update(NonceState)
                .where(col(NonceState.sender) == row.sender)
                .values(next_nonce=col(NonceState.next_nonce) + 1, updated_at=utcnow())
                .returning(col(NonceState.next_nonce))
            ).scalar_one_or_none()
            if taken is None:
                raise NonceNotInitialised(f"no nonce state for {row.sender}: reconcile first")
            row.nonce = int(taken) - 1
            row.status = TxStatus.PENDING
            row.final = False
            row.updated_at = utcnow()
            return row

    def transaction(self, tx_id: int) -> Transaction | None:
        with self.session() as s:
            return s.get(Transaction, tx_id)

    def transaction_for_decision(self, decision_id: int) -> Transaction | None:
        with self.session() as s:
            return s.exec(select(Transaction).where(Transaction.decision_id == decision_id)).first()

    def open_transactions(self, sender: str) -> list[Transaction]:
        """Unsettled transactions of ``sender``, by nonce."""
        with self.session() as s:
            return list(
                s.exec(
                    select(Transaction)
                    .where(Transaction.sender == sender.lower())
                    .where(col(Transaction.final).is_(False))
                    .order_by(col(Transaction.nonce))
                )
            )

    def instruments_being_settled(self, sender: str) -> set[int]:
        """Instruments with a ``settle_instrument`` transaction of ``sender`` not yet final."""
        with self.session() as s:
            rows = s.exec(
                select(Decision.instrument)
                .join(Transaction, col(Transaction.decision_id) == col(Decision.id))
                .where(Transaction.sender == sender.lower())
                .where(col(Transaction.final).is_(False))
                .where(Decision.action == "settle_instrument")
            ).all()
        return {int(i) for i in rows if i is not None}

    def transactions(self, sender: str) -> list[Transaction]:
        with self.session() as s:
            return list(
                s.exec(
                    select(Transaction)
                    .where(Transaction.sender == sender.lower())
                    .order_by(col(Transaction.nonce), col(Transaction.id))
                )
            )

    def final_without_bounty(self, sender: str) -> list[Transaction]:
        """Successful final transactions of ``sender`` whose bounty is not recorded yet (the
        pass that saw them become final was interrupted: an RPC fault, a kill)."""
        with self.session() as s:
            return list(
                s.exec(
                    select(Transaction)
                    .where(Transaction.sender == sender.lower())
                    .where(Transaction.status == TxStatus.FINAL)
                    .where(col(Transaction.bounty).is_(None))
                    .order_by(col(Transaction.id))
                )
            )

    def in_flight(self, target: str) -> Transaction | None:
        """A transaction without a receipt yet for a decision about ``target`` (an account id,
        or ``instrument:<id>``): its effect is not on chain, so no decision has seen it."""
        with self.session() as s:
            return s.exec(
                select(Transaction)
                .join(Decision, col(Decision.id) == col(Transaction.decision_id))
                .where(Decision.account == target)
                .where(Transaction.status == TxStatus.PENDING)
            ).first()

    def set_bounties(self, bounties: dict[int, int]) -> None:
        """Record the bounty each final transaction's receipt credited, in one transaction."""
        if not bounties:
            return
        with self.session() as s:
            for tx_id, bounty in bounties.items():
                row = s.get(Transaction, tx_id)
                if row is None:
                    raise StoreError(f"no transaction {tx_id}")
                row.bounty, row.updated_at = bounty, utcnow()

    def in_flight_targets(self) -> set[str]:
        """Every target with an ``in_flight`` transaction (one query)."""
        with self.session() as s:
            rows = s.exec(
                select(Decision.account)
                .join(Transaction, col(Decision.id) == col(Transaction.decision_id))
                .where(Transaction.status == TxStatus.PENDING)
            )
            return set(rows)

    def max_open_nonce(self, sender: str) -> int | None:
        txs = self.open_transactions(sender)
        return max((t.nonce for t in txs), default=None)

    def update_transaction(self, tx_id: int, **fields: Any) -> Transaction:
        with self.session() as s:
            row = s.get(Transaction, tx_id)
            if row is None:
                raise StoreError(f"no transaction {tx_id}")
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            return row

    def add_attempt(self, attempt: TxAttempt) -> TxAttempt:
        with self.session() as s:
            if self.fence is not None:
                self.fence.admit_attempts(s, [attempt.tx_id])
            s.add(attempt)
            s.flush()
            s.refresh(attempt)
            return attempt

    def add_attempts(self, attempts: list[TxAttempt]) -> list[TxAttempt]:
        """Insert many attempts in one transaction."""
        with self.session() as s:
            if self.fence is not None:
                self.fence.admit_attempts(s, [a.tx_id for a in attempts])
            s.add_all(attempts)
            s.flush()
            return attempts

    def attempts(self, tx_id: int) -> list[TxAttempt]:
        with self.session() as s:
            query = select(TxAttempt).where(TxAttempt.tx_id == tx_id).order_by(col(TxAttempt.id))
            return list(s.exec(query))

    def update_attempt(self, attempt_id: int, **fields: Any) -> TxAttempt:
        with self.session() as s:
            row = s.get(TxAttempt, attempt_id)
            if row is None:
                raise StoreError(f"no attempt {attempt_id}")
            for name, value in fields.items():
                setattr(row, name, value)
            return row

    def attempts_of(self, tx_ids: Sequence[int]) -> dict[int, list[TxAttempt]]:
        """``attempts`` of many transactions (one query per 500): by transaction id."""
        out: dict[int, list[TxAttempt]] = {i: [] for i in tx_ids}
        with self.session() as s:
            for i in range(0, len(tx_ids), 500):
                chunk = list(tx_ids[i : i + 500])
                query = (
                    select(TxAttempt)
                    .where(col(TxAttempt.tx_id).in_(chunk))
                    .order_by(col(TxAttempt.id))
                )
                for a in s.exec(query):
                    out[a.tx_id].append(a)
        return out

    def update_transactions(self, updates: dict[int, dict[str, Any]]) -> None:
        """``update_transaction`` for many transactions, in one database transaction."""
        if not updates:
            return
        now = utcnow()
        with self.session() as s:
            for tx_id, fields in updates.items():
                row = s.get(Transaction, tx_id)
                if row is None:
                    raise StoreError(f"no transaction {tx_id}")
                for name, value in fields.items():
                    setattr(row, name, value)
                row.updated_at = now

    def settle_attempts_many(self, mined: list[tuple[int, str]]) -> None:
        """``settle_attempts`` for many final transactions, in one database transaction."""
        if not mined:
            return
        hashes = dict(mined)
        with self.session() as s:
            ids = list(hashes)
            for i in range(0, len(ids), 500):
                query = select(TxAttempt).where(col(TxAttempt.tx_id).in_(ids[i : i + 500]))
                for a in s.exec(query):
                    if a.hash == hashes[a.tx_id]:
                        a.status = AttemptStatus.MINED
                    elif a.status == AttemptStatus.SENT:
                        a.status = AttemptStatus.REPLACED

    def settle_attempts(self, tx_id: int, mined_hash: str | None) -> None:
        """At finality: the mined hash is MINED, every other sent hash REPLACED."""
        with self.session() as s:
            for a in s.exec(select(TxAttempt).where(TxAttempt.tx_id == tx_id)):
                if a.hash == mined_hash:
                    a.status = AttemptStatus.MINED
                elif a.status == AttemptStatus.SENT:
                    a.status = AttemptStatus.REPLACED
