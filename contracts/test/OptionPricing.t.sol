// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {TestBase} from "./utils/TestBase.sol";
import {
    OptionPricing,
    SpotOutOfRange,
    ForwardOutOfRange,
    StrikeOutOfRange,
    MoneynessOutOfRange,
    TauOutOfRange,
    VolOutOfRange,
    RateOutOfRange,
    ZeroSigmaSqrtTau
} from "../src/margin/OptionPricing.sol";

/// @dev External entry points so reverts can be expected and gas measured (library functions
/// are inlined), plus an identity of the same shape as the gas baseline.
contract OptionPricingProbe {
    function id6(bool c, int256 s, int256 k, uint256 t, int256 v, int256 r) external pure returns (int256) {
        // forge-lint: disable-next-line(unsafe-typecast)
        return (c ? s : k) ^ int256(t) ^ v ^ r; // a baseline of the same shape, value irrelevant
    }

    function price(bool c, int256 s, int256 k, uint256 t, int256 v, int256 r) external pure returns (int256) {
        return OptionPricing.price(c, s, k, t, v, r);
    }

    function modelPrice(bool c, int256 s, int256 k, uint256 t, int256 v, int256 r) external pure returns (int256) {
        return OptionPricing.modelPrice(c, s, k, t, v, r);
    }

    function priceBlack76(bool c, int256 f, int256 k, uint256 t, int256 v, int256 r) external pure returns (int256) {
        return OptionPricing.priceBlack76(c, f, k, t, v, r);
    }

    function d1d2(int256 s, int256 k, uint256 t, int256 v, int256 r) external pure returns (int256, int256) {
        return OptionPricing.d1d2(s, k, t, v, r);
    }

    function pricePair(bool c, int256 s, int256 sw, int256 k, uint256 t, int256 v, int256 vw, int256 r, int256 ln)
        external
        pure
        returns (int256, int256)
    {
        return OptionPricing.pricePair(c, s, sw, k, t, v, vw, r, ln);
    }

    /// lnRatio(a, b), or 0 where it is undefined (a pair or price fails on its inputs before
    /// using it there).
    function ln(int256 a, int256 b) external pure returns (int256) {
        return _ln(a, b);
    }

    /// The pair's second price: modelPriceLn at sw with ln(sw/k) = lnRatio(s, k) + lnRatio(sw, s).
    function movedPrice(bool c, int256 s, int256 sw, int256 k, uint256 t, int256 vw, int256 r)
        external
        pure
        returns (int256)
    {
        return OptionPricing.modelPriceLn(c, sw, k, t, vw, r, _ln(s, k) + _ln(sw, s));
    }

    function _ln(int256 a, int256 b) private pure returns (int256) {
        return a > 0 && b > 0 && a <= 2e31 && b <= 2e31 ? OptionPricing.lnRatio(a, b) : int256(0);
    }
}

