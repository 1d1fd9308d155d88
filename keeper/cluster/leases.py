"""The lease rows of cluster mode (tables ``cluster_lease`` and ``cluster_keeper``), in SQL.

Why lease rows and not advisory locks: an advisory lock lives and dies with one database
session, so a keeper that loses its connection loses the lock at once without knowing it, and
the lock carries no fencing token and no expiry to act "before" of. A row carries all three --
owner, a token that grows at every change of owner, and an expiry -- and ``keeper status``
can read it. Every time is the database's clock (``clock_timestamp()``, microseconds): keepers
on machines whose clocks disagree still agree on who holds what.

Taking free or expired leases uses ``SELECT ... FOR UPDATE SKIP LOCKED``: two keepers taking
shards at the same moment each get different rows without waiting for each other. Renewing
is one ``UPDATE ... WHERE owner = me``: it answers which leases this keeper still holds.
Recording a decision locks its lease row ``FOR SHARE`` (``fence_check``): a keeper taking
that lease over waits until the decision is committed, and after that its own decisions meet
the action key already taken in the unique index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, bindparam, text

from keeper.cluster.shards import LEADER
from keeper.store.db import StoreError

#: The database's clock, in microseconds since the epoch.
NOW_US = "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
#: No statement of the heartbeat may wait longer than this (a lock, a dying server): a
#: heartbeat that hangs would keep the keeper believing it holds leases it can no longer renew.
STATEMENT_TIMEOUT_MS = 1500


class ShardCountMismatch(StoreError):
    """The cluster's database was set up with another number of shards than configured."""

    def __init__(self, found: int, configured: int) -> None:
        super().__init__(
            f"the cluster's database has {found} shards, this keeper is configured with "
            f"{configured} (cluster.shards must be the same on every keeper)"
        )
        self.found = found
        self.configured = configured


@dataclass(frozen=True)
class Lease:
    shard: int
    token: int
    expires_us: int


@dataclass(frozen=True)
class LeaseRow:
    """A lease as ``keeper status`` shows it."""

    shard: int
    owner: str | None
    token: int
    expires_us: int
    acquired_us: int


@dataclass(frozen=True)
class KeeperRow:
    keeper_id: str
    address: str | None
    started_us: int
    heartbeat_us: int
    head: int | None
    draining: bool


@dataclass(frozen=True)
class Renewal:
    """One heartbeat's answer: the database's time, the leases held after it, whether this
    keeper is asked to drain, and how many keepers are live (heartbeat within the ttl)."""

    now_us: int
    leases: dict[int, Lease]
    draining: bool
    live: int


def _timeout(conn: Connection) -> None:
    conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))


def setup(engine: Engine, shards: int) -> None:
    """The lease rows (the shards and the leader's), once per database; raises
    ``ShardCountMismatch`` when they exist with another shard count."""
    with engine.begin() as conn:
        found = conn.execute(text("SELECT count(*) FROM cluster_lease WHERE shard >= 0")).scalar()
        if found and int(found) != shards:
            raise ShardCountMismatch(int(found), shards)
        conn.execute(
            text(
                "INSERT INTO cluster_lease (shard, owner, token, expires_us, acquired_us) "
                "SELECT g, NULL, 0, 0, 0 "
                "FROM generate_series(CAST(:low AS integer), CAST(:high AS integer)) AS g "
                "ON CONFLICT (shard) DO NOTHING"
            ),
            {"low": LEADER, "high": shards - 1},
        )
        found = conn.execute(text("SELECT count(*) FROM cluster_lease WHERE shard >= 0")).scalar()
    if int(found or 0) != shards:
        raise ShardCountMismatch(int(found or 0), shards)


def heartbeat(
    engine: Engine,
    keeper_id: str,
    address: str | None,
    head: int | None,
    *,
    ttl_us: int,
    fresh: bool = False,
) -> Renewal:
    """Record this keeper's heartbeat and renew every lease it owns, in one transaction.
    ``fresh`` (the first heartbeat of a process): clears a drain request left by an earlier
    run of the same keeper id."""
    with engine.begin() as conn:
        _timeout(conn)
        now_us = int(conn.execute(text(f"SELECT {NOW_US}")).scalar_one())
        draining = conn.execute(
            text(
                "INSERT INTO cluster_keeper "
                "(keeper_id, address, started_us, heartbeat_us, head, draining) "
                "VALUES (:k, :a, :now, :now, :head, false) "
                "ON CONFLICT (keeper_id) DO UPDATE SET heartbeat_us = :now, address = :a, "
                "head = coalesce(:head, cluster_keeper.head), "
                "started_us = CASE WHEN :fresh THEN :now ELSE cluster_keeper.started_us END, "
                "draining = CASE WHEN :fresh THEN false ELSE cluster_keeper.draining END "
                "RETURNING draining"
            ),
            {"k": keeper_id, "a": address, "now": now_us, "head": head, "fresh": fresh},
        ).scalar_one()
        rows = conn.execute(
            text(
                # A lease that lapsed (nobody took it: the owner is still this keeper) is
                # taken anew: a new token, so nothing decided before the lapse is admitted.
                "UPDATE cluster_lease SET expires_us = :now + :ttl, "
                "token = CASE WHEN expires_us < :now THEN token + 1 ELSE token END "
                "WHERE owner = :k RETURNING shard, token, expires_us"
            ),
            {"k": keeper_id, "now": now_us, "ttl": ttl_us},
        ).all()
        live = conn.execute(
            text(
                "SELECT count(*) FROM cluster_keeper "
                "WHERE heartbeat_us > :now - :ttl AND NOT draining"
            ),
            {"now": now_us, "ttl": ttl_us},
        ).scalar_one()
    leases = {int(r.shard): Lease(int(r.shard), int(r.token), int(r.expires_us)) for r in rows}
    return Renewal(now_us, leases, bool(draining), int(live))


