"""Cluster mode through a real PostgreSQL restart: three ``keeper run`` processes on a private
server (tests/pg_private.py) and anvil with 1-second blocks, through a market crash in two
steps. The keepers act on the first step; right after the first of their transactions is
stored, the server goes down -- a clean shutdown (``pg_ctl stop -m fast``: every session
ended) or a crash (``-m immediate``: the server's processes killed, in-flight transactions
lost, crash recovery at the next start) -- and stays down for longer than the lease while the
second step makes more accounts liquidatable. Checked on the chain and in the store:

- while the database is down no keeper sends a transaction (the keepers' transactions counted
  per block against the outage window), and each reports time without a lease;
- once it is back, the keepers resume: every account liquidatable after the second step is
  liquidated, exactly once; no healthy account touched, no action key sent twice, every
  transaction final and recorded (the checks of tests/test_cluster_e2e.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from keeper.cluster.launch import ANVIL_KEYS, KeeperProcess, wait_healthy
from keeper.store import Store
from tests.pg_private import PrivatePostgres
from tests.test_cluster_e2e import (
    CLUSTER,
    ClusterNet,
    _check_exactly_once,
    _settled,
    _spread,
    cluster_net,
)

pytestmark = [pytest.mark.anvil]


@pytest.fixture
def pg_net(
    tmp_path: Path, contracts_built: None, private_pg: PrivatePostgres
) -> Iterator[ClusterNet]:
    with cluster_net(tmp_path, private_pg.url) as n:
        yield n


def _stored_transactions(pg: PrivatePostgres) -> int:
    with psycopg.connect(pg.url, autocommit=True, connect_timeout=5) as c:
        row = c.execute("SELECT count(*) FROM tx").fetchone()
    return int(row[0]) if row else 0


def _keeper_txs_per_block(
    net: ClusterNet, keepers: list[KeeperProcess], first: int, last: int
) -> dict[int, Counter[str]]:
    """Block -> the keepers' transactions in it, by keeper."""
    names = {k.address.lower(): k.name for k in keepers}
    out: dict[int, Counter[str]] = {}
    for n in range(first, last + 1):
        block = net.w3.eth.get_block(n, full_transactions=True)
        senders = Counter(names[t["from"].lower()] for t in block["transactions"]
                          if t["from"].lower() in names)  # fmt: skip
        out[n] = senders
    return out


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_mid_crash_keepers_pause_then_resume_exactly_once(
    pg_net: ClusterNet, private_pg: PrivatePostgres, mode: str
) -> None:
    net, pg = pg_net, private_pg
    keepers = net.keepers(3)
    try:
        for k in keepers:
            k.start()
        wait_healthy(keepers)
        _spread(net, {"k0", "k1", "k2"})
        before = net.nonces()
        since = net.w3.eth.block_number + 1
        stored = _stored_transactions(pg)

        # First step of the crash; the server goes down once the keepers are acting on it.
        first = net.crash(0.80, 0.85, 1.15)
        assert 2 in first.values(), "the first step must make accounts liquidatable"
        deadline = time.monotonic() + 30
        while _stored_transactions(pg) == stored:
            assert time.monotonic() < deadline, "no keeper acted on the first step"
            time.sleep(0.05)
        pg.stop(mode)
        down = net.w3.eth.block_number  # blocks after down + 1: sent after the stop

        # Longer than the lease: every lease lapses, and the second step comes meanwhile.
        time.sleep(CLUSTER["lease_ttl_seconds"] + 0.5)
        second = net.crash(0.85, 0.85, 1.15)
        step2 = net.w3.eth.block_number
        assert 2 in second.values(), "the second step must leave work for after the restart"
        time.sleep(3)
        for k in keepers:
            h = k.health()
            assert h is not None and (h.get("seconds_without_lease") or 0) > 0, (k.name, h)
        up = net.w3.eth.block_number  # blocks up to it: mined before the restart
        pg.start()

        # Each account liquidatable after the second step is liquidated after it: nothing was
        # sent while the database was down (below), so after the restart.
        liquidatable = {a for a, s in second.items() if s == 2}
        _settled(net, liquidatable, step2 + 1)
        per_block = _keeper_txs_per_block(net, keepers, since, net.w3.eth.block_number)
        sent = {n: dict(c) for n, c in per_block.items() if c}
        print(f"{mode}: down after block {down}, back after block {up}; keepers' txs: {sent}")
        during = {n: dict(c) for n, c in per_block.items() if down + 1 < n <= up and c}
        assert during == {}, f"keepers sent transactions while the database was down: {during}"
        assert any(c for n, c in per_block.items() if n > up), "the keepers did not resume"

        # Healthy: healthy after both steps; liquidatable: after the second (the first step's
        # liquidations are in the chain state the second verdict was taken on).
        verdict = {
            a: 2 if second[a] == 2 else 0 if first[a] == second[a] == 0 else 1 for a in second
        }
        _liquidations, txs = _check_exactly_once(net, verdict, before, since)
        # On this chain a transaction mines in the block after its broadcast: a second attempt
        # means one was recorded but not broadcast and waited to count as stuck (30 s). (None
        # at all: an unsigned transaction the leader closed, its keeper's heartbeat being as
        # old as the outage when the leader came back first.)
        with Store.open(net.store_url) as store:
            attempts = store.attempts_of([t.id for t in txs if t.id is not None])
        assert {i: len(a) for i, a in attempts.items() if len(a) > 1} == {}
        assert all(k.alive() for k in keepers)
    except BaseException:
        for k in keepers:
            print(f"--- {k.name} log tail\n{k.log_path.read_text(errors='replace')[-3000:]}")
        print(f"--- postgres log tail\n{pg.log_tail()}")
        raise
    finally:
        codes = [k.stop() for k in keepers]
    assert codes == [0, 0, 0]


