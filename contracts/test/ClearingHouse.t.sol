// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {Vm} from "./utils/Vm.sol";
import {IClearingHouseErrors, IClearingHouseEvents} from "../src/interfaces/IClearingHouse.sol";
import {ClearingHouseAdmin} from "../src/ClearingHouseAdmin.sol";
import {ClearingHouseRecalibration} from "../src/ClearingHouseRecalibration.sol";
import {MockERC20} from "../src/token/MockERC20.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {StalePrice, NonPositivePrice, IncompleteRound} from "../src/oracle/OracleLib.sol";
import {
    MarginResult, Portfolio, Market, RiskParams, AssetParams, PortfolioMargin
} from "../src/margin/PortfolioMargin.sol";

/// @notice Unit tests of every entry point of the clearing house and its named errors.
contract ClearingHouseTest is ClearingHouseFixture {
    uint256 internal alice;
    uint256 internal bob;

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 400e6);
        bob = fund(BOB, 0, 100_000e6);
    }

    /// Alice long 1 ETH perp at 2000 against Bob: IM 393.75, MM 315 at spot 2000.
    function _aliceLong() internal {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
    }

    // ================================================================== collateral

    function test_depositCreditsWadAndBumpsNonce() public {
        assertEq(ch.balanceOf(alice, 0), 400e18, "6-dec deposit scaled to WAD");
        uint256 a = fund(ALICE, 1, 2e18);
        assertEq(a, alice, "same account");
        assertEq(ch.balanceOf(alice, 1), 2e18, "18-dec deposit");
        assertEq(uint256(nonceOf(alice)), 2, "nonce");
    }

    function test_depositErrors() public {
        vm.prank(BOB);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotAuthorized.selector, alice, BOB));
        ch.deposit(alice, 0, 1);
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnknownAsset.selector, 2));
        ch.deposit(alice, 2, 1);
        vm.prank(ALICE);
        vm.expectRevert(IClearingHouseErrors.ZeroAmount.selector);
        ch.deposit(alice, 0, 0);
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.AmountTooLarge.selector, 1e28));
        ch.deposit(alice, 0, 1e28);
        // A pause never blocks a deposit (an owner can always cure).
        vm.prank(GUARD);
        adm.pause();
        depositTo(ALICE, alice, 0, 1);
        assertEq(ch.balanceOf(alice, 0), 400e18 + 1e12, "deposit while paused");
    }

    function test_operatorDepositsAndWithdrawsToOwner() public {
        vm.prank(ALICE);
        adm.setOperator(alice, CAROL, true);
        depositTo(CAROL, alice, 0, 10e6);
        vm.prank(CAROL);
        ch.withdraw(alice, 0, 5e6);
        assertEq(usdc.balanceOf(ALICE), 5e6, "withdrawal goes to the owner");
        vm.prank(BOB);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotAuthorized.selector, alice, BOB));
        adm.setOperator(alice, BOB, true);
    }

    function test_withdrawWithoutPositionsNeedsNoOracle() public {
        ethFeed.setRound(9, 0, 0, 0, 9); // broken feed
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 400e6);
        assertEq(ch.balanceOf(alice, 0), 0, "emptied");
        assertEq(usdc.balanceOf(ALICE), 400e6, "paid");
    }

    function test_withdrawErrors() public {
        vm.prank(ALICE);
        // Cash below zero without positions or collateral behind it fails the full check.
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InsufficientMargin.selector, alice, -int256(1e18), int256(0)));
        ch.withdraw(alice, 0, 401e6);
        // A volatile asset cannot be borrowed.
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InsufficientBalance.selector, alice, 1, int256(0), int256(1)));
        ch.withdraw(alice, 1, 1);
        _aliceLong();
        // 7 USDC out leaves 393 < IM 393.75.
        MarginResult memory r = fullCheckNow(alice);
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InsufficientMargin.selector, alice, r.equity - 7e18, r.initialMargin));
        ch.withdraw(alice, 0, 7e6);
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 6e6); // 394 >= 393.75
    }

    function test_transferCollateralToIsolatedSubAccount() public {
        uint256 iso = ch.accountId(ALICE, 1);
        vm.prank(ALICE);
        ch.transferCollateral(alice, iso, 0, 100e18);
        assertEq(ch.balanceOf(iso, 0), 100e18, "isolated funded");
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotSameOwner.selector, alice, bob));
        ch.transferCollateral(alice, bob, 0, 1);
        vm.prank(ALICE);
        vm.expectRevert(IClearingHouseErrors.ZeroAmount.selector);
        ch.transferCollateral(alice, iso, 0, 0);
        // The isolated account is margined on its own: 100 USDC cannot carry 1 ETH perp.
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(iso, bob, ethPerp, 1e18, 2000e18);
    }

    function test_subAccountBound() public {
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidSubAccount.selector, uint256(1) << 96));
        ch.accountId(ALICE, uint256(1) << 96);
    }

    // ================================================================== trades

    function test_tradeMovesExactCashAndPositions() public {
        _aliceLong();
        (uint256[] memory ids, int256[] memory q) = adm.positionsOf(alice);
        assertEq(ids.length, 1, "one position");
        assertEq(q[0], 1e18, "long 1");
        assertEq(ch.balanceOf(alice, 0), 400e18 - 2000e18, "paid notional");
        assertEq(ch.balanceOf(bob, 0), 100_000e18 + 2000e18, "received");
        assertEq(ch.tradeCount(), 1, "trade id");
        // Closing flat removes the slot.
        doTrade(bob, alice, ethPerp, 1e18, 2010e18);
        (ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 0, "flat");
        assertEq(ch.balanceOf(alice, 0), 410e18, "pnl realised exactly");
    }

    function test_tradeIMCheck() public {
        MarginResult memory r;
        // 2 ETH needs IM 787.5 > 400.
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector); // values checked below
        doTrade(alice, bob, ethPerp, 2e18, 2000e18);
        _aliceLong();
        r = fullCheckNow(alice);
        assertEq(uint256(r.state), 0, "healthy at IM");
    }

    function test_riskReducingTradeAllowedBelowIM() public {
        _aliceLong();
        setEth(1950e8); // equity 350 < IM 384
        assertEq(uint256(fullCheckNow(alice).state), 1, "below IM");
        // Increasing is refused ...
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(alice, bob, ethPerp, 1e8, 1950e18);
        // ... reducing at the mark lowers the requirement and raises the surplus: allowed.
        doTrade(bob, alice, ethPerp, 5e17, 1950e18);
        (, int256[] memory q) = adm.positionsOf(alice);
        assertEq(q[0], 5e17, "halved");
        // Flipping through zero is not a reduction.
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(bob, alice, ethPerp, 2e18, 1950e18);
        // A dead oracle stops even a reduction: the price band needs the price.
        ethFeed.setRound(50, -1, 0, 0, 50);
        vm.expectRevert(abi.encodeWithSelector(IncompleteRound.selector, address(ethFeed), uint80(50), uint80(50)));
        doTrade(bob, alice, ethPerp, 1e17, 1950e18);
    }

    function test_tradeErrors() public {
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotMatcher.selector, ALICE));
        signedTrade(ch, ALICE, alice, bob, ethPerp, 1e18, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.SelfTrade.selector, alice));
        doTrade(alice, alice, ethPerp, 1e18, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnknownInstrument.selector, 99));
        doTrade(alice, bob, 99, 1e18, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidQuantity.selector, int256(0)));
        doTrade(alice, bob, ethPerp, 0, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidQuantity.selector, int256(1e8 + 1)));
        doTrade(alice, bob, ethPerp, 1e8 + 1, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidPrice.selector, int256(2000e18 + 1)));
        doTrade(alice, bob, ethPerp, 1e18, 2000e18 + 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidPrice.selector, int256(0)));
        doTrade(alice, bob, ethPerp, 1e18, 0);
        vm.warp(expiry);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InstrumentExpired.selector, btcFut, expiry));
        doTrade(alice, bob, btcFut, 1e18, 60_000e18);
        refreshFeeds();
        vm.prank(GUARD);
        adm.pause();
        // Opening risk while paused (the risk-reducing case: ClearingHouseTrading.t.sol).
        vm.expectRevert(IClearingHouseErrors.ProtocolPaused.selector);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
    }

    function test_positionLimit() public {
        uint256 rich = fund(CAROL, 0, 10_000_000e6);
        vm.startPrank(GOV);
        uint256 first = adm.listInstrument(0, 1, 100e18, expiry);
        for (uint256 i = 1; i < 41; ++i) {
            adm.listInstrument(0, 1, int256(100e18 + i * 10e18), expiry);
        }
        vm.stopPrank();
        for (uint256 i; i < 40; ++i) {
            doTrade(rich, bob, first + i, 1e16, markPrice(first + i));
        }
        int256 p = markPrice(first + 40);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.PositionLimitExceeded.selector, rich, 41, 40));
        doTrade(rich, bob, first + 40, 1e16, p);
    }

    // ================================================================== oracles

    function test_staleOracleBlocksRiskButNotLiquidation() public {
        _aliceLong();
        setEth(1850e8); // below MM
        vm.warp(block.timestamp + 2 hours); // feeds older than maxAge (1 h), younger than 1 day
        // Risk-increasing actions stop with the named error.
        vm.expectRevert(abi.encodeWithSelector(StalePrice.selector, address(ethFeed), block.timestamp - 2 hours, 1 hours));
        doTrade(bob, alice, ethPerp, 3e18, 1850e18);
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(StalePrice.selector, address(ethFeed), block.timestamp - 2 hours, 1 hours));
        ch.withdraw(alice, 0, 1);
        // Liquidation proceeds on the last good price.
        MarginResult memory r = fullCheckNow(alice);
        uint64 nn221 = nonceOf(alice);
        vm.prank(LIQ);
        ch.liquidate(alice, nn221, r.witness, 1e18);
        assertEq(ch.portfolioOf(alice).positions.length, 0, "closed");
    }

    function test_deadOracleBlocksLiquidationWithNamedErrors() public {
        _aliceLong();
        setEth(1850e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.warp(block.timestamp + 1 days + 1);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(StalePrice.selector, address(ethFeed), block.timestamp - 1 days - 1, 1 days));
        ch.liquidate(alice, n, r.witness, 1e18);
        ethFeed.setRound(7, 0, block.timestamp, block.timestamp, 7);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(NonPositivePrice.selector, address(ethFeed), int256(0)));
        ch.liquidate(alice, n, r.witness, 1e18);
        ethFeed.setRound(8, 1850e8, block.timestamp, block.timestamp, 7);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IncompleteRound.selector, address(ethFeed), uint80(8), uint80(7)));
        ch.liquidate(alice, n, r.witness, 1e18);
    }

    // ================================================================== margin calls

    function test_flagAndClear() public {
        _aliceLong();
        setEth(1950e8);
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 1, "margin call zone");
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        ch.flag(alice, n, r.witness);
        assertEq(uint256(flaggedAt(alice)), block.timestamp, "flagged");
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.AlreadyFlagged.selector, alice, uint64(block.timestamp)));
        ch.flag(alice, n, r.witness);
        // Clearing needs a passing full check.
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InsufficientMargin.selector, alice, r.equity, r.initialMargin));
        ch.clearFlag(alice);
        setEth(2000e8);
        ch.clearFlag(alice);
        assertEq(uint256(flaggedAt(alice)), 0, "cleared");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotFlagged.selector, alice));
        ch.clearFlag(alice);
    }

    function test_flagErrors() public {
        _aliceLong();
        MarginResult memory r = fullCheckNow(alice);
        uint64 nn272 = nonceOf(alice);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.AccountNotBelowInitialMargin.selector, alice, r.equity, r.initialMargin));
        ch.flag(alice, nn272, r.witness);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.StaleAccountNonce.selector, alice, uint64(0), nonceOf(alice)));
        ch.flag(alice, 0, r.witness);
        uint64 nn276 = nonceOf(bk);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.BackstopAccount.selector, bk));
        ch.flag(bk, nn276, r.witness);
    }

    /// A liquidator's proof names the nonce it computed against; the owner's deposit in
    /// between makes it revert cleanly (and the account is no longer liquidatable anyway).
    function test_nonceProtectsOwnerTopUp() public {
        _aliceLong();
        setEth(1850e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        depositTo(ALICE, alice, 0, 1000e6);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.StaleAccountNonce.selector, alice, n, n + 1));
        ch.liquidate(alice, n, r.witness, 1e18);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.StaleAccountNonce.selector, alice, n, n + 1));
        ch.flag(alice, n, r.witness);
    }

    // ================================================================== liquidation

    function test_liquidationBountyAndInsurance() public {
        _aliceLong();
        setEth(1850e8);
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 2, "below MM");
        int256 bkCashBefore = ch.balanceOf(bk, 0);
        uint64 nn304 = nonceOf(alice);
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(alice, nn304, r.witness, 5e17);
        // Penalty = ceil(ceil(MM * 0.5) * 5%), bounty = half of it (within [1, 1000]).
        int256 penalty = _ceilDiv(_ceilDiv(r.requirement * 5e17, WAD) * 5e16, WAD);
        assertEq(bounty, penalty / 2, "bounty = penalty * share");
        assertEq(ch.bounties(LIQ), bounty, "credited");
        assertEq(ch.insuranceFund(), penalty - bounty, "insurance share");
        (, int256[] memory q) = adm.positionsOf(alice);
        assertEq(q[0], 5e17, "half closed");
        (, int256[] memory qb) = adm.positionsOf(bk);
        assertEq(qb[0], 5e17, "backstop took over");
        assertEq(ch.balanceOf(bk, 0), bkCashBefore - 925e18, "at mark 1850");
        assertEq(ch.balanceOf(alice, 0), 400e18 - 2000e18 + 925e18 - penalty, "account paid the penalty");
        // Claim pays whole token units.
        vm.prank(LIQ);
        adm.claimBounty();
        assertEq(int256(usdc.balanceOf(LIQ)) * 1e12 + ch.bounties(LIQ), bounty, "claimed");
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NothingToClaim.selector, LIQ));
        adm.claimBounty();
    }

    function test_bountyMinAndCapNeverAbovePenalty() public {
        vm.prank(GOV);
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 5e17, 1 hours, 50e18, 60e18));
        _aliceLong();
        setEth(1850e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 nn332 = nonceOf(alice);
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(alice, nn332, r.witness, 1e17);
        // Penalty ~ 290 * 0.1 * 5% = 1.45 < min bounty 50: the bounty is the whole penalty.
        assertEq(bounty, ch.bounties(LIQ), "credited");
        assertEq(ch.insuranceFund(), 0, "nothing left for insurance");
        assertTrue(bounty > 0 && bounty < 2e18, "capped at the penalty");
        vm.prank(GOV);
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 5e17, 1 hours, 0, 1e17));
        r = fullCheckNow(alice);
        uint64 nn341 = nonceOf(alice);
        vm.prank(LIQ);
        int256 b2 = ch.liquidate(alice, nn341, r.witness, 1e18);
        assertEq(b2, 1e17, "max bounty");
    }

    function test_liquidationErrors() public {
        _aliceLong();
        setEth(1950e8); // below IM only
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotLiquidatable.selector, alice, r.equity, r.requirement, r.initialMargin));
        ch.liquidate(alice, n, r.witness, 1e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidFraction.selector, int256(0)));
        ch.liquidate(alice, n, r.witness, 0);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidFraction.selector, int256(1e18 + 1)));
        ch.liquidate(alice, n, r.witness, 1e18 + 1);
        // Flagged, but the grace period has not run out.
        ch.flag(alice, n, r.witness);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotLiquidatable.selector, alice, r.equity, r.requirement, r.initialMargin));
        ch.liquidate(alice, n, r.witness, 1e18);
        // After the grace period, below IM is enough.
        vm.warp(block.timestamp + 1 hours);
        refreshFeeds();
        r = fullCheckNow(alice);
        ch.liquidate(alice, n, r.witness, 1e18);
        assertEq(uint256(flaggedAt(alice)), 0, "flag cleared by liquidation");
    }

    function test_liquidationTooSmallFraction() public {
        _aliceLong();
        setEth(1850e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NothingToLiquidate.selector, alice));
        ch.liquidate(alice, n, r.witness, 1);
    }

    function test_wrongWitnessCannotLiquidateHealthy() public {
        _aliceLong();
        setEth(1850e8);
        uint64 n = nonceOf(alice);
        uint256[] memory w = new uint256[](2);
        w[0] = 10; // the center scenario: no loss
        MarginResult memory r = _witnessR(w);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotLiquidatable.selector, alice, r.equity, r.requirement, r.initialMargin));
        ch.liquidate(alice, n, w, 1e18);
    }

    function test_badDebtInsuranceThenSocialised() public {
        _aliceLong();
        fund(ALICE, 1, 1e17); // 0.1 WETH collateral
        vm.prank(CAROL);
        usdc.mint(CAROL, 10e6);
        vm.startPrank(CAROL);
        usdc.approve(address(ch), 10e6);
        adm.depositInsurance(10e6);
        vm.stopPrank();
        setEth(1000e8); // crash: equity deeply negative
        MarginResult memory r = fullCheckNow(alice);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.HasOpenPositions.selector, alice, 1));
        ch.resolveBadDebt(alice);
        uint64 nn401 = nonceOf(alice);
        ch.liquidate(alice, nn401, r.witness, 1e18);
        assertEq(ch.insuranceFund(), 10e18, "the fund pays no liquidator");
        int256 debt = -ch.balanceOf(alice, 0);
        int256 wethValue = 1e17 * 1000 * 9 / 10; // 0.1 WETH at 1000 after a 10% haircut, in WAD
        int256 bkBefore = ch.balanceOf(bk, 0);
        ch.resolveBadDebt(alice);
        assertEq(ch.balanceOf(alice, 0), 0, "debt cleared");
        assertEq(ch.balanceOf(alice, 1), 0, "collateral seized");
        assertEq(ch.balanceOf(bk, 1), 1e17, "backstop got the WETH");
        assertEq(ch.insuranceFund(), 0, "insurance used first");
        int256 socialised = debt - wethValue - 10e18;
        assertEq(ch.totalSocialisedLoss(), socialised, "rest socialised");
        assertEq(ch.balanceOf(bk, 0), bkBefore - wethValue - socialised, "backstop absorbs");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NoBadDebt.selector, alice, int256(0)));
        ch.resolveBadDebt(alice);
    }

    /// Funds the insurance with `usdc6` (6-decimal units) from CAROL.
    function _insure(uint256 usdc6) internal {
        vm.startPrank(CAROL);
        usdc.mint(CAROL, usdc6);
        usdc.approve(address(ch), usdc6);
        adm.depositInsurance(usdc6);
        vm.stopPrank();
    }

    /// An insolvent book pays no penalty, so its liquidator earns nothing, and the insurance
    /// fund pays no bounty: it only ever absorbs bad debt.
    function test_insolventLiquidationNoBountyFromInsurance() public {
        _aliceLong();
        _insure(10e6);
        setEth(1000e8); // equity 400 - 1000 < 0: no penalty to share
        MarginResult memory r = fullCheckNow(alice);
        assertTrue(r.equity < 0, "insolvent");
        int256 aliceBefore = ch.balanceOf(alice, 0);
        uint64 n = nonceOf(alice);
        uint256[] memory taken = new uint256[](1);
        taken[0] = (ethPerp << 128) | 1e18; // alice's whole long
        int256[] memory prices = new int256[](1);
        prices[0] = 1000e18;
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.Liquidation(alice, LIQ, n + 1, 1e18, r.equity, r.requirement, 0, 0, 0, taken, prices);
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(alice, n, r.witness, 1e18);
        assertEq(bounty, 0, "no penalty, no bounty");
        assertEq(ch.bounties(LIQ), 0, "nothing credited");
        assertEq(ch.insuranceFund(), 10e18, "the fund is untouched");
        assertEq(ch.balanceOf(alice, 0), aliceBefore + 1000e18, "account paid no penalty (sold at 1000)");
        assertEq(heldWad(0), _sumUsdc(), "tokens held == balances + insurance + bounties");
    }

    function test_insolventLiquidationEmptyFundPaysNothing() public {
        _aliceLong();
        setEth(1000e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(alice, n, r.witness, 1e18);
        assertEq(bounty, 0, "nothing to pay from");
        assertEq(ch.bounties(LIQ), 0, "nothing credited");
        assertEq(ch.insuranceFund(), 0, "fund stays at zero");
        (uint256[] memory ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 0, "the liquidation still closed the book");
        assertEq(nonceOf(alice), n + 1, "and bumped the nonce");
    }

    /// Equity positive but below the penalty: the penalty is the whole equity and the bounty
    /// (minBounty, capped at the penalty) is all of it; the fund gets nothing and pays nothing.
    function test_cappedPenaltyBountyIsTheWholeEquity() public {
        vm.prank(GOV);
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e17, 5e17, 1 hours, 50e18, 60e18));
        _aliceLong();
        _insure(100e6);
        setEth(1620e8); // equity ~ 20 < MM * 50%
        MarginResult memory r = fullCheckNow(alice);
        assertTrue(r.equity > 0, "solvent");
        assertTrue(r.equity < 50e18, "equity below minBounty");
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(alice, n, r.witness, 1e18);
        assertEq(bounty, r.equity, "bounty = penalty = equity");
        assertEq(ch.insuranceFund(), 100e18, "fund unchanged");
        assertEq(heldWad(0), _sumUsdc(), "tokens held == balances + insurance + bounties");
    }

    /// Splitting the liquidation of an insolvent book earns nothing, in parts or whole.
    function test_splitLiquidationOfInsolventBookEarnsNothing() public {
        _aliceLong();
        _insure(10e6);
        setEth(1000e8);
        int256 total;
        for (uint256 i; i < 5; ++i) {
            MarginResult memory ri = fullCheckNow(alice);
            uint64 ni = nonceOf(alice);
            vm.prank(LIQ);
            total += ch.liquidate(alice, ni, ri.witness, 5e17);
        }
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        total += ch.liquidate(alice, n, r.witness, 1e18);
        assertEq(total, 0, "no bounty for an insolvent book");
        assertEq(ch.insuranceFund(), 10e18, "fund untouched");
        n = nonceOf(alice);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NothingToLiquidate.selector, alice));
        ch.liquidate(alice, n, r.witness, 1e18);
    }

    /// The settlement token held, in WAD, against what the books owe (USDC: 12 decimals short).
    function _sumUsdc() internal view returns (int256 s) {
        s = ch.balanceOf(alice, 0) + ch.balanceOf(bob, 0) + ch.balanceOf(bk, 0) + ch.insuranceFund()
            + ch.totalBounties();
    }

    // ================================================================== settlement

    function test_settlement() public {
        uint256 carol = fund(CAROL, 0, 100_000e6);
        doTrade(carol, bob, ethCall, 2e18, 50e18); // carol long 2 calls K=2200
        doTrade(carol, bob, btcFut, 1e17, 60_000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InstrumentNotExpired.selector, ethCall, expiry));
        adm.settleInstrument(ethCall, 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InstrumentNotExpired.selector, ethPerp, uint64(0)));
        adm.settleInstrument(ethPerp, 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnknownInstrument.selector, 77));
        adm.settleInstrument(77, 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NothingToSettle.selector, carol));
        ch.settleAccount(carol);
        vm.warp(expiry);
        ethFeed.setRound(99, 2300e8, expiry - 1, expiry - 1, 99);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.PriceBeforeExpiry.selector, ethCall, expiry - 1, expiry));
        adm.settleInstrument(ethCall, 99);
        setEth(2300e8); // round 100, at expiry
        setBtc(61_000e8);
        adm.settleInstrument(ethCall, 100);
        settle(btcFut);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InstrumentAlreadySettled.selector, ethCall));
        adm.settleInstrument(ethCall, 100);
        int256 before = ch.balanceOf(carol, 0);
        assertEq(ch.settleAccount(carol), 2, "two positions");
        assertEq(ch.balanceOf(carol, 0), before + 2 * 100e18 + 6100e18, "call payoff + future value");
        assertEq(ch.portfolioOf(carol).positions.length, 0, "removed");
        int256 bobBefore = ch.balanceOf(bob, 0);
        ch.settleAccount(bob);
        assertEq(ch.balanceOf(bob, 0), bobBefore - 200e18 - 6100e18, "short side pays");
    }

    // ================================================================== governance

    function test_governanceErrors() public {
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotOwner.selector, address(this)));
        adm.setBackstop(1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotGuardian.selector, address(this)));
        adm.pause();
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotRiskOperator.selector, address(this)));
        ClearingHouseRecalibration(address(adm)).queueRecalibration("");
        vm.startPrank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnderlyingNotConfigured.selector, 5));
        adm.listInstrument(5, 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidInstrument.selector, 1));
        adm.listInstrument(0, 3, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidInstrument.selector, 2));
        adm.listInstrument(0, 1, 1, expiry);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidInstrument.selector, 3));
        adm.listInstrument(0, 1, 1000e18, uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 1, int256(6e17), -int256(5e17), int256(5e17)));
        adm.setRate(6e17);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 8, int256(6e17), int256(1), int256(5e17)));
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(6e17, 0, 0, 0, 0));
        vm.stopPrank();
    }

    function test_setRiskParamsMustMatchConfig() public {
        vm.startPrank(GOV);
        bytes memory bad = abi.encode(defaultParams());
        ClearingHouseBase.UnderlyingConfig[] memory us = new ClearingHouseBase.UnderlyingConfig[](1);
        us[0] = underlyingCfg(btcFeed, btcVol); // 3 underlyings, parameters for 2
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ConfigMismatch.selector, 3, 3, 2));
        adm.configureMarkets(us, new address[](0), bad);
        vm.stopPrank();
        assertEq(adm.underlyingCount(), 2, "nothing appended");
    }

    function test_pauseByGuardian() public {
        vm.prank(GUARD);
        adm.pause();
        assertTrue(ch.paused(), "paused");
        vm.prank(ALICE);
        vm.expectRevert(IClearingHouseErrors.ProtocolPaused.selector);
        ch.withdraw(alice, 0, 1);
        vm.prank(GUARD);
        adm.unpause();
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 1);
    }

    function _witnessR(uint256[] memory w) internal view returns (MarginResult memory r) {
        r = verifier.witnessCheck(ch.portfolioOf(alice), marketNow(), ch.riskParams(), w);
    }

    function _ceilDiv(int256 a, int256 b) internal pure returns (int256) {
        return a % b == 0 ? a / b : a / b + 1;
    }
}

