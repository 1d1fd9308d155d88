"""Accuracy of margin.option_pricing against exact mathematics (mpmath, 50 digits).

Bound (SPEC §5): |price − exact| <= 1e-9 · spot (Black-76: 1e-9 · forward) over the whole accepted
domain: a grid over its corners and interior plus seeded random cases, both sides, the degenerate
cases exact, put-call parity, textbook values, and every domain limit as a named error.

``python tests/test_pricing_accuracy.py`` prints the largest error found (relative to spot).
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import mpmath as mp
import pytest

from margin.errors import (
    ForwardOutOfRange,
    MoneynessOutOfRange,
    RateOutOfRange,
    SpotOutOfRange,
    StrikeOutOfRange,
    TauOutOfRange,
    VolOutOfRange,
    ZeroSigmaSqrtTau,
)
from margin.option_pricing import (
    MAX_PRICE,
    MAX_RATE,
    MAX_STRIKE_RATIO,
    MAX_TAU,
    MAX_VOL,
    MIN_PRICE,
    YEAR,
    d1_d2,
    discount_factor,
    option_price,
    option_price_black76,
    sigma_sqrt_tau,
)

WAD = 10**18
DAY = 86_400


def _mpf(wad: int) -> mp.mpf:
    return mp.mpf(wad) / WAD


def exact_price(
    is_call: bool, under: int, strike: int, tau: int, vol: int, rate: int, forward: bool = False
) -> mp.mpf:
    """Exact Black-Scholes (or Black-76 when forward) price in WAD units (not scaled by 1e18)."""
    with mp.workdps(50):
        t = mp.mpf(tau) / YEAR
        r, sigma, k = _mpf(rate), _mpf(vol), _mpf(strike)
        disc = mp.exp(-r * t)
        f = _mpf(under) if forward else _mpf(under) * mp.exp(r * t)
        s = sigma * mp.sqrt(t)
        if s == 0:
            intrinsic = (f - k) if is_call else (k - f)
            return max(intrinsic, mp.mpf(0)) * disc
        d1 = (mp.log(f / k) + s * s / 2) / s
        d2 = d1 - s
        if is_call:
            return disc * (f * mp.ncdf(d1) - k * mp.ncdf(d2))
        return disc * (k * mp.ncdf(-d2) - f * mp.ncdf(-d1))


def rel_error(
    is_call: bool, under: int, strike: int, tau: int, vol: int, rate: int, forward: bool = False
) -> float:
    """|engine − exact| / underlying."""
    fn = option_price_black76 if forward else option_price
    got = fn(is_call, under, strike, tau, vol, rate)
    assert got >= 0
    want = exact_price(is_call, under, strike, tau, vol, rate, forward)
    with mp.workdps(50):  # the difference needs the same precision as the reference
        return float(abs(mp.mpf(got) / WAD - want) / _mpf(under))


TOL = 1e-9

# Grid over the domain: corners and interior points of every input.
SPOTS = [MIN_PRICE, 10**17, WAD, 42 * WAD, 3_000 * WAD, 10**9 * WAD, MAX_PRICE]
RATIOS = [  # strike / spot (clipped into [MIN_PRICE, MAX_PRICE])
    Fraction(1, 10**20),
    Fraction(1, 10**6),
    Fraction(1, 2),
    Fraction(9, 10),
    Fraction(1),
    Fraction(11, 10),
    Fraction(3),
    Fraction(10**4),
    Fraction(MAX_STRIKE_RATIO),
]
TAUS = [1, 60, 3_600, DAY, 30 * DAY, YEAR, MAX_TAU]
VOLS = [0, 1, 10**16, WAD // 5, WAD, 3 * WAD, MAX_VOL]
RATES = [-MAX_RATE, -(WAD // 50), 0, WAD // 20, MAX_RATE]


def _strike(spot: int, ratio: Fraction) -> int:
    return min(max(int(spot * ratio), MIN_PRICE), MAX_PRICE, spot * MAX_STRIKE_RATIO)


def _grid() -> list[tuple[int, int, int, int, int]]:
    cases = []
    for spot, ratio in itertools.product(SPOTS, RATIOS):
        strike = _strike(spot, ratio)
        for tau, vol, rate in itertools.product(TAUS, VOLS, RATES):
            cases.append((spot, strike, tau, vol, rate))
    return cases


def _loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return 10 ** rng.uniform(lo, hi)


def random_case(rng: random.Random) -> tuple[int, int, int, int, int]:
    spot = int(_loguniform(rng, -8, 12) * WAD)
    spot = min(max(spot, MIN_PRICE), MAX_PRICE)
    # Moneyness concentrated near the money, where Φ is steep, with deep wings too.
    ln_ratio = rng.gauss(0, 0.3) if rng.random() < 0.6 else rng.uniform(-46, 18.42)
    strike = _strike(spot, Fraction(math.exp(ln_ratio)))
    tau = rng.choice([rng.randint(1, 600), rng.randint(1, 30 * DAY), rng.randint(1, MAX_TAU)])
    vol = rng.choice([0, rng.randint(1, 10**9), int(_loguniform(rng, -2, 1) * WAD)])
    rate = rng.choice([0, rng.randint(-MAX_RATE, MAX_RATE), rng.randint(-WAD // 10, WAD // 10)])
    return spot, strike, tau, vol, rate


def sweep(n_random: int, seed: int = 20261125) -> tuple[float, tuple]:
    """Largest relative error over the grid and n_random random cases (both sides)."""
    rng = random.Random(seed)
    cases = _grid() + [random_case(rng) for _ in range(n_random)]
    worst, arg = 0.0, ()
    for case in cases:
        for is_call in (True, False):
            err = rel_error(is_call, *case)
            if err > worst:
                worst, arg = err, (is_call, *case)
    return worst, arg


def test_grid_and_random_within_1e9_of_spot() -> None:
    worst, arg = sweep(n_random=4_000)
    assert worst <= TOL, (worst, arg)


def test_black76_within_1e9_of_forward() -> None:
    rng = random.Random(76)
    for _ in range(1_500):
        case = random_case(rng)
        for is_call in (True, False):
            err = rel_error(is_call, *case, forward=True)
            assert err <= TOL, (err, is_call, case)


@pytest.mark.parametrize("is_call", [True, False])
def test_expired_is_exact_intrinsic(is_call: bool) -> None:
    for spot, strike in [
        (42 * WAD, 40 * WAD),
        (40 * WAD, 42 * WAD),
        (7 * WAD, 7 * WAD),
        (MIN_PRICE, MAX_PRICE // 10**13),
        (MAX_PRICE, MIN_PRICE),
    ]:
        for vol, rate in [(0, 0), (WAD, MAX_RATE), (MAX_VOL, -MAX_RATE)]:
            want = max(spot - strike if is_call else strike - spot, 0)
            assert option_price(is_call, spot, strike, 0, vol, rate) == want
            assert option_price_black76(is_call, spot, strike, 0, vol, rate) == want


@pytest.mark.parametrize("is_call", [True, False])
def test_zero_vol_is_exact_discounted_intrinsic(is_call: bool) -> None:
    for spot, strike in [(42 * WAD, 40 * WAD), (40 * WAD, 42 * WAD), (WAD, WAD)]:
        for tau, rate in [(DAY, WAD // 10), (YEAR, -WAD // 20), (MAX_TAU, 0), (1, MAX_RATE)]:
            disc = discount_factor(tau, rate)
            kd = strike * disc // WAD
            want = max(spot - kd if is_call else kd - spot, 0)
            assert option_price(is_call, spot, strike, tau, 0, rate) == want
            fd = spot * disc // WAD
            want76 = max(fd - kd if is_call else kd - fd, 0)
            assert option_price_black76(is_call, spot, strike, tau, 0, rate) == want76
            # ... and the exact value agrees with it.
            assert rel_error(is_call, spot, strike, tau, 0, rate) <= 1e-17


def test_put_call_parity() -> None:
    """call − put = S − K·D within 3 wei + (S + KD)·1e-18.

    Φ(−x) = 1e18 − Φ(x) exactly, so before rounding the identity is exact; the four floored
    products cost < 2 wei, and the clamp at 0 of a leg that came out slightly negative (both
    its Φ values within a few wei of 0, each rounded to the wei) costs at most ~1 wei of Φ
    times the larger notional, i.e. (S + KD)·1e-18 in price.
    """
    rng = random.Random(7)
    for spot, strike, tau, vol, rate in _grid() + [random_case(rng) for _ in range(3_000)]:
        call = option_price(True, spot, strike, tau, vol, rate)
        put = option_price(False, spot, strike, tau, vol, rate)
        kd = strike * discount_factor(tau, rate) // WAD
        residue = call - put - (spot - kd)
        assert abs(residue) <= 3 + (spot + kd) // WAD, (residue, spot, strike, tau, vol, rate)


def test_call_at_most_spot_and_put_at_most_discounted_strike() -> None:
    for spot, strike in [(MAX_PRICE, MIN_PRICE), (MIN_PRICE, MIN_PRICE * MAX_STRIKE_RATIO)]:
        for rate in (-MAX_RATE, 0, MAX_RATE):
            call = option_price(True, spot, strike, MAX_TAU, MAX_VOL, rate)
            put = option_price(False, spot, strike, MAX_TAU, MAX_VOL, rate)
            assert 0 <= call <= spot
            assert 0 <= put <= strike * discount_factor(MAX_TAU, rate) // WAD


def _t(years: Fraction) -> int:
    tau = years * YEAR
    assert tau.denominator == 1
    return int(tau)


def _w(x: str) -> int:
    return int(Fraction(x) * WAD)


def _forward(spot: str, carry: str, years: Fraction) -> int:
    """S·e^(bT) rounded to the wei, for Haug's cost-of-carry examples via Black-76."""
    with mp.workdps(50):
        return int(mp.nint(mp.mpf(spot) * mp.exp(mp.mpf(carry) * mp.mpf(years)) * WAD))


