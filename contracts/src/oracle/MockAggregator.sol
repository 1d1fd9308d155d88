// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AggregatorV3Interface} from "../interfaces/AggregatorV3Interface.sol";

/// @title MockAggregator
/// @notice Devnet/test Chainlink-compatible feed that scripts move: `setAnswer` starts and
/// answers a new round now; `setRound` writes any round (stale, incomplete, non-positive) so
/// the oracle checks can be exercised. Every round written is kept for `getRoundData` (the
/// latest write of a round id wins). Open to anyone: devnet only.
contract MockAggregator is AggregatorV3Interface {
    struct Round {
        int256 answer;
        uint256 startedAt;
        uint256 updatedAt;
        uint80 answeredInRound;
        bool exists;
    }

    /// @notice `getRoundData` of a round never written (Chainlink's aggregators revert too).
    error RoundNotFound(uint80 roundId);

    uint8 public immutable override decimals;
    string public override description;
    uint80 public roundId;
    int256 public answer;
    uint256 public startedAt;
    uint256 public updatedAt;
    uint80 public answeredInRound;
    mapping(uint80 => Round) internal _rounds;

    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);

    constructor(uint8 decimals_, string memory description_, int256 initialAnswer) {
        decimals = decimals_;
        description = description_;
        setAnswer(initialAnswer);
    }

    function version() external pure override returns (uint256) {
        return 4;
    }

    function setAnswer(int256 answer_) public {
        setRound(roundId + 1, answer_, block.timestamp, block.timestamp, roundId + 1);
    }

    /// @notice Writes round `roundId_` and makes it the latest.
    function setRound(uint80 roundId_, int256 answer_, uint256 startedAt_, uint256 updatedAt_, uint80 answeredInRound_)
        public
    {
        roundId = roundId_;
        answer = answer_;
        startedAt = startedAt_;
        updatedAt = updatedAt_;
        answeredInRound = answeredInRound_;
        _rounds[roundId_] = Round(answer_, startedAt_, updatedAt_, answeredInRound_, true);
        emit AnswerUpdated(answer_, roundId_, updatedAt_);
    }

    function getRoundData(uint80 roundId_) external view override returns (uint80, int256, uint256, uint256, uint80) {
        Round memory r = _rounds[roundId_];
        if (!r.exists) revert RoundNotFound(roundId_);
        return (roundId_, r.answer, r.startedAt, r.updatedAt, r.answeredInRound);
    }

    function latestRoundData() external view override returns (uint80, int256, uint256, uint256, uint80) {
        return (roundId, answer, startedAt, updatedAt, answeredInRound);
    }
}
