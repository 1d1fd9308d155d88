"""Drop ``schema_version``: ``alembic_version`` records the schema's revision now.

A keeper release from before Alembic finds no ``schema_version`` in an upgraded store and
refuses it as unversioned, instead of running on tables it does not know. Downgrading to
``0001`` puts the table back at version 4, which such a release opens again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.drop_table("schema_version")


def downgrade() -> None:
    table = op.create_table(
        "schema_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    now = datetime.now(UTC)
    # SQLite keeps UTC timestamps without an offset (keeper.store.types.UTCDateTime).
    applied_at = now.replace(tzinfo=None) if op.get_context().dialect.name == "sqlite" else now
    op.bulk_insert(table, [{"id": 1, "version": 4, "applied_at": applied_at}])
