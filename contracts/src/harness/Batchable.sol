// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Batchable
/// @notice Runs many read-only calls to this contract in ONE eth_call, so a differential test
///         checks thousands of inputs per RPC round trip. Test/devnet harness only: it is never
///         part of the protocol's trusted code.
/// @dev Each call is a staticcall to `address(this)`, so it sees exactly what an external
///      caller would: the success flag, and the return data or the revert data (custom error,
///      Panic(uint256) or Error(string)) byte for byte. A failing call never aborts the batch.
abstract contract Batchable {
    /// @param calls ABI-encoded calls (selector + arguments) to functions of this contract.
    /// @return ok   ok[i] is true iff calls[i] returned without reverting.
    /// @return ret  ret[i] is the return data of calls[i], or its revert data when !ok[i].
    function batch(bytes[] calldata calls) external view returns (bool[] memory ok, bytes[] memory ret) {
        uint256 n = calls.length;
        ok = new bool[](n);
        ret = new bytes[](n);
        for (uint256 i = 0; i < n; ++i) {
            (ok[i], ret[i]) = address(this).staticcall(calls[i]);
        }
    }
}
