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
contract MarginHarness is Batchable {
    function fullCheck(Portfolio memory pf, Market memory m, RiskParams memory p)
        external
        pure
        returns (MarginResult memory)
    {
        return PortfolioMargin.fullCheck(pf, m, p);
    }

    function witnessCheck(Portfolio memory pf, Market memory m, RiskParams memory p, uint256[] memory witness)
        external
        pure
        returns (MarginResult memory)
    {
        return PortfolioMargin.witnessCheck(pf, m, p, witness);
    }
}
