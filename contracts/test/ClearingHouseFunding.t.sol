// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {IClearingHouseErrors} from "../src/interfaces/IClearingHouse.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {MarginResult} from "../src/margin/PortfolioMargin.sol";

/// @notice Perpetual funding: the index a poke moves (TWAP mark against the oracle, clamped by
/// the cap, rounded toward zero to TICK), accrual counted by every check, realisation on
/// touch, the backstop's accrual, and the rules of pokeFunding and setFundingCap.
contract ClearingHouseFundingTest is ClearingHouseFixture {
    uint256 internal alice;
    uint256 internal bob;
    uint256 internal carol;

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 1_000_000e6);
        bob = fund(BOB, 0, 1_000_000e6);
        carol = fund(CAROL, 0, 1_000_000e6);
        vm.prank(GOV);
        adm.setFundingCap(0.001e18); // 0.1% of spot per interval
    }

    function _index(uint256 id) internal view returns (int256 index) {
        (index,,,,) = adm.fundingState(id);
    }

    function _nextInterval() internal {
        vm.warp(block.timestamp + ch.FUNDING_INTERVAL());
        refreshFeeds();
    }

    function test_pokeRules() public {
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotPerpetual.selector, btcFut));
        adm.pokeFunding(btcFut);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotPerpetual.selector, ethCall));
        adm.pokeFunding(ethCall);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotPerpetual.selector, 99));
        adm.pokeFunding(99);
        uint256 next = T0 + ch.FUNDING_INTERVAL();
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.FundingTooEarly.selector, ethPerp, next));
        adm.pokeFunding(ethPerp);
        _nextInterval();
        assertEq(adm.pokeFunding(ethPerp), 0, "no trade yet: no funding");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.FundingTooEarly.selector, ethPerp, block.timestamp + 3600));
        adm.pokeFunding(ethPerp);
        // A stale oracle blocks the poke (strict age).
        vm.warp(block.timestamp + 2 hours);
        vm.expectRevert();
        adm.pokeFunding(ethPerp);
    }

    function test_capBounds() public {
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotOwner.selector, address(this)));
        adm.setFundingCap(0);
        int256 max = ch.MAX_FUNDING_CAP();
        vm.startPrank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 21, max + 1, 0, max));
        adm.setFundingCap(max + 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 21, -1, 0, max));
        adm.setFundingCap(-1);
        adm.setFundingCap(max);
        vm.stopPrank();
        assertEq(adm.fundingCap(), max, "cap set");
    }

    /// A trade 1 above spot for a whole interval: the index moves by exactly 1 (under the cap
    /// of 2 = 0.1% of 2000); the long pays q x 1, the short receives it, in every check.
    function test_premiumAccruesAndIsRealisedOnTouch() public {
        doTrade(alice, bob, ethPerp, 3e18, 2001e18);
        int256 eqA = fullCheckNow(alice).equity;
        int256 eqB = fullCheckNow(bob).equity;
        _nextInterval();
        assertEq(adm.pokeFunding(ethPerp), 1e18, "delta = mark - spot");
        assertEq(_index(ethPerp), 1e18, "index");
        assertEq(adm.accruedFunding(alice), -3e18, "the long pays q x delta");
        assertEq(adm.accruedFunding(bob), 3e18, "the short receives it");
        assertEq(fullCheckNow(alice).equity, eqA - 3e18, "accrued counts in equity (portfolioOf)");
        assertEq(fullCheckNow(bob).equity, eqB + 3e18, "accrued counts in equity (portfolioOf)");
        assertEq(ch.marginOf(alice).equity, eqA - 3e18, "marginOf too");
        // A touch (withdraw) realises it: the balance moves, the accrued goes to zero, equity
        // is unchanged by the realisation itself.
        int256 bal = ch.balanceOf(alice, 0);
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 1);
        assertEq(ch.balanceOf(alice, 0), bal - 3e18 - 1e12, "realised into the balance");
        assertEq(adm.accruedFunding(alice), 0, "nothing left to accrue");
        assertEq(adm.fundingIndicesOf(alice)[0], 1e18, "the position settled at the index");
        // The next interval has no trade: the last price (2001) carries on.
        _nextInterval();
        assertEq(adm.pokeFunding(ethPerp), 1e18, "the last trade price carries on");
        assertEq(adm.accruedFunding(alice), -3e18, "one more interval");
        assertEq(adm.accruedFunding(bob), 6e18, "two intervals unrealised");
    }

    function test_capClampsAndRoundsTowardZero() public {
        doTrade(alice, bob, ethPerp, 1e18, 1900e18); // 5% below spot: the band edge
        _nextInterval();
        // cap = 2000 x 0.001 = 2: the shorts pay the longs 2 per contract.
        assertEq(adm.pokeFunding(ethPerp), -2e18, "clamped at -cap");
        assertEq(adm.accruedFunding(alice), 2e18, "the long receives");
        // A cap off the TICK grid (1e-8): 2000.12345678 x 0.001 = 2.00012345678, paid as 2.00012345.
        setEth(200_012_345_678);
        doTrade(alice, bob, ethPerp, 1e18, 2010e18); // at the poke's second: the window is all 2010
        _nextInterval();
        assertEq(adm.pokeFunding(ethPerp), 2_000_123_450_000_000_000, "clamped, toward zero to TICK");
    }

    /// The TWAP: a price held for 3/4 of the interval and another for 1/4 weigh 3:1.
    function test_markIsTimeWeighted() public {
        vm.prank(GOV);
        adm.setFundingCap(0.01e18);
        doTrade(alice, bob, ethPerp, 1e18, 2004e18); // at T0: prices the whole window until the next trade
        vm.warp(block.timestamp + 2700);
        refreshFeeds();
        doTrade(alice, carol, ethPerp, 1e18, 2000e18);
        vm.warp(block.timestamp + 900);
        refreshFeeds();
        (,,, int256 last, int256 mark) = adm.fundingState(ethPerp);
        assertEq(last, 2000e18, "last price");
        assertEq(mark, 2003e18, "(2004 x 2700 + 2000 x 900) / 3600");
        assertEq(adm.pokeFunding(ethPerp), 3e18, "delta");
    }

    /// Zero-sum to the wei across the two sides and the backstop, through a liquidation of a
    /// perpetual that hands it to the backstop (which then accrues like any account).
    function test_backstopAccruesAndFundingIsZeroSum() public {
        vm.prank(GOV);
        adm.setFundingCap(0.01e18);
        uint256 small = ch.accountId(CAROL, 1);
        depositTo(CAROL, small, 0, 20_500e6);
        doTrade(small, bob, ethPerp, 50e18, 2010e18);
        _nextInterval();
        assertEq(adm.pokeFunding(ethPerp), 10e18, "longs pay 10");
        setEth(1880e8); // the long is under water
        MarginResult memory r = ch.marginOf(small);
        assertEq(r.state, 2, "liquidatable");
        int256 bkBal = ch.balanceOf(bk, 0);
        vm.prank(LIQ);
        ch.liquidate(small, nonceOf(small), r.witness, 5e17);
        assertEq(adm.accruedFunding(small), 0, "the liquidated account realised");
        assertEq(adm.fundingIndicesOf(bk)[0], 10e18, "the backstop's book starts at the index");
        assertEq(adm.accruedFunding(bk), 0, "nothing accrued yet");
        int256 bkAfter = ch.balanceOf(bk, 0);
        assertTrue(bkAfter < bkBal, "the backstop paid the hand-over");
        _nextInterval();
        int256 d = adm.pokeFunding(ethPerp);
        assertEq(d, 18.8e18, "last trade 2010 vs spot 1880: clamped at 1% of 1880");
        int256 sum = adm.accruedFunding(small) + adm.accruedFunding(bob) + adm.accruedFunding(bk);
        // bob accrued two intervals, the others one: realised + accrued sums to zero.
        int256 realised = -500e18; // the long's first interval (50 x 10), realised at liquidation
        assertEq(sum + realised, 0, "zero-sum to the wei");
        assertEq(adm.accruedFunding(bk), -(25e18 * d) / 1e18, "the backstop's 25 accrue");
    }

    /// Accrued funding moves an account below its margin: a flag and a liquidation see it.
    function test_fundingCanMakeAnAccountLiquidatable() public {
        vm.prank(GOV);
        adm.setFundingCap(0.01e18);
        uint256 small = ch.accountId(CAROL, 2);
        depositTo(CAROL, small, 0, 22_000e6);
        doTrade(small, bob, ethPerp, 50e18, 2040e18); // band edge above spot: longs pay
        MarginResult memory before = ch.marginOf(small);
        for (uint256 i; i < 6 && ch.marginOf(small).state == 0; ++i) {
            _nextInterval();
            adm.pokeFunding(ethPerp);
        }
        MarginResult memory r = ch.marginOf(small);
        assertTrue(r.equity < before.equity, "funding paid");
        assertTrue(r.state != 0, "below IM from funding alone");
        vm.prank(LIQ);
        ch.flag(small, nonceOf(small), r.witness);
        assertTrue(flaggedAt(small) != 0, "flagged");
    }
}