def acquire(
    engine: Engine, keeper_id: str, want: int, *, ttl_us: int, leader: bool
) -> dict[int, Lease]:
    """Take up to ``want`` shards that are free or expired (and the leader lease when
    ``leader`` and it is free or expired): each taken row's token grows by one."""
    shard_filter = "shard >= 0" if not leader else "shard = -1"
    limit = 1 if leader else want
    if limit <= 0:
        return {}
    with engine.begin() as conn:
        _timeout(conn)
        rows = conn.execute(
            text(
                "WITH free AS (SELECT shard FROM cluster_lease "
                f"WHERE {shard_filter} AND (owner IS NULL OR expires_us < {NOW_US}) "
                "ORDER BY shard LIMIT :n FOR UPDATE SKIP LOCKED) "
                "UPDATE cluster_lease AS l SET owner = :k, token = l.token + 1, "
                f"expires_us = {NOW_US} + :ttl, acquired_us = {NOW_US} "
                "FROM free WHERE l.shard = free.shard "
                "RETURNING l.shard, l.token, l.expires_us"
            ),
            {"k": keeper_id, "n": limit, "ttl": ttl_us},
        ).all()
    return {int(r.shard): Lease(int(r.shard), int(r.token), int(r.expires_us)) for r in rows}


def release(engine: Engine, keeper_id: str, shards: Iterable[int]) -> None:
    """Give leases back at once (rebalance, drain, clean stop): free for the next taker."""
    shards = sorted(shards)
    if not shards:
        return
    with engine.begin() as conn:
        _timeout(conn)
        conn.execute(
            text(
                "UPDATE cluster_lease SET owner = NULL, expires_us = 0 "
                "WHERE owner = :k AND shard IN :s"
            ).bindparams(bindparam("s", expanding=True)),
            {"k": keeper_id, "s": shards},
        )


def fence_check(
    conn: Connection, keeper_id: str, tokens: dict[int, int], margin_us: int
) -> set[int]:
    """Of the leases in ``tokens`` (shard -> the token acted under), those this keeper still
    holds with that token and at least ``margin_us`` before expiry, on the database's clock.
    Each such row is locked ``FOR SHARE`` until the caller's transaction ends: a takeover
    waits for the decision being recorded."""
    if not tokens:
        return set()
    rows = conn.execute(
        text(
            "SELECT shard, token FROM cluster_lease WHERE shard IN :s AND owner = :k "
            f"AND expires_us > {NOW_US} + :m FOR SHARE"
        ).bindparams(bindparam("s", expanding=True)),
        {"s": sorted(tokens), "k": keeper_id, "m": margin_us},
    ).all()
    return {int(r.shard) for r in rows if tokens.get(int(r.shard)) == int(r.token)}


def request_drain(engine: Engine, keeper_id: str) -> bool:
    """Ask ``keeper_id`` to give its leases back (it does at its next heartbeat)."""
    with engine.begin() as conn:
        n = conn.execute(
            text("UPDATE cluster_keeper SET draining = true WHERE keeper_id = :k"),
            {"k": keeper_id},
        ).rowcount
    return bool(n)


def leases(engine: Engine) -> tuple[int, list[LeaseRow]]:
    """The database's time and every lease row, by shard."""
    with engine.begin() as conn:
        now_us = int(conn.execute(text(f"SELECT {NOW_US}")).scalar_one())
        rows = conn.execute(
            text(
                "SELECT shard, owner, token, expires_us, acquired_us FROM cluster_lease "
                "ORDER BY shard"
            )
        ).all()
    return now_us, [LeaseRow(*(r[0], r[1], int(r[2]), int(r[3]), int(r[4]))) for r in rows]


def keepers(engine: Engine) -> list[KeeperRow]:
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT keeper_id, address, started_us, heartbeat_us, head, draining "
                "FROM cluster_keeper ORDER BY keeper_id"
            )
        ).all()
    return [
        KeeperRow(r[0], r[1], int(r[2]), int(r[3]), None if r[4] is None else int(r[4]), bool(r[5]))
        for r in rows
    ]


def live_addresses(conn: Connection, ttl_us: int) -> set[str]:
    """Signer addresses of keepers whose heartbeat is within the ttl."""
    rows = conn.execute(
        text(
            f"SELECT address FROM cluster_keeper WHERE heartbeat_us > {NOW_US} - :ttl "
            "AND address IS NOT NULL"
        ),
        {"ttl": ttl_us},
    ).all()
    return {str(r[0]).lower() for r in rows}


def shards_of(rows: Sequence[LeaseRow], owner: str) -> list[int]:
    return [r.shard for r in rows if r.owner == owner and r.shard >= 0]
