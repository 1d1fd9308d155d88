"""The keeper's store: SQLModel tables on SQLite (default, WAL) or PostgreSQL (by URL)."""

from keeper.store.db import (
    MIGRATIONS,
    DuplicateSubmission,
    NonceNotInitialised,
    SchemaVersionMismatch,
    Store,
    StoreError,
    normalise_url,
)
from keeper.store.models import (
    SCHEMA_VERSION,
    Account,
    AttemptStatus,
    Decision,
    EventAccount,
    EventLog,
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
    "Account",
    "AttemptStatus",
    "Decision",
    "DuplicateSubmission",
    "EventAccount",
    "EventLog",
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
    "normalise_url",
]
