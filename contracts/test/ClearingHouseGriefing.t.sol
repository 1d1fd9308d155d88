// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {IClearingHouseErrors} from "../src/interfaces/IClearingHouse.sol";
import {MarginResult} from "../src/margin/PortfolioMargin.sol";

/// @notice Griefing of liquidators by the owner of an under-water account: every change of the
/// account bumps its state nonce, so a deposit front-running a liquidation makes it revert
/// (`StaleAccountNonce`, by design: the liquidator's proof was computed on another state). A
/// dust deposit does not cure the account, so the liquidation computed on the new nonce goes
/// through: the owner can only delay, one paid transaction per attempt it sees in the mempool.
contract ClearingHouseGriefingTest is ClearingHouseFixture {
    uint256 internal alice;
    uint256 internal bob;

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 400e6);
        bob = fund(BOB, 0, 100_000e6);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1850e8);
    }

    function test_dustDepositFrontRunOnlyDelaysLiquidation() public {
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 2, "below MM");
        uint64 n = nonceOf(alice);
        depositTo(ALICE, alice, 0, 1); // one micro-USDC, in front of the liquidation
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.StaleAccountNonce.selector, alice, n, n + 1));
        ch.liquidate(alice, n, r.witness, 1e18);
        // The liquidator re-reads (the keeper does this on the next block) and liquidates.
        MarginResult memory again = fullCheckNow(alice);
        assertEq(uint256(again.state), 2, "dust did not cure it");
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(alice, nonceOf(alice), again.witness, 1e18);
        assertTrue(bounty > 0, "liquidated, bounty paid");
        (uint256[] memory ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 0, "book closed");
    }

    function test_dustDepositFrontRunOnlyDelaysFlag() public {
        // Below IM, above MM: the path is flag, grace period, then liquidation.
        setEth(1950e8);
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 1, "below IM only");
        uint64 n = nonceOf(alice);
        depositTo(ALICE, alice, 0, 1);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.StaleAccountNonce.selector, alice, n, n + 1));
        ch.flag(alice, n, r.witness);
        vm.prank(LIQ);
        ch.flag(alice, nonceOf(alice), fullCheckNow(alice).witness);
        assertTrue(flaggedAt(alice) != 0, "flagged on the fresh nonce");
        // A later dust deposit does not clear the flag (only a passing full check does).
        depositTo(ALICE, alice, 0, 1);
        assertTrue(flaggedAt(alice) != 0, "still flagged");
    }
}
