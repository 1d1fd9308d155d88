// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {TestBase} from "./utils/TestBase.sol";
import {
    FixedPoint,
    MulDivOverflow,
    DivisionByZero,
    ExpOverflow,
    LnOfNonPositive,
    SqrtOfNegative,
    SqrtOverflow
} from "../src/math/FixedPoint.sol";

/// @dev External entry points so reverts can be expected (library functions are inlined).
contract FixedPointCaller {
    function mulDown(int256 a, int256 b) external pure returns (int256) { return FixedPoint.mulDown(a, b); }
    function mulDivDown(int256 a, int256 b, int256 c) external pure returns (int256) { return FixedPoint.mulDivDown(a, b, c); }
    function mulDivUp(int256 a, int256 b, int256 c) external pure returns (int256) { return FixedPoint.mulDivUp(a, b, c); }
    function divDown(int256 a, int256 b) external pure returns (int256) { return FixedPoint.divDown(a, b); }
    function expWad(int256 x) external pure returns (int256) { return FixedPoint.expWad(x); }
    function lnWad(int256 x) external pure returns (int256) { return FixedPoint.lnWad(x); }
    function sqrtDown(int256 x) external pure returns (int256) { return FixedPoint.sqrtDown(x); }
    function sqrtUp(int256 x) external pure returns (int256) { return FixedPoint.sqrtUp(x); }
}

