"""Cluster mode at scale: 1, 2 and 3 ``keeper run`` processes on one PostgreSQL store, on the
same seeded venue, through a crash; then the fail-over time of a killed keeper.

One anvil state with ``--accounts`` accounts (the devnet batch seeder, keeper.devnet.venue) is
seeded once (``--state``: kept in that file and reused by later runs) and loaded afresh for
every cluster size (anvil ``--load-state``, ``--prune-history 8``); each size gets a fresh
PostgreSQL schema. The chain mines a block every ``--block-time`` seconds (default 1; anvil
1.7.1 needs 4-5 s a block at 100,000 accounts, so 1-second blocks are impossible there; the
node's median ``evm_mine`` time for an empty block on the seeded state is printed first).
Every feed gets a new round every block (so every keeper re-margins its whole share every
block), both prices fall by ``--crash`` in one block, and rounds keep coming for ``--after``
blocks. The measured block interval (block timestamps over the window) is printed with every
size's figures. Measured:

* accounts re-margined per second, cluster-wide: the accounts every keeper assessed (its
  ``block`` log lines) for the blocks from the first round to the end of the window, over
  the wall time from the first of those blocks' start to the last one's end;
* the same over the keepers' own block times (work, not the wait for the next block), and
  the longest first block after the crash (a keeper's share of the crash's actions);
* per-block lag: the chain head minus each keeper's last processed block (its ``/health``),
  sampled once a block in the window and every 0.25 s while the driver waits for the
  keepers to pass it, p50 / p99 / max;
* the crash: blocks from the crash block to the first Liquidation and to the last one;
* fail-over (2 keepers or more): one keeper SIGKILLed; blocks (and seconds) until every
  shard it held is held by a live keeper again.

This machine has 2 cores shared by anvil, PostgreSQL, the keepers and the driver: more
keepers do not add cores, so the figures show the coordination's overhead and the split of
the book, not a speed-up. Prints figures only; nothing is asserted.

    .venv/bin/python -m bench.cluster [--accounts 1000] [--keepers 1,2,3] [--block-time 1]
        [--state FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.types import TxParams

from bench.rpc_per_block import _pct, _wait_block
from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.cluster import leases as lease_sql
from keeper.cluster.launch import KeeperProcess, cluster_keepers, wait_healthy
from keeper.deployment import Deployment, bind, deploy_protocol, load_deployment
from keeper.devnet import Anvil
from keeper.devnet.venue import seed_venue
from keeper.store import Store

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


#: anvil keeps this many past states in memory (keeper.devnet.venue's default): each is a copy
#: of the whole state, ~150 MiB at 100,000 accounts, and anvil's own default keeps GiBs.
PRUNE = ["--prune-history", "8"]
#: Loading or dumping the state of 100,000 accounts takes anvil tens of seconds.
STATE_TIMEOUT = 900.0


def seed_state(state: Path, n: int, seed: int) -> tuple[Deployment, float]:
    """Seed ``n`` accounts on a fresh anvil that dumps its state into ``state`` when it stops,
    next to the deployment (``<state>.deployment.json``); if both files are there from an
    earlier run with the same ``n`` and ``seed``, reuse them. Returns the deployment and the
    node's median ``evm_mine`` time (seconds) on the seeded state, 5 empty blocks."""
    meta = state.with_suffix(".deployment.json")
    info = state.with_suffix(".seed.json")
    want = {"accounts": n, "seed": seed}
    if state.is_file() and meta.is_file() and info.is_file():
        saved = json.loads(info.read_text())
        if {k: saved.get(k) for k in want} == want:
            return load_deployment(meta), float(saved["mine_s"])
    state.unlink(missing_ok=True)
    node = Anvil(extra_args=[*PRUNE, "--dump-state", str(state)], startup_timeout=STATE_TIMEOUT)
    with node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 600}))
        d = deploy_protocol(w3)
        chain = Chain.connect(node.url, d)
        try:
            seed_venue(w3, d, chain, n, seed=seed)
        finally:
            chain.close()
        mine_s = _mine_seconds(node, 5)
        node.stop(timeout=STATE_TIMEOUT)  # SIGTERM: anvil writes the dump, then exits
    if not state.is_file() or state.stat().st_size == 0:
        raise RuntimeError(f"anvil wrote no state dump to {state}")
    d.write(meta)
    info.write_text(json.dumps({**want, "mine_s": mine_s}))
    return d, mine_s


