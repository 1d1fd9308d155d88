"""`keeper demo`: the whole keeper on a local devnet, watched live.

Starts anvil, deploys the protocol, seeds a market of accounts with realistic books (hedged
spreads, covered calls, naked shorts, futures with protective puts, calendars, isolated
sub-accounts, WETH collateral), starts the keeper service with embedded defaults (SQLite), then
plays a scripted market on 1-second blocks — drift, a volatility spike, a crash, a recovery and
the expiry of the dated instruments — while a live view shows accounts by health, the keeper's
actions, bounties and gas. It ends with a summary (also written as JSON) and leaves, in the
output folder, the anvil state dump (with historical states, for `keeper replay`), the keeper's
database, the deployment file and a keeper configuration pointing at them.

Reproducible by seed: the chain starts at a fixed genesis time and every block is one
``block_time`` after the previous one, whatever the wall clock says; the demo mines each block
itself, right after pushing that block's oracle rounds. So one seed gives the same deployment,
books, trades and price path block by block; only what the keeper's own timing decides (which
block its transactions land in, and what follows from that) can differ (docs/demo.md).
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
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, JustifyMethod
from rich.live import Live
from rich.table import Table
from sqlmodel import col, select
from web3 import Web3

from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.config import load_config_data
from keeper.demo_recalibration import (
    DEMO_DELAY,
    RECALIBRATE_EVERY,
    RECALIBRATION,
    summarise,
)
from keeper.deployment import Deployment, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import SeededMarket, seed_market
from keeper.devnet.market_script import PHASES, ScriptedFeeds, apply_phase, phase_plan
from keeper.logs import configure_logging
from keeper.secrets import register_secret
from keeper.service import KeeperService
from keeper.store.models import Decision, Transaction

WAD = 10**18
#: The demo chain's genesis time (2026-01-01 00:00 UTC): the dated instruments' expiry and every
#: option price follow from the block timestamps, so they must not depend on the wall clock.
GENESIS_TIMESTAMP = 1_767_225_600
#: Seconds between two progress lines when the output is not a terminal.
PROGRESS_EVERY = 5.0
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
class ActionCount:
    """One kind of keeper action: decisions taken, transactions sent for them, how many were
    final (mined successfully and confirmed), and how many of the keeper's final transactions
    carry the action's event on chain."""

    decided: int = 0
    sent: int = 0
    final: int = 0
    on_chain: int = 0


@dataclass
class DemoSummary:
    seed: int
    #: Accounts the demo seeded (one book each); ``account_states`` sums to it.
    accounts: int
    books: dict[str, int]
    #: Final state of each seeded account: its last recorded decision ("not assessed" if none).
    account_states: dict[str, int]
    #: Seeded accounts never flagged, liquidated or seen in a distressed state (margin call,
    #: liquidatable, flagged, bad debt, no price, invalid): healthy throughout, expiry aside.
    never_distressed: int
    #: Protocol accounts the keeper also assessed (not seeded): name -> final state.
    protocol_accounts: dict[str, str]
    blocks: int
    first_block: int
    last_block: int
    phases: list[str]
    #: Per action kind ("none": a state recorded with no action): decided / sent / final /
    #: on_chain (ActionCount).
    actions: dict[str, dict[str, int]]
    transactions: dict[str, int]  # by status
    flags: int
    accounts_flagged: int
    liquidations: int
    accounts_liquidated: int
    instruments_expired: int
    instruments_settled: int
    accounts_settled: int
    positions_settled: int
    bad_debt_resolved: int
    #: Perpetual funding: pokes on chain (FundingPoked), and the funding paid by the payers,
    #: realised (FundingSettled) or accrued (accruedFunding at the end), in USDC; the receivers
    #: got exactly as much (funding is zero-sum, ``funding_received`` says it).
    funding_pokes: int
    funding_paid: str
    funding_received: str
    bounty_earned: str
    bounty_onchain: str
    gas_used: int
    gas_spent_wei: int
    keeper_exit_status: int
    seconds: float
    out: str
    files: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False  # Ctrl-C: the keeper was stopped before the script's end
    #: Recalibrations queued/executed, the grid over the run, and the crash counterfactual
    #: (keeper/demo_recalibration.py).
    recalibration: dict[str, Any] = field(default_factory=dict)


