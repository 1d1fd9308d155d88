"""Signed WAD fixed-point core, mirrored integer for integer by contracts/src/math/FixedPoint.sol.

A WAD is an int256 scaled by 1e18. Every function reproduces the Solidity library exactly: the
same integer operations in the same order, the same rounding, and the same failure conditions
(each revert of the library is one exception class of ``margin.errors``, raised in the same
order of checks).

Two EVM facts the mirror depends on:

* ``sdiv`` truncates toward zero, while Python's ``//`` floors; :func:`sdiv` reproduces the
  EVM. ``sar`` (arithmetic shift right) floors, exactly like Python's ``>>`` on negatives.
* EVM words wrap modulo 2**256. The library is written so that, inside each documented domain,
  no intermediate ever wraps (the bounds are stated next to each step), so Python's unbounded
  integers give the same values without emulating the wrap.

Rounding directions are in the names: ``down`` rounds toward −∞, ``up`` toward +∞.
``exp_wad`` and ``ln_wad`` are approximations (documented error bounds, not directed).
"""

from __future__ import annotations

from math import isqrt

from margin.errors import (
    DivisionByZero,
    ExpOverflow,
    LnOfNonPositive,
    MulDivOverflow,
    SqrtOfNegative,
    SqrtOverflow,
)

WAD = 10**18
INT256_MIN = -(2**255)
INT256_MAX = 2**255 - 1

#: exp_wad reverts with ExpOverflow above this (one wei below floor(ln((2**255-1)/1e18)·1e18),
#: so the exact result stays at least 1e-18 relative below 2**255 and the approximation fits).
EXP_MAX_WAD = 135_305_999_368_893_231_588
#: exp_wad returns 0 below this: ln(1e-18)·1e18 rounded up; the exact result is < 1 wei there.
EXP_MIN_WAD = -41_446_531_673_892_822_312
#: sqrt_down/sqrt_up revert with SqrtOverflow above this: x·1e18 would not fit int256.
SQRT_MAX_WAD = INT256_MAX // WAD

# Binary fixed point with 96 fractional bits (Q96) carries the transcendental work: ~1e-29
# resolution, far below one wei, and products of two Q96 values stay below 2**200.
_Q96 = 1 << 96
_LN2_Q96 = 54_916_777_467_707_473_351_141_471_128  # round(ln 2 · 2**96)
_INV_LN2_Q96 = 114_302_077_158_074_026_402_637_675_937  # round(2**96 / ln 2)
_SQRT2_Q96 = 112_045_541_949_572_279_837_463_876_455  # round(sqrt 2 · 2**96): ln's centre c
# ln: round((ln(c / 2**96) - ln 1e18) · 2**96) + 2**18. The 2**18 (3.3e-24) covers the Padé's
# shortfall at x = 1e18 (1.4e5 units), so ln_wad(WAD) == 0 exactly.
_LN_OFFSET_Q96 = -3_256_274_158_377_931_116_946_767_897_201
# ln: [4/4] Padé approximant of 2·atanh(s)/s in t = s², 2P/99225 and Q/99225 in Q96 (rounded):
# P = 3828825 - 6831825t + 3738735t² - 638055t³ + 16384t⁴,
# Q = 3828825 - 8108100t + 5675670t² - 1455300t³ + 99225t⁴.
_LN_P0 = 6_114_402_002_291_320_783_806_518_833_867
_LN_P1 = -10_910_011_415_853_141_006_399_866_938_861
_LN_P2 = 5_970_533_719_884_466_177_128_718_390_717
_LN_P3 = -1_018_935_252_870_525_208_833_432_808_902
_LN_P4 = 26_164_257_286_645_641_867_122_682_435
_LN_Q0 = 3_057_201_001_145_660_391_903_259_416_934
_LN_Q1 = -6_474_072_708_308_457_300_501_019_941_742
_LN_Q2 = 4_531_850_895_815_920_110_350_713_959_219
_LN_Q3 = -1_162_013_050_209_210_284_705_311_271_595
_POW5_18 = 5**18  # 1e18 = 2**18 · 5**18
_EXP_OUT_SCALE = WAD << 99  # 1e18 · 2**99: q·scale < 2**256 for q < 1.42·2**96


