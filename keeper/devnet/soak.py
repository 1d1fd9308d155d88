"""The soak run: the demo market, cycled for a bounded time, with random RPC faults.

anvil, the deployed protocol and a seeded market of accounts (``keeper.devnet.market``); the
real ``KeeperService`` in a thread, talking to anvil through a ``FaultProxy`` that injects a
random mix of faults at ``fault_rate`` per request (``rpc_error``, ``http_429``, ``http_500``,
``timeout``, ``drop``, ``drop_after``, ``truncate``, ``malformed``, ``short_batch``) and opens
windows where the head lags 1-3 blocks behind. Meanwhile the scripted market
(``keeper.devnet.market_script``: drift, vol spike, crash, recovery, expiry) plays on 1-second
blocks, in cycles: each new cycle puts the feeds back to their base, lists a new dated strip
and seeds fresh accounts. The market driver talks to anvil directly (no faults).

At the end the faults stop, the keeper drains its open transactions and is stopped, the chain
is frozen, and ``keeper.devnet.soak_audit`` checks the chain against the store (duplicates,
lost records). The report adds faults injected and survived, decisions and actions, memory
(RSS from /proc/self/statm at start and end) and the keeper's lag behind the head.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import select
from web3 import Web3
from web3.types import RPCEndpoint

from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.config import load_config_data
from keeper.demo import keeper_config
from keeper.deployment import Deployment, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.fault_proxy import FAULT_KINDS, FaultProxy
from keeper.devnet.market import list_next_expiry, seed_market
from keeper.devnet.market_script import ScriptedFeeds, apply_phase, phase_plan, set_block_time
from keeper.devnet.soak_audit import Audit, audit
from keeper.devnet.soak_report import SoakReport, lag_stats
from keeper.logs import configure_logging
from keeper.secrets import register_secret
from keeper.service import KeeperService
from keeper.store import Store
from keeper.store.models import Transaction

KEY_ENV = "KEEPER_SOAK_KEY"
#: anvil's dev account #1 (public, devnet only): the keeper's signer.
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
#: Every fault the soak mixes in: the proxy's kinds, and "lag" (head lag windows).
SOAK_FAULTS = (*FAULT_KINDS, "lag")


@dataclass
class SoakOptions:
    duration: float = 600.0  # seconds of scripted market
    accounts: int = 60  # seeded at the start of every cycle
    fault_rate: float = 0.02  # probability that a keeper request is hit by a fault
    seed: int = 1
    out: Path = Path("var/soak")
    cycle: float = 120.0  # seconds per market cycle (drift ... expiry)
    block_time: int = 1  # seconds (anvil's interval mining takes whole seconds)
    crash: float = 0.30
    faults: tuple[str, ...] = SOAK_FAULTS
    #: The keeper's RPC retries: fewer than production's 3, so faults also reach its jobs.
    max_retries: int = 1
    rpc_timeout: float = 5.0  # the keeper's client timeout; a "timeout" fault hangs longer
    drain: float = 45.0  # at most this long without faults for open transactions to settle
    #: A second RPC endpoint without faults (anvil directly) after the faulty one:
    #: ``[rpc] fallback_urls`` (keeper.chain.fallback).
    fallback: bool = False
    #: ``[rpc] unhealthy_seconds`` with the fallback: shorter = the faulty endpoint is tried
    #: again sooner (more faults hit, more fail-overs).
    unhealthy_seconds: float = 30.0


class _LogCounter(logging.Handler):
    """Counts the keeper's warnings and errors by message, and records with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_message: Counter[str] = Counter()
        self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        # The message template, not the formatted text: one entry per kind of warning.
        self.by_message[f"{record.name}: {record.msg}"[:160]] += 1
        if record.exc_info:
            self.tracebacks += 1


