// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Batchable} from "./Batchable.sol";

/// @dev A custom error no margin contract declares: tests that unknown selectors are shown raw.
error ProbeError(int256 x);

/// @title BatchProbe
/// @notice Test harness for the differential-test plumbing itself (Batchable + tests/parity.py):
///         one function per way a call can end, so the tests prove that values, custom errors,
///         panics and plain reverts all travel through `batch` unchanged.
contract BatchProbe is Batchable {
    function echo(int256 x) external pure returns (int256) {
        return x;
    }

    function fail(int256 x) external pure returns (int256) {
        revert ProbeError(x);
    }

    /// @dev Checked arithmetic: Panic(0x11) on overflow.
    function checkedMul(int256 a, int256 b) external pure returns (int256) {
        return a * b;
    }

    /// @dev Checked arithmetic: Panic(0x12) on b == 0, Panic(0x11) on type(int256).min / -1.
    function checkedDiv(int256 a, int256 b) external pure returns (int256) {
        return a / b;
    }

    function bareRevert(int256) external pure returns (int256) {
        revert();
    }

    function message(int256) external pure returns (int256) {
        revert("probe message");
    }

    function pair(int256 a, int256 b) external pure returns (int256, int256) {
        return (b, a);
    }
}
