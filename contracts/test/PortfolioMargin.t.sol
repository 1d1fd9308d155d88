// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {TestBase} from "./utils/TestBase.sol";
import {
    PortfolioMargin,
    Portfolio,
    Position,
    Market,
    RiskParams,
    UnderlyingParams,
    AssetParams,
    ExtendedMove,
    MarginResult,
    WitnessOutOfRange,
    WitnessLengthMismatch,
    TooManyPositions
} from "../src/margin/PortfolioMargin.sol";

/// @notice Builders shared by the margin tests: the presets of margin/params.py, a market and
/// deterministic mixed portfolios (futures, calls and puts, long and short, several expiries).
abstract contract MarginFixtures is TestBase {
    uint64 internal constant T0 = 1_800_000_000;
    int256 internal constant WAD = 1e18;

    /// @dev margin.params.deribit_like(): 9 moves across +-16% x 3 vol states + 7 extended on vol up at 25%.
    function deribitLike() internal pure returns (UnderlyingParams memory u) {
        u.priceRange = 16e16;
        u.moveSteps = 4;
        u.volShiftBase = 1e17;
        u.volRefTime = 30 days;
        u.volMinTime = 1 days;
        u.volExponent = 3e17;
        u.volFloor = 1e16;
        int16[7] memory pct = [int16(-66), -33, 50, 100, 200, 300, 500];
        u.extended = new ExtendedMove[](7);
        for (uint256 i; i < 7; ++i) {
            u.extended[i] = ExtendedMove(int256(pct[i]) * 1e16, 2, 25e16);
        }
        u.shortOptionCharge = 1e16;
        u.calendarCharge = 5e15;
        u.vegaCharge = 1e16;
    }

    /// @dev margin.params.span_like(): 7 moves (0, +-R/3, +-2R/3, +-R) x 3 vol states + +-3R at 35%.
    function spanLike() internal pure returns (UnderlyingParams memory u) {
        u.priceRange = 15e16;
        u.moveSteps = 3;
        u.volShiftBase = 8e16;
        u.volRefTime = 30 days;
        u.volMinTime = 1 days;
        u.volExponent = 5e17;
        u.volFloor = 1e16;
        u.extended = new ExtendedMove[](2);
        u.extended[0] = ExtendedMove(45e16, 1, 35e16);
        u.extended[1] = ExtendedMove(-45e16, 1, 35e16);
        u.shortOptionCharge = 5e15;
        u.calendarCharge = 5e15;
        u.vegaCharge = 1e16;
    }

    function params2() internal pure returns (RiskParams memory p) {
        p.underlyings = new UnderlyingParams[](2);
        p.underlyings[0] = deribitLike();
        p.underlyings[1] = spanLike();
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
