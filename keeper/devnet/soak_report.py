"""The soak run's report (``keeper.devnet.soak``): its figures, the verdict, and the text
printed at the end of a run."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SoakReport:
    date: str
    options: dict[str, Any]
    seconds: float
    blocks: tuple[int, int]
    cycles: int
    accounts_seeded: int
    faults_injected: dict[str, int]
    faults_injected_total: int
    faults_survived: int
    lag_windows: int
    rpc_retries: int  # faults absorbed by the RPC layer's retries
    rpc_gave_up: int  # faults that reached a keeper job as a named error
    job_errors: dict[str, int]  # keeper jobs that failed, by error (retried at the next run)
    unexpected_errors: int  # log records with a traceback (not a named chain fault)
    keeper_alive: bool
    keeper_exit_status: int | None
    keeper_last_block: int | None
    head_at_stop: int
    decisions: dict[str, int]
    decisions_acted_on: int
    actions_sent: dict[str, int]  # transaction rows by decision action (the store)
    actions_counted: dict[str, int]  # the keeper's count of sends that went through at once
    transactions: dict[str, int]
    keeper_txs_onchain: int
    keeper_txs_reverted: int
    effects: dict[str, int]
    liquidations_acted: int
    gap_fillers: int
    open_at_end: int
    duplicates: dict[str, int]
    duplicates_total: int
    lost_records: dict[str, int]
    lost_records_total: int
    problems: list[str]
    rss_start_mb: float
    rss_end_mb: float
    rss_growth_mb: float
    rss_max_mb: float  # the highest of the per-block samples while the market played
    rss_peak_process_mb: float  # ru_maxrss: the whole process, setup and audit included
    rss_by_cycle_mb: list[float]
    lag_blocks: dict[str, float]
    warnings: dict[str, int] = field(default_factory=dict)
    #: Per RPC endpoint when the keeper had several (keeper.chain.fallback.EndpointState).
    rpc_endpoints: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.keeper_alive and self.duplicates_total == 0 and self.lost_records_total == 0


def lag_stats(lags: list[int]) -> dict[str, float]:
    if not lags:
        return {"p50": 0, "p99": 0, "max": 0, "mean": 0}
    s = sorted(lags)
    return {
        "p50": s[len(s) // 2],
        "p99": s[min(len(s) - 1, round(0.99 * (len(s) - 1)))],
        "max": s[-1],
        "mean": round(statistics.fmean(s), 2),
    }


def format_report(r: SoakReport) -> str:
    """The report as printed by bench/soak.py (and kept in RELIABILITY.md)."""
    o = r.options

    def kv(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    lines = [
        f"soak report ({r.date})",
        f"  run            {o['duration']:.0f} s of market, {r.cycles} cycle(s), "
        f"{r.accounts_seeded} accounts, blocks {r.blocks[0]}-{r.blocks[1]}, "
        f"{r.seconds:.0f} s wall, seed {o['seed']}",
        f"  faults         {r.faults_injected_total} injected at {o['fault_rate']} per request "
        f"({kv(r.faults_injected)}); {r.lag_windows} lag windows",
        f"  survived       {r.faults_survived} (keeper processed a new block after them); "
        f"RPC retries {r.rpc_retries}, given up to a job {r.rpc_gave_up}; "
        f"job errors: {kv(r.job_errors)}; tracebacks {r.unexpected_errors}",
        f"  keeper         {'alive' if r.keeper_alive else 'DEAD'}, exit status "
        f"{r.keeper_exit_status}, last block {r.keeper_last_block} (head {r.head_at_stop})",
        f"  decisions      {sum(r.decisions.values())} ({kv(r.decisions)}); "
        f"{r.decisions_acted_on} acted on",
        f"  actions sent   {kv(r.actions_sent)} (transactions by action; through at the first "
        f"try: {kv(r.actions_counted)})",
        f"  transactions   {kv(r.transactions)}; on chain {r.keeper_txs_onchain} "
        f"({r.keeper_txs_reverted} reverted); gap fillers {r.gap_fillers}; "
        f"open at end {r.open_at_end}",
        f"  effects        {kv(r.effects)}; liquidations acted on {r.liquidations_acted}",
        f"  duplicates     {r.duplicates_total} ({kv({k: v for k, v in r.duplicates.items()})})",
        f"  lost records   {r.lost_records_total} ({kv(r.lost_records)})",
        f"  memory (RSS)   start {r.rss_start_mb} MiB, end {r.rss_end_mb} MiB, growth "
        f"{r.rss_growth_mb:+} MiB, max {r.rss_max_mb} MiB (sampled each block); by cycle "
        f"{r.rss_by_cycle_mb}; process peak {r.rss_peak_process_mb} MiB (setup and audit too)",
        f"  lag (blocks)   p50 {r.lag_blocks['p50']}, p99 {r.lag_blocks['p99']}, "
        f"max {r.lag_blocks['max']}, mean {r.lag_blocks['mean']}",
        f"  verdict        {'OK' if r.ok else 'FAILED'}",
    ]
    if r.rpc_endpoints:
        first = r.rpc_endpoints[0]
        ends = "; ".join(
            f"{e['index']} {e['endpoint']}: {e['requests']} requests, {e['failures']} failed"
            for e in r.rpc_endpoints
        )
        lines.insert(
            -1,
            f"  endpoints      {ends}; {first.get('failovers', 0)} fail-overs, "
            f"{first.get('hedges', 0)} hedged (the next endpoint asked too)",
        )
    lines += [f"  problem        {p}" for p in r.problems]
    return "\n".join(lines)


def report_json(r: SoakReport) -> str:
    return json.dumps({**asdict(r), "ok": r.ok}, indent=2, default=str) + "\n"
