"""Accuracy of the fixed-point core against exact mathematics (mpmath at 60 digits, Fractions).

Bounds asserted (the documented domains of margin/fixed_point.py):
* mul/div: exactly floor/ceil of the rational result;
* exp: error <= 1e-15 relative for results above 1 WAD, <= 1,000 wei absolute below
  (measured: ~1e-18 relative, ~1.07 wei absolute);
* ln: error <= 1e-15 relative, or 1,000 wei absolute near zero (measured: ~1.04 wei absolute);
* sqrt: exactly the floor / ceil of sqrt(x·1e18).
"""

from __future__ import annotations

import random
from fractions import Fraction
from math import ceil, floor, isqrt

import mpmath as mp
import pytest

from margin import fixed_point as fp
from margin.errors import (
    DivisionByZero,
    ExpOverflow,
    LnOfNonPositive,
    MulDivOverflow,
    SqrtOfNegative,
    SqrtOverflow,
)

mp.mp.dps = 60
WAD = fp.WAD
REL_TOL = mp.mpf("1e-15")
ABS_TOL_WEI = 1000


def _exact_exp(x: int) -> mp.mpf:
    return mp.e ** (mp.mpf(x) / WAD) * WAD


def _exact_ln(x: int) -> mp.mpf:
    return mp.log(mp.mpf(x) / WAD) * WAD


def _within(got: int, exact: mp.mpf) -> bool:
    err = abs(mp.mpf(got) - exact)
    return err <= ABS_TOL_WEI or err <= REL_TOL * abs(exact)


