// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {TestBase} from "./utils/TestBase.sol";
import {NormalDist} from "../src/math/NormalDist.sol";

/// @notice Properties of NormalDist.cdf on the whole int256 domain. Accuracy against mpmath is
/// tested in tests/test_normal_accuracy.py (on the Python mirror) and parity Python-vs-Solidity
/// by the parity tests; here: exact values at fixed points, cut-offs, range, symmetry and
/// monotonicity (adjacent wei and random pairs, fuzzed), and every piece edge.
contract NormalDistTest is TestBase {
    int256 internal constant WAD = 1e18;
    int256 internal constant CUT = NormalDist.CUT_WAD;

    function test_fixedPoints() public pure {
        assertEq(NormalDist.cdf(0), 5e17, "Phi(0)");
        assertEq(NormalDist.cdf(1), 5e17, "Phi(1 wei) rounds to 1/2");
        assertEq(NormalDist.cdf(-1), 5e17, "Phi(-1 wei) rounds to 1/2");
        // Correctly rounded values from mpmath (mp.dps = 50):
        // Phi(1) = 0.841344746068542948585..., Phi(-2) = 0.022750131948179207200...
        assertEq(NormalDist.cdf(1e18), 841344746068542949, "Phi(1)");
        assertEq(NormalDist.cdf(-1e18), 158655253931457051, "Phi(-1)");
        assertEq(NormalDist.cdf(-2e18), 22750131948179207, "Phi(-2)");
        // Phi(-6) = 9.8658764503769814...e-10
        assertEq(NormalDist.cdf(-6e18), 986587645, "Phi(-6)");
        // Phi(-8) = 6.22096057427178e-16
        assertEq(NormalDist.cdf(-8e18), 622, "Phi(-8)");
    }

    function test_cutoffs() public pure {
        assertEq(NormalDist.cdf(-CUT), 0, "at -cut-off");
        assertEq(NormalDist.cdf(CUT), WAD, "at +cut-off");
        assertEq(NormalDist.cdf(-38e18), 0, "-38");
        assertEq(NormalDist.cdf(38e18), WAD, "+38");
        assertEq(NormalDist.cdf(type(int256).min), 0, "int256.min");
        assertEq(NormalDist.cdf(type(int256).min + 1), 0, "int256.min + 1");
        assertEq(NormalDist.cdf(type(int256).max), WAD, "int256.max");
        // Inside the cut-off the tail has already rounded to 0 (exact Q(8.85) = 0.43 wei).
        assertEq(NormalDist.cdf(-CUT + 1), 0, "one wei inside -cut-off");
        assertEq(NormalDist.cdf(-8.7e18), 2, "Phi(-8.7) = 1.66e-18 rounds to 2 wei");
    }

    /// Piece edges (2, 4, 6, 8) and the cut-off are where two polynomials meet: check each pair.
    function test_pieceEdgesMonotone() public pure {
        int256[5] memory edges = [int256(2e18), 4e18, 6e18, 8e18, CUT];
        for (uint256 i = 0; i < edges.length; ++i) {
            for (int256 d = -3; d <= 2; ++d) {
                int256 e = edges[i] + d;
                assertLe(NormalDist.cdf(e), NormalDist.cdf(e + 1), "edge, positive side");
                assertLe(NormalDist.cdf(-e - 1), NormalDist.cdf(-e), "edge, negative side");
            }
        }
    }

    function testFuzz_range(int256 x) public pure {
        int256 p = NormalDist.cdf(x);
        assertTrue(p >= 0 && p <= WAD, "in [0, 1e18]");
        if (x < 0) assertLe(p, 5e17, "x < 0: at most 1/2");
        if (x > 0) assertGe(p, 5e17, "x > 0: at least 1/2");
    }

    function testFuzz_symmetry(int256 x) public pure {
        vm.assume(x != type(int256).min);
        assertEq(NormalDist.cdf(-x) + NormalDist.cdf(x), WAD, "Phi(-x) + Phi(x) == 1e18");
    }

    function testFuzz_symmetryCore(int256 x) public pure {
        x = bound(x, -10e18, 10e18);
        assertEq(NormalDist.cdf(-x) + NormalDist.cdf(x), WAD, "Phi(-x) + Phi(x) == 1e18");
    }

    /// Adjacent wei inside the interesting range (where the fuzzer would rarely land unaided).
    function testFuzz_monotoneAdjacent(int256 x) public pure {
        x = bound(x, -9.5e18, 9.5e18);
        assertLe(NormalDist.cdf(x), NormalDist.cdf(x + 1), "Phi(x) <= Phi(x + 1 wei)");
    }

    function testFuzz_monotoneAdjacentAnywhere(int256 x) public pure {
        vm.assume(x != type(int256).max);
        assertLe(NormalDist.cdf(x), NormalDist.cdf(x + 1), "Phi(x) <= Phi(x + 1 wei)");
    }

    function testFuzz_monotonePairs(int256 a, int256 b) public pure {
        a = bound(a, -9.5e18, 9.5e18);
        b = bound(b, -9.5e18, 9.5e18);
        if (a > b) (a, b) = (b, a);
        assertLe(NormalDist.cdf(a), NormalDist.cdf(b), "a <= b => Phi(a) <= Phi(b)");
    }

    function testFuzz_monotonePairsAnywhere(int256 a, int256 b) public pure {
        if (a > b) (a, b) = (b, a);
        assertLe(NormalDist.cdf(a), NormalDist.cdf(b), "a <= b => Phi(a) <= Phi(b)");
    }

    /// Small steps (1..1e6 wei) near a piece edge or near zero.
    function testFuzz_monotoneNearEdges(uint256 which, int256 off, uint256 step) public pure {
        int256[6] memory at = [int256(0), 2e18, 4e18, 6e18, 8e18, CUT];
        int256 x = at[which % 6] + bound(off, -1e9, 1e9);
        if (which & 8 != 0) x = -x;
        int256 y = x + int256(bound(step, 1, 1e6));
        assertLe(NormalDist.cdf(x), NormalDist.cdf(y), "near an edge");
    }
}