contract OptionPricingTest is TestBase {
    int256 internal constant WAD = 1e18;
    uint256 internal constant DAY = 86_400;
    uint256 internal constant YEAR = 31_536_000;
    OptionPricingProbe internal c = new OptionPricingProbe();

    // ---- values -----------------------------------------------------------------------------

    function test_hull_example() public pure {
        // Hull: S=42, K=40, r=10%, sigma=20%, T=0.5 -> c = 4.76, p = 0.81 (exact 4.75942239287,
        // 0.80859937290; the Python suite checks these to 1e-9 * S against mpmath).
        int256 call = OptionPricing.price(true, 42e18, 40e18, YEAR / 2, 0.2e18, 0.1e18);
        int256 put = OptionPricing.price(false, 42e18, 40e18, YEAR / 2, 0.2e18, 0.1e18);
        assertLe(call - 4_759422392e9, 1e9, "call above 4.759422393");
        assertGe(call - 4_759422392e9, 0, "call below 4.759422392");
        assertLe(put - 808599372e9, 1e9, "put above 0.808599373");
        assertGe(put - 808599372e9, 0, "put below 0.808599372");
    }

    function test_haug_black76_call_equals_put() public pure {
        int256 call = OptionPricing.priceBlack76(true, 19e18, 19e18, YEAR * 3 / 4, 0.28e18, 0.1e18);
        int256 put = OptionPricing.priceBlack76(false, 19e18, 19e18, YEAR * 3 / 4, 0.28e18, 0.1e18);
        assertEq(call, put, "ATM Black-76 call = put");
        assertTrue(call > 1.70105e18 && call < 1.70106e18, "Haug: 1.7011");
    }

    function test_degenerate_cases_are_intrinsic() public pure {
        assertEq(OptionPricing.price(true, 42e18, 40e18, 0, 0.2e18, 0.1e18), 2e18, "expired call");
        assertEq(OptionPricing.price(false, 42e18, 40e18, 0, 0.2e18, 0.1e18), 0, "expired put");
        assertEq(OptionPricing.price(false, 40e18, 42e18, 0, 10e18, -0.5e18), 2e18, "expired put ITM");
        int256 d = OptionPricing.discountFactor(YEAR, 0.1e18);
        assertEq(OptionPricing.price(true, 42e18, 40e18, YEAR, 0, 0.1e18), 42e18 - 40e18 * d / WAD, "zero vol");
        assertEq(OptionPricing.price(false, 42e18, 40e18, YEAR, 0, 0.1e18), 0, "zero vol OTM put");
    }

    // ---- domain errors ----------------------------------------------------------------------

    function test_domain_errors() public {
        vm.expectRevert(abi.encodeWithSelector(SpotOutOfRange.selector, int256(0)));
        c.price(true, 0, 1e18, DAY, 1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(SpotOutOfRange.selector, int256(1e10 - 1)));
        c.price(true, 1e10 - 1, 1e18, DAY, 1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(SpotOutOfRange.selector, int256(1e30 + 1)));
        c.price(false, 1e30 + 1, 1e18, DAY, 1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(ForwardOutOfRange.selector, int256(-1)));
        c.priceBlack76(false, -1, 1e18, DAY, 1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(StrikeOutOfRange.selector, int256(0)));
        c.price(true, 1e18, 0, DAY, 1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(StrikeOutOfRange.selector, int256(1e30 + 1)));
        c.price(true, 1e18, 1e30 + 1, DAY, 1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(MoneynessOutOfRange.selector, int256(1e10), int256(1e17 + 1)));
        c.price(false, 1e10, 1e17 + 1, DAY, 1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(TauOutOfRange.selector, 5 * YEAR + 1));
        c.price(true, 1e18, 1e18, 5 * YEAR + 1, 1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(VolOutOfRange.selector, int256(-1)));
        c.price(true, 1e18, 1e18, DAY, -1, 0);
        vm.expectRevert(abi.encodeWithSelector(VolOutOfRange.selector, int256(10e18 + 1)));
        c.price(true, 1e18, 1e18, DAY, 10e18 + 1, 0);
        vm.expectRevert(abi.encodeWithSelector(RateOutOfRange.selector, int256(0.5e18 + 1)));
        c.price(true, 1e18, 1e18, DAY, 1e18, 0.5e18 + 1);
        vm.expectRevert(abi.encodeWithSelector(RateOutOfRange.selector, int256(-0.5e18 - 1)));
        c.priceBlack76(true, 1e18, 1e18, DAY, 1e18, -0.5e18 - 1);
        vm.expectRevert(abi.encodeWithSelector(ZeroSigmaSqrtTau.selector, uint256(0), int256(1e18)));
        c.d1d2(1e18, 1e18, 0, 1e18, 0);
        // The first failing check wins.
        vm.expectRevert(abi.encodeWithSelector(StrikeOutOfRange.selector, int256(0)));
        c.price(true, 1e18, 0, 5 * YEAR + 1, -1, 1e18);
    }

    function test_domain_corners_are_accepted() public pure {
        OptionPricing.price(true, 1e10, 1e17, 5 * YEAR, 10e18, 0.5e18);
        OptionPricing.price(false, 1e10, 1e17, 5 * YEAR, 10e18, -0.5e18);
        OptionPricing.price(true, 1e30, 1e10, 5 * YEAR, 10e18, -0.5e18);
        OptionPricing.price(false, 1e30, 1e30, 1, 1, 0.5e18);
    }

    // ---- properties -------------------------------------------------------------------------

    function _inputs(int256 s, int256 kRatio, uint256 t, int256 v, int256 r)
        private
        pure
        returns (int256, int256, uint256, int256, int256)
    {
        s = bound(s, 1e10, 1e30);
        // strike within [1e-6, 1e7] * spot, clipped to the price range
        // forge-lint: disable-next-line(divide-before-multiply)
        int256 k = s / 1e6 + (s / 1e6) * bound(kRatio, 0, 1e13 - 1); // a grid of s/1e6 steps
        if (k < 1e10) k = 1e10;
        if (k > 1e30) k = 1e30;
        return (s, k, bound(t, 0, 5 * YEAR), bound(v, 0, 10e18), bound(r, -0.5e18, 0.5e18));
    }

    function testFuzz_sigmaSqrtTau_is_floor_root(uint256 t, int256 v) public pure {
        t = bound(t, 0, 5 * YEAR);
        v = bound(v, 0, 10e18);
        // forge-lint: disable-next-line(unsafe-typecast)
        uint256 var36 = uint256(v) * uint256(v) * t / YEAR;
        // forge-lint: disable-next-line(unsafe-typecast)
        uint256 s = uint256(OptionPricing.sigmaSqrtTau(t, v));
        assertTrue(s * s <= var36 && (s + 1) * (s + 1) > var36, "isqrt is the floor root");
    }

    /// @notice pricePair == (modelPrice(spot, vol), modelPriceLn(spotW, volW, ln(spot/K) + ln(spotW/spot))):
    /// same integers, and on failure
    /// the revert data of the first failing call. Inputs in the domain, or (from `mode`) raw.
    function testFuzz_pricePair_is_two_prices(bool isCall, int256[7] memory x, uint8 mode) public view {
        if (mode & 1 == 0) _pairInputs(x, mode & 2 == 0);
        // forge-lint: disable-next-line(unsafe-typecast)
        else if (mode & 2 == 0) x[3] = x[3] % int256(6 * YEAR); // tau near the bound, else mostly out of range
        (bool ok0, bytes memory r0) = _modelPrice(isCall, x[0], x[2], x[3], x[4], x[6]);
        (bool okW, bytes memory rW) = _movedPrice(isCall, x);
        (bool ok, bytes memory rp) = _pair(isCall, x);
        assertTrue(ok == (ok0 && okW), "fails iff one of the prices fails");
        if (!ok0) {
            assertTrue(keccak256(rp) == keccak256(r0), "the first price's error");
        } else if (!okW) {
            assertTrue(keccak256(rp) == keccak256(rW), "the second price's error");
        } else {
            assertTrue(keccak256(rp) == keccak256(bytes.concat(r0, rW)), "the same two prices");
        }
    }

    /// @dev x = [spot, spotW, strike, tau, vol, volW, rate] into the domain; spotW a scenario spot.
    function _pairInputs(int256[7] memory x, bool sameVol) private pure {
        (int256 s, int256 k,, int256 v, int256 r) = _inputs(x[0], x[2], 0, x[4], x[6]);
        (x[0], x[2], x[4], x[6]) = (s, k, v, r);
        x[1] = bound(x[1], s / 3, s * 11);
        // forge-lint: disable-next-line(unsafe-typecast)
        x[3] = bound(x[3], 0, int256(5 * YEAR));
        x[5] = sameVol ? v : bound(x[5], 0, 10e18);
    }

    function _price(bool isCall, int256 s, int256 k, int256 t, int256 v, int256 r)
        private
        view
        returns (bool, bytes memory)
    {
        // forge-lint: disable-next-line(unsafe-typecast)
        return address(c).staticcall(abi.encodeCall(c.price, (isCall, s, k, uint256(t), v, r)));
    }

    function _modelPrice(bool isCall, int256 s, int256 k, int256 t, int256 v, int256 r)
        private
        view
        returns (bool, bytes memory)
    {
        // forge-lint: disable-next-line(unsafe-typecast)
        return address(c).staticcall(abi.encodeCall(c.modelPrice, (isCall, s, k, uint256(t), v, r)));
    }

    /// @notice modelPrice is price wherever price prices; where the underlying alone leaves the
    /// accuracy domain (0 < spot < MIN_PRICE or strike > 1e7 * spot) it is the discounted
    /// intrinsic value, and every other input fails with price's error.
    function testFuzz_modelPrice(bool isCall, int256 s0, int256 k0, uint256 t0, int256 v0, int256 r0, uint8 mode)
        public
        view
    {
        (int256 s, int256 k, uint256 t, int256 v, int256 r) = _inputs(s0, k0, t0, v0, r0);
        // mode 1: a crashed spot, below MIN_PRICE or beyond the moneyness cap
        if (mode % 3 == 1) s = bound(s0, 1, k / 1e7 > 1 ? k / 1e7 - 1 : int256(1));
        // forge-lint: disable-next-line(unsafe-typecast)
        if (mode % 3 == 2) (s, k, t) = (s0, k0, t0 % (6 * YEAR)); // raw
        _checkModel(isCall, s, k, t, v, r);
    }

    function _checkModel(bool isCall, int256 s, int256 k, uint256 t, int256 v, int256 r) private view {
        // forge-lint: disable-next-line(unsafe-typecast)
        (bool okP, bytes memory rP) = _price(isCall, s, k, int256(t), v, r);
        // forge-lint: disable-next-line(unsafe-typecast)
        (bool okM, bytes memory rM) = _modelPrice(isCall, s, k, int256(t), v, r);
        if (okP) {
            assertTrue(okM && keccak256(rM) == keccak256(rP), "price inside the domain");
            return;
        }
        bool crashed = s > 0 && s <= 1e30 && k >= 1e10 && k <= 1e30 && (s < 1e10 || k > s * 1e7);
        bool restOk = t <= 5 * YEAR && v >= 0 && v <= 10e18 && r >= -0.5e18 && r <= 0.5e18;
        if (!(crashed && restOk)) {
            assertTrue(!okM, "fails outside");
            return;
        }
        assertTrue(okM, "defined where only the underlying left the domain");
        int256 kd = k * OptionPricing.discountFactor(t, r) / WAD;
        int256 intrinsic = isCall ? s - kd : kd - s;
        assertEq(abi.decode(rM, (int256)), intrinsic > 0 ? intrinsic : int256(0), "intrinsic");
    }

    function test_modelPrice_crash_values() public view {
        // strike 1800, spot 1e-4 (K/S = 1.8e7): price reverts, the model prices intrinsic.
        (bool ok,) = _price(true, 1e14, 1800e18, 30 days, 1e18, 0);
        assertTrue(!ok, "price: MoneynessOutOfRange");
        assertEq(OptionPricing.modelPrice(true, 1e14, 1800e18, 30 days, 1e18, 0), 0, "call");
        assertEq(OptionPricing.modelPrice(false, 1e14, 1800e18, 30 days, 1e18, 0), 1800e18 - 1e14, "put");
        // a scenario spot below MIN_PRICE (1e-8)
        assertEq(OptionPricing.modelPrice(false, 5e9, 1e10, 30 days, 1e18, 0), 5e9, "put, spot < MIN_PRICE");
        assertEq(OptionPricing.modelPrice(true, 5e9, 1e10, 0, 1e18, 0), 0, "call, spot < MIN_PRICE");
        (ok,) = _modelPrice(true, 0, 1e10, 30 days, 1e18, 0);
        assertTrue(!ok, "spot 0 still fails");
    }

    function _movedPrice(bool isCall, int256[7] memory x) private view returns (bool, bytes memory) {
        // forge-lint: disable-next-line(unsafe-typecast)
        bytes memory head = abi.encode(isCall, x[0], x[1], x[2], uint256(x[3]));
        return address(c).staticcall(bytes.concat(c.movedPrice.selector, head, abi.encode(x[5], x[6])));
    }

    function _pair(bool isCall, int256[7] memory x) private view returns (bool, bytes memory) {
        // forge-lint: disable-next-line(unsafe-typecast)
        bytes memory head = abi.encode(isCall, x[0], x[1], x[2], uint256(x[3]));
        // the caller's lnMove = lnRatio(spotW, spot), computed once per underlying by the model
        int256 lnMove = c.ln(x[1], x[0]);
        return address(c).staticcall(bytes.concat(c.pricePair.selector, head, abi.encode(x[4], x[5], x[6], lnMove)));
    }

    function testFuzz_bounds_and_parity(int256 s0, int256 k0, uint256 t0, int256 v0, int256 r0) public pure {
        (int256 s, int256 k, uint256 t, int256 v, int256 r) = _inputs(s0, k0, t0, v0, r0);
        int256 call = OptionPricing.price(true, s, k, t, v, r);
        int256 put = OptionPricing.price(false, s, k, t, v, r);
        int256 kd = k * OptionPricing.discountFactor(t, r) / WAD;
        assertGe(call, 0, "call >= 0");
        assertGe(put, 0, "put >= 0");
        assertLe(call, s, "call <= spot");
        assertLe(put, kd, "put <= K*D");
        // Parity: < 2 wei of flooring, plus the clamp at 0 of a leg whose Phi values are within a
        // few wei of 0 (one wei of Phi times the larger notional).
        int256 residue = call - put - (s - kd);
        int256 tol = 3 + (s + kd) / 1e18;
        assertLe(residue, tol, "parity residue above");
        assertGe(residue, -tol, "parity residue below");
    }
}

