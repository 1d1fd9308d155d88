// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {MarginFixtures} from "./PortfolioMargin.t.sol";
import {
    PortfolioMargin,
    Portfolio,
    Position,
    Market,
    RiskParams,
    ExtendedMove,
    MarginResult,
    WitnessOutOfRange,
    WitnessLengthMismatch,
    WitnessNotIncreasing,
    InvalidGlobalParameter,
    InvalidRiskParameter,
    InvalidHistoricalScenario
} from "../src/margin/PortfolioMargin.sol";

/// @notice A historical scenario set on the two-underlying fixtures: S joint scenarios drawn
/// from a seed (moves of a few percent, a fat tail, both underlyings moving together half the
/// time), the last 5 stress days, FHS scales 1.2 and 0.9, k = 8 (the default set's shape:
/// margin/risk/historical.py).
abstract contract HistoricalFixtures is MarginFixtures {
    uint256 internal constant STRESS = 5;

    function withSet(RiskParams memory p, uint256 s, uint256 k, bool volMoves, bytes32 seed)
        internal
        pure
        returns (RiskParams memory)
    {
        int256[] memory moves = new int256[](2 * s);
        int256[] memory vm = new int256[](volMoves ? 2 * s : 0);
        for (uint256 i; i < 2 * s; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            // forge-lint: disable-next-line(unsafe-typecast)
            int256 x = int256(r % 2001) - 1000; // [-1000, 1000]
            // a fat tail: one in 8 is up to 4x larger; the second underlying follows the first half the time
            if ((r >> 16) % 8 == 0) x *= 4;
            if (i % 2 == 1 && (r >> 32) % 2 == 0) x = moves[i - 1] / 1e14;
            moves[i] = x * 1e14; // +-10% (40% in the tail)
            // forge-lint: disable-next-line(unsafe-typecast)
            if (volMoves) vm[i] = (int256((r >> 48) % 1001) - 300) * 1e15; // -30% .. +70%
        }
        p.historical.moves = moves;
        p.historical.volMoves = vm;
        p.historical.stressCount = s < STRESS ? s : STRESS;
        p.historical.fhsScale = new int256[](2);
        p.historical.fhsScale[0] = 12e17;
        p.historical.fhsScale[1] = 9e17;
        p.historical.esCount = k;
        return p;
    }

    function setParams(uint256 s) internal pure returns (RiskParams memory) {
        return withSet(params2(), s, 8, false, "default");
    }
}

