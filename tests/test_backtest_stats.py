"""Kupiec and Christoffersen coverage tests on data with a known answer."""

from __future__ import annotations

import mpmath
import pytest

from margin.risk.coverage_tests import (
    CoverageInputError,
    chi2_sf_1,
    chi2_sf_2,
    christoffersen_independence,
    conditional_coverage,
    kupiec_pof,
    transition_counts,
)

CHI2_1_95 = 3.841458820694124  # 95% quantile of chi-square(1)


def hits(x: int, t: int) -> list[bool]:
    return [True] * x + [False] * (t - x)


# Kupiec's 95% non-rejection regions for the number of exceedances N in T days, as tabulated
# in Jorion, "Value at Risk" (3rd ed.), table "Model backtesting, 95% nonrejection confidence
# regions": p = 0.01: T=510 1<N<11, T=1000 4<N<17; p = 0.025: 2<N<12, 6<N<21, 15<N<36;
# p = 0.05: 6<N<21, 16<N<36, 37<N<65. (T=255, p=0.01 is tabulated as N<7: N=0 has
# LR = -2·255·ln(0.99) = 5.13 and is rejected too, which the table leaves out.)
JORION = [
    (0.01, 510, 2, 10),
    (0.01, 1000, 5, 16),
    (0.025, 255, 3, 11),
    (0.025, 510, 7, 20),
    (0.025, 1000, 16, 35),
    (0.05, 255, 7, 20),
    (0.05, 510, 17, 35),
    (0.05, 1000, 38, 64),
]


@pytest.mark.parametrize(("p", "t", "lo", "hi"), JORION)
def test_kupiec_reproduces_jorions_non_rejection_regions(
    p: float, t: int, lo: int, hi: int
) -> None:
    accepted = [x for x in range(t // 4) if kupiec_pof(hits(x, t), p).lr < CHI2_1_95]
    assert (min(accepted), max(accepted)) == (lo, hi)
    assert accepted == list(range(lo, hi + 1))


def test_kupiec_upper_bound_at_255_days_and_zero_exceedances() -> None:
    assert kupiec_pof(hits(6, 255), 0.01).lr < CHI2_1_95 < kupiec_pof(hits(7, 255), 0.01).lr
    zero = kupiec_pof(hits(0, 255), 0.01)
    assert zero.lr == pytest.approx(-2 * 255 * float(mpmath.log(0.99)), rel=1e-12)


@pytest.mark.parametrize(("x", "t", "p"), [(8, 250, 0.01), (3, 500, 0.01), (30, 5151, 0.01)])
def test_kupiec_lr_and_p_value_against_mpmath(x: int, t: int, p: float) -> None:
    mp = mpmath.mp
    mp.dps = 50
    pp, q = mpmath.mpf(p), mpmath.mpf(x) / t
    lr = -2 * ((t - x) * mpmath.log(1 - pp) + x * mpmath.log(pp)) + 2 * (
        (t - x) * mpmath.log(1 - q) + x * mpmath.log(q)
    )
    k = kupiec_pof(hits(x, t), p)
    assert k.lr == pytest.approx(float(lr), rel=1e-10)
    assert k.p_value == pytest.approx(
        float(mpmath.gammainc(0.5, lr / 2, regularized=True)), rel=1e-9
    )
    # By hand for the first case: 2[242·ln(0.968/0.99) + 8·ln(3.2)]
    # = 2[242·(-0.0224729) + 8·1.1631508] = 2[-5.438442 + 9.305207] = 7.73353.
    if (x, t) == (8, 250):
        assert k.lr == pytest.approx(7.73353, abs=1e-4)


def test_christoffersen_hand_computed_clustered_sequence() -> None:
    # 0 0 1 1 0 0 0 1 0 0: pairs 00,01,11,10,00,00,01,10,00 -> n00=4 n01=2 n10=2 n11=1
    seq = [bool(c == "1") for c in "0011000100"]
    assert transition_counts(seq) == (4, 2, 2, 1)
    r = christoffersen_independence(seq)
    pi01, pi11, pi = mpmath.mpf(2) / 6, mpmath.mpf(1) / 3, mpmath.mpf(3) / 9
    null = 6 * mpmath.log(1 - pi) + 3 * mpmath.log(pi)
    alt = 4 * mpmath.log(1 - pi01) + 2 * mpmath.log(pi01) + 2 * mpmath.log(1 - pi11)
    alt += mpmath.log(pi11)
    assert (r.pi01, r.pi11) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    # pi01 = pi11 = pi: the maximised likelihoods coincide, LR is 0 and the p-value 1.
    assert float(-2 * (null - alt)) == pytest.approx(0.0, abs=1e-12)
    assert r.lr == pytest.approx(0.0, abs=1e-12)
    assert r.p_value == pytest.approx(1.0)


def test_christoffersen_detects_clustering() -> None:
    # 1000 days, 10 exceedances in two runs of 5: pi11 = 8/10 against pi01 = 2/989.
    seq = [False] * 1000
    for i in (*range(100, 105), *range(600, 605)):
        seq[i] = True
    r = christoffersen_independence(seq)
    assert (r.n00, r.n01, r.n10, r.n11) == (987, 2, 2, 8)
    n00, n01, n10, n11 = 987, 2, 2, 8
    p01, p11, p = mpmath.mpf(n01) / (n00 + n01), mpmath.mpf(n11) / (n10 + n11), mpmath.mpf(10) / 999
    lr = -2 * ((n00 + n10) * mpmath.log(1 - p) + (n01 + n11) * mpmath.log(p)) + 2 * (
        n00 * mpmath.log(1 - p01)
        + n01 * mpmath.log(p01)
        + n10 * mpmath.log(1 - p11)
        + n11 * mpmath.log(p11)
    )
    assert r.lr == pytest.approx(float(lr), rel=1e-10)
    assert r.p_value < 1e-10
    # The same count spread evenly is not clustered.
    even = [i % 100 == 50 for i in range(1000)]
    assert christoffersen_independence(even).p_value > 0.5
    cc = conditional_coverage(kupiec_pof(seq, 0.01), r)
    assert cc.lr == pytest.approx(kupiec_pof(seq, 0.01).lr + r.lr)
    assert cc.p_value == pytest.approx(float(mpmath.exp(-cc.lr / 2)))


@pytest.mark.parametrize("x", [0.0, 0.5, 3.841458820694124, 10.0, 40.0])
def test_chi_square_survival_functions_against_mpmath(x: float) -> None:
    assert chi2_sf_1(x) == pytest.approx(float(mpmath.gammainc(0.5, x / 2, regularized=True)))
    assert chi2_sf_2(x) == pytest.approx(float(mpmath.gammainc(1, x / 2, regularized=True)))
    if x == 3.841458820694124:
        assert chi2_sf_1(x) == pytest.approx(0.05, rel=1e-9)


def test_bad_inputs_are_named_errors() -> None:
    with pytest.raises(CoverageInputError):
        kupiec_pof([], 0.01)
    with pytest.raises(CoverageInputError):
        kupiec_pof([True, False], 0.0)
    with pytest.raises(CoverageInputError):
        kupiec_pof([1, 0], 0.01)  # type: ignore[list-item]
    with pytest.raises(CoverageInputError):
        christoffersen_independence([True])
