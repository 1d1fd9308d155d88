"""The portfolio-margin engine: mirrors contracts/src/margin/PortfolioMargin.sol, function for
function in the same order (docs/mirror.md): validation of parameters, market and portfolio;
the scenario grid; the vol shift; the full check, the witness check and the contingencies.
The data types it works on are in margin/params.py (risk parameters) and margin/portfolio.py
(positions, portfolio, market).

Engine shape: a :class:`ScenarioTable` prices each (instrument, scenario) once per market state
and is shared by every account evaluated in that state; the per-account work
(:meth:`ScenarioTable.full_check`, :meth:`ScenarioTable.witness_check`) is integer aggregation.
Table entries hold a value *or the exception* its computation raised, so an account fails with
exactly the error the verifier reverts with first, in the verifier's order of work.

Validation: :func:`validate_params`, :func:`validate_market`, :func:`validate_portfolio` check
every bound in the documented order and raise the first violation, as the Solidity
``validate*InOrder`` reference functions do (the Solidity ``validate*`` functions decide in one
assembly pass first and take that path only to name a failure).

Scenario grid (``scenario``, ``shocked_spots``, ``vol_shift_up``), integer for integer:

* Scenario index j of an underlying with n move steps (2n+1 moves) and E extended moves:
  ``j < 3(2n+1)`` (regular): move index ``k = j // 3`` in 0..2n, price move
  ``mul_div_down(R, k - n, n)`` (floored, so -R·1/3 is one wei more negative than exact), vol
  state ``j % 3`` (0 down, 1 unchanged, 2 up), weight 1 (not applied);
  ``j = 3(2n+1) + e`` (extended): ``extended[e]`` = (move, vol state, weight).
  The center scenario ``3n + 1`` (move 0, vol unchanged) reprices nothing and has loss exactly
  0, so the worst loss of an underlying is never negative.
* Shocked spot: ``mul_down(S, 1e18 + move)`` (floored; the same integer on both sides is what
  matters, the direction is immaterial as long as both sides agree and it is documented).
* Vol shift of an option with time to expiry T seconds (computed once per option):
  ``factor = exp_wad(mul_down(p, ln_wad(mul_div_down(T_ref, 1e18, max(T, T_min)))))``,
  ``shift = mul_up(base, factor)`` (rounded up: a bigger shift is the conservative side).
  With the parameter bounds ln(T_ref/T_min) <= ln(1.6e8) < 19 and p <= 2, so the exponent is
  below 38 and exp never overflows. States: up = ``min(vol + shift, MAX_SCENARIO_VOL)``,
  down = ``max(vol - shift, min(vol, floor))``, unchanged = vol.

Steps and rounding (identical in Solidity):

1. Validation: parameters, market, portfolio (then the witness), first violation wins.
2. Per position, in order (the verifier's loop): options compute the vol shift (full check
   always; witness check only if the named scenario's vol state is not "unchanged"), then
   the mark V0 = price(S, vol, tau), then each scenario price V_j in index order (the center
   scenario is V0 itself, never repriced). Prices are ``option_model_price`` (the intrinsic
   value where the spot alone leaves the pricing domain); V_j takes ln(S'_j/K) as
   ``ln_ratio(S, K) + ln_ratio(S'_j, S)`` (OptionPricing.modelPriceLn). Futures: V0 = S,
   V_j = S'_j.
   Exact accumulation per underlying and scenario: ``acc_j += q · (V_j − V0)``.
   Volatile collateral of the underlying: ``acc_j += e · (S'_j − S)``, e its haircut balance.
3. Scenario loss ``L_j = mul_up(−acc_j, 1)`` = ceil(−acc_j / 1e18) (losses round up);
   extended scenarios count ``mul_up(L_j, weight)``. Loss of the underlying: the largest
   weighted loss (the center gives 0, so it is >= 0); the witness is its lowest index.
   A witness check uses ``max(weighted L_w, 0)`` of the named scenario instead.
4. Contingencies per underlying (rounded up), the same in both checks:
   short options: per (call/put, strike) group, net quantity n < 0 charges
   ``mul_up(mul_up(−n, S), short_option_charge)``;
   calendar: futures netted per expiry, ``mul_up(mul_up(min(long, short), S), calendar_charge)``;
   vega: options' proxy ``v = mul_down(q, sqrt_down(mul_div_down(tau, 1e18, YEAR)))`` netted per
   expiry, ``mul_up(mul_up(min(Σ positive, Σ −negative), S), vega_charge)`` (q·S·√T, the spot
   applied once per underlying).
5. ``sum = Σ loss_u``, ``credit = mul_down(sum − max_u loss_u, correlation_credit)`` (rounded
   down: less credit), ``MM = sum − credit + Σ contingencies``, ``IM = mul_up(MM, im_factor)``.
6. Equity (rounded down): Σ assets (stable ``e``; volatile ``mul_down(e, S)``, with
   ``e = mul_down(balance, 1e18 − haircut)`` if balance > 0 else balance) + Σ positions
   ``mul_down(q, V0 − entry)``. State: 2 liquidatable if equity < MM, 1 margin call if
   equity < IM, else 0.

Historical set (``HistoricalSet`` in margin/params.py; PortfolioMargin._hist*): scenario s moves
underlying u by ``historical_move`` (a historical move times fhs_scale[u], ``mul_down``, kept
in [-0.99, 10]; a stress day's as it is) and its vol by ``historical_vol``. After the grid,
every position (then every volatile asset) adds ``q · (V_s − V0)`` (``e · (S'_s − S)``) to one
joint accumulator per scenario, all underlyings together; options price V_s with
ln(S'_s/K) = ln(S/K) + ln(S'_s/S). Joint loss ``ceil(−acc_s / 1e18)``; ES = ceil(mean of the k
largest), ties to the lower index, whose indices (increasing) follow the grid witness. Step 5
becomes ``MM = max(sum − credit, ES) + Σ contingencies``. A witness check names the nU grid
indices, optionally followed by k strictly increasing historical indices (their mean loss,
rounded up, is at most ES); without them ES counts 0.

Witness soundness: the requirement is non-decreasing in every underlying loss (credit factor
<= 0.8 < 1, and floor(c·(x+1)) − floor(c·x) <= 1), a named scenario's loss is <= the worst,
and contingencies are identical: a witness check never exceeds the full requirement, and the
full check's witness reproduces it exactly.

Bounds (why nothing overflows int256 ~ 5.7e76): |q| <= 1e30, prices <= 1e30, scenario spots
<= 11 · 1e30, so |q·(V_j − V0)| < 1.2e61 and 40 positions + 8 assets (|e·ΔS| <= 1e33·1.1e31)
stay below 1e64; contingency and equity products are of the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from margin.errors import (
    CollateralLengthMismatch,
    CollateralOutOfRange,
    EntryPriceOutOfRange,
    InvalidAssetCount,
    InvalidAssetParameter,
    InvalidGlobalParameter,
    InvalidHistoricalScenario,
    InvalidInstrumentKind,
    InvalidOptionStrike,
    InvalidRiskParameter,
    InvalidUnderlyingCount,
    MarginError,
    MarketLengthMismatch,
    MarketSpotOutOfRange,
    MarketVolOutOfRange,
    QuantityOutOfRange,
    TooManyPositions,
    UnknownUnderlying,
    WitnessLengthMismatch,
    WitnessNotIncreasing,
    WitnessOutOfRange,
)
from margin.fixed_point import exp_wad, ln_wad, mul_div_down, mul_down, mul_up, sqrt_down
from margin.option_pricing import ln_ratio, option_model_price
from margin.params import (
    F_ASSET_UNDERLYING,
    F_CALENDAR_CHARGE,
    F_CORRELATION_CREDIT,
    F_ES_COUNT,
    F_EXTENDED_COUNT,
    F_EXTENDED_MOVE,
    F_EXTENDED_VOL_STATE,
    F_EXTENDED_WEIGHT,
    F_FHS_LENGTH,
    F_FHS_SCALE,
    F_HAIRCUT,
    F_HISTORICAL_MOVES,
    F_HISTORICAL_PRICE_MOVE,
    F_HISTORICAL_VOL_MOVE,
    F_HISTORICAL_VOL_MOVES,
    F_IM_FACTOR,
    F_MOVE_STEPS,
    F_PRICE_RANGE,
    F_SCENARIO_TOTAL,
    F_SHORT_OPTION_CHARGE,
    F_STRESS_COUNT,
    F_VEGA_CHARGE,
    F_VOL_EXPONENT,
    F_VOL_FLOOR,
    F_VOL_MIN_TIME,
    F_VOL_REF_TIME,
    F_VOL_SHIFT_BASE,
    MAX_ASSETS,
    MAX_CORRELATION_CREDIT,
    MAX_ES_COUNT,
    MAX_EXTENDED,
    MAX_EXTENDED_MOVE,
    MAX_FHS_SCALE,
    MAX_IM_FACTOR,
    MAX_MOVE_STEPS,
    MAX_PRICE_RANGE,
    MAX_SCENARIOS,
    MAX_UNDERLYINGS,
    MAX_VOL_EXPONENT,
    MAX_VOL_SHIFT_BASE,
    MAX_VOL_TIME,
    MIN_EXTENDED_MOVE,
    STABLE,
    VOL_DOWN,
    VOL_UNCHANGED,
    VOL_UP,
    WAD,
    YEAR,
    RiskParams,
    UnderlyingParams,
)
from margin.portfolio import (
    CALL,
    FUTURE,
    MAX_COLLATERAL,
    MAX_POSITIONS,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_VOL,
    MIN_SPOT,
    PUT,
    Market,
    Portfolio,
    Position,
)

HEALTHY, MARGIN_CALL, LIQUIDATABLE = 0, 1, 2
STATE_NAMES = {HEALTHY: "healthy", MARGIN_CALL: "margin_call", LIQUIDATABLE: "liquidatable"}

Outcome = int | MarginError


#: The up state is capped here: the pricing library accepts vols up to 1000%.
MAX_SCENARIO_VOL = 10 * WAD


@dataclass(frozen=True)
class Scenario:
    move: int  # relative price move, WAD
    vol_state: int
    weight: int  # WAD; regular scenarios carry WAD and the weight is not applied
    extended: bool


def validate_params(p: RiskParams) -> None:
    """Raise the first bound violation, in the order PortfolioMargin.validateParamsInOrder
    checks."""
    if not 0 <= p.correlation_credit <= MAX_CORRELATION_CREDIT:
        raise InvalidGlobalParameter(F_CORRELATION_CREDIT)
    if not WAD < p.im_factor <= MAX_IM_FACTOR:
        raise InvalidGlobalParameter(F_IM_FACTOR)
    n_u = len(p.underlyings)
    if n_u == 0 or n_u > MAX_UNDERLYINGS:
        raise InvalidUnderlyingCount(n_u)
    for i, u in enumerate(p.underlyings):
        _validate_underlying(i, u)
    if len(p.assets) > MAX_ASSETS:
        raise InvalidAssetCount(len(p.assets))
    for a_i, a in enumerate(p.assets):
        if not 0 <= a.haircut <= WAD:
            raise InvalidAssetParameter(a_i, F_HAIRCUT)
        if a.underlying != STABLE and not 0 <= a.underlying < n_u:
            raise InvalidAssetParameter(a_i, F_ASSET_UNDERLYING)
    _validate_historical(p)


def _validate_historical(p: RiskParams) -> None:
    """The historical set's bounds, last in the order (PortfolioMargin._validateHistorical)."""
    h = p.historical
    n_u = len(p.underlyings)
    n = len(h.moves)
    if n % n_u != 0:
        raise InvalidGlobalParameter(F_HISTORICAL_MOVES)
    s = n // n_u
    if len(h.vol_moves) not in (0, n):
        raise InvalidGlobalParameter(F_HISTORICAL_VOL_MOVES)
    if h.stress_count > s:
        raise InvalidGlobalParameter(F_STRESS_COUNT)
    if len(h.fhs_scale) != (0 if s == 0 else n_u):
        raise InvalidGlobalParameter(F_FHS_LENGTH)
    k_max = min(s, MAX_ES_COUNT)
    if (h.es_count != 0) if s == 0 else not 1 <= h.es_count <= k_max:
        raise InvalidGlobalParameter(F_ES_COUNT)
    if s == 0:
        return
    for u, up in enumerate(p.underlyings):
        if not 0 <= h.fhs_scale[u] <= MAX_FHS_SCALE:
            raise InvalidRiskParameter(u, F_FHS_SCALE)
        if up.scenario_count + s > MAX_SCENARIOS:
            raise InvalidRiskParameter(u, F_SCENARIO_TOTAL)
    for i, x in enumerate(h.moves):
        if not MIN_EXTENDED_MOVE <= x <= MAX_EXTENDED_MOVE:
            raise InvalidHistoricalScenario(i // n_u, i % n_u, F_HISTORICAL_PRICE_MOVE)
        if h.vol_moves and not MIN_EXTENDED_MOVE <= h.vol_moves[i] <= MAX_EXTENDED_MOVE:
            raise InvalidHistoricalScenario(i // n_u, i % n_u, F_HISTORICAL_VOL_MOVE)


def _validate_underlying(i: int, u: UnderlyingParams) -> None:
    checks = (
        (0 < u.price_range <= MAX_PRICE_RANGE, F_PRICE_RANGE),
        (1 <= u.move_steps <= MAX_MOVE_STEPS, F_MOVE_STEPS),
        (0 <= u.vol_shift_base <= MAX_VOL_SHIFT_BASE, F_VOL_SHIFT_BASE),
        (1 <= u.vol_ref_time <= MAX_VOL_TIME, F_VOL_REF_TIME),
        (1 <= u.vol_min_time <= u.vol_ref_time, F_VOL_MIN_TIME),
        (0 <= u.vol_exponent <= MAX_VOL_EXPONENT, F_VOL_EXPONENT),
        (0 <= u.vol_floor <= WAD, F_VOL_FLOOR),
        (len(u.extended) <= MAX_EXTENDED, F_EXTENDED_COUNT),
    )
    for ok, code in checks:
        if not ok:
            raise InvalidRiskParameter(i, code)
    for e in u.extended:
        if not MIN_EXTENDED_MOVE <= e.move <= MAX_EXTENDED_MOVE:
            raise InvalidRiskParameter(i, F_EXTENDED_MOVE)
        if not 0 <= e.vol_state <= VOL_UP:
            raise InvalidRiskParameter(i, F_EXTENDED_VOL_STATE)
        if not 0 <= e.weight <= WAD:
            raise InvalidRiskParameter(i, F_EXTENDED_WEIGHT)
    for value, code in (
        (u.short_option_charge, F_SHORT_OPTION_CHARGE),
        (u.calendar_charge, F_CALENDAR_CHARGE),
        (u.vega_charge, F_VEGA_CHARGE),
    ):
        if not 0 <= value <= WAD:
            raise InvalidRiskParameter(i, code)


def validate_market(m: Market, params: RiskParams) -> None:
    """Same checks, same order as PortfolioMargin.validateMarketInOrder (after the
    parameters)."""
    n_u = len(params.underlyings)
    if len(m.spots) != n_u:
        raise MarketLengthMismatch(n_u, len(m.spots))
    if len(m.vols) != n_u:
        raise MarketLengthMismatch(n_u, len(m.vols))
    for i in range(n_u):
        if not MIN_SPOT <= m.spots[i] <= MAX_PRICE:
            raise MarketSpotOutOfRange(i, m.spots[i])
        if not 0 <= m.vols[i] <= MAX_VOL:
            raise MarketVolOutOfRange(i, m.vols[i])


def validate_portfolio(pf: Portfolio, params: RiskParams) -> None:
    """Same checks, same order as PortfolioMargin.validatePortfolioInOrder."""
    if len(pf.positions) > MAX_POSITIONS:
        raise TooManyPositions(len(pf.positions))
    if len(pf.collateral) != len(params.assets):
        raise CollateralLengthMismatch(len(params.assets), len(pf.collateral))
    n_u = len(params.underlyings)
    for i, p in enumerate(pf.positions):
        if p.underlying >= n_u:
            raise UnknownUnderlying(i, p.underlying)
        if p.kind > PUT:
            raise InvalidInstrumentKind(i, p.kind)
        if p.kind != FUTURE and not 0 < p.strike <= MAX_PRICE:
            raise InvalidOptionStrike(i, p.strike)
        if not -MAX_QUANTITY <= p.quantity <= MAX_QUANTITY:
            raise QuantityOutOfRange(i, p.quantity)
        if not -MAX_PRICE <= p.entry_price <= MAX_PRICE:
            raise EntryPriceOutOfRange(i, p.entry_price)
    for a, amount in enumerate(pf.collateral):
        if not -MAX_COLLATERAL <= amount <= MAX_COLLATERAL:
            raise CollateralOutOfRange(a, amount)


def scenario_count(u: UnderlyingParams) -> int:
    """3(2n+1) regular scenarios, then the extended moves."""
    return u.scenario_count


def scenario(u: UnderlyingParams, j: int) -> Scenario:
    """Scenario j of an underlying (0 <= j < scenario_count)."""
    regular = u.regular_count
    if j < regular:
        k = j // 3
        move = mul_div_down(u.price_range, k - u.move_steps, u.move_steps)
        return Scenario(move, j % 3, WAD, False)
    e = u.extended[j - regular]
    return Scenario(e.move, e.vol_state, e.weight, True)


def scenarios(u: UnderlyingParams) -> list[Scenario]:
    return [scenario(u, j) for j in range(u.scenario_count)]


def historical_count(p: RiskParams) -> int:
    """S, the number of historical scenarios (len(moves) / number of underlyings)."""
    return p.historical_count


def historical_move(p: RiskParams, s: int, u: int) -> int:
    """The price move of underlying u in historical scenario s: a historical move times
    fhs_scale[u] (mul_down) kept in [MIN_EXTENDED_MOVE, MAX_EXTENDED_MOVE]; a stress day's
    move (the last stress_count scenarios) as it is."""
    h = p.historical
    move = h.moves[s * len(p.underlyings) + u]
    if s < historical_count(p) - h.stress_count:
        move = mul_down(move, h.fhs_scale[u])
        move = max(MIN_EXTENDED_MOVE, min(move, MAX_EXTENDED_MOVE))
    return move


def historical_vol(p: RiskParams, s: int, u: int, vol: int) -> int:
    """The implied vol of underlying u in historical scenario s: mul_down(vol, 1e18 +
    vol_move), at most MAX_SCENARIO_VOL (vol itself when the set has no vol moves)."""
    vm = p.historical.vol_moves
    if not vm:
        return vol
    v = mul_down(vol, WAD + vm[s * len(p.underlyings) + u])
    return v if v < MAX_SCENARIO_VOL else MAX_SCENARIO_VOL


def shocked_spot(spot: int, move: int) -> int:
    """The spot after a relative move: mul_down(spot, 1e18 + move)."""
    return mul_down(spot, WAD + move)


def shocked_spots(u: UnderlyingParams, spot: int) -> list[int]:
    """The shocked spot of every scenario of the underlying, in scenario order."""
    return [shocked_spot(spot, sc.move) for sc in scenarios(u)]


def vol_shift_up(u: UnderlyingParams, tau: int) -> int:
    """Absolute vol shift for an option with tau seconds to expiry (bigger when short-dated),
    rounded up (the last step is a mul_up: a bigger shift is the conservative side)."""
    t_eff = tau if tau > u.vol_min_time else u.vol_min_time
    ratio = mul_div_down(u.vol_ref_time, WAD, t_eff)
    factor = exp_wad(mul_down(u.vol_exponent, ln_wad(ratio)))
    return mul_up(u.vol_shift_base, factor)


def vol_for_state(u: UnderlyingParams, vol: int, shift: int, state: int) -> int:
    if state == VOL_UP:
        up = vol + shift
        return up if up < MAX_SCENARIO_VOL else MAX_SCENARIO_VOL
    if state == VOL_DOWN:
        lowest = vol if vol < u.vol_floor else u.vol_floor
        down = vol - shift
        return down if down > lowest else lowest
    assert state == VOL_UNCHANGED
    return vol


@dataclass
class MarginResult:
    """What fullCheck / witnessCheck return (Solidity ``MarginResult``), plus, for the full
    check, the weighted scenario losses per underlying (the risk matrix, Python only)."""

    equity: int
    requirement: int  # maintenance margin
    initial_margin: int
    contingencies: int
    credit: int
    state: int
    losses: list[int]  # per underlying
    witness: list[int]  # per underlying, then (full check: always) the ES indices
    expected_shortfall: int = 0  # mean of the worst k (witness: the named) joint losses, up
    scenario_losses: list[list[int]] = field(default_factory=list)
    historical_losses: list[int] = field(default_factory=list)  # full check: per scenario

    def to_abi(self) -> tuple[Any, ...]:
        return (
            self.equity,
            self.requirement,
            self.initial_margin,
            self.contingencies,
            self.credit,
            self.state,
            list(self.losses),
            list(self.witness),
            self.expected_shortfall,
        )


def _unwrap(x: Outcome) -> int:
    if isinstance(x, MarginError):
        raise x
    return x


def _capture(fn: Callable[..., int], *args: Any) -> Outcome:
    try:
        return fn(*args)
    except MarginError as e:
        return e


@dataclass
class _Row:
    """One instrument in one market state: shift, mark and price per scenario."""

    shift: Outcome  # options only (0 for futures)
    v0: Outcome
    prices: list[Outcome]  # V_j per scenario index (center = v0)
    vega_base: int  # sqrt_down(tau in years), options only
    hist_prices: list[Outcome] = field(default_factory=list)  # V_s per historical scenario


def _haircut_down(balance: int, haircut: int) -> int:
    """A collateral balance after its haircut (PortfolioMargin._haircutDown): a positive balance
    counts mul_down(balance, 1e18 - haircut), a debt counts in full."""
    return mul_down(balance, WAD - haircut) if balance > 0 else balance


def _joint_loss_up(x: int) -> int:
    """A joint scenario's loss: ceil(-x / 1e18) (PortfolioMargin._jointLossUp)."""
    return mul_up(-x, 1)


def _div_up_count(a: int, k: int) -> int:
    """ceil(a / k) for k >= 1 (PortfolioMargin._divUpCount)."""
    return -((-a) // k)


def _worst_mean_up(losses: list[int], k: int) -> tuple[int, list[int]]:
    """(ES, indices): the mean (rounded up) of the k largest losses, ties to the lower index,
    and their indices in increasing order (PortfolioMargin._worstMeanUp)."""
    worst = sorted(range(len(losses)), key=lambda s: (-losses[s], s))[:k]
    return _div_up_count(sum(losses[s] for s in worst), k), sorted(worst)


class ScenarioTable:
    """Prices shared by every account in one (market, parameters) state."""

    def __init__(self, market: Market, params: RiskParams) -> None:
        validate_params(params)
        validate_market(market, params)
        self.market = market
        self.params = params
        self.scenarios: list[list[Scenario]] = [scenarios(u) for u in params.underlyings]
        self.shocked: list[list[int]] = [
            shocked_spots(u, market.spots[i]) for i, u in enumerate(params.underlyings)
        ]
        self._rows: dict[tuple[int, int, int, int], _Row] = {}
        self._ln_move_cache: dict[int, list[int]] = {}
        # The historical set (PortfolioMargin._histPlan over every scenario): spot and vol of
        # each underlying per scenario; ln(S'_s / S) on demand.
        self.n_hist = historical_count(params)
        self.hist_spots: list[list[int]] = [
            [
                shocked_spot(market.spots[u], historical_move(params, s, u))
                for s in range(self.n_hist)
            ]
            for u in range(len(params.underlyings))
        ]
        self.hist_vols: list[list[int]] = [
            [historical_vol(params, s, u, market.vols[u]) for s in range(self.n_hist)]
            for u in range(len(params.underlyings))
        ]
        self._hist_ln_cache: dict[int, list[int]] = {}

    def _hist_ln(self, u: int) -> list[int]:
        """ln_ratio(S'_s, S) per historical scenario s of underlying u."""
        ln = self._hist_ln_cache.get(u)
        if ln is None:
            spot = self.market.spots[u]
            ln = self._hist_ln_cache[u] = [ln_ratio(x, spot) for x in self.hist_spots[u]]
        return ln

    def _ln_moves(self, u: int) -> list[int]:
        """ln_ratio(S'_j, S) per scenario j of underlying u (PortfolioMargin._lnMoves)."""
        ln = self._ln_move_cache.get(u)
        if ln is None:
            spot = self.market.spots[u]
            ln = self._ln_move_cache[u] = [ln_ratio(s, spot) for s in self.shocked[u]]
        return ln

    def row(self, pos: Position) -> _Row:
        key = pos.instrument
        r = self._rows.get(key)
        if r is None:
            r = self._rows[key] = self._price(pos)
        return r

    def _price(self, pos: Position) -> _Row:
        u = pos.underlying
        spot = self.market.spots[u]
        shocked = self.shocked[u]
        if pos.kind == FUTURE:
            return _Row(0, spot, list(shocked), 0, list(self.hist_spots[u]))
        up = self.params.underlyings[u]
        vol = self.market.vols[u]
        rate = self.market.rate
        tau = pos.expiry - self.market.timestamp if pos.expiry > self.market.timestamp else 0
        is_call = pos.kind == CALL
        shift = _capture(vol_shift_up, up, tau)
        v0 = _capture(option_model_price, is_call, spot, pos.strike, tau, vol, rate)
        # ln(S_j/K) = ln(S/K) + ln(S_j/S), as the verifier shares them (OptionPricing.modelPriceLn);
        # only when V0 priced (spot and strike in range; otherwise V0's error comes first).
        ln_sk = None if isinstance(v0, MarginError) else ln_ratio(spot, pos.strike)
        ln_moves = None if ln_sk is None else self._ln_moves(u)
        prices: list[Outcome] = []
        center = up.center_index
        for j, sc in enumerate(self.scenarios[u]):
            if j == center:
                prices.append(v0)
                continue
            v = vol
            if sc.vol_state != VOL_UNCHANGED:
                if isinstance(shift, MarginError):  # the shift's error comes first
                    prices.append(shift)
                    continue
                v = vol_for_state(up, vol, shift, sc.vol_state)
            ln_j = None if ln_sk is None or ln_moves is None else ln_sk + ln_moves[j]
            args = (is_call, shocked[j], pos.strike, tau, v, rate, ln_j)
            prices.append(_capture(option_model_price, *args))
        vega_base = sqrt_down(mul_div_down(tau, WAD, YEAR))
        hist: list[Outcome] = [v0] * self.n_hist  # (never read when V0 failed: its error first)
        if ln_sk is not None and self.n_hist:
            hist_ln = self._hist_ln(u)
            for i, (s_h, v_h) in enumerate(zip(self.hist_spots[u], self.hist_vols[u], strict=True)):
                args = (is_call, s_h, pos.strike, tau, v_h, rate, ln_sk + hist_ln[i])
                hist[i] = _capture(option_model_price, *args)
        return _Row(shift, v0, prices, vega_base, hist)

    # --- per account ---------------------------------------------------------------------

    def full_check(self, pf: Portfolio) -> MarginResult:
        validate_portfolio(pf, self.params)
        n_u = len(self.params.underlyings)
        acc = [[0] * len(sc) for sc in self.scenarios]
        acc_h = [0] * self.n_hist
        equity = 0
        for pos in pf.positions:
            r = self.row(pos)
            if pos.kind != FUTURE:
                _unwrap(r.shift)
            v0 = _unwrap(r.v0)
            a = acc[pos.underlying]
            q = pos.quantity
            for j, pj in enumerate(r.prices):
                a[j] += q * (_unwrap(pj) - v0)
            for i, ph in enumerate(r.hist_prices):  # then the historical scenarios
                acc_h[i] += q * (_unwrap(ph) - v0)
            equity += mul_down(q, v0 - pos.entry_price)
        equity += self._collateral(pf, acc, None)
        self._hist_collateral(pf, acc_h, list(range(self.n_hist)))
        losses: list[int] = []
        witness: list[int] = []
        matrix: list[list[int]] = []
        for u in range(n_u):
            losses_up = [
                mul_up(mul_up(-x, 1), sc.weight) if sc.extended else mul_up(-x, 1)
                for x, sc in zip(acc[u], self.scenarios[u], strict=True)
            ]
            best = 0  # PortfolioMargin._worstLossUp: the first index of the largest loss
            for j in range(1, len(losses_up)):
                if losses_up[j] > losses_up[best]:
                    best = j
            matrix.append(losses_up)
            losses.append(losses_up[best])
            witness.append(best)
        es = 0
        hist_losses = [_joint_loss_up(x) for x in acc_h]
        if self.n_hist:
            es, worst = _worst_mean_up(hist_losses, self.params.historical.es_count)
            witness.extend(worst)
        res = self._finish(pf, equity, losses, witness, es)
        res.scenario_losses = matrix
        res.historical_losses = hist_losses
        return res

    def witness_check(self, pf: Portfolio, witness: list[int]) -> MarginResult:
        validate_portfolio(pf, self.params)
        n_u = len(self.params.underlyings)
        k = self.params.historical.es_count
        if len(witness) not in (n_u, n_u + k):
            raise WitnessLengthMismatch(n_u + k, len(witness))
        for u, w in enumerate(witness[:n_u]):
            count = len(self.scenarios[u])
            if not 0 <= w < count:  # (a negative index cannot even be ABI-encoded)
                raise WitnessOutOfRange(u, w, count)
        named = witness[n_u:]  # PortfolioMargin._esIndices
        for i, s_i in enumerate(named):
            if not 0 <= s_i < self.n_hist:
                raise WitnessOutOfRange(n_u + i, s_i, self.n_hist)
            if i > 0 and s_i <= named[i - 1]:
                raise WitnessNotIncreasing(n_u + i, s_i)
        acc = [0] * n_u
        acc_h = [0] * len(named)
        equity = 0
        for pos in pf.positions:
            u = pos.underlying
            r = self.row(pos)
            w = witness[u]
            if pos.kind != FUTURE and self.scenarios[u][w].vol_state != VOL_UNCHANGED:
                _unwrap(r.shift)
            v0 = _unwrap(r.v0)
            acc[u] += pos.quantity * (_unwrap(r.prices[w]) - v0)
            equity += mul_down(pos.quantity, v0 - pos.entry_price)
            for i, s_i in enumerate(named):
                acc_h[i] += pos.quantity * (_unwrap(r.hist_prices[s_i]) - v0)
        equity += self._collateral(pf, None, (acc, witness))
        self._hist_collateral(pf, acc_h, named)
        losses = []
        for u in range(n_u):
            sc = self.scenarios[u][witness[u]]
            loss_up = mul_up(-acc[u], 1)
            if sc.extended:
                loss_up = mul_up(loss_up, sc.weight)
            losses.append(loss_up if loss_up > 0 else 0)
        es = _div_up_count(sum(_joint_loss_up(x) for x in acc_h), len(acc_h)) if acc_h else 0
        return self._finish(pf, equity, losses, list(witness), es)

    def _hist_collateral(self, pf: Portfolio, acc_h: list[int], index: list[int]) -> None:
        """Volatile collateral's moves in the historical scenarios `index` into acc_h
        (PortfolioMargin._histCollateral; the value itself is counted by _collateral)."""
        if not index:
            return
        for asset, balance in zip(self.params.assets, pf.collateral, strict=True):
            if asset.underlying == STABLE:
                continue
            e = _haircut_down(balance, asset.haircut)
            u = asset.underlying
            spot = self.market.spots[u]
            for i, s_i in enumerate(index):
                acc_h[i] += e * (self.hist_spots[u][s_i] - spot)

    def _collateral(
        self,
        pf: Portfolio,
        acc_full: list[list[int]] | None,
        acc_witness: tuple[list[int], list[int]] | None,
    ) -> int:
        """Collateral value after haircuts (rounded down), and its scenario moves into acc."""
        value = 0
        for asset, balance in zip(self.params.assets, pf.collateral, strict=True):
            e = _haircut_down(balance, asset.haircut)
            if asset.underlying == STABLE:
                value += e
                continue
            u = asset.underlying
            spot = self.market.spots[u]
            value += mul_down(e, spot)
            if acc_full is not None:
                row = acc_full[u]
                for j, s_j in enumerate(self.shocked[u]):
                    row[j] += e * (s_j - spot)
            else:
                assert acc_witness is not None
                acc, witness = acc_witness
                acc[u] += e * (self.shocked[u][witness[u]] - spot)
        return value

    def _finish(
        self, pf: Portfolio, equity: int, losses: list[int], witness: list[int], es: int
    ) -> MarginResult:
        """MM = max(grid requirement, ES) + contingencies (PortfolioMargin._finish)."""
        total = sum(losses)
        # Less credit is the conservative side: rounded down.
        credit_down = mul_down(total - max(losses), self.params.correlation_credit)
        cont = self.contingencies(pf)
        grid = total - credit_down
        mm = (es if es > grid else grid) + cont
        im_up = mul_up(mm, self.params.im_factor)
        state = LIQUIDATABLE if equity < mm else MARGIN_CALL if equity < im_up else HEALTHY
        return MarginResult(equity, mm, im_up, cont, credit_down, state, losses, witness, es)

    def contingencies(self, pf: Portfolio) -> int:
        """Σ over underlyings of short-option, calendar-basis and vega-offset charges."""
        total = 0
        for u, up in enumerate(self.params.underlyings):
            spot = self.market.spots[u]
            shorts: dict[tuple[int, int], int] = {}
            fut: dict[int, int] = {}
            vega: dict[int, int] = {}
            for pos in pf.positions:
                if pos.underlying != u:
                    continue
                if pos.kind == FUTURE:
                    fut[pos.expiry] = fut.get(pos.expiry, 0) + pos.quantity
                    continue
                k = (pos.kind, pos.strike)
                shorts[k] = shorts.get(k, 0) + pos.quantity
                v = mul_down(pos.quantity, self.row(pos).vega_base)
                vega[pos.expiry] = vega.get(pos.expiry, 0) + v
            for net in shorts.values():
                if net < 0:
                    total += mul_up(mul_up(-net, spot), up.short_option_charge)
            f_long = sum(x for x in fut.values() if x > 0)
            f_short = -sum(x for x in fut.values() if x < 0)
            offset = min(f_long, f_short)
            if offset > 0:
                total += mul_up(mul_up(offset, spot), up.calendar_charge)
            v_long = sum(x for x in vega.values() if x > 0)
            v_short = -sum(x for x in vega.values() if x < 0)
            offset = min(v_long, v_short)
            if offset > 0:
                total += mul_up(mul_up(offset, spot), up.vega_charge)
        return total


def full_check(pf: Portfolio, market: Market, params: RiskParams) -> MarginResult:
    """One-shot full check (builds a private table; share a ScenarioTable for many accounts)."""
    return ScenarioTable(market, params).full_check(pf)


def witness_check(
    pf: Portfolio, market: Market, params: RiskParams, witness: list[int]
) -> MarginResult:
    return ScenarioTable(market, params).witness_check(pf, witness)