def rss_mb() -> float:
    """Resident set size of this process (keeper thread, proxy and driver), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _keeper_config(
    opts: SoakOptions, anvil: Anvil, proxy: FaultProxy, out: Path, deployment_file: Path
) -> dict[str, Any]:
    """The demo keeper's configuration, talking to anvil through the proxy; no metrics server,
    a periodic consistency check."""
    cfg = keeper_config(anvil, out, deployment_file)
    cfg["rpc"].update(url=proxy.url, timeout_seconds=opts.rpc_timeout, max_retries=opts.max_retries)
    if opts.fallback:
        cfg["rpc"].update(fallback_urls=[anvil.url], unhealthy_seconds=opts.unhealthy_seconds)
    cfg["signer"] = {"key_env": KEY_ENV}
    cfg["metrics"] = {"enabled": False}
    cfg["service"].update(watchdog_seconds=90, consistency_interval_seconds=30)
    return cfg


def program_faults(proxy: FaultProxy, opts: SoakOptions) -> None:
    """One rule per request-level kind, at rates that add up to ``fault_rate`` per request
    (the rules are tried in turn: 1 - (1 - r)^k = fault_rate)."""
    kinds = [k for k in opts.faults if k in FAULT_KINDS]
    if not kinds or opts.fault_rate <= 0:
        return
    each = 1 - (1 - min(opts.fault_rate, 0.99)) ** (1 / len(kinds))
    for kind in kinds:
        # A timeout hangs past the keeper's client timeout; 429 asks for a 1-second wait.
        proxy.add(kind, rate=each, hang_seconds=opts.rpc_timeout + 1, retry_after=1)


class _Keeper:
    """The keeper service in a thread, as `keeper run` runs it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.service = KeeperService(load_config_data(config))
        self.status: int | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="keeper", daemon=True)

    def _run(self) -> None:
        try:
            self.status = self.service.run(install_signals=False)
        except Exception as exc:  # the report says the keeper died, and why
            self.error = f"{type(exc).__name__}: {exc}"
            logging.getLogger("keeper.soak").exception("the keeper died")

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.service.health.stalled

    def wait_started(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.service.health.last_block is None:
            if not self.thread.is_alive():
                raise RuntimeError(f"the keeper stopped during start-up: {self.error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the keeper did not start within {timeout} s")
            time.sleep(0.1)


class _Sampler:
    """Per-block samples: the keeper's lag behind the head, faults survived, memory."""

    def __init__(self, w3: Web3, keeper: _Keeper, proxy: FaultProxy) -> None:
        self.w3 = w3
        self.keeper = keeper
        self.proxy = proxy
        self.lags: list[int] = []
        self.survived = 0
        self.rss_max = 0.0  # MiB, sampled once a block
        self._seen_block: int | None = None
        self._injected_before = 0

    def sample(self) -> None:
        head = self.w3.eth.block_number
        self.rss_max = max(self.rss_max, rss_mb())
        last = self.keeper.service.health.last_block
        injected = self.proxy.injected
        if last is not None:
            self.lags.append(max(0, head - last))
        # A fault is survived once the keeper, alive, processed a new block after it.
        if self.keeper.alive and last is not None and last != self._seen_block:
            self.survived = self._injected_before
            self._seen_block = last
        self._injected_before = injected


@dataclass
class SoakChain:
    """What the audit ran against, while the chain is still up (``run_soak(after_audit=)``)."""

    w3: Web3
    deployment: Deployment
    store_url: str
    keeper: str
    blocks: tuple[int, int]


def run_soak(
    opts: SoakOptions,
    say: Callable[[str], None] = print,
    *,
    after_audit: Callable[[SoakChain], None] | None = None,
) -> SoakReport:
    """The soak run; ``after_audit`` is called with the frozen chain before anvil stops (the
    tests use it to check that the audit catches a tampered store)."""
    t0 = time.monotonic()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("keeper.db", "keeper.db-wal", "keeper.db-shm"):
        (out / stale).unlink(missing_ok=True)
    logging.getLogger().handlers.clear()
    log_file = (out / "keeper.log").open("w")
    configure_logging("INFO", stream=log_file)
    counter = _LogCounter()
    logging.getLogger().addHandler(counter)
    ensure_built()
    os.environ[KEY_ENV] = ANVIL_KEY_1
    register_secret(ANVIL_KEY_1)
    try:
        with (
            Anvil(log_path=out / "anvil.log", accounts=10) as anvil,
            FaultProxy(anvil.url, seed=opts.seed, record_methods=False) as proxy,
        ):
            return _soak(opts, anvil, proxy, out, counter, date, t0, say, after_audit)
    finally:
        logging.getLogger().removeHandler(counter)
        log_file.close()


def _soak(
    opts: SoakOptions,
    anvil: Anvil,
    proxy: FaultProxy,
    out: Path,
    counter: _LogCounter,
    date: str,
    t0: float,
    say: Callable[[str], None],
    after_audit: Callable[[SoakChain], None] | None,
) -> SoakReport:
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
    deployment = deploy_protocol(w3)
    deployment_file = out / "deployment.json"
    deployment.write(deployment_file)
    chain = Chain.connect(anvil.url, deployment)
    cycles = max(1, round(opts.duration / opts.cycle))
    say(f"soak: {opts.duration:.0f} s, {cycles} cycle(s), {opts.accounts} accounts per cycle, ")
    say(f"      fault rate {opts.fault_rate:.3f} per request ({', '.join(opts.faults)})")
    if opts.fallback:
        say("      a second RPC endpoint without faults (fallback_urls)")
    market = seed_market(w3, deployment, chain, opts.accounts, seed=opts.seed)
    seeded = len(market.accounts)
    program_faults(proxy, opts)
    keeper = _Keeper(_keeper_config(opts, anvil, proxy, out, deployment_file))
    set_block_time(w3, opts.block_time)
    first_block = w3.eth.block_number
    keeper.thread.start()
    keeper.wait_started()
    rss_start = rss_mb()
    rss_cycles: list[float] = []
    sampler = _Sampler(w3, keeper, proxy)
    rng = random.Random(opts.seed)
    feeds = ScriptedFeeds(w3, deployment, deployment.deployer)
    lag = _LagWindows(proxy, opts, random.Random(opts.seed + 1))
    steps = max(5, int(opts.duration / cycles / opts.block_time))
    for c in range(cycles):
        if not keeper.alive:
            break
        if c > 0:
            deployment, n = _new_cycle(w3, deployment, chain, feeds, opts, c)
            seeded += n
        expiry = max(int(i["expiry"]) for i in deployment.instruments)
        say(f"cycle {c + 1}/{cycles}: {seeded} accounts, faults so far {proxy.injected}")
        last_phase = None
        for phase in phase_plan(steps):
            apply_phase(phase, phase != last_phase, feeds, rng, crash=opts.crash, expiry=expiry)
            last_phase = phase
            lag.step()
            end = time.monotonic() + opts.block_time
            while time.monotonic() < end:
                time.sleep(0.2)
            sampler.sample()
            if not keeper.alive:
                say("the keeper died (see keeper.log)")
                break
        rss_cycles.append(round(rss_mb(), 1))
    rss_end = rss_mb()
    say(f"market done; draining without faults (at most {opts.drain:.0f} s)")
    proxy.clear()
    _drain(keeper, w3, opts)
    sampler.sample()
    alive = keeper.alive
    keeper.service.stop()
    keeper.thread.join(timeout=180)
    set_block_time(w3, 0)  # freeze the chain for the audit
    last_block = w3.eth.block_number
    service = keeper.service
    # The soak's keeper talks HTTP through RetryingHTTPProvider, which counts its retries.
    provider = service.chain.w3.provider if service.chain is not None else None
    provider_stats = getattr(provider, "stats", None)
    store_url = f"sqlite:///{out / 'keeper.db'}"
    store = Store.open(store_url)
    try:
        result = audit(w3, deployment, store, service.address or "", first_block, last_block)
    finally:
        store.close()
    if after_audit is not None:
        blocks = (first_block, last_block)
        after_audit(SoakChain(w3, deployment, store_url, service.address or "", blocks))
    chain.close()
    return _report(
        opts, date, t0, result, service, keeper, alive, proxy, sampler, provider_stats,
        counter, seeded, cycles, last_block, rss_start, rss_end, rss_cycles, lag.windows,
    )  # fmt: skip


class _LagWindows:
    """Now and then the proxy answers the head 1-3 blocks behind, for 2-6 blocks."""

    def __init__(self, proxy: FaultProxy, opts: SoakOptions, rng: random.Random) -> None:
        self.proxy = proxy
        self.rng = rng
        self.enabled = "lag" in opts.faults and opts.fault_rate > 0
        self.rate = min(0.5, 2 * opts.fault_rate)  # windows started per block
        self.left = 0
        self.windows = 0

    def step(self) -> None:
        if not self.enabled:
            return
        if self.left > 0:
            self.left -= 1
            if self.left == 0:
                self.proxy.lag_blocks = 0
            return
        if self.rng.random() < self.rate:
            self.proxy.lag_blocks = self.rng.randint(1, 3)
            self.left = self.rng.randint(2, 6)
            self.windows += 1


def _new_cycle(
    w3: Web3,
    deployment: Deployment,
    chain: Chain,
    feeds: ScriptedFeeds,
    opts: SoakOptions,
    c: int,
) -> tuple[Deployment, int]:
    """Feeds back to base, a new dated strip, fresh accounts (mined at once, on automine)."""
    set_block_time(w3, 0)
    w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [True])
    try:
        feeds.spot, feeds.iv = list(feeds.base_spot), list(feeds.base_iv)
        feeds.push()
        deployment = list_next_expiry(w3, deployment)
        market = seed_market(w3, deployment, chain, opts.accounts, seed=opts.seed * 1000 + c)
    finally:
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [False])
        set_block_time(w3, opts.block_time)
    return deployment, len(market.accounts)


