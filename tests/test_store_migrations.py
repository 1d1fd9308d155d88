"""Schema migrations of the store (Alembic, keeper/store/migrations), on SQLite and PostgreSQL.

A store from before Alembic is built from the DDL that release created (captured below, not
derived from today's models or migrations), filled with rows, then opened: it must be upgraded
in place, keep every row, and end with the same schema as a fresh store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Engine, Table, inspect, text
from sqlmodel import SQLModel

from keeper.secrets import RedactedError
from keeper.store import (
    Decision,
    DecisionOutcome,
    SchemaVersionMismatch,
    Store,
    Transaction,
    TxStatus,
    migrate,
)
from keeper.store.db import make_engine
from keeper.store.migrate import (
    BASELINE,
    LEGACY_SCHEMA_VERSION,
    MIGRATIONS_DIR,
    alembic_config,
    head,
)
from keeper.store.types import BigInt, ScrubbedText, UTCDateTime

WAD = 10**18
BIG = -(2**255) + 12345
SENDER = "0x" + "ab" * 20

#: The tables a store from before Alembic has (schema version 4), as that release created
#: them: ``{serial}`` and ``{timestamp}`` are the only differences between the two backends.
LEGACY_DDL = """
CREATE TABLE account (
    id VARCHAR(80) NOT NULL, owner VARCHAR(42) NOT NULL, sub VARCHAR(80) NOT NULL,
    nonce BIGINT NOT NULL, first_block BIGINT NOT NULL, last_block BIGINT NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_account_last_block ON account (last_block);
CREATE INDEX ix_account_owner ON account (owner);
CREATE TABLE decision (
    id {serial} NOT NULL, created_at {timestamp} NOT NULL, block_number BIGINT NOT NULL,
    block_hash VARCHAR(66) NOT NULL, account VARCHAR(80) NOT NULL,
    inputs_digest VARCHAR(66) NOT NULL, loss_matrix TEXT NOT NULL,
    requirement VARCHAR(80) NOT NULL, initial_margin VARCHAR(80) NOT NULL,
    equity VARCHAR(80) NOT NULL, witness TEXT, state VARCHAR(32) NOT NULL,
    action VARCHAR(32) NOT NULL, fraction VARCHAR(80), expected_bounty VARCHAR(80),
    outcome TEXT, action_key VARCHAR(160), account_nonce BIGINT, instrument BIGINT,
    lenient BOOLEAN, backoff_until BIGINT, expected_gas_cost VARCHAR(80),
    change_digest VARCHAR(66),
    PRIMARY KEY (id)
);
CREATE INDEX ix_decision_account ON decision (account);
CREATE INDEX ix_decision_block_number ON decision (block_number);
CREATE UNIQUE INDEX uq_decision_action_key ON decision (action_key);
CREATE TABLE event_account (
    block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, account VARCHAR(80) NOT NULL,
    nonce BIGINT NOT NULL,
    PRIMARY KEY (block_number, log_index, account)
);
CREATE INDEX ix_event_account_account ON event_account (account);
CREATE TABLE event_log (
    block_number BIGINT NOT NULL, log_index INTEGER NOT NULL, block_hash VARCHAR(66) NOT NULL,
    tx_hash VARCHAR(66) NOT NULL, name VARCHAR(64) NOT NULL, args TEXT NOT NULL,
    accounts TEXT NOT NULL,
    PRIMARY KEY (block_number, log_index)
);
CREATE INDEX ix_event_log_name_block ON event_log (name, block_number);
CREATE TABLE index_cursor (
    stream VARCHAR(64) NOT NULL, block_number BIGINT NOT NULL, block_hash VARCHAR(66) NOT NULL,
    updated_at {timestamp} NOT NULL,
    PRIMARY KEY (stream)
);
CREATE TABLE indexed_block (
    number BIGINT NOT NULL, hash VARCHAR(66) NOT NULL, parent_hash VARCHAR(66) NOT NULL,
    timestamp BIGINT NOT NULL,
    PRIMARY KEY (number)
);
CREATE TABLE nonce_state (
    sender VARCHAR(42) NOT NULL, next_nonce BIGINT NOT NULL, updated_at {timestamp} NOT NULL,
    PRIMARY KEY (sender)
);
CREATE TABLE schema_version (
    id INTEGER NOT NULL, version INTEGER NOT NULL, applied_at {timestamp} NOT NULL,
    PRIMARY KEY (id)
);
CREATE TABLE tx (
    id {serial} NOT NULL, decision_id INTEGER, created_at {timestamp} NOT NULL,
    updated_at {timestamp} NOT NULL, sender VARCHAR(42) NOT NULL, nonce BIGINT NOT NULL,
    "to" VARCHAR(42), value VARCHAR(80) NOT NULL, data VARCHAR NOT NULL,
    gas_limit BIGINT NOT NULL, chain_id BIGINT NOT NULL, status VARCHAR(16) NOT NULL,
    final BOOLEAN NOT NULL, mined_hash VARCHAR(66), block_number BIGINT,
    block_hash VARCHAR(66), gas_used BIGINT, effective_gas_price VARCHAR(80),
    revert_reason TEXT, bounty VARCHAR(80),
    PRIMARY KEY (id),
    CONSTRAINT uq_tx_decision UNIQUE (decision_id),
    FOREIGN KEY(decision_id) REFERENCES decision (id)
);
CREATE INDEX ix_tx_final ON tx (final);
CREATE INDEX ix_tx_nonce ON tx (nonce);
CREATE INDEX ix_tx_sender ON tx (sender);
CREATE INDEX ix_tx_status ON tx (status);
CREATE TABLE tx_attempt (
    id {serial} NOT NULL, tx_id INTEGER NOT NULL, hash VARCHAR(66) NOT NULL,
    raw VARCHAR NOT NULL, max_fee_per_gas VARCHAR(80) NOT NULL,
    max_priority_fee_per_gas VARCHAR(80) NOT NULL, sent_at {timestamp} NOT NULL,
    status VARCHAR(16) NOT NULL, error TEXT,
    PRIMARY KEY (id),
    FOREIGN KEY(tx_id) REFERENCES tx (id),
    UNIQUE (hash)
);
CREATE INDEX ix_tx_attempt_tx_id ON tx_attempt (tx_id);
"""

#: The same release's path from its first schema version: version 1 lacked the decision action
#: columns (and had ``decision.account`` at 42 characters), the event index and ``tx.bounty``.
V1_DECISION_AND_TX = """
CREATE TABLE decision (
    id {serial} NOT NULL, created_at {timestamp} NOT NULL, block_number BIGINT NOT NULL,
    block_hash VARCHAR(66) NOT NULL, account VARCHAR(42) NOT NULL,
    inputs_digest VARCHAR(66) NOT NULL, loss_matrix TEXT NOT NULL,
    requirement VARCHAR(80) NOT NULL, initial_margin VARCHAR(80) NOT NULL,
    equity VARCHAR(80) NOT NULL, witness TEXT, state VARCHAR(32) NOT NULL,
    action VARCHAR(32) NOT NULL, fraction VARCHAR(80), expected_bounty VARCHAR(80),
    outcome TEXT,
    PRIMARY KEY (id)
);
CREATE INDEX ix_decision_account ON decision (account);
CREATE INDEX ix_decision_block_number ON decision (block_number);
CREATE TABLE tx (
    id {serial} NOT NULL, decision_id INTEGER, created_at {timestamp} NOT NULL,
    updated_at {timestamp} NOT NULL, sender VARCHAR(42) NOT NULL, nonce BIGINT NOT NULL,
    "to" VARCHAR(42), value VARCHAR(80) NOT NULL, data VARCHAR NOT NULL,
    gas_limit BIGINT NOT NULL, chain_id BIGINT NOT NULL, status VARCHAR(16) NOT NULL,
    final BOOLEAN NOT NULL, mined_hash VARCHAR(66), block_number BIGINT,
    block_hash VARCHAR(66), gas_used BIGINT, effective_gas_price VARCHAR(80),
    revert_reason TEXT,
    PRIMARY KEY (id),
    CONSTRAINT uq_tx_decision UNIQUE (decision_id),
    FOREIGN KEY(decision_id) REFERENCES decision (id)
);
CREATE INDEX ix_tx_final ON tx (final);
CREATE INDEX ix_tx_nonce ON tx (nonce);
CREATE INDEX ix_tx_sender ON tx (sender);
CREATE INDEX ix_tx_status ON tx (status);
"""
#: What that release's migration steps 1 -> 2 -> 3 -> 4 ran (the event index tables of step 2
#: are the ones in ``LEGACY_DDL``); ``{widen}`` is PostgreSQL's only (SQLite keeps the
#: declared 42, which it never enforces).
V1_TO_V4_STEPS = """
ALTER TABLE decision ADD COLUMN action_key VARCHAR(160);
ALTER TABLE decision ADD COLUMN account_nonce BIGINT;
ALTER TABLE decision ADD COLUMN instrument BIGINT;
ALTER TABLE decision ADD COLUMN lenient BOOLEAN;
ALTER TABLE decision ADD COLUMN backoff_until BIGINT;
ALTER TABLE decision ADD COLUMN expected_gas_cost VARCHAR(80);
ALTER TABLE decision ADD COLUMN change_digest VARCHAR(66);
CREATE UNIQUE INDEX uq_decision_action_key ON decision (action_key);
{widen};
{event_index};
ALTER TABLE tx ADD COLUMN bounty VARCHAR(80);
"""
EVENT_INDEX_TABLES = ("account", "event_account", "event_log")

LEGACY_TABLES = (
    "account",
    "decision",
    "event_account",
    "event_log",
    "index_cursor",
    "indexed_block",
    "nonce_state",
    "schema_version",
    "tx",
    "tx_attempt",
)
MOMENT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def _moment(conn: Connection) -> datetime:
    # That release stored UTC on SQLite without an offset, as keeper.store.types does.
    return MOMENT.replace(tzinfo=None) if conn.dialect.name == "sqlite" else MOMENT


def _statements(ddl: str) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]


def _names_table(statement: str, tables: tuple[str, ...]) -> bool:
    return any(f"TABLE {t} (" in statement or f" ON {t} (" in statement for t in tables)


def legacy_ddl(sqlite: bool, migrated_from_v1: bool = False) -> list[str]:
    """The statements that made a store of that release: created at version 4, or created at
    version 1 and brought to 4 by that release's own migration steps."""
    types = {
        "serial": "INTEGER" if sqlite else "SERIAL",
        "timestamp": "DATETIME" if sqlite else "TIMESTAMP WITH TIME ZONE",
    }
    v4 = _statements(LEGACY_DDL.format(**types))
    if not migrated_from_v1:
        return v4
    later = ("decision", "tx", *EVENT_INDEX_TABLES)
    v1 = _statements(V1_DECISION_AND_TX.format(**types))
    v1 += [s for s in v4 if not _names_table(s, later)]
    steps = V1_TO_V4_STEPS.format(
        widen="" if sqlite else "ALTER TABLE decision ALTER COLUMN account TYPE VARCHAR(80)",
        event_index=";".join(s for s in v4 if _names_table(s, EVENT_INDEX_TABLES)),
    )
    return v1 + _statements(steps)


def create_legacy_store(
    engine: Engine, version: int = LEGACY_SCHEMA_VERSION, migrated_from_v1: bool = False
) -> None:
    """The tables of a store from before Alembic, with a row in each (ids from the database's
    own sequences, as that release inserted them)."""
    with engine.begin() as conn:
        for statement in legacy_ddl(engine.dialect.name == "sqlite", migrated_from_v1):
            conn.execute(text(statement))
        at = _moment(conn)
        conn.execute(
            text("INSERT INTO schema_version (id, version, applied_at) VALUES (1, :v, :t)"),
            {"v": version, "t": at},
        )
        conn.execute(
            text(
                "INSERT INTO decision (created_at, block_number, block_hash, account,"
                " inputs_digest, loss_matrix, requirement, initial_margin, equity, witness,"
                " state, action, fraction, expected_bounty, outcome, action_key,"
                " backoff_until) VALUES (:t, 100, :h, :acct, :h, :lm, :req, :im, :eq, :w,"
                " 'liquidatable', 'liquidate', :frac, '7', 'sent', 'liquidate:1:1', 105)"
            ),
            {
                "t": at,
                "h": h(100),
                "acct": str(2**255),
                "lm": f'{{"ETH":[0,{BIG}]}}',
                "req": str(2**200 + 1),
                "im": str(2**200),
                "eq": str(BIG),
                "w": '{"ETH":3}',
                "frac": str(WAD // 2),
            },
        )
        decision_id = conn.execute(text("SELECT id FROM decision")).scalar_one()
        conn.execute(
            text(
                'INSERT INTO tx (decision_id, created_at, updated_at, sender, nonce, "to",'
                " value, data, gas_limit, chain_id, status, final, bounty)"
                " VALUES (:d, :t, :t, :s, 0, :s, '0', '0x', 21000, 31337, 'final', :f, :b)"
            ),
            {"d": decision_id, "t": at, "s": SENDER, "f": True, "b": str(3 * WAD)},
        )
        tx_id = conn.execute(text("SELECT id FROM tx")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO tx_attempt (tx_id, hash, raw, max_fee_per_gas,"
                " max_priority_fee_per_gas, sent_at, status)"
                " VALUES (:x, :h, '0x02', :fee, '1', :t, 'mined')"
            ),
            {"x": tx_id, "h": h(1000), "fee": str(2**66), "t": at},
        )
        conn.execute(
            text("INSERT INTO nonce_state (sender, next_nonce, updated_at) VALUES (:s, 1, :t)"),
            {"s": SENDER, "t": at},
        )
        conn.execute(
            text(
                "INSERT INTO index_cursor (stream, block_number, block_hash, updated_at)"
                " VALUES ('clearing', 100, :h, :t)"
            ),
            {"h": h(100), "t": at},
        )
        conn.execute(
            text(
                "INSERT INTO indexed_block (number, hash, parent_hash, timestamp)"
                " VALUES (100, :h, :p, 1700000000)"
            ),
            {"h": h(100), "p": h(99)},
        )
        conn.execute(
            text(
                "INSERT INTO event_log (block_number, log_index, block_hash, tx_hash, name,"
                " args, accounts) VALUES (100, 0, :h, :h, 'Deposit', '{}', :a)"
            ),
            {"h": h(100), "a": f"[{2**255 + 7}]"},
        )
        conn.execute(
            text(
                "INSERT INTO event_account (block_number, log_index, account, nonce)"
                " VALUES (100, 0, :a, 1)"
            ),
            {"a": str(2**255 + 7)},
        )
        conn.execute(
            text(
                "INSERT INTO account (id, owner, sub, nonce, first_block, last_block)"
                " VALUES (:a, :o, '7', 1, 100, 100)"
            ),
            {"a": str(2**255 + 7), "o": SENDER},
        )


def schema_of(engine: Engine) -> dict[str, Any]:
    """Tables, columns (type, nullability, default), keys, indexes and constraints, by name."""
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        insp = inspect(conn)
        for table in sorted(insp.get_table_names()):
            if table == "alembic_version":
                continue
            out[table] = {
                "columns": sorted(
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in insp.get_columns(table)
                ),
                "pk": sorted(insp.get_pk_constraint(table)["constrained_columns"]),
                "indexes": sorted(
                    (str(i["name"]), tuple(i["column_names"]), bool(i["unique"]))
                    for i in insp.get_indexes(table)
                ),
                "unique": sorted(
                    (str(u["name"]), tuple(u["column_names"]))
                    for u in insp.get_unique_constraints(table)
                ),
                "fks": sorted(
                    (
                        str(fk["name"]),
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                    )
                    for fk in insp.get_foreign_keys(table)
                ),
            }
    return out


def row_counts(engine: Engine, tables: tuple[str, ...]) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


def drop_everything(engine: Engine) -> None:
    with engine.begin() as conn:
        tables = ("cluster_keeper", "cluster_lease", "tx_attempt", "tx", "decision")
        for table in (*tables, *LEGACY_TABLES, "alembic_version"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """A plain engine on the test's store, to build and inspect it outside ``Store``."""
    eng = make_engine(store_url)
    yield eng
    eng.dispose()


def test_fresh_store_is_at_head_and_agrees_with_the_models(store_url: str) -> None:
    with Store.open(store_url) as st:
        assert st.schema_revision() == head()
        with st.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, SQLModel.metadata) == []
            command.check(alembic_config(conn))  # what `migrate check` runs: no diff, no raise
    with Store.open(store_url) as st:  # reopening is a no-op
        assert st.schema_revision() == head()


def test_store_from_before_alembic_is_upgraded_in_place(store_url: str, engine: Engine) -> None:
    with Store.open(store_url):
        pass
    fresh = schema_of(engine)
    drop_everything(engine)

    create_legacy_store(engine)
    kept = tuple(t for t in LEGACY_TABLES if t != "schema_version")
    before = row_counts(engine, kept)
    assert set(before.values()) == {1}

    with Store.open(store_url) as st:
        assert st.schema_revision() == head()
        assert row_counts(engine, kept) == before
        assert schema_of(engine) == fresh
        # The rows read back exactly through today's models.
        (d,) = st.decisions_for(str(2**255))
        assert d.id is not None
        assert d.requirement == 2**200 + 1 and d.equity == BIG
        assert d.loss_matrix == {"ETH": [0, BIG]} and d.witness == {"ETH": 3}
        assert d.created_at == MOMENT and d.backoff_until == 105
        assert (d.outcome, d.outcome_detail) == (DecisionOutcome.SENT, None)
        tx = st.transaction_for_decision(d.id)
        assert tx is not None and tx.status == TxStatus.FINAL and tx.bounty == 3 * WAD
        assert tx.id is not None
        assert [a.max_fee_per_gas for a in st.attempts(tx.id)] == [2**66]
        assert st.next_nonce(SENDER) == 1
        cursor = st.cursor("clearing")
        assert cursor is not None and cursor.updated_at == MOMENT
        assert st.latest_block() is not None
        # The sequences carried on: new rows get fresh ids, the unique action key still holds.
        d2 = st.add_decision(Decision(**d.model_dump(exclude={"id", "action_key"})))
        assert d2.id is not None and d2.id > d.id
        assert st.add_action_decision(Decision(**d.model_dump(exclude={"id"}))) is None
        tx2 = st.insert_transaction(
            Transaction(**tx.model_dump(exclude={"id", "decision_id"}), decision_id=d2.id)
        )
        assert tx2.nonce == 1 and tx2.id is not None and tx2.id > tx.id


def test_store_migrated_by_the_previous_release_is_upgraded_too(
    store_url: str, engine: Engine
) -> None:
    """A store that release created at version 1 and migrated to 4 (columns appended by ALTER
    TABLE) is adopted the same way. Its schema equals a fresh one but for SQLite's declared
    width of ``decision.account``, which SQLite never enforces (that release widened it on
    PostgreSQL only)."""
    with Store.open(store_url):
        pass
    fresh = schema_of(engine)
    drop_everything(engine)

    create_legacy_store(engine, migrated_from_v1=True)
    with Store.open(store_url) as st:
        assert st.schema_revision() == head()
        upgraded = schema_of(engine)
        if engine.dialect.name == "sqlite":
            columns = upgraded["decision"]["columns"]
            i = columns.index(("account", "VARCHAR(42)", False, None))
            columns[i] = ("account", "VARCHAR(80)", False, None)
        assert upgraded == fresh
        (d,) = st.decisions_for(str(2**255))  # 78 digits: fits wherever the width is enforced
        assert d.requirement == 2**200 + 1 and d.action_key == "liquidate:1:1"
        assert st.add_action_decision(Decision(**d.model_dump(exclude={"id"}))) is None
        tx = st.transaction_for_decision(d.id or 0)
        assert tx is not None and tx.bounty == 3 * WAD


def test_downgrade_to_the_baseline_gives_the_legacy_schema_back(
    store_url: str, engine: Engine
) -> None:
    """The baseline revision is exactly the legacy schema: downgrading to it yields the tables
    that release created (with ``schema_version`` at the legacy version), and upgrading again
    keeps the rows."""
    create_legacy_store(engine)
    legacy = schema_of(engine)
    Store.open(store_url).close()
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), BASELINE)
    assert schema_of(engine) == legacy
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version FROM schema_version")).scalar_one()
    assert version == LEGACY_SCHEMA_VERSION
    with Store.open(store_url) as st:
        assert st.schema_revision() == head()
        assert len(st.decisions_for(str(2**255))) == 1