def _approx(wad: int, printed: str) -> bool:
    """Equal to the printed precision (half a unit of its last digit)."""
    decimals = len(printed.split(".")[1])
    return abs(Fraction(wad, WAD) - Fraction(printed)) <= Fraction(1, 2 * 10**decimals)


def test_textbook_values() -> None:
    half = Fraction(1, 2)
    # Hull, Options, Futures, and Other Derivatives, Black-Scholes-Merton chapter, worked
    # example: S=42, K=40, r=10%, σ=20%, T=0.5 -> c = 4.76, p = 0.81.
    args = (_w("42"), _w("40"), _t(half), _w("0.2"), _w("0.1"))
    assert _approx(option_price(True, *args), "4.76")
    assert _approx(option_price(False, *args), "0.81")
    # Haug, The Complete Guide to Option Pricing Formulas (2nd ed.), ch. 1:
    # Black-Scholes: S=60, X=65, T=0.25, r=8%, σ=30% -> c = 2.1334.
    assert _approx(
        option_price(True, _w("60"), _w("65"), _t(Fraction(1, 4)), _w("0.3"), _w("0.08")),
        "2.1334",
    )
    # Black-76: F=19, X=19, T=0.75, r=10%, σ=28% -> c = p = 1.7011.
    args = (_w("19"), _w("19"), _t(Fraction(3, 4)), _w("0.28"), _w("0.1"))
    assert _approx(option_price_black76(True, *args), "1.7011")
    assert _approx(option_price_black76(False, *args), "1.7011")
    # Asay (margined futures option, r = 0): F=4200, X=3800, T=0.75, σ=15% -> p = 65.6185.
    args = (_w("4200"), _w("3800"), _t(Fraction(3, 4)), _w("0.15"), 0)
    assert _approx(option_price_black76(False, *args), "65.6185")
    # Generalized BSM, cost of carry b (via Black-76 on F = S·e^(bT), discounted at r):
    # Merton (dividend yield q=5%): S=100, X=95, T=0.5, r=10%, σ=20% -> p = 2.4648.
    f = _forward("100", "0.05", half)
    assert _approx(
        option_price_black76(False, f, _w("95"), _t(half), _w("0.2"), _w("0.1")), "2.4648"
    )
    # Garman-Kohlhagen: S=1.56, X=1.60, T=0.5, r=6%, rf=8%, σ=12% -> c = 0.0291.
    f = _forward("1.56", "-0.02", half)
    assert _approx(
        option_price_black76(True, f, _w("1.60"), _t(half), _w("0.12"), _w("0.06")), "0.0291"
    )
    # Generalized BSM: S=75, X=70, T=0.5, r=10%, b=5%, σ=35% -> p = 4.0870.
    f = _forward("75", "0.05", half)
    assert _approx(
        option_price_black76(False, f, _w("70"), _t(half), _w("0.35"), _w("0.1")), "4.0870"
    )


