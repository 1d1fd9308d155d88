// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Batchable} from "./Batchable.sol";
import {FixedPoint} from "../math/FixedPoint.sol";
import {NormalDist} from "../math/NormalDist.sol";

/// @title MathHarness
/// @notice Exposes every math primitive of the verifier as an external pure function, so the
///         Python mirror (margin/) can be checked against it to the wei, in batches (Batchable).
///         Test/devnet harness only; no state, no privileges.
/// @dev Each function only forwards: the library's revert data (custom errors) reaches the
///      caller unchanged.
contract MathHarness is Batchable {
    function mulDown(int256 a, int256 b) external pure returns (int256) {
        return FixedPoint.mulDown(a, b);
    }

    function mulUp(int256 a, int256 b) external pure returns (int256) {
        return FixedPoint.mulUp(a, b);
    }

    function divDown(int256 a, int256 b) external pure returns (int256) {
        return FixedPoint.divDown(a, b);
    }

    function divUp(int256 a, int256 b) external pure returns (int256) {
        return FixedPoint.divUp(a, b);
    }

    function mulDivDown(int256 a, int256 b, int256 c) external pure returns (int256) {
        return FixedPoint.mulDivDown(a, b, c);
    }

    function mulDivUp(int256 a, int256 b, int256 c) external pure returns (int256) {
        return FixedPoint.mulDivUp(a, b, c);
    }

    function expWad(int256 x) external pure returns (int256) {
        return FixedPoint.expWad(x);
    }

    function lnWad(int256 x) external pure returns (int256) {
        return FixedPoint.lnWad(x);
    }

    function sqrtDown(int256 x) external pure returns (int256) {
        return FixedPoint.sqrtDown(x);
    }

    function sqrtUp(int256 x) external pure returns (int256) {
        return FixedPoint.sqrtUp(x);
    }

    function cdf(int256 x) external pure returns (int256) {
        return NormalDist.cdf(x);
    }
}
