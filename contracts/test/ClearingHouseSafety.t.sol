// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {IClearingHouseErrors, IClearingHouseEvents} from "../src/interfaces/IClearingHouse.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {MockERC20} from "../src/token/MockERC20.sol";
import {MockAggregator} from "../src/oracle/MockAggregator.sol";
import {AggregatorV3Interface} from "../src/interfaces/AggregatorV3Interface.sol";
import {NonPositivePrice, IncompleteRound} from "../src/oracle/OracleLib.sol";
import {
    MarginResult,
    Portfolio,
    Position,
    RiskParams,
    UnderlyingParams,
    AssetParams,
    PortfolioMargin
} from "../src/margin/PortfolioMargin.sol";
import {MarginPresets} from "./utils/MarginPresets.sol";

/// @notice The protocol's safety rules, each tested where it bites: settled instruments valued
/// at their payoff without risk, bad debt only at negative equity, an insurance fund that
/// never pays a liquidator, a margin-checked backstop and bounded liquidation config, cured
/// flags cleared by money coming in, atomic market configuration, cures open while paused, and
/// a settlement round the caller names but cannot choose.
contract ClearingHouseSafetyTest is ClearingHouseFixture {
    address internal DAVE;
    uint256 internal alice;
    uint256 internal bob;

    function setUp() public override {
        super.setUp();
        DAVE = registerKey(0xDA7E);
        bob = fund(BOB, 0, 1_000_000e6);
    }

    function _insure(uint256 usdc6) internal {
        vm.startPrank(CAROL);
        usdc.mint(CAROL, usdc6);
        usdc.approve(address(ch), usdc6);
        adm.depositInsurance(usdc6);
        vm.stopPrank();
    }

    /// Warps to the dated instruments' expiry, publishes ETH and BTC there and settles `id`.
    function _expireAndSettle(uint256 id, int256 eth8, int256 btc8) internal {
        vm.warp(expiry);
        setEth(eth8);
        setBtc(btc8);
        settle(id);
    }

    /// The account's storage positions as a portfolio, settled ones included at the live spot:
    /// how every check valued it before settled positions were folded.
    function _unfoldedPortfolio(uint256 a) internal view returns (Portfolio memory pf) {
        (uint256[] memory ids, int256[] memory q) = adm.positionsOf(a);
        pf.positions = new Position[](ids.length);
        for (uint256 i; i < ids.length; ++i) {
            (uint8 u, uint8 kind,,, uint64 exp, uint128 strike) = ch.instruments(ids[i]);
            pf.positions[i] = Position(u, kind, int256(uint256(strike)), exp, q[i], 0);
        }
        pf.collateral = new int256[](2);
        pf.collateral[0] = ch.balanceOf(a, 0);
        pf.collateral[1] = ch.balanceOf(a, 1);
    }

    // ================================================================== settled positions

    /// A settled future is riskless cash. Before folding, a -4% BTC move after settlement put a
    /// healthy account below IM (flaggable) and -10% below MM (liquidatable at once).
    function test_settledPositionCarriesNoScenarioRisk() public {
        alice = fund(ALICE, 0, 11_900e6); // IM of 1 BTC future at 60,000 = 11,812.5
        doTrade(alice, bob, btcFut, 1e18, 60_000e18);
        _expireAndSettle(btcFut, 2000e8, 60_000e8);
        assertEq(ch.settlementPrice(btcFut), 60_000e18, "settled at 60,000");

        setBtc(57_600e8); // -4%
        assertEq(uint256(verifier.fullCheck(_unfoldedPortfolio(alice), marketNow(), ch.riskParams()).state), 1, "unfolded: below IM");
        MarginResult memory r = ch.marginOf(alice);
        assertEq(uint256(r.state), 0, "healthy");
        assertEq(r.equity, 11_900e18, "equity = deposit + settled payoff - price paid");
        assertEq(r.requirement, 0, "no scenario risk");
        assertEq(ch.portfolioOf(alice).positions.length, 0, "folded out of the portfolio");
        (uint256[] memory ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 1, "storage unchanged until settleAccount");
        uint64 n = nonceOf(alice);
        uint256[] memory w = fullCheckNow(alice).witness;
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.AccountNotBelowInitialMargin.selector, alice, r.equity, int256(0)));
        ch.flag(alice, n, w);

        setBtc(54_000e8); // -10%
        assertEq(uint256(verifier.fullCheck(_unfoldedPortfolio(alice), marketNow(), ch.riskParams()).state), 2, "unfolded: below MM");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotLiquidatable.selector, alice, r.equity, int256(0), int256(0)));
        ch.liquidate(alice, n, w, 1e18);
    }

    /// A settled position needs no oracle: the whole equity can be withdrawn with the BTC feed
    /// dead (before folding, the check read the live BTC price of a settled future).
    function test_settledPositionNeedsNoOracle() public {
        alice = fund(ALICE, 0, 11_900e6);
        doTrade(alice, bob, btcFut, 1e18, 60_000e18);
        _expireAndSettle(btcFut, 2000e8, 61_000e8);
        btcFeed.setRound(btcFeed.roundId() + 1, -1, block.timestamp, block.timestamp, btcFeed.roundId() + 1); // dead
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 12_900e6); // 11,900 + 1,000 of settled gain
        assertEq(ch.marginOf(alice).equity, 0, "everything out");
    }

    /// A settled put leg no longer hedges a live perp: the put settled worthless, so the
    /// intrinsic value a later drop gives it is equity that does not exist.
    function test_settledLegIsNoPhantomHedge() public {
        alice = fund(ALICE, 0, 5000e6);
        doTrade(alice, bob, ethPut, 10e18, 75e18); // 10 puts K=1800
        doTrade(alice, bob, ethPerp, 10e18, 2000e18); // + 10 ETH perp
        _expireAndSettle(ethPut, 2000e8, 60_000e8);
        assertEq(ch.settlementPrice(ethPut), 2000e18, "settled out of the money");

        setEth(1600e8);
        MarginResult memory unfolded = verifier.fullCheck(_unfoldedPortfolio(alice), marketNow(), ch.riskParams());
        MarginResult memory r = fullCheckNow(alice);
        assertEq(unfolded.equity - r.equity, 2000e18, "10 x 200 of intrinsic value that does not exist");
        assertTrue(unfolded.state != 2, "unfolded: not liquidatable");
        assertEq(r.equity, 5000e18 - 750e18 - 4000e18, "deposit - premium - perp loss");
        assertEq(uint256(r.state), 2, "really below MM");
        // The phantom equity cannot be withdrawn ...
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InsufficientMargin.selector, alice, r.equity - 1e18, r.initialMargin));
        ch.withdraw(alice, 0, 1e6);
        // ... and the account is liquidated; the settled put is realised first, not handed over.
        uint64 n = nonceOf(alice);
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.PositionSettled(alice, ethPut, 10e18, 0, n + 1);
        vm.prank(LIQ);
        ch.liquidate(alice, n, r.witness, 1e18);
        (uint256[] memory ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 0, "settled put realised, perp handed over");
        (uint256[] memory bkIds,) = adm.positionsOf(bk);
        for (uint256 i; i < bkIds.length; ++i) {
            assertTrue(bkIds[i] != ethPut, "the backstop never takes a settled position");
        }
        assertEq(nonceOf(alice), n + 2, "settlement and liquidation each bump the nonce");
    }

    /// A settled short leg that lost is a real loss, counted at once (before folding it was
    /// valued at a live spot that had come back).
    function test_settledLossIsCountedAtOnce() public {
        alice = fund(ALICE, 0, 5000e6);
        doTrade(bob, alice, ethCall, 10e18, 40e18); // alice short 10 calls K=2200, +400
        _expireAndSettle(ethCall, 2400e8, 60_000e8); // settled 200 in the money: -2000
        setEth(2000e8); // back below the strike: the live spot says the calls are worthless
        MarginResult memory unfolded = verifier.fullCheck(_unfoldedPortfolio(alice), marketNow(), ch.riskParams());
        MarginResult memory r = ch.marginOf(alice);
        assertEq(r.equity, 5000e18 + 400e18 - 2000e18, "the settled loss");
        assertEq(r.requirement, 0, "and nothing else at risk");
        assertEq(unfolded.equity - r.equity, 2000e18, "unfolded: the loss hidden");
        // Exactly the real equity can leave, not a wei more.
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InsufficientMargin.selector, alice, -int256(1e18), int256(0)));
        ch.withdraw(alice, 0, 3401e6);
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 3400e6);
    }

    // ================================================================== bad debt

    /// 100 WETH and 1 USDC borrowed against it is a loan, not bad debt (before: the WETH was
    /// sold to the backstop at a 10% haircut for 1 USDC of debt).
    function test_resolveBadDebtRefusesASolventLoan() public {
        alice = fund(ALICE, 1, 100e18);
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 1e6); // cash -1, backed by the WETH
        assertEq(ch.balanceOf(alice, 0), -1e18, "a loan");
        int256 equity = fullCheckNow(alice).equity;
        assertEq(equity, 180_000e18 - 1e18, "100 WETH at 2000 after 10% haircut, less the loan");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NoBadDebt.selector, alice, equity));
        ch.resolveBadDebt(alice);
        assertEq(ch.balanceOf(alice, 1), 100e18, "collateral untouched");
    }

    /// A negative cash balance covered by a settled gain is no bad debt either; the gain is
    /// realised and the call reverts.
    function test_resolveBadDebtCountsSettledGains() public {
        alice = fund(ALICE, 0, 11_900e6);
        doTrade(alice, bob, btcFut, 1e18, 60_000e18); // cash 11,900 - 60,000 < 0
        _expireAndSettle(btcFut, 2000e8, 60_000e8);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NoBadDebt.selector, alice, int256(11_900e18)));
        ch.resolveBadDebt(alice);
    }

    /// An account under water only through a settled loss is resolved without a settleAccount
    /// call first (before: HasOpenPositions until someone settled it).
    function test_resolveBadDebtRealisesSettledLosses() public {
        alice = fund(ALICE, 0, 5000e6);
        doTrade(bob, alice, ethCall, 10e18, 40e18); // short 10 calls, +400
        _insure(100e6);
        _expireAndSettle(ethCall, 3000e8, 60_000e8); // -8000: equity 5400 - 8000 = -2600
        assertEq(ch.marginOf(alice).equity, -2600e18, "under water");
        ch.resolveBadDebt(alice);
        assertEq(ch.balanceOf(alice, 0), 0, "debt cleared");
        assertEq(ch.insuranceFund(), 0, "insurance first");
        assertEq(ch.totalSocialisedLoss(), 2500e18, "rest socialised");
        (uint256[] memory ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 0, "settled position realised");
    }

    /// A live position still blocks resolution, whatever the equity.
    function test_resolveBadDebtNeedsNoLivePosition() public {
        alice = fund(ALICE, 0, 400e6);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1000e8);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.HasOpenPositions.selector, alice, 1));
        ch.resolveBadDebt(alice);
    }

    // ================================================================== insurance fund

    /// One owner on both sides of a dust book (trader DAVE, counterparty CAROL, liquidator LIQ,
    /// all the same person): the full close of the insolvent book earns no top-up and the fund
    /// does not fall (before: minBounty from the fund, for every such book).
    function test_dustBookSelfLiquidationCollectsNoTopUp() public {
        _insure(100e6);
        uint256 dust = fund(DAVE, 0, 4e6);
        uint256 other = fund(CAROL, 0, 1000e6);
        doTrade(dust, other, ethPerp, 1e16, 2000e18); // 0.01 ETH: IM 3.94
        setEth(1500e8); // -5 on a 4 USDC book
        MarginResult memory r = fullCheckNow(dust);
        assertTrue(r.equity <= 0, "insolvent");
        uint64 n = nonceOf(dust);
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(dust, n, r.witness, 1e18);
        assertEq(bounty, 0, "no bounty");
        assertEq(ch.bounties(LIQ), 0, "nothing credited");
        assertEq(ch.insuranceFund(), 100e18, "the fund did not fall");
    }

    /// The fund falls only by bad debt absorbed: exactly what resolveBadDebt reports.
    function test_insuranceFallsOnlyByBadDebt() public {
        _insure(100e6);
        alice = fund(ALICE, 0, 400e6);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1500e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        ch.liquidate(alice, n, r.witness, 1e18);
        assertEq(ch.insuranceFund(), 100e18, "liquidation paid nothing out");
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.BadDebtResolved(alice, 100e18, 100e18, 0);
        ch.resolveBadDebt(alice);
        assertEq(ch.insuranceFund(), 0, "absorbed the debt");
    }

    // ================================================================== backstop

    /// The backstop's owner cannot take out more than its margin allows (before: no check).
    function test_backstopWithdrawalIsMarginChecked() public {
        alice = fund(ALICE, 0, 400e6);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1850e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        ch.liquidate(alice, n, r.witness, 1e18); // the backstop holds 1 ETH long, paid 1850
        MarginResult memory b = fullCheckNow(bk);
        uint256 allowed = uint256((b.equity - b.initialMargin) / 1e12);
        int256 tooMuch = int256(allowed + 1) * 1e12;
        bytes memory err = abi.encodeWithSelector(
            IClearingHouseErrors.InsufficientMargin.selector, bk, b.equity - tooMuch, b.initialMargin
        );
        vm.prank(BACKSTOP_OWNER);
        vm.expectRevert(err);
        ch.withdraw(bk, 0, allowed + 1);
        uint256 bkSub = ch.accountId(BACKSTOP_OWNER, 1);
        vm.prank(BACKSTOP_OWNER);
        vm.expectRevert(err);
        ch.transferCollateral(bk, bkSub, 0, tooMuch);
        // What its margin allows still goes.
        vm.prank(BACKSTOP_OWNER);
        ch.withdraw(bk, 0, allowed);
        assertEq(uint256(fullCheckNow(bk).state), 0, "left at IM");
    }

    /// The backstop's own trades are margin-checked too.
    function test_backstopTradeIsMarginChecked() public {
        // What the backstop's book would be after buying 10,000 ETH perp at 2000.
        Portfolio memory after_;
        after_.positions = new Position[](1);
        after_.positions[0] = Position(0, 0, 0, 0, 10_000e18, 0);
        after_.collateral = new int256[](2);
        after_.collateral[0] = 1_000_000e18 - 20_000_000e18;
        MarginResult memory r = verifier.fullCheck(after_, marketNow(), ch.riskParams());
        assertTrue(r.state != 0, "1M USDC cannot carry 10,000 ETH");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InsufficientMargin.selector, bk, r.equity, r.initialMargin));
        doTrade(bk, bob, ethPerp, 10_000e18, 2000e18);
        doTrade(bk, bob, ethPerp, 1e18, 2000e18); // within its margin
    }

    /// Only an empty account can be named the backstop (before: any account, which then
    /// escaped flags, liquidation and margin checks).
    function test_setBackstopRequiresAnEmptyAccount() public {
        alice = fund(ALICE, 0, 400e6);
        vm.startPrank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.BackstopNotEmpty.selector, alice));
        adm.setBackstop(alice);
        vm.stopPrank();
        // An account holding only a volatile asset is not empty either.
        uint256 carol = fund(CAROL, 1, 1e18); // WETH only
        vm.prank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.BackstopNotEmpty.selector, carol));
        adm.setBackstop(carol);
        uint256 fresh = ch.accountId(GOV, 7);
        vm.prank(GOV);
        adm.setBackstop(fresh);
        assertEq(ch.backstop(), fresh, "an empty account is accepted");
    }

    /// The old backstop becomes an ordinary account: margin-checked, flaggable.
    function test_formerBackstopIsAnOrdinaryAccount() public {
        uint256 fresh = ch.accountId(GOV, 7);
        vm.prank(GOV);
        adm.setBackstop(fresh);
        uint256[] memory w = new uint256[](2);
        uint64 n = nonceOf(bk);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.AccountNotBelowInitialMargin.selector, bk, int256(1_000_000e18), int256(0)));
        ch.flag(bk, n, w);
    }

    /// Every field of the liquidation config is bounded (before: no upper bound on the
    /// bounty, a zero grace period and a zero penalty were accepted).
    function test_liquidationConfigBounded() public {
        vm.startPrank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 8, int256(0), int256(1), int256(5e17)));
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(0, 5e17, 1 hours, 1e18, 1000e18));
        vm.expectRevert(
            abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 11, int256(1e22 + 1), int256(1e18), int256(1e22))
        );
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 5e17, 1 hours, 1e18, 1e22 + 1));
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 12, int256(0), int256(60), int256(7 days)));
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 5e17, 0, 1e18, 1000e18));
        vm.expectRevert(
            abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 12, int256(7 days + 1), int256(60), int256(7 days))
        );
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 5e17, 7 days + 1, 1e18, 1000e18));
        // The bounds themselves are accepted.
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e17, 1e18, 60, 1e22, 1e22));
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(1, 0, 7 days, 0, 0));
        vm.stopPrank();
    }

    // ================================================================== margin calls

    /// Alice long 1 ETH perp with 400 USDC, flagged at 1950 (below IM).
    function _flaggedAlice() internal returns (uint64 flagTime) {
        alice = fund(ALICE, 0, 400e6);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1950e8);
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 1, "below IM");
        uint64 n = nonceOf(alice);
        ch.flag(alice, n, r.witness);
        flagTime = flaggedAt(alice);
        assertTrue(flagTime != 0, "flagged");
    }

    /// A deposit that cures clears the flag; a later dip needs a new flag and a new grace
    /// period (before: the old flag stayed and the dip was liquidatable at once).
    function test_depositClearsCuredFlag() public {
        _flaggedAlice();
        usdc.mint(ALICE, 50e6);
        vm.startPrank(ALICE);
        usdc.approve(address(ch), 50e6);
        vm.expectEmit(true, true, true, false);
        emit IClearingHouseEvents.MarginCallCleared(alice, 0, 0);
        ch.deposit(alice, 0, 50e6); // equity 400 >= IM 384
        vm.stopPrank();
        assertEq(uint256(flaggedAt(alice)), 0, "cleared by the deposit");
        vm.warp(block.timestamp + 2 hours); // the old grace period is long over
        setEth(1920e8); // below IM again (equity 370 < IM 378), above MM
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 1, "below IM");
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotLiquidatable.selector, alice, r.equity, r.requirement, r.initialMargin));
        ch.liquidate(alice, n, r.witness, 1e18);
        ch.flag(alice, n, r.witness); // a new margin call ...
        vm.warp(block.timestamp + 1 hours - 1);
        refreshFeeds();
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotLiquidatable.selector, alice, r.equity, r.requirement, r.initialMargin));
        ch.liquidate(alice, n, r.witness, 1e18);
        vm.warp(block.timestamp + 1); // ... and its full grace period
        refreshFeeds();
        vm.prank(LIQ);
        ch.liquidate(alice, n, r.witness, 1e18);
    }

    /// A deposit that does not cure keeps the flag and still succeeds.
    function test_depositThatDoesNotCureKeepsTheFlag() public {
        uint64 t = _flaggedAlice();
        depositTo(ALICE, alice, 0, 1e6);
        assertEq(uint256(flaggedAt(alice)), uint256(t), "still flagged");
        assertEq(ch.balanceOf(alice, 0), 401e18 - 2000e18, "credited");
        // Nor does a dead oracle block it.
        ethFeed.setRound(ethFeed.roundId() + 1, 0, block.timestamp, block.timestamp, ethFeed.roundId() + 1);
        depositTo(ALICE, alice, 0, 100e6);
        assertEq(uint256(flaggedAt(alice)), uint256(t), "still flagged: the check could not run");
    }

    /// Collateral moved into a flagged sub-account clears its cured flag too.
    function test_incomingTransferClearsCuredFlag() public {
        fund(ALICE, 0, 10_000e6);
        alice = ch.accountId(ALICE, 0);
        uint256 iso = ch.accountId(ALICE, 1);
        vm.prank(ALICE);
        ch.transferCollateral(alice, iso, 0, 400e18);
        doTrade(iso, bob, ethPerp, 1e18, 2000e18);
        setEth(1950e8);
        MarginResult memory r = fullCheckNow(iso);
        uint64 n = nonceOf(iso);
        ch.flag(iso, n, r.witness);
        vm.prank(ALICE);
        ch.transferCollateral(alice, iso, 0, 100e18);
        assertEq(uint256(flaggedAt(iso)), 0, "cleared by the incoming transfer");
    }

    /// Clearing a flag is always announced: a flagged account that took its settled gain and
    /// holds no position is cleared by its next withdrawal with MarginCallCleared (before: the
    /// flag vanished without an event the keeper could index).
    function test_flagClearedByWithdrawalIsAnnounced() public {
        alice = fund(ALICE, 0, 11_900e6);
        doTrade(alice, bob, btcFut, 1e18, 60_000e18);
        setBtc(59_700e8); // equity 11,600 < IM 11,754
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 1, "below IM");
        uint64 n = nonceOf(alice);
        ch.flag(alice, n, r.witness);
        _expireAndSettle(btcFut, 2000e8, 59_700e8);
        ch.settleAccount(alice);
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.MarginCallCleared(alice, 11_599e18, 0);
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 1e6);
        assertEq(uint256(flaggedAt(alice)), 0, "cleared");
    }

    // ================================================================== configuration

    /// A new underlying and a new token arrive with their parameters in one call: in the same
    /// block a check of an account holding the token works and values it with its haircut.
    function test_configureMarketsLeavesNoWindow() public {
        MockAggregator solFeed = new MockAggregator(8, "SOL / USD", 150e8);
        MockAggregator solVol = new MockAggregator(8, "SOL IV", 8e7);
        MockERC20 wsol = new MockERC20("Wrapped SOL", "WSOL", 9);
        ClearingHouseBase.UnderlyingConfig[] memory us = new ClearingHouseBase.UnderlyingConfig[](1);
        us[0] = underlyingCfg(solFeed, solVol);
        address[] memory tokens = new address[](1);
        tokens[0] = address(wsol);
        RiskParams memory p = defaultParams();
        UnderlyingParams[] memory ups = new UnderlyingParams[](3);
        (ups[0], ups[1], ups[2]) = (p.underlyings[0], p.underlyings[1], MarginPresets.spanLike());
        AssetParams[] memory aps = new AssetParams[](3);
        (aps[0], aps[1], aps[2]) = (p.assets[0], p.assets[1], AssetParams(2e17, 2));
        (p.underlyings, p.assets) = (ups, aps);
        vm.prank(GOV);
        adm.configureMarkets(us, tokens, abi.encode(p));
        assertEq(adm.underlyingCount(), 3, "underlying added");
        assertEq(adm.assetCount(), 3, "asset added");
        assertEq(uint256(adm.assetConfig(2).underlying), 2, "moves with SOL");
        assertEq(uint256(adm.assetConfig(2).haircut), 2e17, "its haircut");
        // Same block: deposit, borrow against it, check it.
        alice = ch.accountId(ALICE, 0);
        wsol.mint(ALICE, 10e9);
        vm.startPrank(ALICE);
        wsol.approve(address(ch), 10e9);
        ch.deposit(alice, 2, 10e9);
        ch.withdraw(alice, 0, 100e6); // 10 SOL * 150 * 0.8 = 1200 of equity
        vm.stopPrank();
        assertEq(ch.marginOf(alice).equity, 1200e18 - 100e18, "valued after its haircut");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NoBadDebt.selector, alice, int256(1100e18)));
        ch.resolveBadDebt(alice);
    }

    /// The two-step forms are gone: adding a token alone is no function, adding an underlying
    /// through setUnderlying is refused (before: both opened a window where every check of
    /// the clearing house reverted ConfigMismatch).
    function test_noTwoStepMarketAddition() public {
        (bool ok,) = address(ch).call(abi.encodeWithSignature("addCollateral(address)", address(weth)));
        assertTrue(!ok, "addCollateral does not exist");
        vm.prank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnderlyingNotConfigured.selector, 2));
        adm.setUnderlying(2, ethFeed, ethVol, 1 hours, 1 days);
        assertEq(adm.underlyingCount(), 2, "unchanged");
        // Replacing an existing underlying's feeds is still one call.
        MockAggregator eth2 = new MockAggregator(8, "ETH / USD 2", 2100e8);
        vm.prank(GOV);
        adm.setUnderlying(0, eth2, ethVol, 1 hours, 1 days);
        alice = fund(ALICE, 0, 1000e6);
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        assertEq(ch.marketOf(alice).spots[0], 2100e18, "the new feed is read");
    }

    // ================================================================== pause

    /// While paused an owner can still cure: deposits (which clear a cured flag), clearFlag,
    /// insurance deposits and settlement stay open; withdrawals and transfers do not.
    function test_pauseKeepsTheCureOpen() public {
        _flaggedAlice();
        vm.prank(GUARD);
        adm.pause();
        depositTo(ALICE, alice, 0, 50e6);
        assertEq(uint256(flaggedAt(alice)), 0, "deposit while paused cleared the cured flag");
        // A flag cleared by clearFlag after a price recovery, also while paused.
        setEth(1900e8);
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        ch.flag(alice, n, r.witness);
        setEth(2000e8);
        ch.clearFlag(alice);
        assertEq(uint256(flaggedAt(alice)), 0, "clearFlag while paused");
        _insure(1e6);
        assertEq(ch.insuranceFund(), 1e18, "insurance deposit while paused");
        vm.prank(ALICE);
        vm.expectRevert(IClearingHouseErrors.ProtocolPaused.selector);
        ch.withdraw(alice, 0, 1);
        uint256 iso = ch.accountId(ALICE, 1);
        vm.prank(ALICE);
        vm.expectRevert(IClearingHouseErrors.ProtocolPaused.selector);
        ch.transferCollateral(alice, iso, 0, 1);
    }

    /// While paused the system's own protection goes on: a flag's grace period runs (the
    /// liquidation after it lands at once), the liquidator claims its bounty, and an account
    /// under water is resolved. A pause never freezes an insolvent book in place.
    function test_pauseLeavesLiquidationAndBadDebtOpen() public {
        uint64 flagTime = _flaggedAlice();
        vm.prank(GUARD);
        adm.pause();
        vm.warp(flagTime + 1 hours); // the grace period ran out during the pause
        refreshFeeds();
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 1, "still below IM");
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(alice, n, r.witness, 1e18);
        assertTrue(bounty > 0, "a bounty was credited");
        (uint256[] memory ids,) = adm.positionsOf(alice);
        assertEq(ids.length, 0, "liquidated while paused");
        uint256 before = usdc.balanceOf(LIQ);
        vm.prank(LIQ);
        adm.claimBounty();
        assertTrue(usdc.balanceOf(LIQ) > before, "bounty claimed while paused");

        // An account under water only through a settled loss, resolved while paused.
        vm.prank(GUARD);
        adm.unpause();
        uint256 carol = fund(CAROL, 0, 5000e6);
        doTrade(bob, carol, ethCall, 10e18, markPrice(ethCall));
        vm.prank(GUARD);
        adm.pause();
        _expireAndSettle(ethCall, 3000e8, 60_000e8);
        assertTrue(ch.marginOf(carol).equity < 0, "under water");
        ch.resolveBadDebt(carol);
        assertEq(ch.balanceOf(carol, 0), 0, "debt cleared while paused");
    }

    /// The backstop is never flagged or liquidated: it takes books over, it is not one.
    function test_backstopCannotBeFlaggedOrLiquidated() public {
        MarginResult memory r = fullCheckNow(bk);
        uint64 n = nonceOf(bk);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.BackstopAccount.selector, bk));
        ch.flag(bk, n, r.witness);
        vm.prank(LIQ);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.BackstopAccount.selector, bk));
        ch.liquidate(bk, n, r.witness, 1e18);
    }

    function test_settlementWhilePaused() public {
        alice = fund(ALICE, 0, 11_900e6);
        doTrade(alice, bob, btcFut, 1e18, 60_000e18);
        vm.prank(GUARD);
        adm.pause();
        _expireAndSettle(btcFut, 2000e8, 61_000e8);
        assertEq(ch.settleAccount(alice), 1, "settled while paused");
        assertEq(ch.balanceOf(alice, 0), 12_900e18, "paid");
    }

    // ================================================================== settlement round

    /// Rounds around expiry: 2200 before, 2300 first after, 2500 later. Only the first round
    /// at or after expiry settles (before: whatever fresh price the caller waited for).
    function test_settlementRoundIsTheFirstAfterExpiry() public {
        vm.warp(expiry - 10);
        setEth(2200e8);
        uint80 before = ethFeed.roundId();
        vm.warp(expiry + 5);
        setEth(2300e8);
        uint80 first = ethFeed.roundId();
        vm.warp(expiry + 600);
        setEth(2500e8);
        uint80 later = ethFeed.roundId();
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.PriceBeforeExpiry.selector, ethCall, expiry - 10, expiry));
        adm.settleInstrument(ethCall, before);
        vm.expectRevert(
            abi.encodeWithSelector(IClearingHouseErrors.NotFirstRoundAfterExpiry.selector, ethCall, later, uint256(expiry + 5))
        );
        adm.settleInstrument(ethCall, later);
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.InstrumentSettled(ethCall, 2300e18);
        adm.settleInstrument(ethCall, first);
        assertEq(ch.settlementPrice(ethCall), 2300e18, "the first round's price, not the latest");
    }

    /// A round exactly at expiry counts; a stale feed does not block settlement of a past
    /// round (before: the latest price had to be fresh at call time).
    function test_settlementAtExpiryWithStaleFeed() public {
        vm.warp(expiry);
        setEth(2300e8);
        uint80 atExpiry = ethFeed.roundId();
        vm.warp(expiry + 3 days); // every feed stale
        adm.settleInstrument(ethPut, atExpiry);
        assertEq(ch.settlementPrice(ethPut), 2300e18, "settled at the round at expiry");
    }

    /// A gap before the named round: it cannot be shown to be the first after expiry, unless
    /// it is the first round of a phase (aggregator round 1).
    function test_settlementRoundPredecessorMissing() public {
        vm.warp(expiry + 5);
        uint80 r = ethFeed.roundId() + 2; // round r - 1 never written
        ethFeed.setRound(r, 2300e8, block.timestamp, block.timestamp, r);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.PreviousRoundMissing.selector, ethCall, r));
        adm.settleInstrument(ethCall, r);
        uint80 phase2 = (uint80(2) << 64) | 1;
        ethFeed.setRound(phase2, 2310e8, block.timestamp, block.timestamp, phase2);
        adm.settleInstrument(ethCall, phase2);
        assertEq(ch.settlementPrice(ethCall), 2310e18, "first round of a phase");
    }

    /// The named round must be a valid answer.
    function test_settlementRoundMustBeValid() public {
        vm.warp(expiry + 5);
        uint80 r = ethFeed.roundId();
        ethFeed.setRound(r + 1, 0, block.timestamp, block.timestamp, r + 1);
        vm.expectRevert(abi.encodeWithSelector(NonPositivePrice.selector, address(ethFeed), int256(0)));
        adm.settleInstrument(ethCall, r + 1);
        ethFeed.setRound(r + 2, 2300e8, block.timestamp, block.timestamp, r + 1);
        vm.expectRevert(abi.encodeWithSelector(IncompleteRound.selector, address(ethFeed), r + 2, r + 1));
        adm.settleInstrument(ethCall, r + 2);
        vm.expectRevert(abi.encodeWithSelector(MockAggregator.RoundNotFound.selector, r + 9));
        adm.settleInstrument(ethCall, r + 9);
    }

    /// A settlement price is floored to TICK (a feed with more precision than TICK).
    function test_settlementPriceFlooredToTick() public {
        MockAggregator fine = new MockAggregator(18, "ETH / USD fine", 2000e18);
        vm.prank(GOV);
        adm.setUnderlying(0, fine, ethVol, 1 hours, 1 days);
        vm.warp(expiry);
        fine.setAnswer(2300e18 + 123_456_789);
        adm.settleInstrument(ethCall, fine.roundId());
        assertEq(ch.settlementPrice(ethCall), 2300e18, "floored to TICK");
    }

    /// The mock keeps every round; setAnswer and setRound still move the latest one.
    function test_mockAggregatorKeepsRounds() public {
        MockAggregator f = new MockAggregator(8, "X", 1e8);
        f.setAnswer(2e8);
        f.setRound(7, 3e8, 5, 6, 7);
        (uint80 id, int256 a,, uint256 upd,) = f.getRoundData(1);
        assertEq(uint256(id), 1, "round 1");
        assertEq(a, 1e8, "kept");
        (, a,,,) = f.getRoundData(2);
        assertEq(a, 2e8, "round 2 kept");
        (id, a,, upd,) = f.latestRoundData();
        assertEq(uint256(id), 7, "latest");
        assertEq(a, 3e8, "latest answer");
        assertEq(upd, 6, "latest updatedAt");
        assertEq(f.answer(), 3e8, "getter");
        vm.expectRevert(abi.encodeWithSelector(MockAggregator.RoundNotFound.selector, uint80(3)));
        f.getRoundData(3);
    }
}
