// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {TestBase} from "./utils/TestBase.sol";
import {MarginPresets} from "./utils/MarginPresets.sol";
import {FixedPoint} from "../src/math/FixedPoint.sol";
import {OptionPricing, StrikeOutOfRange} from "../src/margin/OptionPricing.sol";
import {
    PortfolioMargin,
    Portfolio,
    Position,
    Market,
    RiskParams,
    UnderlyingParams,
    AssetParams,
    ExtendedMove,
    HistoricalSet,
    MarginResult,
    WitnessOutOfRange,
    WitnessNotIncreasing,
    WitnessLengthMismatch,
    TooManyPositions
} from "../src/margin/PortfolioMargin.sol";

/// @notice Builders shared by the margin tests: the presets of margin/params.py, a market and
/// deterministic mixed portfolios (futures, calls and puts, long and short, several expiries).
abstract contract MarginFixtures is TestBase {
    uint64 internal constant T0 = 1_800_000_000;
    int256 internal constant WAD = 1e18;

    function params2() internal pure returns (RiskParams memory p) {
        p.underlyings = new UnderlyingParams[](2);
        p.underlyings[0] = MarginPresets.deribitLike();
        p.underlyings[1] = MarginPresets.spanLike();
        p.assets = new AssetParams[](2);
        p.assets[0] = AssetParams(0, PortfolioMargin.STABLE);
        p.assets[1] = AssetParams(1e17, 0);
        p.correlationCredit = 3e17;
        p.imFactor = 125e16;
    }

    function market2() internal pure returns (Market memory m) {
        m.timestamp = T0;
        m.rate = 3e16;
        m.spots = new int256[](2);
        m.spots[0] = 3000e18;
        m.spots[1] = 60_000e18;
        m.vols = new int256[](2);
        m.vols[0] = 6e17;
        m.vols[1] = 5e17;
    }

    /// @dev n positions cycling put / call / future on underlying 0 (every 4th on 1), strikes
    /// around the money, expiries from 1 to 60 days, alternating sides.
    function mixed(uint256 n) internal pure returns (Portfolio memory pf) {
        pf.positions = new Position[](n);
        for (uint256 i; i < n; ++i) {
            uint256 u = i % 4 == 3 ? 1 : 0;
            int256 spot = u == 0 ? int256(3000e18) : int256(60_000e18);
            uint8 kind = uint8((i + 1) % 3); // 1 call, 2 put, 0 future
            int256 strike = kind == 0 ? int256(0) : spot * int256(80 + (i * 7) % 45) / 100;
            uint64 expiry = kind == 0 && i % 2 == 0 ? 0 : T0 + uint64(1 + (i * 13) % 60) * 1 days;
            // forge-lint: disable-next-line(unsafe-typecast)
            int256 q = (i % 2 == 0 ? int256(1) : int256(-1)) * int256(1 + i % 5) * 1e18;
            pf.positions[i] = Position(u, kind, strike, expiry, q, kind == 0 ? spot : int256(0));
        }
        pf.collateral = new int256[](2);
        pf.collateral[0] = 50_000e18;
        pf.collateral[1] = 3e18;
    }
}