#: States that count as distress for ``never_distressed`` (settleable and empty do not: an
#: expiry or a closed book is not a margin problem).
DISTRESS = frozenset(
    {"margin_call", "liquidatable", "flagged_grace", "bad_debt", "no_price", "invalid"}
)
#: The order states are listed in.
STATE_ORDER = (
    "healthy",
    "margin_call",
    "flagged_grace",
    "liquidatable",
    "settleable",
    "bad_debt",
    "empty",
    "no_price",
    "invalid",
    "not assessed",
)
#: Keeper action -> the ClearingHouse event its successful transaction emits.
ACTION_EVENTS = {
    "flag": "MarginCall",
    "clear_flag": "MarginCallCleared",
    "liquidate": "Liquidation",
    "settle_instrument": "InstrumentSettled",
    "settle_account": "PositionSettled",
    "resolve_bad_debt": "BadDebtResolved",
    "poke_funding": "FundingPoked",
}
INSTRUMENT_PREFIX = "instrument:"  # decisions about an instrument (settlement), not an account


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
        "service": {
            "watchdog_seconds": 60,
            "settle_interval_seconds": 5,
            "funding_interval_seconds": 5,
            "recalibrate_interval_seconds": RECALIBRATE_EVERY,
        },
        "recalibration": dict(RECALIBRATION),
    }


class _Miner:
    """Mines the demo's blocks: one per call, ``seconds`` of chain time after the previous one
    (anvil_setBlockTimestampInterval), so block timestamps never depend on the wall clock or
    on how fast the machine is."""

    def __init__(self, anvil: Anvil, seconds: int) -> None:
        self.anvil = anvil
        anvil.rpc("anvil_setBlockTimestampInterval", [seconds])

    def manual(self) -> None:
        """From here on blocks are mined only by ``mine``: transactions wait in the pool."""
        anvil = self.anvil
        anvil.rpc("evm_setAutomine", [False])
        anvil.rpc("evm_setIntervalMining", [0])

    def mine(self) -> None:
        self.anvil.rpc("evm_mine", [], timeout=60)


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
        timestamp=GENESIS_TIMESTAMP,
        extra_args=["--preserve-historical-states"],
    )
    with anvil:
        # Before the first transaction: every block of the run, deployment included, is one
        # block time after the previous one.
        miner = _Miner(anvil, max(1, round(opts.block_time)))
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
        deployment = deploy_protocol(w3, recalibration_delay=DEMO_DELAY)
        ch = bind(w3, deployment, "ClearingHouse")
        # The keeper's signer (anvil #1) queues recalibrations: it holds the risk operator role.
        risk_operator = ch.functions.RISK_OPERATOR().call()
        w3.eth.wait_for_transaction_receipt(
            ch.functions.setRole(risk_operator, list(w3.eth.accounts)[1], True).transact(
                {"from": deployment.deployer}
            )
        )
        original_params = bytes(ch.functions.riskParams().call())
        deployment_file = out / "deployment.json"
        deployment.write(deployment_file)
        chain = Chain.connect(anvil.url, deployment)
        console.print(
            f"deployed the protocol; seeding {opts.accounts} accounts (seed {opts.seed})…"
        )
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
        # One block per block time from here, mined by the demo right after that block's
        # oracle rounds are sent (never on automine: every feed round and keeper transaction
        # would be a block of its own).
        miner.manual()
        thread.start()
        first_block = w3.eth.block_number
        feeds = ScriptedFeeds(w3, deployment, deployment.deployer)
        phases_done: list[str] = []
        marks: dict[str, int] = {}
        interrupted = False
        # The live view needs a terminal; piped or captured output gets progress lines.
        live = opts.live and console.is_terminal
        try:
            _wait_started(service, thread)
            _play(
                opts, miner, deployment, feeds, service, market, console, phases_done, live,
                marks,
            )  # fmt: skip
            _settle_quietly(service, miner, opts)
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]interrupted: stopping the keeper cleanly…[/yellow]")
        finally:
            service.stop()
            thread.join(timeout=120)
        summary = _summary(
            opts, w3, deployment, market, service, first_block, phases_done, status, t0
        )
        summary.recalibration = summarise(
            w3,
            chain,
            deployment,
            original_params,
            [a.account for a in market.accounts],
            first_block,
            marks.get("crash"),
        ).as_dict()
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
    miner: _Miner,
    deployment: Deployment,
    feeds: ScriptedFeeds,
    service: KeeperService,
    market: SeededMarket,
    console: Console,
    phases_done: list[str],
    live: bool,
    marks: dict[str, int],
) -> None:
    rng = random.Random(opts.seed)
    steps = max(len(PHASES), int(opts.duration / opts.block_time))
    plan = phase_plan(steps)
    expiry = max(int(i["expiry"]) for i in deployment.instruments)
    view = _LiveView(service, market, feeds, deployment)
    with (
        Live(view.render("starting"), console=console, refresh_per_second=4)
        if live
        else (nullcontext()) as screen
    ):
        last = None
        next_progress = 0.0
        for phase in plan:
            first = phase != last
            if first:
                phases_done.append(phase)
                if not live:
                    console.print(f"phase: {phase}", markup=False, highlight=False)
            # The block's rounds go into the pool, then the block is mined: the price path is
            # the same block by block in every run with this seed.
            apply_phase(phase, first, feeds, rng, crash=opts.crash, expiry=expiry)
            miner.mine()
            if first:
                marks[phase] = feeds.w3.eth.block_number
            last = phase
            end = time.monotonic() + opts.block_time
            while True:
                if screen is not None:
                    screen.update(view.render(phase))
                elif time.monotonic() >= next_progress:
                    console.print(view.line(phase), markup=False, highlight=False, soft_wrap=True)
                    next_progress = time.monotonic() + PROGRESS_EVERY
                if not service_alive(service):
                    raise RuntimeError("the keeper stopped (see keeper.log)")
                if time.monotonic() >= end:
                    break
                time.sleep(min(0.2, max(0.0, end - time.monotonic())))
        if screen is not None:
            screen.update(view.render("done"))
    if live:
        console.print()  # the summary starts on a line of its own, below the last frame
    else:
        console.print(view.line("done"), markup=False, highlight=False, soft_wrap=True)