def test_an_attempt_whose_commit_answer_was_lost_is_broadcast_at_the_next_poll(
    private_pg: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the crash above can hit: the database commits the signed attempts, then dies
    before the keeper reads the answer. The keeper took the recording as failed and broadcast
    nothing; the next poll (the database back) re-broadcasts the recorded bytes at once instead
    of waiting ``stuck_after`` for them to count as stuck. The lost answer is made by hand (a
    race with a real crash cannot be aimed at): the real ``add_attempts`` commits, then raises
    the error a dropped connection gives."""
    from sqlalchemy.exc import OperationalError
    from web3 import Web3
    from web3.exceptions import TransactionNotFound

    from keeper.config import FeesConfig
    from keeper.devnet import Anvil
    from keeper.fees import FeePolicy
    from keeper.signer import Signer
    from keeper.store import AttemptStatus
    from keeper.transactions import Submission, TxManager

    with Anvil() as node, Store.open(private_pg.url) as store:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 30}))
        fees = FeePolicy(FeesConfig(max_fee_per_gas=50 * 10**9, priority_fee=10**9))
        txm = TxManager(
            store, w3, Signer.from_env("K", {"K": ANVIL_KEYS[0]}), fees,
            chain_id=node.chain_id, confirmations=1, stuck_after_seconds=30,
        )  # fmt: skip
        txm.start()
        me = txm.signer.address
        recorded = store.add_attempts

        def committed_then_lost(attempts: list[Any]) -> list[Any]:
            recorded(attempts)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

        monkeypatch.setattr(store, "add_attempts", committed_then_lost)
        subs = [Submission(to=me, data="0x", gas_limit=21_000) for _ in range(2)]
        with pytest.raises(Exception, match="server closed the connection"):
            txm.submit_many(subs)
        monkeypatch.undo()
        txs = store.open_transactions(me)
        recorded_attempts = [
            a for ids in store.attempts_of([t.id for t in txs if t.id]).values() for a in ids
        ]
        hashes = [a.hash for a in recorded_attempts]
        assert len(txs) == 2 and len(hashes) == 2
        assert all(a.status == AttemptStatus.SENT for a in recorded_attempts)
        for h in hashes:
            with pytest.raises(TransactionNotFound):
                w3.eth.get_transaction(h)  # type: ignore[arg-type]

        txm.poll()  # long before stuck_after: the recorded bytes go out now
        assert [int(w3.eth.get_transaction(h)["nonce"]) for h in hashes] == [0, 1]  # type: ignore[arg-type]
        txm.poll()
        assert [t.status for t in store.transactions(me)] == ["final", "final"]
        assert [len(a) for a in store.attempts_of([t.id for t in txs if t.id]).values()] == [1, 1]
