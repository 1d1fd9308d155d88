"""The keeper's decisions: classify accounts and choose actions from one ProtocolSnapshot.

Pure: no I/O. Everything here reads a ``keeper.chain.view.ProtocolSnapshot`` (one block) and
the engine (``margin.requirement``); the executor (keeper/core.py) simulates, prices gas and
sends. What mirrors the contract (and why it must match it):

* states: the full check (strict oracle ages, as ``marginOf``; lenient ages when strict raised
  an oracle error, recorded as ``lenient``) classifies; a flag / liquidation is only proposed
  when the *witness* check the contract runs (lenient ages, the full check's witness) passes;
* the liquidation's effect (``ClearingHouse._handOver`` / ``_chargePenalty``): per position
  ``|q|·fraction`` rounded down to LOT (all of it at 1e18), priced at the verifier's mark
  rounded to TICK against the account; penalty, bounty and the insurance top-up of a full close.
  The post-liquidation book is re-margined with the engine to pick the smallest fraction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from keeper.chain.rpc import BlockRef
from keeper.chain.view import NO_UNDERLYING, OracleError, ProtocolSnapshot
from keeper.config import DecisionsConfig
from keeper.digest import inputs_digest
from margin.errors import MarginError
from margin.fixed_point import mul_down, mul_up
from margin.portfolio import Market, Portfolio
from margin.requirement import HEALTHY, LIQUIDATABLE, MARGIN_CALL, MarginResult, ScenarioTable

WAD = 10**18
LOT = 10**8
TICK = 10**10

STATES = (
    "healthy",
    "margin_call",
    "liquidatable",
    "flagged_grace",
    "settleable",
    "bad_debt",
    "no_price",
    "empty",
    "invalid",  # the engine refused the inputs (a MarginError other than an oracle failure)
)
#: Actions that pay no bounty: allowed by policy flags instead of the profitability rule.
MAINTENANCE = frozenset(
    {"flag", "settle_account", "resolve_bad_debt", "settle_instrument", "clear_flag"}
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
    clear_flags: bool = False  # costs gas, pays nothing; off by default
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
    kind: (
        str  # flag | liquidate | settle_account | resolve_bad_debt | settle_instrument | clear_flag
    )
    account: int | None
    instrument: int | None
    nonce: int | None
    witness: tuple[int, ...] | None
    fraction: int | None  # WAD
    expected_bounty: int  # asset-0 WAD, as the contract would credit it
    key: str  # idempotency key: one transaction per key, ever

    def call(self) -> tuple[str, tuple[object, ...]]:
        """The clearing-house function and its arguments."""
        if self.kind == "flag":
            return "flag", (self.account, self.nonce, list(self.witness or ()))
        if self.kind == "liquidate":
            return "liquidate", (self.account, self.nonce, list(self.witness or ()), self.fraction)
        if self.kind == "settle_account":
            return "settleAccount", (self.account,)
        if self.kind == "resolve_bad_debt":
            return "resolveBadDebt", (self.account,)
        if self.kind == "clear_flag":
            return "clearFlag", (self.account,)
        if self.kind == "settle_instrument":
            return "settleInstrument", (self.instrument,)
        raise ValueError(f"unknown action kind {self.kind}")


@dataclass(frozen=True)
class Assessment:
    account: int
    block: BlockRef
    nonce: int
    state: str
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

    @property
    def inputs_digest(self) -> str:
        d = self.digest_source
        if not isinstance(d, str):
            d = d()
            object.__setattr__(self, "digest_source", d)  # computed once
        return d


# --- the contract's liquidation arithmetic -------------------------------------------------


def liquidation_payout(
    requirement: int,
    equity: int,
    fraction: int,
    config: tuple[int, int, int, int, int],
    insurance_fund: int,
) -> tuple[int, int]:
    """(penalty, bounty credited) of ``ClearingHouse._chargePenalty`` (witness-check result)."""
    penalty_rate, bounty_share, _grace, min_bounty, max_bounty = config
    penalty = mul_up(mul_up(requirement, fraction), penalty_rate)
    capped = penalty > equity
    if capped:
        penalty = equity if equity > 0 else 0
    bounty = mul_down(penalty, bounty_share)
    bounty = min(max(bounty, min_bounty), max_bounty, penalty)
    fund_after = insurance_fund + (penalty - bounty)
    if capped and fraction == WAD and bounty < min_bounty and fund_after > 0:
        bounty += min(min_bounty - bounty, fund_after)
    return penalty, bounty


def _close_qty(q: int, fraction: int) -> int:
    if fraction == WAD:
        return q
    m = abs(q) * fraction // WAD
    m -= m % LOT
    return -m if q < 0 else m


def _price_against(q: int, mark: int) -> int:
    if q > 0:
        return mark - mark % TICK
    r = mark % TICK
    return mark if r == 0 else mark + (TICK - r)


def after_liquidation(
    table: ScenarioTable, pf: Portfolio, fraction: int, penalty: int
) -> Portfolio | None:
    """The account's book after ``liquidate(fraction)`` (None: nothing would move).
    Partial closes never empty a position, so the storage order is unchanged."""
    positions = []
    cash = 0
    moved = False
    for pos in pf.positions:
        close = _close_qty(pos.quantity, fraction)
        if close != 0:
            moved = True
            mark = table.row(pos).v0
            assert isinstance(mark, int)
            cash += close * _price_against(pos.quantity, mark) // WAD
        if pos.quantity - close != 0:
            positions.append(replace(pos, quantity=pos.quantity - close))
    if not moved:
        return None
    coll = list(pf.collateral)
    coll[0] += cash - penalty
    return Portfolio(tuple(positions), tuple(coll))


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
            witness_result.requirement,
            witness_result.equity,
            f,
            snap.liquidation_config,
            snap.insurance_fund,
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


def assess_account(snap: ProtocolSnapshot, account: int, policy: DecisionPolicy) -> Assessment:
    acc = snap.accounts[account]
    pf = snap.portfolio(account)

    def make(
        state: str,
        result: MarginResult | None = None,
        lenient: bool = False,
        digest: str | Callable[[], str] | None = None,
        action: Action | None = None,
        note: str | None = None,
    ) -> Assessment:
        return Assessment(
            account,
            snap.block,
            acc.nonce,
            state,
            result,
            lenient,
            digest or (lambda: _no_price_digest(snap, pf)),
            action,
            acc.flagged_at,
            note,
            change or _no_price_digest(snap, pf),
        )

    change: str | None = None

    def simple(kind: str) -> Action:
        return Action(
            kind, account, None, acc.nonce, None, None, 0, f"{kind}:{account}:{acc.nonce}"
        )

    if any(snap.instruments[iid].settled for iid, _ in acc.positions):
        return make(
            "settleable", action=simple("settle_account") if policy.allow_settlement else None
        )
    bad_debt_action = simple("resolve_bad_debt") if policy.allow_bad_debt else None
    in_debt = not acc.positions and bool(acc.balances) and acc.balances[0] < 0
    if not acc.positions:
        volatile = any(
            b != 0 and snap.assets[k].underlying != NO_UNDERLYING
            for k, b in enumerate(acc.balances)
        )
        if in_debt and not volatile:
            return make("bad_debt", action=bad_debt_action)
        if not volatile:
            state = "empty" if not any(acc.balances) else "healthy"
            return make(state)

    lenient = False
    try:
        inp = snap.inputs(account)
    except OracleError:
        lenient = True
        try:
            inp = snap.inputs(account, lenient=True)
        except OracleError as exc:
            rejected = make("no_price", lenient=True, note=str(exc))
            return replace(rejected, oracle_error=type(exc).__name__)

    def digest() -> str:
        return inputs_digest(inp.portfolio, inp.market, snap.risk_params_bytes, lenient=lenient)

    # The account's own inputs only: a price round alone is no reason for a new record
    # (docs/keeper-decisions.md, "Records").
    change = inputs_digest(inp.portfolio, _NO_MARKET, snap.risk_params_bytes, lenient=lenient)
    try:
        table = snap.table(inp.market)
        res = table.full_check(inp.portfolio)
    except MarginError as exc:
        return make("invalid", lenient=lenient, digest=digest, note=repr(exc))

    if in_debt and res.state == LIQUIDATABLE:
        # Debt against volatile collateral only, below MM: nothing to liquidate, so it is
        # resolved (collateral sold to the backstop). A debt the collateral covers is a loan.
        return make("bad_debt", res, lenient, digest, bad_debt_action)
    grace = snap.liquidation_config[2]
    flagged = acc.flagged_at != 0
    grace_over = flagged and snap.timestamp >= acc.flagged_at + grace
    if res.state == HEALTHY:
        action = None
        if flagged and policy.clear_flags and not lenient:
            action = Action(
                "clear_flag", account, None, acc.nonce, None, None, 0,
                f"clear_flag:{account}:{acc.nonce}:{acc.flagged_at}",
            )  # fmt: skip
        return make("healthy", res, lenient, digest, action)
    if res.state == MARGIN_CALL and not flagged:
        state = "margin_call"
    elif res.state == MARGIN_CALL and not grace_over:
        return make("flagged_grace", res, lenient, digest)
    else:
        state = "liquidatable"

    # What the contract will run: the witness check under lenient ages.
    try:
        lin = snap.inputs(account, lenient=True)
        ltable = snap.table(lin.market)
        wres = ltable.witness_check(lin.portfolio, list(res.witness))
    except (OracleError, MarginError) as exc:
        return make(state, res, lenient, digest, note=f"witness check fails: {exc!r}")
    witness = tuple(res.witness)
    if state == "margin_call":
        if wres.state < MARGIN_CALL:
            return make(state, res, lenient, digest, note="witness check shows no margin call")
        if not policy.allow_flags:
            return make(state, res, lenient, digest)
        action = Action(
            "flag", account, None, acc.nonce, witness, None, 0, f"flag:{account}:{acc.nonce}"
        )
        return make(state, res, lenient, digest, action)
    if not acc.positions:
        return make(state, res, lenient, digest, note="no position to liquidate")
    if not (wres.state == LIQUIDATABLE or (wres.state == MARGIN_CALL and grace_over)):
        return make(state, res, lenient, digest, note="witness check shows not liquidatable")
    # Below MM: restore above MM. Flagged past grace: restore above IM (else it is re-flagged).
    target = MARGIN_CALL if wres.state == LIQUIDATABLE else HEALTHY
    fraction = choose_fraction(snap, ltable, lin.portfolio, wres, target, policy.fraction_steps)
    _, bounty = liquidation_payout(
        wres.requirement, wres.equity, fraction, snap.liquidation_config, snap.insurance_fund
    )
    action = Action(
        "liquidate", account, None, acc.nonce, witness, fraction, bounty,
        f"liquidate:{account}:{acc.nonce}",
    )  # fmt: skip
    return make(state, res, lenient, digest, action)


def expired_unsettled(snap: ProtocolSnapshot) -> list[Action]:
    """settleInstrument for every expired, unsettled instrument whose price feed (strict age)
    has a round published at or after expiry (``PriceBeforeExpiry`` otherwise). The key carries
    the round: a transaction that reverted may be retried on a later round."""
    out = []
    for ins in snap.instruments.values():
        if not ins.listed or ins.settled or ins.expiry == 0 or snap.timestamp < ins.expiry:
            continue
        cfg = snap.underlyings[ins.underlying]
        feed = snap.feeds[cfg.price_feed]
        try:
            _, updated = feed.read(cfg.max_age, snap.timestamp)
        except OracleError:
            continue
        if updated < ins.expiry:
            continue
        key = f"settle_instrument:{ins.id}:{feed.round_id}"
        out.append(Action("settle_instrument", None, ins.id, None, None, None, 0, key))
    return out


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
        clear_flags=cfg.clear_flags,
        gas_margin_percent=cfg.gas_margin_percent,
        backoff_blocks=cfg.backoff_blocks,
        max_backoff_blocks=cfg.max_backoff_blocks,
        fraction_steps=cfg.fraction_steps,
        gas_price_underlying=cfg.gas_price_underlying,
        native_price=None if cfg.native_price is None else int(cfg.native_price),
    )
