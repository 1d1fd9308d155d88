// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {
    PortfolioMargin, Portfolio, Position, Market, RiskParams, MarginResult
} from "./margin/PortfolioMargin.sol";
import {OptionPricing} from "./margin/OptionPricing.sol";

/// @title MarginVerifier
/// @notice The portfolio-margin verifier as a stateless contract, so the clearing house stays
/// under the code-size limit and the keeper can eth_call the very code that rules. Risk
/// parameters travel ABI-encoded (`abi.encode(RiskParams)`), the form the clearing house keeps
/// them in (one code read instead of ~70 storage reads).
/// The full check (and the re-encoding of withRiskAdjusted) live in a second contract
/// (FullCheckVerifier, deployed by the constructor) that they forward their calldata to: the two checks with the historical scenario set do
/// not fit one contract under EIP-170's 24,576 bytes. The forward costs a cold call (~2.6k gas)
/// and a calldata copy on a check that costs 200k and more; the witness checks a flag or a
/// liquidation pays stay here, with no forward.
contract MarginVerifier {
    FullCheckVerifier private immutable _full;

    constructor() {
        _full = new FullCheckVerifier();
    }

    /// @notice PortfolioMargin.fullCheck (in FullCheckVerifier, same signature): the result, or
    /// the verifier's revert data unchanged.
    function fullCheck(Portfolio calldata, Market calldata, bytes calldata) external view returns (MarginResult memory) {
        _forward();
    }

    function witnessCheck(Portfolio memory pf, Market memory m, bytes calldata params, uint256[] memory witness)
        external
        pure
        returns (MarginResult memory)
    {
        return PortfolioMargin.witnessCheck(pf, m, abi.decode(params, (RiskParams)), witness);
    }

    /// @notice The witness check plus the mark (V0) of every position, which a liquidation
    /// needs to hand positions over at mark: the V0s the witness pass priced (one pass).
    function witnessCheckWithMarks(
        Portfolio memory pf,
        Market memory m,
        bytes calldata params,
        uint256[] memory witness
    ) external pure returns (MarginResult memory r, int256[] memory marks) {
        return PortfolioMargin.witnessCheckWithMarks(pf, m, abi.decode(params, (RiskParams)), witness);
    }

    /// @notice The model's mark of an option (the V0 every check uses), for the clearing
    /// house's trade price band.
    function modelPrice(bool isCall, int256 spot, int256 strike, uint256 tau, int256 vol, int256 rate)
        external
        pure
        returns (int256)
    {
        return OptionPricing.modelPrice(isCall, spot, strike, tau, vol, rate);
    }

    /// @notice Reverts with the model's named error unless `params` is a valid parameter set;
    /// returns its number of underlyings and, per collateral asset, the underlying that moves
    /// it (PortfolioMargin.STABLE for none) and its haircut.
    function validateParams(bytes calldata params)
        external
        pure
        returns (uint256 underlyings, uint256[] memory assetUnderlyings, int256[] memory haircuts)
    {
        RiskParams memory p = abi.decode(params, (RiskParams));
        PortfolioMargin.validateParams(p);
        uint256 nA = p.assets.length;
        assetUnderlyings = new uint256[](nA);
        haircuts = new int256[](nA);
        for (uint256 k; k < nA; ++k) {
            assetUnderlyings[k] = p.assets[k].underlying;
            haircuts[k] = p.assets[k].haircut;
        }
        return (p.underlyings.length, assetUnderlyings, haircuts);
    }

    /// @notice `params` with underlying u's price range and vol-shift base replaced (the risk
    /// operator's recalibration), re-encoded (in FullCheckVerifier, same signature).
    function withRiskAdjusted(bytes calldata, uint256, int256, int256) external view returns (bytes memory) {
        _forward();
    }

    /// @dev Calls FullCheckVerifier with this call's calldata (the same signature there) and
    /// returns or reverts with its return data unchanged.
    function _forward() private view {
        address target = address(_full);
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := staticcall(gas(), target, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }
}

/// @title FullCheckVerifier
/// @notice PortfolioMargin.fullCheck for MarginVerifier.fullCheck (which forwards its calldata
/// here unchanged: same signature).
contract FullCheckVerifier {
    function fullCheck(Portfolio memory pf, Market memory m, bytes calldata params)
        external
        pure
        returns (MarginResult memory)
    {
        return PortfolioMargin.fullCheck(pf, m, abi.decode(params, (RiskParams)));
    }

    /// @notice MarginVerifier.withRiskAdjusted: `params` with underlying u's price range and
    /// vol-shift base replaced (the risk operator's recalibration), re-encoded. Validation is
    /// the caller's next step.
    function withRiskAdjusted(bytes calldata params, uint256 u, int256 priceRange, int256 volShiftBase)
        external
        pure
        returns (bytes memory)
    {
        RiskParams memory p = abi.decode(params, (RiskParams));
        p.underlyings[u].priceRange = priceRange;
        p.underlyings[u].volShiftBase = volShiftBase;
        return abi.encode(p);
    }
}
