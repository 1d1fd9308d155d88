"""Cluster mode end to end: ``keeper run`` processes sharing one PostgreSQL store, on a real
anvil with 1-second blocks and the deployed protocol, through a crash of the market.

- three keepers, one killed (SIGKILL) just after broadcasting its first transaction of the
  crash: every liquidatable account liquidated, no healthy one touched, no action key sent
  twice, every transaction final and recorded (the dead keeper's too, followed by the leader),
  and the dead keeper's shards taken over;
- a keeper frozen (SIGSTOP) between recording a decision and sending it, past its lease: the
  other takes its shards over and acts; resumed, the frozen one sends nothing for them;
- the store's connection cut mid-run (a TCP proxy in front of PostgreSQL): the keepers stop
  acting while they cannot renew, then resume without duplicates.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlmodel import select
from web3 import Web3

from keeper.chain import Chain
from keeper.cluster import leases as lease_sql
from keeper.cluster.launch import ANVIL_KEYS, KeeperProcess, cluster_keepers, wait_healthy
from keeper.deployment import Deployment, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import SeededMarket, seed_market
from keeper.store import Store
from keeper.store.models import Decision, Transaction
from tests.pg_private import PrivatePostgres

pytestmark = [pytest.mark.anvil]
#: The tests on the shared server: the store_url fixture's PostgreSQL schema.
ON_POSTGRESQL = pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)

#: Fast leases for a test on 1-second blocks (the defaults: 2 s ttl, 0.5 s heartbeat).
CLUSTER = {"shards": 16, "lease_ttl_seconds": 2.0, "heartbeat_seconds": 0.5,
           "safety_margin_seconds": 0.5}  # fmt: skip


class ClusterNet:
    def __init__(self, anvil: Anvil, tmp: Path, store_url: str, accounts: int) -> None:
        self.anvil = anvil
        self.tmp = tmp
        self.store_url = store_url
        self.w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
        self.deployment: Deployment = deploy_protocol(self.w3)
        self.deployment_file = tmp / "deployment.json"
        self.deployment.write(self.deployment_file)
        self.chain = Chain.connect(anvil.url, self.deployment)
        self.market: SeededMarket = seed_market(
            self.w3, self.deployment, self.chain, accounts, seed=11
        )
        self.ch = bind(self.w3, self.deployment, "ClearingHouse")
        # From here on, a block every second whatever happens (as on a live chain).
        self.w3.provider.make_request("evm_setAutomine", [False])
        self.w3.provider.make_request("evm_setIntervalMining", [1])

    def base_config(self, store_url: str | None = None) -> dict[str, Any]:
        return {
            "rpc": {"url": self.anvil.url, "chain_id": self.anvil.chain_id},
            "deployment": {"file": str(self.deployment_file)},
            "store": {"url": store_url or self.store_url},
            "fees": {"max_fee_per_gas": "500 gwei", "priority_fee": "1 gwei"},
            "decisions": {"min_profit": 0, "confirmations": 1, "block_poll_interval_seconds": 0.2},
            "service": {"watchdog_seconds": 120},
        }

    def keepers(self, n: int, store_url: str | None = None) -> list[KeeperProcess]:
        return cluster_keepers(self.base_config(store_url), self.tmp, n, cluster=CLUSTER)

    def crash(self, factor_eth: float, factor_btc: float, vol_factor: float) -> dict[int, int]:
        """Every feed moved in one block (interval mining paused meanwhile); the engine's
        verdict on every account at that block (0 healthy, 1 margin call, 2 liquidatable)."""
        self.w3.provider.make_request("evm_setIntervalMining", [0])
        hashes = []
        for u, f in zip(self.deployment.underlyings, (factor_eth, factor_btc), strict=False):
            price = bind(self.w3, self.deployment, f"MockAggregator:{u['symbol']}/USD")
            vol = bind(self.w3, self.deployment, f"MockAggregator:{u['symbol']}/IV")
            p = int(price.functions.answer().call())
            v = int(vol.functions.answer().call())
            for c, x in ((price, round(p * f)), (vol, round(v * vol_factor))):
                hashes.append(c.functions.setAnswer(x).transact({"from": self.w3.eth.accounts[0]}))
        self.w3.provider.make_request("evm_mine", [])
        for h in hashes:
            assert self.w3.eth.get_transaction_receipt(h)["status"] == 1
        accounts = [a.account for a in self.market.accounts]
        snap = self.chain.view().snapshot(accounts)
        verdict = {a: snap.full_check(a).state for a in accounts}
        self.w3.provider.make_request("evm_setIntervalMining", [1])
        return verdict

    def nonces(self) -> dict[int, int]:
        return {
            a.account: int(self.ch.functions.accountState(a.account).call()[0])
            for a in self.market.accounts
        }

    def events(self, name: str, since: int) -> list[Any]:
        return list(getattr(self.ch.events, name)().get_logs(from_block=since))

    def rows(self) -> tuple[list[Decision], list[Transaction]]:
        with Store.open(self.store_url) as store, store.session() as s:
            return list(s.exec(select(Decision)).all()), list(s.exec(select(Transaction)).all())

    def owners(self) -> dict[int, str | None]:
        with Store.open(self.store_url) as store:
            _now, rows = lease_sql.leases(store.engine)
        return {r.shard: r.owner for r in rows}


@contextlib.contextmanager
def cluster_net(tmp: Path, store_url: str, accounts: int = 30) -> Iterator[ClusterNet]:
    """A fresh anvil with the protocol deployed and the market seeded, for keepers on the
    store at ``store_url`` (the PostgreSQL restart tests below bring their own server)."""
    with Anvil() as anvil:
        n = ClusterNet(anvil, tmp, store_url, accounts)
        try:
            yield n
        finally:
            n.chain.close()


@pytest.fixture
def net(tmp_path: Path, contracts_built: None, store_url: str) -> Iterator[ClusterNet]:
    with cluster_net(tmp_path, store_url) as n:
        yield n


def _keeper_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keeper", *args], capture_output=True, text=True, timeout=120
    )


def _spread(net: ClusterNet, names: set[str], timeout: float = 60) -> None:
    """Wait until every shard is held and each of ``names`` holds some."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = net.owners()
        if all(owners.values()) and names <= set(owners.values()):
            return
        time.sleep(0.3)
    raise AssertionError(f"shards not spread over {names}: {net.owners()}")


