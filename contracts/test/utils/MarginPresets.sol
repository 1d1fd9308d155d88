// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {UnderlyingParams, ExtendedMove} from "../../src/margin/PortfolioMargin.sol";

/// @notice The parameter presets of margin/params.py, for the margin and clearing-house tests.
library MarginPresets {
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
}