contract PortfolioMarginTest is MarginFixtures {
    function test_bestWitnessReproducesFullCheck() public pure {
        Portfolio memory pf = mixed(12);
        MarginResult memory full = PortfolioMargin.fullCheck(pf, market2(), params2());
        MarginResult memory w = PortfolioMargin.witnessCheck(pf, market2(), params2(), full.witness);
        assertEq(w.requirement, full.requirement, "requirement");
        assertEq(w.equity, full.equity, "equity");
        assertEq(uint256(w.state), uint256(full.state), "state");
        assertTrue(full.requirement > 0, "a naked book needs margin");
    }

    function test_witnessErrors() public {
        Portfolio memory pf = mixed(3);
        uint256[] memory w = new uint256[](1);
        vm.expectRevert(abi.encodeWithSelector(WitnessLengthMismatch.selector, uint256(2), uint256(1)));
        this.witnessExternal(pf, w);
        w = new uint256[](2);
        w[1] = 23; // span_like has 23 scenarios: 0..22
        vm.expectRevert(abi.encodeWithSelector(WitnessOutOfRange.selector, uint256(1), uint256(23), uint256(23)));
        this.witnessExternal(pf, w);
        vm.expectRevert(abi.encodeWithSelector(TooManyPositions.selector, uint256(41)));
        this.fullExternal(mixed(41));
    }

    /// @notice Contingencies group by key, not by position order: reversed and rotated books of
    /// 40 positions with repeated strikes and expiries give the same charges, equal to the plain
    /// O(n^2) definition.
    function test_contingenciesIndependentOfOrder() public pure {
        Portfolio memory pf = mixed(40);
        for (uint256 i; i < 40; ++i) {
            pf.positions[i].strike = pf.positions[i].kind == 0 ? int256(0) : int256(2500e18 + (i % 4) * 250e18);
            // forge-lint: disable-next-line(unsafe-typecast)
            pf.positions[i].expiry = T0 + uint64(1 + i % 3) * 7 days;
            pf.positions[i].underlying = 0;
        }
        Market memory m = market2();
        RiskParams memory p = params2();
        int256 base = PortfolioMargin.contingencies(pf, m, p);
        assertTrue(base > 0, "charges");
        Portfolio memory rev = mixed(40);
        Portfolio memory rot = mixed(40);
        for (uint256 i; i < 40; ++i) {
            rev.positions[i] = pf.positions[39 - i];
            rot.positions[i] = pf.positions[(i + 17) % 40];
        }
        assertEq(PortfolioMargin.contingencies(rev, m, p), base, "reversed");
        assertEq(PortfolioMargin.contingencies(rot, m, p), base, "rotated");
        assertEq(base, _referenceContingencies(pf, m, p), "the plain definition");
        assertEq(PortfolioMargin.contingencies(mixed(40), m, p), _referenceContingencies(mixed(40), m, p), "mixed");
    }

    /// @dev The definition in plain O(n^2) Solidity (margin/portfolio_margin.py, contingencies).
    function _referenceContingencies(Portfolio memory pf, Market memory m, RiskParams memory p)
        internal
        pure
        returns (int256 total)
    {
        Position[] memory ps = pf.positions;
        for (uint256 u; u < p.underlyings.length; ++u) {
            int256[4] memory sides; // long/short futures, long/short vega
            for (uint256 i; i < ps.length; ++i) {
                if (ps[i].underlying != u) continue;
                int256 net;
                if (!_seenBefore(ps, i, false)) {
                    for (uint256 k = i; k < ps.length; ++k) {
                        if (_sameGroup(ps[i], ps[k], false)) net += _vegaOrQty(ps[k], m);
                    }
                    uint256 side = ps[i].kind == 0 ? 0 : 2;
                    if (net > 0) sides[side] += net;
                    if (net < 0) sides[side + 1] -= net;
                }
                if (ps[i].kind == 0 || _seenBefore(ps, i, true)) continue;
                net = 0;
                for (uint256 k = i; k < ps.length; ++k) {
                    if (_sameGroup(ps[i], ps[k], true)) net += ps[k].quantity;
                }
                if (net < 0) total += FixedPoint.mulUp(FixedPoint.mulUp(-net, m.spots[u]), p.underlyings[u].shortOptionCharge);
            }
            int256 off = sides[0] < sides[1] ? sides[0] : sides[1];
            if (off > 0) total += FixedPoint.mulUp(FixedPoint.mulUp(off, m.spots[u]), p.underlyings[u].calendarCharge);
            off = sides[2] < sides[3] ? sides[2] : sides[3];
            if (off > 0) total += FixedPoint.mulUp(FixedPoint.mulUp(off, m.spots[u]), p.underlyings[u].vegaCharge);
        }
    }

    function _sameGroup(Position memory a, Position memory b, bool byStrike) internal pure returns (bool) {
        if (a.underlying != b.underlying) return false;
        if (byStrike) return b.kind == a.kind && b.strike == a.strike;
        return (a.kind == 0) == (b.kind == 0) && a.expiry == b.expiry;
    }

    function _seenBefore(Position[] memory ps, uint256 i, bool byStrike) internal pure returns (bool) {
        for (uint256 j; j < i; ++j) {
            if (_sameGroup(ps[j], ps[i], byStrike)) return true;
        }
        return false;
    }

    function _vegaOrQty(Position memory q, Market memory m) internal pure returns (int256) {
        if (q.kind == 0) return q.quantity;
        // forge-lint: disable-next-line(unsafe-typecast)
        int256 tau = q.expiry > m.timestamp ? int256(uint256(q.expiry - m.timestamp)) : int256(0);
        return FixedPoint.mulDown(q.quantity, FixedPoint.sqrtDown(FixedPoint.mulDivDown(tau, WAD, 31_536_000)));
    }

    function witnessExternal(Portfolio memory pf, uint256[] memory w) external pure returns (MarginResult memory) {
        return PortfolioMargin.witnessCheck(pf, market2(), params2(), w);
    }

    function fullExternal(Portfolio memory pf) external pure returns (MarginResult memory) {
        return PortfolioMargin.fullCheck(pf, market2(), params2());
    }

    /// @notice A random (wrong) witness never yields a requirement above the full requirement,
    /// nor a worse health state: a keeper cannot make a healthy account look unhealthy.
    /// forge-config: default.fuzz.runs = 300
    function testFuzz_wrongWitnessNeverExceedsFull(
        uint256 seed,
        uint256 n,
        uint256 w0,
        uint256 w1,
        int256 cash,
        int256 spotShock
    ) public pure {
        n = bound(n, 0, 8);
        Portfolio memory pf = mixed(n);
        // Scramble sides and sizes from the seed so the fuzzer explores many books.
        for (uint256 i; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            // forge-lint: disable-next-line(unsafe-typecast)
            pf.positions[i].quantity = (r & 1 == 0 ? int256(1) : int256(-1)) * int256(r % 1000 + 1) * 1e16;
        }
        pf.collateral[0] = bound(cash, -1e22, 1e24);
        Market memory m = market2();
        m.spots[0] = m.spots[0] * bound(spotShock, 50, 200) / 100;
        RiskParams memory p = params2();
        MarginResult memory full = PortfolioMargin.fullCheck(pf, m, p);
        uint256[] memory w = new uint256[](2);
        w[0] = bound(w0, 0, PortfolioMargin.scenarioCount(p.underlyings[0]) - 1);
        w[1] = bound(w1, 0, PortfolioMargin.scenarioCount(p.underlyings[1]) - 1);
        MarginResult memory wr = PortfolioMargin.witnessCheck(pf, m, p, w);
        assertLe(wr.requirement, full.requirement, "witness requirement <= full");
        assertLe(wr.losses[0], full.losses[0], "loss 0");
        assertLe(wr.losses[1], full.losses[1], "loss 1");
        assertTrue(wr.state <= full.state, "state no worse than the full check");
        assertEq(wr.equity, full.equity, "equity does not depend on the witness");
    }
}

