// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AggregatorV3Interface} from "../interfaces/AggregatorV3Interface.sol";

/// @notice The feed's latest answer is older than the allowed age.
error StalePrice(address feed, uint256 updatedAt, uint256 maxAge);
/// @notice The feed answered zero or a negative number.
error NonPositivePrice(address feed, int256 answer);
/// @notice The round is not complete (updatedAt == 0 or answeredInRound < roundId).
error IncompleteRound(address feed, uint80 roundId, uint80 answeredInRound);
/// @notice The feed's decimals are above 36 or its answer does not fit the WAD range.
error UnsupportedFeed(address feed, uint8 decimals);

/// @title OracleLib
/// @notice Reads a Chainlink AggregatorV3 feed into a WAD (1e18) number with the checks every
/// consumer needs. Scaling rounds DOWN for feeds with more than 18 decimals.
library OracleLib {
    /// @return wad the latest answer scaled to 18 decimals; @return updatedAt the round's update time.
    function read(AggregatorV3Interface feed, uint256 maxAge) internal view returns (int256 wad, uint256 updatedAt) {
        (uint80 roundId, int256 answer,, uint256 upd, uint80 answeredInRound) = feed.latestRoundData();
        _complete(feed, roundId, answer, upd, answeredInRound);
        // A future timestamp (clock skew) counts as fresh; an old one must be within maxAge.
        if (upd < block.timestamp && block.timestamp - upd > maxAge) revert StalePrice(address(feed), upd, maxAge);
        wad = _scaled(feed, answer);
        updatedAt = upd;
    }

    /// @notice Round `roundId` (any age: a past round is read for what it was), with the same
    /// completeness, sign and scaling checks as `read`.
    function readRound(AggregatorV3Interface feed, uint80 roundId) internal view returns (int256 wad, uint256 updatedAt) {
        (, int256 answer,, uint256 upd, uint80 answeredInRound) = feed.getRoundData(roundId);
        _complete(feed, roundId, answer, upd, answeredInRound);
        wad = _scaled(feed, answer);
        updatedAt = upd;
    }

    /// @notice The update time of round `roundId`, 0 when the feed has no such round (it
    /// reverts or answers zeros, as Chainlink's aggregators do).
    function updatedAtOf(AggregatorV3Interface feed, uint80 roundId) internal view returns (uint256) {
        try feed.getRoundData(roundId) returns (uint80, int256, uint256, uint256 upd, uint80) {
            return upd;
        } catch {
            return 0;
        }
    }

    function _complete(AggregatorV3Interface feed, uint80 roundId, int256 answer, uint256 upd, uint80 answeredInRound)
        private
        pure
    {
        if (upd == 0 || answeredInRound < roundId) revert IncompleteRound(address(feed), roundId, answeredInRound);
        if (answer <= 0) revert NonPositivePrice(address(feed), answer);
    }

    function _scaled(AggregatorV3Interface feed, int256 answer) private view returns (int256 wad) {
        uint8 d = feed.decimals();
        if (d > 36) revert UnsupportedFeed(address(feed), d);
        if (d <= 18) {
            uint256 scale = 10 ** (18 - d);
            // answer * scale must fit: answers above 2^255 / 1e18 are no price at all.
            if (answer > type(int256).max / int256(scale)) revert UnsupportedFeed(address(feed), d);
            wad = answer * int256(scale);
        } else {
            wad = answer / int256(10 ** (d - 18)); // positive: truncation is floor
        }
    }
}