def service_alive(service: KeeperService) -> bool:
    return not service.health.stalled


def _settle_quietly(service: KeeperService, miner: _Miner, opts: DemoOptions) -> None:
    """Let the keeper finish what the last blocks asked for (settlements, liquidations),
    still mining one block per block time (no new oracle rounds)."""
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
        miner.mine()
        time.sleep(opts.block_time)


class _LiveView:
    def __init__(
        self, service: KeeperService, market: SeededMarket, feeds: ScriptedFeeds, d: Deployment
    ) -> None:
        self.service = service
        self.market = market
        self.feeds = feeds
        self.symbols = [u["symbol"] for u in d.underlyings]

    def _states(self) -> dict[str, int]:
        """Accounts by the state the keeper last classified them in (the seeded accounts and
        the market maker: every account with a book)."""
        return dict(Counter(list(self.service.states.values())))

    def _market(self) -> str:
        return "   ".join(
            f"{sym} {p / 1e8:,.0f} (IV {v / 1e6:.0f}%)"
            for sym, p, v in zip(self.symbols, self.feeds.spot, self.feeds.iv, strict=True)
        )

    def render(self, phase: str) -> Table:
        s = self.service
        accounts = self._states()
        t = Table(title=f"keeper demo — phase: {phase}", show_header=False, expand=False)
        t.add_column("what", style="bold")
        t.add_column("value")
        t.add_row("block", str(s.health.last_block))
        t.add_row("market", self._market())
        t.add_row("accounts", _counts(accounts) or "-")
        t.add_row("actions sent", _counts(s.actions) or "-")
        m = s.metrics
        t.add_row("bounty earned", f"{_value(m.bounty) / WAD:,.2f} USDC")
        t.add_row("gas", f"{int(_value(m.gas_used)):,} gas, {_value(m.gas_spent) / 1e18:.5f} ETH")
        t.add_row("pending tx", str(int(_value(m.pending_tx))))
        return t

    def line(self, phase: str) -> str:
        """One progress line (output that is not a terminal)."""
        s = self.service
        accounts = self._states()
        return (
            f"  block {s.health.last_block}  [{phase}]  {self._market()}  |  accounts "
            f"{_counts(accounts) or '-'}  |  sent {_counts(s.actions) or '-'}  |  bounty "
            f"{_value(s.metrics.bounty) / WAD:,.2f} USDC"
        )


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(counts.items()))


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
    from keeper.store import Store

    ch = bind(w3, deployment, "ClearingHouse")
    last = w3.eth.block_number
    logs: dict[str, list[Any]] = {
        name: getattr(ch.events, name)().get_logs(from_block=first_block, to_block=last)
        for name in set(ACTION_EVENTS.values())
    }
    actions: dict[str, ActionCount] = {}
    txs: Counter[str] = Counter()
    gas_used = gas_wei = bounty = 0
    latest: dict[str, Decision] = {}
    distressed: set[str] = set()
    store = Store.open(f"sqlite:///{opts.out.resolve() / 'keeper.db'}")
    try:
        with store.session() as s:
            decisions = {d.id: d for d in s.exec(select(Decision).order_by(col(Decision.id)))}
            for d in decisions.values():
                actions.setdefault(d.action, ActionCount()).decided += 1
                latest[d.account] = d
                if d.state in DISTRESS:
                    distressed.add(d.account)
            sent_by: dict[str, str] = {}  # mined hash -> action
            for t in s.exec(select(Transaction)).all():
                txs[str(t.status)] += 1
                action = (
                    decisions[t.decision_id].action
                    if t.decision_id in decisions
                    else _undecided_action(ch, t.data)
                )
                count = actions.setdefault(action, ActionCount())
                count.sent += 1
                if t.status == "final":
                    count.final += 1
                    if t.mined_hash:
                        sent_by[t.mined_hash.lower()] = action
                bounty += t.bounty or 0
                if t.gas_used is not None and t.effective_gas_price is not None:
                    gas_used += t.gas_used
                    gas_wei += t.gas_used * t.effective_gas_price
    finally:
        store.close()
    for action, event in ACTION_EVENTS.items():
        hashes = {e["transactionHash"].to_0x_hex().lower() for e in logs[event]}
        n = sum(1 for h, a in sent_by.items() if a == action and h in hashes)
        if n or action in actions:
            actions.setdefault(action, ActionCount()).on_chain = n
    keeper_address = service.address or ""
    onchain = int(ch.functions.bounties(keeper_address).call()) if keeper_address else 0
    paid, received = _funding(ch, market, deployment, first_block, last)
    flagged = {int(e["args"]["account"]) for e in logs["MarginCall"]}
    liquidated = {int(e["args"]["account"]) for e in logs["Liquidation"]}
    seeded = {str(a.account) for a in market.accounts}
    states: Counter[str] = Counter(
        latest[a].state if a in latest else "not assessed" for a in seeded
    )
    named = {
        str(market.maker): "market maker",
        str(deployment.backstop_account): "backstop",
    }
    protocol = {
        name: latest[a].state for a, name in named.items() if a in latest and a not in seeded
    }
    others = [
        a
        for a in latest
        if a not in seeded and a not in named and not a.startswith(INSTRUMENT_PREFIX)
    ]
    for a in others:  # accounts nobody seeded (none in the demo): shown, never dropped
        protocol[f"account {a}"] = latest[a].state
    never = sum(
        1
        for a in market.accounts
        if str(a.account) not in distressed and a.account not in flagged | liquidated
    )
    timestamp = int(w3.eth.get_block(last)["timestamp"])
    return DemoSummary(
        seed=opts.seed,
        accounts=len(market.accounts),
        books=dict(Counter(a.book for a in market.accounts)),
        account_states=dict(states),
        never_distressed=never,
        protocol_accounts=protocol,
        blocks=last - first_block,
        first_block=first_block,
        last_block=last,
        phases=phases,
        actions={k: asdict(v) for k, v in actions.items()},
        transactions=dict(txs),
        flags=len(logs["MarginCall"]),
        accounts_flagged=len(flagged),
        liquidations=len(logs["Liquidation"]),
        accounts_liquidated=len(liquidated),
        instruments_expired=sum(
            1 for i in deployment.instruments if 0 < int(i["expiry"]) <= timestamp
        ),
        instruments_settled=len(logs["InstrumentSettled"]),
        accounts_settled=len({int(e["args"]["account"]) for e in logs["PositionSettled"]}),
        positions_settled=len(logs["PositionSettled"]),
        bad_debt_resolved=len(logs["BadDebtResolved"]),
        funding_pokes=len(logs["FundingPoked"]),
        funding_paid=f"{paid / WAD:.6f}",
        funding_received=f"{received / WAD:.6f}",
        bounty_earned=f"{bounty / WAD:.6f}",
        bounty_onchain=f"{onchain / WAD:.6f}",
        gas_used=gas_used,
        gas_spent_wei=gas_wei,
        keeper_exit_status=status.get("exit", -1),
        seconds=round(time.monotonic() - t0, 1),
        out=str(opts.out),
    )


