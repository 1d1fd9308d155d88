"""One keeper's membership of the cluster: the heartbeat thread that renews its leases and
rebalances the shards, the local view of what it may act on, and the store's fence.

**Acting only while the lease is surely held.** A lease expires ``lease_ttl_seconds`` after
its last renewal, on the database's clock. Each heartbeat notes the local monotonic time
*before* it asks the database; every lease it renews or takes then expires no earlier than
that moment plus the ttl, so the keeper acts on it only until that moment + ttl - the safety
margin (``act_until``). A heartbeat that fails (database down, network cut) renews nothing,
and the keeper stops on its own when ``act_until`` passes -- before any other keeper may take
the lease (which needs the database's clock past the expiry). A paused process (SIGSTOP, a
long GC, a VM migration) cannot know it was paused: that case is the fence's.

**The fence.** The store calls ``admit_decisions`` inside the database transaction that
records action decisions: each decision's lease row must still name this keeper with the token
the block was decided under, ``safety_margin_seconds`` before its expiry on the database's
clock, and the row is locked ``FOR SHARE`` until the decision commits. ``admit_transactions``
does the same where a transaction (and its nonce) is stored, and checks that the decision
still holds its action key; ``admit_attempts`` checks that the transaction was not failed by a
keeper that took over (keeper.cluster.orphans) before it is signed. A keeper resumed after its
lease was taken over therefore records nothing and sends nothing for that shard.

**Fair share.** Each heartbeat counts the live keepers (heartbeat within the ttl, not
draining); a keeper holding more than ceil(shards / live) gives the excess back at once, one
holding fewer takes free or expired shards (``FOR UPDATE SKIP LOCKED``). A joining keeper thus
gets its share within about two heartbeats; a dead keeper's shards are taken after its leases
expire (ttl) plus at most one heartbeat. The leader lease goes to whichever keeper finds it
free or expired first.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event
from sqlmodel import Session, col, select

from keeper.cluster import leases as lease_sql
from keeper.cluster.leases import Lease
from keeper.cluster.shards import LEADER, shard_of, shard_of_target
from keeper.config import ClusterConfig
from keeper.secrets import scrub
from keeper.store import Decision, LeaseLost, Transaction, TxStatus

log = logging.getLogger("keeper.cluster")


def default_keeper_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:64]


@dataclass(frozen=True)
class Held:
    """The leases this keeper may act on, and until when (local monotonic seconds)."""

    tokens: dict[int, int]  # shard (or LEADER) -> fencing token
    act_until: float

    def valid(self, now: float | None = None) -> dict[int, int]:
        return dict(self.tokens) if (now or time.monotonic()) < self.act_until else {}


_NOTHING = Held({}, 0.0)


class ClusterMember:
    def __init__(
        self,
        engine: Engine,
        config: ClusterConfig,
        *,
        keeper_id: str | None = None,
        address: str | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.keeper_id = keeper_id or config.keeper_id or default_keeper_id()
        self.address = address.lower() if address else None
        self.shards = config.shards
        self.ttl_us = round(config.lease_ttl_seconds * 1_000_000)
        self.margin_us = round(config.safety_margin_seconds * 1_000_000)
        self._held = _NOTHING
        #: The tokens the block in progress is decided under (``begin_block``).
        self._acting: dict[int, int] | None = None
        #: Grows whenever a lease is gained: the service re-reads the whole book then.
        self.generation = 0
        #: The last block the service processed (heartbeat: lag per shard in the status).
        self.head: int | None = None
        self.live = 0
        self.draining = False
        self.leaseless_since: float | None = time.monotonic()
        self.counts: Counter[str] = Counter()  # renewals ok/failed, acquired, released, fenced
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first = True
        self._lock = threading.Lock()  # one heartbeat at a time (thread, drain, stop)

    # --- life --------------------------------------------------------------------------------

    def start(self) -> ClusterMember:
        """Set up the lease rows, take a first share, start the heartbeat thread."""
        self._limit_idle_transactions()
        lease_sql.setup(self.engine, self.shards)
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="cluster-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _limit_idle_transactions(self) -> None:
        """A process frozen inside a database transaction (SIGSTOP between two statements)
        would keep its row locks -- a lease row locked by its heartbeat or its fence -- and
        the others, who skip locked rows, could never take its leases. PostgreSQL ends such a
        session after ``lease_ttl - safety_margin`` idle in a transaction: the locks are gone
        before the lease expires. Every connection of the store gets the limit (the pool is
        emptied so that none opened before escapes it)."""
        ms = max(100, round((self.ttl_us - self.margin_us) / 1000))

        def limit(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"SET idle_in_transaction_session_timeout = {ms}")
            cur.close()
            dbapi_conn.commit()  # a SET inside a rolled-back transaction would not stay

        event.listen(self.engine, "connect", limit)
        self.engine.dispose()

    def stop(self, *, release: bool = True) -> None:
        """Stop the heartbeat; give every lease back (a clean stop: no one waits the ttl)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if release:
            with self._lock:
                self._release_all("stopping")

    def drain(self) -> None:
        """Give every lease back now and take none until the process restarts."""
        with self._lock:
            self.draining = True
            self._release_all("draining")

    def _loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_seconds):
            self.beat()

    def beat(self) -> None:
        """One heartbeat: renew, rebalance; a failure is counted and logged, and the leases
        simply run out (``act_until``)."""
        with self._lock:
            try:
                self._beat()
                self.counts["renewed"] += 1
            except Exception as exc:
                self.counts["renew_failed"] += 1
                log.warning("cluster heartbeat failed", extra={"error": scrub(str(exc))})
            now = time.monotonic()
            if self._held.valid(now):
                self.leaseless_since = None
            elif self.leaseless_since is None:
                self.leaseless_since = now

    def _beat(self) -> None:
        t0 = time.monotonic()
        r = lease_sql.heartbeat(
            self.engine, self.keeper_id, self.address, self.head,
            ttl_us=self.ttl_us, fresh=self._first,
        )  # fmt: skip
        self._first = False
        self.live = r.live
        held = dict(r.leases)
        if r.draining or self.draining:
            if not self.draining:
                log.info("drain requested: giving every lease back")
            self.draining = True
            self._held = _NOTHING
            lease_sql.release(self.engine, self.keeper_id, held)
            self.counts["released"] += len(held)
            return
        target = math.ceil(self.shards / max(r.live, 1))
        mine = sorted(s for s in held if s >= 0)
        gained: dict[int, Lease] = {}
        if len(mine) > target:
            excess = mine[target:]
            for s in excess:
                del held[s]
            # Stop acting on them before they are given back.
            self._held = self._view(held, t0)
            lease_sql.release(self.engine, self.keeper_id, excess)
            self.counts["released"] += len(excess)
            log.info("shards given back", extra={"shards": excess, "live": r.live})
        elif len(mine) < target:
            gained = lease_sql.acquire(
                self.engine, self.keeper_id, target - len(mine), ttl_us=self.ttl_us, leader=False
            )
        if LEADER not in held:
            gained.update(
                lease_sql.acquire(self.engine, self.keeper_id, 1, ttl_us=self.ttl_us, leader=True)
            )
        held.update(gained)
        # Leases this keeper was not acting on (taken now, or renewed after they lapsed
        # locally: a database outage): their accounts were not followed meanwhile.
        before = self._held.valid(t0)
        fresh = {s: lease for s, lease in held.items() if before.get(s) != lease.token}
        if fresh:
            gained = fresh
            self.generation += 1
            self.counts["acquired"] += len(gained)
            log.info(
                "leases taken",
                extra={"shards": sorted(gained), "tokens": [g.token for g in gained.values()]},
            )
        self._held = self._view(held, t0)

    def _view(self, held: dict[int, Lease], t0: float) -> Held:
        until = t0 + (self.ttl_us - self.margin_us) / 1_000_000
        return Held({s: lease.token for s, lease in held.items()}, until)

    def _release_all(self, why: str) -> None:
        tokens = self._held.tokens
        self._held = _NOTHING
        try:
            held = lease_sql.heartbeat(
                self.engine, self.keeper_id, self.address, self.head, ttl_us=self.ttl_us
            ).leases
            lease_sql.release(self.engine, self.keeper_id, set(held) | set(tokens))
            self.counts["released"] += len(held)
            log.info("leases given back", extra={"reason": why, "leases": len(held)})
        except Exception as exc:  # the leases then expire by themselves
            log.warning("leases not given back", extra={"reason": why, "error": scrub(str(exc))})

    # --- what this keeper may act on ---------------------------------------------------------

    def held(self) -> dict[int, int]:
        """Shard (or LEADER) -> token, of the leases valid now."""
        return self._held.valid()

    def begin_block(self) -> None:
        """Freeze the leases the block about to be processed is decided under."""
        self._acting = self.held()

    def end_block(self) -> None:
        self._acting = None

    def _tokens(self) -> dict[int, int]:
        return self._acting if self._acting is not None else self.held()

    def owns(self, account: int) -> bool:
        return shard_of(account, self.shards) in self._tokens()

    @property
    def is_leader(self) -> bool:
        return LEADER in self.held()

    def act_seconds_left(self) -> float:
        return max(self._held.act_until - time.monotonic(), 0.0) if self._held.tokens else 0.0

    # --- the store's fence (keeper.store.db.Fence) -------------------------------------------

    def admit_decisions(self, s: Session, decisions: Sequence[Decision]) -> list[bool]:
        if not decisions:
            return []
        tokens = self._tokens()
        needed = [shard_of_target(d.account, d.action, self.shards) for d in decisions]
        asked = {n: tokens[n] for n in set(needed) if n in tokens}
        ok = lease_sql.fence_check(s.connection(), self.keeper_id, asked, self.margin_us)
        admitted = [n in ok for n in needed]
        refused = admitted.count(False)
        if refused:
            self.counts["fenced_decisions"] += refused
            log.warning("decisions refused: lease not held", extra={"refused": refused})
        return admitted

    def admit_transactions(self, s: Session, txs: Sequence[Transaction]) -> None:
        ids = [tx.decision_id for tx in txs if tx.decision_id is not None]
        if not ids:
            return
        rows = s.exec(
            select(Decision).where(col(Decision.id).in_(ids)).with_for_update(read=True)
        ).all()
        if len(rows) != len(set(ids)) or any(d.action_key is None for d in rows):
            self.counts["fenced_transactions"] += len(txs)
            raise LeaseLost("a decision gave its action key back before its transaction")
        tokens = self.held()  # now, not the block's: the lease must hold at the send
        needed = {shard_of_target(d.account, d.action, self.shards) for d in rows}
        asked = {n: tokens[n] for n in needed if n in tokens}
        ok = lease_sql.fence_check(s.connection(), self.keeper_id, asked, self.margin_us)
        if not needed <= ok:
            self.counts["fenced_transactions"] += len(txs)
            raise LeaseLost(f"leases {sorted(needed - ok)} no longer held")

    def admit_attempts(self, s: Session, tx_ids: Sequence[int]) -> None:
        ids = set(tx_ids)
        pending = s.exec(
            select(Transaction.id)
            .where(col(Transaction.id).in_(sorted(ids)))
            .where(Transaction.status == TxStatus.PENDING)
            .with_for_update(read=True)
        ).all()
        if set(pending) != ids:
            self.counts["fenced_attempts"] += len(ids - set(pending))
            raise LeaseLost("a transaction was closed by the keeper that took over")