def _mine_seconds(node: Anvil, blocks: int) -> float:
    took = []
    for _ in range(blocks):
        t = time.perf_counter()
        node.rpc("evm_mine", [], timeout=STATE_TIMEOUT)
        took.append(time.perf_counter() - t)
    return sorted(took)[len(took) // 2]


def run_size(
    k: int, state: Path, d: Deployment, tmp: Path, pg_url: str, crash: float, after: int,
    quiet: int, block_time: int, lease_ttl: float,
) -> dict[str, Any]:  # fmt: skip
    import psycopg

    work = tmp / f"k{k}"
    work.mkdir()
    d.write(work / "deployment.json")
    schema = f"keeper_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            url = f"{pg_url}?options=-csearch_path%3D{schema}"
            # --load-state reads the seeded venue and dumps nothing: every size starts from
            # the seeded venue, not from the previous size's crash.
            node = Anvil(
                extra_args=[*PRUNE, "--load-state", str(state)], startup_timeout=STATE_TIMEOUT
            )
            with node:
                return _measure(k, node, d, work, url, crash, after, quiet, block_time, lease_ttl)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _measure(
    k: int, node: Anvil, d: Deployment, work: Path, url: str, crash: float, after: int,
    quiet: int, block_time: int, lease_ttl: float,
) -> dict[str, Any]:  # fmt: skip
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 600}))
    base = {
        # anvil answers nothing while it mines a block (seconds at 100,000 accounts), and the
        # first eth_getLogs over the seeded blocks returns every account's logs.
        "rpc": {"url": node.url, "chain_id": node.chain_id, "timeout_seconds": 120},
        "deployment": {"file": str(work / "deployment.json")},
        "store": {"url": url},
        "fees": {"max_fee_per_gas": "500 gwei", "priority_fee": "2 gwei"},
        "decisions": {"min_profit": 0, "confirmations": 2, "block_poll_interval_seconds": 0.2,
                      "sweep_interval_seconds": 3600},
        # A crash's block at 100,000 accounts keeps a keeper busy for minutes.
        "service": {"watchdog_seconds": 3600, "settle_interval_seconds": 3600},
    }  # fmt: skip
    keepers = cluster_keepers(base, work, k, cluster={"lease_ttl_seconds": lease_ttl})
    prices = [bind(w3, d, f"MockAggregator:{u['symbol']}/USD") for u in d.underlyings]
    vols = [bind(w3, d, f"MockAggregator:{u['symbol']}/IV") for u in d.underlyings]
    admin = w3.eth.accounts[0]
    ch = bind(w3, d, "ClearingHouse")

    def rounds(scale: float) -> None:
        tx: TxParams = {"from": admin, "gas": 200_000}
        for f in prices:
            f.functions.setAnswer(round(int(f.functions.answer().call()) * scale)).transact(tx)
        for f in vols:
            f.functions.setAnswer(int(f.functions.answer().call())).transact(tx)

    t_start = time.perf_counter()
    try:
        for kp in keepers:
            kp.start()
        wait_healthy(keepers, timeout=1800)
        _spread(url, {kp.name for kp in keepers})
        startup_s = time.perf_counter() - t_start
        node.rpc("evm_setIntervalMining", [block_time])
        lags: list[float] = []
        head = int(w3.eth.block_number)
        first = head + 1
        for _ in range(quiet):
            head = _wait_block(w3, head, 300)
            rounds(1.0)
            _sample(w3, keepers, lags)
        head = _wait_block(w3, head, 300)
        rounds(1.0 - crash)
        crash_block = _wait_block(w3, head, 300)
        last = crash_block
        while last < crash_block + after:
            last = _wait_block(w3, last, 300)
            rounds(1.0)
            _sample(w3, keepers, lags)
        deadline = time.monotonic() + max(600, 60 * block_time)
        while time.monotonic() < deadline and min(_last(kp) or 0 for kp in keepers) < last:
            _sample(w3, keepers, lags)
            time.sleep(0.25)
        # Every keeper past the window, and 5 more blocks: the crash's liquidations are done.
        end = _wait_block(w3, int(w3.eth.block_number) + 4, 300 + 10 * block_time)
        liq = sorted(
            int(e["blockNumber"])
            for e in ch.events.Liquidation().get_logs(from_block=crash_block, to_block=end)
        )
        failover = _failover(w3, url, keepers) if k >= 2 else None
    finally:
        for kp in keepers:
            kp.stop()
    t_first = int(w3.eth.get_block(first)["timestamp"])
    t_last = int(w3.eth.get_block(last)["timestamp"])
    return {
        "keepers": k,
        "block_interval_s": round((t_last - t_first) / (last - first), 2),
        "startup_s": round(startup_s, 1),
        "accounts_per_s": _throughput(keepers, first, last),
        "accounts_per_busy_s": _busy_throughput(keepers, first, last),
        "crash_block_s": _crash_seconds(keepers, crash_block),
        "lag_p50": _pct(lags, 50),
        "lag_p99": _pct(lags, 99),
        "lag_max": max(lags, default=None),
        "first_liquidation_blocks": liq[0] - crash_block if liq else None,
        "last_liquidation_blocks": liq[-1] - crash_block if liq else None,
        "liquidations": len(liq),
        "failover": failover,
    }


def _last(kp: KeeperProcess) -> int | None:
    h = kp.health()
    return None if h is None else h.get("last_block")


def _sample(w3: Web3, keepers: list[KeeperProcess], lags: list[float]) -> None:
    head = int(w3.eth.block_number)
    for kp in keepers:
        last = _last(kp)
        if last is not None:
            lags.append(max(0, head - last))


