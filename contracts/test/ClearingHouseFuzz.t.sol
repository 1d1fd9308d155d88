// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {TestBase} from "./utils/TestBase.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {IClearingHouseErrors} from "../src/interfaces/IClearingHouse.sol";
import {OracleLib, StalePrice, NonPositivePrice, UnsupportedFeed} from "../src/oracle/OracleLib.sol";
import {MockAggregator} from "../src/oracle/MockAggregator.sol";
import {AggregatorV3Interface} from "../src/interfaces/AggregatorV3Interface.sol";
import {MarginResult} from "../src/margin/PortfolioMargin.sol";

contract OracleHarness {
    function read(AggregatorV3Interface feed, uint256 maxAge) external view returns (int256 wad, uint256 updatedAt) {
        return OracleLib.read(feed, maxAge);
    }
}

/// @notice Oracle scaling and checks for any decimals and answer.
contract OracleLibFuzzTest is TestBase {
    OracleHarness internal h = new OracleHarness();

    function testFuzz_scalesAnyDecimalsToWad(uint8 decimals, int256 answer) public {
        decimals = uint8(bound(uint256(decimals), 0, 36));
        answer = bound(answer, 1, 1e40);
        vm.warp(1_000_000);
        MockAggregator feed = new MockAggregator(decimals, "X", answer);
        if (decimals <= 18 && answer > type(int256).max / int256(10 ** (18 - uint256(decimals)))) {
            vm.expectRevert(abi.encodeWithSelector(UnsupportedFeed.selector, address(feed), decimals));
            h.read(AggregatorV3Interface(address(feed)), 1);
            return;
        }
        (int256 wad,) = h.read(AggregatorV3Interface(address(feed)), 1);
        if (decimals <= 18) assertEq(wad, answer * int256(10 ** (18 - uint256(decimals))), "scaled up exactly");
        else assertEq(wad, answer / int256(10 ** (uint256(decimals) - 18)), "scaled down, floor");
    }

    function testFuzz_stalenessBoundary(uint256 maxAge, uint256 age) public {
        maxAge = bound(maxAge, 1, 30 days);
        age = bound(age, 0, 60 days);
        vm.warp(100 days);
        MockAggregator feed = new MockAggregator(8, "X", 1e8);
        feed.setRound(2, 1e8, block.timestamp - age, block.timestamp - age, 2);
        if (age > maxAge) {
            vm.expectRevert(abi.encodeWithSelector(StalePrice.selector, address(feed), block.timestamp - age, maxAge));
        }
        h.read(AggregatorV3Interface(address(feed)), maxAge);
    }

    function testFuzz_nonPositiveRejected(int256 answer) public {
        answer = bound(answer, type(int256).min, 0);
        vm.warp(1_000_000);
        MockAggregator feed = new MockAggregator(8, "X", answer);
        vm.expectRevert(abi.encodeWithSelector(NonPositivePrice.selector, address(feed), answer));
        h.read(AggregatorV3Interface(address(feed)), 1);
    }
}

/// @notice Trades, withdrawals and liquidations with fuzzed sizes, prices and parameters.
contract ClearingHouseFuzzTest is ClearingHouseFixture {
    uint256 internal alice;
    uint256 internal bob;

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 5_000e6);
        bob = fund(BOB, 0, 1_000_000e6);
    }

    function _conserved() internal view {
        int256 sum = ch.balanceOf(alice, 0) + ch.balanceOf(bob, 0) + ch.balanceOf(bk, 0) + ch.insuranceFund()
            + ch.totalBounties();
        assertEq(heldWad(0), sum, "USDC held == balances + insurance + bounties");
    }

    /// forge-config: default.fuzz.runs = 256
    function testFuzz_tradeCashIsExactAndZeroSum(uint256 lots, uint256 ticks, uint256 closeTicks) public {
        int256 q = int256(bound(lots, 1, 1e10)) * 1e8; // up to 1 ETH
        int256 p = int256(bound(ticks, 1e11, 3e11)) * 1e10; // 1000..3000
        int256 p2 = int256(bound(closeTicks, 1e11, 3e11)) * 1e10;
        doTrade(alice, bob, ethPerp, q, p);
        _conserved();
        doTrade(bob, alice, ethPerp, q, p2);
        _conserved();
        assertEq(ch.balanceOf(alice, 0), 5_000e18 + q * (p2 - p) / 1e18, "realised pnl exact");
        assertEq(ch.portfolioOf(alice).positions.length, 0, "flat");
    }

    /// forge-config: default.fuzz.runs = 256
    function testFuzz_withdrawNeverLeavesAccountBelowIM(uint256 lots, uint256 amount) public {
        int256 q = int256(bound(lots, 1, 20)) * 1e17; // 0.1 .. 2 ETH
        doTrade(alice, bob, ethPerp, q, 2000e18);
        amount = bound(amount, 1, 5_000e6);
        vm.prank(ALICE);
        try ch.withdraw(alice, 0, amount) {
            assertEq(uint256(ch.marginOf(alice).state), 0, "healthy after a withdrawal");
        } catch (bytes memory err) {
            assertTrue(bytes4(err) == IClearingHouseErrors.InsufficientMargin.selector, "only the IM check refuses");
            assertTrue(ch.marginOf(alice).equity - int256(amount) * 1e12 < ch.marginOf(alice).initialMargin, "refused only below IM");
        }
        _conserved();
    }

    /// Bounty accounting: bounty <= penalty, within [min, max] when the penalty allows,
    /// bounty + insurance share == penalty, and the cash is conserved.
    /// forge-config: default.fuzz.runs = 256
    function testFuzz_liquidationBountyAccounting(
        uint256 fraction,
        uint256 rate,
        uint256 share,
        uint256 minB,
        uint256 maxB,
        uint256 drop
    ) public {
        ClearingHouseBase.LiquidationConfig memory c;
        c.penaltyRate = uint64(bound(rate, 1, 5e17));
        c.bountyShare = uint64(bound(share, 0, 1e18));
        c.minBounty = uint128(bound(minB, 0, 100e18));
        c.maxBounty = uint128(bound(maxB, c.minBounty, 1000e18));
        c.gracePeriod = 1 hours;
        vm.prank(GOV);
        adm.setLiquidationConfig(c);
        doTrade(alice, bob, ethPerp, 10e18, 2000e18); // IM 3937.5 of 5000
        setEth(int256(bound(drop, 1700, 1960)) * 1e8);
        MarginResult memory r = fullCheckNow(alice);
        vm.assume(r.state == 2);
        int256 f = int256(bound(fraction, 1e15, 1e18));
        uint64 n = nonceOf(alice);
        int256 insBefore = ch.insuranceFund();
        vm.prank(LIQ);
        int256 bounty = ch.liquidate(alice, n, r.witness, f);
        int256 toInsurance = ch.insuranceFund() - insBefore;
        int256 penalty = bounty + toInsurance;
        assertGe(toInsurance, 0, "insurance share >= 0");
        assertLe(bounty, int256(uint256(c.maxBounty)), "bounty <= cap");
        int256 minAllowed = penalty < int256(uint256(c.minBounty)) ? penalty : int256(uint256(c.minBounty));
        assertGe(bounty, minAllowed, "bounty >= min(min bounty, penalty)");
        assertLe(penalty, r.equity > 0 ? r.equity : int256(0), "penalty <= positive equity");
        assertEq(ch.bounties(LIQ), bounty, "credited to the caller");
        _conserved();
    }
}
