"""Each attempt records its broadcast route (public node, private relay, or the relay then the
public node) and, for a relayed one, the block at which it falls back to the public node.

Attempts stored before this revision went to the public node: they read ``public``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop a column in place (downgrade), so both directions use it.
    with op.batch_alter_table("tx_attempt") as batch:
        batch.add_column(sa.Column("route", sa.String(16), nullable=False, server_default="public"))
        batch.add_column(sa.Column("relay_until_block", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tx_attempt") as batch:
        batch.drop_column("relay_until_block")
        batch.drop_column("route")