#: Outcome texts as the keeper wrote them before revision 0003 (kind and detail in one text),
#: and the kind and detail the revision splits each into.
OLD_OUTCOMES: list[tuple[str | None, str | None, str | None]] = [
    ("sent", "sent", None),
    ("dry_run", "dry_run", None),
    ("backoff: skipped", "backoff", None),
    ("duplicate: liquidate:7:1 already sent", "duplicate", "liquidate:7:1 already sent"),
    ("in_flight: transaction 3 has no receipt yet", "in_flight",
     "transaction 3 has no receipt yet"),
    ("simulation_reverted: StaleAccountNonce(7, 1, 2)", "simulation_reverted",
     "StaleAccountNonce(7, 1, 2)"),
    ("unprofitable: profit -5 < min_profit 0", "unprofitable", "profit -5 < min_profit 0"),
    ("send_failed: SendError: nonce too low: 3", "send_failed", "SendError: nonce too low: 3"),
    ("abandoned: no transaction was stored (was: sent)", "abandoned",
     "no transaction was stored (was: sent)"),
    ("sent; the flag was cleared since: key released", "flag_cleared", "was: sent"),
    ("reverted: NotLiquidatable()", "reverted", "NotLiquidatable()"),
    ("reverted: no reason", "reverted", "no reason"),
    # Assessment notes on records without action: a text no kind starts.
    ("loan: no live position and equity >= 0", "no_action",
     "loan: no live position and equity >= 0"),
    ("StalePrice(updated_at=1, now=99, max_age=60)", "no_action",
     "StalePrice(updated_at=1, now=99, max_age=60)"),
    (None, None, None),
]  # fmt: skip


