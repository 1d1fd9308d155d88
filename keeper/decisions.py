"""The keeper's decisions: classify accounts and choose actions from one ProtocolSnapshot.

Pure: no I/O. Everything here reads a ``keeper.chain.view.ProtocolSnapshot`` (one block) and
the engine (``margin.portfolio_margin``); the executor (keeper/core.py) simulates, prices gas and
sends. What mirrors the contract (and why it must match it):

* states: the full check (strict oracle ages, as ``marginOf``; lenient ages when strict raised
  an oracle error, recorded as ``lenient``) classifies; a flag / liquidation is only proposed
  when the *witness* check the contract runs (lenient ages, the full check's witness) passes;
* the liquidation's effect (``ClearingHouse._handOver`` / ``_chargePenalty``): per position
  ``|q|·fraction`` rounded down to LOT (all of it at 1e18), priced at the verifier's mark
  rounded to TICK against the account; penalty and bounty (the bounty only ever comes out of
  the penalty). The post-liquidation book is re-margined with the engine to pick the smallest
  fraction;
* the books the contract margins: positions in settled instruments are folded into the
  settlement balance (``ProtocolSnapshot.portfolio``, margin.settlement);
* bad debt (``resolveBadDebt``): no live position and the model equity below zero; a debt the
  account's equity covers is a loan and is left alone;
* settlement (``settleInstrument(instrument, roundId)``): the named round is the feed's first
  round updated at or after expiry (``settlement_round``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from keeper.chain.rpc import BlockRef
from keeper.chain.view import AccountSnapshot, OracleError, ProtocolSnapshot
from keeper.config import DecisionsConfig
from keeper.digest import inputs_digest
from keeper.protocol.assets import NO_UNDERLYING
from keeper.protocol.bounty import liquidation_payout
from keeper.protocol.liquidation import WAD, after_liquidation
from margin.errors import MarginError
from margin.fixed_point import mul_up
from margin.portfolio import Market, Portfolio
from margin.portfolio_margin import HEALTHY, LIQUIDATABLE, MARGIN_CALL, MarginResult, ScenarioTable


class AccountState(StrEnum):
    """An account's state as the keeper classifies it (recorded on every decision)."""

    HEALTHY = "healthy"
    MARGIN_CALL = "margin_call"
    LIQUIDATABLE = "liquidatable"
    FLAGGED_GRACE = "flagged_grace"
    SETTLEABLE = "settleable"
    BAD_DEBT = "bad_debt"
    NO_PRICE = "no_price"
    EMPTY = "empty"
    INVALID = "invalid"  # the engine refused the inputs (a MarginError other than an oracle's)


class ActionKind(StrEnum):
    """What the keeper may send: one clearing-house function each (``Action.call``)."""

    FLAG = "flag"
    LIQUIDATE = "liquidate"
    SETTLE_ACCOUNT = "settle_account"
    RESOLVE_BAD_DEBT = "resolve_bad_debt"
    SETTLE_INSTRUMENT = "settle_instrument"
    CLEAR_FLAG = "clear_flag"
    POKE_FUNDING = "poke_funding"


STATES = tuple(s.value for s in AccountState)
#: margin.portfolio_margin's HEALTHY / MARGIN_CALL / LIQUIDATABLE as account states.
_BY_ENGINE_STATE = (AccountState.HEALTHY, AccountState.MARGIN_CALL, AccountState.LIQUIDATABLE)
#: Actions that pay no bounty: allowed by policy flags instead of the profitability rule.
MAINTENANCE = frozenset(
    {
        ActionKind.FLAG,
        ActionKind.SETTLE_ACCOUNT,
        ActionKind.RESOLVE_BAD_DEBT,
        ActionKind.SETTLE_INSTRUMENT,
        ActionKind.CLEAR_FLAG,
        ActionKind.POKE_FUNDING,
    }
)


