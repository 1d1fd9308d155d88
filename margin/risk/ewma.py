"""EWMA volatility and correlation from oracle rounds, in fixed point (WAD in, WAD out).

Deterministic integer arithmetic (margin.fixed_point), so the keeper, an auditor and, later, a
contract compute the same bytes from the same rounds. For rounds (t_i, P_i), i = 0..n:

* log return ``r_i = ln_wad(P_i) - ln_wad(P_{i-1})`` (each ln floored; within a few wei of
  ln(P_i/P_{i-1}), and exactly antisymmetric);
* annualised squared return ``q_i = floor(floor(r_i·r_i / 1e18) · YEAR / (t_i - t_{i-1}))``,
  so irregular round spacing is weighted by its length (YEAR = 365 days, as the pricing);
* seed ``v_k`` = floor of the mean of ``q_1..q_k`` with ``k = min(seed_count, n)``;
* ``v_i = floor(λ·v_{i-1} / 1e18) + floor((1e18 - λ)·q_i / 1e18)`` for i = k+1..n;
* volatility ``σ = sqrt_down(v_n)`` (annual, WAD).

The covariance of two aligned series runs the same recursion on ``r_a·r_b`` (floored toward
-infinity); the correlation is ``floor(c·1e18 / sqrt_down(floor(v_a·v_b / 1e18)))``, clamped to
[-1, 1]. λ defaults to 0.94, RiskMetrics' daily decay (J.P. Morgan/Reuters, RiskMetrics —
Technical Document, 4th ed., 1996); allowed range [0.5, 0.9999].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from margin.fixed_point import div_down, ln_wad, mul_down, sqrt_down
from margin.params import WAD, YEAR

DEFAULT_LAMBDA = 94 * 10**16
MIN_LAMBDA = 5 * 10**17
MAX_LAMBDA = 9999 * 10**14
DEFAULT_SEED_COUNT = 20
#: Oracle prices inside margin's spot bounds [1e-8, 1e12] (WAD).
MIN_PRICE = 10**10
MAX_PRICE = 10**12 * WAD


class CalibrationError(ValueError):
    """Rounds or settings the calibration cannot use (the message says which and where)."""


class TooFewRounds(CalibrationError):
    pass


class RoundsNotIncreasing(CalibrationError):
    pass


class RoundPriceOutOfRange(CalibrationError):
    pass


class RoundsNotAligned(CalibrationError):
    pass


class InvalidLambda(CalibrationError):
    pass


class ZeroVariance(CalibrationError):
    pass


@dataclass(frozen=True)
class OracleRound:
    timestamp: int  # unix seconds
    price: int  # WAD


def _check(rounds: Sequence[OracleRound], lam: int, seed_count: int) -> None:
    if not MIN_LAMBDA <= lam <= MAX_LAMBDA:
        raise InvalidLambda(f"lambda {lam} outside [{MIN_LAMBDA}, {MAX_LAMBDA}] (WAD)")
    if seed_count < 1:
        raise CalibrationError(f"seed count must be at least 1, got {seed_count}")
    if len(rounds) < 2:
        raise TooFewRounds(f"{len(rounds)} round(s): at least 2 are needed for one return")
    for i, r in enumerate(rounds):
        if not MIN_PRICE <= r.price <= MAX_PRICE:
            raise RoundPriceOutOfRange(f"round {i}: price {r.price} outside [1e10, 1e30] wei")
        if i and r.timestamp <= rounds[i - 1].timestamp:
            raise RoundsNotIncreasing(f"round {i}: timestamp {r.timestamp} not after the last")


def log_returns(rounds: Sequence[OracleRound]) -> list[int]:
    """``ln_wad(P_i) - ln_wad(P_{i-1})`` for i = 1..n."""
    logs = [ln_wad(r.price) for r in rounds]
    return [b - a for a, b in pairwise(logs)]


def _annualised(product: int, dt: int) -> int:
    """floor(product · YEAR / dt), product a WAD (co)square of returns."""
    return (product * YEAR) // dt


def _ewma_down(terms: Sequence[int], lam: int, seed_count: int) -> int:
    k = min(seed_count, len(terms))
    v = sum(terms[:k]) // k
    for q in terms[k:]:
        v = mul_down(lam, v) + mul_down(WAD - lam, q)
    return v


def ewma_variance_down(
    rounds: Sequence[OracleRound],
    lam: int = DEFAULT_LAMBDA,
    seed_count: int = DEFAULT_SEED_COUNT,
) -> int:
    """Annualised EWMA variance of the log returns (WAD, every step floored)."""
    _check(rounds, lam, seed_count)
    rets = log_returns(rounds)
    dts = [b.timestamp - a.timestamp for a, b in pairwise(rounds)]
    terms = [_annualised(mul_down(r, r), dt) for r, dt in zip(rets, dts, strict=True)]
    return _ewma_down(terms, lam, seed_count)


def ewma_vol_down(
    rounds: Sequence[OracleRound],
    lam: int = DEFAULT_LAMBDA,
    seed_count: int = DEFAULT_SEED_COUNT,
) -> int:
    """Annualised EWMA volatility, ``sqrt_down`` of :func:`ewma_variance_down` (WAD)."""
    return sqrt_down(ewma_variance_down(rounds, lam, seed_count))


def ewma_covariance_down(
    a: Sequence[OracleRound],
    b: Sequence[OracleRound],
    lam: int = DEFAULT_LAMBDA,
    seed_count: int = DEFAULT_SEED_COUNT,
) -> int:
    """Annualised EWMA covariance of two series with the same timestamps (WAD, floored)."""
    _check(a, lam, seed_count)
    _check(b, lam, seed_count)
    if [r.timestamp for r in a] != [r.timestamp for r in b]:
        raise RoundsNotAligned("the two series must have the same round timestamps")
    ra, rb = log_returns(a), log_returns(b)
    dts = [y.timestamp - x.timestamp for x, y in pairwise(a)]
    terms = [_annualised(mul_down(x, y), dt) for x, y, dt in zip(ra, rb, dts, strict=True)]
    return _ewma_down(terms, lam, seed_count)


def ewma_correlation_down(
    a: Sequence[OracleRound],
    b: Sequence[OracleRound],
    lam: int = DEFAULT_LAMBDA,
    seed_count: int = DEFAULT_SEED_COUNT,
) -> int:
    """EWMA correlation in [-1e18, 1e18] (floored); ZeroVariance if a series never moved."""
    cov = ewma_covariance_down(a, b, lam, seed_count)
    va = ewma_variance_down(a, lam, seed_count)
    vb = ewma_variance_down(b, lam, seed_count)
    denom = sqrt_down(mul_down(va, vb))
    if denom == 0:
        raise ZeroVariance("a series has zero EWMA variance: its correlation is undefined")
    return max(-WAD, min(WAD, div_down(cov, denom)))