def _insert_old_decisions(conn: Connection, account: str) -> None:
    """Decision rows at revision 0002 (one text column ``outcome``), one per ``OLD_OUTCOMES``."""
    for i, (outcome, _, _) in enumerate(OLD_OUTCOMES):
        conn.execute(
            text(
                "INSERT INTO decision (created_at, block_number, block_hash, account,"
                " inputs_digest, loss_matrix, requirement, initial_margin, equity, state,"
                " action, outcome) VALUES (:t, :b, :h, :a, :h, '[]', '0', '0', '0',"
                " 'liquidatable', 'liquidate', :o)"
            ),
            {"t": _moment(conn), "b": 100 + i, "h": h(100 + i), "a": account, "o": outcome},
        )


def test_outcome_texts_are_split_into_kind_and_detail(store_url: str, engine: Engine) -> None:
    """Revision 0003 splits every stored outcome text into a ``DecisionOutcome`` and its
    detail, read back through the models; downgrading joins them into the same texts."""
    account = str(2**255 + 1)
    Store.open(store_url).close()
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
        _insert_old_decisions(conn, account)
    with Store.open(store_url) as st:
        assert st.schema_revision() == head()
        rows = sorted(st.decisions_for(account), key=lambda d: d.block_number)
    assert [(d.outcome, d.outcome_detail) for d in rows] == [(k, x) for _, k, x in OLD_OUTCOMES]
    kinds = {d.outcome for d in rows if d.outcome is not None}
    assert kinds == set(DecisionOutcome)  # every kind the keeper writes has an old text here
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
        texts = conn.execute(
            text("SELECT outcome FROM decision WHERE account = :a ORDER BY block_number"),
            {"a": account},
        ).scalars()
        assert list(texts) == [old for old, _, _ in OLD_OUTCOMES]