/// @notice Gas of one option price as an internal call: an external call to the probe minus an
/// external call to an identity of the same shape (call, ABI and dispatch costs cancel; +-10 gas
/// of dispatch-order noise). Recorded in contracts/snapshots/OptionPricingGas.json
/// (`forge test --offline --match-contract OptionPricingGas`).
contract OptionPricingGas is TestBase {
    OptionPricingProbe internal p = new OptionPricingProbe();

    function _g(bytes4 sel, bool isCall, int256 s, int256 k, uint256 t, int256 v, int256 r)
        private
        view
        returns (uint256 used)
    {
        used = staticcallGas(address(p), abi.encodeWithSelector(sel, isCall, s, k, t, v, r));
    }

    function _rec(string memory name, bytes4 sel, bool isCall, int256 s, int256 k, uint256 t, int256 v, int256 r)
        private
    {
        _g(p.id6.selector, isCall, s, k, t, v, r); // warm the account first
        vm.snapshotValue(name, _g(sel, isCall, s, k, t, v, r) - _g(p.id6.selector, isCall, s, k, t, v, r));
    }

    function test_gas_price() public {
        bytes4 bs = p.price.selector;
        uint256 month = 30 days;
        _rec("call_atm_30d", bs, true, 3000e18, 3000e18, month, 0.6e18, 0.05e18);
        _rec("put_atm_30d", bs, false, 3000e18, 3000e18, month, 0.6e18, 0.05e18);
        _rec("call_atm_30d_rate0", bs, true, 3000e18, 3000e18, month, 0.6e18, 0);
        _rec("call_otm_10pct_90d", bs, true, 3000e18, 3300e18, 90 days, 0.6e18, 0.05e18);
        _rec("call_deep_otm", bs, true, 3000e18, 9000e18, 7 days, 0.6e18, 0.05e18);
        _rec("put_deep_itm", bs, false, 3000e18, 9000e18, 7 days, 0.6e18, 0.05e18);
        _rec("call_near_expiry_60s", bs, true, 3000e18, 3010e18, 60, 0.6e18, 0.05e18);
        _rec("call_expired", bs, true, 3000e18, 2900e18, 0, 0.6e18, 0.05e18);
        _rec("call_zero_vol", bs, true, 3000e18, 2900e18, month, 0, 0.05e18);
        _rec("black76_call_atm_30d", p.priceBlack76.selector, true, 3000e18, 3000e18, month, 0.6e18, 0.05e18);
    }
}
