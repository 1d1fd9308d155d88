"""`keeper demo`: the whole keeper on a local devnet, watched live.

Starts anvil, deploys the protocol, seeds a market of accounts with realistic books (hedged
spreads, covered calls, naked shorts, futures with protective puts, calendars, isolated
sub-accounts, WETH collateral), starts the keeper service with embedded defaults (SQLite), then
plays a scripted market on 1-second blocks — drift, a volatility spike, a crash, a recovery and
the expiry of the dated instruments — while a live view shows accounts by health, the keeper's
actions, bounties and gas. It ends with a summary (also written as JSON) and leaves, in the
output folder, the anvil state dump (with historical states, for `keeper replay`), the keeper's
database, the deployment file and a keeper configuration pointing at them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlmodel import col, select
from web3 import Web3

from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.config import load_config_data
from keeper.deployment import Deployment, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import SeededMarket, seed_market
from keeper.devnet.market_script import PHASES, ScriptedFeeds, apply_phase, phase_plan
from keeper.logs import configure_logging
from keeper.secrets import register_secret
from keeper.service import KeeperService
from keeper.store.models import Decision, Transaction

WAD = 10**18
#: anvil's dev account #1 (public, devnet only): the keeper's signer in the demo.
DEMO_KEY_ENV = "KEEPER_DEMO_KEY"
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


@dataclass
class DemoOptions:
    accounts: int = 200
    seed: int = 7
    duration: float = 120.0  # seconds of scripted market (one block per second)
    out: Path = Path("var/demo")
    live: bool = True
    block_time: float = 1.0
    crash: float = 0.30  # ETH falls this much in one block (BTC 5/6 of it)


@dataclass
class DemoSummary:
    accounts: int
    books: dict[str, int]
    blocks: int
    phases: list[str]
    decisions: dict[str, int]
    transactions: dict[str, int]
    flags: int
    liquidations: int
    accounts_liquidated: int
    settlements: int
    bad_debt_resolved: int
    bounty_earned: str
    bounty_onchain: str
    gas_used: int
    gas_spent_wei: int
    healthy_untouched: int
    final_states: dict[str, int]
    keeper_exit_status: int
    seconds: float
    out: str
    files: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False  # Ctrl-C: the keeper was stopped before the script's end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keeper_config(anvil: Anvil, out: Path, deployment_file: Path) -> dict[str, Any]:
    """The demo keeper's configuration (the soak run starts from it too)."""
    return {
        "rpc": {"url": anvil.url, "chain_id": anvil.chain_id, "timeout_seconds": 30},
        "deployment": {"file": str(deployment_file)},
        "store": {"url": f"sqlite:///{out / 'keeper.db'}"},
        "signer": {"key_env": DEMO_KEY_ENV},
        "fees": {"max_fee_per_gas": "500 gwei", "priority_fee": "1 gwei", "stuck_after_seconds": 5},
        "decisions": {
            "min_profit": 0,
            "confirmations": 2,
            "sweep_interval_seconds": 20,
            "block_poll_interval_seconds": 0.25,
        },
        "metrics": {"bind": f"127.0.0.1:{_free_port()}"},
        "service": {"watchdog_seconds": 60, "settle_interval_seconds": 5},
    }


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    """The demo; returns the exit status (0 when the keeper ran and stopped cleanly)."""
    console = console or Console()
    t0 = time.monotonic()
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # A previous run's outputs go first: an interrupted run must not leave its partial state
    # next to an older summary.
    for stale in ("keeper.db", "keeper.db-wal", "keeper.db-shm", "state.json", "summary.json"):
        (out / stale).unlink(missing_ok=True)
    logging.getLogger().handlers.clear()
    log_file = (out / "keeper.log").open("w")
    configure_logging("INFO", stream=log_file)
    console.print("[bold]keeper demo[/bold]: building contracts, starting anvil…")
    ensure_built()
    anvil = Anvil(
        state=out / "state.json",
        log_path=out / "anvil.log",
        accounts=10,
        extra_args=["--preserve-historical-states"],
    )
    with anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
        deployment = deploy_protocol(w3)
        deployment_file = out / "deployment.json"
        deployment.write(deployment_file)
        chain = Chain.connect(anvil.url, deployment)
        console.print(f"deployed the protocol; seeding {opts.accounts} accounts…")
        market = seed_market(w3, deployment, chain, opts.accounts, seed=opts.seed)
        console.print(
            f"seeded {len(market.accounts)} accounts, {market.trades} trades "
            f"(blocks {market.blocks[0]}–{market.blocks[1]})"
        )
        os.environ[DEMO_KEY_ENV] = ANVIL_KEY_1
        register_secret(ANVIL_KEY_1)
        cfg_data = keeper_config(anvil, out, deployment_file)
        _write_toml(out / "keeper.toml", cfg_data)
        config = load_config_data(cfg_data)
        service = KeeperService(config)
        status: dict[str, int] = {}
        thread = threading.Thread(
            target=lambda: status.setdefault("exit", service.run(install_signals=False)),
            name="keeper",
            daemon=True,
        )
        # One block per second from here: the keeper polls the head by number. anvil takes
        # whole seconds (a float is refused with "invalid number") and must not fail silently:
        # on automine every feed round and keeper transaction would be a block of its own.
        anvil.rpc("evm_setIntervalMining", [max(1, round(opts.block_time))])
        thread.start()
        first_block = w3.eth.block_number
        feeds = ScriptedFeeds(w3, deployment, deployment.deployer)
        phases_done: list[str] = []
        interrupted = False
        try:
            _wait_started(service, thread)
            _play(opts, w3, deployment, feeds, service, market, console, phases_done)
            _settle_quietly(service, w3, opts)
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]interrupted: stopping the keeper cleanly…[/yellow]")
        finally:
            service.stop()
            thread.join(timeout=120)
        summary = _summary(
            opts, w3, deployment, market, service, first_block, phases_done, status, t0
        )
        chain.close()
    log_file.close()
    summary.interrupted = interrupted
    summary.files = {
        "state_dump": str(out / "state.json"),
        "database": str(out / "keeper.db"),
        "deployment": str(deployment_file),
        "config": str(out / "keeper.toml"),
        "log": str(out / "keeper.log"),
    }
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    _print_summary(console, summary)
    if interrupted:
        return 130
    return 0 if summary.keeper_exit_status == 0 else 1


