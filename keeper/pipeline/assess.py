"""The assess stage: classify accounts and choose actions from one ProtocolSnapshot.

Pure: no I/O (tests/test_pipeline_purity.py fails when this module's imports reach web3, the
store, sqlalchemy or an HTTP client). Everything here reads a ``ProtocolSnapshot`` (one block,
produced by keeper.pipeline.read) and the engine (``margin.portfolio_margin``, over the whole
book through ``keeper.book_engine``); keeper.pipeline.execute gates, simulates, prices gas and
sends. The contract's rules come from keeper.protocol (one module per contract concern); what
they mirror (and why it must match it):

* states: the full check (strict oracle ages, as ``marginOf``; lenient ages when strict raised
  an oracle error, recorded as ``lenient``) classifies; a flag / liquidation is only proposed
  when the *witness* check the contract runs (lenient ages, the full check's witness) passes;
* the liquidation's effect (keeper.protocol.liquidation, keeper.protocol.bounty): the
  post-liquidation book is re-margined with the engine to pick the smallest fraction;
* the books the contract margins: positions in settled instruments are folded into the
  settlement balance (``ProtocolSnapshot.portfolio``, margin.settlement);
* bad debt (``resolveBadDebt``): no live position and the model equity below zero; a debt the
  account's equity covers is a loan and is left alone;
* settlement (``settleInstrument(instrument, roundId)``): the named round is the feed's first
  round updated at or after expiry (keeper.protocol.settlement).

``assess_account`` is one account, in named steps: ``_case`` (the folded book), ``_cash_only``
(no oracle needed), ``_inputs`` (strict ages, else lenient), ``_full_check``, then
``_without_positions`` (bad debt or a loan) or ``_margin_action`` (``_margin_state``, then
``_witness_check`` and ``_flag`` or ``_liquidation``). ``assess_block`` is the whole book at one
block (the engine's bounded pass, exact where it cannot decide); ``most_urgent_first`` orders
it for the execute stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import TYPE_CHECKING

from keeper.digest import inputs_digest
from keeper.pipeline.types import (
    AccountState,
    Action,
    ActionKind,
    Assessment,
    BlockReport,
    DecisionPolicy,
)
from keeper.protocol.assets import NO_UNDERLYING
from keeper.protocol.bounty import liquidation_payout
from keeper.protocol.liquidation import WAD, after_liquidation, grace_over, may_liquidate
from keeper.protocol.oracle import OracleError
from margin.errors import MarginError
from margin.fixed_point import mul_up
from margin.portfolio import Market, Portfolio
from margin.portfolio_margin import HEALTHY, LIQUIDATABLE, MARGIN_CALL, MarginResult, ScenarioTable

if TYPE_CHECKING:  # the snapshot's module reads the chain, the engine's imports this one
    from keeper.book_engine import BookEngine
    from keeper.chain.view import AccountInputs, AccountSnapshot, ProtocolSnapshot

#: margin.portfolio_margin's HEALTHY / MARGIN_CALL / LIQUIDATABLE as account states.
_BY_ENGINE_STATE = (AccountState.HEALTHY, AccountState.MARGIN_CALL, AccountState.LIQUIDATABLE)


# --- the contract's liquidation arithmetic -------------------------------------------------


def choose_fraction(
    snap: ProtocolSnapshot,
    table: ScenarioTable,
    pf: Portfolio,
    witness_result: MarginResult,
    target_state: int,
    steps: int,
) -> int:
    """Smallest grid fraction whose post-liquidation book has full-check state <= target
    (the engine decides, rounding included), else 1e18. Binary search (health grows with the
    fraction up to one LOT of rounding per position); the answer is always re-checked."""
    if witness_result.equity <= 0:
        return WAD

    def ok(k: int) -> bool:
        f = k * WAD // steps
        penalty, _ = liquidation_payout(
            witness_result.requirement, witness_result.equity, f, snap.liquidation_config
        )
        post = after_liquidation(table, pf, f, penalty)
        if post is None:
            return False
        try:
            return table.full_check(post).state <= target_state
        except MarginError:
            return False

    lo, hi = 1, steps  # hi == steps is the full close (always the fallback)
    if not ok(steps - 1):
        return WAD
    hi = steps - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi * WAD // steps if ok(hi) else WAD


# --- assessment ----------------------------------------------------------------------------


_NO_MARKET = Market(0, 0, (), ())


def _no_price_digest(snap: ProtocolSnapshot, pf: Portfolio) -> str:
    # No market could be built: the digest covers the book and parameters only.
    return inputs_digest(pf, Market(0, snap.rate, (), ()), snap.risk_params_bytes, lenient=True)


def assess(
    snap: ProtocolSnapshot, accounts: Iterable[int], policy: DecisionPolicy
) -> list[Assessment]:
    """One assessment per account (the backstop is never assessed: it is never acted on)."""
    out = []
    for a in dict.fromkeys(accounts):
        if a == snap.backstop or a not in snap.accounts:
            continue
        out.append(assess_account(snap, a, policy))
    return out


@dataclass
class _Case:
    """One account being assessed: what every outcome of ``assess_account`` is built from."""

    snap: ProtocolSnapshot
    account: int
    acc: AccountSnapshot
    pf: Portfolio
    policy: DecisionPolicy
    settle: Action | None  # settle_account, when the book holds settled instruments
    change: str | None = None  # the change digest, once the inputs are known

    @property
    def flagged(self) -> bool:
        return self.acc.flagged_at != 0

    def make(
        self,
        state: AccountState,
        result: MarginResult | None = None,
        lenient: bool = False,
        digest: str | Callable[[], str] | None = None,
        action: Action | None = None,
        note: str | None = None,
    ) -> Assessment:
        snap, pf = self.snap, self.pf
        return Assessment(
            self.account,
            snap.block,
            self.acc.nonce,
            state,
            result,
            lenient,
            digest or (lambda: _no_price_digest(snap, pf)),
            action,
            self.acc.flagged_at,
            note,
            self.change or _no_price_digest(snap, pf),
        )

    def quiet(
        self,
        state: AccountState,
        res: MarginResult | None = None,
        lenient: bool = False,
        digest: Callable[[], str] | None = None,
        note: str | None = None,
    ) -> Assessment:
        """No margin action: settle the settled positions, else clear a cured flag."""
        if self.settle is not None:
            return self.make(AccountState.SETTLEABLE, res, lenient, digest, self.settle, note)
        action = None
        cured = state == AccountState.HEALTHY and self.flagged and not lenient
        if cured and self.policy.clear_cured_flags:
            a, acc = self.account, self.acc
            action = Action(
                ActionKind.CLEAR_FLAG, a, None, acc.nonce, None, None, 0,
                f"clear_flag:{a}:{acc.nonce}:{acc.flagged_at}",
            )  # fmt: skip
        return self.make(state, res, lenient, digest, action, note)


def _simple(kind: ActionKind, account: int, nonce: int) -> Action:
    return Action(kind, account, None, nonce, None, None, 0, f"{kind}:{account}:{nonce}")


def assess_account(snap: ProtocolSnapshot, account: int, policy: DecisionPolicy) -> Assessment:
    """Classify one account and choose its action. Order of precedence: the margin actions
    (liquidate, flag, resolve_bad_debt), then settle_account for a book holding settled
    instruments, then clear_flag for a cured flag. Margin is always that of the folded book
    (settled positions as cash), as every check of the contract sees it."""
    case = _case(snap, account, policy)
    cash = _cash_only(case)
    if cash is not None:
        return cash
    priced = _inputs(case)
    if isinstance(priced, Assessment):  # no price the contract would accept
        return priced
    inp, lenient = priced
    return _full_check(case, inp, lenient)


def _case(snap: ProtocolSnapshot, account: int, policy: DecisionPolicy) -> _Case:
    """The account's folded book, and settle_account when it holds settled instruments."""
    acc = snap.accounts[account]
    settle = None
    if snap.settled_positions(account) and policy.allow_settlement:
        settle = _simple(ActionKind.SETTLE_ACCOUNT, account, acc.nonce)
    return _Case(snap, account, acc, snap.portfolio(account), policy, settle)