def _exp_domain(rng: random.Random, n: int) -> list[int]:
    xs = [rng.randint(fp.EXP_MIN_WAD, fp.EXP_MAX_WAD) for _ in range(n)]
    xs += [rng.randint(-(10**19), 10**19) for _ in range(n // 2)]
    xs += [rng.randint(-(10**15), 10**15) for _ in range(n // 4)]
    # Around every power of two (the range-reduction boundaries k·ln2 ± ln2/2).
    ln2 = mp.log(2)
    for k in range(-60, 196, 3):
        centre = int(mp.nint((k + mp.mpf("0.5")) * ln2 * WAD))
        xs += [centre + d for d in (-2, -1, 0, 1, 2)]
    xs += [fp.EXP_MIN_WAD, fp.EXP_MIN_WAD + 1, fp.EXP_MAX_WAD, fp.EXP_MAX_WAD - 1, 0, 1, -1]
    return [x for x in xs if fp.EXP_MIN_WAD <= x <= fp.EXP_MAX_WAD]


def test_exp_accuracy_over_whole_domain() -> None:
    rng = random.Random(2)
    worst_rel = mp.mpf(0)
    worst_abs = mp.mpf(0)
    for x in _exp_domain(rng, 6000):
        exact = _exact_exp(x)
        got = fp.exp_wad(x)
        assert _within(got, exact), (x, got, exact)
        err = abs(got - exact)
        if exact >= WAD:
            worst_rel = max(worst_rel, err / exact)
        else:
            worst_abs = max(worst_abs, err)
    # Measured bounds, far inside the promise: keeps a regression from hiding under it.
    assert worst_rel < mp.mpf("1e-17"), worst_rel
    assert worst_abs < 2, worst_abs


def test_exp_cutoffs_and_overflow() -> None:
    assert fp.exp_wad(fp.EXP_MIN_WAD - 1) == 0
    assert fp.exp_wad(-(2**255)) == 0
    assert fp.exp_wad(fp.EXP_MIN_WAD) == 1  # exact value 1.0000000000000000003 wei
    top = fp.exp_wad(fp.EXP_MAX_WAD)
    assert 0 < top <= fp.INT256_MAX
    assert _within(top, _exact_exp(fp.EXP_MAX_WAD))
    with pytest.raises(ExpOverflow) as info:
        fp.exp_wad(fp.EXP_MAX_WAD + 1)
    assert info.value.args_ == (fp.EXP_MAX_WAD + 1,)


def test_ln_accuracy_over_whole_domain() -> None:
    rng = random.Random(3)
    xs = [rng.randint(1, 2 * WAD) for _ in range(3000)]
    xs += [rng.randint(1, 2 ** rng.randint(1, 255) - 1) for _ in range(5000)]
    xs += [WAD + d for d in range(-50, 51)]
    xs += [1, 2, 3, fp.INT256_MAX, fp.INT256_MAX - 1]
    # Around the centre sqrt2 of the reduction and the powers of two.
    for k in range(0, 255, 5):
        xs += [(1 << k) + d for d in (-1, 0, 1) if (1 << k) + d > 0]
        xs += [int(mp.sqrt(2) * 2**k) + d for d in (-1, 0, 1)]
    worst = mp.mpf(0)
    for x in xs:
        if x <= 0 or x > fp.INT256_MAX:
            continue
        exact = _exact_ln(x)
        got = fp.ln_wad(x)
        assert _within(got, exact), (x, got, exact)
        worst = max(worst, abs(got - exact))
    assert worst < 2, worst


def test_ln_domain_errors() -> None:
    for x in (0, -1, -(2**255)):
        with pytest.raises(LnOfNonPositive) as info:
            fp.ln_wad(x)
        assert info.value.args_ == (x,)


def test_sqrt_is_exact_floor_and_ceil() -> None:
    rng = random.Random(4)
    xs = [rng.randint(0, 2 ** rng.randint(0, 195)) for _ in range(5000)]
    xs += [0, 1, 2, WAD, 2 * WAD, 4 * WAD, fp.SQRT_MAX_WAD, fp.SQRT_MAX_WAD - 1]
    xs += [k * k for k in range(1, 100)]
    for x in xs:
        if x > fp.SQRT_MAX_WAD:
            continue
        n = x * WAD
        lo, hi = fp.sqrt_down(x), fp.sqrt_up(x)
        assert lo * lo <= n < (lo + 1) ** 2
        assert (hi - 1) ** 2 < n <= hi * hi if n else hi == 0
        assert lo == isqrt(n)


def test_sqrt_domain_errors() -> None:
    with pytest.raises(SqrtOfNegative):
        fp.sqrt_down(-1)
    with pytest.raises(SqrtOverflow):
        fp.sqrt_up(fp.SQRT_MAX_WAD + 1)


def test_mul_div_are_exact_directed_roundings() -> None:
    rng = random.Random(5)

    def draw() -> int:
        v = rng.randint(0, 2 ** rng.choice([1, 30, 64, 100, 127]))
        return -v if rng.random() < 0.5 else v

    for _ in range(5000):
        a, b, c = draw(), draw(), draw()
        exact_mul = Fraction(a * b, WAD)
        assert fp.mul_down(a, b) == floor(exact_mul)
        assert fp.mul_up(a, b) == ceil(exact_mul)
        if c:
            q = Fraction(a * b, c)
            assert fp.mul_div_down(a, b, c) == floor(q)
            assert fp.mul_div_up(a, b, c) == ceil(q)
            assert fp.div_down(a, c) == floor(Fraction(a * WAD, c))
            assert fp.div_up(a, c) == ceil(Fraction(a * WAD, c))


def test_mul_div_errors_in_solidity_order() -> None:
    with pytest.raises(MulDivOverflow):
        fp.mul_down(fp.INT256_MAX, 2)
    with pytest.raises(MulDivOverflow):
        fp.mul_down(-1, fp.INT256_MIN)  # 2**255 does not fit
    assert fp.mul_div_down(fp.INT256_MIN, 1, 1) == fp.INT256_MIN
    with pytest.raises(MulDivOverflow):
        fp.mul_div_down(fp.INT256_MIN, 1, -1)  # quotient 2**255
    with pytest.raises(DivisionByZero):
        fp.div_up(1, 0)
    with pytest.raises(MulDivOverflow):  # overflow is checked before the divisor
        fp.mul_div_up(fp.INT256_MAX, fp.INT256_MAX, 0)


def test_sdiv_truncates_toward_zero() -> None:
    assert fp.sdiv(-7, 2) == -3
    assert fp.sdiv(7, -2) == -3
    assert fp.sdiv(-7, -2) == 3
    assert -7 // 2 == -4  # the trap sdiv exists for


def test_monotone_over_random_adjacent_pairs() -> None:
    rng = random.Random(6)
    for _ in range(5000):
        x = rng.randint(fp.EXP_MIN_WAD - 2, fp.EXP_MAX_WAD - 1)
        assert fp.exp_wad(x) <= fp.exp_wad(x + 1)
        y = rng.randint(1, 2 ** rng.randint(1, 254))
        assert fp.ln_wad(y) <= fp.ln_wad(y + 1)
        z = rng.randint(0, fp.SQRT_MAX_WAD - 1)
        assert fp.sqrt_down(z) <= fp.sqrt_down(z + 1)
        assert fp.sqrt_up(z) <= fp.sqrt_up(z + 1)
