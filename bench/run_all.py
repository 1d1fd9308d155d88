"""Every engine benchmark in one run, printed as one table.

    .venv/bin/python -m bench.run_all            # full sizes (about an hour: seeding the
                                                 # 10,000-account devnet takes most of it)
    .venv/bin/python -m bench.run_all --quick    # small sizes
    .venv/bin/python -m bench.run_all --no-anvil # engine only (no anvil, no keeper service)

Each figure is reported with the baseline measured in the same run and the ratio. Times are
wall clock, best of a few runs where a run is cheap (the machine may be shared). Nothing here
is part of the test suite's pass/fail; correctness is tested in tests/test_sweep.py, and every
figure below is checked against the exact engine before it is printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from margin.portfolio_margin import ScenarioTable
from margin.tools import synthetic
from margin.tools.book import Book
from margin.tools.sweep import (
    MarketPrep,
    Sweep,
    exact_sweep,
    float_baseline,
    reprice_table,
)

ROOT = Path(__file__).resolve().parents[1]

Row = tuple[str, str, str, str, str]  # figure, value, baseline, ratio, aim
ROWS: list[Row] = []


def row(figure: str, value: str, baseline: str = "", ratio: str = "", aim: str = "") -> None:
    ROWS.append((figure, value, baseline, ratio, aim))
    print(f"  {figure}: {value}  {baseline}  {ratio}", file=sys.stderr, flush=True)


_T = TypeVar("_T")


def best(fn: Callable[[], _T], runs: int = 3) -> tuple[float, _T]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def peak_traced(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (Python and numpy) while fn runs, above what was live before."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def rate(n: int, s: float) -> str:
    return f"{n / s:,.0f} acc/s"


def book_section(n: int, incremental_sizes: list[int]) -> None:
    t = time.perf_counter()
    sb = synthetic.book(n)
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    book = Book(sb.params, sb.portfolios)
    t_book = time.perf_counter() - t
    n_pos = sum(len(pf.positions) for pf in sb.portfolios)
    n_rows = sum(len(keys) for keys in book.row_keys)
    scen = [len(s) for s in ScenarioTable(sb.market, sb.params).scenarios]
    print(
        f"book: {n:,} accounts, {n_pos:,} positions, {n_rows} instrument rows "
        f"(options + one spot row per underlying), scenarios per underlying {scen}; "
        f"generated in {t_gen:.1f} s, columns built in {t_book:.1f} s",
        file=sys.stderr,
    )

    def price() -> MarketPrep:
        return MarketPrep(book, ScenarioTable(sb.market, sb.params))

    t_table, prep = best(price, 1)
    # A long-lived book: keep the collector from walking its millions of objects (a service
    # does the same after loading its state).
    gc.collect()
    gc.freeze()
    row(
        f"pricing table, {len(book.instruments())} options x scenarios (per market state)",
        f"{t_table:.2f} s",
        aim="once per market state",
    )
    t_base, base_states = best(lambda: float_baseline(book, prep))

    def classify(exact_unhealthy: bool = True) -> Sweep:
        s = Sweep(book, prep)
        s.classify(exact_unhealthy)
        return s

    t_states, _ = best(lambda: classify(False))
    t_cls, sw = best(classify)
    assert isinstance(sw, Sweep)
    states = sw.states
    counts = np.bincount(states + 2, minlength=5)
    undecided = n - sw.decided_by_float
    acted = int(np.count_nonzero(states > 0))
    row(
        f"float64 numpy evaluation of the loss matrix, {n:,} accounts (baseline)",
        f"{t_base:.3f} s",
        rate(n, t_base),
    )
    row(
        f"classification sweep, {n:,} accounts: every state provably exact (bounded floats; "
        f"exact engine where undecided: {undecided})",
        f"{t_states:.3f} s = {rate(n, t_states)}",
        f"{t_base:.3f} s",
        f"{t_states / t_base:.2f}x baseline",
        "<= 1 s, <= 3x baseline",
    )
    row(
        f"  + exact results (margins, witness) of every unhealthy account ({acted:,})",
        f"{t_cls:.3f} s = {rate(n, t_cls)}",
        f"{t_base:.3f} s",
        f"{t_cls / t_base:.2f}x baseline",
    )
    print(
        f"states: healthy {counts[2]}, margin call {counts[3]}, liquidatable {counts[4]}, "
        f"error {counts[1]}; the unbounded float baseline disagrees on "
        f"{int(np.count_nonzero(base_states != states))}",
        file=sys.stderr,
    )
    peak = peak_traced(classify)
    row(
        "classification sweep peak memory (allocated during the sweep / process max RSS)",
        f"{mib(peak)} / {mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}",
        aim="<= 2 GiB",
    )

    for workers in (1, os.cpu_count() or 1):
        # One core runs on a slice (the whole book on one core takes long; it is linear).
        sub = 20_000 if workers == 1 and n > 20_000 else n
        t = time.perf_counter()
        if sub == n:
            res = exact_sweep(prep, workers=workers)
        else:
            res = exact_sweep(_slice_prep(sb, sub), workers=workers)
        dt = time.perf_counter() - t
        if sub == n and workers > 1:
            ex_states = np.array([r[4] if len(r) > 2 else -1 for r in res], dtype=np.int8)
            assert (ex_states == states).all(), "exact sweep disagrees with classification"
        label = f"exact-everything sweep, {sub:,} accounts, {workers} process(es)"
        row(
            label,
            f"{dt:.2f} s = {rate(sub, dt)}",
            f"{t_base * sub / n:.3f} s",
            f"{dt / (t_base * sub / n):.1f}x baseline",
            "<= 5 s (100k, both cores)" if workers > 1 else "",
        )
    row(
        "exact sweep peak memory (process max RSS, parent / largest worker)",
        f"{mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)} / "
        f"{mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)}",
    )

    # Incremental: one underlying's price moves 5%.
    for m in incremental_sizes:
        if m == n:
            b2, sb2, prep2, sw2 = book, sb, prep, sw
        else:
            sb2 = synthetic.book(m)
            b2 = Book(sb2.params, sb2.portfolios)
            prep2 = MarketPrep(b2, ScenarioTable(sb2.market, sb2.params))
            sw2 = Sweep(b2, prep2)
            sw2.classify()
        u = 0
        spots = list(sb2.market.spots)
        spots[u] = spots[u] * 95 // 100
        market = replace(sb2.market, spots=tuple(spots))
        t = time.perf_counter()
        table = reprice_table(prep2.table, market)
        prep_new = MarketPrep(b2, table)
        t_reprice = time.perf_counter() - t
        t = time.perf_counter()
        sw2.remargin(prep_new, [u], exact_unhealthy=False)
        t_states = time.perf_counter() - t
        t = time.perf_counter()
        new_states = sw2.remargin(prep_new, [u]).copy()
        t_inc = time.perf_counter() - t
        fresh = Sweep(b2, prep_new)
        t = time.perf_counter()
        fresh_states = fresh.classify()
        t_fresh = time.perf_counter() - t
        assert (fresh_states == new_states).all()
        held = len(b2.legs[u].seg_account)
        row(
            f"incremental re-margin after one price move, {m:,} accounts ({held:,} hold it): "
            "states provably exact",
            f"{t_states:.3f} s",
            f"{t_fresh:.3f} s full sweep",
            f"{t_fresh / t_states:.1f}x faster",
            "<= 0.2 s (100k)",
        )
        row(
            "  + exact results of the unhealthy accounts holding it",
            f"{t_inc:.3f} s",
        )
        row(
            f"  + repricing the moved underlying's rows ({m:,}-account book)",
            f"{t_reprice:.3f} s",
            aim="once per price update",
        )
        del sw2, prep2, b2, sb2


def _slice_prep(sb: synthetic.SyntheticBook, n: int) -> MarketPrep:
    b = Book(sb.params, sb.portfolios[:n])
    return MarketPrep(b, ScenarioTable(sb.market, sb.params))


def anvil_section(n: int) -> None:
    from bench.naive_keeper import run

    r = run(n)
    print(f"seeded {n} accounts x 6 positions on anvil in {r.seed_s:.1f} s", file=sys.stderr)
    row(
        f"naive keeper: {n:,} eth_calls of ClearingHouse.marginOf (baseline)",
        f"{r.eth_call_s:.2f} s",
        f"{1e3 * r.eth_call_s / n:.2f} ms/account",
    )
    row(
        f"engine, exact margin of the same {n:,} accounts (pricing table + packed exact engine)",
        f"{1e3 * r.packed_s:.1f} ms",
        f"{r.eth_call_s:.2f} s",
        f"{r.eth_call_s / r.packed_s:,.0f}x faster",
        ">= 1,000x",
    )
    row(
        f"engine, provably exact states of the same {n:,} accounts (bounded floats; exact "
        "engine where undecided and for unhealthy accounts; table included)",
        f"{1e3 * r.classify_s:.1f} ms",
        f"{r.eth_call_s:.2f} s",
        f"{r.eth_call_s / r.classify_s:,.0f}x faster",
    )
    row(
        "  engine via ScenarioTable.full_check (table included / table alone)",
        f"{1e3 * r.full_check_s:.1f} ms / {1e3 * r.table_s:.1f} ms",
        "",
        f"{r.eth_call_s / r.full_check_s:,.0f}x faster",
    )
    row(
        f"  batched snapshot read of the {n:,} accounts (keeper.chain, Multicall3)",
        f"{1e3 * r.snapshot_s:.0f} ms",
        "",
        f"{r.eth_call_s / (r.snapshot_s + r.packed_s):,.0f}x incl. read",
    )


def gas_section() -> None:
    snaps = ROOT / "contracts" / "snapshots"
    pm = json.loads((snaps / "PortfolioMarginGas.json").read_text())
    for n in (1, 10, 16, 40):
        ch = json.loads((snaps / f"ClearingHouseGas{n}.json").read_text())
        if f"witnessCheck_{n}" in pm:
            full, wit = int(pm[f"fullCheck_{n}"]), int(pm[f"witnessCheck_{n}"])
            row(
                f"gas, {n} positions: verifier witness check vs full check (PortfolioMarginGas)",
                f"{wit:,}",
                f"{full:,}",
                f"{full / wit:.2f}x cheaper",
                ">= 10x at 10" if n == 10 else "",
            )
        liq, fc = int(ch[f"liquidate_{n}"]), int(ch[f"fullCheck_{n}"])
        row(
            f"gas, {n} options: liquidate tx (witness) vs marginOf full check alone "
            "(ClearingHouseGas; a full-check liquidation costs more than the latter)",
            f"{liq:,}",
            f"{fc:,}",
            f"{fc / liq:.1f}x (lower bound)",
            "<= 250,000 at 16" if n == 16 else "",
        )


def _script(args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run one keeper-level benchmark in its own process (its own anvil) and read its JSON."""
    cmd = [sys.executable, *args, "--json"]
    print(f"  running {' '.join(args)} ...", file=sys.stderr, flush=True)
    out = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode not in (0, 1) or not out.stdout.strip():
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def keeper_section(quick: bool) -> None:
    """The real keeper service on anvil: per-block time, lag, RPC, memory; reaction; indexing."""
    for n in (100,) if quick else (1_000, 10_000):
        blocks = 10 if quick else 60
        args = ["-m", "bench.rpc_per_block", "--accounts", str(n), "--blocks", str(blocks)]
        if n >= 10_000:  # signed-order seeding takes hours at this size: the batch seeder
            args += ["--seeding", "venue"]
        r = _script(args, timeout=7200)
        path = "KeeperService (keeper run): snapshot + keeper/book_engine.py + records"
        row(
            f"keeper per-block wall time p50 / p99, {n:,} accounts, {blocks} 1-s blocks with "
            f"price and vol rounds and deposits ({path})",
            f"{r['block_ms_p50']} / {r['block_ms_p99']} ms",
            f"{r['naive_eth_call_s_per_block']} s naive (one marginOf eth_call per account, "
            f"timed on {r['naive_sample']})",
            f"{r['naive_over_keeper_p50']}x",
            "p99 <= 1 s",
        )
        row(
            f"  keeper lag (max over the run) / JSON-RPC calls per block / RSS ({n:,} accounts)",
            f"{r['lag_blocks_max']} blocks / {r['jsonrpc_calls_per_chain_block']} / "
            f"{r['rss_mib']} MiB",
            f"{n:,} calls naive",
            f"{n / r['jsonrpc_calls_per_chain_block']:,.0f}x fewer calls",
            "lag 0",
        )
        row(
            f"  accounts per block settled by the bounded pass / by the exact engine ({n:,})",
            f"{r['bounded_accounts_per_block']:,} / {r['exact_accounts_per_block']:,}",
            "",
            f"{r['book_rebuilds']} book rebuilds",
        )
    rounds = 10 if quick else 50
    r = _script(["-m", "bench.reaction", "--rounds", str(rounds), "--accounts", "50"])
    row(
        f"reaction: oracle crash mined -> liquidation mined, {r['liquidated']}/{r['rounds']} "
        "crashes, 1-s blocks (blocks p50 / p99 / max)",
        f"{r['blocks_p50']} / {r['blocks_p99']} / {r['blocks_max']} blocks",
        "",
        "",
        "p99 <= 1 block",
    )
    row(
        "  reaction in wall time (crash receipt seen -> liquidation log seen; p50 / p99)",
        f"{r['ms_p50']} / {r['ms_p99']} ms",
    )
    n = 1_000 if quick else 10_000
    r = _script(["-m", "bench.simulation", "--accounts", str(n), "--rounds", "2"])
    row(
        f"simulating a crash's actions, per chunk of 32 ({n:,} accounts; keeper/simulation.py: "
        "eth_simulateV1, p50 / p90)",
        " / ".join(f"{x} ms" for x in r["simulate_v1_ms_p50_p90"]),
        "eth_call + eth_estimateGas: "
        + " / ".join(f"{x} ms" for x in r["call_estimate_ms_p50_p90"]),
        f"{r['ratio_p50']}x",
        f"{r['verdicts_that_differ']} verdicts differ",
    )
    rounds, gap = (20, 10) if quick else (80, 110)
    r = _script(["-m", "bench.indexer", "--rounds", str(rounds), "--gap", str(gap), "--no-pg"])
    best = r["sqlite_chunk_2000"]
    row(
        f"indexing: backfill of a {r['history_blocks']:,}-block history (SQLite, 2,000-block "
        "chunks)",
        f"{best['blocks_per_s']:,} blocks/s, {best['logs_per_s']:,} logs/s",
        f"{r['sqlite_chunk_100']['blocks_per_s']:,} blocks/s at 100-block chunks",
        f"{best['http_round_trips']} round trips",
    )


