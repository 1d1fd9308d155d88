"""Cluster mode's leases, fence and orphan follow-up on a real PostgreSQL (keeper.cluster),
driven heartbeat by heartbeat in one process: fair shares as keepers join and leave, takeover
after expiry with a larger fencing token, the fence refusing a keeper whose lease was taken,
the unique action-key index as the last line of defence, drain, and a dead keeper's unsigned
transaction closed exactly once. The processes themselves: tests/test_cluster_e2e.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from keeper.cluster import LEADER, ClusterMember, shard_of, shard_of_target
from keeper.cluster import leases as lease_sql
from keeper.cluster.leases import ShardCountMismatch
from keeper.cluster.orphans import _fail_unsigned, orphans
from keeper.config import ClusterConfig, ClusterNeedsPostgres, ConfigError, load_config_data
from keeper.store import Decision, LeaseLost, NonceState, Store, Transaction, TxAttempt, TxStatus

#: The PostgreSQL case of tests/conftest.py's ``store_url`` only (skipped without a server,
#: unless KEEPER_TEST_REQUIRE_PG=1).
PG = pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)

SHARDS = 12
TTL = 1.0


@pytest.fixture
def pg(store_url: str) -> Iterator[str]:
    yield store_url


def member(store: Store, name: str, address: str | None = None) -> ClusterMember:
    cfg = ClusterConfig(
        enabled=True,
        shards=SHARDS,
        lease_ttl_seconds=TTL,
        heartbeat_seconds=0.2,
        safety_margin_seconds=0.2,
    )
    return ClusterMember(store.engine, cfg, keeper_id=name, address=address)


def shards(m: ClusterMember) -> set[int]:
    return {s for s in m.held() if s >= 0}


def a_decision(account: int, key: str, block: int = 10) -> Decision:
    return Decision(
        block_number=block, block_hash="0x" + "00" * 32, account=str(account),
        inputs_digest="0x" + "11" * 32, loss_matrix=[], requirement=0, initial_margin=0,
        equity=0, state="liquidatable", action="liquidate", action_key=key,
    )  # fmt: skip


@PG
def test_shares_follow_joins_and_leaves_and_takeover_raises_the_token(pg: str) -> None:
    with Store.open(pg) as store:
        lease_sql.setup(store.engine, SHARDS)
        a, b, c = (member(store, n) for n in "abc")
        a.beat()
        assert shards(a) == set(range(SHARDS)) and a.is_leader
        b.beat()  # b counts two live keepers, finds nothing free yet
        a.beat()  # a gives its excess back
        b.beat()  # b takes it
        assert len(shards(a)) == len(shards(b)) == SHARDS // 2
        assert not shards(a) & shards(b)
        for m in (c, a, b, c):
            m.beat()
        assert [len(shards(m)) for m in (a, b, c)] == [4, 4, 4]
        assert shards(a) | shards(b) | shards(c) == set(range(SHARDS))
        lost = shards(c)
        tokens = {s: c.held()[s] for s in lost}

        # c stops beating (killed): its leases run out, first for itself (the safety margin),
        # then for the others, who take them with a larger token.
        time.sleep(TTL - 0.2 + 0.05)
        assert c.held() == {}, "a keeper that cannot renew stops acting before the expiry"
        time.sleep(0.3)
        for m in (a, b, a, b):
            m.beat()
        assert shards(a) | shards(b) == set(range(SHARDS))
        for s in lost:
            owner = a if s in shards(a) else b
            assert owner.held()[s] > tokens[s]


@PG
def test_the_fence_refuses_a_keeper_whose_lease_was_taken_over(pg: str) -> None:
    with Store.open(pg) as paused_store, Store.open(pg) as live_store:
        lease_sql.setup(paused_store.engine, SHARDS)
        paused, live = member(paused_store, "paused"), member(live_store, "live")
        paused_store.fence, live_store.fence = paused, live
        paused.beat()
        account = next(a for a in range(1, 10_000) if shard_of(a, SHARDS) in shards(paused))
        paused.begin_block()  # decides under its tokens, then "pauses" past the ttl
        time.sleep(TTL + 0.1)
        live.beat()
        assert shard_of(account, SHARDS) in shards(live)
        assert paused_store.add_action_decisions([a_decision(account, "k1")]) == [None]
        assert paused_store.add_action_decision(a_decision(account, "k1")) is None
        assert paused.counts["fenced_decisions"] == 2
        live.begin_block()
        (row,) = live_store.add_action_decisions([a_decision(account, "k1")])
        assert row is not None and row.id is not None
        assert paused_store.decision_by_key("k1") is not None  # only the live keeper's

        # The paused keeper resumes and tries to store a transaction for the live keeper's
        # decision (as if it had recorded it before the pause): refused, no nonce taken.
        paused_store.set_next_nonce("0x" + "ab" * 20, 0)
        with pytest.raises(LeaseLost):
            paused_store.insert_transaction(
                Transaction(decision_id=row.id, sender="0x" + "ab" * 20, gas_limit=1, chain_id=1)
            )
        assert paused_store.next_nonce("0x" + "ab" * 20) == 0


@PG
def test_the_unique_action_key_is_the_last_line_of_defence(pg: str) -> None:
    """Even with the fence out of the way (a bug, a keeper without one), the database refuses
    a second decision with the same action key."""
    with Store.open(pg) as fenced, Store.open(pg) as unfenced:
        lease_sql.setup(fenced.engine, SHARDS)
        m = member(fenced, "m")
        fenced.fence = m
        m.beat()
        assert unfenced.add_action_decision(a_decision(7, "liquidate:7:3")) is not None
        m.begin_block()
        assert fenced.add_action_decisions([a_decision(7, "liquidate:7:3")]) == [None]
        assert fenced.add_action_decision(a_decision(7, "liquidate:7:3")) is None
        with fenced.session() as s:
            n = s.connection().execute(
                text("SELECT count(*) FROM decision WHERE action_key = 'liquidate:7:3'")
            )
            assert n.scalar_one() == 1


@PG
def test_drain_gives_every_lease_back_and_the_others_take_them(pg: str) -> None:
    with Store.open(pg) as store:
        lease_sql.setup(store.engine, SHARDS)
        a, b = member(store, "a"), member(store, "b")
        for m in (a, b, a, b):
            m.beat()
        assert shards(a) and shards(b)
        assert lease_sql.request_drain(store.engine, "a")
        a.beat()
        assert a.held() == {} and a.draining
        b.beat()
        assert shards(b) == set(range(SHARDS)) and b.is_leader
        a.beat()
        assert a.held() == {}, "a draining keeper takes nothing back"
        # A clean stop gives the leases back at once: no one waits for the ttl.
        b.stop(release=True)
        _now, rows = lease_sql.leases(store.engine)
        assert all(r.owner is None for r in rows)


@PG
def test_shard_count_is_fixed_by_the_first_keeper(pg: str) -> None:
    with Store.open(pg) as store:
        lease_sql.setup(store.engine, SHARDS)
        lease_sql.setup(store.engine, SHARDS)  # again: nothing changes
        with pytest.raises(ShardCountMismatch, match="12 shards"):
            lease_sql.setup(store.engine, SHARDS + 1)


@PG
def test_unsigned_transaction_of_a_dead_keeper_is_closed_once(pg: str) -> None:
    """A keeper died (or froze) after storing a transaction and before signing it: the
    leader closes it and gives the key back; the frozen keeper, resumed, cannot sign it."""
    dead = "0x" + "cd" * 20
    with Store.open(pg) as store, Store.open(pg) as frozen_store:
        lease_sql.setup(store.engine, SHARDS)
        frozen = member(frozen_store, "frozen", dead)
        frozen_store.fence = frozen
        frozen.beat()
        account = next(a for a in range(1, 10_000) if shard_of(a, SHARDS) in shards(frozen))
        frozen.begin_block()
        (d,) = frozen_store.add_action_decisions([a_decision(account, "flag:1:0")])
        assert d is not None and d.id is not None
        frozen_store.set_next_nonce(dead, 5)
        tx = frozen_store.insert_transaction(
            Transaction(decision_id=d.id, sender=dead, gas_limit=1, chain_id=1)
        )
        assert tx.id is not None and tx.nonce == 5
        assert orphans(store, frozen.ttl_us) == [], "a live keeper's transaction is no orphan"
        time.sleep(TTL + 0.1)  # frozen: no heartbeat
        (orphan,) = orphans(store, frozen.ttl_us)
        assert orphan.id == tx.id
        assert _fail_unsigned(store, tx.id)
        assert not _fail_unsigned(store, tx.id), "closed once"
        closed = store.transaction(tx.id)
        assert closed is not None and closed.status == TxStatus.FAILED and closed.final
        decision = store.decision(d.id)
        assert decision is not None and decision.action_key is None
        with pytest.raises(LeaseLost):
            frozen_store.add_attempt(
                TxAttempt(tx_id=tx.id, hash="0x" + "ee" * 32, raw="0x00",
                          max_fee_per_gas=1, max_priority_fee_per_gas=1)
            )  # fmt: skip
        assert store.attempts(tx.id) == []
        with store.session() as s:
            assert s.get(NonceState, dead) is not None


def test_shards_and_targets() -> None:
    assert {shard_of(a, 64) for a in range(2000)} == set(range(64))
    assert shard_of(12345, 64) == shard_of(12345, 64)
    assert shard_of_target("instrument:3", "settle_instrument", 64) == LEADER
    assert shard_of_target("77", "settle_account", 64) == shard_of(77, 64)
    assert shard_of_target("77", "liquidate", 64) == shard_of(77, 64)


def test_cluster_config_needs_postgres_and_sane_timings(tmp_path: object) -> None:
    base = {"rpc": {"url": "http://127.0.0.1:8545", "chain_id": 31337},
            "deployment": {"file": "d.json"}}  # fmt: skip
    with pytest.raises(ClusterNeedsPostgres, match="postgresql"):
        load_config_data({**base, "cluster": {"enabled": True}}, environ={})
    cfg = load_config_data(
        {**base, "store": {"url": "postgresql://k@db/k"}, "cluster": {"enabled": True}},
        environ={},
    )
    assert cfg.cluster.shards == 64 and cfg.cluster.lease_ttl_seconds == 2.0
    assert not load_config_data(base, environ={}).cluster.enabled
    with pytest.raises(ConfigError, match="heartbeat_seconds"):
        load_config_data(
            {**base, "store": {"url": "postgresql://k@db/k"},
             "cluster": {"enabled": True, "heartbeat_seconds": 3}},
            environ={},
        )  # fmt: skip


@PG
def test_a_lease_that_lapsed_and_is_renewed_gets_a_new_token(pg: str) -> None:
    """A database outage longer than the ttl: nobody took the lease, the owner renews it
    afterwards, with a new token (nothing decided before the lapse is admitted) and as a
    gained lease (the service re-reads the book: its accounts were not followed)."""
    with Store.open(pg) as store:
        lease_sql.setup(store.engine, SHARDS)
        m = member(store, "m")
        m.beat()
        m.begin_block()
        old_tokens, generation = m.held(), m.generation
        account = next(a for a in range(1, 10_000) if shard_of(a, SHARDS) in shards(m))
        time.sleep(TTL + 0.1)
        m.beat()
        assert all(m.held()[s] == old_tokens[s] + 1 for s in old_tokens)
        assert m.generation == generation + 1
        store.fence = m
        assert store.add_action_decision(a_decision(account, "late")) is None  # old tokens
        m.begin_block()
        assert store.add_action_decision(a_decision(account, "late")) is not None


def test_health_fails_after_too_long_without_a_lease() -> None:
    from keeper.metrics import Health

    began: list[float | None] = [None]
    health = Health(max_leaseless=5.0, leaseless_since=lambda: began[0])
    health.block(10, 0)
    assert health.snapshot()[0], "holding a lease: healthy"
    began[0] = time.monotonic() - 2
    ok, body = health.snapshot()
    assert ok and 1.5 < body["seconds_without_lease"] < 3
    began[0] = time.monotonic() - 6
    ok, body = health.snapshot()
    assert not ok and body["status"] == "unhealthy"
    assert "seconds_without_lease" not in Health().snapshot()[1], "a single keeper: no field"
