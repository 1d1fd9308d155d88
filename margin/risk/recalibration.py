"""From EWMA volatilities to the next grid: price range and vol shift, bounded, and the
canonical encoding of a proposal (what a later on-chain submission will hash).

Rule, per underlying with annualised EWMA volatility σ (WAD):

* price range ``R* = k · σ · sqrt(H / YEAR)`` rounded up (more margin, never less), i.e. k
  standard deviations of an H-second move (defaults k = 3, H = 2 days: the time to close out a
  book). Then bounded by a step: ``R`` stays within ``R_now · (1 ± max_step)`` (default 25%),
  so one recalibration cannot halve or double the margin; then by the absolute bounds
  ``[min_range, max_range]`` (default [5%, 33%]: 33% keeps the SPAN preset's ±3R extended
  moves above -99%).
* vol shift base ``B* = m · σ`` rounded up (default m = 0.2: 10 vol points at σ = 50%, the
  Deribit-like preset's base), bounded by the same step and by ``[min_vol_shift,
  max_vol_shift]`` (default [2, 50] vol points).

* FHS scale of the historical set (only when the parameters carry one, S > 0)
  ``F* = ceil(σ / σ_ref)`` (WAD, rounded up: more margin), σ_ref the set's reference
  volatility committed with it (margin/risk/historical.py: its end-of-series EWMA volatility,
  annualised, rounded down); an underlying with ``σ_ref = 0`` (no series: its historical
  moves are 0) keeps its current scale. Bounded by the model's [0, 10] and the same step.
  Without a historical set the proposal's ``ref_vols`` and ``fhs_scales`` are empty.

The bounds are checked against margin's own parameter bounds (``validate_params``) when the
proposal is applied to a :class:`RiskParams`.

On-chain the proposal is then held to the clearing house's limits (ClearingHouseAdmin.sol,
"recalibration"): governance's ``riskBounds(u)``, ``maxStep`` from the current value and
``maxDailyStep`` from the value before the UTC day's first executed recalibration.
:func:`limit_window` mirrors that check (same rounding: lower ends down, upper ends up) and
:func:`within_limits` clamps a proposal into it, so what the keeper queues passes.

The canonical encoding is ``abi.encode(Recalibration)`` of ClearingHouseBase.sol: the data
sources (per underlying: price feed, first and last round id read), the sampling interval,
``as_of``, λ, the rule (k, H, m), the volatilities, the new grid, the correlations, the set's
reference volatilities and the new FHS scales. The
contract refuses any other encoding of the same values, so a proposal has one hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from margin.fixed_point import div_up, mul_down, mul_up, sqrt_up
from margin.params import (
    DAY,
    MAX_FHS_SCALE,
    MAX_PRICE_RANGE,
    MAX_VOL_SHIFT_BASE,
    WAD,
    YEAR,
    RiskParams,
    UnderlyingParams,
)
from margin.portfolio_margin import validate_params
from margin.risk.ewma import CalibrationError


@dataclass(frozen=True)
class RecalibrationRule:
    k_sigma: int = 3 * WAD
    horizon: int = 2 * DAY  # seconds
    max_step: int = 25 * 10**16  # relative change per recalibration
    min_range: int = 5 * 10**16
    max_range: int = 33 * 10**16
    vol_shift_per_vol: int = 2 * 10**17
    min_vol_shift: int = 2 * 10**16
    max_vol_shift: int = 5 * 10**17

    def check(self) -> None:
        if not 0 < self.min_range <= self.max_range <= MAX_PRICE_RANGE:
            raise CalibrationError("price range bounds must satisfy 0 < min <= max <= 0.9")
        if not 0 <= self.min_vol_shift <= self.max_vol_shift <= MAX_VOL_SHIFT_BASE:
            raise CalibrationError("vol shift bounds must satisfy 0 <= min <= max <= 5")
        if not 0 < self.max_step < WAD:
            raise CalibrationError("max step must be in (0, 1)")
        if not 0 < self.horizon <= YEAR or self.k_sigma <= 0 or self.vol_shift_per_vol < 0:
            raise CalibrationError("horizon in (0, 1 year], k > 0, vol shift per vol >= 0")


@dataclass(frozen=True)
class UnderlyingProposal:
    vol: int  # annualised EWMA volatility, WAD
    price_range: int
    vol_shift_base: int
    price_range_target: int  # before the bounds (shows whether a bound bit)
    vol_shift_target: int


@dataclass(frozen=True)
class Source:
    """Where one underlying's rounds come from: its price feed and the round-id window read."""

    feed: str  # 0x-address
    first_round: int
    last_round: int