@dataclass(frozen=True)
class DecisionPolicy:
    """How the keeper chooses and filters actions (mapped from ``config.decisions``).

    Profit is measured in asset-0 WAD (the unit the protocol credits bounties in):
    ``expected_bounty - gas_cost >= min_profit``, the gas cost (wei of the native coin)
    converted with ``native_price`` (asset-0 WAD per 1e18 wei) when set, else with the spot of
    underlying ``gas_price_underlying`` read from the same snapshot (ETH/USD on the devnet).
    """

    min_profit: int = 0  # asset-0 WAD
    allow_flags: bool = True
    allow_settlement: bool = True
    allow_bad_debt: bool = True
    clear_cured_flags: bool = True  # clearFlag of a flagged account back above IM (no bounty)
    liquidate_insolvent: bool = True  # liquidate books under water although they pay no bounty
    gas_margin_percent: int = 20  # gas limit = estimate * (100 + this) / 100
    backoff_blocks: int = 2  # first back-off after a simulation revert; doubles each time
    max_backoff_blocks: int = 256
    fraction_steps: int = 100  # liquidation fractions searched on a grid of 1/steps
    gas_price_underlying: int | None = 0
    native_price: int | None = None

    @classmethod
    def from_config(cls, cfg: DecisionsConfig) -> DecisionPolicy:
        """``config.decisions`` -> DecisionPolicy (``min_profit`` read in asset-0 WAD)."""
        return policy_from_config(cfg)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    account: int | None
    instrument: int | None
    nonce: int | None
    witness: tuple[int, ...] | None
    fraction: int | None  # WAD
    expected_bounty: int  # asset-0 WAD, as the contract would credit it
    key: str  # idempotency key: one transaction per key, ever
    round_id: int | None = None  # settle_instrument: the price-feed round named
    #: Sent whatever the bounty (the profitability rule does not apply): the full close of a
    #: book under water, which pays no penalty and so no bounty (``liquidate_insolvent``).
    maintenance: bool = False

    def call(self) -> tuple[str, tuple[object, ...]]:
        """The clearing-house function and its arguments."""
        if self.kind == ActionKind.FLAG:
            return "flag", (self.account, self.nonce, list(self.witness or ()))
        if self.kind == ActionKind.LIQUIDATE:
            return "liquidate", (self.account, self.nonce, list(self.witness or ()), self.fraction)
        if self.kind == ActionKind.SETTLE_ACCOUNT:
            return "settleAccount", (self.account,)
        if self.kind == ActionKind.RESOLVE_BAD_DEBT:
            return "resolveBadDebt", (self.account,)
        if self.kind == ActionKind.CLEAR_FLAG:
            return "clearFlag", (self.account,)
        if self.kind == ActionKind.SETTLE_INSTRUMENT:
            return "settleInstrument", (self.instrument, self.round_id)
        if self.kind == ActionKind.POKE_FUNDING:
            return "pokeFunding", (self.instrument,)
        raise ValueError(f"unknown action kind {self.kind}")


