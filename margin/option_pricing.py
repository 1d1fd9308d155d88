"""Black-Scholes / Black-76 prices of European options, mirrored to the wei by
contracts/src/margin/OptionPricing.sol (``library OptionPricing``).

Every function performs the same integer operations in the same order as the Solidity library,
with the same rounding and the same failure conditions (one ``margin.errors`` class per revert,
checked in the same order).

Units: spot, forward, strike, vol (annualised, 1e18 = 100%) and rate (annual, continuously
compounded) are signed WADs; ``tau`` is the time to expiry in seconds (the caller computes
``expiry - block.timestamp`` and passes 0 once expired); a year is 365 days.

Method (no put-call parity; both sides are computed directly)::

    rt   = r·τ                                    (WAD, truncated toward zero)
    D    = e^(−rt)                                (exp_wad; exactly 1e18 when rt == 0)
    KD   = K·D                                    (floored)
    s    = σ√τ  = isqrt(vol²·τ / year)            (σ²τ·1e36 floored, then the floor root)
    h    = σ²τ/2                                  (floored)
    m    = ln(F/K) = ln(S/K) + rt                 (ln of the ratio >= 1, see _ln_ratio)
    d1   = (m + h)/s  (truncated toward zero),    d2 = d1 − s (exact)
    call = S·Φ(d1) − KD·Φ(d2)                     (= D·(F·Φ(d1) − K·Φ(d2)), as S = F·D)
    put  = KD·Φ(−d2) − S·Φ(−d1)                   (= D·(K·Φ(−d2) − F·Φ(−d1)))

Each product with Φ is floored, so each price carries at most ~2 wei of rounding on top of the
approximation errors of exp/ln/Φ; it is *not* directed (the model wants accurate marks and uses
them for long and short positions alike). Sharing the truncation of d1 with d2 = d1 − s keeps the
price insensitive to it to first order (S·φ(d1) = KD·φ(d2)).

Degenerate case: when s == 0 (τ == 0, σ == 0, or σ²τ below 1e-36) the distribution collapses
and the price is the discounted intrinsic value max(F−K, 0)·D = max(S − KD, 0) for a call and
max(KD − S, 0) for a put (undiscounted max(S − K, 0) / max(K − S, 0) when τ == 0, where
D == 1e18 exactly).

Results are clamped at 0: the exact price is positive, a negative integer can only come from
rounding (both terms floored) or from the Φ approximation in the far tail. A call never exceeds
S (resp. F·D) and a put never exceeds KD: Φ is in [0, 1e18] and the subtracted term is >= 0.

Domain (each limit enforced by a named error, checked in this order):
spot (resp. forward) in [MIN_PRICE, MAX_PRICE]; strike in [MIN_PRICE, MAX_PRICE];
strike <= MAX_STRIKE_RATIO · spot (resp. forward); tau <= MAX_TAU (5 years);
vol in [0, MAX_VOL] (0..1000%); |rate| <= MAX_RATE (50% a year).
Why the strike/spot cap and the rate cap: Φ is returned in WAD (1e-18 resolution), so KD·Φ(·)
carries an error of order KD·1e-18 whatever the formula (a deep in-the-money put, or the strike
leg of a far out-of-the-money call); with K/S <= 1e7 and D <= e^2.5 that is KD/S <= 1.3e8, i.e.
~1e-10·S per wei of Φ error. A deep in-the-money call (K << S) has no such problem, so spot/strike
is not capped (beyond the price range).
The margin model prices with ``option_model_price`` (and ``option_price_pair``): the same integers
inside that domain, and the discounted intrinsic value where the spot alone leaves it
(0 < spot < MIN_PRICE, or strike > MAX_STRIKE_RATIO · spot), so a crash cannot make a margin
check fail (docs/margin-model.md).
Accuracy (tests/test_pricing_accuracy.py, against mpmath): within 1e-9 · spot over that domain;
the largest error found is 1.6e-10 · spot, i.e. 1.6 wei at the smallest spot (1e10 wei), where
the few wei of rounding dominate (``python tests/test_pricing_accuracy.py`` prints it).
"""

from __future__ import annotations

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
from margin.fixed_point import exp_wad, isqrt_floor, ln_wad, sdiv
from margin.normal_dist import cdf_wad

WAD = 10**18
#: Seconds in a year (365 days).
YEAR = 31_536_000
#: Smallest accepted spot, forward or strike: 1e-8 (a few wei of rounding stay below 1e-9·S).
MIN_PRICE = 10**10
#: Largest accepted spot, forward or strike: 1e12.
MAX_PRICE = 10**30
#: strike <= MAX_STRIKE_RATIO · spot (or forward); see the module docstring.
MAX_STRIKE_RATIO = 10**7
#: Largest accepted time to expiry: 5 years, in seconds.
MAX_TAU = 5 * YEAR
#: Largest accepted volatility: 1000% a year.
MAX_VOL = 10 * WAD
#: Largest accepted |rate|: 50% a year (continuous); D = e^(−rτ) stays within e^(±2.5).
MAX_RATE = WAD // 2