def cluster_section(quick: bool) -> None:
    """Cluster mode: 1, 2 and 3 `keeper run` processes on one PostgreSQL (bench/cluster.py)."""
    n = 200 if quick else 1_000
    r = _script(["-m", "bench.cluster", "--accounts", str(n)], timeout=7200)
    for size in r["sizes"]:
        k = size["keepers"]
        row(
            f"cluster of {k} keeper(s), {n:,} accounts, 1-s blocks, fresh rounds every block: "
            "accounts re-margined per second (cluster-wide) / lag p50 / p99 / max",
            f"{size['accounts_per_s']:,} /s / {size['lag_p50']} / {size['lag_p99']} / "
            f"{size['lag_max']} blocks",
            "",
            "",
            "lag p99 <= 2" if k == 1 else "",
        )
        if size["failover"] is not None:
            f = size["failover"]
            row(
                f"  fail-over, {k} keepers: one SIGKILLed, blocks until its {f['shards']} "
                "shards are held again (lease ttl 2 s, heartbeat 0.5 s)",
                f"{f['blocks']} blocks ({f['seconds']} s)",
                "",
                "",
                "<= 3 blocks",
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--no-anvil", action="store_true", help="skip everything that needs anvil")
    args = ap.parse_args()
    n_book = 10_000 if args.quick else 100_000
    inc = [1_000, 10_000] if args.quick else [10_000, 100_000]
    n_chain = 100 if args.quick else 1_000
    t0 = time.perf_counter()
    if not args.no_anvil:
        anvil_section(n_chain)
    book_section(n_book, inc)
    gas_section()
    if not args.no_anvil:
        keeper_section(args.quick)
        cluster_section(args.quick)
    print_table(time.perf_counter() - t0)


def print_table(elapsed: float) -> None:
    head = ("figure", "value", "baseline (same run)", "ratio", "aim")
    widths = [max(len(r[i]) for r in [*ROWS, head]) for i in range(5)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in ROWS:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    load = os.getloadavg()
    print(
        f"\n{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"python {sys.version.split()[0]}, numpy {np.__version__}; total {elapsed:.0f} s"
    )


if __name__ == "__main__":
    main()