/// @notice Gas of funding on perpetual books, each figure in a fresh transaction after setUp
/// (cold storage, as on chain), recorded in contracts/snapshots/ClearingHouseFundingGas.json:
/// a withdrawal and a trade of an account holding one perpetual position with nothing to
/// realise, then with funding accrued (realised: the position's index and the balance written,
/// one FundingSettled event), and a poke. The difference of each pair is what realising costs.
contract ClearingHouseFundingGas is ClearingHouseFixture {
    uint256 internal alice;
    uint256 internal bob;

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 1_000_000e6);
        bob = fund(BOB, 0, 1_000_000e6);
        vm.prank(GOV);
        adm.setFundingCap(0.001e18);
        doTrade(alice, bob, ethPerp, 3e18, 2001e18);
        vm.warp(block.timestamp + ch.FUNDING_INTERVAL());
        refreshFeeds();
    }

    /// @dev Pokes (accrue) or only reads, then cools the storage both touched: the measured
    /// call finds the same warm addresses and cold slots either way.
    function _prepare(bool accrue) internal {
        if (accrue) adm.pokeFunding(ethPerp);
        assertTrue((adm.accruedFunding(alice) != 0) == accrue, "accrued as intended");
        vm.cool(address(ch));
        vm.cool(address(ethFeed));
    }

    function _withdraw() internal returns (uint256 used) {
        uint256 g = gasleft();
        vm.prank(ALICE);
        ch.withdraw(alice, 0, 1e6);
        used = g - gasleft();
    }

    function _trade() internal returns (uint256 used) {
        ClearingHouseBase.Order memory bo = newOrder(alice, ethPerp, 1e18, 2000e18);
        ClearingHouseBase.Order memory so = newOrder(bob, ethPerp, -1e18, 2000e18);
        bytes memory bs = signFor(address(ch), bo);
        bytes memory ss = signFor(address(ch), so);
        uint256 g = gasleft();
        vm.prank(MATCH);
        ch.trade(bo, bs, so, ss, 1e18, 2000e18);
        used = g - gasleft();
    }

    function test_gas_withdrawPerpNothingAccrued() public {
        _prepare(false);
        vm.snapshotValue("withdraw_perp_nothingAccrued", _withdraw());
    }

    function test_gas_withdrawPerpAccrued() public {
        _prepare(true);
        vm.snapshotValue("withdraw_perp_accrued", _withdraw());
    }

    function test_gas_tradePerpNothingAccrued() public {
        _prepare(false);
        vm.snapshotValue("trade_perp_nothingAccrued", _trade());
    }

    function test_gas_tradePerpAccrued() public {
        _prepare(true);
        vm.snapshotValue("trade_perp_accrued", _trade());
    }

    function test_gas_pokeFunding() public {
        uint256 g = gasleft();
        adm.pokeFunding(ethPerp);
        vm.snapshotValue("pokeFunding", g - gasleft());
    }
}