def _funding(
    ch: Any, market: SeededMarket, deployment: Deployment, first: int, last: int
) -> tuple[int, int]:
    """(paid, received): per account, the funding it realised in the run plus what it has
    accrued at the end; the payers' total (as a positive amount) and the receivers'."""
    per: Counter[int] = Counter()
    for e in ch.events.FundingSettled().get_logs(from_block=first, to_block=last):
        per[int(e["args"]["account"])] += int(e["args"]["amount"])
    holders = {a.account for a in market.accounts} | {market.maker, deployment.backstop_account}
    for a in holders | set(per):
        per[a] += int(ch.functions.accruedFunding(a).call(block_identifier=last))
    return -sum(v for v in per.values() if v < 0), sum(v for v in per.values() if v > 0)


def _ordered(counts: dict[str, int]) -> list[tuple[str, int]]:
    rank = {s: i for i, s in enumerate(STATE_ORDER)}
    return sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


#: Action rows in the order a run meets them; "none" (a state recorded) last.
ACTION_ORDER = (*ACTION_EVENTS, "none")


def _undecided_action(ch: Any, data: str) -> str:
    """A transaction without a decision: the recalibration job's, or one not known here."""
    for fn in ("queueRecalibration", "executeRecalibration"):
        if data.startswith(ch.encode_abi(fn, args=[b""] if fn[0] == "q" else [0, b""])[:10]):
            return "recalibrate"
    return "?"