def _inputs(case: _Case) -> tuple[AccountInputs, bool] | Assessment:
    """The engine's inputs at strict oracle ages, else at lenient ones (then ``True``). When
    neither prices the book: settleable (settleAccount reads no oracle), else no_price with
    the name of the OracleLib check that failed."""
    snap, account = case.snap, case.account
    try:
        return snap.inputs(account), False
    except OracleError:
        pass
    try:
        return snap.inputs(account, lenient=True), True
    except OracleError as exc:
        if case.settle is not None:
            return case.make(
                AccountState.SETTLEABLE, lenient=True, action=case.settle, note=str(exc)
            )
        rejected = case.make(AccountState.NO_PRICE, lenient=True, note=str(exc))
        return replace(rejected, oracle_error=type(exc).__name__)


def _full_check(case: _Case, inp: AccountInputs, lenient: bool) -> Assessment:
    """The full check on the account's inputs, then the rule for its book: bad debt or a
    loan without live positions, else the margin action."""
    snap = case.snap

    def digest() -> str:
        return inputs_digest(inp.portfolio, inp.market, snap.risk_params_bytes, lenient=lenient)

    # The account's own inputs only: a price round alone is no reason for a new record
    # (docs/keeper-decisions.md, "Records").
    case.change = inputs_digest(inp.portfolio, _NO_MARKET, snap.risk_params_bytes, lenient=lenient)
    try:
        res = snap.table(inp.market).full_check(inp.portfolio)
    except MarginError as exc:
        return case.make(AccountState.INVALID, lenient=lenient, digest=digest, note=repr(exc))
    if not inp.portfolio.positions:
        return _without_positions(case, res, lenient, digest)
    return _margin_action(case, res, lenient, digest)


