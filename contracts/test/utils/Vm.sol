// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @notice The subset of forge's cheatcodes this project uses (no forge-std: nothing is fetched).
/// Signatures follow forge 1.7's cheatcode interface.
interface Vm {
    function assume(bool condition) external pure;
    function expectRevert(bytes calldata revertData) external;
    function expectRevert(bytes4 revertData) external;
    function expectRevert() external;
    /// Expects a revert with this custom error selector, whatever its arguments.
    function expectPartialRevert(bytes4 revertData) external;
    function prank(address sender) external;
    function startPrank(address sender) external;
    function stopPrank() external;
    function warp(uint256 newTimestamp) external;
    function roll(uint256 newHeight) external;
    function deal(address account, uint256 newBalance) external;
    function label(address account, string calldata newLabel) external;
    function addr(uint256 privateKey) external pure returns (address);
    /// Signs `digest` with `privateKey` (secp256k1; low-s, v 27/28).
    function sign(uint256 privateKey, bytes32 digest) external pure returns (uint8 v, bytes32 r, bytes32 s);
    function chainId(uint256 newChainId) external;
    function expectEmit(bool checkTopic1, bool checkTopic2, bool checkTopic3, bool checkData) external;
    function expectEmit() external;
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }
    /// Records every log emitted from here on, for getRecordedLogs (which returns and clears them).
    function recordLogs() external;
    function getRecordedLogs() external returns (Log[] memory logs);
    /// Records `value` under `name` in the gas snapshot file of the calling test contract
    /// (contracts/snapshots/<Contract>.json), committed and diffed like `forge snapshot`.
    function snapshotValue(string calldata name, uint256 value) external;
    function snapshotGasLastCall(string calldata name) external returns (uint256 gasUsed);
    function startSnapshotGas(string calldata name) external;
    function stopSnapshotGas() external returns (uint256 gasUsed);
    function toString(int256 value) external pure returns (string memory);
    function toString(uint256 value) external pure returns (string memory);
    function envOr(string calldata name, uint256 defaultValue) external view returns (uint256);
    /// Deploys the creation code of a build artifact (e.g. "out/X.sol/X.json"): the code the
    /// deployment scripts ship, whatever profile the calling test was compiled with.
    function deployCode(string calldata artifactPath) external returns (address deployedAddress);
    /// Marks every storage slot of `target` cold again (EIP-2929), as at the start of a transaction.
    function cool(address target) external;
}