def _write_toml(path: Path, data: dict[str, Any]) -> None:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    path.write_text("\n".join(lines))


def _wait_started(service: KeeperService, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 180
    while service.health.last_block is None:
        if not thread.is_alive():
            raise RuntimeError("the keeper stopped during start-up (see keeper.log)")
        if time.monotonic() > deadline:
            raise RuntimeError("the keeper did not start within 180 s (see keeper.log)")
        time.sleep(0.1)


def _play(
    opts: DemoOptions,
    w3: Web3,
    deployment: Deployment,
    feeds: ScriptedFeeds,
    service: KeeperService,
    market: SeededMarket,
    console: Console,
    phases_done: list[str],
) -> None:
    rng = random.Random(opts.seed)
    steps = max(len(PHASES), int(opts.duration / opts.block_time))
    plan = phase_plan(steps)
    expiry = max(int(i["expiry"]) for i in deployment.instruments)

    def step(phase: str, first: bool) -> None:
        apply_phase(phase, first, feeds, rng, crash=opts.crash, expiry=expiry)

    view = _LiveView(service, market, feeds, deployment)
    with Live(
        view.render("starting"), console=console, refresh_per_second=4, transient=not opts.live
    ) as live:
        last = None
        for phase in plan:
            first = phase != last
            if first:
                phases_done.append(phase)
                if not opts.live:
                    console.print(f"phase: {phase}")
            step(phase, first)
            last = phase
            end = time.monotonic() + opts.block_time
            while time.monotonic() < end:
                live.update(view.render(phase))
                time.sleep(0.2)
                if not service_alive(service):
                    raise RuntimeError("the keeper stopped (see keeper.log)")
        live.update(view.render("done"))


def service_alive(service: KeeperService) -> bool:
    return not service.health.stalled


def _settle_quietly(service: KeeperService, w3: Web3, opts: DemoOptions) -> None:
    """Let the keeper finish what the last blocks asked for (settlements, liquidations)."""
    start = time.monotonic()
    settle = max(10.0, 8 * opts.block_time)
    # Normally a few quiet blocks; on a loaded machine, as long as transactions are still
    # open (up to a minute), so the summary does not report unfinished work as the result.
    cap = start + max(60.0, 4 * settle)
    while time.monotonic() < cap:
        if service.store is None:
            return
        with service.store.session() as s:
            open_tx = s.exec(select(Transaction).where(Transaction.final == False)).all()  # noqa: E712
        if not open_tx and time.monotonic() - start > settle - 4 * opts.block_time:
            return
        time.sleep(0.5)


class _LiveView:
    def __init__(
        self, service: KeeperService, market: SeededMarket, feeds: ScriptedFeeds, d: Deployment
    ) -> None:
        self.service = service
        self.market = market
        self.feeds = feeds
        self.symbols = [u["symbol"] for u in d.underlyings]

    def render(self, phase: str) -> Table:
        s = self.service
        t = Table(title=f"keeper demo — phase: {phase}", show_header=False, expand=False)
        t.add_column("what", style="bold")
        t.add_column("value")
        t.add_row("block", str(s.health.last_block))
        t.add_row(
            "market",
            "   ".join(
                f"{sym} {p / 1e8:,.0f} (IV {v / 1e6:.0f}%)"
                for sym, p, v in zip(self.symbols, self.feeds.spot, self.feeds.iv, strict=True)
            ),
        )
        states = s.last_by_state or {}
        t.add_row("accounts", "  ".join(f"{k}: {v}" for k, v in sorted(states.items())) or "-")
        t.add_row("actions", "  ".join(f"{k}: {v}" for k, v in sorted(s.actions.items())) or "-")
        m = s.metrics
        t.add_row("bounty earned", f"{_value(m.bounty) / WAD:,.2f} USDC")
        t.add_row("gas", f"{int(_value(m.gas_used)):,} gas, {_value(m.gas_spent) / 1e18:.5f} ETH")
        t.add_row("pending tx", str(int(_value(m.pending_tx))))
        return t


def _value(metric: Any) -> float:
    for fam in metric.collect():
        for sample in fam.samples:
            if sample.name.endswith("_total") or sample.name == fam.name:
                return float(sample.value)
    return 0.0


def _summary(
    opts: DemoOptions,
    w3: Web3,
    deployment: Deployment,
    market: SeededMarket,
    service: KeeperService,
    first_block: int,
    phases: list[str],
    status: dict[str, int],
    t0: float,
) -> DemoSummary:
    ch = bind(w3, deployment, "ClearingHouse")
    last = w3.eth.block_number
    logs: dict[str, list[Any]] = {}
    for name in (
        "MarginCall",
        "Liquidation",
        "InstrumentSettled",
        "PositionSettled",
        "BadDebtResolved",
    ):
        event = getattr(ch.events, name)()
        logs[name] = event.get_logs(from_block=first_block, to_block=last)
    liquidated = {int(e["args"]["account"]) for e in logs["Liquidation"]}
    flagged = {int(e["args"]["account"]) for e in logs["MarginCall"]}
    decisions: Counter[str] = Counter()
    txs: Counter[str] = Counter()
    gas_used = 0
    gas_wei = 0
    bounty = 0
    final_states: Counter[str] = Counter()
    unhealthy_ever: set[str] = set()
    from keeper.store import Store

    store = Store.open(f"sqlite:///{opts.out.resolve() / 'keeper.db'}")
    try:
        with store.session() as s:
            latest: dict[str, Decision] = {}
            for d in s.exec(select(Decision).order_by(col(Decision.id))).all():
                decisions[d.action] += 1
                latest[d.account] = d
                if d.state != "healthy":
                    unhealthy_ever.add(d.account)
            for d in latest.values():
                final_states[d.state] += 1
            for t in s.exec(select(Transaction)).all():
                txs[str(t.status)] += 1
                bounty += t.bounty or 0
                if t.gas_used is not None and t.effective_gas_price is not None:
                    gas_used += t.gas_used
                    gas_wei += t.gas_used * t.effective_gas_price
    finally:
        store.close()
    keeper_address = service.address or ""
    onchain = int(ch.functions.bounties(keeper_address).call()) if keeper_address else 0
    touched = liquidated | flagged
    untouched = sum(
        1
        for a in market.accounts
        if str(a.account) not in unhealthy_ever and a.account not in touched
    )
    return DemoSummary(
        accounts=len(market.accounts),
        books=dict(Counter(a.book for a in market.accounts)),
        blocks=last - first_block,
        phases=phases,
        decisions=dict(decisions),
        transactions=dict(txs),
        flags=len(logs["MarginCall"]),
        liquidations=len(logs["Liquidation"]),
        accounts_liquidated=len(liquidated),
        settlements=len(logs["InstrumentSettled"]) + len(logs["PositionSettled"]),
        bad_debt_resolved=len(logs["BadDebtResolved"]),
        bounty_earned=f"{bounty / WAD:.6f}",
        bounty_onchain=f"{onchain / WAD:.6f}",
        gas_used=gas_used,
        gas_spent_wei=gas_wei,
        healthy_untouched=untouched,
        final_states=dict(final_states),
        keeper_exit_status=status.get("exit", -1),
        seconds=round(time.monotonic() - t0, 1),
        out=str(opts.out),
    )


def _print_summary(console: Console, s: DemoSummary) -> None:
    t = Table(title="keeper demo — summary", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    rows: list[tuple[str, Any]] = [
        ("accounts", f"{s.accounts}  {s.books}"),
        ("blocks played", s.blocks),
        ("phases", ", ".join(s.phases)),
        ("decisions recorded", s.decisions),
        ("transactions", s.transactions),
        ("margin calls (flags)", s.flags),
        ("liquidations", f"{s.liquidations} ({s.accounts_liquidated} accounts)"),
        ("settlements", s.settlements),
        ("bad debt resolved", s.bad_debt_resolved),
        ("bounty earned", f"{s.bounty_earned} USDC (on-chain credit {s.bounty_onchain})"),
        ("gas", f"{s.gas_used:,} gas = {s.gas_spent_wei / 1e18:.6f} ETH"),
        ("healthy accounts never touched", s.healthy_untouched),
        ("final states", s.final_states),
        ("keeper exit status", s.keeper_exit_status),
        ("time", f"{s.seconds} s"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    console.print(f"left for replay in {s.out}: {', '.join(s.files.values())}")
    # One line, never wrapped: it is meant to be copied and run as printed.
    console.print(
        f"replay it: {keeper_command()} replay --state-dump {s.files.get('state_dump')} "
        f"--deployment {s.files.get('deployment')} --db sqlite:///{s.files.get('database')}",
        soft_wrap=True,
        highlight=False,
    )


def keeper_command() -> str:
    """How to call the keeper CLI from here: the venv's console script (relative to the
    working directory when inside it), or ``python -m keeper`` without one."""
    exe = Path(sys.executable).parent / "keeper"
    if not exe.exists():
        return f"{sys.executable} -m keeper"
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


Runner = Callable[[DemoOptions, Console | None], int]