def test_helpers_agree_with_the_price() -> None:
    spot, strike, tau, vol, rate = 42 * WAD, 40 * WAD, YEAR // 2, WAD // 5, WAD // 10
    d1, d2 = d1_d2(spot, strike, tau, vol, rate)
    assert abs(d1 - 769_262_628_106_031_381) <= 10  # mpmath; Hull prints d1 = 0.7693
    assert d1 - d2 == sigma_sqrt_tau(tau, vol) == 141_421_356_237_309_504  # 0.2·√0.5, floored
    assert discount_factor(0, MAX_RATE) == WAD
    with pytest.raises(ZeroSigmaSqrtTau):
        d1_d2(spot, strike, 0, vol, rate)
    with pytest.raises(ZeroSigmaSqrtTau):
        d1_d2(spot, strike, tau, 0, rate)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((MIN_PRICE - 1, WAD, DAY, WAD, 0), SpotOutOfRange),
        ((0, WAD, DAY, WAD, 0), SpotOutOfRange),
        ((-WAD, WAD, DAY, WAD, 0), SpotOutOfRange),
        ((MAX_PRICE + 1, WAD, DAY, WAD, 0), SpotOutOfRange),
        ((WAD, MIN_PRICE - 1, DAY, WAD, 0), StrikeOutOfRange),
        ((WAD, 0, DAY, WAD, 0), StrikeOutOfRange),
        ((WAD, MAX_PRICE + 1, DAY, WAD, 0), StrikeOutOfRange),
        ((MIN_PRICE, MIN_PRICE * MAX_STRIKE_RATIO + 1, DAY, WAD, 0), MoneynessOutOfRange),
        ((WAD, WAD, MAX_TAU + 1, WAD, 0), TauOutOfRange),
        ((WAD, WAD, DAY, -1, 0), VolOutOfRange),
        ((WAD, WAD, DAY, MAX_VOL + 1, 0), VolOutOfRange),
        ((WAD, WAD, DAY, WAD, MAX_RATE + 1), RateOutOfRange),
        ((WAD, WAD, DAY, WAD, -MAX_RATE - 1), RateOutOfRange),
        # The first failing check wins: spot before strike before tau before vol before rate.
        ((0, 0, MAX_TAU + 1, -1, MAX_RATE + 1), SpotOutOfRange),
        ((WAD, 0, MAX_TAU + 1, -1, MAX_RATE + 1), StrikeOutOfRange),
        ((WAD, WAD, MAX_TAU + 1, -1, MAX_RATE + 1), TauOutOfRange),
        ((WAD, WAD, DAY, -1, MAX_RATE + 1), VolOutOfRange),
    ],
)
def test_domain_errors(args: tuple[int, ...], error: type[Exception]) -> None:
    for is_call in (True, False):
        with pytest.raises(error) as info:
            option_price(is_call, *args)
        assert info.value.args_ == _expected_args(error, args)
        expected76 = ForwardOutOfRange if error is SpotOutOfRange else error
        with pytest.raises(expected76):
            option_price_black76(is_call, *args)


