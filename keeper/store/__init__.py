"""The keeper's store: SQLModel tables on SQLite (default, WAL) or PostgreSQL (by URL)."""

from keeper.store.db import (
    MIGRATIONS,
    DuplicateSubmission,
    NonceNotInitialised,
    SchemaVersionMismatch,
    Store,
    StoreError,
    migrate_v1_decision_actions,
    normalise_url,
)
from keeper.store.models import (
    SCHEMA_VERSION,
    AttemptStatus,
    Decision,
    IndexCursor,
    IndexedBlock,
    NonceState,
    SchemaVersion,
    Transaction,
    TxAttempt,
    TxStatus,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AttemptStatus",
    "Decision",
    "DuplicateSubmission",
    "IndexCursor",
    "IndexedBlock",
    "NonceNotInitialised",
    "NonceState",
    "SchemaVersion",
    "SchemaVersionMismatch",
    "Store",
    "StoreError",
    "Transaction",
    "TxAttempt",
    "TxStatus",
    "migrate_v1_decision_actions",
    "normalise_url",
]