def _spread(url: str, names: set[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Store.open(url) as store:
            now, rows = lease_sql.leases(store.engine)
        owners = {r.owner for r in rows if r.owner and r.expires_us > now}
        if names <= owners and all(r.owner and r.expires_us > now for r in rows if r.shard >= 0):
            return
        time.sleep(0.3)
    raise TimeoutError("shards not spread over every keeper")


def _throughput(keepers: list[KeeperProcess], first: int, last: int) -> int | None:
    """Accounts assessed by all keepers for blocks ``first..last`` over the wall time from
    the first such block's start to the last one's end (a keeper behind the head skips to
    the newest block, so blocks are not lined up across keepers: totals over the window)."""
    from datetime import datetime

    total, starts, ends = 0, [], []
    for kp in keepers:
        for x in kp.logs():
            if x.get("msg") != "block" or not first <= int(x["block"]) <= last:
                continue
            done = datetime.fromisoformat(x["ts"]).timestamp()
            total += int(x["assessed"])
            starts.append(done - float(x["ms"]) / 1000)
            ends.append(done)
    if not ends or max(ends) <= min(starts):
        return None
    return round(total / (max(ends) - min(starts)))


def _busy_throughput(keepers: list[KeeperProcess], first: int, last: int) -> int | None:
    """Accounts assessed over the keepers' summed block times (their own work, not the wait
    for the next block), for blocks ``first..last``."""
    total, busy = 0, 0.0
    for kp in keepers:
        for x in kp.logs():
            if x.get("msg") == "block" and first <= int(x["block"]) <= last:
                total += int(x["assessed"])
                busy += float(x["ms"]) / 1000
    return round(total / busy) if busy > 0 else None


def _crash_seconds(keepers: list[KeeperProcess], crash_block: int) -> float | None:
    """The longest time a keeper spent on its first block at or after the crash (assess,
    simulate, record and send its share of the crash's actions)."""
    worst = None
    for kp in keepers:
        blocks = [
            x for x in kp.logs() if x.get("msg") == "block" and int(x["block"]) >= crash_block
        ]
        if blocks:
            first = min(blocks, key=lambda x: int(x["block"]))
            worst = max(worst or 0.0, float(first["ms"]) / 1000)
    return None if worst is None else round(worst, 1)


def _failover(w3: Web3, url: str, keepers: list[KeeperProcess]) -> dict[str, Any]:
    victim = keepers[-1]
    with Store.open(url) as store:
        _now, rows = lease_sql.leases(store.engine)
    held = {r.shard for r in rows if r.owner == victim.name}
    victim.signal(signal.SIGKILL)
    killed_block = int(w3.eth.block_number)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        with Store.open(url) as store:
            now, rows = lease_sql.leases(store.engine)
        owners = {r.shard: r for r in rows}
        if all(owners[s].owner not in (None, victim.name) and owners[s].expires_us > now
               for s in held):  # fmt: skip
            taken_block = int(w3.eth.block_number)
            return {
                "shards": len(held),
                "blocks": taken_block - killed_block,
                "seconds": round(time.monotonic() - t0, 2),
            }
        time.sleep(0.1)
    return {"shards": len(held), "blocks": None, "seconds": None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--keepers", default="1,2,3")
    ap.add_argument("--crash", type=float, default=0.3)
    ap.add_argument("--after", type=int, default=10, help="blocks after the crash")
    ap.add_argument("--quiet", type=int, default=5, help="blocks of fresh rounds before it")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument(
        "--block-time",
        type=int,
        default=1,
        help="whole seconds between blocks (anvil's interval mining; anvil 1.7.1 needs 4-5 s "
        "a block at 100,000 accounts)",
    )
    ap.add_argument(
        "--lease-ttl",
        type=float,
        default=2.0,
        help="[cluster] lease_ttl_seconds (default 2, the keeper's). PostgreSQL ends a keeper's "
        "session idle in a transaction for ttl - 0.5 s: at 100,000 accounts the keeper "
        "process pauses for longer than the default's 1.5 s on this machine",
    )
    ap.add_argument(
        "--state",
        type=Path,
        help="keep the seeded anvil state in this file and reuse it when it was seeded with "
        "the same --accounts and --seed (default: a temporary file, seeded afresh)",
    )
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.block_time < 1:
        ap.error("--block-time: a whole number of seconds, at least 1")
    ensure_built()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    state = args.state or tmp / "venue.json"
    t = time.perf_counter()
    d, mine_s = seed_state(state, args.accounts, args.seed)
    seed_s = time.perf_counter() - t
    block_time = args.block_time
    head = {"accounts": args.accounts, "seed_s": round(seed_s, 1),
            "evm_mine_s": round(mine_s, 2), "block_time_s": block_time,
            "lease_ttl_s": args.lease_ttl}  # fmt: skip
    if not args.json:
        print(json.dumps(head), flush=True)
    results = []
    for k in (int(x) for x in args.keepers.split(",")):
        r = run_size(
            k, state, d, tmp, args.pg_url, args.crash, args.after, args.quiet, block_time,
            args.lease_ttl,
        )  # fmt: skip
        results.append(r)
        if not args.json:
            print(json.dumps(r), flush=True)
    print(json.dumps({**head, "sizes": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