def _check_underlying(underlying: int, strike: int, is_forward: bool) -> None:
    if underlying < MIN_PRICE or underlying > MAX_PRICE:
        raise (ForwardOutOfRange if is_forward else SpotOutOfRange)(underlying)
    if strike < MIN_PRICE or strike > MAX_PRICE:
        raise StrikeOutOfRange(strike)
    # underlying <= 1e30, so the product stays below 1e38.
    if strike > underlying * MAX_STRIKE_RATIO:
        raise MoneynessOutOfRange(underlying, strike)


def _check_tau_vol_rate(tau: int, vol: int, rate: int) -> None:
    if tau < 0:  # Solidity's uint256 cannot carry it: a caller bug, not a domain error
        raise ValueError(f"tau must be a uint256 (pass 0 once expired), got {tau}")
    if tau > MAX_TAU:
        raise TauOutOfRange(tau)
    if vol < 0 or vol > MAX_VOL:
        raise VolOutOfRange(vol)
    if rate < -MAX_RATE or rate > MAX_RATE:
        raise RateOutOfRange(rate)


def _sigma_sqrt_tau_half_var(tau: int, vol: int) -> tuple[int, int]:
    """(σ√τ, σ²τ/2) in WAD, both floored. In domain: vol² <= 1e38, ·tau <= 1.6e46."""
    var36 = vol * vol * tau // YEAR  # σ²τ scaled by 1e36, floored (all terms >= 0)
    # Exact integer square root (the Solidity side: Newton from above + correction, proven there).
    return isqrt_floor(var36), var36 // (2 * WAD)


def _rate_time(tau: int, rate: int) -> int:
    """r·τ in WAD, truncated toward zero (sdiv). |rate·tau| <= 1e18 · 1.6e8."""
    return sdiv(rate * tau, YEAR)


def _discount(rt: int) -> int:
    """e^(−rt) in WAD; exactly 1e18 when rt == 0 (no exp call)."""
    return WAD if rt == 0 else exp_wad(-rt)


