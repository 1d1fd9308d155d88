// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {IClearingHouseErrors, IClearingHouseEvents} from "../src/interfaces/IClearingHouse.sol";
import {ClearingHouse} from "../src/ClearingHouse.sol";
import {ClearingHouseAdmin} from "../src/ClearingHouseAdmin.sol";
import {ClearingHouseRecalibration} from "../src/ClearingHouseRecalibration.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {AggregatorV3Interface} from "../src/interfaces/AggregatorV3Interface.sol";
import {MarginResult, Market, Portfolio, Position, TooManyPositions} from "../src/margin/PortfolioMargin.sol";
import {StalePrice} from "../src/oracle/OracleLib.sol";

/// @notice The trade path: only what an account's owner (or operator) signed settles, within
/// its limits, inside the price band around the model mark, and each side passes the IM check
/// or provably does not add risk at the portfolio level (which is all a pause leaves open).
contract ClearingHouseTradingTest is ClearingHouseFixture {
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    uint256 internal alice;
    uint256 internal bob;
    uint256 internal ethFut; // dated ETH future (the calendar's second leg)

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 400e6);
        bob = fund(BOB, 0, 100_000e6);
        vm.prank(GOV);
        ethFut = adm.listInstrument(0, 0, 0, expiry);
    }

    function _sell(uint256 account, uint256 id, int256 q, int256 limit)
        internal
        returns (ClearingHouseBase.Order memory)
    {
        return newOrder(account, id, -q, limit);
    }

    function _send(
        ClearingHouseBase.Order memory buy,
        bytes memory bs,
        ClearingHouseBase.Order memory sell,
        bytes memory ss,
        int256 q,
        int256 p
    ) internal {
        vm.prank(MATCH);
        ch.trade(buy, bs, sell, ss, q, p);
    }

    function _qty(uint256 a, uint256 id) internal view returns (int256) {
        (uint256[] memory ids, int256[] memory q) = adm.positionsOf(a);
        for (uint256 i; i < ids.length; ++i) {
            if (ids[i] == id) return q[i];
        }
        return 0;
    }

    /// @dev Withdraws the account's USDC down to IM + 1 USDC.
    function _drainToIM(address who, uint256 a) internal {
        MarginResult memory r = ch.marginOf(a);
        vm.prank(who);
        ch.withdraw(a, 0, uint256((r.equity - r.initialMargin) / 1e12) - 1e6);
    }

    // ================================================================== the margin rule

    /// Two accounts hold mirrored calendar hedges (perp against the dated future) at IM ~0.6% of
    /// a leg's notional, then trade their perp legs to each other: each side only reduces a
    /// position, which used to skip the margin check and leave both holding a naked 100-ETH
    /// future on ~1/25 of its maintenance requirement. Now the side's requirement rises, so
    /// it must pass the IM check, and cannot.
    function test_calendarLegTradeBetweenMirroredHedgesReverts() public {
        uint256 a = fund(CAROL, 0, 100_000e6);
        doTrade(a, bob, ethPerp, 100e18, 2000e18); // carol long perp, bob short perp
        doTrade(bob, a, ethFut, 100e18, 2000e18); // carol short future, bob long future
        _drainToIM(CAROL, a);
        _drainToIM(BOB, bob);
        MarginResult memory r = ch.marginOf(bob);
        assertLe(r.initialMargin, 200_000e18 * 7 / 1000, "the hedge needs < 0.7% of a leg's notional");

        // The state the trade would leave bob in: the future alone (he pays 200k for the perp
        // he buys back), far below MM.
        Portfolio memory pf = ch.portfolioOf(bob);
        Position[] memory futOnly = new Position[](1);
        futOnly[0] = pf.positions[0].expiry != 0 ? pf.positions[0] : pf.positions[1];
        pf.positions = futOnly;
        pf.collateral[0] -= 200_000e18;
        MarginResult memory naked = verifier.fullCheck(pf, marketNow(), ch.riskParams());
        assertEq(uint256(naked.state), 2, "a naked 100-ETH future on the hedge's margin is below MM");
        assertLe(naked.equity * 20, naked.requirement, "equity under 1/20 of MM");

        // bob buys back his short perp from carol (both sides only reduce): refused.
        vm.expectRevert(
            abi.encodeWithSelector(IClearingHouseErrors.InsufficientMargin.selector, bob, naked.equity, naked.initialMargin)
        );
        doTrade(bob, a, ethPerp, 100e18, 2000e18);
        // Carol's side alone (against a well-funded counterparty) is refused just the same.
        uint256 d = fund(registerKey(0xD0D0), 0, 1_000_000e6);
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(d, a, ethPerp, 100e18, 2000e18);
        assertEq(_qty(a, ethPerp), 100e18, "carol still hedged");
    }

    /// A reduction at a price far from the mark would move cash out of the account and leave
    /// bad debt: the band refuses it before any margin arithmetic.
    function test_offMarketReducingTradeRevertsOnTheBand() public {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        vm.expectRevert(
            abi.encodeWithSelector(IClearingHouseErrors.PriceOutsideBand.selector, int256(1000e18), int256(2000e18), int256(100e18))
        );
        doTrade(bob, alice, ethPerp, 1e18, 1000e18); // alice would end with -600 and no position
        // The band's edges: spot +- 5% of spot, inclusive.
        vm.expectRevert(
            abi.encodeWithSelector(IClearingHouseErrors.PriceOutsideBand.selector, int256(1900e18 - 1e10), int256(2000e18), int256(100e18))
        );
        doTrade(bob, alice, ethPerp, 1e17, 1900e18 - 1e10);
        doTrade(bob, alice, ethPerp, 1e17, 1900e18);
    }

    /// Inside a (widened) band, a reduction whose price concession exceeds the IM it releases
    /// lowers the margin surplus: refused unless the account stays above IM.
    function test_reducingTradeMustNotLowerTheSurplus() public {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18); // equity 400, IM 393.75
        vm.prank(GOV);
        adm.setPriceBand(0.5e18);
        // Sells half at 1500: equity 150 < IM 196.9, and the surplus falls from 6.25 to -46.9.
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(bob, alice, ethPerp, 5e17, 1500e18);
        // Everything at 1500 leaves debt and no position: refused too.
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(bob, alice, ethPerp, 1e18, 1500e18);
        // The same reduction at the mark raises the surplus.
        setEth(1960e8); // below IM now: (a) fails, the reduction passes by (b)
        assertEq(uint256(ch.marginOf(alice).state), 1, "below IM");
        doTrade(bob, alice, ethPerp, 1e17, 1960e18);
        assertEq(_qty(alice, ethPerp), 9e17, "reduced");
    }

    /// A flagged account follows the same rule: it cannot add risk, may reduce it, and a trade
    /// that leaves it healthy clears the flag.
    function test_flaggedAccountReducesAndAHealthyTradeClearsTheFlag() public {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1950e8); // equity 350 < IM 384
        MarginResult memory r = fullCheckNow(alice);
        uint64 n = nonceOf(alice);
        vm.prank(LIQ);
        ch.flag(alice, n, r.witness);
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(alice, bob, ethPerp, 1e16, 1950e18);
        doTrade(bob, alice, ethPerp, 1e16, 1950e18); // still below IM: passes by (b)
        assertTrue(flaggedAt(alice) != 0, "still flagged");
        vm.expectEmit(true, false, false, false);
        emit IClearingHouseEvents.MarginCallCleared(alice, 0, 0);
        doTrade(bob, alice, ethPerp, 5e17, 1950e18); // healthy after: (a), flag cleared
        assertEq(flaggedAt(alice), 0, "flag cleared");
    }

    /// With feeds older than maxAge (but within liquidationMaxAge) no side can pass the IM
    /// check, yet a trade that does not add risk settles; one that adds risk names the feed.
    function test_reductionSettlesOnAFeedOlderThanMaxAge() public {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        vm.warp(block.timestamp + 2 hours); // maxAge 1 h, liquidationMaxAge 1 day
        doTrade(bob, alice, ethPerp, 5e17, 2000e18);
        assertEq(_qty(alice, ethPerp), 5e17, "reduced on the lenient price");
        vm.expectRevert(abi.encodeWithSelector(StalePrice.selector, address(ethFeed), T0, 1 hours));
        doTrade(alice, bob, ethPerp, 1e17, 2000e18);
    }

    // ================================================================== pause

    function test_pausedRiskReducingTradePasses() public {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        vm.prank(GUARD);
        adm.pause();
        doTrade(bob, alice, ethPerp, 5e17, 2000e18); // both sides reduce at the mark
        assertEq(_qty(alice, ethPerp), 5e17, "alice reduced");
        assertEq(_qty(bob, ethPerp), -5e17, "bob reduced");
    }

    function test_pausedRiskIncreasingTradeReverts() public {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        uint256 c = fund(CAROL, 0, 100_000e6);
        vm.prank(GUARD);
        adm.pause();
        vm.expectRevert(IClearingHouseErrors.ProtocolPaused.selector);
        doTrade(alice, bob, ethPerp, 1e17, 2000e18); // both sides add risk
        // One side reducing does not carry the other: carol opens.
        vm.expectRevert(IClearingHouseErrors.ProtocolPaused.selector);
        doTrade(c, alice, ethPerp, 1e17, 2000e18);
        vm.prank(GUARD);
        adm.unpause();
        doTrade(c, alice, ethPerp, 1e17, 2000e18);
    }

    // ================================================================== signed orders

    /// The digest is EIP-712's, over the fixed domain and type; hashOrder returns it.
    function test_hashOrderIsTheEip712Digest() public {
        ClearingHouseBase.Order memory o = newOrder(alice, ethPerp, 1e18, 2000e18);
        assertTrue(adm.hashOrder(o) == digestOf(address(ch), o), "hashOrder");
        assertTrue(adm.DOMAIN_SEPARATOR() == domainSeparatorOf(address(ch)), "domain");
        assertTrue(adm.ORDER_TYPEHASH() == ORDER_TYPEHASH_T, "typehash");
        o.deadline += 1;
        assertTrue(adm.hashOrder(o) == digestOf(address(ch), o), "every field is hashed");
    }

    function test_fillEmitsOrderFilledAndTrade() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e18, 2010e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 2e18, 1990e18);
        bytes memory bs = signFor(address(ch), b);
        bytes memory ss = signFor(address(ch), s);
        bytes32 db = digestOf(address(ch), b);
        bytes32 dsell = digestOf(address(ch), s);
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.OrderFilled(db, alice, 5e17, 5e17);
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.OrderFilled(dsell, bob, -5e17, 5e17);
        vm.expectEmit(true, true, true, true);
        emit IClearingHouseEvents.Trade(1, alice, bob, ethPerp, 5e17, 2000e18, nonceOf(alice) + 1, nonceOf(bob) + 1);
        _send(b, bs, s, ss, 5e17, 2000e18);
        assertEq(adm.orderFilled(db), 5e17, "buy filled");
        assertEq(adm.orderFilled(dsell), 5e17, "sell filled");
    }

    /// The matcher cannot trade an account its owner did not sign for.
    function test_tradeTheOwnerNeverSignedReverts() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 2000e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 2000e18);
        bytes memory ss = signFor(address(ch), s);
        // Signed by bob's key for alice's account.
        bytes memory forged = signDigest(BOB_PK, digestOf(address(ch), b));
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnauthorizedSigner.selector, alice, BOB));
        _send(b, forged, s, ss, 1e17, 2000e18);
        // Alice's signature of another order (a different quantity) recovers someone else.
        bytes memory bs = signFor(address(ch), b);
        b.quantity = 1e18;
        vm.expectPartialRevert(IClearingHouseErrors.UnauthorizedSigner.selector);
        _send(b, bs, s, ss, 1e17, 2000e18);
        // An empty signature is no signature.
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidSignature.selector, alice));
        _send(b, "", s, ss, 1e17, 2000e18);
    }

    /// A signature by an address that is not an operator of the account is refused; an
    /// operator's is accepted while the owner allows it.
    function test_operatorSignsOnlyWhileAuthorised() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 2000e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 2000e18);
        bytes memory byCarol = signDigest(CAROL_PK, digestOf(address(ch), b));
        bytes memory ss = signFor(address(ch), s);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnauthorizedSigner.selector, alice, CAROL));
        _send(b, byCarol, s, ss, 1e17, 2000e18);
        vm.prank(ALICE);
        adm.setOperator(alice, CAROL, true);
        _send(b, byCarol, s, ss, 5e16, 2000e18);
        vm.prank(ALICE);
        adm.setOperator(alice, CAROL, false);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnauthorizedSigner.selector, alice, CAROL));
        _send(b, byCarol, s, ss, 5e16, 2000e18);
        assertEq(_qty(alice, ethPerp), 5e16, "one fill");
    }

    /// Fills are bounded by the signed quantity: replaying a filled order fails.
    function test_overfillReverts() public {
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 2000e18);
        bytes memory ss = signFor(address(ch), s);
        bytes32 d = digestOf(address(ch), s);
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e18, 2000e18);
        bytes memory bs = signFor(address(ch), b);
        _send(b, bs, s, ss, 6e16, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.OrderOverfilled.selector, d, uint256(12e16), uint256(1e17)));
        _send(b, bs, s, ss, 6e16, 2000e18);
        _send(b, bs, s, ss, 4e16, 2000e18); // exactly the rest
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.OrderOverfilled.selector, d, uint256(1e17 + 1e8), uint256(1e17)));
        _send(b, bs, s, ss, 1e8, 2000e18);
        assertEq(adm.orderFilled(d), 1e17, "filled to the signed quantity");
        assertEq(_qty(bob, ethPerp), -1e17, "bob sold what he signed");
    }

    /// The signature names the chain: replayed on another chain id it recovers someone else,
    /// and the domain separator follows the chain id.
    function test_signatureReplayedOnAnotherChainReverts() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 2000e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 2000e18);
        bytes memory bs = signFor(address(ch), b);
        bytes memory ss = signFor(address(ch), s);
        bytes32 domain = adm.DOMAIN_SEPARATOR();
        vm.chainId(block.chainid + 1);
        assertTrue(adm.DOMAIN_SEPARATOR() != domain, "recomputed for the new chain id");
        assertTrue(adm.DOMAIN_SEPARATOR() == domainSeparatorOf(address(ch)), "the new chain's domain");
        vm.expectPartialRevert(IClearingHouseErrors.UnauthorizedSigner.selector);
        _send(b, bs, s, ss, 1e17, 2000e18);
        // Orders signed for this chain settle.
        doTrade(alice, bob, ethPerp, 1e17, 2000e18);
    }

    /// The signature names the clearing house: replayed on another deployment it fails.
    function test_signatureReplayedOnAnotherDeploymentReverts() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 2000e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 2000e18);
        bytes memory bs = signFor(address(ch), b);
        bytes memory ss = signFor(address(ch), s);
        ClearingHouse ch2 = new ClearingHouse(GOV, verifier, address(new ClearingHouseAdmin(verifier, address(new ClearingHouseRecalibration(verifier)))));
        ClearingHouseAdmin adm2 = ClearingHouseAdmin(address(ch2));
        vm.startPrank(GOV);
        {
            ClearingHouseBase.UnderlyingConfig[] memory us = new ClearingHouseBase.UnderlyingConfig[](2);
            us[0] = underlyingCfg(ethFeed, ethVol);
            us[1] = underlyingCfg(btcFeed, btcVol);
            address[] memory tokens = new address[](2);
            (tokens[0], tokens[1]) = (address(usdc), address(weth));
            adm2.configureMarkets(us, tokens, abi.encode(defaultParams()));
        }
        adm2.setRole(ch2.MATCHER(), MATCH, true);
        uint256 perp2 = adm2.listInstrument(0, 0, 0, 0);
        vm.stopPrank();
        assertEq(perp2, ethPerp, "the same instrument id");
        assertTrue(adm2.hashOrder(b) != adm.hashOrder(b), "another domain");
        vm.prank(MATCH);
        vm.expectPartialRevert(IClearingHouseErrors.UnauthorizedSigner.selector);
        ch2.trade(b, bs, s, ss, 1e17, 2000e18);
        _send(b, bs, s, ss, 1e17, 2000e18); // where they were signed for, they settle
    }

    function test_cancelledOrderReverts() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 2000e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 2000e18);
        bytes memory bs = signFor(address(ch), b);
        bytes memory ss = signFor(address(ch), s);
        _send(b, bs, s, ss, 5e16, 2000e18);
        // Only the owner or an operator cancels.
        vm.prank(BOB);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotAuthorized.selector, alice, BOB));
        adm.cancelOrder(alice, b.nonce);
        vm.prank(ALICE);
        adm.setOperator(alice, CAROL, true);
        vm.expectEmit(true, false, false, true);
        emit IClearingHouseEvents.OrderCancelled(alice, b.nonce);
        vm.prank(CAROL);
        adm.cancelOrder(alice, b.nonce);
        assertTrue(adm.orderCancelled(alice, b.nonce), "cancelled");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.OrderIsCancelled.selector, alice, b.nonce));
        _send(b, bs, s, ss, 5e16, 2000e18);
        vm.prank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.OrderIsCancelled.selector, alice, b.nonce));
        adm.cancelOrder(alice, b.nonce);
    }

    function test_expiredOrderReverts() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 2000e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 2000e18);
        b.deadline = uint64(block.timestamp + 60);
        bytes memory bs = signFor(address(ch), b);
        bytes memory ss = signFor(address(ch), s);
        vm.warp(block.timestamp + 60); // valid through its deadline
        _send(b, bs, s, ss, 5e16, 2000e18);
        vm.warp(block.timestamp + 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.OrderExpired.selector, alice, b.nonce, b.deadline));
        _send(b, bs, s, ss, 5e16, 2000e18);
    }

    function test_limitPricesBindBothSides() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 1990e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 1980e18);
        bytes memory bs = signFor(address(ch), b);
        bytes memory ss = signFor(address(ch), s);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.LimitPriceViolated.selector, alice, int256(2000e18), int256(1990e18)));
        _send(b, bs, s, ss, 1e17, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.LimitPriceViolated.selector, bob, int256(1970e18), int256(1980e18)));
        _send(b, bs, s, ss, 1e17, 1970e18);
        _send(b, bs, s, ss, 1e17, 1985e18); // inside both limits
        assertEq(ch.balanceOf(alice, 0), 400e18 - 198.5e18, "paid the matched price");
    }

    /// The orders must be a buy and a sell of the same instrument.
    function test_mismatchedOrdersRevert() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 2000e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethFut, 1e17, 2000e18);
        bytes memory bs = signFor(address(ch), b);
        bytes memory ss = signFor(address(ch), s);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.OrderMismatch.selector, ethPerp, ethFut));
        _send(b, bs, s, ss, 1e17, 2000e18);
        // Bob's order is a buy: it cannot fill the sell side.
        ClearingHouseBase.Order memory s2 = newOrder(bob, ethPerp, 1e17, 2000e18);
        bytes memory ss2 = signFor(address(ch), s2);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidOrderQuantity.selector, bob, int256(1e17)));
        _send(b, bs, s2, ss2, 1e17, 2000e18);
    }

    /// Only the canonical signature form is accepted: the high-s twin of a valid signature
    /// (which plain ecrecover maps to the same signer), v outside {27, 28}, and signatures
    /// that recover no address are refused.
    function test_malleableAndMalformedSignaturesRevert() public {
        ClearingHouseBase.Order memory b = newOrder(alice, ethPerp, 1e17, 2000e18);
        ClearingHouseBase.Order memory s = _sell(bob, ethPerp, 1e17, 2000e18);
        bytes32 d = digestOf(address(ch), b);
        (uint8 v, bytes32 r, bytes32 sv) = vm.sign(ALICE_PK, d);
        bytes memory ss = signFor(address(ch), s);
        bytes32 highS = bytes32(SECP256K1_N - uint256(sv));
        uint8 twinV = v == 27 ? 28 : 27;
        assertTrue(ecrecover(d, twinV, r, highS) == ALICE, "the twin is a valid signature to ecrecover");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidSignature.selector, alice));
        _send(b, abi.encodePacked(r, highS, twinV), s, ss, 1e17, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidSignature.selector, alice));
        _send(b, abi.encodePacked(r, sv, uint8(v + 2)), s, ss, 1e17, 2000e18);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidSignature.selector, alice));
        _send(b, abi.encodePacked(bytes32(0), sv, v), s, ss, 1e17, 2000e18); // recovers address(0)
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.InvalidSignature.selector, alice));
        _send(b, abi.encodePacked(r, sv), s, ss, 1e17, 2000e18); // 64 bytes
        _send(b, abi.encodePacked(r, sv, v), s, ss, 1e17, 2000e18); // the canonical form settles
    }

    // ================================================================== price band

    function test_priceBandGovernanceAndOptionMark() public {
        assertEq(adm.priceBand(), 0.05e18, "default 5% of spot");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotOwner.selector, address(this)));
        adm.setPriceBand(0.1e18);
        vm.startPrank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 20, int256(0.5e18 + 1), int256(0.001e18), int256(0.5e18)));
        adm.setPriceBand(0.5e18 + 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 20, int256(0.001e18 - 1), int256(0.001e18), int256(0.5e18)));
        adm.setPriceBand(0.001e18 - 1);
        vm.expectEmit(false, false, false, true);
        emit IClearingHouseEvents.PriceBandSet(0.01e18);
        adm.setPriceBand(0.01e18);
        vm.stopPrank();
        // Options: the band is around the model price (oracle spot and vol), width band x spot.
        int256 mark = verifier.modelPrice(true, 2000e18, 2200e18, expiry - block.timestamp, 0.6e18, 0);
        int256 hi = mark + 20e18; // band = 1% of 2000
        hi -= hi % 1e10; // the highest tick inside
        uint256 c = fund(CAROL, 0, 10_000e6);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.PriceOutsideBand.selector, hi + 1e10, mark, int256(20e18)));
        doTrade(c, bob, ethCall, 1e17, hi + 1e10);
        doTrade(c, bob, ethCall, 1e17, hi);
    }

    // ================================================================== fuzz

    /// Whatever sequence of fills the matcher sends against one signed order, its filled
    /// magnitude (and the position it builds) never exceeds the signed quantity: every fill
    /// that would cross it reverts OrderOverfilled and changes nothing.
    /// forge-config: default.fuzz.runs = 128
    function testFuzz_fillsNeverExceedSignedQuantity(uint256 signedLots, uint256[6] memory fills) public {
        int256 signedQty = int256(bound(signedLots, 1, 100)) * 1e16; // up to 1 ETH
        ClearingHouseBase.Order memory s = _sell(alice, ethPerp, signedQty, 2000e18);
        bytes memory ss = signFor(address(ch), s);
        bytes32 d = digestOf(address(ch), s);
        uint256 total;
        for (uint256 i; i < fills.length; ++i) {
            int256 f = int256(bound(fills[i], 1, 60)) * 1e16;
            ClearingHouseBase.Order memory b = newOrder(bob, ethPerp, f, 2000e18);
            bytes memory bs = signFor(address(ch), b);
            uint256 after_ = total + uint256(f);
            bool fits = after_ <= uint256(signedQty);
            if (!fits) {
                vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.OrderOverfilled.selector, d, after_, uint256(signedQty)));
            }
            _send(b, bs, s, ss, f, 2000e18);
            if (fits) total = after_;
            assertEq(adm.orderFilled(d), total, "filled magnitude");
            assertEq(_qty(alice, ethPerp), -int256(total), "position = fills");
        }
        assertLe(int256(total), signedQty, "never beyond the signed quantity");
    }

    /// A backstop pushed past MAX_POSITIONS live positions by a hand-over can no longer be
    /// checked by the model (TooManyPositions), so neither margin rule can pass for it. It may
    /// still unwind: strictly reduce a position at the mark or better for itself; anything else
    /// reverts UnwindOnly. Without this path the protocol's own book could never trade out.
    function test_oversizedBackstopMayOnlyUnwindAtTheMarkOrBetter() public {
        uint256 dave = fund(registerKey(0xDA7E1), 0, 10_000_000e6);
        uint256[] memory opts = new uint256[](40);
        vm.startPrank(GOV);
        for (uint256 i; i < 40; ++i) {
            opts[i] = adm.listInstrument(0, 1, int256(1500e18 + i * 50e18), expiry);
        }
        vm.stopPrank();
        for (uint256 i; i < 40; ++i) {
            doTrade(bk, dave, opts[i], 1e16, markPrice(opts[i])); // the backstop's 40 checked longs
        }
        // Alice's perp is a 41st instrument for the backstop: her liquidation hands it over.
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1500e8);
        MarginResult memory r = fullCheckNow(alice);
        assertEq(r.state, 2, "alice below MM");
        uint256[] memory wit = r.witness;
        vm.prank(LIQ);
        ch.liquidate(alice, nonceOf(alice), wit, 1e18);
        assertEq(ch.portfolioOf(bk).positions.length, 41, "backstop beyond the model's bound");
        {
            Portfolio memory big = ch.portfolioOf(bk);
            Market memory m = marketNow();
            bytes memory params = ch.riskParams();
            vm.expectRevert(abi.encodeWithSelector(TooManyPositions.selector, 41));
            verifier.fullCheck(big, m, params);
        }

        // Nothing leaves an account the model cannot check: withdrawals and transfers revert.
        vm.prank(BACKSTOP_OWNER);
        vm.expectRevert(abi.encodeWithSelector(TooManyPositions.selector, 41));
        ch.withdraw(bk, 0, 1e6);
        uint256 bkSub = ch.accountId(BACKSTOP_OWNER, 1);
        vm.prank(BACKSTOP_OWNER);
        vm.expectRevert(abi.encodeWithSelector(TooManyPositions.selector, 41));
        ch.transferCollateral(bk, bkSub, 0, 1e18);

        // Selling one long below its mark (the floor of the mark to TICK) moves value out: refused.
        int256 floorMark = markPrice(opts[0]);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnwindOnly.selector, bk, 41));
        doTrade(dave, bk, opts[0], 1e16, floorMark);
        // Adding to a position is refused at any price.
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.UnwindOnly.selector, bk, 41));
        doTrade(bk, dave, opts[1], 1e16, floorMark - 1e10 > 0 ? floorMark - 1e10 : int256(0));
        // At the mark rounded up (better for the backstop) the reduction settles.
        doTrade(dave, bk, opts[0], 1e16, floorMark + 1e10);
        assertEq(ch.portfolioOf(bk).positions.length, 40, "back within the model's bound");
        // From here on the backstop trades under the ordinary margin rule again.
        doTrade(dave, bk, opts[1], 1e16, markPrice(opts[1]));
    }
}