def _cash_only(case: _Case) -> Assessment | None:
    """No position, no flag, no volatile balance and no debt: no oracle is needed (a stable
    balance never moves). None when the account needs the engine."""
    pf, snap = case.pf, case.snap
    if pf.positions or case.flagged:
        return None
    volatile = any(
        b != 0 and snap.assets[k].underlying != NO_UNDERLYING for k, b in enumerate(pf.collateral)
    )
    if volatile or any(b < 0 for b in pf.collateral):
        return None
    return case.quiet(AccountState.EMPTY if not any(pf.collateral) else AccountState.HEALTHY)


def _without_positions(
    case: _Case, res: MarginResult, lenient: bool, digest: Callable[[], str]
) -> Assessment:
    """resolveBadDebt's rule: no live position and the model equity (lenient market: the same
    prices as this one) below zero. Otherwise a debt is a loan the account covers."""
    if res.equity < 0:
        action = None
        if case.policy.allow_bad_debt:
            action = _simple(ActionKind.RESOLVE_BAD_DEBT, case.account, case.acc.nonce)
        return case.make(AccountState.BAD_DEBT, res, lenient, digest, action)
    state = _BY_ENGINE_STATE[res.state]
    note = None if res.state == HEALTHY else "loan: no live position and equity >= 0"
    return case.quiet(state, res, lenient, digest, note=note)


def _margin_action(
    case: _Case, res: MarginResult, lenient: bool, digest: Callable[[], str]
) -> Assessment:
    """A book with live positions: its state, and the flag or liquidation the contract's
    witness check (lenient ages) would accept."""
    acc, snap = case.acc, case.snap
    past_grace = grace_over(acc.flagged_at, snap.liquidation_config[2], snap.timestamp)
    state = _margin_state(res, case.flagged, past_grace)
    if state not in (AccountState.MARGIN_CALL, AccountState.LIQUIDATABLE):
        return case.quiet(state, res, lenient, digest)
    witness = _witness_check(case, res)
    if isinstance(witness, str):
        return case.quiet(state, res, lenient, digest, note=witness)
    if state == AccountState.MARGIN_CALL:
        return _flag(case, res, lenient, digest, witness)
    return _liquidation(case, res, lenient, digest, witness, past_grace)


def _margin_state(res: MarginResult, flagged: bool, past_grace: bool) -> AccountState:
    """The full check's state as the keeper names it: a margin call already flagged is in its
    grace period until that runs out, then liquidatable like a book below MM."""
    if res.state == HEALTHY:
        return AccountState.HEALTHY
    if res.state == MARGIN_CALL and not flagged:
        return AccountState.MARGIN_CALL
    if res.state == MARGIN_CALL and not past_grace:
        return AccountState.FLAGGED_GRACE
    return AccountState.LIQUIDATABLE


@dataclass(frozen=True)
class _Witness:
    """The witness check the contract runs (lenient ages, the full check's witness), with the
    inputs and table it ran on."""

    inputs: AccountInputs
    table: ScenarioTable
    result: MarginResult
    witness: tuple[int, ...]


def _witness_check(case: _Case, res: MarginResult) -> _Witness | str:
    """What the contract will run: the witness check under lenient ages (a str: why it
    fails)."""
    snap = case.snap
    try:
        lin = snap.inputs(case.account, lenient=True)
        ltable = snap.table(lin.market)
        wres = ltable.witness_check(lin.portfolio, list(res.witness))
    except (OracleError, MarginError) as exc:
        return f"witness check fails: {exc!r}"
    return _Witness(lin, ltable, wres, tuple(res.witness))