def _ln_ratio(a: int, b: int) -> int:
    """ln(a/b) in WAD for a, b in [MIN_PRICE, MAX_PRICE].

    The quotient is taken as max/min so that it is >= 1e18 and its flooring costs less than
    1e-18 relative (a min/max quotient could lose all digits); a·1e18 <= 1e48 fits.
    """
    if a >= b:
        return ln_wad(a * WAD // b)
    return -ln_wad(b * WAD // a)


def _intrinsic(is_call: bool, sd: int, kd: int) -> int:
    v = sd - kd if is_call else kd - sd
    return v if v > 0 else 0


def _core(is_call: bool, sd: int, kd: int, m: int, sst: int, half_var: int) -> int:
    """Price from the discounted underlying sd (= S, or F·D), discounted strike kd, m = ln(F/K),
    s = σ√τ > 0 and h = σ²τ/2.

    Bounds: |m| <= ln(1e20) + 2.5 < 49e18 and h <= 250e18, so (m + h)·1e18 < 3e38; sd, kd <=
    1e30·e^2.5 < 1.3e31 and Φ <= 1e18, so each product is < 1.3e49; all far inside int256.
    """
    d1 = sdiv((m + half_var) * WAD, sst)
    d2 = d1 - sst
    if is_call:
        v = sd * cdf_wad(d1) // WAD - kd * cdf_wad(d2) // WAD
    else:
        v = kd * cdf_wad(-d2) // WAD - sd * cdf_wad(-d1) // WAD
    # Clamp: the exact price is > 0; a negative integer is rounding (see module docstring).
    return v if v > 0 else 0


def option_price(is_call: bool, spot: int, strike: int, tau: int, vol: int, rate: int) -> int:
    """Black-Scholes price (WAD) of a European call or put on a spot with continuous rate."""
    _check_underlying(spot, strike, False)
    _check_tau_vol_rate(tau, vol, rate)
    rt = _rate_time(tau, rate)
    kd = strike * _discount(rt) // WAD  # <= 1e30 · e^5: fits; floored
    sst, half_var = _sigma_sqrt_tau_half_var(tau, vol)
    if sst == 0:
        return _intrinsic(is_call, spot, kd)
    m = _ln_ratio(spot, strike) + rt
    return _core(is_call, spot, kd, m, sst, half_var)


def option_model_price(
    is_call: bool, spot: int, strike: int, tau: int, vol: int, rate: int, ln_sk: int | None = None
) -> int:
    """The margin model's price (OptionPricing.modelPrice): option_price inside its domain, and a
    defined value, never an error, when the underlying alone leaves the accuracy domain (a crash
    can do that to any book): for 0 < spot < MIN_PRICE or strike > MAX_STRIKE_RATIO·spot, the
    discounted intrinsic value max(S − KD, 0) (call), max(KD − S, 0) (put), i.e. the zero-vol
    limit. Any arbitrage-free price is within S of it (call in [0, S], put in [KD − S, KD]),
    and there S < 1e-8 or S < 1e-7·K. Errors in this order: SpotOutOfRange (spot <= 0 or above
    MAX_PRICE), StrikeOutOfRange, then tau, vol and rate as in option_price.

    ``ln_sk`` (OptionPricing.modelPriceLn), when given, replaces ln(spot/strike) inside the
    domain: the model prices a scenario spot S' of a market spot S with ln_ratio(S, K) +
    ln_ratio(S', S), one ln per option and one per scenario instead of one per pair."""
    if spot <= 0 or spot > MAX_PRICE:
        raise SpotOutOfRange(spot)
    if strike < MIN_PRICE or strike > MAX_PRICE:
        raise StrikeOutOfRange(strike)
    _check_tau_vol_rate(tau, vol, rate)
    rt = _rate_time(tau, rate)
    kd = strike * _discount(rt) // WAD
    sst, half_var = _sigma_sqrt_tau_half_var(tau, vol)
    if sst == 0 or spot < MIN_PRICE or strike > spot * MAX_STRIKE_RATIO:
        return _intrinsic(is_call, spot, kd)
    m = (_ln_ratio(spot, strike) if ln_sk is None else ln_sk) + rt
    return _core(is_call, spot, kd, m, sst, half_var)


def ln_ratio(a: int, b: int) -> int:
    """ln(a/b) in WAD exactly as the prices compute it (OptionPricing.lnRatio), 0 < a, b."""
    return _ln_ratio(a, b)


def option_price_pair(
    is_call: bool,
    spot: int,
    spot_w: int,
    strike: int,
    tau: int,
    vol: int,
    vol_w: int,
    rate: int,
    ln_move: int,
) -> tuple[int, int]:
    """(model price at (spot, vol), model price at (spot_w, vol_w) with ln(spot_w/K) taken as
    ln_ratio(spot, K) + ln_move) of one option, and the first error of the two calls in that
    order: OptionPricing.pricePair (ln_move = ln_ratio(spot_w, spot), computed once per
    underlying by the caller), which shares r·τ, the discounted strike and ln(spot/K)."""
    v0 = option_model_price(is_call, spot, strike, tau, vol, rate)
    # The first price passed its checks: spot and strike are in range, so the ln is defined.
    ln_sk = _ln_ratio(spot, strike) + ln_move
    return v0, option_model_price(is_call, spot_w, strike, tau, vol_w, rate, ln_sk)


def option_price_black76(
    is_call: bool, forward: int, strike: int, tau: int, vol: int, rate: int
) -> int:
    """Black-76 price (WAD): D·(F·Φ(d1) − K·Φ(d2)) for a call on a forward F, D = e^(−rτ)."""
    _check_underlying(forward, strike, True)
    _check_tau_vol_rate(tau, vol, rate)
    disc = _discount(_rate_time(tau, rate))
    fd = forward * disc // WAD
    kd = strike * disc // WAD
    sst, half_var = _sigma_sqrt_tau_half_var(tau, vol)
    if sst == 0:
        return _intrinsic(is_call, fd, kd)
    return _core(is_call, fd, kd, _ln_ratio(forward, strike), sst, half_var)


def sigma_sqrt_tau(tau: int, vol: int) -> int:
    """σ√τ in WAD (floored), with the same tau/vol checks as the prices (rate not checked)."""
    _check_tau_vol_rate(tau, vol, 0)
    return _sigma_sqrt_tau_half_var(tau, vol)[0]


def discount_factor(tau: int, rate: int) -> int:
    """D = e^(−rτ) in WAD, as the prices use it."""
    _check_tau_vol_rate(tau, 0, rate)
    return _discount(_rate_time(tau, rate))


def d1_d2(spot: int, strike: int, tau: int, vol: int, rate: int) -> tuple[int, int]:
    """(d1, d2) in WAD exactly as option_price uses them; ZeroSigmaSqrtTau(tau, vol) when
    σ√τ floors to 0 (expired or zero vol: the distribution is degenerate)."""
    _check_underlying(spot, strike, False)
    _check_tau_vol_rate(tau, vol, rate)
    rt = _rate_time(tau, rate)
    sst, half_var = _sigma_sqrt_tau_half_var(tau, vol)
    if sst == 0:
        raise ZeroSigmaSqrtTau(tau, vol)
    d1 = sdiv((_ln_ratio(spot, strike) + rt + half_var) * WAD, sst)
    return d1, d1 - sst