/// @notice A token whose transfers report failure instead of reverting.
contract FalseToken {
    uint8 public constant decimals = 6;
    mapping(address => uint256) public balanceOf;

    function mint(address to, uint256 amount) external {
        balanceOf[to] += amount;
    }

    function transfer(address, uint256) external pure returns (bool) {
        return false;
    }

    function transferFrom(address, address, uint256) external pure returns (bool) {
        return false;
    }
}

/// @notice The remaining errors, the configuration checks, rounding against the liquidated
/// account and the events the keeper indexes.
contract ClearingHouseMoreTest is ClearingHouseFixture {
    uint256 internal alice;
    uint256 internal bob;

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 400e6);
        bob = fund(BOB, 0, 100_000e6);
    }

    /// The backstop's book is keyed by instrument (the quantity in the instrument's word, one
    /// entry per instrument in its list): hand-overs add up in the one entry, an entry leaves
    /// the list when the book returns to zero (swap-and-pop moves the others) and comes back
    /// with the next hand-over; the instrument's fields never see the book; portfolioOf, the
    /// verifier's view, reads it.
    function test_backstopBookIsKeyedByInstrument() public {
        uint256 carol = fund(CAROL, 0, 100_000e6);
        // The backstop's book: btcFut first, ethPerp second; closing btcFut moves ethPerp's
        // entry to index 0.
        doTrade(bk, carol, btcFut, 1e16, markPrice(btcFut));
        doTrade(bk, carol, ethPerp, 2e17, 2000e18);
        doTrade(carol, bk, btcFut, 1e16, markPrice(btcFut));
        (uint256[] memory ids, int256[] memory q) = adm.positionsOf(bk);
        assertEq(ids.length, 1, "one position left");
        assertEq(ids[0], ethPerp, "ethPerp moved to index 0");
        bytes32 fields = _instrumentFields(ethPerp);

        uint256 dave = fund(registerKey(0xDA7E), 0, 400e6);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        doTrade(dave, bob, ethPerp, 1e18, 2000e18);
        setEth(1850e8);
        _liquidateAll(alice);
        _liquidateAll(dave);
        (ids, q) = adm.positionsOf(bk);
        assertEq(ids.length, 1, "still one entry");
        assertEq(ids[0], ethPerp, "same instrument");
        assertEq(q[0], 2e17 + 2e18, "the backstop holds the sum of what was handed over");
        assertEq(ch.portfolioOf(bk).positions[0].quantity, 2e17 + 2e18, "portfolioOf reads the book");
        (, q) = adm.positionsOf(alice);
        assertEq(q.length, 0, "alice flat");
        assertTrue(_instrumentFields(ethPerp) == fields, "instrument fields unchanged by the book");

        // The backstop sells its whole book: the entry goes, the next hand-over brings it back.
        depositTo(BOB, bob, 0, 100_000e6);
        doTrade(bob, bk, ethPerp, 2e17 + 2e18, 1850e18);
        (ids,) = adm.positionsOf(bk);
        assertEq(ids.length, 0, "no entry at zero");
        uint256 erin = fund(registerKey(0xE1217), 0, 400e6);
        setEth(2000e8);
        doTrade(bob, erin, ethPerp, 1e18, 2000e18); // erin short
        setEth(2150e8);
        _liquidateAll(erin);
        (ids, q) = adm.positionsOf(bk);
        assertEq(ids.length, 1, "the entry is back");
        assertEq(q[0], -1e18, "erin's short");
        _newBackstopTakesOverNothing();
    }

    /// A new backstop: the former backstop's book becomes ordinary positions of its account
    /// (same quantities, the instruments' books back to zero), the new one starts from zero.
    function _newBackstopTakesOverNothing() internal {
        uint256 bk2 = ch.accountId(CAROL, 7);
        vm.prank(GOV);
        adm.setBackstop(bk2); // an empty account
        (uint256[] memory ids, int256[] memory q) = adm.positionsOf(bk);
        assertEq(q[0], -1e18, "the former backstop keeps its position");
        depositTo(CAROL, bk2, 0, 100_000e6);
        setEth(2000e8);
        doTrade(bk2, bob, btcFut, 1e16, markPrice(btcFut));
        uint256 fred = fund(registerKey(0xF7ED), 0, 400e6);
        doTrade(fred, bob, ethPerp, 1e18, 2000e18);
        setEth(1850e8);
        _liquidateAll(fred);
        (ids, q) = adm.positionsOf(bk2);
        assertEq(ids.length, 2, "btcFut, then the new backstop's own ethPerp");
        assertEq(ids[0], btcFut, "btcFut untouched");
        assertEq(q[0], 1e16, "btcFut quantity untouched");
        assertEq(ids[1], ethPerp, "instrument");
        assertEq(q[1], 1e18, "quantity");
        (ids, q) = adm.positionsOf(bk);
        assertEq(q[0], -1e18, "the former backstop's position untouched");
        // The former backstop's position is an ordinary slot: it trades down like any account's.
        doTrade(bk, bob, ethPerp, 1e18, 1850e18);
        (ids,) = adm.positionsOf(bk);
        assertEq(ids.length, 0, "the former backstop closed its position");
        (ids, q) = adm.positionsOf(bk2);
        assertEq(q[1], 1e18, "the new backstop's book unchanged by it");
    }

    /// A backstop's position in an expired instrument is realised at its payoff like any other:
    /// the cash is exact, the entry and the instrument's book go back to zero.
    function test_backstopBookSettles() public {
        doTrade(alice, bob, btcFut, 1e16, markPrice(btcFut));
        setBtc(21_000e8); // alice's equity down to 10 USDC: below MM
        _liquidateAll(alice);
        (uint256[] memory ids, int256[] memory q) = adm.positionsOf(bk);
        assertEq(ids.length, 1, "the backstop holds alice's btcFut");
        assertEq(q[0], 1e16, "all of it");
        vm.warp(expiry);
        refreshFeeds();
        settle(btcFut);
        int256 price = ch.settlementPrice(btcFut);
        int256 balBefore = ch.balanceOf(bk, 0);
        assertEq(ch.settleAccount(bk), 1, "one position settled");
        assertEq(ch.balanceOf(bk, 0), balBefore + (1e16 * price) / 1e18, "exact payoff");
        (ids,) = adm.positionsOf(bk);
        assertEq(ids.length, 0, "no entry left");
    }

    /// The instrument's word stores the expiry in 40 bits: a later expiry is refused at listing.
    function test_listInstrumentExpiryBound() public {
        vm.startPrank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidInstrument.selector, 3));
        adm.listInstrument(0, 1, 2000e18, uint64(1) << 40);
        uint256 id = adm.listInstrument(0, 1, 2000e18, (uint64(1) << 40) - 1);
        vm.stopPrank();
        (,,,, uint64 exp, uint128 strike) = ch.instruments(id);
        assertEq(exp, (uint64(1) << 40) - 1, "largest expiry");
        assertEq(strike, 2000e18, "strike");
    }

    /// The insurance fund, totalBounties and a liquidator's bounty are stored plus one (no zero
    /// -> non-zero write in a penalty after the first); the getters return the amounts, zero
    /// included, before anything and after a claim of everything.
    function test_bountyStoredPlusOneReadsAsAmount() public {
        assertEq(ch.insuranceFund(), 0, "fund starts at zero");
        assertEq(ch.totalBounties(), 0, "no bounty yet");
        assertEq(ch.bounties(LIQ), 0, "never credited");
        vm.prank(GOV);
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 5e17, 1 hours, 3e18, 3e18));
        uint256 dave = fund(registerKey(0xDA7E), 0, 400e6);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        doTrade(dave, bob, ethPerp, 1e18, 2000e18);
        setEth(1850e8);
        _liquidateAll(alice);
        assertEq(ch.bounties(LIQ), 3e18, "credited");
        assertEq(ch.totalBounties(), 3e18, "total");
        int256 fundAfterOne = ch.insuranceFund();
        assertTrue(fundAfterOne > 0, "insurance share");
        vm.prank(LIQ);
        adm.claimBounty();
        assertEq(int256(usdc.balanceOf(LIQ)), 3e6, "paid in whole units");
        assertEq(ch.bounties(LIQ), 0, "claimed to zero");
        assertEq(ch.totalBounties(), 0, "total back to zero");
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NothingToClaim.selector, LIQ));
        adm.claimBounty();
        _liquidateAll(dave);
        assertEq(ch.bounties(LIQ), 3e18, "credited again");
        assertEq(ch.totalBounties(), 3e18, "total again");
        assertEq(ch.insuranceFund(), 2 * fundAfterOne, "the same share again");
        assertEq(heldWad(0), _heldByBooks(dave), "tokens held == balances + insurance + bounties");
    }

    function _heldByBooks(uint256 dave) internal view returns (int256 sum) {
        uint256[5] memory accts = [alice, bob, dave, bk, ch.accountId(CAROL, 0)];
        for (uint256 i; i < accts.length; ++i) {
            sum += ch.balanceOf(accts[i], 0);
        }
        sum += ch.insuranceFund() + ch.totalBounties();
    }

    function _instrumentFields(uint256 id) internal view returns (bytes32) {
        (uint8 u, uint8 kind, bool listed, bool settled, uint64 exp, uint128 strike) = ch.instruments(id);
        return keccak256(abi.encode(u, kind, listed, settled, exp, strike));
    }

    function _liquidateAll(uint256 a) internal {
        MarginResult memory r = fullCheckNow(a);
        uint64 n = nonceOf(a);
        vm.prank(LIQ);
        ch.liquidate(a, n, r.witness, 1e18);
    }

    function test_backstopNotSet() public {
        vm.prank(GOV);
        adm.setBackstop(0);
        uint256[] memory w = new uint256[](2);
        vm.expectRevert(IClearingHouseErrors.BackstopNotSet.selector);
        ch.liquidate(alice, 1, w, 1e18);
        vm.expectRevert(IClearingHouseErrors.BackstopNotSet.selector);
        ch.resolveBadDebt(alice);
    }

    function test_tokenReportingFailure() public {
        FalseToken t = new FalseToken();
        vm.prank(GOV);
        adm.configureMarkets(new ClearingHouseBase.UnderlyingConfig[](0), _one(address(t)), abi.encode(_threeAssets()));
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.TokenTransferFailed.selector, address(t)));
        ch.deposit(alice, 2, 1);
    }

    function test_configurationChecks() public {
        vm.startPrank(GOV);
        // setUnderlying only replaces an existing underlying's feeds.
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnderlyingNotConfigured.selector, 2));
        adm.setUnderlying(2, ethFeed, ethVol, 1 hours, 1 days);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 2, int256(10), int256(20), int256(type(int32).max)));
        adm.setUnderlying(0, ethFeed, ethVol, 20, 10);
        ClearingHouseBase.UnderlyingConfig[] memory none = new ClearingHouseBase.UnderlyingConfig[](0);
        MockERC20 big = new MockERC20("Big", "BIG", 19);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 3, int256(19), int256(0), int256(18)));
        adm.configureMarkets(none, _one(address(big)), abi.encode(_threeAssets()));
        // Asset count must match the parameters; asset 0 must be the stablecoin.
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ConfigMismatch.selector, 4, 3, 2));
        adm.configureMarkets(none, _one(address(weth)), abi.encode(defaultParams()));
        vm.stopPrank();
        assertEq(adm.assetCount(), 2, "nothing appended");
    }

    function test_stableFirstAndBoundsChecks() public {
        RiskParams memory p = defaultParams();
        (p.assets[0], p.assets[1]) = (p.assets[1], p.assets[0]);
        vm.startPrank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ConfigMismatch.selector, 5, 0, 2));
        adm.setRiskParams(abi.encode(p));
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 4, int256(2), type(int256).min, int256(1)));
        adm.setRiskBounds(0, ClearingHouseBase.RiskBounds(2, 1, 0, 0));
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 5, int256(2), type(int256).min, int256(1)));
        adm.setRiskBounds(0, ClearingHouseBase.RiskBounds(0, 0, 2, 1));
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnderlyingNotConfigured.selector, 9));
        adm.setRiskBounds(9, ClearingHouseBase.RiskBounds(0, 0, 0, 0));
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 9, int256(2e18), int256(0), int256(1e18)));
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 2e18, 1 hours, 0, 0));
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 10, int256(2), int256(0), int256(1)));
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 0, 1 hours, 2, 1));
        vm.stopPrank();
    }

    function _one(address token) internal pure returns (address[] memory a) {
        a = new address[](1);
        a[0] = token;
    }

    /// The fixture's parameters with a third, stable asset.
    function _threeAssets() internal pure returns (RiskParams memory p) {
        p = defaultParams();
        AssetParams[] memory assets = new AssetParams[](3);
        (assets[0], assets[1]) = (p.assets[0], p.assets[1]);
        assets[2] = AssetParams(0, PortfolioMargin.STABLE);
        p.assets = assets;
    }

    function test_ownerAndRoles() public {
        vm.prank(GOV);
        adm.setOwner(CAROL);
        assertTrue(ch.owner() == CAROL, "owner moved");
        vm.prank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotOwner.selector, GOV));
        adm.setRate(1e16);
        vm.startPrank(CAROL);
        adm.setRate(1e16);
        adm.setRole(ch.MATCHER(), MATCH, false);
        vm.stopPrank();
        assertEq(ch.rate(), 1e16, "rate");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotMatcher.selector, MATCH));
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
    }

    function test_adminModuleCalledDirectlyTouchesNothing() public {
        ClearingHouseAdmin direct = ClearingHouseAdmin(ch.admin());
        vm.prank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotOwner.selector, GOV));
        direct.setBackstop(1); // its own storage has no owner
        assertEq(ch.backstop(), bk, "clearing house unchanged");
    }

    function test_recalibrationModuleCalledDirectlyTouchesNothing() public {
        ClearingHouseRecalibration direct = ClearingHouseRecalibration(ClearingHouseAdmin(address(ch)).recalibration());
        vm.prank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotOwner.selector, GOV));
        direct.setRecalibrationConfig(60, 0.1e18, 0.2e18); // its own storage has no owner
        vm.prank(RISKOP);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotRiskOperator.selector, RISKOP));
        direct.queueRecalibration(hex"00");
        (uint32 delay,,) = ClearingHouseRecalibration(address(ch)).recalibrationConfig();
        assertEq(direct.recalibrationCount(), 0, "module's own storage untouched");
        assertEq(ClearingHouseRecalibration(address(ch)).recalibrationCount(), 0, "clearing house unchanged");
        assertEq(delay, 0, "clearing house config unchanged");
    }

    /// Positions go to the backstop at marks rounded to TICK against the account: a short
    /// option is bought back at the ceiling of its (non-tick) mark.
    function test_takeoverRoundsAgainstTheAccount() public {
        uint256 carol = fund(CAROL, 0, 1_600e6);
        doTrade(bob, carol, ethCall, 5e18, 40e18); // carol short 5 calls
        setEth(2500e8);
        MarginResult memory r = fullCheckNow(carol);
        assertEq(uint256(r.state), 2, "below MM");
        (, int256[] memory marks) = verifier.witnessCheckWithMarks(ch.portfolioOf(carol), marketNow(), ch.riskParams(), r.witness);
        assertTrue(marks[0] % 1e10 != 0, "the mark is not on a tick");
        int256 price = marks[0] - (marks[0] % 1e10) + 1e10;
        int256 before = ch.balanceOf(carol, 0);
        uint64 n = nonceOf(carol);
        vm.prank(LIQ);
        ch.liquidate(carol, n, r.witness, 1e18);
        int256 penalty = ch.insuranceFund() + ch.bounties(LIQ);
        assertEq(ch.balanceOf(carol, 0), before - 5 * price - penalty, "bought back at the ceiling tick");
    }

    function test_eventsForTheKeeper() public {
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.Trade(1, alice, bob, ethPerp, 1e18, 2000e18, nonceOf(alice) + 1, nonceOf(bob) + 1);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1850e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.recordLogs();
        vm.prank(LIQ);
        ch.liquidate(alice, n, r.witness, 1e18);
        // One Liquidation event carries the positions handed over: alice's long at 1850.
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 found;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] != IClearingHouseEvents.Liquidation.selector) continue;
            ++found;
            assertEq(uint256(logs[i].topics[1]), alice, "indexed account");
            (,,,,,,, uint256[] memory taken, int256[] memory prices) = abi.decode(
                logs[i].data, (uint64, int256, int256, int256, int256, int256, int256, uint256[], int256[])
            );
            assertEq(taken.length, 1, "one position moved");
            assertEq(taken[0] >> 128, ethPerp, "instrument");
            assertEq(int256(int128(uint128(taken[0]))), 1e18, "quantity");
            assertEq(prices[0], 1850e18, "price");
        }
        assertEq(found, 1, "one Liquidation event");
        usdc.mint(ALICE, 5e6);
        vm.startPrank(ALICE);
        usdc.approve(address(ch), 5e6);
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.Deposit(alice, 0, ALICE, 5e18, nonceOf(alice) + 1);
        ch.deposit(alice, 0, 5e6);
        vm.stopPrank();
    }

    function test_viewsDescribeTheAccount() public {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        Market memory m = ch.marketOf(alice);
        assertEq(m.spots[0], 2000e18, "ETH spot in WAD");
        assertEq(m.spots[1], 1e18, "unused underlying: placeholder");
        assertEq(m.vols[0], 6e17, "ETH vol in WAD");
        Portfolio memory pf = ch.portfolioOf(alice);
        assertEq(pf.positions[0].quantity, 1e18, "quantity");
        assertEq(pf.collateral[0], 400e18 - 2000e18, "cash");
        MarginResult memory r = ch.marginOf(alice);
        MarginResult memory r2 = fullCheckNow(alice);
        assertEq(r.requirement, r2.requirement, "same check");
    }
}