contract PortfolioMarginHistoricalTest is HistoricalFixtures {
    function fullExternal(Portfolio memory pf, Market memory m, RiskParams memory p)
        external
        pure
        returns (MarginResult memory)
    {
        return PortfolioMargin.fullCheck(pf, m, p);
    }

    function witnessExternal(Portfolio memory pf, Market memory m, RiskParams memory p, uint256[] memory w)
        external
        pure
        returns (MarginResult memory)
    {
        return PortfolioMargin.witnessCheck(pf, m, p, w);
    }

    /// @notice With S = 0 the model is the grid's: the historical fields change nothing.
    function test_emptySetIsTheGrid() public pure {
        Portfolio memory pf = mixed(12);
        MarginResult memory r = PortfolioMargin.fullCheck(pf, market2(), params2());
        assertEq(r.witness.length, 2, "grid witness only");
        assertEq(r.expectedShortfall, 0, "no ES");
        int256 total = r.losses[0] + r.losses[1];
        assertEq(r.requirement, total - r.credit + r.contingencies, "grid requirement");
    }

    /// @notice The full witness reproduces the full check; MM = max(grid, ES) + contingencies.
    function test_fullWitnessReproducesFullCheck() public pure {
        RiskParams memory p = setParams(50);
        Portfolio memory pf = mixed(16);
        MarginResult memory full = PortfolioMargin.fullCheck(pf, market2(), p);
        assertEq(full.witness.length, 2 + 8, "grid + k indices");
        for (uint256 i = 3; i < full.witness.length; ++i) {
            assertTrue(full.witness[i] > full.witness[i - 1], "increasing");
        }
        MarginResult memory w = PortfolioMargin.witnessCheck(pf, market2(), p, full.witness);
        assertEq(w.requirement, full.requirement, "requirement");
        assertEq(w.expectedShortfall, full.expectedShortfall, "ES");
        int256 grid = full.losses[0] + full.losses[1] - full.credit;
        int256 top = grid > full.expectedShortfall ? grid : full.expectedShortfall;
        assertEq(full.requirement, top + full.contingencies, "max(grid, ES) + contingencies");
    }

    /// @notice A long book on a set of crashes: ES sets the requirement, above the grid.
    function test_esCanSetTheRequirement() public pure {
        RiskParams memory p = params2();
        int256[] memory moves = new int256[](4);
        (moves[0], moves[1], moves[2], moves[3]) = (-5e17, -4e17, 1e17, 1e17);
        p.historical.moves = moves;
        p.historical.fhsScale = new int256[](2);
        (p.historical.fhsScale[0], p.historical.fhsScale[1]) = (1e18, 1e18);
        p.historical.esCount = 1;
        Portfolio memory pf;
        pf.positions = new Position[](1);
        pf.positions[0] = Position(0, 0, 0, 0, 1e18, 3000e18); // long 1 ETH perpetual
        pf.collateral = new int256[](2);
        MarginResult memory r = PortfolioMargin.fullCheck(pf, market2(), p);
        assertEq(r.expectedShortfall, 1500e18, "the -50% day: 1,500");
        assertEq(r.requirement, 1500e18 + r.contingencies, "ES above the grid");
        assertEq(r.witness[2], 0, "named: scenario 0");
    }

    function test_witnessErrors() public {
        RiskParams memory p = setParams(20);
        Portfolio memory pf = mixed(3);
        Market memory m = market2();
        uint256[] memory w = new uint256[](5); // neither 2 nor 2 + 8
        vm.expectRevert(abi.encodeWithSelector(WitnessLengthMismatch.selector, uint256(10), uint256(5)));
        this.witnessExternal(pf, m, p, w);
        w = new uint256[](10);
        for (uint256 i = 2; i < 10; ++i) {
            w[i] = i;
        }
        w[9] = 20; // S = 20: indices 0..19
        vm.expectRevert(abi.encodeWithSelector(WitnessOutOfRange.selector, uint256(9), uint256(20), uint256(20)));
        this.witnessExternal(pf, m, p, w);
        w[9] = 8; // equal to the previous: not increasing
        vm.expectRevert(abi.encodeWithSelector(WitnessNotIncreasing.selector, uint256(9), uint256(8)));
        this.witnessExternal(pf, m, p, w);
        w[9] = 12;
        this.witnessExternal(pf, m, p, w); // well-formed
        uint256[] memory gridOnly = new uint256[](2);
        this.witnessExternal(pf, m, p, gridOnly); // the grid alone: ES not named
    }

    function test_parameterErrors() public {
        Portfolio memory pf = mixed(2);
        Market memory m = market2();
        RiskParams memory p = setParams(10);
        p.historical.esCount = 11;
        vm.expectRevert(abi.encodeWithSelector(InvalidGlobalParameter.selector, uint256(7)));
        this.fullExternal(pf, m, p);
        p = setParams(10);
        p.historical.fhsScale[1] = 10e18 + 1;
        vm.expectRevert(abi.encodeWithSelector(InvalidRiskParameter.selector, uint256(1), uint256(15)));
        this.fullExternal(pf, m, p);
        p = setParams(57); // deribit grid 34 + 57 > 90
        vm.expectRevert(abi.encodeWithSelector(InvalidRiskParameter.selector, uint256(0), uint256(16)));
        this.fullExternal(pf, m, p);
        p = setParams(10);
        p.historical.moves[7] = -99e16 - 1;
        vm.expectRevert(abi.encodeWithSelector(InvalidHistoricalScenario.selector, uint256(3), uint256(1), uint256(1)));
        this.fullExternal(pf, m, p);
    }

    /// @notice The soundness of the ES witness: any k increasing indices (and any grid indices)
    /// give at most the full check's ES and requirement, and never a worse state.
    function testFuzz_wrongEsWitnessNeverExceedsFull(
        uint256 n,
        uint256 seed,
        int256 cash,
        int256 spotShock,
        uint256 s,
        uint256 k,
        bytes32 setSeed
    ) public pure {
        n = bound(n, 0, 8);
        s = bound(s, 1, 56);
        k = bound(k, 1, s < 8 ? s : 8);
        RiskParams memory p = withSet(params2(), s, k, uint256(setSeed) % 2 == 0, setSeed);
        Portfolio memory pf = mixed(n);
        for (uint256 i; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            // forge-lint: disable-next-line(unsafe-typecast)
            pf.positions[i].quantity = (r & 1 == 0 ? int256(1) : int256(-1)) * int256(r % 1000 + 1) * 1e16;
        }
        pf.collateral[0] = bound(cash, -1e22, 1e24);
        Market memory m = market2();
        m.spots[0] = m.spots[0] * bound(spotShock, 50, 200) / 100;
        MarginResult memory full = PortfolioMargin.fullCheck(pf, m, p);
        // k distinct increasing indices from the seed, and random grid indices
        uint256[] memory w = new uint256[](2 + k);
        uint256 r0 = uint256(keccak256(abi.encode(seed, "w")));
        w[0] = r0 % PortfolioMargin.scenarioCount(p.underlyings[0]);
        w[1] = (r0 >> 64) % PortfolioMargin.scenarioCount(p.underlyings[1]);
        uint256 next = (r0 >> 128) % (s - k + 1);
        for (uint256 i; i < k; ++i) {
            w[2 + i] = next;
            uint256 room = s - next - (k - i); // indices left after this one, beyond those still needed
            next += 1 + (room == 0 ? 0 : uint256(keccak256(abi.encode(r0, i))) % (room + 1));
        }
        MarginResult memory wr = PortfolioMargin.witnessCheck(pf, m, p, w);
        assertLe(wr.expectedShortfall, full.expectedShortfall, "witness ES <= full ES");
        assertLe(wr.requirement, full.requirement, "witness requirement <= full");
        assertTrue(wr.state <= full.state, "state no worse than the full check");
        assertEq(wr.equity, full.equity, "equity does not depend on the witness");
    }
}