@dataclass(frozen=True)
class Assessment:
    account: int
    block: BlockRef
    nonce: int
    state: AccountState
    result: MarginResult | None
    lenient: bool
    #: The inputs digest, or how to compute it: most assessments are never recorded (a healthy
    #: account whose book did not change), so the hash is computed on first use.
    digest_source: str | Callable[[], str]
    action: Action | None
    flagged_at: int = 0
    note: str | None = None  # why no action where one might be expected (kept on the record)
    #: ``inputs_digest`` of the account's own inputs with an empty market: what decides
    #: whether a new record is due (prices and time move every block; the book does not).
    change_digest: str = ""
    #: ``no_price``: the name of the oracle check that failed (``StalePrice``, ...).
    oracle_error: str | None = None
    #: The state was proven by the bounded float pass (keeper.book_engine) and equals the
    #: exact one; ``result`` is None. Only quiet healthy books are assessed this way.
    bounded: bool = False

    @property
    def inputs_digest(self) -> str:
        d = self.digest_source
        if not isinstance(d, str):
            d = d()
            object.__setattr__(self, "digest_source", d)  # computed once
        return d


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
    acc = snap.accounts[account]
    settle = None
    if snap.settled_positions(account) and policy.allow_settlement:
        settle = _simple(ActionKind.SETTLE_ACCOUNT, account, acc.nonce)
    case = _Case(snap, account, acc, snap.portfolio(account), policy, settle)
    cash = _cash_only(case)
    if cash is not None:
        return cash

    lenient = False
    try:
        inp = snap.inputs(account)
    except OracleError:
        lenient = True
        try:
            inp = snap.inputs(account, lenient=True)
        except OracleError as exc:
            if settle is not None:  # settleAccount reads no oracle
                return case.make(
                    AccountState.SETTLEABLE, lenient=True, action=settle, note=str(exc)
                )
            rejected = case.make(AccountState.NO_PRICE, lenient=True, note=str(exc))
            return replace(rejected, oracle_error=type(exc).__name__)

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
    snap, acc, account, policy = case.snap, case.acc, case.account, case.policy
    grace = snap.liquidation_config[2]
    grace_over = case.flagged and snap.timestamp >= acc.flagged_at + grace
    if res.state == HEALTHY:
        return case.quiet(AccountState.HEALTHY, res, lenient, digest)
    if res.state == MARGIN_CALL and not case.flagged:
        state = AccountState.MARGIN_CALL
    elif res.state == MARGIN_CALL and not grace_over:
        return case.quiet(AccountState.FLAGGED_GRACE, res, lenient, digest)
    else:
        state = AccountState.LIQUIDATABLE

    # What the contract will run: the witness check under lenient ages.
    try:
        lin = snap.inputs(account, lenient=True)
        ltable = snap.table(lin.market)
        wres = ltable.witness_check(lin.portfolio, list(res.witness))
    except (OracleError, MarginError) as exc:
        return case.quiet(state, res, lenient, digest, note=f"witness check fails: {exc!r}")
    witness = tuple(res.witness)
    if state == AccountState.MARGIN_CALL:
        if wres.state < MARGIN_CALL:
            return case.quiet(
                state, res, lenient, digest, note="witness check shows no margin call"
            )
        if not policy.allow_flags:
            return case.quiet(state, res, lenient, digest)
        key = f"flag:{account}:{acc.nonce}"
        action = Action(ActionKind.FLAG, account, None, acc.nonce, witness, None, 0, key)
        return case.make(state, res, lenient, digest, action)
    if not (wres.state == LIQUIDATABLE or (wres.state == MARGIN_CALL and grace_over)):
        return case.quiet(state, res, lenient, digest, note="witness check shows not liquidatable")
    # Below MM: restore above MM. Flagged past grace: restore above IM (else it is re-flagged).
    target = MARGIN_CALL if wres.state == LIQUIDATABLE else HEALTHY
    fraction = choose_fraction(snap, ltable, lin.portfolio, wres, target, policy.fraction_steps)
    _, bounty = liquidation_payout(wres.requirement, wres.equity, fraction, snap.liquidation_config)
    action = Action(
        ActionKind.LIQUIDATE, account, None, acc.nonce, witness, fraction, bounty,
        f"liquidate:{account}:{acc.nonce}",
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


def policy_from_config(cfg: DecisionsConfig) -> DecisionPolicy:
    """``config.decisions`` -> DecisionPolicy (``min_profit`` in asset-0 WAD)."""
    return DecisionPolicy(
        min_profit=int(cfg.min_profit),
        allow_flags=cfg.allow_flags,
        allow_settlement=cfg.allow_settlement,
        allow_bad_debt=cfg.allow_bad_debt,
        clear_cured_flags=cfg.clear_cured_flags,
        liquidate_insolvent=cfg.liquidate_insolvent,
        gas_margin_percent=cfg.gas_margin_percent,
        backoff_blocks=cfg.backoff_blocks,
        max_backoff_blocks=cfg.max_backoff_blocks,
        fraction_steps=cfg.fraction_steps,
        gas_price_underlying=cfg.gas_price_underlying,
        native_price=None if cfg.native_price is None else int(cfg.native_price),
    )
