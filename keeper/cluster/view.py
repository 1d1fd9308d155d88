"""The cluster as ``keeper status`` shows it, and ``keeper cluster drain``: read from the
lease rows and the keepers' heartbeats (keeper.cluster.leases), nothing from the keepers
themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

from keeper.cluster import leases as lease_sql
from keeper.cluster.shards import LEADER
from keeper.store import Store


@dataclass
class KeeperLine:
    keeper_id: str
    address: str | None
    live: bool
    draining: bool
    leader: bool
    shards: int
    heartbeat_age_seconds: float
    last_block: int | None
    lag_blocks: int | None


@dataclass
class ShardLine:
    shard: int  # -1: the leader lease
    owner: str | None
    token: int
    lease_age_seconds: float | None  # since it was taken by its owner
    expires_in_seconds: float | None  # negative: expired
    lag_blocks: int | None  # head - its owner's last processed block


@dataclass
class ClusterStatus:
    keepers: list[KeeperLine] = field(default_factory=list)
    shards: list[ShardLine] = field(default_factory=list)
    unowned: int = 0  # shards nobody holds a live lease on


def collect_cluster(store: Store, head: int | None, ttl_seconds: float) -> ClusterStatus:
    now_us, rows = lease_sql.leases(store.engine)
    keepers = lease_sql.keepers(store.engine)
    ttl_us = round(ttl_seconds * 1_000_000)
    heads = {k.keeper_id: k.head for k in keepers}
    out = ClusterStatus()
    for r in rows:
        held = r.owner is not None and r.expires_us > now_us
        if r.shard >= 0 and not held:
            out.unowned += 1
        owner_head = heads.get(r.owner) if r.owner else None
        out.shards.append(
            ShardLine(
                r.shard,
                r.owner if held else None,
                r.token,
                (now_us - r.acquired_us) / 1e6 if held else None,
                (r.expires_us - now_us) / 1e6 if r.owner is not None else None,
                None if head is None or owner_head is None or not held else head - owner_head,
            )
        )
    for k in keepers:
        mine = [r for r in rows if r.owner == k.keeper_id and r.expires_us > now_us]
        out.keepers.append(
            KeeperLine(
                k.keeper_id,
                k.address,
                k.heartbeat_us > now_us - ttl_us,
                k.draining,
                any(r.shard == LEADER for r in mine),
                sum(1 for r in mine if r.shard >= 0),
                (now_us - k.heartbeat_us) / 1e6,
                k.head,
                None if head is None or k.head is None else head - k.head,
            )
        )
    return out


def drain(store: Store, keeper_id: str) -> bool:
    """Ask ``keeper_id`` to give its leases back (at its next heartbeat); False when no such
    keeper ever joined."""
    return lease_sql.request_drain(store.engine, keeper_id)
