"""Soak run: the demo market cycled for a bounded time, the real keeper behind a fault-injecting
RPC proxy; prints faults injected and survived, decisions, actions, duplicates, lost records,
memory growth and lag (keeper/devnet/soak.py). Exit status 1 when a duplicate or a lost record
is found or the keeper died.

    .venv/bin/python -m bench.soak --duration 600            (the 10-minute soak)
    .venv/bin/python -m bench.soak --duration 60 --accounts 12 --fault-rate 0.03 --json
    .venv/bin/python -m bench.soak --duration 180 --fault-rate 0.08 --fallback
    .venv/bin/python -m bench.soak --duration 180 --cluster 3     (cluster mode, PostgreSQL)

``--cluster N``: N ``keeper run`` processes on one PostgreSQL store (a fresh schema of
``--pg-url``), one killed at 40 % of the market and restarted at 60 %
(keeper/devnet/soak_cluster.py); the audit covers every keeper's address.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from keeper.devnet.soak import SOAK_FAULTS, SoakOptions, run_soak
from keeper.devnet.soak_cluster import ClusterSoakReport, run_cluster_soak
from keeper.devnet.soak_report import format_report, report_json


def main() -> int:
    d = SoakOptions()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=d.duration, help="seconds of market")
    ap.add_argument("--accounts", type=int, default=d.accounts, help="seeded per cycle")
    ap.add_argument("--fault-rate", type=float, default=d.fault_rate, help="per keeper request")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--cycle", type=float, default=d.cycle, help="seconds per market cycle")
    ap.add_argument("--faults", default=",".join(SOAK_FAULTS), help="kinds to mix in")
    ap.add_argument("--max-retries", type=int, default=d.max_retries, help="keeper RPC retries")
    ap.add_argument("--out", type=Path, default=d.out, help="keeper.db, logs, report.json")
    ap.add_argument(
        "--fallback",
        action="store_true",
        help="a second RPC endpoint without faults (anvil directly) after the faulty one",
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--cluster", type=int, default=0, help="N keeper processes (cluster mode)")
    ap.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="with --cluster: the PostgreSQL database (a fresh schema is used, then dropped)",
    )
    ap.add_argument(
        "--unhealthy-seconds",
        type=float,
        default=d.unhealthy_seconds,
        help="with --fallback: half-life of an endpoint's failure penalty",
    )
    args = ap.parse_args()
    faults = tuple(k for k in args.faults.split(",") if k)
    unknown = set(faults) - set(SOAK_FAULTS)
    if unknown:
        ap.error(f"unknown fault kinds {sorted(unknown)} (known: {', '.join(SOAK_FAULTS)})")
    opts = SoakOptions(
        duration=args.duration,
        accounts=args.accounts,
        fault_rate=args.fault_rate,
        seed=args.seed,
        out=args.out,
        cycle=args.cycle,
        faults=faults,
        max_retries=args.max_retries,
        fallback=args.fallback,
        unhealthy_seconds=args.unhealthy_seconds,
    )
    quiet = args.json
    if args.cluster:
        cluster = run_cluster_soak(opts, args.cluster, args.pg_url, say=print)
        body = json.dumps({**asdict(cluster), "ok": cluster.ok}, indent=2, default=str)
        (opts.out / "cluster-report.json").write_text(body)
        print(body if args.json else _cluster_summary(cluster))
        return 0 if cluster.ok else 1
    report = run_soak(opts, say=(lambda _m: None) if quiet else print)
    (opts.out / "report.json").write_text(report_json(report))
    if args.json:
        print(report_json(report), end="")
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def _cluster_summary(r: ClusterSoakReport) -> str:
    d = asdict(r)
    audit = d.pop("audit")
    lines = [f"{k}: {v}" for k, v in d.items()]
    lines.append(f"duplicates: {audit['duplicates']}")
    lines.append(f"lost records: {audit['lost']}")
    lines.append(f"transactions: {audit['transactions']}, effects: {audit['effects']}")
    lines.append(f"keeper transactions reverted: {audit['keeper_txs_reverted']}")
    lines += [f"  {r}" for r in audit["reverts"]]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
