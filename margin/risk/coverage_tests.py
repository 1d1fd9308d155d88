"""Coverage tests of a margin model's exceedance sequence (off-chain analysis, floating point).

An *exceedance* on day t is a realised loss over the horizon larger than the requirement held
at t. If the requirement is a VaR at coverage 1 - p, exceedances are i.i.d. Bernoulli(p):

* Kupiec (1995) proportion of failures: with T days and x exceedances,
  ``LR_pof = -2 ln[(1-p)^(T-x) p^x] + 2 ln[(1-x/T)^(T-x) (x/T)^x]``, chi-square with 1 degree
  of freedom under the null (the exceedance rate is p).
* Christoffersen (1998) independence: with n_ij the number of days in state j after a day in
  state i (0 = no exceedance, 1 = exceedance), pi_01 = n01/(n00+n01), pi_11 = n11/(n10+n11),
  pi = (n01+n11)/(n00+n01+n10+n11),
  ``LR_ind = -2 ln[(1-pi)^(n00+n10) pi^(n01+n11)]
  + 2 ln[(1-pi_01)^n00 pi_01^n01 (1-pi_11)^n10 pi_11^n11]``, chi-square(1) under the null
  (today's exceedance does not depend on yesterday's).
* Conditional coverage: ``LR_cc = LR_pof + LR_ind``, chi-square(2).

``0 · ln 0`` is taken as 0 (the likelihood's limit), so no-exceedance and all-exceedance
samples have finite statistics. Chi-square survival functions of 1 and 2 degrees of freedom
have closed forms (``erfc(sqrt(x/2))`` and ``exp(-x/2)``): no SciPy needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise


class CoverageInputError(ValueError):
    """An exceedance sequence or rate the tests cannot be applied to."""


def _xlogy(x: float, y: float) -> float:
    """x·ln(y) with 0·ln(0) = 0 (the limit the likelihood takes)."""
    if x == 0:
        return 0.0
    return x * math.log(y)


def chi2_sf_1(x: float) -> float:
    """P(X > x) for X ~ chi-square with 1 degree of freedom."""
    return 1.0 if x <= 0 else math.erfc(math.sqrt(x / 2.0))


def chi2_sf_2(x: float) -> float:
    """P(X > x) for X ~ chi-square with 2 degrees of freedom."""
    return 1.0 if x <= 0 else math.exp(-x / 2.0)


@dataclass(frozen=True)
class Kupiec:
    observations: int
    exceedances: int
    expected_rate: float
    observed_rate: float
    lr: float
    p_value: float


@dataclass(frozen=True)
class Christoffersen:
    n00: int
    n01: int
    n10: int
    n11: int
    pi01: float
    pi11: float
    lr: float
    p_value: float


@dataclass(frozen=True)
class ConditionalCoverage:
    lr: float
    p_value: float


def _check_hits(hits: Sequence[bool]) -> None:
    if len(hits) == 0:
        raise CoverageInputError("no observations")
    for h in hits:
        if not isinstance(h, bool):
            raise CoverageInputError(f"an exceedance flag must be a bool, got {h!r}")


def kupiec_pof(hits: Sequence[bool], expected_rate: float) -> Kupiec:
    """Kupiec's proportion-of-failures test of the exceedance rate against ``expected_rate``."""
    _check_hits(hits)
    if not 0.0 < expected_rate < 1.0:
        raise CoverageInputError(f"expected rate must be in (0, 1), got {expected_rate!r}")
    t = len(hits)
    x = sum(hits)
    p = expected_rate
    q = x / t
    null = _xlogy(t - x, 1.0 - p) + _xlogy(x, p)
    alt = _xlogy(t - x, 1.0 - q) + _xlogy(x, q)
    lr = max(0.0, -2.0 * (null - alt))  # >= 0 in exact arithmetic; clamp rounding noise
    return Kupiec(t, x, p, q, lr, chi2_sf_1(lr))


def transition_counts(hits: Sequence[bool]) -> tuple[int, int, int, int]:
    """(n00, n01, n10, n11) over consecutive pairs of the sequence."""
    n = [0, 0, 0, 0]
    for a, b in pairwise(hits):
        n[2 * int(a) + int(b)] += 1
    return n[0], n[1], n[2], n[3]


def christoffersen_independence(hits: Sequence[bool]) -> Christoffersen:
    """Christoffersen's independence test (first-order Markov alternative)."""
    _check_hits(hits)
    if len(hits) < 2:
        raise CoverageInputError("the independence test needs at least two observations")
    n00, n01, n10, n11 = transition_counts(hits)
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    pi = (n01 + n11) / (n00 + n01 + n10 + n11)
    null = _xlogy(n00 + n10, 1.0 - pi) + _xlogy(n01 + n11, pi)
    alt = _xlogy(n00, 1.0 - pi01) + _xlogy(n01, pi01) + _xlogy(n10, 1.0 - pi11) + _xlogy(n11, pi11)
    lr = max(0.0, -2.0 * (null - alt))
    return Christoffersen(n00, n01, n10, n11, pi01, pi11, lr, chi2_sf_1(lr))


def conditional_coverage(kupiec: Kupiec, independence: Christoffersen) -> ConditionalCoverage:
    """Christoffersen's joint test: LR_cc = LR_pof + LR_ind, chi-square(2)."""
    lr = kupiec.lr + independence.lr
    return ConditionalCoverage(lr, chi2_sf_2(lr))
