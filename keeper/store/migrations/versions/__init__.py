"""One Alembic revision per schema change, oldest first (Alembic skips this file)."""
