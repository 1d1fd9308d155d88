"""The keeper's store: SQLModel tables on SQLite (default, WAL) or PostgreSQL (by URL), with
their schema migrated by Alembic (``keeper.store.migrate``)."""

from keeper.store.db import (
    BatchRefused,
    DuplicateSubmission,
    Fence,
    LeaseLost,
    NonceNotInitialised,
    SchemaVersionMismatch,
    Store,
    StoreError,
    normalise_url,
)
from keeper.store.models import (
    Account,
    AttemptStatus,
    Decision,
    DecisionOutcome,
    EventAccount,
    EventLog,
    IndexCursor,
    IndexedBlock,
    NonceState,
    Route,
    Transaction,
    TxAttempt,
    TxStatus,
)

__all__ = [
    "Account",
    "AttemptStatus",
    "BatchRefused",
    "Decision",
    "DecisionOutcome",
    "DuplicateSubmission",
    "EventAccount",
    "EventLog",
    "Fence",
    "IndexCursor",
    "IndexedBlock",
    "LeaseLost",
    "NonceNotInitialised",
    "NonceState",
    "Route",
    "SchemaVersionMismatch",
    "Store",
    "StoreError",
    "Transaction",
    "TxAttempt",
    "TxStatus",
    "normalise_url",
]
