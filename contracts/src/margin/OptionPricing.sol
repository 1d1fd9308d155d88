// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {FixedPoint} from "../math/FixedPoint.sol";
import {NormalDist} from "../math/NormalDist.sol";

/// @notice Spot outside [OptionPricing.MIN_PRICE, OptionPricing.MAX_PRICE].
error SpotOutOfRange(int256 spot);
/// @notice Black-76 forward outside [OptionPricing.MIN_PRICE, OptionPricing.MAX_PRICE].
error ForwardOutOfRange(int256 forward);
/// @notice Strike outside [OptionPricing.MIN_PRICE, OptionPricing.MAX_PRICE].
error StrikeOutOfRange(int256 strike);
/// @notice strike > OptionPricing.MAX_STRIKE_RATIO * underlying (spot or forward).
error MoneynessOutOfRange(int256 underlying, int256 strike);
/// @notice Time to expiry (seconds) above OptionPricing.MAX_TAU.
error TauOutOfRange(uint256 tau);
/// @notice Volatility outside [0, OptionPricing.MAX_VOL].
error VolOutOfRange(int256 vol);
/// @notice |rate| above OptionPricing.MAX_RATE.
error RateOutOfRange(int256 rate);
/// @notice d1/d2 asked for while sigma * sqrt(tau) floors to 0 (expired or zero vol).
error ZeroSigmaSqrtTau(uint256 tau, int256 vol);