def _drain(keeper: _Keeper, w3: Web3, opts: SoakOptions) -> None:
    """Blocks keep coming, faults stopped: wait until every transaction row is final and the
    keeper processed a block after that (or ``drain`` seconds passed)."""
    deadline = time.monotonic() + opts.drain
    quiet_since: float | None = None
    while time.monotonic() < deadline and keeper.alive:
        store = keeper.service.store
        if store is None:
            return
        with store.session() as s:
            open_tx = s.exec(select(Transaction).where(Transaction.final == False)).all()  # noqa: E712
        head = w3.eth.block_number
        caught_up = (keeper.service.health.last_block or 0) >= head - 1
        if not open_tx and caught_up:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 4 * opts.block_time:
                return
        else:
            quiet_since = None
        time.sleep(0.5)


def _report(
    opts: SoakOptions,
    date: str,
    t0: float,
    result: Audit,
    service: KeeperService,
    keeper: _Keeper,
    alive: bool,
    proxy: FaultProxy,
    sampler: _Sampler,
    stats: Any,
    counter: _LogCounter,
    seeded: int,
    cycles: int,
    last_block: int,
    rss_start: float,
    rss_end: float,
    rss_cycles: list[float],
    lag_windows: int,
) -> SoakReport:
    job_errors: Counter[str] = Counter()
    for fam in service.metrics.rpc_errors.collect():
        for sample in fam.samples:
            if sample.name.endswith("_total") and sample.value:
                job_errors[sample.labels.get("kind", "?")] += int(sample.value)
    injected = {k: n for k, n in sorted(proxy.counts.items()) if n}
    options = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
    return SoakReport(
        date=date,
        options=options,
        seconds=round(time.monotonic() - t0, 1),
        blocks=result.blocks,
        cycles=cycles,
        accounts_seeded=seeded,
        faults_injected=injected,
        faults_injected_total=proxy.injected,
        faults_survived=sampler.survived,
        lag_windows=lag_windows,
        rpc_retries=stats.retries if stats is not None else 0,
        rpc_gave_up=stats.gave_up if stats is not None else 0,
        job_errors=dict(job_errors),
        unexpected_errors=counter.tracebacks,
        keeper_alive=alive and keeper.error is None,
        keeper_exit_status=keeper.status,
        keeper_last_block=service.health.last_block,
        head_at_stop=last_block,
        decisions=result.decisions,
        decisions_acted_on=result.decisions_acted_on,
        actions_sent=result.actions_sent,
        actions_counted=dict(service.actions),
        transactions=result.transactions,
        keeper_txs_onchain=result.keeper_txs_onchain,
        keeper_txs_reverted=result.keeper_txs_reverted,
        effects=result.effects,
        liquidations_acted=result.liquidations_acted,
        gap_fillers=result.gap_fillers,
        open_at_end=result.open_at_end,
        duplicates=result.duplicates,
        duplicates_total=result.duplicates_total,
        lost_records=result.lost,
        lost_records_total=result.lost_total,
        problems=result.examples,
        rss_start_mb=round(rss_start, 1),
        rss_end_mb=round(rss_end, 1),
        rss_growth_mb=round(rss_end - rss_start, 1),
        rss_max_mb=round(sampler.rss_max, 1),
        rss_peak_process_mb=round(_peak_rss_mb(), 1),
        rss_by_cycle_mb=rss_cycles,
        lag_blocks=lag_stats(sampler.lags),
        rpc_endpoints=_endpoints(service),
        warnings=dict(counter.by_message.most_common(15)),
    )


def _endpoints(service: KeeperService) -> list[dict[str, Any]]:
    """Health, requests and failures per endpoint when the keeper had several
    (keeper.chain.fallback); empty with one."""
    provider = service.chain.w3.provider if service.chain is not None else None
    states = getattr(provider, "states", None)
    if not callable(states):
        return []
    counts = {
        "failovers": getattr(provider, "failovers", 0),
        "hedges": getattr(provider, "hedges", 0),
    }
    return [{**asdict(st), **counts} for st in states()]
