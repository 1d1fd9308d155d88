// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {MarginResult, RiskParams, ExtendedMove} from "../src/margin/PortfolioMargin.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";

/// @notice Gas of every keeper-relevant entry point for an account of n option positions
/// (short calls on ETH, strikes 1500 + 50i, 30 days), measured in a fresh transaction after
/// setUp (so the account's storage is cold, as on chain) and recorded with vm.snapshotValue in
/// contracts/snapshots/ClearingHouseGas<n>.json. The account sits at IM + 1 after setUp;
/// flag and liquidate run after ETH +10% (below MM), with the best witness.
abstract contract ClearingHouseGasBase is ClearingHouseFixture {
    /// @notice The gas ceiling of the worst-case full check (40 options, 71 scenarios): below
    /// half of a 30M block.
    uint256 internal constant MAX_FULL_CHECK_GAS = 15_000_000;
    uint256 internal x; // the measured account
    uint256 internal bob;
    uint256 internal carol;
    uint256 internal firstOption;
    uint256[] internal w;

    function n() internal pure virtual returns (uint256);

    function setUp() public override {
        super.setUp();
        bob = fund(BOB, 0, 100_000_000e6);
        carol = fund(CAROL, 0, 1_000_000e6);
        x = fund(ALICE, 0, 10_000_000e6);
        vm.startPrank(GOV);
        for (uint256 i; i < n(); ++i) {
            uint256 id = adm.listInstrument(0, 1, int256(1500e18 + i * 50e18), expiry);
            if (i == 0) firstOption = id;
        }
        vm.stopPrank();
        for (uint256 i; i < n(); ++i) {
            doTrade(bob, x, firstOption + i, 1e18, markPrice(firstOption + i));
        }
        // carol: a 1-position counterparty; the backstop already holds every option (steady
        // state: a first-time takeover also creates its slots, about 44k gas per instrument).
        // The backstop is margin-checked on its trades like any account, so it holds no more
        // than MAX_POSITIONS: carol's perp comes from erin.
        uint256 dave = fund(registerKey(0xDA7E), 0, 1_000_000e6);
        uint256 erin = fund(registerKey(0xE1217), 0, 1_000_000e6);
        doTrade(carol, erin, ethPerp, 1e18, 2000e18);
        for (uint256 i; i < n(); ++i) {
            doTrade(bk, dave, firstOption + i, 1e16, markPrice(firstOption + i));
        }
        // Bring x down to IM + 1 USDC.
        MarginResult memory r = fullCheckNow(x);
        uint256 excess = uint256((r.equity - r.initialMargin) / 1e12) - 1e6;
        vm.prank(ALICE);
        ch.withdraw(x, 0, excess);
    }

    function _record(string memory what, uint256 used) internal {
        vm.snapshotValue(string.concat(what, "_", vm.toString(n())), used);
    }

    function test_gas_deposit() public {
        usdc.mint(ALICE, 1e6);
        vm.startPrank(ALICE);
        usdc.approve(address(ch), 1e6);
        uint256 g = gasleft();
        ch.deposit(x, 0, 1e6);
        _record("deposit", g - gasleft());
        vm.stopPrank();
    }

    function test_gas_withdraw() public {
        vm.prank(ALICE);
        uint256 g = gasleft();
        ch.withdraw(x, 0, 1e5);
        _record("withdraw", g - gasleft());
    }

    /// x (n positions) sells one more lot of its first option to carol (1 position) at its
    /// mark: both sides risk-increasing and healthy, two full checks, two signatures, two first
    /// fills (the orders' filled magnitudes go from zero to non-zero).
    function test_gas_trade() public {
        depositTo(ALICE, x, 0, 1000e6);
        int256 p = markPrice(firstOption);
        ClearingHouseBase.Order memory b = newOrder(carol, firstOption, 1e16, p);
        ClearingHouseBase.Order memory s = newOrder(x, firstOption, -1e16, p);
        bytes memory bs = signFor(address(ch), b);
        bytes memory ss = signFor(address(ch), s);
        vm.prank(MATCH);
        uint256 g = gasleft();
        ch.trade(b, bs, s, ss, 1e16, p);
        _record("trade", g - gasleft());
    }

    function test_gas_marginOf() public {
        uint256 g = gasleft();
        MarginResult memory r = ch.marginOf(x);
        _record("fullCheck", g - gasleft());
        assertEq(uint256(r.state), 0, "healthy at IM + 1");
    }

    function _underwater() internal returns (uint64 nonce) {
        setEth(2200e8);
        MarginResult memory r = fullCheckNow(x);
        assertEq(uint256(r.state), 2, "below MM after +10%");
        w = r.witness;
        nonce = nonceOf(x);
    }

    function test_gas_flag() public {
        uint64 nonce = _underwater();
        uint256[] memory wit = w;
        vm.prank(LIQ);
        uint256 g = gasleft();
        ch.flag(x, nonce, wit);
        _record("flag", g - gasleft());
    }

    function test_gas_liquidate() public {
        uint64 nonce = _underwater();
        uint256[] memory wit = w;
        vm.prank(LIQ);
        uint256 g = gasleft();
        ch.liquidate(x, nonce, wit, 5e17);
        _record("liquidate", g - gasleft());
    }

    /// The same liquidation as a running protocol pays it in its own transaction: the account's,
    /// the backstop's and the feeds' storage cold (test_gas_liquidate reads the account's
    /// portfolio first, which warms it), and the liquidator's bounty already credited once (a
    /// first liquidation of 2% did; the insurance fund and totalBounties are stored plus one
    /// from construction, so neither is ever a zero -> non-zero write).
    function test_gas_liquidate_steadyCold() public {
        uint64 nonce = _underwater();
        uint256[] memory wit = w;
        usdc.mint(address(this), 1000e6);
        usdc.approve(address(ch), 1000e6);
        adm.depositInsurance(1000e6);
        vm.prank(LIQ);
        ch.liquidate(x, nonce, wit, 2e16); // (1% would empty the backstop's +1% and re-create the slots)
        nonce = nonceOf(x);
        vm.cool(address(ch));
        vm.cool(address(ethFeed));
        vm.cool(address(ethVol));
        vm.prank(LIQ);
        uint256 g = gasleft();
        ch.liquidate(x, nonce, wit, 5e17);
        _record("liquidate_steadyCold", g - gasleft());
    }

    function test_gas_settle() public {
        vm.warp(expiry);
        refreshFeeds();
        for (uint256 i; i < n(); ++i) {
            settle(firstOption + i);
        }
        uint256 g = gasleft();
        uint256 settled = ch.settleAccount(x);
        _record("settleAccount", g - gasleft());
        assertEq(settled, n(), "all settled");
    }
}

