"""Re-derivation of margin decisions from chain data alone.

A *decision point* of an account is a block of the range where its margin inputs change: an
event naming it (deposit, trade, liquidation...), a new round of a feed of an underlying it uses,
or a market-wide event (risk parameters, rate, feeds, settlement); the first block of the range
is one for every account (the starting state). At each decision point the account's decision
is the engine's full check on the snapshot of that block (``keeper.chain`` reads, the same
inputs as ``ClearingHouse.marginOf``): strict oracle ages, or -- when the strict market raises
an oracle error -- lenient ages (``liquidationMaxAge``, what flag/liquidate use), recorded as
``lenient`` as the keeper does; plus ``keeper.digest.inputs_digest`` of those inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from keeper.chain import BlockRef, OracleError, ProtocolSnapshot
from keeper.chain.view import NO_UNDERLYING
from keeper.digest import inputs_digest
from keeper.replay.events import MARKET_WIDE, NO_MARGIN_EFFECT, ChainHistory
from margin.errors import MarginError
from margin.portfolio import Market, Portfolio
from margin.portfolio_margin import STATE_NAMES, MarginResult, ScenarioTable


@dataclass
class Derivation:
    """One account at one block, as the engine sees it."""

    account: int
    block: BlockRef
    timestamp: int  # block.timestamp inside the eth_call (what the verifier saw)
    nonce: int
    flagged_at: int
    portfolio: Portfolio
    risk_params: bytes
    lenient: bool = False
    market: Market | None = None
    inputs_digest: str | None = None
    result: MarginResult | None = None
    #: The strict market's oracle error (its revert data is what marginOf must revert with).
    strict_error: OracleError | None = None
    #: Why there is no result: the lenient oracle error or the engine's MarginError.
    error: str | None = None
    #: The engine's refusal (the verifier must revert with exactly its data).
    engine_error: MarginError | None = None
    reasons: list[str] = field(default_factory=list)
    table: ScenarioTable | None = field(default=None, repr=False)
    rate: int = 0
    #: Facts the keeper's result-less classifications rest on (keeper/replay/compare.py).
    holds_settled: bool = False  # a position in a settled instrument
    grace_over: bool = False  # flagged, and the grace period has run out at this block
    volatile_collateral: bool = False  # a non-zero balance of a non-stable asset

    def book_digest(self) -> str:
        """The digest of a decision taken without a market (no position priced): the book and
        the parameters only, ``Market(0, rate, (), ())`` under lenient ages."""
        empty = Market(0, self.rate, (), ())
        return inputs_digest(self.portfolio, empty, self.risk_params, lenient=True)

    @property
    def state(self) -> str | None:
        return STATE_NAMES[self.result.state] if self.result is not None else None


def derive(snap: ProtocolSnapshot, account: int, reasons: Iterable[str] = ()) -> Derivation:
    acc = snap.accounts[account]
    d = Derivation(
        account,
        snap.block,
        snap.timestamp,
        acc.nonce,
        acc.flagged_at,
        snap.portfolio(account),
        snap.risk_params_bytes,
        reasons=list(reasons),
        rate=snap.rate,
        grace_over=acc.flagged_at != 0
        and snap.timestamp >= acc.flagged_at + snap.liquidation_config[2],
        holds_settled=any(snap.instruments[iid].settled for iid, _ in acc.positions),
        volatile_collateral=any(
            b != 0 and snap.assets[k].underlying != NO_UNDERLYING
            for k, b in enumerate(acc.balances)
        ),
    )
    try:
        inp = snap.inputs(account)
    except OracleError as exc:
        d.strict_error = exc
        d.lenient = True
        try:
            inp = snap.inputs(account, lenient=True)
        except OracleError as exc2:
            d.error = str(exc2)
            return d
    d.market = inp.market
    d.inputs_digest = inputs_digest(
        inp.portfolio, inp.market, snap.risk_params_bytes, lenient=d.lenient
    )
    try:
        d.table = snap.table(inp.market)
        d.result = d.table.full_check(inp.portfolio)
    except MarginError as exc:
        d.error = str(exc)
        d.engine_error = exc
    return d


def used_feeds(snap: ProtocolSnapshot, account: int) -> set[str]:
    """Feed addresses (lower case) of the underlyings the account's market reads."""
    acc = snap.accounts[account]
    used = {snap.instruments[iid].underlying for iid, _ in acc.positions}
    for k, bal in enumerate(acc.balances):
        u = snap.assets[k].underlying
        if u != NO_UNDERLYING and bal != 0:
            used.add(u)
    out = set()
    for u in used:
        cfg = snap.underlyings[u]
        out |= {cfg.price_feed.lower(), cfg.vol_feed.lower()}
    return out


@dataclass
class BlockPlan:
    """What changed at one block of the range."""

    block: int
    named: dict[int, list[str]] = field(default_factory=dict)  # account -> event names
    market_wide: list[str] = field(default_factory=list)
    feeds: set[str] = field(default_factory=set)


def plan(history: ChainHistory, first: int, last: int) -> list[BlockPlan]:
    """The blocks of [first, last] where some account's inputs may change, in order."""
    plans: dict[int, BlockPlan] = {first: BlockPlan(first, market_wide=["start of range"])}
    for e in history.in_range(first, last):
        if e.name in NO_MARGIN_EFFECT:
            continue
        p = plans.setdefault(e.block, BlockPlan(e.block))
        if e.name in MARKET_WIDE:
            p.market_wide.append(e.name)
        for a in e.accounts:
            p.named.setdefault(a, []).append(e.name)
    for block, feeds in history.feed_updates.items():
        if first <= block <= last:
            plans.setdefault(block, BlockPlan(block)).feeds |= feeds
    return [plans[b] for b in sorted(plans)]


def decision_accounts(
    p: BlockPlan, snap: ProtocolSnapshot, feed_names: dict[str, str]
) -> dict[int, list[str]]:
    """Accounts with a decision at this block (the backstop is not margined: never one)."""
    out: dict[int, list[str]] = {}
    for a in snap.accounts:
        if a == snap.backstop:
            continue
        reasons = list(p.market_wide) + p.named.get(a, [])
        if p.feeds:
            hit = used_feeds(snap, a) & p.feeds
            reasons += [f"round of {feed_names.get(f, f)}" for f in sorted(hit)]
        if reasons:
            out[a] = reasons
    return out