/// @notice Gas of the full check and of the ES witness check (the grid indices and k = 8
/// historical indices from the full check) with the largest set the bound allows for the
/// fixtures' grids (the Deribit-like grid has 34 scenarios: S = 56), for 1, 10, 16 and 40
/// positions. Recorded in contracts/snapshots/PortfolioMarginHistoricalGas.json.
contract PortfolioMarginHistoricalGas is HistoricalFixtures {
    uint256 internal constant S = 56;

    function bestWitness(uint256 n) external pure returns (uint256[] memory) {
        return PortfolioMargin.fullCheck(mixed(n), market2(), setParams(S)).witness;
    }

    function _full(uint256 n) private {
        Portfolio memory pf = mixed(n);
        Market memory m = market2();
        RiskParams memory p = setParams(S);
        uint256 g = gasleft();
        MarginResult memory r = PortfolioMargin.fullCheck(pf, m, p);
        uint256 used = g - gasleft();
        assertTrue(r.requirement > 0, "requirement");
        vm.snapshotValue(string.concat("fullCheck_hist56_", vm.toString(n)), used);
    }

    function _witness(uint256 n) private {
        uint256[] memory w = this.bestWitness(n);
        Portfolio memory pf = mixed(n);
        Market memory m = market2();
        RiskParams memory p = setParams(S);
        uint256 g = gasleft();
        MarginResult memory r = PortfolioMargin.witnessCheck(pf, m, p, w);
        uint256 used = g - gasleft();
        assertTrue(r.requirement > 0, "requirement");
        vm.snapshotValue(string.concat("witnessCheck_es8_", vm.toString(n)), used);
    }

    function test_gas_hist_full_1() public {
        _full(1);
    }

    function test_gas_hist_full_10() public {
        _full(10);
    }

    function test_gas_hist_full_16() public {
        _full(16);
    }

    function test_gas_hist_full_40() public {
        _full(40);
    }

    function test_gas_hist_witness_1() public {
        _witness(1);
    }

    function test_gas_hist_witness_10() public {
        _witness(10);
    }

    function test_gas_hist_witness_16() public {
        _witness(16);
    }

    function test_gas_hist_witness_40() public {
        _witness(40);
    }

    /// @notice The bound: 40 options, the largest grid the model accepts (71 scenarios) and the
    /// historical scenarios that fill it to MAX_SCENARIOS (19), with vol moves: every position
    /// prices 89 scenarios. Must stay under the protocol's 15,000,000 gas ceiling.
    function test_gas_hist_full_40_bound() public {
        RiskParams memory p = params2();
        for (uint256 u; u < 2; ++u) {
            p.underlyings[u].moveSteps = 10;
            ExtendedMove[] memory ext = new ExtendedMove[](8);
            for (uint256 e; e < 8; ++e) {
                // forge-lint: disable-next-line(unsafe-typecast)
                ext[e] = ExtendedMove(e % 2 == 0 ? -int256(10 + 10 * e) * 1e16 : int256(20 * e) * 1e16, 2, 25e16);
            }
            p.underlyings[u].extended = ext;
        }
        p = withSet(p, PortfolioMargin.MAX_SCENARIOS - 71, 8, true, "bound");
        Portfolio memory pf = mixed(40);
        for (uint256 i; i < 40; ++i) {
            if (pf.positions[i].kind == 0) {
                pf.positions[i].kind = 2;
                pf.positions[i].strike = (pf.positions[i].underlying == 0 ? int256(3000e18) : int256(60_000e18)) * 95 / 100;
                pf.positions[i].expiry = T0 + uint64(1 + (i * 17) % 60) * 1 days;
                pf.positions[i].entryPrice = 0;
            }
        }
        Market memory m = market2();
        uint256 g = gasleft();
        MarginResult memory r = PortfolioMargin.fullCheck(pf, m, p);
        uint256 used = g - gasleft();
        assertTrue(r.requirement > 0, "requirement");
        assertTrue(used < 15_000_000, "under the gas ceiling");
        vm.snapshotValue("fullCheck_40_optionsOnly_90scenarios", used);
    }
}