def _settled(net: ClusterNet, liquidatable: set[int], since: int, timeout: float = 90) -> None:
    """Wait until every liquidatable account was liquidated and no transaction is open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = {int(e["args"]["account"]) for e in net.events("Liquidation", since)}
        _d, txs = net.rows()
        if liquidatable <= done and txs and all(t.final for t in txs):
            return
        time.sleep(1)
    _d, txs = net.rows()
    raise AssertionError(
        f"not settled: missing {liquidatable - done}, open {[t.id for t in txs if not t.final]}"
    )


def _quiet_rows(net: ClusterNet, timeout: float = 30) -> tuple[list[Decision], list[Transaction]]:
    """The store's rows once no transaction is open: the keepers keep working after the
    liquidations (a margin call or a bad-debt resolution the liquidations left), and a
    transaction sent meanwhile is followed to its end before the rows are judged."""
    deadline = time.monotonic() + timeout
    decisions, txs = net.rows()
    while not all(t.final for t in txs) and time.monotonic() < deadline:
        time.sleep(0.5)
        decisions, txs = net.rows()
    return decisions, txs


def _check_exactly_once(
    net: ClusterNet, verdict: dict[int, int], before: dict[int, int], since: int
) -> tuple[list[Any], list[Transaction]]:
    liquidations = net.events("Liquidation", since)
    flags = net.events("MarginCall", since)
    liquidated = {int(e["args"]["account"]) for e in liquidations}
    flagged = {int(e["args"]["account"]) for e in flags}
    assert {a for a, s in verdict.items() if s == 2} <= liquidated
    healthy = {a for a, s in verdict.items() if s == 0}
    assert not (healthy & (liquidated | flagged)), "a healthy account was touched"
    after = net.nonces()
    assert all(after[a] == before[a] for a in healthy)
    decisions, txs = _quiet_rows(net)
    by_id = {d.id: d for d in decisions}
    # No action sent twice: one transaction per decision, one on-chain transaction per
    # (action, account, account nonce), and none reverted (a second one would).
    assert len({t.decision_id for t in txs}) == len(txs)
    onchain = [by_id[t.decision_id] for t in txs if t.decision_id and t.mined_hash]
    sent = Counter((d.action, d.account, d.account_nonce) for d in onchain)
    assert [k for k, n in sent.items() if n > 1] == []
    assert [t.id for t in txs if t.status == "reverted"] == []
    # Every transaction final and recorded: each event's transaction is a recorded one.
    assert all(t.final and t.status in ("final", "failed") for t in txs), [
        (t.id, t.status, t.final, t.sender, t.decision_id, t.revert_reason)
        for t in txs
        if not (t.final and t.status in ("final", "failed"))
    ]
    recorded = {t.mined_hash for t in txs if t.mined_hash}
    for e in liquidations + flags:
        assert "0x" + e["transactionHash"].hex().removeprefix("0x") in recorded
    return liquidations, txs


@ON_POSTGRESQL
def test_three_keepers_through_a_crash_one_killed(net: ClusterNet) -> None:
    keepers = net.keepers(3)
    k0, k1, k2 = keepers
    k0.start()
    k1.start(KEEPER_FAULT_KILL_AT="after_send")  # dies right after its first broadcast
    k2.start()
    try:
        wait_healthy(keepers)
        _spread(net, {"k0", "k1", "k2"})
        before = net.nonces()
        since = net.w3.eth.block_number + 1
        verdict = net.crash(0.70, 0.75, 1.3)
        assert 2 in verdict.values(), "the seeded market must have under-water books"
        k1_shards = {s for s, o in net.owners().items() if o == "k1"}
        deadline = time.monotonic() + 20
        while k1.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if k1.alive():  # its shards held nothing to act on: killed from outside instead
            k1.signal(signal.SIGKILL)
            k1.proc.wait() if k1.proc else None
        killed_at = net.w3.eth.block_number
        taken_at = None
        while taken_at is None and time.monotonic() < deadline + 30:
            owners = net.owners()
            if all(owners[s] in ("k0", "k2") for s in k1_shards):
                taken_at = net.w3.eth.block_number
            time.sleep(0.2)
        assert taken_at is not None, "the dead keeper's shards were not taken over"
        print(f"fail-over: {taken_at - killed_at} blocks after the kill")
        assert taken_at - killed_at <= 5
        _settled(net, {a for a, s in verdict.items() if s == 2}, since)
        liquidations, txs = _check_exactly_once(net, verdict, before, since)
        liquidators = {e["args"]["liquidator"] for e in liquidations}
        assert liquidators <= {k.address for k in keepers}
        assert len(liquidators) >= 2, "the crash was shared between keepers"
        assert all(t.final for t in txs if t.sender == k1.address.lower())

        # What an operator sees: `keeper status` on the cluster, the metrics, then a drain.
        status = _keeper_cli("status", "--config", str(k0.config), "--json")
        assert status.returncode == 0, status.stderr
        cluster = json.loads(status.stdout)["cluster"]
        live = {k["keeper_id"]: k["live"] for k in cluster["keepers"]}
        assert live == {"k0": True, "k1": False, "k2": True}
        assert cluster["unowned"] == 0
        assert {s["owner"] for s in cluster["shards"]} == {"k0", "k2"}
        body = k0.metrics()
        assert _metric(body, "keeper_cluster_shards_held", keeper="k0") > 0
        assert "keeper_cluster_shard_lag_blocks" in body
        drained = _keeper_cli("cluster", "drain", "--keeper", "k2", "--config", str(k0.config))
        assert drained.returncode == 0, drained.stderr
        deadline = time.monotonic() + 15
        while set(net.owners().values()) != {"k0"}:
            assert time.monotonic() < deadline, net.owners()
            time.sleep(0.3)
    finally:
        codes = {k.name: k.stop() for k in keepers}
    assert codes["k0"] == 0 and codes["k2"] == 0, k0.log_path.read_text()[-2000:]
    assert all(o is None for o in net.owners().values()), "a clean stop gives its leases back"


def _metric(body: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _fenced_transactions(k: KeeperProcess) -> float:
    """The keeper's count of transactions its fence refused (0 while /metrics cannot answer)."""
    try:
        return _metric(k.metrics(), "keeper_cluster_events_total", event="fenced_transactions")
    except OSError:
        return 0.0


