// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @notice An intermediate product or a quotient does not fit in int256.
error MulDivOverflow();
/// @notice A fixed-point division by zero (a named error rather than Panic(0x12)).
error DivisionByZero();
/// @notice exp(x) would not fit in int256: x > FixedPoint.EXP_MAX_WAD.
error ExpOverflow(int256 x);
/// @notice ln(x) with x <= 0.
error LnOfNonPositive(int256 x);
/// @notice sqrt(x) with x < 0.
error SqrtOfNegative(int256 x);
/// @notice sqrt(x) with x > FixedPoint.SQRT_MAX_WAD (x * 1e18 does not fit in int256).
error SqrtOverflow(int256 x);

/// @title Signed WAD fixed-point core
/// @notice Mirrored integer for integer by margin/fixed_point.py. `Down` rounds toward -infinity,
/// `Up` toward +infinity. expWad and lnWad are approximations with the error bounds documented
/// on each function (tested against mpmath); everything else is exact.
/// @dev Written in Yul for gas. Inside each documented domain no intermediate wraps modulo 2**256
/// (the bound is stated at each step), which is what lets the Python mirror use plain integers.
library FixedPoint {
    int256 internal constant WAD = 1e18;
    int256 internal constant EXP_MAX_WAD = 135_305_999_368_893_231_588;
    int256 internal constant EXP_MIN_WAD = -41_446_531_673_892_822_312;
    int256 internal constant SQRT_MAX_WAD = 57896044618658097711785492504343953926634992332820282019728; // type(int256).max / 1e18

    // Selectors of the errors above, for reverts from assembly.
    uint256 private constant MUL_DIV_OVERFLOW = 0x49248f77;
    uint256 private constant DIVISION_BY_ZERO = 0x23d359a3;
    uint256 private constant EXP_OVERFLOW = 0x6628f7ca;
    uint256 private constant LN_OF_NON_POSITIVE = 0x3559bd25;
    uint256 private constant SQRT_OF_NEGATIVE = 0x2f982d4f;
    uint256 private constant SQRT_OVERFLOW = 0x1280b343;

    uint256 private constant INT256_MIN = 1 << 255;

    /// @notice floor(a * b / 1e18). Reverts MulDivOverflow if a * b does not fit int256.
    function mulDown(int256 a, int256 b) internal pure returns (int256 z) {
        assembly ("memory-safe") {
            z := mul(a, b)
            // a*b fits iff a == 0, or (z / a == b and not (a == -1 and b == MIN)).
            if iszero(or(iszero(a), and(eq(sdiv(z, a), b), iszero(and(eq(a, not(0)), eq(b, INT256_MIN)))))) {
                mstore(0x00, MUL_DIV_OVERFLOW)
                revert(0x1c, 0x04)
            }
            // sdiv truncates toward zero; step down once when z is negative and inexact.
            z := sub(sdiv(z, 1000000000000000000), and(slt(z, 0), iszero(iszero(smod(z, 1000000000000000000)))))
        }
    }

    /// @notice ceil(a * b / 1e18). Reverts MulDivOverflow if a * b does not fit int256.
    function mulUp(int256 a, int256 b) internal pure returns (int256 z) {
        assembly ("memory-safe") {
            z := mul(a, b)
            if iszero(or(iszero(a), and(eq(sdiv(z, a), b), iszero(and(eq(a, not(0)), eq(b, INT256_MIN)))))) {
                mstore(0x00, MUL_DIV_OVERFLOW)
                revert(0x1c, 0x04)
            }
            z := add(sdiv(z, 1000000000000000000), and(sgt(z, 0), iszero(iszero(smod(z, 1000000000000000000)))))
        }
    }

    /// @notice floor(a * b / c). Reverts MulDivOverflow (a * b or the quotient leaves int256),
    /// then DivisionByZero, in that order.
    function mulDivDown(int256 a, int256 b, int256 c) internal pure returns (int256 z) {
        assembly ("memory-safe") {
            z := mul(a, b)
            if iszero(or(iszero(a), and(eq(sdiv(z, a), b), iszero(and(eq(a, not(0)), eq(b, INT256_MIN)))))) {
                mstore(0x00, MUL_DIV_OVERFLOW)
                revert(0x1c, 0x04)
            }
            if iszero(c) {
                mstore(0x00, DIVISION_BY_ZERO)
                revert(0x1c, 0x04)
            }
            // MIN / -1 = 2**255 is the only quotient that leaves int256.
            if and(eq(c, not(0)), eq(z, INT256_MIN)) {
                mstore(0x00, MUL_DIV_OVERFLOW)
                revert(0x1c, 0x04)
            }
            // Inexact with operands of opposite signs: truncation went up, step down.
            z := sub(sdiv(z, c), and(iszero(iszero(smod(z, c))), slt(xor(z, c), 0)))
        }
    }

    /// @notice ceil(a * b / c). Same errors, same order, as mulDivDown.
    function mulDivUp(int256 a, int256 b, int256 c) internal pure returns (int256 z) {
        assembly ("memory-safe") {
            z := mul(a, b)
            if iszero(or(iszero(a), and(eq(sdiv(z, a), b), iszero(and(eq(a, not(0)), eq(b, INT256_MIN)))))) {
                mstore(0x00, MUL_DIV_OVERFLOW)
                revert(0x1c, 0x04)
            }
            if iszero(c) {
                mstore(0x00, DIVISION_BY_ZERO)
                revert(0x1c, 0x04)
            }
            if and(eq(c, not(0)), eq(z, INT256_MIN)) {
                mstore(0x00, MUL_DIV_OVERFLOW)
                revert(0x1c, 0x04)
            }
            // Inexact with operands of the same sign: truncation went down, step up.
            z := add(sdiv(z, c), and(iszero(iszero(smod(z, c))), iszero(slt(xor(z, c), 0))))
        }
    }

    /// @notice floor(a * 1e18 / b). Reverts MulDivOverflow, then DivisionByZero.
    function divDown(int256 a, int256 b) internal pure returns (int256) {
        return mulDivDown(a, WAD, b);
    }

    /// @notice ceil(a * 1e18 / b). Reverts MulDivOverflow, then DivisionByZero.
    function divUp(int256 a, int256 b) internal pure returns (int256) {
        return mulDivUp(a, WAD, b);
    }

    /// @notice e^(x / 1e18) * 1e18.
    /// @dev Domain: x <= EXP_MAX_WAD, else ExpOverflow(x); returns 0 for x < EXP_MIN_WAD (the exact
    /// value is below one wei). x = k ln2 + r with |r| <= ln2/2 in Q96; e^r by the [6/6] Pade
    /// approximant (integer coefficients 665280, 332640, 75600, 10080, 840, 42, 1; relative error
    /// < 2e-19); the final shift floors. Measured error: <= 1e-18 relative above 1 WAD and
    /// <= 1.07 wei below.
    function expWad(int256 x) internal pure returns (int256 z) {
        assembly ("memory-safe") {
            if sgt(x, EXP_MAX_WAD) {
                mstore(0x00, EXP_OVERFLOW)
                mstore(0x20, x)
                revert(0x1c, 0x24)
            }
            if iszero(slt(x, EXP_MIN_WAD)) {
                // x in Q96, truncated toward zero: |x| < 2**68, so x * 2**78 < 2**146.
                let xq := sdiv(shl(78, x), 3814697265625) // 5**18; 1e18 = 2**18 * 5**18
                // k = round(x / ln2) in [-60, 195]; |xq * 2**96.53| < 2**200.
                let k := sar(192, add(mul(xq, 114302077158074026402637675937), shl(191, 1)))
                let r := sub(xq, mul(k, 54916777467707473351141471128)) // |r| <= 0.347 * 2**96
                let r2 := sar(96, mul(r, r))
                // Even and odd parts of the Pade numerator (scaled by 665280): E, O < 2**116.
                let e := add(r2, 66551656511982043578576918282240) // 840 * 2**96
                e := add(sar(96, mul(e, r2)), 5989649086078383922071922645401600) // 75600 * 2**96
                e := add(sar(96, mul(e, r2)), 52708911957489778514232919279534080) // 665280 * 2**96
                let o := add(mul(42, r2), 798619878143784522942923019386880) // 10080 * 2**96
                o := add(sar(96, mul(o, r2)), 26354455978744889257116459639767040) // 332640 * 2**96
                o := sar(96, mul(o, r))
                // e^r in Q96 (< 1.42 * 2**96); E - O > 0 and E + O > 0.
                let q := sdiv(shl(96, add(e, o)), sub(e, o))
                // q * 1e18 * 2**(k - 96) = (q * 1e18 * 2**99) >> (195 - k); product < 2**256.
                z := shr(sub(195, k), mul(q, 633825300114114700748351602688000000000000000000))
            }
        }
    }

    /// @notice ln(x / 1e18) * 1e18 for x > 0, else LnOfNonPositive(x).
    /// @dev x = m * 2**(k - 96) with m in [2**96, 2**97); c = round(sqrt2 * 2**96) centres the
    /// interval, s = (m - c) / (m + c), |s| <= 0.1716; ln(m / c) = 2 atanh(s) = s P(s^2) / Q(s^2),
    /// the [4/4] Pade approximant of 2 atanh(s) / s (absolute error < 4e-20, an underestimate of
    /// |ln(m / c)|, so the result does not step down at the powers of two). No branch. Floored
    /// from Q96; measured error <= 1.04 wei.
    function lnWad(int256 x) internal pure returns (int256 z) {
        assembly ("memory-safe") {
            if iszero(sgt(x, 0)) {
                mstore(0x00, LN_OF_NON_POSITIVE)
                mstore(0x20, x)
                revert(0x1c, 0x24)
            }
            // k = floor(log2 x): binary search down to a multiple of 8 (x >> k in [1, 255]), one
            // step of 3 (x >> k in [1, 31]), then floor(log2) of that from a byte table.
            let k := shl(7, lt(0xffffffffffffffffffffffffffffffff, x))
            k := or(k, shl(6, lt(0xffffffffffffffff, shr(k, x))))
            k := or(k, shl(5, lt(0xffffffff, shr(k, x))))
            k := or(k, shl(4, lt(0xffff, shr(k, x))))
            k := or(k, shl(3, lt(0xff, shr(k, x))))
            k := or(k, mul(3, lt(0x1f, shr(k, x))))
            k := add(k, byte(shr(k, x), 0x0000010102020202030303030303030304040404040404040404040404040404))
            // m = x * 2**(96 - k): the top bit to bit 255 (k <= 254), then down to bit 96.
            let m := shr(159, shl(xor(k, 255), x))
            let s := sdiv(shl(96, sub(m, 112045541949572279837463876455)), add(m, 112045541949572279837463876455))
            let t := sar(96, mul(s, s))
            // P (times 2) and Q divided by Q's leading coefficient 99225 (Q monic), in Q96.
            // Horner: accumulators < 2**103, products < 2**195.
            let p := sub(sar(96, mul(26164257286645641867122682435, t)), 1018935252870525208833432808902)
            p := add(sar(96, mul(p, t)), 5970533719884466177128718390717)
            p := sub(sar(96, mul(p, t)), 10910011415853141006399866938861)
            p := add(sar(96, mul(p, t)), 6114402002291320783806518833867)
            let qq := sub(t, 1162013050209210284705311271595)
            qq := add(sar(96, mul(qq, t)), 4531850895815920110350713959219)
            qq := sub(sar(96, mul(qq, t)), 6474072708308457300501019941742)
            qq := add(sar(96, mul(qq, t)), 3057201001145660391903259416934)
            // k ln2 + ln(m / c) + ln(c / 2**96) - ln 1e18, in Q96 (|v| < 2**104), to WAD by a
            // flooring shift. The constant is round((ln(c / 2**96) - ln 1e18) * 2**96) + 2**18:
            // the 2**18 (3.3e-24) covers the Pade's shortfall at x = 1e18 (1.4e5 units), so
            // lnWad(1e18) = 0 exactly.
            let v := sub(add(mul(k, 54916777467707473351141471128), sdiv(mul(s, p), qq)), 3256274158377931116946767897201)
            z := sar(96, mul(v, 1000000000000000000))
        }
    }

    /// @notice floor(sqrt(x / 1e18) * 1e18) = floor(sqrt(x * 1e18)).
    /// @dev SqrtOfNegative(x) for x < 0; SqrtOverflow(x) for x > SQRT_MAX_WAD.
    function sqrtDown(int256 x) internal pure returns (int256 z) {
        assembly ("memory-safe") {
            if slt(x, 0) {
                mstore(0x00, SQRT_OF_NEGATIVE)
                mstore(0x20, x)
                revert(0x1c, 0x24)
            }
            if sgt(x, SQRT_MAX_WAD) {
                mstore(0x00, SQRT_OVERFLOW)
                mstore(0x20, x)
                revert(0x1c, 0x24)
            }
        }
        // 0 <= x <= SQRT_MAX_WAD: x * 1e18 < 2^255 (no wrap) and its root fits int256; the
        // casts are exact.
        unchecked {
            // forge-lint: disable-next-line(unsafe-typecast)
            z = int256(isqrtFloor(uint256(x) * 1e18));
        }
    }

    /// @notice ceil(sqrt(x / 1e18) * 1e18). Same domain and errors as sqrtDown.
    function sqrtUp(int256 x) internal pure returns (int256 z) {
        z = sqrtDown(x);
        assembly ("memory-safe") {
            z := add(z, lt(mul(z, z), mul(x, 1000000000000000000)))
        }
    }

    /// @notice floor(sqrt(n)) for every uint256 n (Python: math.isqrt). The integer square root
    /// of sqrtDown and of OptionPricing's sigma * sqrt(tau).
    /// @dev Newton's method from y0 = 2^floor((b + 2) / 2) >= sqrt(n), b = floor(log2 n), so
    /// y0 / sqrt(n) is in [1, 2]. With e = y / sqrt(n) - 1, one step gives e' = e^2 / (2(1 + e)):
    /// e <= 1, 0.25, 0.025, 3.1e-4, 4.6e-8, 1.1e-15, 6e-31, 2e-61 after 0..7 steps; sqrt(n) <
    /// 2^128, so after 7 steps y is floor(sqrt(n)) or floor + 1 (integer Newton from above never
    /// drops below the floor), and the last line removes the + 1. n = 0 gives 0 (EVM div by 0
    /// is 0).
    function isqrtFloor(uint256 n) internal pure returns (uint256 y) {
        assembly ("memory-safe") {
            // b = floor(log2 n), as lnWad finds it (kept inline in both: a call costs more gas
            // than these lines).
            let b := shl(7, lt(0xffffffffffffffffffffffffffffffff, n))
            b := or(b, shl(6, lt(0xffffffffffffffff, shr(b, n))))
            b := or(b, shl(5, lt(0xffffffff, shr(b, n))))
            b := or(b, shl(4, lt(0xffff, shr(b, n))))
            b := or(b, shl(3, lt(0xff, shr(b, n))))
            b := or(b, mul(3, lt(0x1f, shr(b, n))))
            b := add(b, byte(shr(b, n), 0x0000010102020202030303030303030304040404040404040404040404040404))
            y := shl(shr(1, add(b, 2)), 1)
            y := shr(1, add(y, div(n, y)))
            y := shr(1, add(y, div(n, y)))
            y := shr(1, add(y, div(n, y)))
            y := shr(1, add(y, div(n, y)))
            y := shr(1, add(y, div(n, y)))
            y := shr(1, add(y, div(n, y)))
            y := shr(1, add(y, div(n, y)))
            y := sub(y, lt(div(n, y), y))
        }
    }
}
