// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {MarginResult} from "../src/margin/PortfolioMargin.sol";
import {OptionPricing} from "../src/margin/OptionPricing.sol";

/// @notice Liveness of liquidation through a crash: the model prices every option whatever the
/// spot (OptionPricing.modelPrice: the intrinsic value where the spot alone leaves the accuracy
/// domain), so neither the keeper's full check (every scenario, down to -99% moves) nor the
/// witness check can revert on a price move and block the liquidation of an under-water book.
contract ClearingHouseCrashTest is ClearingHouseFixture {
    uint256 internal alice;
    uint256 internal bob;

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 5_000e6);
        bob = fund(BOB, 0, 1_000_000e6);
        // alice: short 10 puts K=1800 and 10 calls K=2200 (30 days) against bob.
        doTrade(bob, alice, ethPut, 10e18, 50e18);
        doTrade(bob, alice, ethCall, 10e18, 50e18);
        assertEq(uint256(fullCheckNow(alice).state), 0, "healthy before the crash");
    }

    /// ETH -90% (2000 -> 200): the full check's witness liquidates the whole book.
    function test_crash90_liquidates() public {
        _liquidateAfter(200e8);
    }

    /// ETH -99.99999% (to 1e-4 USD): the call's strike is 2.2e7 x spot, beyond the pricing
    /// library's moneyness cap (OptionPricing.price reverts MoneynessOutOfRange there), and the
    /// book still liquidates at the intrinsic values.
    function test_crashBeyondMoneynessCap_liquidates() public {
        (bool ok,) = address(this).call(abi.encodeCall(this.strictPrice, (1e14, 2200e18)));
        assertTrue(!ok, "the strict price reverts there");
        _liquidateAfter(1e4);
    }

    /// ETH at the smallest 8-decimal answer (1e-8 USD): the down scenarios' spots fall below
    /// MIN_PRICE; the full check still returns and the book liquidates.
    function test_crashToMinimumAnswer_liquidates() public {
        _liquidateAfter(1);
    }

    /// The center scenario (no move) proves it too: a liquidator needs no scenario pricing.
    function test_crash_centerWitnessLiquidates() public {
        setEth(1e4);
        uint256[] memory w = new uint256[](2);
        w[0] = 10; // 3n + 1 for n = 3: no move, vol unchanged
        w[1] = 10;
        uint64 nonce = nonceOf(alice);
        vm.prank(LIQ);
        ch.liquidate(alice, nonce, w, 1e18);
        (uint256[] memory ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 0, "book closed");
    }

    function strictPrice(int256 spot, int256 strike) external pure returns (int256) {
        return OptionPricing.price(true, spot, strike, 30 days, 6e17, 0);
    }

    function _liquidateAfter(int256 usd8) internal {
        setEth(usd8);
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 2, "below MM");
        uint64 nonce = nonceOf(alice);
        vm.prank(LIQ);
        ch.liquidate(alice, nonce, r.witness, 1e18);
        (uint256[] memory ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 0, "book closed");
        // alice bought the puts back at their mark rounded up: at least K - S each (rate 0).
        int256 spot = usd8 * 1e10;
        assertLe(ch.balanceOf(alice, 0), 6_000e18 - 10 * (1800e18 - spot), "paid at least K - S per put");
    }
}