/// @title Black-Scholes / Black-76 prices of European calls and puts, in WAD
/// @notice Mirrored integer for integer by margin/option_pricing.py (same operations, same order, same
/// rounding, same errors in the same order of checks).
/// Units: spot, forward, strike, vol (annualised, 1e18 = 100%) and rate (annual, continuous) are
/// signed WADs; tau = seconds to expiry (the caller passes expiry - block.timestamp, 0 once
/// expired); a year is 365 days.
/// Domain (named errors, checked in this order): spot (forward) and strike in
/// [MIN_PRICE, MAX_PRICE] = [1e-8, 1e12]; strike <= MAX_STRIKE_RATIO (1e7) * spot (forward);
/// tau <= MAX_TAU (5 years); vol in [0, MAX_VOL] (0..1000%); |rate| <= MAX_RATE (50%).
/// Accuracy against mpmath: within 1e-9 * spot (forward) over that whole domain; largest error
/// found 1.6e-10 * spot (tests/test_pricing_accuracy.py).
/// The margin model prices with modelPrice (and pricePair): price's integers inside that domain,
/// the discounted intrinsic value where the spot alone leaves it (0 < spot < MIN_PRICE, or
/// strike > MAX_STRIKE_RATIO * spot), so a crash cannot make a margin check revert.
/// Gas of one price as an internal call (contracts/snapshots/OptionPricingGas.json): ~4,000 ATM
/// (one exp, one ln, one isqrt, two cdf), ~3,550 with rate 0 (no exp), ~2,800 far from the money
/// (cdf cut-offs), ~1,200-1,600 expired or zero vol.
/// @dev Method, both sides computed directly (no put-call parity):
///   rt = r*tau (truncated), D = e^-rt (exactly 1e18 when rt == 0), KD = K*D (floored),
///   s = sigma*sqrt(tau) = isqrt(sigma^2*tau) (floored), h = sigma^2*tau/2 (floored),
///   m = ln(F/K) = ln(S/K) + rt, d1 = (m + h)/s (truncated), d2 = d1 - s (exact),
///   call = S*Phi(d1) - KD*Phi(d2), put = KD*Phi(-d2) - S*Phi(-d1), each product floored.
/// Sharing d1's truncation with d2 makes the price insensitive to it to first order
/// (S*phi(d1) = KD*phi(d2)). Rounding is not directed: the model wants accurate marks.
/// s == 0 (tau == 0, vol == 0 or sigma^2*tau < 1e-36): discounted intrinsic value
/// max(F - K, 0) * D = max(S - KD, 0) (call), max(KD - S, 0) (put); exactly max(S - K, 0) at
/// tau == 0. Prices are clamped at 0 (a negative integer can only be rounding: the exact price is
/// positive); a call never exceeds S (Phi <= 1e18 and the subtracted term is >= 0), a put never
/// exceeds KD. Why the caps on K/S and |r|: Phi has 1e-18 resolution, so KD*Phi carries ~KD*1e-18
/// of error; KD/S <= 1e7 * e^2.5 keeps that near 1e-10 * S.
library OptionPricing {
    int256 internal constant WAD = 1e18;
    /// @notice Seconds in a year (365 days).
    int256 internal constant YEAR = 31_536_000;
    int256 internal constant MIN_PRICE = 1e10;
    int256 internal constant MAX_PRICE = 1e30;
    int256 internal constant MAX_STRIKE_RATIO = 1e7;
    uint256 internal constant MAX_TAU = 5 * 31_536_000;
    int256 internal constant MAX_VOL = 10e18;
    int256 internal constant MAX_RATE = 0.5e18;

    /// @notice Black-Scholes price (WAD) of a European call (isCall) or put on a spot.
    function price(bool isCall, int256 spot, int256 strike, uint256 tau, int256 vol, int256 rate)
        internal
        pure
        returns (int256)
    {
        _checkUnderlying(spot, strike, false);
        _checkTauVolRate(tau, vol, rate);
        unchecked {
            int256 rt = _rateTime(tau, rate);
            // strike <= 1e30, D <= e^2.5: the product < 1.3e49.
            int256 kd = (strike * _discount(rt)) / WAD;
            (int256 sst, int256 halfVar) = _sigmaSqrtTauHalfVar(tau, vol);
            if (sst == 0) return _intrinsic(isCall, spot, kd);
            return _core(isCall, spot, kd, _lnRatio(spot, strike) + rt, sst, halfVar);
        }
    }

    /// @notice The margin model's price: `price` inside its domain, and a defined value (never a
    /// revert) when the underlying alone leaves the accuracy domain, which a crash can do to any
    /// book: for 0 < spot < MIN_PRICE or strike > MAX_STRIKE_RATIO * spot, the discounted
    /// intrinsic value max(S - KD, 0) (call), max(KD - S, 0) (put), the zero-vol limit the
    /// degenerate case already uses. Any arbitrage-free price lies within S of it (a call in
    /// [0, S], a put in [KD - S, KD]), and there S < 1e-8 (absolute, in WAD units 1e10) or
    /// S < K * 1e-7. Errors, in this order: SpotOutOfRange (spot <= 0 or > MAX_PRICE),
    /// StrikeOutOfRange, then tau, vol and rate as in price. (margin/option_pricing.py:
    /// option_model_price.)
    function modelPrice(bool isCall, int256 spot, int256 strike, uint256 tau, int256 vol, int256 rate)
        internal
        pure
        returns (int256)
    {
        _checkModelUnderlying(spot, strike);
        _checkTauVolRate(tau, vol, rate);
        unchecked {
            int256 rt = _rateTime(tau, rate);
            int256 kd = (strike * _discount(rt)) / WAD; // < 1.3e49 before the division
            (int256 sst, int256 halfVar) = _sigmaSqrtTauHalfVar(tau, vol);
            // the accuracy domain's test inline (no call frame per scenario price of a full check)
            if (sst == 0 || spot < MIN_PRICE || strike > spot * MAX_STRIKE_RATIO) return _intrinsic(isCall, spot, kd);
            return _core(isCall, spot, kd, _lnRatio(spot, strike) + rt, sst, halfVar);
        }
    }

    /// @notice modelPrice with ln(spot / strike) supplied as lnSK, which replaces the price's own
    /// lnRatio(spot, strike) (used only inside the accuracy domain; checks, errors and the
    /// intrinsic branch unchanged). The margin model prices a scenario spot S' of a market spot S
    /// with lnSK = lnRatio(S, K) + lnRatio(S', S): one ln per option and one per scenario of an
    /// underlying, instead of one per option and scenario. (margin/option_pricing.py:
    /// option_model_price with ln_sk.)
    function modelPriceLn(
        bool isCall,
        int256 spot,
        int256 strike,
        uint256 tau,
        int256 vol,
        int256 rate,
        int256 lnSK
    ) internal pure returns (int256) {
        _checkModelUnderlying(spot, strike);
        _checkTauVolRate(tau, vol, rate);
        unchecked {
            int256 rt = _rateTime(tau, rate);
            int256 kd = (strike * _discount(rt)) / WAD; // < 1.3e49 before the division
            (int256 sst, int256 halfVar) = _sigmaSqrtTauHalfVar(tau, vol);
            if (sst == 0 || spot < MIN_PRICE || strike > spot * MAX_STRIKE_RATIO) return _intrinsic(isCall, spot, kd);
            // |lnSK| < 2 * ln(1.1e31 / 1e8) < 110e18 (the model's spots and strikes): m + h < 400e18.
            return _core(isCall, spot, kd, lnSK + rt, sst, halfVar);
        }
    }

    /// @notice ln(a / b) in WAD exactly as the prices compute it, for 0 < a, b <= 1.1e31 (the
    /// quotient max/min >= 1e18 is floored, then lnWad): never reverts there.
    function lnRatio(int256 a, int256 b) internal pure returns (int256) {
        return _lnRatio(a, b);
    }

    /// @notice (modelPrice(isCall, spot, strike, tau, vol, rate), modelPriceLn(isCall, spotW,
    /// strike, tau, volW, rate, lnRatio(spot, strike) + lnMove)): the same two integers and, on
    /// failure, the same first error as the two calls in that order, for less gas. lnMove is
    /// lnRatio(spotW, spot), computed once per underlying by the caller. The second price shares the checks of strike, tau and rate,
    /// r*tau and the discounted strike (one exp instead of two). The first
    /// price cannot fail once its checks pass, so checking spotW and volW after computing it or
    /// before gives the same first error. (margin/option_pricing.py: option_price_pair.)
    function pricePair(
        bool isCall,
        int256 spot,
        int256 spotW,
        int256 strike,
        uint256 tau,
        int256 vol,
        int256 volW,
        int256 rate,
        int256 lnMove
    ) internal pure returns (int256 v0, int256 vw) {
        int256[6] memory terms;
        uint256 t;
        assembly ("memory-safe") {
            t := terms
        }
        pairTerms(spot, spotW, strike, tau, vol, volW, rate, t);
        return pricePairFrom(isCall, spot, spotW, strike, lnMove, t);
    }

    /// @notice pricePair's first step: its checks, in its order (the same first error), then
    /// the terms that depend on (tau, vol, volW, rate) only, into the 6 words of memory at t:
    /// r*tau, the discount factor D, sigma*sqrt(tau) and sigma^2*tau/2 at vol, the same two at
    /// volW (a memory address, not an array: the caller keeps them where it likes). A witness check
    /// computes them once per (underlying, expiry) and prices every option there with
    /// pricePairFrom. One assembly test decides; only a failing input takes the ordered checks.
    function pairTerms(
        int256 spot,
        int256 spotW,
        int256 strike,
        uint256 tau,
        int256 vol,
        int256 volW,
        int256 rate,
        uint256 t
    ) internal pure {
        // (Constants that are expressions: assembly reads them from the stack.)
        uint256 maxTau = MAX_TAU;
        int256 maxRate = MAX_RATE;
        bool ok;
        assembly ("memory-safe") {
            // 0 < spot, spotW <= MAX_PRICE; MIN_PRICE <= strike <= MAX_PRICE; tau <= MAX_TAU;
            // 0 <= vol, volW <= MAX_VOL; |rate| <= MAX_RATE (a value below a bound wraps high)
            ok := and(lt(sub(spot, 1), MAX_PRICE), lt(sub(spotW, 1), MAX_PRICE))
            ok := and(ok, lt(sub(strike, MIN_PRICE), add(sub(MAX_PRICE, MIN_PRICE), 1)))
            ok := and(ok, iszero(gt(tau, maxTau)))
            ok := and(ok, and(iszero(gt(vol, MAX_VOL)), iszero(gt(volW, MAX_VOL))))
            ok := and(ok, iszero(gt(add(rate, maxRate), mul(2, maxRate))))
        }
        if (!ok) {
            _checkModelUnderlying(spot, strike);
            _checkTauVolRate(tau, vol, rate);
            // The second price's checks, in its order; those of strike, tau and rate passed above.
            _checkModelUnderlying(spotW, strike);
            if (volW < 0 || volW > MAX_VOL) revert VolOutOfRange(volW);
        }
        int256 rt = _rateTime(tau, rate);
        int256 d = _discount(rt);
        (int256 sst, int256 halfVar) = _sigmaSqrtTauHalfVar(tau, vol);
        assembly ("memory-safe") {
            mstore(t, rt)
            mstore(add(t, 0x20), d)
            mstore(add(t, 0x40), sst)
            mstore(add(t, 0x60), halfVar)
        }
        if (volW != vol) (sst, halfVar) = _sigmaSqrtTauHalfVar(tau, volW);
        assembly ("memory-safe") {
            mstore(add(t, 0x80), sst)
            mstore(add(t, 0xa0), halfVar)
        }
    }

    /// @notice pricePair's second step, from the terms pairTerms computed for the same tau, vol,
    /// volW and rate (and checked spot and spotW): the strike's check, then the two prices.
    function pricePairFrom(bool isCall, int256 spot, int256 spotW, int256 strike, int256 lnMove, uint256 t)
        internal
        pure
        returns (int256 v0, int256 vw)
    {
        if (strike < MIN_PRICE || strike > MAX_PRICE) revert StrikeOutOfRange(strike);
        int256 m = _lnRatio(spot, strike);
        int256 kd;
        int256 sst;
        int256 halfVar;
        assembly ("memory-safe") {
            m := add(m, mload(t)) // m = ln(F/K) = ln(S/K) + rt: |m| < 49e18
            kd := sdiv(mul(strike, mload(add(t, 0x20))), WAD) // K * D < 1.3e49, both > 0
            sst := mload(add(t, 0x40))
            halfVar := mload(add(t, 0x60))
        }
        // modelPriceLn's computation after its checks, for both prices: the intrinsic value
        // outside the accuracy domain (s = 0, a spot below MIN_PRICE, or strike above
        // MAX_STRIKE_RATIO * spot; spot, spotW <= 1.1e31, so the products < 1.1e38), else _core.
        bool intrinsic;
        assembly ("memory-safe") {
            intrinsic := or(iszero(sst), or(slt(spot, MIN_PRICE), sgt(strike, mul(spot, MAX_STRIKE_RATIO))))
        }
        v0 = intrinsic ? _intrinsic(isCall, spot, kd) : _core(isCall, spot, kd, m, sst, halfVar);
        assembly ("memory-safe") {
            m := add(m, lnMove)
            sst := mload(add(t, 0x80))
            halfVar := mload(add(t, 0xa0))
            intrinsic := or(iszero(sst), or(slt(spotW, MIN_PRICE), sgt(strike, mul(spotW, MAX_STRIKE_RATIO))))
        }
        vw = intrinsic ? _intrinsic(isCall, spotW, kd) : _core(isCall, spotW, kd, m, sst, halfVar);
    }

    /// @notice Black-76 price (WAD): D * (F * Phi(d1) - K * Phi(d2)) (call) on a forward F,
    /// D = e^(-rate * tau).
    function priceBlack76(bool isCall, int256 forward, int256 strike, uint256 tau, int256 vol, int256 rate)
        internal
        pure
        returns (int256)
    {
        _checkUnderlying(forward, strike, true);
        _checkTauVolRate(tau, vol, rate);
        unchecked {
            int256 disc = _discount(_rateTime(tau, rate));
            int256 fd = (forward * disc) / WAD; // < 1.3e49 before the division
            int256 kd = (strike * disc) / WAD;
            (int256 sst, int256 halfVar) = _sigmaSqrtTauHalfVar(tau, vol);
            if (sst == 0) return _intrinsic(isCall, fd, kd);
            return _core(isCall, fd, kd, _lnRatio(forward, strike), sst, halfVar);
        }
    }

    /// @notice sigma * sqrt(tau) in WAD (floored); tau and vol checked as in price.
    function sigmaSqrtTau(uint256 tau, int256 vol) internal pure returns (int256 sst) {
        _checkTauVolRate(tau, vol, 0);
        (sst,) = _sigmaSqrtTauHalfVar(tau, vol);
    }

    /// @notice D = e^(-rate * tau) in WAD, as the prices use it; tau and rate checked.
    function discountFactor(uint256 tau, int256 rate) internal pure returns (int256) {
        _checkTauVolRate(tau, 0, rate);
        return _discount(_rateTime(tau, rate));
    }

    /// @notice (d1, d2) in WAD exactly as price uses them; ZeroSigmaSqrtTau when sigma * sqrt(tau)
    /// floors to 0.
    function d1d2(int256 spot, int256 strike, uint256 tau, int256 vol, int256 rate)
        internal
        pure
        returns (int256 d1, int256 d2)
    {
        _checkUnderlying(spot, strike, false);
        _checkTauVolRate(tau, vol, rate);
        unchecked {
            int256 rt = _rateTime(tau, rate);
            (int256 sst, int256 halfVar) = _sigmaSqrtTauHalfVar(tau, vol);
            if (sst == 0) revert ZeroSigmaSqrtTau(tau, vol);
            // |ln ratio + rt + h| < 300e18: the product < 3e38.
            d1 = ((_lnRatio(spot, strike) + rt + halfVar) * WAD) / sst;
            d2 = d1 - sst;
        }
    }

    // ---- internals -------------------------------------------------------------------------

    function _checkUnderlying(int256 underlying, int256 strike, bool isForward) private pure {
        if (underlying < MIN_PRICE || underlying > MAX_PRICE) {
            if (isForward) revert ForwardOutOfRange(underlying);
            revert SpotOutOfRange(underlying);
        }
        if (strike < MIN_PRICE || strike > MAX_PRICE) revert StrikeOutOfRange(strike);
        // underlying <= 1e30: the product < 1e37.
        unchecked {
            if (strike > underlying * MAX_STRIKE_RATIO) revert MoneynessOutOfRange(underlying, strike);
        }
    }

    /// @dev modelPrice's domain: 0 < spot <= MAX_PRICE, strike in [MIN_PRICE, MAX_PRICE].
    function _checkModelUnderlying(int256 spot, int256 strike) private pure {
        if (spot <= 0 || spot > MAX_PRICE) revert SpotOutOfRange(spot);
        if (strike < MIN_PRICE || strike > MAX_PRICE) revert StrikeOutOfRange(strike);
    }

    function _checkTauVolRate(uint256 tau, int256 vol, int256 rate) private pure {
        if (tau > MAX_TAU) revert TauOutOfRange(tau);
        if (vol < 0 || vol > MAX_VOL) revert VolOutOfRange(vol);
        if (rate < -MAX_RATE || rate > MAX_RATE) revert RateOutOfRange(rate);
    }

    /// @dev r * tau in WAD, truncated toward zero (sdiv): |rate * tau| <= 0.5e18 * 1.6e8.
    function _rateTime(uint256 tau, int256 rate) private pure returns (int256) {
        unchecked {
            // casting to 'int256' is safe because tau <= MAX_TAU was checked
            // forge-lint: disable-next-line(unsafe-typecast)
            return (rate * int256(tau)) / YEAR;
        }
    }

    /// @dev e^-rt in WAD; exactly 1e18 without an exp call when rt == 0. |rt| <= 2.5e18.
    function _discount(int256 rt) private pure returns (int256) {
        return rt == 0 ? WAD : FixedPoint.expWad(-rt);
    }

    /// @dev (sigma*sqrt(tau), sigma^2*tau/2) in WAD, both floored (all terms >= 0).
    /// var36 = sigma^2*tau at 1e36 scale: vol^2 <= 1e38, * tau <= 1.6e46 < 2^154.
    function _sigmaSqrtTauHalfVar(uint256 tau, int256 vol) private pure returns (int256 sst, int256 halfVar) {
        unchecked {
            // casting to 'int256' is safe because tau <= MAX_TAU was checked
            // forge-lint: disable-next-line(unsafe-typecast)
            int256 var36 = (vol * vol * int256(tau)) / YEAR;
            // var36 >= 0 (both factors are) and < 2^154: the casts are exact.
            // forge-lint: disable-next-line(unsafe-typecast)
            sst = int256(FixedPoint.isqrtFloor(uint256(var36)));
            halfVar = var36 / (2 * WAD);
        }
    }

    /// @dev ln(a / b) in WAD for a, b in [MIN_PRICE, MAX_PRICE]: the quotient is max/min >= 1e18
    /// so its flooring costs < 1e-18 relative; a * 1e18 <= 1e48.
    function _lnRatio(int256 a, int256 b) private pure returns (int256) {
        unchecked {
            if (a >= b) return FixedPoint.lnWad((a * WAD) / b);
            return -FixedPoint.lnWad((b * WAD) / a);
        }
    }

    function _intrinsic(bool isCall, int256 sd, int256 kd) private pure returns (int256 v) {
        unchecked {
            v = isCall ? sd - kd : kd - sd; // both < 1.3e31
        }
        if (v < 0) v = 0;
    }

    /// @dev Bounds: |m| <= ln(1e20) + 2.5 < 49e18 and h <= 250e18, so (m + h) * 1e18 < 3e38;
    /// sd, kd < 1.3e31 and Phi in [0, 1e18], so each product < 1.3e49 (all >= 0: / floors).
    /// sst > 0 here. |d1| < 3e38 so -d1, -d2 exist.
    function _core(bool isCall, int256 sd, int256 kd, int256 m, int256 sst, int256 halfVar)
        private
        pure
        returns (int256 v)
    {
        unchecked {
            int256 d1 = ((m + halfVar) * WAD) / sst;
            int256 d2 = d1 - sst;
            if (isCall) {
                v = (sd * NormalDist.cdf(d1)) / WAD - (kd * NormalDist.cdf(d2)) / WAD;
            } else {
                v = (kd * NormalDist.cdf(-d2)) / WAD - (sd * NormalDist.cdf(-d1)) / WAD;
            }
        }
        // The exact price is > 0; a negative integer is rounding only.
        if (v < 0) v = 0;
    }
}