def _flag(
    case: _Case, res: MarginResult, lenient: bool, digest: Callable[[], str], w: _Witness
) -> Assessment:
    """flag(account, nonce, witness), when the witness check shows the margin call too."""
    state, account, nonce = AccountState.MARGIN_CALL, case.account, case.acc.nonce
    if w.result.state < MARGIN_CALL:
        return case.quiet(state, res, lenient, digest, note="witness check shows no margin call")
    if not case.policy.allow_flags:
        return case.quiet(state, res, lenient, digest)
    key = f"flag:{account}:{nonce}"
    action = Action(ActionKind.FLAG, account, None, nonce, w.witness, None, 0, key)
    return case.make(state, res, lenient, digest, action)


def _liquidation(
    case: _Case,
    res: MarginResult,
    lenient: bool,
    digest: Callable[[], str],
    w: _Witness,
    past_grace: bool,
) -> Assessment:
    """liquidate(account, nonce, witness, fraction), when the contract would accept it: the
    smallest grid fraction that restores the book, and the bounty it pays."""
    state, account, nonce = AccountState.LIQUIDATABLE, case.account, case.acc.nonce
    snap, policy, wres = case.snap, case.policy, w.result
    if not may_liquidate(wres.state, past_grace):
        return case.quiet(state, res, lenient, digest, note="witness check shows not liquidatable")
    # Below MM: restore above MM. Flagged past grace: restore above IM (else it is re-flagged).
    target = MARGIN_CALL if wres.state == LIQUIDATABLE else HEALTHY
    fraction = choose_fraction(
        snap, w.table, w.inputs.portfolio, wres, target, policy.fraction_steps
    )
    _, bounty = liquidation_payout(wres.requirement, wres.equity, fraction, snap.liquidation_config)
    action = Action(
        ActionKind.LIQUIDATE, account, None, nonce, w.witness, fraction, bounty,
        f"liquidate:{account}:{nonce}",
        maintenance=policy.liquidate_insolvent and wres.equity <= 0,
    )  # fmt: skip
    return case.make(state, res, lenient, digest, action)


# --- settlement ----------------------------------------------------------------------------


def settle_instrument_action(instrument: int, round_id: int) -> Action:
    """settleInstrument(instrument, roundId); the key carries the round named."""
    key = f"settle_instrument:{instrument}:{round_id}"
    return Action(
        ActionKind.SETTLE_INSTRUMENT, None, instrument, None, None, None, 0, key, round_id
    )


def gas_cost_in_asset0(snap: ProtocolSnapshot, gas_wei: int, policy: DecisionPolicy) -> int | None:
    """Gas cost (wei of the native coin) in asset-0 WAD, rounded up; None when no price."""
    price = policy.native_price
    if price is None and policy.gas_price_underlying is not None:
        cfg = snap.underlyings[policy.gas_price_underlying]
        try:
            price = snap.feeds[cfg.price_feed].read(cfg.liquidation_max_age, snap.timestamp)[0]
        except OracleError:
            return None
    if price is None:
        return None
    return mul_up(gas_wei, price)


# --- the block -----------------------------------------------------------------------------


def assess_block(
    engine: BookEngine,
    snap: ProtocolSnapshot,
    accounts: list[int],
    policy: DecisionPolicy,
    report: BlockReport,
) -> list[Assessment]:
    """Every one of ``accounts`` at the snapshot's block, each counted in ``report``: the
    engine's bounded float pass over the whole book, the exact ``assess_account`` where it
    cannot decide (keeper.book_engine)."""
    assessed = engine.assess(snap, accounts, policy)
    stats = engine.stats
    report.accounts_bounded += stats.bounded
    report.accounts_exact += stats.exact
    report.book_rebuilt |= stats.rebuilt
    for one in assessed:
        report.count(one)
    return assessed


def most_urgent_first(assessed: Iterable[Assessment]) -> list[Assessment]:
    """The order actions are executed in: the ones that matter most first, to reach the next
    block (liquidations by bounty, then the rest): their nonces come first. The no-action rows
    follow in account order (only the few with an action are sorted by urgency: at venue size
    nearly every row has none)."""
    rows = list(assessed)
    acting = sorted((a for a in rows if a.action is not None), key=_urgency)
    quiet = sorted((a for a in rows if a.action is None), key=attrgetter("account"))
    return acting + quiet


_ACTION_ORDER = {"liquidate": 0, "resolve_bad_debt": 1, "flag": 2}


def _urgency(a: Assessment) -> tuple[int, int, int]:
    """Sort key: liquidations first, largest expected bounty first; no-action rows last."""
    if a.action is None:
        return (9, 0, a.account)
    return (_ACTION_ORDER.get(a.action.kind, 3), -a.action.expected_bounty, a.account)
