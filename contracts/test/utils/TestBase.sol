// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Vm} from "./Vm.sol";

/// @notice Minimal test base: the cheatcode handle and assertions that say what differed.
abstract contract TestBase {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    error AssertionFailed(string what);
    error AssertEqInt(string what, int256 left, int256 right);
    error AssertEqUint(string what, uint256 left, uint256 right);
    error AssertLe(string what, int256 left, int256 right);

    bool public IS_TEST = true;

    function assertTrue(bool ok, string memory what) internal pure {
        if (!ok) revert AssertionFailed(what);
    }

    function assertEq(int256 a, int256 b, string memory what) internal pure {
        if (a != b) revert AssertEqInt(what, a, b);
    }

    function assertEq(uint256 a, uint256 b, string memory what) internal pure {
        if (a != b) revert AssertEqUint(what, a, b);
    }

    function assertLe(int256 a, int256 b, string memory what) internal pure {
        if (a > b) revert AssertLe(what, a, b);
    }

    function assertGe(int256 a, int256 b, string memory what) internal pure {
        if (a < b) revert AssertLe(what, b, a);
    }

    /// @dev Gas of one staticcall of `data` to `target` (call, ABI and dispatch included): the
    /// gas probes subtract an identity wrapper's figure to get a function's internal cost.
    function staticcallGas(address target, bytes memory data) internal view returns (uint256 used) {
        uint256 g = gasleft();
        (bool ok,) = target.staticcall(data);
        used = g - gasleft();
        require(ok, "probe reverted");
    }

    /// @dev Maps x into [lo, hi] (inclusive), uniformly enough for fuzzing.
    function bound(int256 x, int256 lo, int256 hi) internal pure returns (int256) {
        unchecked {
            uint256 span = uint256(hi - lo) + 1;
            if (span == 0) return x; // the whole int256 range
            return lo + int256(uint256(x) % span);
        }
    }

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        unchecked {
            uint256 span = hi - lo + 1;
            if (span == 0) return x;
            return lo + (x % span);
        }
    }
}
