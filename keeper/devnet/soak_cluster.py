"""The soak run's cluster mode (``bench/soak.py --cluster N``): N ``keeper run`` processes on
one PostgreSQL store, each with its own signer, all behind the same fault-injecting RPC proxy,
through the scripted market of the single-keeper soak (keeper.devnet.soak). One keeper is
killed (SIGKILL) at 40 % of the market and started again at 60 %.

At the end the faults stop, the keepers drain their open transactions and are stopped
(SIGTERM), the chain is frozen, and ``keeper.devnet.soak_audit`` checks the chain against the
store for every keeper's address at once: duplicates (two keepers, or a keeper and its
restarted self, sending one action) and lost records must be 0.

The store is a fresh schema of the PostgreSQL database at ``pg_url``, dropped afterwards.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import select
from web3 import Web3

from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.cluster import leases as lease_sql
from keeper.cluster.launch import KeeperProcess, cluster_keepers, wait_healthy
from keeper.deployment import deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.fault_proxy import FaultProxy
from keeper.devnet.market import seed_market
from keeper.devnet.market_script import ScriptedFeeds, apply_phase, phase_plan, set_block_time
from keeper.devnet.soak import SoakOptions, _keeper_config, _new_cycle, program_faults
from keeper.devnet.soak_audit import Audit, audit
from keeper.store import Store
from keeper.store.models import Transaction

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class ClusterSoakReport:
    keepers: int
    seconds: float
    blocks: tuple[int, int]
    accounts_seeded: int
    faults_injected_total: int
    killed: str | None
    killed_at_block: int | None
    restarted_at_block: int | None
    takeover_blocks: int | None  # from the kill to every shard of the dead keeper held again
    exit_statuses: dict[str, int | None]
    liquidators: dict[str, int]  # Liquidation events by keeper
    audit: dict[str, Any] = field(default_factory=dict)
    duplicates_total: int = 0
    lost_records_total: int = 0

    @property
    def ok(self) -> bool:
        return self.duplicates_total == 0 and self.lost_records_total == 0


def run_cluster_soak(
    opts: SoakOptions, n: int, pg_url: str = DEFAULT_PG_URL, say: Callable[[str], None] = print
) -> ClusterSoakReport:
    import psycopg

    t0 = time.monotonic()
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_built()
    schema = f"keeper_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            store_url = f"{pg_url}?options=-csearch_path%3D{schema}"
            with (
                Anvil(log_path=out / "anvil.log", accounts=10) as anvil,
                FaultProxy(anvil.url, seed=opts.seed, record_methods=False) as proxy,
            ):
                return _run(opts, n, anvil, proxy, out, store_url, t0, say)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _run(
    opts: SoakOptions,
    n: int,
    anvil: Anvil,
    proxy: FaultProxy,
    out: Path,
    store_url: str,
    t0: float,
    say: Callable[[str], None],
) -> ClusterSoakReport:
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
    deployment = deploy_protocol(w3)
    deployment_file = out / "deployment.json"
    deployment.write(deployment_file)
    chain = Chain.connect(anvil.url, deployment)
    cycles = max(1, round(opts.duration / opts.cycle))
    say(f"cluster soak: {n} keepers, {opts.duration:.0f} s, {cycles} cycle(s), "
        f"{opts.accounts} accounts per cycle, fault rate {opts.fault_rate:.3f}")  # fmt: skip
    market = seed_market(w3, deployment, chain, opts.accounts, seed=opts.seed)
    seeded = len(market.accounts)
    program_faults(proxy, opts)
    base = _keeper_config(opts, anvil, proxy, out, deployment_file)
    base["store"] = {"url": store_url}
    for key in ("signer", "metrics"):
        base.pop(key, None)
    for stale in out.glob("k*.log"):
        stale.unlink()
    keepers = cluster_keepers(base, out, n)
    set_block_time(w3, opts.block_time)
    first_block = w3.eth.block_number
    for k in keepers:
        k.start()
    wait_healthy(keepers, timeout=300)
    victim = keepers[-1]
    killed_at = restarted_at = takeover = None
    victim_shards: set[int] = set()
    rng = random.Random(opts.seed)
    feeds = ScriptedFeeds(w3, deployment, deployment.deployer)
    steps = max(5, int(opts.duration / cycles / opts.block_time))
    total = steps * cycles
    step = 0
    for c in range(cycles):
        if c > 0:
            deployment, added = _new_cycle(w3, deployment, chain, feeds, opts, c)
            seeded += added
        expiry = max(int(i["expiry"]) for i in deployment.instruments)
        say(f"cycle {c + 1}/{cycles}: {seeded} accounts, faults so far {proxy.injected}")
        last_phase = None
        for phase in phase_plan(steps):
            apply_phase(phase, phase != last_phase, feeds, rng, crash=opts.crash, expiry=expiry)
            last_phase = phase
            step += 1
            if killed_at is None and step >= 0.4 * total:
                victim_shards = _shards_of(store_url, victim.name)
                victim.signal(signal.SIGKILL)
                killed_at = w3.eth.block_number
                say(f"block {killed_at}: {victim.name} killed (SIGKILL), "
                    f"{len(victim_shards)} shards")  # fmt: skip
            if (
                killed_at is not None
                and takeover is None
                and restarted_at is None
                and _taken(store_url, victim_shards, victim.name)
            ):
                takeover = w3.eth.block_number - killed_at
                say(f"its shards held again {takeover} blocks after the kill")
            if restarted_at is None and step >= 0.6 * total:
                victim.start()
                restarted_at = w3.eth.block_number
                say(f"block {restarted_at}: {victim.name} started again")
            end = time.monotonic() + opts.block_time
            while time.monotonic() < end:
                time.sleep(0.2)
    say(f"market done; draining without faults (at most {opts.drain:.0f} s)")
    proxy.clear()
    _drain(store_url, keepers, w3, opts)
    statuses = {k.name: k.stop() for k in keepers}
    set_block_time(w3, 0)
    last_block = w3.eth.block_number
    with Store.open(store_url) as store:
        result = audit(w3, deployment, store, [k.address for k in keepers], first_block,
                       last_block)  # fmt: skip
    liquidations = _liquidators(w3, deployment, first_block, last_block, keepers)
    chain.close()
    report = ClusterSoakReport(
        keepers=n, seconds=round(time.monotonic() - t0, 1), blocks=(first_block, last_block),
        accounts_seeded=seeded, faults_injected_total=proxy.injected, killed=victim.name,
        killed_at_block=killed_at, restarted_at_block=restarted_at, takeover_blocks=takeover,
        exit_statuses=statuses, liquidators=liquidations, audit=_audit_dict(result),
        duplicates_total=result.duplicates_total, lost_records_total=result.lost_total,
    )  # fmt: skip
    return report


def _shards_of(store_url: str, name: str) -> set[int]:
    with Store.open(store_url) as store:
        _now, rows = lease_sql.leases(store.engine)
    return {r.shard for r in rows if r.owner == name}


def _taken(store_url: str, shards: set[int], dead: str) -> bool:
    with Store.open(store_url) as store:
        now, rows = lease_sql.leases(store.engine)
    owners = {r.shard: (r.owner, r.expires_us) for r in rows}
    return all(owners[s][0] not in (None, dead) and owners[s][1] > now for s in shards)


def _drain(store_url: str, keepers: list[KeeperProcess], w3: Web3, opts: SoakOptions) -> None:
    deadline = time.monotonic() + opts.drain
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        with Store.open(store_url) as store, store.session() as s:
            open_tx = s.exec(select(Transaction).where(Transaction.final == False)).all()  # noqa: E712
        if not open_tx:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 4 * opts.block_time:
                return
        else:
            quiet_since = None
        time.sleep(0.5)


def _liquidators(
    w3: Web3, deployment: Any, first: int, last: int, keepers: list[KeeperProcess]
) -> dict[str, int]:
    from keeper.deployment import bind

    ch = bind(w3, deployment, "ClearingHouse")
    names = {k.address.lower(): k.name for k in keepers}
    out: dict[str, int] = {}
    for e in ch.events.Liquidation().get_logs(from_block=first, to_block=last):
        name = names.get(str(e["args"]["liquidator"]).lower(), "other")
        out[name] = out.get(name, 0) + 1
    return out


def _audit_dict(result: Audit) -> dict[str, Any]:
    d = asdict(result)
    d["duplicates_total"] = result.duplicates_total
    d["lost_total"] = result.lost_total
    return d
