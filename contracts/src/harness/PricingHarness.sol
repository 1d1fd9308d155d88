// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Batchable} from "./Batchable.sol";
import {OptionPricing} from "../margin/OptionPricing.sol";

/// @title PricingHarness
/// @notice External pure wrappers of OptionPricing for the differential tests
/// (tests/test_parity_pricing.py). Test/devnet harness only, never part of the protocol.
contract PricingHarness is Batchable {
    function price(bool isCall, int256 spot, int256 strike, uint256 tau, int256 vol, int256 rate)
        external
        pure
        returns (int256)
    {
        return OptionPricing.price(isCall, spot, strike, tau, vol, rate);
    }

    function modelPrice(bool isCall, int256 spot, int256 strike, uint256 tau, int256 vol, int256 rate)
        external
        pure
        returns (int256)
    {
        return OptionPricing.modelPrice(isCall, spot, strike, tau, vol, rate);
    }

    function pricePair(
        bool isCall,
        int256 spot,
        int256 spotW,
        int256 strike,
        uint256 tau,
        int256 vol,
        int256 volW,
        int256 rate,
        int256 lnMove
    ) external pure returns (int256, int256) {
        return OptionPricing.pricePair(isCall, spot, spotW, strike, tau, vol, volW, rate, lnMove);
    }

    function modelPriceLn(
        bool isCall,
        int256 spot,
        int256 strike,
        uint256 tau,
        int256 vol,
        int256 rate,
        int256 lnSK
    ) external pure returns (int256) {
        return OptionPricing.modelPriceLn(isCall, spot, strike, tau, vol, rate, lnSK);
    }

    function lnRatio(int256 a, int256 b) external pure returns (int256) {
        return OptionPricing.lnRatio(a, b);
    }

    function priceBlack76(bool isCall, int256 forward, int256 strike, uint256 tau, int256 vol, int256 rate)
        external
        pure
        returns (int256)
    {
        return OptionPricing.priceBlack76(isCall, forward, strike, tau, vol, rate);
    }

    function d1d2(int256 spot, int256 strike, uint256 tau, int256 vol, int256 rate)
        external
        pure
        returns (int256 d1, int256 d2)
    {
        return OptionPricing.d1d2(spot, strike, tau, vol, rate);
    }

    function sigmaSqrtTau(uint256 tau, int256 vol) external pure returns (int256) {
        return OptionPricing.sigmaSqrtTau(tau, vol);
    }

    function discountFactor(uint256 tau, int256 rate) external pure returns (int256) {
        return OptionPricing.discountFactor(tau, rate);
    }
}