@dataclass(frozen=True)
class Proposal:
    as_of: int  # timestamp of the last sample (on-chain: the sources' end)
    lam: int
    underlyings: tuple[UnderlyingProposal, ...]
    correlations: tuple[int, ...]  # upper triangle, row-major (i < j)
    sources: tuple[Source, ...] = ()  # empty for a CSV history (dry run only)
    interval: int = 0  # sampling interval, seconds (0: the CSV's own dates)
    #: The rule the targets come from (RecalibrationRule's k, H and m).
    k_sigma: int = RecalibrationRule.k_sigma
    horizon: int = RecalibrationRule.horizon
    vol_shift_per_vol: int = RecalibrationRule.vol_shift_per_vol
    #: The historical set's reference volatility and next FHS scale per underlying; both
    #: empty when the parameters carry no historical set (S = 0).
    ref_vols: tuple[int, ...] = ()
    fhs_scales: tuple[int, ...] = ()


class RecalibrationLimitError(CalibrationError):
    """A value outside one of the clearing house's recalibration limits (the contract's error
    of the same name, with the same fields: underlying, field 0 range / 1 vol shift / 2 FHS
    scale, value, and the window)."""

    def __init__(self, u: int, field: int, value: int, lo: int, hi: int) -> None:
        super().__init__(f"underlying {u} field {field}: {value} outside [{lo}, {hi}]")
        self.args_tuple = (u, field, value, lo, hi)


class RecalibrationOutOfBounds(RecalibrationLimitError):
    pass


class RecalibrationStepTooLarge(RecalibrationLimitError):
    pass


class RecalibrationDailyLimit(RecalibrationLimitError):
    pass


class NoFeasibleUpdate(CalibrationError):
    """The limits' windows do not overlap (the parameters were moved outside governance's
    bounds by the owner): no value passes, nothing can be queued."""


@dataclass(frozen=True)
class FieldLimits:
    """What the contract checks one field (price range or vol shift base) of one underlying
    against: governance's bounds, the current value, the value before today's first
    execution (the current one on a new day), and the relative limits (WAD)."""

    lo: int
    hi: int
    current: int
    day_start: int
    max_step: int
    max_daily_step: int


def step_range(x: int, step: int) -> tuple[int, int]:
    """[floor(x (1 - step)), ceil(x (1 + step))]: ClearingHouseAdmin._stepRange."""
    return mul_down(x, WAD - step), mul_up(x, WAD + step)


def check_limit(u: int, field: int, value: int, lim: FieldLimits) -> None:
    """ClearingHouseAdmin._checkLimit: the same three checks in the same order, the same
    errors (a zero reference bounds nothing relative)."""
    if not lim.lo <= value <= lim.hi:
        raise RecalibrationOutOfBounds(u, field, value, lim.lo, lim.hi)
    lo, hi = step_range(lim.current, lim.max_step)
    if lim.current > 0 and not lo <= value <= hi:
        raise RecalibrationStepTooLarge(u, field, value, lo, hi)
    lo, hi = step_range(lim.day_start, lim.max_daily_step)
    if lim.day_start > 0 and not lo <= value <= hi:
        raise RecalibrationDailyLimit(u, field, value, lo, hi)


