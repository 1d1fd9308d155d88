// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Multicall3
/// @notice A minimal aggregator with the ABI of the canonical Multicall3
/// (0xcA11bde05977b3631167028862bE2a173976CA11, deployed on most chains): `aggregate3` and the
/// block getters a keeper needs, for the devnet where the canonical one is absent. The keeper
/// `eth_call`s it so many reads share one call and therefore one state (one block).
contract Multicall3 {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    /// @notice Calls each target in order; a failed call reverts the whole batch unless its
    /// `allowFailure` is set, in which case its revert data is returned (as Multicall3 does).
    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData) {
        uint256 n = calls.length;
        returnData = new Result[](n);
        for (uint256 i; i < n; ++i) {
            Call3 calldata c = calls[i];
            (bool ok, bytes memory ret) = c.target.call(c.callData);
            if (!ok && !c.allowFailure) {
                // Canonical Multicall3 reverts with Error("Multicall3: call failed").
                revert("Multicall3: call failed");
            }
            returnData[i] = Result(ok, ret);
        }
    }

    function getBlockNumber() external view returns (uint256) {
        return block.number;
    }

    function getCurrentBlockTimestamp() external view returns (uint256) {
        return block.timestamp;
    }

    function getBlockHash(uint256 blockNumber) external view returns (bytes32) {
        return blockhash(blockNumber);
    }

    function getLastBlockHash() external view returns (bytes32) {
        unchecked {
            return blockhash(block.number - 1);
        }
    }

    function getChainId() external view returns (uint256) {
        return block.chainid;
    }
}
