"""Risk parameters of the portfolio-margin model, their bounds and the documented presets.

Mirrors the parameter structs and bounds of contracts/src/margin/PortfolioMargin.sol: the
same fields in the same order (so a parameter set ABI-encodes as one tuple), the same bounds.
margin/portfolio_margin.py (validate_params) checks them in the verifier's order, failing with
the same named errors. Every number is a WAD (signed, 1e18 = 1.0) unless it is a count, an
index or a duration in seconds.

The bounds are not arbitrary: with them every intermediate of the model stays far inside
int256 (see the bound notes in margin/portfolio_margin.py), so neither side can overflow and
the only failures are the named validation errors and those of the pricing domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

WAD = 10**18
YEAR = 31_536_000  # seconds in 365 days, as the pricing library counts a year
DAY = 86_400

MAX_UNDERLYINGS = 8
MAX_ASSETS = 8
MAX_MOVE_STEPS = 10  # at most 21 price moves
MAX_EXTENDED = 8
#: Largest inter-underlying credit: even perfectly correlated books keep 20% of the
#: non-largest losses (the "capped" correlation of SPAN's inter-commodity spread credit).
MAX_CORRELATION_CREDIT = 8 * 10**17
MAX_IM_FACTOR = 10 * WAD
#: Marks an asset that is not tied to any underlying (a stablecoin valued at 1).
STABLE = 2**256 - 1

# Vol states of a scenario.
VOL_DOWN, VOL_UNCHANGED, VOL_UP = 0, 1, 2

# Field codes of InvalidRiskParameter(underlying, field).
F_PRICE_RANGE = 1  # 0 < R <= 0.9
F_MOVE_STEPS = 2  # 1 <= n <= 10 (2n + 1 moves)
F_VOL_SHIFT_BASE = 3  # 0 <= base <= 5 (500 vol points)
F_VOL_REF_TIME = 4  # 1 s <= T_ref <= 5 years
F_VOL_MIN_TIME = 5  # 1 s <= T_min <= T_ref
F_VOL_EXPONENT = 6  # 0 <= p <= 2
F_VOL_FLOOR = 7  # 0 <= floor <= 1
F_EXTENDED_COUNT = 8  # <= 8 extended moves
F_EXTENDED_MOVE = 9  # -0.99 <= move <= 10
F_EXTENDED_VOL_STATE = 10  # 0, 1 or 2
F_EXTENDED_WEIGHT = 11  # 0 <= weight <= 1
F_SHORT_OPTION_CHARGE = 12  # 0 <= c <= 1
F_CALENDAR_CHARGE = 13  # 0 <= c <= 1
F_VEGA_CHARGE = 14  # 0 <= c <= 1
F_FHS_SCALE = 15  # 0 <= historical.fhs_scale[u] <= 10
F_SCENARIO_TOTAL = 16  # grid scenarios + historical scenarios <= MAX_SCENARIOS
# Field codes of InvalidAssetParameter(asset, field).
F_HAIRCUT = 1  # 0 <= haircut <= 1
F_ASSET_UNDERLYING = 2  # < number of underlyings, or STABLE
# Field codes of InvalidGlobalParameter(field).
F_CORRELATION_CREDIT = 1  # 0 <= credit <= 0.8
F_IM_FACTOR = 2  # 1 < factor <= 10
F_HISTORICAL_MOVES = 3  # len(historical.moves) = S * number of underlyings
F_HISTORICAL_VOL_MOVES = 4  # len(historical.vol_moves) = 0 or S * number of underlyings
F_STRESS_COUNT = 5  # stress_count <= S
F_FHS_LENGTH = 6  # len(fhs_scale) = number of underlyings (0 when S = 0)
F_ES_COUNT = 7  # 1 <= es_count <= min(S, MAX_ES_COUNT) (0 when S = 0)
# Field codes of InvalidHistoricalScenario(scenario, underlying, field).
F_HISTORICAL_PRICE_MOVE = 1  # -0.99 <= move <= 10
F_HISTORICAL_VOL_MOVE = 2  # -0.99 <= vol move <= 10

MAX_PRICE_RANGE = 9 * 10**17
MAX_VOL_SHIFT_BASE = 5 * WAD
MAX_VOL_TIME = 5 * YEAR
MAX_VOL_EXPONENT = 2 * WAD
MIN_EXTENDED_MOVE = -99 * 10**16
MAX_EXTENDED_MOVE = 10 * WAD
#: Grid plus historical scenarios of one underlying: what keeps the full check of
#: MAX_POSITIONS options under the gas ceiling (docs/margin-model.md, "Gas").
MAX_SCENARIOS = 90
MAX_ES_COUNT = 8
MAX_FHS_SCALE = 10 * WAD


@dataclass(frozen=True)
class ExtendedMove:
    """One extended (stress) scenario: a price move, a vol state, and the fraction counted."""

    move: int  # relative price move, WAD (-0.33e18 = -33%)
    vol_state: int  # VOL_DOWN / VOL_UNCHANGED / VOL_UP
    weight: int  # WAD fraction of the loss counted (0.35e18 = 35%)

    def to_abi(self) -> tuple[int, int, int]:
        return (self.move, self.vol_state, self.weight)


@dataclass(frozen=True)
class UnderlyingParams:
    """Scenario grid and contingency charges of one underlying (Solidity ``UnderlyingParams``).

    Regular scenarios: 2n+1 price moves R·k/n (k = -n..n) × 3 vol states; then the extended
    moves. Vol shift of an option with time to expiry T (seconds):
    ``shift = base · (T_ref / max(T, T_min))^p`` (see margin/portfolio_margin.py).
    """

    price_range: int  # R, WAD
    move_steps: int  # n
    vol_shift_base: int  # absolute vol shift at T = T_ref, WAD (0.1e18 = 10 vol points)
    vol_ref_time: int  # T_ref, seconds
    vol_min_time: int  # T_min, seconds: shorter expiries get the shift of T_min
    vol_exponent: int  # p, WAD
    vol_floor: int  # the down state never goes below min(vol, floor), WAD
    extended: tuple[ExtendedMove, ...] = ()
    short_option_charge: int = 0  # per net short option contract (per strike), × spot, WAD
    calendar_charge: int = 0  # per offsetting future across expiries, × spot, WAD
    vega_charge: int = 0  # × offsetting vega proxy (q·S·√T) across expiries, WAD

    def to_abi(self) -> tuple[Any, ...]:
        return (
            self.price_range,
            self.move_steps,
            self.vol_shift_base,
            self.vol_ref_time,
            self.vol_min_time,
            self.vol_exponent,
            self.vol_floor,
            [e.to_abi() for e in self.extended],
            self.short_option_charge,
            self.calendar_charge,
            self.vega_charge,
        )

    @property
    def regular_count(self) -> int:
        return 3 * (2 * self.move_steps + 1)

    @property
    def scenario_count(self) -> int:
        return self.regular_count + len(self.extended)

    @property
    def center_index(self) -> int:
        """Index of the scenario (move 0, vol unchanged): its loss is always exactly 0."""
        return 3 * self.move_steps + 1


@dataclass(frozen=True)
class AssetParams:
    """A collateral asset: its haircut and the underlying whose price moves it (or STABLE)."""

    haircut: int  # WAD fraction removed from a positive balance
    underlying: int = STABLE

    def to_abi(self) -> tuple[int, int]:
        return (self.haircut, self.underlying)


@dataclass(frozen=True)
class HistoricalSet:
    """The historical scenario set (Solidity ``HistoricalSet``): S joint scenarios, each the
    relative price move (and optionally the relative implied-vol move) of every underlying on
    one date, so correlation comes from the data.

    * ``moves[s * nU + u]``: the move of underlying u in scenario s (WAD, in [-0.99, 10]).
    * ``vol_moves``: empty (vols unchanged) or laid out like ``moves``: a scenario's vol is
      ``min(mul_down(vol, 1 + vol_move), MAX_SCENARIO_VOL)``.
    * The last ``stress_count`` scenarios are named stress days (hypothetical scenarios), taken
      as they are; every other move is scaled by ``fhs_scale[u]`` (current over historical
      volatility: filtered historical simulation), ``mul_down`` and kept in [-0.99, 10].
    * ``es_count`` = k: ES is the mean of the k worst joint losses (rounded up).

    The empty set (S = 0, the default) is the grid-only model.
    """

    moves: tuple[int, ...] = ()
    vol_moves: tuple[int, ...] = ()
    stress_count: int = 0
    fhs_scale: tuple[int, ...] = ()
    es_count: int = 0

    def to_abi(self) -> tuple[Any, ...]:
        return (
            list(self.moves),
            list(self.vol_moves),
            self.stress_count,
            list(self.fhs_scale),
            self.es_count,
        )


@dataclass(frozen=True)
class RiskParams:
    """Everything the verifier needs besides the market state and the portfolio."""

    underlyings: tuple[UnderlyingParams, ...]
    assets: tuple[AssetParams, ...] = field(default_factory=tuple)
    correlation_credit: int = 0  # WAD in [0, 0.8]
    im_factor: int = 12 * 10**17  # WAD > 1
    historical: HistoricalSet = field(default_factory=HistoricalSet)

    def to_abi(self) -> tuple[Any, ...]:
        return (
            [u.to_abi() for u in self.underlyings],
            [a.to_abi() for a in self.assets],
            self.correlation_credit,
            self.im_factor,
            self.historical.to_abi(),
        )

    @property
    def historical_count(self) -> int:
        """S: the number of historical scenarios (len(moves) / number of underlyings)."""
        return len(self.historical.moves) // len(self.underlyings) if self.underlyings else 0


# --- presets ------------------------------------------------------------------------------


def span_like(price_range: int = 15 * 10**16, **overrides: Any) -> UnderlyingParams:
    """CME SPAN-style risk array: 7 price moves (0, ±R/3, ±2R/3, ±R) × vol down/unchanged/up,
    plus the two extreme moves ±3R at vol unchanged, counted at 35%.

    Defaults: R = 15%; vol shift 8 vol points at 30 days, scaled by (30 d / max(T, 1 d))^0.5;
    short option minimum 0.5% of spot per net short contract; calendar basis 0.5% of spot per
    offsetting future; vega offset 1% of q·S·√T.
    ±3R must stay above -99%: R <= 33%.
    """
    base = UnderlyingParams(
        price_range=price_range,
        move_steps=3,
        vol_shift_base=8 * 10**16,
        vol_ref_time=30 * DAY,
        vol_min_time=DAY,
        vol_exponent=5 * 10**17,
        vol_floor=10**16,
        extended=(
            ExtendedMove(3 * price_range, VOL_UNCHANGED, 35 * 10**16),
            ExtendedMove(-3 * price_range, VOL_UNCHANGED, 35 * 10**16),
        ),
        short_option_charge=5 * 10**15,
        calendar_charge=5 * 10**15,
        vega_charge=10**16,
    )
    return replace(base, **overrides)


DERIBIT_EXTENDED_MOVES = (-66, -33, 50, 100, 200, 300, 500)  # percent


def deribit_like(price_range: int = 16 * 10**16, **overrides: Any) -> UnderlyingParams:
    """Deribit-style portfolio margin: 9 price moves across ±16% × 3 vol states; vol shift
    base × (30 days / max(T, 1 day))^0.3 (Deribit's vega power), base 10 vol points; extended
    table -66%, -33%, +50%, +100%, +200%, +300%, +500% on vol up only, counted at 25%.

    Contingencies: 1% of spot per net short option (per strike), 0.5% calendar basis,
    1% vega offset.
    """
    base = UnderlyingParams(
        price_range=price_range,
        move_steps=4,
        vol_shift_base=10**17,
        vol_ref_time=30 * DAY,
        vol_min_time=DAY,
        vol_exponent=3 * 10**17,
        vol_floor=10**16,
        extended=tuple(
            ExtendedMove(pct * 10**16, VOL_UP, 25 * 10**16) for pct in DERIBIT_EXTENDED_MOVES
        ),
        short_option_charge=10**16,
        calendar_charge=5 * 10**15,
        vega_charge=10**16,
    )
    return replace(base, **overrides)


PRESETS = {"span": span_like, "deribit": deribit_like}