@ON_POSTGRESQL
def test_a_keeper_paused_past_its_lease_sends_nothing_for_the_shards_it_lost(
    net: ClusterNet,
) -> None:
    """k1 freezes (SIGSTOP) right after recording its first action decisions of the crash,
    before any transaction. k0 takes its shards, gives the orphaned keys back and acts. k1,
    resumed, is refused by the fence: it stores no transaction for those decisions."""
    keepers = net.keepers(2)
    k0, k1 = keepers
    k0.start()
    k1.start(KEEPER_FAULT_KILL_AT="after_decision", KEEPER_FAULT_SIGNAL="STOP")
    try:
        wait_healthy(keepers)
        _spread(net, {"k0", "k1"})
        before = net.nonces()
        since = net.w3.eth.block_number + 1
        verdict = net.crash(0.70, 0.75, 1.3)
        deadline = time.monotonic() + 30
        while not any(x["msg"] == "fault point reached: pausing the process" for x in k1.logs()):
            assert time.monotonic() < deadline, "k1 never decided an action"
            time.sleep(0.2)
        decisions, _ = net.rows()
        frozen = {d.id for d in decisions if d.action_key and d.outcome == "sent"}
        assert frozen, "k1 recorded its decisions before it froze"
        liquidatable = {a for a, s in verdict.items() if s == 2}
        _settled(net, liquidatable, since)  # k0 alone, k1 still frozen
        assert set(net.owners().values()) == {"k0"}
        k1.signal(signal.SIGCONT)
        # k1 resumes its block, is refused by the fence, rejoins the cluster (a few seconds;
        # longer on a loaded machine).
        deadline = time.monotonic() + 60
        while not _fenced_transactions(k1):
            assert time.monotonic() < deadline, "k1 resumed and was never refused by the fence"
            time.sleep(0.5)
        _settled(net, liquidatable, since)
        _liquidations, txs = _check_exactly_once(net, verdict, before, since)
        mine = [t for t in txs if t.sender == k1.address.lower()]
        assert not [t.id for t in mine if t.decision_id in frozen], "k1 sent for a lost lease"
        assert k1.alive() and k0.alive()
    finally:
        codes = [k.stop() for k in keepers]
    assert codes == [0, 0]