def _print_summary(console: Console, s: DemoSummary) -> None:
    console.print(f"[bold]keeper demo — summary[/bold] (seed {s.seed})", highlight=False)
    console.print(
        f"market: {s.blocks} blocks played ({s.first_block + 1}–{s.last_block}), phases "
        f"{', '.join(s.phases) or '-'}; books seeded: "
        + ", ".join(f"{k} {v}" for k, v in s.books.items()),
        highlight=False,
    )
    acc = Table(title="seeded accounts by final state", title_justify="left", min_width=40)
    acc.add_column("state")
    acc.add_column("accounts", justify="right")
    for state, n in _ordered(s.account_states):
        acc.add_row(state, str(n))
    acc.add_row("total (seeded)", str(sum(s.account_states.values())), style="bold")
    console.print(acc)
    if s.protocol_accounts:
        console.print(
            "also assessed, not seeded: "
            + ", ".join(f"{k} ({v})" for k, v in s.protocol_accounts.items()),
            highlight=False,
        )
    act = Table(title="keeper actions", title_justify="left", min_width=40)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("action", "left"),
        ("decisions", "right"),
        ("sent", "right"),
        ("final", "right"),
        ("on chain", "right"),
    )
    for name, just in columns:
        act.add_column(name, justify=just)
    total = ActionCount()
    rank = {a: i for i, a in enumerate(ACTION_ORDER)}
    for action, c in sorted(s.actions.items(), key=lambda kv: rank.get(kv[0], len(rank))):
        label = "none (state recorded)" if action == "none" else action
        act.add_row(label, str(c["decided"]), str(c["sent"]), str(c["final"]), str(c["on_chain"]))
        total.decided += c["decided"]
        total.sent += c["sent"]
        total.final += c["final"]
        total.on_chain += c["on_chain"]
    act.add_row(
        "total",
        str(total.decided),
        str(total.sent),
        str(total.final),
        str(total.on_chain),
        style="bold",
    )
    console.print(act)
    res = Table(title="results", title_justify="left", show_header=False)
    res.add_column("what")
    res.add_column("value")
    rows = [
        ("margin calls", f"{s.flags} ({s.accounts_flagged} accounts)"),
        ("liquidations", f"{s.liquidations} ({s.accounts_liquidated} accounts)"),
        (
            "settlement",
            f"{s.instruments_settled} of {s.instruments_expired} expired instruments settled; "
            f"{s.positions_settled} positions settled at their payoff, in {s.accounts_settled} "
            "accounts",
        ),
        ("bad debt resolved", f"{s.bad_debt_resolved} accounts"),
        (
            "funding",
            f"{s.funding_pokes} pokes; {s.funding_paid} USDC paid by longs or shorts to the "
            f"other side ({s.funding_received} USDC received)",
        ),
        ("never distressed", f"{s.never_distressed} of {s.accounts} seeded accounts"),
        ("bounty earned", f"{s.bounty_earned} USDC (credited on chain: {s.bounty_onchain} USDC)"),
        ("gas", f"{s.gas_used:,} gas = {s.gas_spent_wei / 1e18:.6f} ETH"),
        (
            "transactions",
            ", ".join(f"{k} {v}" for k, v in sorted(s.transactions.items())) or "none",
        ),
        ("keeper exit status", str(s.keeper_exit_status)),
        ("time", f"{s.seconds} s"),
    ]
    for k, v in rows:
        res.add_row(k, v)
    console.print(res)
    for line in LEGEND:
        console.print(line, style="dim", highlight=False, soft_wrap=True)
    _print_recalibration(console, s.recalibration)
    console.print(f"left for replay in {s.out}: {', '.join(s.files.values())}", soft_wrap=True)
    # One line, never wrapped: it is meant to be copied and run as printed.
    console.print(
        f"replay it: {keeper_command()} replay --state-dump {s.files.get('state_dump')} "
        f"--deployment {s.files.get('deployment')} --db sqlite:///{s.files.get('database')}",
        soft_wrap=True,
        highlight=False,
    )


