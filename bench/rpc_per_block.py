"""Steady state of the real keeper over many accounts: per-block time, lag, RPC calls, memory.

A fresh anvil with the protocol and ``n`` accounts: ``--seeding orders`` (default) gives six
positions each on both underlyings through signed-order trades (bench.naive_keeper.seed_accounts,
one owner's sub-accounts); ``--seeding venue`` gives the devnet market's engine-sized books
through the devnet batch seeder (keeper.devnet.venue.seed_venue: minutes become seconds at
10,000 accounts and more). The keeper runs as the real service (KeeperService in a
thread, SQLite store, signer configured: ``keeper run``'s code path, the whole-book engine of
keeper/book_engine.py included) and reaches the node through a counting proxy. The chain then
mines one block a second (interval mining) and every block carries what a live market carries:
a new round of both price feeds and both vol feeds (a small random walk, so every account's
margin changes every block) and deposits into a few random accounts (their nonce moves: the
keeper re-reads and re-assesses them exactly). Nothing becomes liquidatable: this is the
keeper's cost when there is nothing to do but watch.

Figures: per processed block, the service's own wall time (``KeeperService.recent``: index,
snapshot, assess, record) p50 / p99 / max; keeper lag (chain head minus the last processed
block, sampled as each block is mined); JSON-RPC calls and HTTP requests per chain block (the
proxy's count); accounts settled by the bounded pass vs the exact engine per block; the
process's RSS (the bench client and its seeding data share the process: an upper bound).

Baseline (same run, same block): the naive keeper, one ``eth_call`` of
``ClearingHouse.marginOf`` per account, timed on a sample of accounts and scaled to the book.
Prints figures only; nothing is asserted.

    .venv/bin/python -m bench.rpc_per_block [--accounts 1000] [--blocks 30]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.types import TxParams

from bench.keeper_setup import bench_keeper_config
from bench.naive_keeper import seed_accounts
from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.deployment import bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.devnet.venue import seed_venue
from keeper.service import KeeperService


def _metric(service: KeeperService, attr: str, suffix: str = "_total") -> float:
    for fam in getattr(service.metrics, attr).collect():
        for s in fam.samples:
            if s.name.endswith(suffix):
                return float(s.value)
    return 0.0


def _wait_block(w3: Web3, after: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = w3.eth.block_number
        if n > after:
            return int(n)
        time.sleep(0.02)
    raise TimeoutError(f"no block after {after} in {timeout} s")


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process, MiB (Linux /proc)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


def run(
    n_accounts: int = 1000,
    blocks: int = 30,
    poll: float = 0.2,
    seed: int = 3,
    naive_sample: int = 200,
    seeding: str = "orders",
) -> dict[str, Any]:
    ensure_built()
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rpc-"))
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 600}))
        d = deploy_protocol(w3)
        d.write(tmp / "deployment.json")
        ch = bind(w3, d, "ClearingHouse")
        usdc = bind(w3, d, "MockERC20:USDC")
        t_seed = time.perf_counter()
        if seeding == "venue":
            market = seed_venue(w3, d, Chain.connect(node.url, d), n_accounts, seed=seed)
            accounts = [a.account for a in market.accounts]
            owner_of = {a.account: a.owner for a in market.accounts}
            # The per-block deposits come from the owners (impersonated by anvil).
            node.rpc("anvil_autoImpersonateAccount", [True])
        else:
            accounts = seed_accounts(node, w3, d, n_accounts, seed)
            owner_of = dict.fromkeys(accounts, str(list(w3.eth.accounts)[1]))
        seed_s = time.perf_counter() - t_seed
        depositors: set[str] = set()
        feeds = [
            bind(w3, d, f"MockAggregator:{u['symbol']}/{kind}")
            for u in d.underlyings
            for kind in ("USD", "IV")
        ]
        with CountingProxy(node.url) as proxy:
            cfg = bench_keeper_config(
                proxy.url, node.chain_id, tmp, poll=poll, confirmations=2, watchdog=300
            )
            service = KeeperService(cfg)
            thread = threading.Thread(
                target=lambda: service.run(install_signals=False), daemon=True
            )
            t_open = time.perf_counter()
            thread.start()
            while service.health.last_block is None:
                if not thread.is_alive():
                    raise RuntimeError("the keeper stopped during start-up")
                time.sleep(0.05)
            startup_s = time.perf_counter() - t_open
            node.rpc("evm_setIntervalMining", [1])

            def market_block(after: int) -> int:
                """Wait for the next block, then queue what the following one carries."""
                n = _wait_block(w3, after)
                for f in feeds:
                    v = int(f.functions.answer().call())
                    f.functions.setAnswer(round(v * (1 + rng.uniform(-0.001, 0.001)))).transact(
                        {"from": w3.eth.accounts[0]}
                    )
                for a in rng.sample(accounts, 3):
                    owner = owner_of[a]
                    if owner not in depositors:  # a first deposit: tokens, gas and allowance
                        depositors.add(owner)
                        node.rpc("anvil_setBalance", [owner, hex(10**19)])
                        # Explicit gas: the deposit below is estimated before these are mined.
                        tx: TxParams = {"from": Web3.to_checksum_address(owner), "gas": 200_000}
                        usdc.functions.mint(owner, 10**12).transact(tx)
                        usdc.functions.approve(ch.address, 2**255).transact(tx)
                    ch.functions.deposit(a, 0, 10**6).transact({"from": owner, "gas": 300_000})
                return n

            head = int(w3.eth.block_number)
            for _ in range(3):  # warm-up: the keeper's caches and the first market rounds
                head = market_block(head)
            _wait_block(w3, head)
            time.sleep(0.5)
            proxy.reset()
            processed0 = _metric(service, "block_seconds", "_count")
            assessed0 = _metric(service, "assessed")
            seconds0 = _metric(service, "block_seconds", "_sum")
            first = w3.eth.block_number
            reports0 = len(service.recent)
            lags: list[int] = []
            for _ in range(blocks):
                head = market_block(head)
                lags.append(head - (service.health.last_block or 0))
            last = _wait_block(w3, head)
            deadline = time.monotonic() + 60
            while service.health.last_block is not None and service.health.last_block < last:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            calls, requests = proxy.calls, proxy.requests
            methods = Counter(proxy.methods)
            processed = _metric(service, "block_seconds", "_count") - processed0
            assessed = _metric(service, "assessed") - assessed0
            busy = _metric(service, "block_seconds", "_sum") - seconds0
            lag = last - (service.health.last_block or 0)
            reports = [r for r in list(service.recent)[reports0:] if r.head > first]
            rss, rss_peak = _rss_mib()
            service.stop()
            thread.join(120)

            # The naive keeper at the last block: one marginOf eth_call per account, timed on
            # a sample and scaled to the book.
            sample = rng.sample(accounts, min(naive_sample, len(accounts)))
            t = time.perf_counter()
            for a in sample:
                ch.functions.marginOf(a).call(block_identifier=last)
            naive_s = (time.perf_counter() - t) / len(sample) * n_accounts
    chain_blocks = last - first
    secs = [r.seconds for r in reports]
    p50 = _pct(secs, 50)
    return {
        "accounts": n_accounts,
        "seeding": seeding,
        "seed_s": round(seed_s, 1),
        "chain_blocks": chain_blocks,
        "blocks_processed": int(processed),
        "keeper_lag_at_end_blocks": lag,
        "startup_s": round(startup_s, 1),
        "jsonrpc_calls_per_chain_block": round(calls / chain_blocks, 1),
        "http_requests_per_chain_block": round(requests / chain_blocks, 1),
        "accounts_assessed_per_processed_block": round(assessed / processed, 1) if processed else 0,
        "processing_ms_per_block": round(1000 * busy / processed, 1) if processed else None,
        "block_ms_p50": round(1000 * p50, 1),
        "block_ms_p99": round(1000 * _pct(secs, 99), 1),
        "block_ms_max": round(1000 * max(secs, default=float("nan")), 1),
        "lag_blocks_p50": _pct([float(x) for x in lags], 50),
        "lag_blocks_max": max(lags, default=0),
        "bounded_accounts_per_block": round(sum(r.bounded for r in reports) / len(reports), 1)
        if reports
        else 0,
        "exact_accounts_per_block": round(sum(r.exact for r in reports) / len(reports), 1)
        if reports
        else 0,
        "book_rebuilds": sum(r.book_rebuilt for r in reports),
        "rss_mib": round(rss),
        "rss_peak_mib": round(rss_peak),
        "naive_calls_per_block": n_accounts,
        "naive_sample": len(sample),
        "naive_eth_call_s_per_block": round(naive_s, 2),
        "naive_over_keeper_p50": round(naive_s / p50, 1) if reports else None,
        "methods_per_chain_block": {
            m: round(c / chain_blocks, 2) for m, c in methods.most_common()
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--poll", type=float, default=0.2, help="keeper head poll interval (s)")
    ap.add_argument("--naive-sample", type=int, default=200, help="accounts timed naively")
    ap.add_argument(
        "--seeding", choices=("orders", "venue"), default="orders", help="how the book is seeded"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(
        args.accounts,
        args.blocks,
        args.poll,
        naive_sample=args.naive_sample,
        seeding=args.seeding,
    )
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:40} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
