"""Alembic environment of the keeper's store.

``keeper.store.migrate`` passes an open connection (``config.attributes["connection"]``): the
store's own engine, with its SQLite pragmas, inside the caller's transaction. Without one (the
``alembic`` library driven some other way) it connects to ``config.attributes["url"]``. Offline
mode (``--sql``) prints the SQL for a DBA to review instead of running it.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

import keeper.store.models  # noqa: F401  (registers every table on SQLModel.metadata)
from keeper.store.db import make_engine, normalise_url

config = context.config
target_metadata = SQLModel.metadata


def _render_item(kind: str, obj: Any, autogen: AutogenContext) -> str | Literal[False]:
    """A generated revision spells column types as plain SQLAlchemy types (``BigInt`` as
    ``sa.String(length=80)``, ``UTCDateTime`` as ``sa.DateTime(timezone=True)``...): a revision
    never imports the models' types, so it stays valid when they change."""
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        # SQLite alters a table by copying it; Alembic's batch mode does that when needed.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_offline() -> None:
    context.configure(
        url=normalise_url(str(config.attributes["url"])),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(str(config.attributes["url"]))
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