def _print_recalibration(console: Console, r: dict[str, Any]) -> None:
    if not r:
        return
    console.print(
        f"recalibration: {r['queued']} queued, {r['executed']} executed, "
        f"{r['cancelled']} cancelled; grid (price range/vol shift base) deployed -> at the "
        "crash -> end: "
        + "; ".join(f"{k} {g['deployed']} -> {g['at_crash']} -> {g['end']}"
                    for k, g in r["grid"].items()),
        soft_wrap=True,
        highlight=False,
    )  # fmt: skip
    c = r.get("crash")
    if c:
        console.print(
            f"crash counterfactual (block {c['block']}, {c['accounts']} books): liquidatable "
            f"{c['liquidatable_recalibrated']} under the recalibrated grid, "
            f"{c['liquidatable_original']} under the deployed one: the recalibration caused "
            f"{c['caused']} liquidation(s) (earlier) and prevented {c['prevented']}; the block "
            f"before, {c['below_im_before_recalibrated']} books were below initial margin "
            f"(margin call) under the recalibrated grid, {c['below_im_before_original']} under "
            "the deployed one",
            soft_wrap=True,
            highlight=False,
        )


LEGEND = (
    "final state: the state of the keeper's last decision about the account (healthy, "
    "margin_call, flagged_grace = flagged and within its grace period, liquidatable, "
    "settleable = holds expired positions, bad_debt, empty = no positions and no equity; "
    "'not assessed' = no decision recorded).",
    "decisions: what the keeper decided per account or instrument and block (none = it recorded "
    "a changed state and sent nothing); sent: transactions signed and sent for them; final: "
    "mined successfully and confirmed; on chain: final ones whose receipt carries the "
    "action's event.",
    "margin calls, liquidations and settlement count events on chain: instruments settled "
    "(settleInstrument) and positions settled (by settleAccount, or when another action "
    "touched the account first).",
    "never distressed: seeded accounts never flagged, liquidated or classified margin_call, "
    "flagged_grace, liquidatable, bad_debt, no_price or invalid.",
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