@ON_POSTGRESQL
def test_store_connection_cut_mid_run_stops_acting_then_resumes_without_duplicates(
    net: ClusterNet,
) -> None:
    """Both keepers reach PostgreSQL through a TCP proxy; the proxy cuts every connection
    for longer than the lease ttl while the market crashes. Nothing can be recorded, so
    nothing is sent; both report themselves without a lease; once the database is back they
    take the shards again and liquidate, each action once."""
    from sqlalchemy.engine import make_url

    from keeper.cluster.tcp_cut import TcpCut

    url = make_url(net.store_url)
    proxy = TcpCut(url.host or "127.0.0.1", url.port or 5432)
    via_proxy = net.store_url.replace(f"{url.host}:{url.port or 5432}", f"127.0.0.1:{proxy.port}")
    assert via_proxy != net.store_url
    keepers = cluster_keepers(net.base_config(via_proxy), net.tmp, 2, cluster=CLUSTER)
    try:
        for k in keepers:
            k.start()
        wait_healthy(keepers)
        _spread(net, {"k0", "k1"})
        before = net.nonces()
        proxy.cut()
        time.sleep(CLUSTER["lease_ttl_seconds"] + 0.5)
        since = net.w3.eth.block_number + 1
        verdict = net.crash(0.70, 0.75, 1.3)
        time.sleep(4)
        assert net.events("Liquidation", since) == [], "a keeper acted without its store"
        assert net.events("MarginCall", since) == []
        for k in keepers:
            h = k.health()
            assert h is not None and (h.get("seconds_without_lease") or 0) > 0, h
        proxy.restore()
        _settled(net, {a for a, s in verdict.items() if s == 2}, since)
        _check_exactly_once(net, verdict, before, since)
        assert all(k.alive() for k in keepers)
    finally:
        codes = [k.stop() for k in keepers]
        proxy.close()
    assert codes == [0, 0]


