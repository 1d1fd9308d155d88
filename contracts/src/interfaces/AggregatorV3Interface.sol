// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @notice Chainlink's price-feed interface (the subset every AggregatorV3 proxy implements).
interface AggregatorV3Interface {
    function decimals() external view returns (uint8);

    function description() external view returns (string memory);

    function version() external view returns (uint256);

    /// @notice A past round (roundId = phaseId << 64 | aggregator round). Chainlink reverts or
    /// returns zeros for a round that does not exist.
    function getRoundData(uint80 roundId)
        external
        view
        returns (uint80 roundId_, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound);

    function latestRoundData()
        external
        view
        returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound);
}