/// @notice Gas of the verifier as an internal call (memory arguments already built), for 1, 10
/// and 40 positions, each in its own test so that memory expansion starts from the fixtures
/// alone (as in a fresh transaction). The best witness is computed in another call frame.
/// Recorded in contracts/snapshots/PortfolioMarginGas.json.
contract PortfolioMarginGas is MarginFixtures {
    function bestWitness(uint256 n) external pure returns (uint256[] memory) {
        return PortfolioMargin.fullCheck(mixed(n), market2(), params2()).witness;
    }

    /// @dev n options only (calls and puts around the money, 1-60 days, both sides).
    function optionsOnly(uint256 n) internal pure returns (Portfolio memory pf) {
        pf = mixed(n);
        for (uint256 i; i < n; ++i) {
            Position memory q = pf.positions[i];
            if (q.kind == 0) {
                q.kind = 2;
                q.strike = (q.underlying == 0 ? int256(3000e18) : int256(60_000e18)) * 95 / 100;
                q.expiry = T0 + uint64(1 + (i * 17) % 60) * 1 days;
                q.entryPrice = 0;
            }
        }
    }

    function bestWitnessOptions(uint256 n) external pure returns (uint256[] memory) {
        return PortfolioMargin.fullCheck(optionsOnly(n), market2(), params2()).witness;
    }

    function test_gas_options_10() public {
        uint256[] memory w = this.bestWitnessOptions(10);
        Portfolio memory pf = optionsOnly(10);
        Market memory m = market2();
        RiskParams memory p = params2();
        uint256 g = gasleft();
        MarginResult memory full = PortfolioMargin.fullCheck(pf, m, p);
        uint256 fullGas = g - gasleft();
        vm.snapshotValue("fullCheck_10_optionsOnly", fullGas);
        pf = optionsOnly(10);
        g = gasleft();
        MarginResult memory r = PortfolioMargin.witnessCheck(pf, m, p, w);
        uint256 witnessGas = g - gasleft();
        assertEq(r.requirement, full.requirement, "best witness");
        vm.snapshotValue("witnessCheck_10_optionsOnly", witnessGas);
    }

    /// @dev The largest grid the bounds allow: 10 move steps (21 moves x 3 vol states) + 8
    /// extended = 71 scenarios, on both underlyings; 40 options. Informs the protocol's gas ceiling.
    function test_gas_full_40_worstGrid() public {
        RiskParams memory p = params2();
        for (uint256 u; u < 2; ++u) {
            p.underlyings[u].moveSteps = 10;
            ExtendedMove[] memory ext = new ExtendedMove[](8);
            for (uint256 e; e < 8; ++e) {
                ext[e] = ExtendedMove(e % 2 == 0 ? -int256(10 + 10 * e) * 1e16 : int256(20 * e) * 1e16, 2, 25e16);
            }
            p.underlyings[u].extended = ext;
        }
        Portfolio memory pf = optionsOnly(40);
        Market memory m = market2();
        uint256 g = gasleft();
        MarginResult memory r = PortfolioMargin.fullCheck(pf, m, p);
        uint256 used = g - gasleft();
        assertTrue(r.requirement > 0, "requirement");
        assertEq(PortfolioMargin.scenarioCount(p.underlyings[0]), 71, "71 scenarios");
        vm.snapshotValue("fullCheck_40_optionsOnly_71scenarios", used);
    }

    function _full(uint256 n) private {
        Portfolio memory pf = mixed(n);
        Market memory m = market2();
        RiskParams memory p = params2();
        uint256 g = gasleft();
        MarginResult memory r = PortfolioMargin.fullCheck(pf, m, p);
        uint256 used = g - gasleft();
        assertTrue(r.requirement > 0, "requirement");
        vm.snapshotValue(string.concat("fullCheck_", vm.toString(n)), used);
    }

    function _witness(uint256 n) private {
        uint256[] memory w = this.bestWitness(n);
        Portfolio memory pf = mixed(n);
        Market memory m = market2();
        RiskParams memory p = params2();
        uint256 g = gasleft();
        MarginResult memory r = PortfolioMargin.witnessCheck(pf, m, p, w);
        uint256 used = g - gasleft();
        assertTrue(r.requirement > 0, "requirement");
        vm.snapshotValue(string.concat("witnessCheck_", vm.toString(n)), used);
    }

    function test_gas_full_1() public {
        _full(1);
    }

    function test_gas_full_10() public {
        _full(10);
    }

    function test_gas_full_40() public {
        _full(40);
    }

    function test_gas_witness_1() public {
        _witness(1);
    }

    function test_gas_witness_10() public {
        _witness(10);
    }

    function test_gas_witness_40() public {
        _witness(40);
    }
}

