// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Batchable} from "./Batchable.sol";
import {
    PortfolioMargin,
    Portfolio,
    Market,
    RiskParams,
    MarginResult
} from "../margin/PortfolioMargin.sol";

/// @title MarginHarness
/// @notice Exposes the portfolio-margin verifier to differential tests (tests/test_parity_margin.py)
///         and to the keeper's off-chain simulation. Test/devnet harness only.
/// fullCheck forwards its calldata to FullCheckHarness (as MarginVerifier does: both checks do
/// not fit one contract under EIP-170).
contract MarginHarness is Batchable {
    FullCheckHarness private immutable _full;

    constructor() {
        _full = new FullCheckHarness();
    }

    function fullCheck(Portfolio calldata, Market calldata, RiskParams calldata) external view returns (MarginResult memory) {
        address target = address(_full);
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := staticcall(gas(), target, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    function witnessCheck(Portfolio memory pf, Market memory m, RiskParams memory p, uint256[] memory witness)
        external
        pure
        returns (MarginResult memory)
    {
        return PortfolioMargin.witnessCheck(pf, m, p, witness);
    }
}

/// @notice PortfolioMargin.fullCheck behind MarginHarness.fullCheck (same signature).
contract FullCheckHarness {
    function fullCheck(Portfolio memory pf, Market memory m, RiskParams memory p)
        external
        pure
        returns (MarginResult memory)
    {
        return PortfolioMargin.fullCheck(pf, m, p);
    }
}