def test_older_legacy_store_is_refused(store_url: str, engine: Engine) -> None:
    create_legacy_store(engine, version=LEGACY_SCHEMA_VERSION - 1)
    with pytest.raises(SchemaVersionMismatch, match="legacy schema version 3") as info:
        Store.open(store_url)
    assert info.value.expected == head()
    assert row_counts(engine, ("decision",)) == {"decision": 1}  # nothing touched


def test_unversioned_database_is_refused(store_url: str, engine: Engine) -> None:
    Store.open(store_url).close()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    with pytest.raises(SchemaVersionMismatch, match="unversioned"):
        Store.open(store_url)


def test_newer_keepers_database_is_refused(store_url: str, engine: Engine) -> None:
    Store.open(store_url).close()
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaVersionMismatch, match="'9999'") as info:
        Store.open(store_url)
    assert info.value.found == "revision '9999'"


def run_migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keeper.store.migrate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_operator_command_upgrades_and_reports(store_url: str, engine: Engine) -> None:
    create_legacy_store(engine)
    done = run_migrate("--url", store_url, "current")
    assert done.returncode == 0 and "before Alembic" in done.stdout
    done = run_migrate("--url", store_url, "upgrade")
    assert done.returncode == 0, done.stderr
    assert f"at revision {head()}" in done.stdout
    assert "Running upgrade 0001 -> 0002" in done.stderr
    done = run_migrate("--url", store_url, "current")
    assert done.returncode == 0 and done.stdout.strip() == head()
    done = run_migrate("--url", store_url, "check")
    assert done.returncode == 0, done.stderr
    assert row_counts(engine, ("decision", "tx")) == {"decision": 1, "tx": 1}
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    done = run_migrate("--url", store_url, "upgrade")
    assert done.returncode == 1 and "'9999'" in done.stderr