def check_underlying(
    u: int,
    price_range: int,
    vol_shift: int,
    ranges: FieldLimits,
    shifts: FieldLimits,
    fhs_scale: int | None = None,
    scales: FieldLimits | None = None,
) -> None:
    """ClearingHouseRecalibration._checkUnderlying: every field's absolute bounds first (price
    range, vol shift, FHS scale when the parameters carry a historical set), then each
    field's relative limits in the same order (the contract's order, so the same input fails
    with the same error)."""
    if not ranges.lo <= price_range <= ranges.hi:
        raise RecalibrationOutOfBounds(u, 0, price_range, ranges.lo, ranges.hi)
    if not shifts.lo <= vol_shift <= shifts.hi:
        raise RecalibrationOutOfBounds(u, 1, vol_shift, shifts.lo, shifts.hi)
    if scales is not None and fhs_scale is not None and not scales.lo <= fhs_scale <= scales.hi:
        raise RecalibrationOutOfBounds(u, 2, fhs_scale, scales.lo, scales.hi)
    check_limit(u, 0, price_range, ranges)
    check_limit(u, 1, vol_shift, shifts)
    if scales is not None and fhs_scale is not None:
        check_limit(u, 2, fhs_scale, scales)


def scale_limits(current: int, day_start: int, max_step: int, max_daily_step: int) -> FieldLimits:
    """The FHS scale's limits: the model's absolute bounds [0, MAX_FHS_SCALE] (governance sets
    no scale bounds), then the same step limits as the grid."""
    return FieldLimits(0, MAX_FHS_SCALE, current, day_start, max_step, max_daily_step)


def fhs_scale_target_up(vol: int, ref_vol: int, current: int) -> int:
    """F* = ceil(σ / σ_ref) (WAD) within [0, MAX_FHS_SCALE]; ``current`` when σ_ref = 0."""
    if ref_vol <= 0:
        return current
    return min(div_up(vol, ref_vol), MAX_FHS_SCALE)


def scale_within_limits(target: int, lim: FieldLimits) -> int:
    """``target`` clamped into the window the contract accepts for the scale."""
    lo, hi = limit_window(lim)
    return max(lo, min(hi, target))


def limit_window(lim: FieldLimits) -> tuple[int, int]:
    """The values :func:`check_limit` accepts: the intersection of the three windows."""
    lo, hi = lim.lo, lim.hi
    for ref, step in ((lim.current, lim.max_step), (lim.day_start, lim.max_daily_step)):
        if ref > 0:
            a, b = step_range(ref, step)
            lo, hi = max(lo, a), min(hi, b)
    if lo > hi:
        raise NoFeasibleUpdate(f"the limits leave no value: [{lo}, {hi}]")
    return lo, hi


def within_limits(
    p: UnderlyingProposal, ranges: FieldLimits, shifts: FieldLimits
) -> UnderlyingProposal:
    """``p`` with its price range and vol shift base clamped into the on-chain windows."""
    r_lo, r_hi = limit_window(ranges)
    s_lo, s_hi = limit_window(shifts)
    return replace(
        p,
        price_range=max(r_lo, min(r_hi, p.price_range)),
        vol_shift_base=max(s_lo, min(s_hi, p.vol_shift_base)),
    )


def _bounded(target: int, current: int, rule: RecalibrationRule, lo: int, hi: int) -> int:
    step_lo = mul_down(current, WAD - rule.max_step)
    step_hi = mul_up(current, WAD + rule.max_step)
    if current > 0:
        target = max(step_lo, min(step_hi, target))
    return max(lo, min(hi, target))