@ON_POSTGRESQL
def test_a_reorg_deeper_than_confirmations_rebuilds_the_shared_index_once(
    net: ClusterNet,
) -> None:
    """Three keepers with ``confirmations = 2`` index an owner's deposit; then a reorg of more
    blocks than that takes the deposit away (none of the stored block hashes is canonical any
    more). One keeper -- whichever holds the index lock first -- rebuilds the shared index
    from the deployment block; the others find it rebuilt and only roll their books back. The
    deposit is gone from the index, and the keepers go through the crash that follows as
    usual: every action once, every transaction final and recorded."""
    base = net.base_config()
    base["decisions"]["confirmations"] = 2
    keepers = cluster_keepers(base, net.tmp, 3, cluster=CLUSTER)
    for k in keepers:
        k.start()
    try:
        wait_healthy(keepers)
        _spread(net, {"k0", "k1", "k2"})
        start = net.w3.eth.block_number
        book = net.market.accounts[0]
        usdc = bind(net.w3, net.deployment, "MockERC20:USDC")
        net.w3.provider.make_request("anvil_impersonateAccount", [book.owner])
        net.w3.provider.make_request("anvil_setBalance", [book.owner, hex(10**19)])
        for call in (
            usdc.functions.mint(book.owner, 10**9),
            usdc.functions.approve(net.ch.address, 10**9),
            net.ch.functions.deposit(book.account, 0, 10**9),
        ):
            h = call.transact({"from": book.owner})
            assert net.w3.eth.wait_for_transaction_receipt(h, timeout=30)["status"] == 1
        deposited = net.w3.eth.get_transaction_receipt(h)["blockNumber"]
        deposit_hash = "0x" + bytes(h).hex()
        deadline = time.monotonic() + 30
        while not _indexed(net, deposit_hash):
            assert time.monotonic() < deadline, "the deposit was never indexed"
            time.sleep(0.3)
        time.sleep(3)  # every keeper processes a block after the deposit (3 blocks deep)
        nonce = net.nonces()[book.account]

        net.w3.provider.make_request("evm_setIntervalMining", [0])
        depth = net.w3.eth.block_number - deposited + 3  # > confirmations below the deposit
        net.w3.provider.make_request("anvil_reorg", [depth, []])
        assert net.nonces()[book.account] == nonce - 1, "the reorg took the deposit away"
        net.w3.provider.make_request("evm_setIntervalMining", [1])
        deadline = time.monotonic() + 30
        while _indexed(net, deposit_hash):
            assert time.monotonic() < deadline, "the index still holds the orphaned deposit"
            time.sleep(0.3)
        time.sleep(4)  # every keeper processes a block after the reorg
        rebuilt = {
            k.name: sum(x["msg"].startswith("reorg deeper than confirmations") for x in k.logs())
            for k in keepers
        }
        assert sum(rebuilt.values()) == 1, rebuilt
        rolled = {k.name: any(x["msg"] == "reorg rolled back" for x in k.logs()) for k in keepers}
        assert all(rolled.values()), rolled  # each keeper re-read its book
        assert net.w3.eth.block_number > start

        before = net.nonces()
        since = net.w3.eth.block_number + 1
        verdict = net.crash(0.70, 0.75, 1.3)
        assert 2 in verdict.values()
        _settled(net, {a for a, s in verdict.items() if s == 2}, since)
        _check_exactly_once(net, verdict, before, since)
        assert all(k.alive() for k in keepers)
    finally:
        codes = [k.stop() for k in keepers]
    assert codes == [0, 0, 0]