def sdiv(a: int, b: int) -> int:
    """EVM ``sdiv``: quotient truncated toward zero (callers guarantee b != 0)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _check_product(p: int) -> int:
    if p < INT256_MIN or p > INT256_MAX:
        raise MulDivOverflow()
    return p


def mul_down(a: int, b: int) -> int:
    """floor(a·b / 1e18). MulDivOverflow if a·b does not fit int256."""
    return _check_product(a * b) // WAD


def mul_up(a: int, b: int) -> int:
    """ceil(a·b / 1e18). MulDivOverflow if a·b does not fit int256."""
    return -((-_check_product(a * b)) // WAD)


def mul_div_down(a: int, b: int, c: int) -> int:
    """floor(a·b / c). MulDivOverflow if a·b or the quotient leaves int256; DivisionByZero."""
    p = _check_product(a * b)
    if c == 0:
        raise DivisionByZero()
    return _check_product(p // c)


def mul_div_up(a: int, b: int, c: int) -> int:
    """ceil(a·b / c). MulDivOverflow if a·b or the quotient leaves int256; DivisionByZero."""
    p = _check_product(a * b)
    if c == 0:
        raise DivisionByZero()
    return _check_product(-((-p) // c))


def div_down(a: int, b: int) -> int:
    """floor(a·1e18 / b). MulDivOverflow if a·1e18 does not fit; DivisionByZero if b == 0."""
    return mul_div_down(a, WAD, b)


def div_up(a: int, b: int) -> int:
    """ceil(a·1e18 / b). MulDivOverflow if a·1e18 does not fit; DivisionByZero if b == 0."""
    return mul_div_up(a, WAD, b)


def exp_wad(x: int) -> int:
    """e^(x/1e18)·1e18.

    Domain: x <= EXP_MAX_WAD (else ExpOverflow(x)); 0 for x < EXP_MIN_WAD.
    Method: x = k·ln2 + r with |r| <= ln2/2 in Q96, e^r by the [6/6] Padé approximant
    (integer coefficients 665280, 332640, 75600, 10080, 840, 42, 1; relative error < 2e-19 on
    that interval), then scaled by 2**k. Result truncated (the last shift floors); error within
    a few wei per 1e18 of the result (tested against mpmath).
    """
    if x > EXP_MAX_WAD:
        raise ExpOverflow(x)
    if x < EXP_MIN_WAD:
        return 0
    # x in Q96, truncated toward zero: |x| < 2**68 so x·2**78 < 2**146.
    xq = sdiv(x << 78, _POW5_18)
    # k = round(x / ln 2) in [-60, 195]; the product stays below 2**200.
    k = (xq * _INV_LN2_Q96 + (1 << 191)) >> 192
    r = xq - k * _LN2_Q96  # |r| <= 0.3466·2**96 (+ rounding)
    r2 = (r * r) >> 96
    # Padé: e^r ≈ (E + O) / (E - O), E even part, O odd part, both scaled by 665280.
    even = r2 + 840 * _Q96
    even = ((even * r2) >> 96) + 75600 * _Q96
    even = ((even * r2) >> 96) + 665280 * _Q96
    odd = 42 * r2 + 10080 * _Q96
    odd = ((odd * r2) >> 96) + 332640 * _Q96
    odd = (odd * r) >> 96
    q = ((even + odd) << 96) // (even - odd)  # both positive: e^r in Q96, < 1.42·2**96
    # q·1e18·2**(k-96) = (q·1e18·2**99) >> (195 - k); the product is < 2**256 (unsigned).
    return (q * _EXP_OUT_SCALE) >> (195 - k)


def _log2_floor(x: int) -> int:
    """floor(log2(x)) for x > 0 (the EVM side finds the top bit by a binary search)."""
    return x.bit_length() - 1


def ln_wad(x: int) -> int:
    """ln(x/1e18)·1e18 for x > 0; LnOfNonPositive(x) otherwise.

    Method: x = m·2**(k-96) with m in [2**96, 2**97); with the centre c = round(sqrt2·2**96),
    s = (m - c)/(m + c), |s| <= 0.1716, and ln(m/c) = 2·atanh(s) = s·P(s²)/Q(s²), the [4/4]
    Padé approximant of 2·atanh(s)/s (absolute error < 4e-20, an underestimate of |ln(m/c)|).
    No branch. Result floored from Q96; error within a couple of wei (tested against mpmath).
    """
    if x <= 0:
        raise LnOfNonPositive(x)
    k = _log2_floor(x)
    # The EVM side shifts the top bit to bit 255, then down to bit 96 (k <= 254).
    m = (x << (255 - k)) >> 159
    s = sdiv((m - _SQRT2_Q96) << 96, m + _SQRT2_Q96)  # |s| <= 0.1716·2**96
    t = (s * s) >> 96
    # 2P and Q divided by Q's leading coefficient (99225) so Q is monic, coefficients rounded
    # to Q96. Horner: every accumulator stays below 2**103 and every product below 2**195.
    p = _LN_P4
    p = ((p * t) >> 96) + _LN_P3
    p = ((p * t) >> 96) + _LN_P2
    p = ((p * t) >> 96) + _LN_P1
    p = ((p * t) >> 96) + _LN_P0
    q = t + _LN_Q3
    q = ((q * t) >> 96) + _LN_Q2
    q = ((q * t) >> 96) + _LN_Q1
    q = ((q * t) >> 96) + _LN_Q0
    ln_m = sdiv(s * p, q)  # Q96
    v = k * _LN2_Q96 + ln_m + _LN_OFFSET_Q96
    return (v * WAD) >> 96


def sqrt_down(x: int) -> int:
    """floor(sqrt(x/1e18)·1e18) = isqrt(x·1e18).

    SqrtOfNegative(x) for x < 0; SqrtOverflow(x) for x > SQRT_MAX_WAD (x·1e18 leaves int256).
    """
    if x < 0:
        raise SqrtOfNegative(x)
    if x > SQRT_MAX_WAD:
        raise SqrtOverflow(x)
    return isqrt_floor(x * WAD)


def sqrt_up(x: int) -> int:
    """ceil(sqrt(x/1e18)·1e18); same domain and errors as :func:`sqrt_down`."""
    z = sqrt_down(x)
    return z + (z * z < x * WAD)


def isqrt_floor(n: int) -> int:
    """floor(sqrt(n)) of an integer n >= 0 (FixedPoint.isqrtFloor, Newton's method there)."""
    return isqrt(n)
