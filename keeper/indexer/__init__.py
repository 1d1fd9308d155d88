"""The keeper's event indexer (ClearingHouse logs into the store). See docs/indexer.md."""

from keeper.indexer.core import (
    STREAM,
    AccountMismatch,
    ChainMoved,
    ConsistencyReport,
    Indexer,
    IndexerError,
    LogRangeRefused,
    ReorgTooDeep,
    SyncResult,
    is_range_refusal,
)

__all__ = [
    "STREAM",
    "AccountMismatch",
    "ChainMoved",
    "ConsistencyReport",
    "Indexer",
    "IndexerError",
    "LogRangeRefused",
    "ReorgTooDeep",
    "SyncResult",
    "is_range_refusal",
]