/// @notice The validators' one-pass fast paths against the in-order reference checks: for
/// fields set to values at, inside and outside every bound (or raw fuzz values), both succeed,
/// or both revert with the same data.
contract ValidationFastPathTest is MarginFixtures {
    function fastParams(RiskParams memory p) external pure {
        PortfolioMargin.validateParams(p);
    }

    function refParams(RiskParams memory p) external pure {
        PortfolioMargin.validateParamsInOrder(p);
    }

    function fastMarket(Market memory m, RiskParams memory p) external pure {
        PortfolioMargin.validateMarket(m, p);
    }

    function refMarket(Market memory m, RiskParams memory p) external pure {
        PortfolioMargin.validateMarketInOrder(m, p);
    }

    function fastPortfolio(Portfolio memory pf, RiskParams memory p) external pure {
        PortfolioMargin.validatePortfolio(pf, p);
    }

    function refPortfolio(Portfolio memory pf, RiskParams memory p) external pure {
        PortfolioMargin.validatePortfolioInOrder(pf, p);
    }

    uint256 internal reverts;

    function _same(bytes memory fast, bytes memory ref) internal {
        (bool ok1, bytes memory r1) = address(this).call(fast);
        (bool ok2, bytes memory r2) = address(this).call(ref);
        assertTrue(ok1 == ok2, "fast path and reference agree on success");
        assertTrue(keccak256(r1) == keccak256(r2), "same revert data");
        if (!ok1) ++reverts;
    }

    /// @dev Values at and around every bound of the three validators, and extremes.
    function _value(uint256 pick, int256 raw) internal pure returns (int256) {
        int256[40] memory v = [
            int256(0), 1, -1, WAD, WAD + 1, type(int256).max, type(int256).min, 9e17, 9e17 + 1, 5e18,
            5e18 + 1, 2e18, 2e18 + 1, 10e18, 10e18 + 1, -99e16, -99e16 - 1, 157_680_000, 157_680_001, 10,
            11, 8, 9, 3, 2, 1e30, 1e30 + 1, -1e30, -1e30 - 1, 1e33, 1e33 + 1, -1e33 - 1, 1e10, 1e10 - 1,
            8e17, 8e17 + 1, 2_592_000, 2_592_001, -1e33, 7
        ];
        return pick < 40 ? v[pick] : raw;
    }

    function _set(uint256 ptr, uint256 word, int256 value) internal pure {
        assembly ("memory-safe") {
            mstore(add(ptr, shl(5, word)), value)
        }
    }

    function _ptr(RiskParams memory p) internal pure returns (uint256 a) {
        assembly ("memory-safe") {
            a := p
        }
    }

    function _ptrU(UnderlyingParams memory u) internal pure returns (uint256 a) {
        assembly ("memory-safe") {
            a := u
        }
    }

    function _ptrE(ExtendedMove memory e) internal pure returns (uint256 a) {
        assembly ("memory-safe") {
            a := e
        }
    }

    function _ptrA(AssetParams memory x) internal pure returns (uint256 a) {
        assembly ("memory-safe") {
            a := x
        }
    }

    function _ptrQ(Position memory q) internal pure returns (uint256 a) {
        assembly ("memory-safe") {
            a := q
        }
    }

    function _ptrI(int256[] memory x) internal pure returns (uint256 a) {
        assembly ("memory-safe") {
            a := x
        }
    }

    /// forge-config: default.fuzz.runs = 3000
    function testFuzz_paramsFastPathIsTheReference(uint256 target, uint256 field, uint256 pick, int256 raw) public {
        RiskParams memory p = params2();
        int256 value = _value(pick % 48, raw);
        target %= 5;
        if (target == 0) {
            _set(_ptr(p), 2 + field % 2, value); // correlationCredit, imFactor
        } else if (target == 1) {
            uint256 f = field % 11;
            if (f == 7) f = 8; // (the extended array pointer)
            _set(_ptrU(p.underlyings[field / 11 % 2]), f, value);
        } else if (target == 2) {
            _set(_ptrE(p.underlyings[0].extended[field / 3 % 7]), field % 3, value);
        } else if (target == 3) {
            _set(_ptrA(p.assets[field / 2 % 2]), field % 2, value);
        } else {
            uint256 c = field % 4; // counts
            if (c == 0) p.underlyings = new UnderlyingParams[](0);
            if (c == 1) p.underlyings[1].extended = new ExtendedMove[](9);
            if (c == 2) p.assets = new AssetParams[](9);
            if (c == 3) p.underlyings = new UnderlyingParams[](9);
        }
        _same(abi.encodeCall(this.fastParams, (p)), abi.encodeCall(this.refParams, (p)));
    }

    /// forge-config: default.fuzz.runs = 2000
    function testFuzz_marketFastPathIsTheReference(uint256 field, uint256 pick, int256 raw) public {
        RiskParams memory p = params2();
        Market memory m = market2();
        int256 value = _value(pick % 48, raw);
        uint256 f = field % 6;
        if (f < 4) _set(_ptrI(f < 2 ? m.spots : m.vols), 1 + f % 2, value);
        if (f == 4) m.spots = new int256[](3);
        if (f == 5) m.vols = new int256[](1);
        _same(abi.encodeCall(this.fastMarket, (m, p)), abi.encodeCall(this.refMarket, (m, p)));
    }

    /// forge-config: default.fuzz.runs = 3000
    function testFuzz_portfolioFastPathIsTheReference(uint256 field, uint256 pick, int256 raw) public {
        RiskParams memory p = params2();
        Portfolio memory pf = mixed(6);
        int256 value = _value(pick % 48, raw);
        uint256 f = field % 9;
        if (f < 6) {
            Position memory q = pf.positions[field / 9 % 6];
            // forge-lint: disable-next-line(unsafe-typecast)
            if (f == 1) value = int256(uint256(uint8(uint256(value)))); // kind is a uint8
            _set(_ptrQ(q), f, value);
        }
        if (f == 6) _set(_ptrI(pf.collateral), 1 + field / 9 % 2, value);
        if (f == 7) pf = mixed(41 + field % 2);
        if (f == 8) pf.collateral = new int256[](field % 2 == 0 ? 1 : 3);
        _same(abi.encodeCall(this.fastPortfolio, (pf, p)), abi.encodeCall(this.refPortfolio, (pf, p)));
    }

    /// @notice The deterministic sweep: every boundary value in every field reaches both sides
    /// (one call frame per value, so memory starts afresh).
    function test_boundarySweepRevertsAndPasses() public {
        for (uint256 pick; pick < 40; ++pick) {
            this.sweep(pick);
        }
        assertTrue(reverts > 1000, "the sweep reaches the errors");
    }

    function sweep(uint256 pick) external {
        for (uint256 field; field < 22; ++field) {
            testFuzz_paramsFastPathIsTheReference(1, field, pick, 0);
            testFuzz_paramsFastPathIsTheReference(2, field, pick, 0);
        }
        for (uint256 field; field < 4; ++field) {
            testFuzz_paramsFastPathIsTheReference(0, field, pick, 0);
            testFuzz_paramsFastPathIsTheReference(3, field, pick, 0);
            testFuzz_paramsFastPathIsTheReference(4, field, pick, 0);
        }
        for (uint256 field; field < 6; ++field) {
            testFuzz_marketFastPathIsTheReference(field, pick, 0);
        }
        for (uint256 field; field < 54; ++field) {
            testFuzz_portfolioFastPathIsTheReference(field, pick, 0);
        }
    }
}