/// @dev External wrapper, and an identity of the same shape as the baseline.
contract NormalDistGasProbe {
    function id(int256 x) external pure returns (int256) { return x; }
    function cdf(int256 x) external pure returns (int256) { return NormalDist.cdf(x); }
}

/// @notice Gas of NormalDist.cdf as an internal call: an external call to its wrapper minus an
/// external call to an identity wrapper (call, ABI and dispatch costs cancel; +-10 gas of
/// dispatch-order noise). Recorded in contracts/snapshots/NormalDistGas.json
/// (`forge test --offline --match-contract NormalDistGas`): typical = x in the busiest piece,
/// worst = the maximum over inputs in every piece, both signs, and the cut-off branches.
contract NormalDistGas is TestBase {
    NormalDistGasProbe internal p = new NormalDistGasProbe();

    function _g(bytes4 sel, int256 x) private view returns (uint256) {
        return staticcallGas(address(p), abi.encodeWithSelector(sel, x));
    }

    function _cost(int256 x) private view returns (uint256) {
        return _g(p.cdf.selector, x) - _g(p.id.selector, x);
    }

    function test_gas_cdf() public {
        _g(p.id.selector, 0); // warm the account first
        vm.snapshotValue("cdf_typical", _cost(1_234_567_890_123_456_789));
        int256[12] memory xs = [
            int256(0), 1, 1.9e18, 2.5e18, 4.5e18, 6.5e18, 8.5e18, -1.9e18, -3e18, -7e18, -8.8e18, 1.5e18
        ];
        uint256 worst;
        for (uint256 i = 0; i < xs.length; ++i) {
            uint256 c = _cost(xs[i]);
            if (c > worst) worst = c;
        }
        vm.snapshotValue("cdf_worst", worst);
        vm.snapshotValue("cdf_beyond_cutoff", _cost(-38e18));
    }
}