contract FixedPointTest is TestBase {
    int256 internal constant WAD = 1e18;
    int256 internal constant MIN = type(int256).min;
    int256 internal constant MAX = type(int256).max;
    FixedPointCaller internal c = new FixedPointCaller();

    // ---- exact values and rounding directions --------------------------------------------

    function test_mulDiv_roundingDirections() public pure {
        assertEq(FixedPoint.mulDown(7, 1), 0, "7 wei * 1 wei floors to 0");
        assertEq(FixedPoint.mulUp(7, 1), 1, "7 wei * 1 wei ceils to 1");
        assertEq(FixedPoint.mulDown(-7, 1), -1, "negative product floors toward -inf");
        assertEq(FixedPoint.mulUp(-7, 1), 0, "negative product ceils toward +inf");
        assertEq(FixedPoint.divDown(-1, 3), -333333333333333334, "-1/3 floors");
        assertEq(FixedPoint.divUp(-1, 3), -333333333333333333, "-1/3 ceils");
        assertEq(FixedPoint.mulDivDown(-7, 1, -2), 3, "same signs floor");
        assertEq(FixedPoint.mulDivUp(-7, 1, -2), 4, "same signs ceil");
        assertEq(FixedPoint.mulDivDown(MIN, 1, 1), MIN, "MIN passes through");
        assertEq(FixedPoint.mulDown(3 * WAD, 2 * WAD), 6 * WAD, "exact product");
    }

    function test_exp_ln_sqrt_knownValues() public pure {
        assertEq(FixedPoint.expWad(0), WAD, "e^0");
        assertEq(FixedPoint.lnWad(WAD), 0, "ln 1");
        assertEq(FixedPoint.expWad(WAD), 2718281828459045235, "e (floor of 2.718281828459045235360)");
        assertEq(FixedPoint.lnWad(2718281828459045235), 999999999999999999, "ln(e - 0.36 wei)");
        assertEq(FixedPoint.expWad(FixedPoint.EXP_MIN_WAD - 1), 0, "below the cut-off: 0");
        assertEq(FixedPoint.sqrtDown(2 * WAD), 1414213562373095048, "sqrt 2 floor");
        assertEq(FixedPoint.sqrtUp(2 * WAD), 1414213562373095049, "sqrt 2 ceil");
        assertEq(FixedPoint.sqrtUp(4 * WAD), 2 * WAD, "exact root is not bumped");
        assertTrue(FixedPoint.expWad(FixedPoint.EXP_MAX_WAD) > 0, "max input stays positive");
    }

    // ---- named errors ---------------------------------------------------------------------

    function test_errors() public {
        vm.expectRevert(abi.encodeWithSelector(MulDivOverflow.selector));
        c.mulDown(MAX, 2);
        vm.expectRevert(abi.encodeWithSelector(MulDivOverflow.selector));
        c.mulDown(-1, MIN);
        vm.expectRevert(abi.encodeWithSelector(MulDivOverflow.selector));
        c.mulDivDown(MIN, 1, -1);
        vm.expectRevert(abi.encodeWithSelector(DivisionByZero.selector));
        c.divDown(1, 0);
        vm.expectRevert(abi.encodeWithSelector(MulDivOverflow.selector));
        c.mulDivUp(MAX, MAX, 0); // overflow is checked before the divisor
        vm.expectRevert(abi.encodeWithSelector(ExpOverflow.selector, FixedPoint.EXP_MAX_WAD + 1));
        c.expWad(FixedPoint.EXP_MAX_WAD + 1);
        vm.expectRevert(abi.encodeWithSelector(LnOfNonPositive.selector, int256(0)));
        c.lnWad(0);
        vm.expectRevert(abi.encodeWithSelector(LnOfNonPositive.selector, MIN));
        c.lnWad(MIN);
        vm.expectRevert(abi.encodeWithSelector(SqrtOfNegative.selector, int256(-1)));
        c.sqrtDown(-1);
        vm.expectRevert(abi.encodeWithSelector(SqrtOverflow.selector, FixedPoint.SQRT_MAX_WAD + 1));
        c.sqrtUp(FixedPoint.SQRT_MAX_WAD + 1);
    }

    // ---- fuzz: monotonicity over adjacent and random pairs, rounding brackets -------------

    function testFuzz_exp_monotone_adjacent(int256 x) public pure {
        x = bound(x, FixedPoint.EXP_MIN_WAD - 2, FixedPoint.EXP_MAX_WAD - 1);
        assertLe(FixedPoint.expWad(x), FixedPoint.expWad(x + 1), "exp non-decreasing");
    }

    function testFuzz_exp_monotone_pairs(int256 x, int256 y) public pure {
        x = bound(x, FixedPoint.EXP_MIN_WAD - 2, FixedPoint.EXP_MAX_WAD);
        y = bound(y, FixedPoint.EXP_MIN_WAD - 2, FixedPoint.EXP_MAX_WAD);
        if (x > y) (x, y) = (y, x);
        assertLe(FixedPoint.expWad(x), FixedPoint.expWad(y), "exp non-decreasing");
    }

    function testFuzz_ln_monotone_adjacent(int256 x) public pure {
        x = bound(x, 1, MAX - 1);
        assertLe(FixedPoint.lnWad(x), FixedPoint.lnWad(x + 1), "ln non-decreasing");
    }

    function testFuzz_ln_monotone_pairs(int256 x, int256 y) public pure {
        x = bound(x, 1, MAX);
        y = bound(y, 1, MAX);
        if (x > y) (x, y) = (y, x);
        assertLe(FixedPoint.lnWad(x), FixedPoint.lnWad(y), "ln non-decreasing");
    }

    function testFuzz_sqrt_monotone_and_brackets(int256 x) public pure {
        x = bound(x, 0, FixedPoint.SQRT_MAX_WAD - 1);
        int256 lo = FixedPoint.sqrtDown(x);
        int256 hi = FixedPoint.sqrtUp(x);
        assertLe(lo, FixedPoint.sqrtDown(x + 1), "sqrtDown non-decreasing");
        assertLe(hi, FixedPoint.sqrtUp(x + 1), "sqrtUp non-decreasing");
        // floor: lo^2 <= x*1e18 < (lo+1)^2; ceil is floor or floor + 1.
        uint256 n = uint256(x) * 1e18;
        assertTrue(uint256(lo) * uint256(lo) <= n && (uint256(lo) + 1) * (uint256(lo) + 1) > n, "floor root");
        assertTrue(hi == lo || hi == lo + 1, "ceil brackets floor");
    }

    function testFuzz_mul_brackets(int256 a, int256 b) public pure {
        a = bound(a, -1e38, 1e38);
        b = bound(b, -1e38, 1e38);
        int256 lo = FixedPoint.mulDown(a, b);
        int256 hi = FixedPoint.mulUp(a, b);
        assertTrue(hi == lo || hi == lo + 1, "mulUp - mulDown in {0, 1}");
        assertTrue((hi == lo) == ((a * b) % WAD == 0), "exact iff no remainder");
    }

    function testFuzz_mul_monotone_in_a(int256 a, int256 b) public pure {
        a = bound(a, -1e38, 1e38 - 1);
        b = bound(b, 0, 1e38);
        assertLe(FixedPoint.mulDown(a, b), FixedPoint.mulDown(a + 1, b), "mulDown non-decreasing in a for b >= 0");
        assertLe(FixedPoint.mulUp(a, b), FixedPoint.mulUp(a + 1, b), "mulUp non-decreasing in a for b >= 0");
    }

    function testFuzz_div_brackets(int256 a, int256 b) public pure {
        a = bound(a, -1e50, 1e50);
        b = bound(b, -1e50, 1e50);
        vm.assume(b != 0);
        int256 lo = FixedPoint.divDown(a, b);
        int256 hi = FixedPoint.divUp(a, b);
        assertTrue(hi == lo || hi == lo + 1, "divUp - divDown in {0, 1}");
    }

    function testFuzz_exp_ln_roundtrip(int256 x) public pure {
        // ln(exp(x)) returns x within a few wei where exp keeps 18+ significant digits.
        x = bound(x, 0, 130e18);
        int256 back = FixedPoint.lnWad(FixedPoint.expWad(x));
        int256 d = back - x;
        assertTrue(d >= -3 && d <= 3, "ln(exp(x)) within 3 wei");
    }
}