/// @notice The struct field offsets that PortfolioMargin's assembly reads (RP_*, UP_*, EM_*,
/// AP_*, MK_*, POS_*) against the compiler's memory layout: each struct is written with a
/// distinct value per field and every field is read back through its constant.
contract PortfolioMarginLayoutTest is TestBase {
    function test_structOffsets() public pure {
        ExtendedMove[] memory ext = new ExtendedMove[](1);
        ext[0] = ExtendedMove(-11, 2, 13);
        UnderlyingParams memory u = UnderlyingParams(101, 102, 103, 104, 105, 106, 107, ext, 108, 109, 110);
        assertEq(_word(_ptr(u), 0), 101, "offset 0");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_MOVE_STEPS), 102, "UP_MOVE_STEPS");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_VOL_SHIFT_BASE), 103, "UP_VOL_SHIFT_BASE");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_VOL_REF_TIME), 104, "UP_VOL_REF_TIME");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_VOL_MIN_TIME), 105, "UP_VOL_MIN_TIME");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_VOL_EXPONENT), 106, "UP_VOL_EXPONENT");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_VOL_FLOOR), 107, "UP_VOL_FLOOR");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_EXTENDED), _ptr(ext), "UP_EXTENDED");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_SHORT_OPTION_CHARGE), 108, "UP_SHORT_OPTION_CHARGE");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_CALENDAR_CHARGE), 109, "UP_CALENDAR_CHARGE");
        assertEq(_word(_ptr(u), PortfolioMargin.UP_VEGA_CHARGE), 110, "UP_VEGA_CHARGE");

        ExtendedMove memory e = ext[0];
        assertEq(_word(_ptr(e), 0), uint256(type(uint256).max - 10), "offset 0"); // -11 as a word
        assertEq(_word(_ptr(e), PortfolioMargin.EM_VOL_STATE), 2, "EM_VOL_STATE");
        assertEq(_word(_ptr(e), PortfolioMargin.EM_WEIGHT), 13, "EM_WEIGHT");

        AssetParams[] memory assets = new AssetParams[](1);
        assets[0] = AssetParams(201, 202);
        assertEq(_word(_ptr(assets[0]), 0), 201, "offset 0");
        assertEq(_word(_ptr(assets[0]), PortfolioMargin.AP_UNDERLYING), 202, "AP_UNDERLYING");

        UnderlyingParams[] memory us = new UnderlyingParams[](1);
        us[0] = u;
        HistoricalSet memory hs;
        RiskParams memory p = RiskParams(us, assets, 301, 302, hs);
        assertEq(_word(_ptr(p), 0), _ptr(us), "offset 0");
        assertEq(_word(_ptr(p), PortfolioMargin.RP_ASSETS), _ptr(assets), "RP_ASSETS");
        assertEq(_word(_ptr(p), PortfolioMargin.RP_CORRELATION_CREDIT), 301, "RP_CORRELATION_CREDIT");
        assertEq(_word(_ptr(p), PortfolioMargin.RP_IM_FACTOR), 302, "RP_IM_FACTOR");

        int256[] memory spots = new int256[](1);
        int256[] memory vols = new int256[](1);
        Market memory m = Market(401, 402, spots, vols);
        assertEq(_word(_ptr(m), 0), 401, "offset 0");
        assertEq(_word(_ptr(m), PortfolioMargin.MK_RATE), 402, "MK_RATE");
        assertEq(_word(_ptr(m), PortfolioMargin.MK_SPOTS), _ptr(spots), "MK_SPOTS");
        assertEq(_word(_ptr(m), PortfolioMargin.MK_VOLS), _ptr(vols), "MK_VOLS");

        Position memory q = Position(501, 2, 503, 504, 505, 506);
        assertEq(_word(_ptr(q), 0), 501, "offset 0");
        assertEq(_word(_ptr(q), PortfolioMargin.POS_KIND), 2, "POS_KIND");
        assertEq(_word(_ptr(q), PortfolioMargin.POS_STRIKE), 503, "POS_STRIKE");
        assertEq(_word(_ptr(q), PortfolioMargin.POS_EXPIRY), 504, "POS_EXPIRY");
        assertEq(_word(_ptr(q), PortfolioMargin.POS_QUANTITY), 505, "POS_QUANTITY");
        assertEq(_word(_ptr(q), PortfolioMargin.POS_ENTRY_PRICE), 506, "POS_ENTRY_PRICE");
    }

    /// @notice The margin states are ordered by severity (the keeper compares them with < / >).
    function test_marginStates() public pure {
        assertEq(uint256(PortfolioMargin.HEALTHY), 0, "HEALTHY");
        assertEq(uint256(PortfolioMargin.MARGIN_CALL), 1, "MARGIN_CALL");
        assertEq(uint256(PortfolioMargin.LIQUIDATABLE), 2, "LIQUIDATABLE");
    }

    function _word(uint256 ptr, uint256 off) private pure returns (uint256 v) {
        assembly ("memory-safe") {
            v := mload(add(ptr, off))
        }
    }

    function _ptr(UnderlyingParams memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(ExtendedMove memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(ExtendedMove[] memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(AssetParams memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(AssetParams[] memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(UnderlyingParams[] memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(RiskParams memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(int256[] memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(Market memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }

    function _ptr(Position memory x) private pure returns (uint256 r) {
        assembly ("memory-safe") {
            r := x
        }
    }
}

/// @notice The witness pass prices every option of one (underlying, expiry) from terms computed
/// once (OptionPricing.pairTerms, a one-entry cache per underlying): books of options that share
/// expiries, against each option priced on its own with OptionPricing.pricePair, and the first
/// error when a later option of a cached expiry has an invalid strike.
contract WitnessPairTermsTest is MarginFixtures {
    using FixedPoint for int256;

    /// @dev n options on both underlyings, calls and puts, strikes 70-130% of spot, on two
    /// expiries (1 and 30 days) in an order drawn from seed, so entries hit and get replaced;
    /// stable collateral only (a scenario's loss is the options' alone).
    function sharedExpiries(uint256 n, uint256 seed) internal pure returns (Portfolio memory pf) {
        pf = mixed(n);
        pf.collateral[1] = 0;
        for (uint256 i; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            Position memory q = pf.positions[i];
            q.underlying = r % 4 == 3 ? 1 : 0;
            q.kind = uint8(1 + (r >> 8) % 2);
            int256 spot = q.underlying == 0 ? int256(3000e18) : int256(60_000e18);
            q.strike = spot * int256(70 + (r >> 16) % 61) / 100;
            q.expiry = T0 + ((r >> 32) % 2 == 0 ? 1 days : 30 days);
            q.entryPrice = 0;
        }
    }

    /// @dev The named scenario's vol of a witness index (PortfolioMargin._volFor written out).
    function _volW(UnderlyingParams memory up, uint256 tau, int256 vol, uint8 state) internal pure returns (int256) {
        if (state == PortfolioMargin.VOL_UNCHANGED) return vol;
        int256 shift = PortfolioMargin.volShiftUp(up, tau);
        if (state == PortfolioMargin.VOL_UP) return vol + shift < 10e18 ? vol + shift : int256(10e18);
        int256 lowest = vol < up.volFloor ? vol : up.volFloor;
        return vol - shift > lowest ? vol - shift : lowest;
    }

    /// @dev Each underlying's loss in its named scenario with every option priced by pricePair.
    function _lossesByPricePair(Portfolio memory pf, Market memory m, RiskParams memory p, uint256[] memory w)
        internal
        pure
        returns (int256[] memory losses)
    {
        int256[] memory acc = new int256[](2);
        for (uint256 i; i < pf.positions.length; ++i) {
            Position memory q = pf.positions[i];
            acc[q.underlying] += q.quantity * _change(q, m, p.underlyings[q.underlying], w[q.underlying]);
        }
        losses = new int256[](2);
        for (uint256 u; u < 2; ++u) {
            (,, int256 weight,) = PortfolioMargin.scenario(p.underlyings[u], w[u]);
            int256 lossUp = (-acc[u]).mulUp(1).mulUp(weight);
            losses[u] = lossUp > 0 ? lossUp : int256(0);
        }
    }

    /// @dev pricePair's arguments (a struct keeps the stack shallow).
    struct PairIn {
        bool isCall;
        int256 spot;
        int256 sw;
        int256 strike;
        uint256 tau;
        int256 vol;
        int256 volW;
        int256 rate;
    }

    /// @dev V_w - V0 of option q in scenario wu of its underlying, by pricePair (0 at the center).
    function _change(Position memory q, Market memory m, UnderlyingParams memory up, uint256 wu)
        internal
        pure
        returns (int256)
    {
        if (wu == 3 * up.moveSteps + 1) return 0; // the center: no move, vol unchanged
        (int256 move, uint8 state,,) = PortfolioMargin.scenario(up, wu);
        PairIn memory a;
        a.isCall = q.kind == PortfolioMargin.CALL;
        a.spot = m.spots[q.underlying];
        a.sw = a.spot.mulDown(WAD + move);
        a.strike = q.strike;
        a.tau = q.expiry - m.timestamp;
        a.vol = m.vols[q.underlying];
        a.volW = _volW(up, a.tau, a.vol, state);
        a.rate = m.rate;
        (int256 v0, int256 pw) = OptionPricing.pricePair(
            a.isCall, a.spot, a.sw, a.strike, a.tau, a.vol, a.volW, a.rate, OptionPricing.lnRatio(a.sw, a.spot)
        );
        return pw - v0;
    }

    /// forge-config: default.fuzz.runs = 300
    function testFuzz_sharedExpiriesPriceAsPricePair(uint256 seed, uint8 nRaw, uint8 w0, uint8 w1) public pure {
        Portfolio memory pf = sharedExpiries(2 + nRaw % 15, seed);
        Market memory m = market2();
        RiskParams memory p = params2();
        uint256[] memory w = new uint256[](2);
        w[0] = w0 % PortfolioMargin.scenarioCount(p.underlyings[0]);
        w[1] = w1 % PortfolioMargin.scenarioCount(p.underlyings[1]);
        (MarginResult memory r, int256[] memory marks) = PortfolioMargin.witnessCheckWithMarks(pf, m, p, w);
        int256[] memory expected = _lossesByPricePair(pf, m, p, w);
        assertEq(r.losses[0], expected[0], "loss of underlying 0");
        assertEq(r.losses[1], expected[1], "loss of underlying 1");
        for (uint256 i; i < pf.positions.length; ++i) {
            Position memory q = pf.positions[i];
            int256 mark = OptionPricing.modelPrice(
                q.kind == PortfolioMargin.CALL,
                m.spots[q.underlying],
                q.strike,
                q.expiry - m.timestamp,
                m.vols[q.underlying],
                m.rate
            );
            assertEq(marks[i], mark, "mark");
        }
        // The best witness of the same book reproduces the full check.
        MarginResult memory full = PortfolioMargin.fullCheck(pf, m, p);
        MarginResult memory best = PortfolioMargin.witnessCheck(pf, m, p, full.witness);
        assertEq(best.requirement, full.requirement, "best witness");
        assertEq(best.equity, full.equity, "equity");
    }

    function witnessExternal(Portfolio memory pf, uint256[] memory w) external pure returns (MarginResult memory) {
        return PortfolioMargin.witnessCheck(pf, market2(), params2(), w);
    }

    /// A strike below the pricing domain on an option whose expiry's terms are cached: the
    /// same first error as pricePair (StrikeOutOfRange), not a price from the cached terms.
    function test_strikeOutOfRangeOnACachedExpiry() public {
        Portfolio memory pf = sharedExpiries(3, 7);
        for (uint256 i; i < 3; ++i) {
            pf.positions[i].underlying = 0;
            pf.positions[i].expiry = T0 + 30 days;
        }
        pf.positions[2].strike = 1e9; // valid for the portfolio (> 0), below OptionPricing.MIN_PRICE
        uint256[] memory w = new uint256[](2);
        w[0] = 2; // a regular move, vol up: the pair is priced
        w[1] = 0;
        vm.expectRevert(abi.encodeWithSelector(StrikeOutOfRange.selector, int256(1e9)));
        this.witnessExternal(pf, w);
    }
}
