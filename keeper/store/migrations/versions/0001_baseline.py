"""Baseline: the store's schema when Alembic took over its migrations.

A store created before then (``schema_version`` at version 4) has exactly these tables and is
stamped with this revision instead of running it (``keeper.store.migrate``). The column types
are written out (not imported from ``keeper.store.types``), so this revision never changes
when the models do: the ``BigInt`` columns are decimal strings, ``ExactJSON`` and
``ScrubbedText`` are text, ``UTCDateTime`` is a timezone-aware timestamp.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

#: ``keeper.store.types.BigInt``: an integer of up to 78 digits and its sign, as text.
DECIMAL_TEXT = sa.String(80)

TABLES = (
    "tx_attempt",
    "tx",
    "schema_version",
    "nonce_state",
    "indexed_block",
    "index_cursor",
    "event_log",
    "event_account",
    "decision",
    "account",
)


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("id", DECIMAL_TEXT, nullable=False),
        sa.Column("owner", sa.String(42), nullable=False),
        sa.Column("sub", DECIMAL_TEXT, nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("first_block", sa.BigInteger(), nullable=False),
        sa.Column("last_block", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_account_last_block", "account", ["last_block"], unique=False)
    op.create_index("ix_account_owner", "account", ["owner"], unique=False)
    op.create_table(
        "decision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("account", sa.String(80), nullable=False),
        sa.Column("inputs_digest", sa.String(66), nullable=False),
        sa.Column("loss_matrix", sa.Text(), nullable=False),
        sa.Column("requirement", DECIMAL_TEXT, nullable=False),
        sa.Column("initial_margin", DECIMAL_TEXT, nullable=False),
        sa.Column("equity", DECIMAL_TEXT, nullable=False),
        sa.Column("witness", sa.Text(), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("fraction", DECIMAL_TEXT, nullable=True),
        sa.Column("expected_bounty", DECIMAL_TEXT, nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("action_key", sa.String(160), nullable=True),
        sa.Column("account_nonce", sa.BigInteger(), nullable=True),
        sa.Column("instrument", sa.BigInteger(), nullable=True),
        sa.Column("lenient", sa.Boolean(), nullable=True),
        sa.Column("backoff_until", sa.BigInteger(), nullable=True),
        sa.Column("expected_gas_cost", DECIMAL_TEXT, nullable=True),
        sa.Column("change_digest", sa.String(66), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_decision_account", "decision", ["account"], unique=False)
    op.create_index("ix_decision_block_number", "decision", ["block_number"], unique=False)
    op.create_index("uq_decision_action_key", "decision", ["action_key"], unique=True)
    op.create_table(
        "event_account",
        sa.Column("block_number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("log_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("account", DECIMAL_TEXT, nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("block_number", "log_index", "account"),
    )
    op.create_index("ix_event_account_account", "event_account", ["account"], unique=False)
    op.create_table(
        "event_log",
        sa.Column("block_number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("log_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("accounts", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("block_number", "log_index"),
    )
    op.create_index("ix_event_log_name_block", "event_log", ["name", "block_number"], unique=False)
    op.create_table(
        "index_cursor",
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream"),
    )
    op.create_table(
        "indexed_block",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(66), nullable=False),
        sa.Column("parent_hash", sa.String(66), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("number"),
    )
    op.create_table(
        "nonce_state",
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("next_nonce", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sender"),
    )
    op.create_table(
        "schema_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "tx",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("decision_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("to", sa.String(42), nullable=True),
        sa.Column("value", DECIMAL_TEXT, nullable=False),
        sa.Column("data", sa.String(), nullable=False),
        sa.Column("gas_limit", sa.BigInteger(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("mined_hash", sa.String(66), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.String(66), nullable=True),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("effective_gas_price", DECIMAL_TEXT, nullable=True),
        sa.Column("revert_reason", sa.Text(), nullable=True),
        sa.Column("bounty", DECIMAL_TEXT, nullable=True),
        sa.ForeignKeyConstraint(["decision_id"], ["decision.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("decision_id", name="uq_tx_decision"),
    )
    op.create_index("ix_tx_final", "tx", ["final"], unique=False)
    op.create_index("ix_tx_nonce", "tx", ["nonce"], unique=False)
    op.create_index("ix_tx_sender", "tx", ["sender"], unique=False)
    op.create_index("ix_tx_status", "tx", ["status"], unique=False)
    op.create_table(
        "tx_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tx_id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(66), nullable=False),
        sa.Column("raw", sa.String(), nullable=False),
        sa.Column("max_fee_per_gas", DECIMAL_TEXT, nullable=False),
        sa.Column("max_priority_fee_per_gas", DECIMAL_TEXT, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["tx_id"], ["tx.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hash"),
    )
    op.create_index("ix_tx_attempt_tx_id", "tx_attempt", ["tx_id"], unique=False)


def downgrade() -> None:
    # Dependents first; dropping a table drops its indexes.
    for table in TABLES:
        op.drop_table(table)
