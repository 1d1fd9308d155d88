// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @notice What forge's invariant runner reads from a test contract (no forge-std): the
/// contracts and selectors to call at random. Same struct layout as forge-std's StdInvariant.
abstract contract InvariantBase {
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    address[] private _targetContracts;
    FuzzSelector[] private _targetSelectors;

    function targetContract(address a) internal {
        _targetContracts.push(a);
    }

    function targetSelector(FuzzSelector memory s) internal {
        _targetSelectors.push(s);
    }

    function targetContracts() public view returns (address[] memory) {
        return _targetContracts;
    }

    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetSelectors;
    }
}