def _expected_args(error: type[Exception], args: tuple[int, ...]) -> tuple[int, ...]:
    spot, strike, tau, vol, rate = args
    return {
        SpotOutOfRange: (spot,),
        StrikeOutOfRange: (strike,),
        MoneynessOutOfRange: (spot, strike),
        TauOutOfRange: (tau,),
        VolOutOfRange: (vol,),
        RateOutOfRange: (rate,),
    }[error]


def test_negative_tau_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="uint256"):
        option_price(True, WAD, WAD, -1, WAD, 0)


def test_domain_edges_are_accepted() -> None:
    for args in [
        (MIN_PRICE, MIN_PRICE * MAX_STRIKE_RATIO, MAX_TAU, MAX_VOL, MAX_RATE),
        (MAX_PRICE, MIN_PRICE, MAX_TAU, MAX_VOL, -MAX_RATE),
        (MAX_PRICE, MAX_PRICE, 1, 1, 0),
    ]:
        for is_call in (True, False):
            assert rel_error(is_call, *args) <= TOL


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    n = 20_000
    worst, arg = sweep(n_random=n)
    print(f"Black-Scholes: {2 * (len(_grid()) + n)} prices (grid + {n} random, both sides)")
    print(f"  max |price - exact| / spot = {worst:.3e}")
    print(f"  at (is_call, spot, strike, tau, vol, rate) = {arg}")
    rng = random.Random(76)
    worst76, arg76 = 0.0, ()
    for _ in range(5_000):
        case = random_case(rng)
        for is_call in (True, False):
            err = rel_error(is_call, *case, forward=True)
            if err > worst76:
                worst76, arg76 = err, (is_call, *case)
    print("Black-76: 10000 random prices (both sides)")
    print(f"  max |price - exact| / forward = {worst76:.3e} at {arg76}")
    print(f"({time.perf_counter() - t0:.1f} s)")