def test_operator_command_history_and_offline_sql() -> None:
    done = run_migrate("history")
    assert done.returncode == 0 and BASELINE in done.stdout and head() in done.stdout
    done = run_migrate("--url", "postgresql://keeper@db.invalid/keeper", "upgrade", "--sql")
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE decision" in done.stdout and "DROP TABLE schema_version" in done.stdout


BROKEN_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("decision", sa.Column("note", sa.Text()))
    raise RuntimeError("migration bug")


def downgrade():
    pass
"""


def test_failed_revision_leaves_the_store_at_its_revision(
    store_url: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revision that fails: the store stays at the revision it had; on PostgreSQL (DDL is
    transactional) the failed step's changes are rolled back too."""
    Store.open(store_url).close()
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts)
    (scripts / "versions" / "9001_broken.py").write_text(BROKEN_REVISION.format(head=head()))
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", scripts)
    with pytest.raises(RedactedError, match="migration bug"):
        Store.open(store_url)
    monkeypatch.undo()
    with Store.open(store_url) as st:
        assert st.schema_revision() == head()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("decision")}
        assert "note" not in columns


def test_revision_command_writes_the_next_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``revision -m`` writes the next numbered revision from a change of the models, with
    plain SQLAlchemy column types, and ``Store.open`` then upgrades to it."""
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts)
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", scripts)
    previous = head()
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    Store.open(url).close()
    probe = Table(  # a model change: a new table with the store's own column types
        "probe",
        SQLModel.metadata,
        Column("id", BigInt(), primary_key=True),
        Column("at", UTCDateTime(), nullable=False),
        Column("note", ScrubbedText()),
    )
    try:
        assert migrate.main(["--url", url, "revision", "-m", "add probe"]) == 0
        (written,) = (scripts / "versions").glob(f"{int(previous) + 1:04d}_*.py")
        assert str(written) in capsys.readouterr().out
        source = written.read_text()
        assert f"down_revision: str | None = '{previous}'" in source
        assert "keeper.store" not in source and "sa.String(length=80)" in source
        with Store.open(url) as st:
            assert st.schema_revision() == head() == f"{int(previous) + 1:04d}"
            with st.engine.connect() as conn:
                command.check(alembic_config(conn))
                assert "probe" in inspect(conn).get_table_names()
    finally:
        SQLModel.metadata.remove(probe)
