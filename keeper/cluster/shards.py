"""Which shard an account, a decision or a target belongs to.

Accounts are hashed (blake2b of the account id's 32 bytes, not the id modulo the count: ids are
``owner << 96 | sub``, and one owner's sub-accounts would otherwise land on neighbouring
shards in a pattern an owner chooses). Instrument-level targets (``instrument:<id>``: an
instrument's settlement) belong to the leader lease (``LEADER``); every action on an account,
its settlement after an expiry included, to the account's shard."""

from __future__ import annotations

from hashlib import blake2b

#: The leader lease's row in ``cluster_lease``: settlement, consistency, recalibration, and
#: the follow-up of transactions whose keeper died.
LEADER = -1
#: Actions of the instrument-level jobs (``KeeperCore.settle_expired``): fenced by the
#: leader lease.
LEADER_ACTIONS = frozenset({"settle_instrument"})


def shard_of(account: int, shards: int) -> int:
    """The shard of ``account`` among ``shards`` (stable across processes and releases)."""
    digest = blake2b(account.to_bytes(32, "big"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_of_target(target: str, action: str, shards: int) -> int:
    """The lease a decision about ``target`` (``decision.account``) with ``action`` needs."""
    if action in LEADER_ACTIONS or not target.isdigit():
        return LEADER
    return shard_of(int(target), shards)
