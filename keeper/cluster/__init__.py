"""Cluster mode: several keepers on one PostgreSQL store (docs/cluster.md).

- ``shards``: which shard an account (or a decision's target) belongs to;
- ``leases``: the lease rows in SQL (take, renew, give back, the fence's check);
- ``member``: one keeper's heartbeat thread, its view of what it may act on, and the store's
  fence;
- ``orphans``: the leader's follow-up of what a dead keeper left in flight;
- ``index``: the shared event index (one writer at a time; what the others learn from it).
"""

from keeper.cluster.member import ClusterMember, default_keeper_id
from keeper.cluster.shards import LEADER, shard_of, shard_of_target

__all__ = ["LEADER", "ClusterMember", "default_keeper_id", "shard_of", "shard_of_target"]