def _indexed(net: ClusterNet, tx_hash: str) -> bool:
    """Whether the shared index holds an event of the transaction ``tx_hash``."""
    from keeper.store.models import EventLog

    with Store.open(net.store_url) as store, store.session() as s:
        rows = s.exec(select(EventLog.tx_hash).where(EventLog.name == "Deposit")).all()
    return any(str(t).lower() == tx_hash.lower() for t in rows)


@ON_POSTGRESQL
def test_health_fails_after_max_leaseless_seconds_without_a_lease(net: ClusterNet) -> None:
    """A keeper whose store is cut off renews no lease: /health stays ok while it has been
    without one for at most ``max_leaseless_seconds``, then answers 503 "unhealthy" with the
    time without a lease; once the store is back and a lease taken, ok again."""
    from sqlalchemy.engine import make_url

    from keeper.cluster.tcp_cut import TcpCut

    bound = 3.0
    url = make_url(net.store_url)
    proxy = TcpCut(url.host or "127.0.0.1", url.port or 5432)
    via_proxy = net.store_url.replace(f"{url.host}:{url.port or 5432}", f"127.0.0.1:{proxy.port}")
    (k0,) = cluster_keepers(
        net.base_config(via_proxy), net.tmp, 1, cluster={**CLUSTER, "max_leaseless_seconds": bound}
    )
    try:
        k0.start()
        wait_healthy([k0])
        _spread(net, {"k0"})
        proxy.cut()
        seen: list[tuple[str, float]] = []
        deadline = time.monotonic() + 30
        while not seen or seen[-1][0] != "unhealthy":
            assert time.monotonic() < deadline, seen[-5:]
            h = k0.health()
            if h is not None and h.get("seconds_without_lease") is not None:
                seen.append((h["status"], h["seconds_without_lease"]))
            time.sleep(0.2)
        assert all(s == "ok" for s, t in seen if t <= bound - 0.5), seen
        assert all(t > bound for s, t in seen if s == "unhealthy"), seen
        assert k0.alive()
        proxy.restore()
        wait_healthy([k0], timeout=30)
        h = k0.health()
        assert h is not None and h.get("seconds_without_lease") is None, h
    finally:
        code = k0.stop()
        proxy.close()
    assert code == 0


# ================================================== PostgreSQL restarted under the cluster
#
# Cluster mode through a real PostgreSQL restart: three ``keeper run`` processes on a private
# server (tests/pg_private.py) and anvil with 1-second blocks, through a market crash in two
# steps. The keepers act on the first step; right after the first of their transactions is
# stored, the server goes down -- a clean shutdown (``pg_ctl stop -m fast``: every session
# ended) or a crash (``-m immediate``: the server's processes killed, in-flight transactions
# lost, crash recovery at the next start) -- and stays down for longer than the lease while the
# second step makes more accounts liquidatable. Checked on the chain and in the store:
#
# - while the database is down no keeper sends a transaction (the keepers' transactions counted
#   per block against the outage window), and each reports time without a lease;
# - once it is back, the keepers resume: every account liquidatable after the second step is
#   liquidated, exactly once; no healthy account touched, no action key sent twice, every
#   transaction final and recorded (the checks of tests/test_cluster_e2e.py).
# (In this file rather than one of their own: two files of three-keeper runs on the two
# workers of the suite at once starve each other's keepers of the cores.)


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
