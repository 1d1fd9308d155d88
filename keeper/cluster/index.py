"""The event index is shared by the keepers of a cluster (one set of tables): they take
turns writing it, and each learns from it what another keeper indexed.

- ``index_lock``: a PostgreSQL advisory lock held while one keeper syncs the index, so two
  keepers never insert the same logs at once. The second one then finds the index at the head
  already and indexes nothing itself;
- ``index_changes``: what the index holds for blocks a keeper did not index itself -- market
  events (every account re-margined), listed and settled instruments (the settlement job),
  and whether the last block it processed is still the indexed one (a reorg that another
  keeper rolled back). The accounts touched come from ``Indexer.accounts_named_after``, as
  for a single keeper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine, text
from sqlmodel import col, select

from keeper.indexer.decode import MARKET_EVENTS
from keeper.store import EventLog, IndexedBlock, Store

#: The index writer's pg_advisory_lock key: per schema (a lock is per database, and
#: clusters in two schemas of one database must not wait for each other).
_LOCK_KEY = "hashtext('keeper-index:' || current_schema())"


@contextmanager
def index_lock(engine: Engine) -> Iterator[None]:
    """Hold the index writer's lock for the block (on its own connection: the sync writes
    through the store's pool). A lost connection frees the lock: the worst that follows is
    one keeper's insert failing on the other's rows and its job running again."""
    with engine.connect() as conn:
        conn.execute(text(f"SELECT pg_advisory_lock({_LOCK_KEY})"))
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text(f"SELECT pg_advisory_unlock({_LOCK_KEY})"))
            conn.commit()


@dataclass
class IndexChanges:
    market_changed: bool = False
    listed: set[int] = field(default_factory=set)
    settled: set[int] = field(default_factory=set)
    reorged: bool = False


def index_changes(store: Store, after: int, to: int, last_hash: str | None = None) -> IndexChanges:
    """What the index holds for blocks ``after`` < b <= ``to``; ``reorged`` when block
    ``after`` is indexed with another hash than ``last_hash``."""
    out = IndexChanges()
    names = {*MARKET_EVENTS, "InstrumentListed", "InstrumentSettled"}
    with store.session() as s:
        rows = s.exec(
            select(EventLog.name, EventLog.args)
            .where(col(EventLog.block_number) > after)
            .where(col(EventLog.block_number) <= to)
            .where(col(EventLog.name).in_(sorted(names)))
        ).all()
        if last_hash is not None:
            block = s.get(IndexedBlock, after)
            out.reorged = block is not None and block.hash != last_hash
    for name, args in rows:
        if name in MARKET_EVENTS:
            out.market_changed = True
        elif name == "InstrumentListed":
            out.listed.add(int(args["instrument"]))
        elif name == "InstrumentSettled":
            out.settled.add(int(args["instrument"]))
    return out