/// @dev One external wrapper per primitive, plus an identity of the same shape as the baseline.
contract FixedPointGasProbe {
    function id1(int256 x) external pure returns (int256) { return x; }
    function id2(int256 a, int256 b) external pure returns (int256) { return a ^ b; }
    function id3(int256 a, int256 b, int256 c) external pure returns (int256) { return a ^ b ^ c; }
    function mulDown(int256 a, int256 b) external pure returns (int256) { return FixedPoint.mulDown(a, b); }
    function mulUp(int256 a, int256 b) external pure returns (int256) { return FixedPoint.mulUp(a, b); }
    function divDown(int256 a, int256 b) external pure returns (int256) { return FixedPoint.divDown(a, b); }
    function divUp(int256 a, int256 b) external pure returns (int256) { return FixedPoint.divUp(a, b); }
    function mulDivDown(int256 a, int256 b, int256 c) external pure returns (int256) { return FixedPoint.mulDivDown(a, b, c); }
    function mulDivUp(int256 a, int256 b, int256 c) external pure returns (int256) { return FixedPoint.mulDivUp(a, b, c); }
    function expWad(int256 x) external pure returns (int256) { return FixedPoint.expWad(x); }
    function lnWad(int256 x) external pure returns (int256) { return FixedPoint.lnWad(x); }
    function sqrtDown(int256 x) external pure returns (int256) { return FixedPoint.sqrtDown(x); }
    function sqrtUp(int256 x) external pure returns (int256) { return FixedPoint.sqrtUp(x); }
}

/// @notice Gas of each primitive: an external call to its wrapper minus an external call to an
/// identity wrapper of the same arity (so call, ABI and dispatch costs cancel; what is left is
/// the primitive as an internal call, +-10 gas of dispatch-order noise). Recorded in
/// contracts/snapshots/FixedPointGas.json (`forge test --match-contract FixedPointGas`).
contract FixedPointGas is TestBase {
    FixedPointGasProbe internal p = new FixedPointGasProbe();

    function _g1(bytes4 sel, int256 x) private view returns (uint256) {
        return staticcallGas(address(p), abi.encodeWithSelector(sel, x));
    }

    function _g2(bytes4 sel, int256 a, int256 b) private view returns (uint256) {
        return staticcallGas(address(p), abi.encodeWithSelector(sel, a, b));
    }

    function _g3(bytes4 sel, int256 a, int256 b, int256 c) private view returns (uint256) {
        return staticcallGas(address(p), abi.encodeWithSelector(sel, a, b, c));
    }

    function _rec1(string memory name, bytes4 sel, int256 x) private {
        _g1(p.id1.selector, x); // warm the account first
        vm.snapshotValue(name, _g1(sel, x) - _g1(p.id1.selector, x));
    }

    function _rec2(string memory name, bytes4 sel, int256 a, int256 b) private {
        _g2(p.id2.selector, a, b);
        vm.snapshotValue(name, _g2(sel, a, b) - _g2(p.id2.selector, a, b));
    }

    function _rec3(string memory name, bytes4 sel, int256 a, int256 b, int256 c) private {
        _g3(p.id3.selector, a, b, c);
        vm.snapshotValue(name, _g3(sel, a, b, c) - _g3(p.id3.selector, a, b, c));
    }

    function test_gas_primitives() public {
        int256 a = 1_234_567_890_123_456_789;
        _rec2("mulDown", p.mulDown.selector, a, 3e18 + 1);
        _rec2("mulUp", p.mulUp.selector, a, -3e18 - 1);
        _rec2("divDown", p.divDown.selector, a, 3e18 + 1);
        _rec2("divUp", p.divUp.selector, -a, 3e18 + 1);
        _rec3("mulDivDown", p.mulDivDown.selector, a, 7e18, 3e18 + 1);
        _rec3("mulDivUp", p.mulDivUp.selector, a, 7e18, -3e18 - 1);
        _rec1("expWad_typical", p.expWad.selector, -a);
        _rec1("expWad_worst", p.expWad.selector, FixedPoint.EXP_MAX_WAD);
        _rec1("lnWad_typical", p.lnWad.selector, a);
        _rec1("lnWad_worst", p.lnWad.selector, type(int256).max);
        _rec1("sqrtDown_typical", p.sqrtDown.selector, a);
        _rec1("sqrtDown_worst", p.sqrtDown.selector, FixedPoint.SQRT_MAX_WAD);
        _rec1("sqrtUp_typical", p.sqrtUp.selector, a);
        _rec1("sqrtUp_worst", p.sqrtUp.selector, FixedPoint.SQRT_MAX_WAD);
    }
}
