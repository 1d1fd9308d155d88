"""Cluster mode: the lease rows (one per shard of the book, and the leader's, shard -1) and
the keepers' heartbeats. Empty until a keeper starts with ``[cluster] enabled``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_lease",
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.Column("acquired_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("shard"),
    )
    op.create_table(
        "cluster_keeper",
        sa.Column("keeper_id", sa.String(64), nullable=False),
        sa.Column("address", sa.String(42), nullable=True),
        sa.Column("started_us", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_us", sa.BigInteger(), nullable=False),
        sa.Column("head", sa.BigInteger(), nullable=True),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("keeper_id"),
    )


def downgrade() -> None:
    op.drop_table("cluster_keeper")
    op.drop_table("cluster_lease")