contract ClearingHouseGas1 is ClearingHouseGasBase {
    function n() internal pure override returns (uint256) {
        return 1;
    }
}

contract ClearingHouseGas10 is ClearingHouseGasBase {
    function n() internal pure override returns (uint256) {
        return 10;
    }
}

contract ClearingHouseGas16 is ClearingHouseGasBase {
    function n() internal pure override returns (uint256) {
        return 16;
    }
}

contract ClearingHouseGas40 is ClearingHouseGasBase {
    function n() internal pure override returns (uint256) {
        return 40;
    }

    /// The stated ceiling: a full check of MAX_POSITIONS (40) options under the largest grid
    /// the model accepts (21 moves x 3 vol states + 8 extended = 71 scenarios per underlying).
    function test_gas_fullCheck_maxGrid() public {
        RiskParams memory p = defaultParams();
        p.underlyings[0].moveSteps = 10;
        p.underlyings[0].extended = new ExtendedMove[](8);
        for (uint256 i; i < 8; ++i) {
            p.underlyings[0].extended[i] = ExtendedMove(int256(i + 1) * 1e17, 2, 3e17);
        }
        vm.prank(GOV);
        adm.setRiskParams(abi.encode(p));
        uint256 g = gasleft();
        ch.marginOf(x);
        uint256 used = g - gasleft();
        _record("fullCheck_maxGrid", used);
        assertTrue(used < MAX_FULL_CHECK_GAS, "the stated ceiling");
    }
}