def targets_up(vol: int, k_sigma: int, horizon: int, vol_shift_per_vol: int) -> tuple[int, int]:
    """(R*, B*) of the module's rule, both rounded up: k·σ·sqrt(H / YEAR) and m·σ."""
    scale = sqrt_up((horizon * WAD + YEAR - 1) // YEAR)  # sqrt(H / YEAR), rounded up
    return mul_up(k_sigma, mul_up(vol, scale)), mul_up(vol_shift_per_vol, vol)


def propose_underlying(
    vol: int, current: UnderlyingParams, rule: RecalibrationRule
) -> UnderlyingProposal:
    """The next price range and vol shift base of one underlying (see the module)."""
    rule.check()
    r_target, b_target = targets_up(vol, rule.k_sigma, rule.horizon, rule.vol_shift_per_vol)
    return UnderlyingProposal(
        vol,
        _bounded(r_target, current.price_range, rule, rule.min_range, rule.max_range),
        _bounded(b_target, current.vol_shift_base, rule, rule.min_vol_shift, rule.max_vol_shift),
        r_target,
        b_target,
    )


def apply_proposal(params: RiskParams, proposal: Proposal) -> RiskParams:
    """The parameters with each underlying's range, vol shift and (with a historical set) FHS
    scale replaced, validated."""
    if len(proposal.underlyings) != len(params.underlyings):
        raise CalibrationError("one proposal per underlying of the parameters")
    new = RiskParams(
        tuple(
            replace(u, price_range=p.price_range, vol_shift_base=p.vol_shift_base)
            for u, p in zip(params.underlyings, proposal.underlyings, strict=True)
        ),
        params.assets,
        params.correlation_credit,
        params.im_factor,
        replace(params.historical, fhs_scale=proposal.fhs_scales)
        if proposal.fhs_scales
        else params.historical,
    )
    validate_params(new)
    return new


#: abi.encode(Recalibration) (ClearingHouseBase.sol): one tuple.
PROPOSAL_ABI = [
    "((address,uint80,uint80)[],uint64,uint64,uint256,uint256,uint64,uint256,"
    "uint256[],int256[],int256[],int256[],uint256[],int256[])"
]


def canonical_encoding(proposal: Proposal) -> bytes:
    """abi.encode of (sources, interval, as_of, λ, k, H, m, vols, price ranges, vol shift
    bases, correlations, reference vols, FHS scales): the bytes the contract hashes."""
    us: Sequence[UnderlyingProposal] = proposal.underlyings
    return encode(
        PROPOSAL_ABI,
        [
            (
                [(s.feed, s.first_round, s.last_round) for s in proposal.sources],
                proposal.interval,
                proposal.as_of,
                proposal.lam,
                proposal.k_sigma,
                proposal.horizon,
                proposal.vol_shift_per_vol,
                [u.vol for u in us],
                [u.price_range for u in us],
                [u.vol_shift_base for u in us],
                list(proposal.correlations),
                list(proposal.ref_vols),
                list(proposal.fhs_scales),
            )
        ],
    )


def decode_proposal(data: bytes) -> Proposal:
    """The proposal of canonical bytes (vols, grid, sources; the targets are not encoded:
    they are set equal to the values). Not canonical: ``CalibrationError``."""
    from eth_abi.abi import decode

    try:
        ((srcs, interval, as_of, lam, k, h, m, vols, ranges, shifts, corr, refs, fhs),) = decode(
            PROPOSAL_ABI, data
        )
    except Exception as e:  # eth_abi's decoding errors have no common base
        raise CalibrationError(f"not a recalibration proposal: {e}") from None
    unders = tuple(
        UnderlyingProposal(v, r, s, r, s) for v, r, s in zip(vols, ranges, shifts, strict=False)
    )
    p = Proposal(
        as_of,
        lam,
        unders,
        tuple(corr),
        tuple(Source(a.lower(), f, last) for a, f, last in srcs),
        interval,
        k,
        h,
        m,
        tuple(refs),
        tuple(fhs),
    )
    if canonical_encoding(p) != data:
        raise CalibrationError("not the canonical encoding of its values")
    return p


def proposal_hash(proposal: Proposal) -> bytes:
    """keccak256 of :func:`canonical_encoding`."""
    return keccak(canonical_encoding(proposal))
