"""Alembic migration scripts of the keeper's store (``env.py``, ``versions/``), shipped inside the
package so that an installed keeper can migrate its database: see ``keeper.store.migrate``."""
