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

The bounds are checked against margin's own parameter bounds (``validate_params``) when the
proposal is applied to a :class:`RiskParams`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from margin.fixed_point import mul_down, mul_up, sqrt_up
from margin.params import (
    DAY,
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
class Proposal:
    as_of: int  # timestamp of the last round used
    lam: int
    underlyings: tuple[UnderlyingProposal, ...]
    correlations: tuple[int, ...]  # upper triangle, row-major (i < j)


def _bounded(target: int, current: int, rule: RecalibrationRule, lo: int, hi: int) -> int:
    step_lo = mul_down(current, WAD - rule.max_step)
    step_hi = mul_up(current, WAD + rule.max_step)
    if current > 0:
        target = max(step_lo, min(step_hi, target))
    return max(lo, min(hi, target))


def propose_underlying(
    vol: int, current: UnderlyingParams, rule: RecalibrationRule
) -> UnderlyingProposal:
    """The next price range and vol shift base of one underlying (see the module)."""
    rule.check()
    scale = sqrt_up((rule.horizon * WAD + YEAR - 1) // YEAR)  # sqrt(H / YEAR), rounded up
    r_target = mul_up(rule.k_sigma, mul_up(vol, scale))
    b_target = mul_up(rule.vol_shift_per_vol, vol)
    return UnderlyingProposal(
        vol,
        _bounded(r_target, current.price_range, rule, rule.min_range, rule.max_range),
        _bounded(b_target, current.vol_shift_base, rule, rule.min_vol_shift, rule.max_vol_shift),
        r_target,
        b_target,
    )


def apply_proposal(params: RiskParams, proposal: Proposal) -> RiskParams:
    """The parameters with each underlying's range and vol shift replaced, validated."""
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
    )
    validate_params(new)
    return new


PROPOSAL_ABI = ["uint64", "uint256", "uint256[]", "uint256[]", "uint256[]", "int256[]"]


def canonical_encoding(proposal: Proposal) -> bytes:
    """ABI encoding of (as_of, λ, vols, price ranges, vol shift bases, correlations)."""
    us: Sequence[UnderlyingProposal] = proposal.underlyings
    return encode(
        PROPOSAL_ABI,
        [
            proposal.as_of,
            proposal.lam,
            [u.vol for u in us],
            [u.price_range for u in us],
            [u.vol_shift_base for u in us],
            list(proposal.correlations),
        ],
    )


def proposal_hash(proposal: Proposal) -> bytes:
    """keccak256 of :func:`canonical_encoding`."""
    return keccak(canonical_encoding(proposal))
