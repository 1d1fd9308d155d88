// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {OrderSigner} from "./OrderSigner.sol";
import {MarginPresets} from "./MarginPresets.sol";
import {ClearingHouse} from "../../src/ClearingHouse.sol";
import {ClearingHouseAdmin} from "../../src/ClearingHouseAdmin.sol";
import {ClearingHouseRecalibration} from "../../src/ClearingHouseRecalibration.sol";
import {ClearingHouseBase} from "../../src/ClearingHouseBase.sol";
import {MarginVerifier} from "../../src/MarginVerifier.sol";
import {MockERC20} from "../../src/token/MockERC20.sol";
import {MockAggregator} from "../../src/oracle/MockAggregator.sol";
import {AggregatorV3Interface} from "../../src/interfaces/AggregatorV3Interface.sol";
import {
    PortfolioMargin,
    Portfolio,
    Market,
    RiskParams,
    UnderlyingParams,
    AssetParams,
    ExtendedMove,
    MarginResult
} from "../../src/margin/PortfolioMargin.sol";

/// @notice A configured clearing house: ETH (underlying 0) and BTC (1), USDC (6 decimals,
/// asset 0) and WETH (18 decimals, asset 1, haircut 10%, moves with ETH), 8-decimal price and
/// vol feeds, SPAN-like scenarios, a backstop account and roles held by this contract's actors.
abstract contract ClearingHouseFixture is OrderSigner {
    int256 internal constant WAD = 1e18;
    uint256 internal constant T0 = 1_800_000_000;

    address internal constant GOV = address(0x60F);
    address internal constant GUARD = address(0x6A4D);
    address internal constant MATCH = address(0x3A7C);
    address internal constant RISKOP = address(0x415C);
    // Account owners sign orders: their addresses are those of these private keys (checked
    // in setUp, and registered there for signing).
    uint256 internal constant ALICE_PK = 0xA11CE;
    uint256 internal constant BOB_PK = 0xB0B;
    uint256 internal constant CAROL_PK = 0xCA401;
    uint256 internal constant BACKSTOP_PK = 0xBAC;
    address internal constant ALICE = 0xe05fcC23807536bEe418f142D19fa0d21BB0cfF7;
    address internal constant BOB = 0x0376AAc07Ad725E01357B1725B5ceC61aE10473c;
    address internal constant CAROL = 0x0F89F1868aF3b14a5eca86ed9a5404A742a11454;
    address internal constant LIQ = address(0x11D8);
    address internal constant BACKSTOP_OWNER = 0x097D9BDda97aF457Ef75388803e9c282e15e6b9a;

    ClearingHouse internal ch;
    ClearingHouseAdmin internal adm; // the clearing house's address, the admin ABI
    MarginVerifier internal verifier;
    MockERC20 internal usdc;
    MockERC20 internal weth;
    MockAggregator internal ethFeed;
    MockAggregator internal btcFeed;
    MockAggregator internal ethVol;
    MockAggregator internal btcVol;
    uint256 internal bk; // backstop account

    uint256 internal ethPerp;
    uint256 internal btcFut;
    uint256 internal ethCall;
    uint256 internal ethPut;
    uint64 internal expiry;

    function defaultParams() internal pure returns (RiskParams memory p) {
        p.underlyings = new UnderlyingParams[](2);
        p.underlyings[0] = MarginPresets.spanLike();
        p.underlyings[1] = MarginPresets.spanLike();
        p.assets = new AssetParams[](2);
        p.assets[0] = AssetParams(0, PortfolioMargin.STABLE);
        p.assets[1] = AssetParams(1e17, 0);
        p.correlationCredit = 3e17;
        p.imFactor = 125e16;
    }

    function setUp() public virtual {
        vm.warp(T0);
        require(registerKey(ALICE_PK) == ALICE && registerKey(BOB_PK) == BOB, "actor keys");
        require(registerKey(CAROL_PK) == CAROL && registerKey(BACKSTOP_PK) == BACKSTOP_OWNER, "actor keys");
        // The shipped verifier (optimizer runs 1e6): tests that import the clearing house are
        // compiled in its size profile (runs 1), and so would a `new MarginVerifier()` be.
        verifier = MarginVerifier(vm.deployCode("out/MarginVerifier.sol/MarginVerifier.json"));
        ch = new ClearingHouse(GOV, verifier, address(new ClearingHouseAdmin(verifier, address(new ClearingHouseRecalibration(verifier)))));
        adm = ClearingHouseAdmin(address(ch));
        usdc = MockERC20(settlementToken());
        weth = new MockERC20("Wrapped Ether", "WETH", 18);
        ethFeed = new MockAggregator(8, "ETH / USD", 2000e8);
        btcFeed = new MockAggregator(8, "BTC / USD", 60_000e8);
        ethVol = new MockAggregator(8, "ETH IV", 6e7);
        btcVol = new MockAggregator(8, "BTC IV", 5e7);
        vm.startPrank(GOV);
        ClearingHouseBase.UnderlyingConfig[] memory us = new ClearingHouseBase.UnderlyingConfig[](2);
        us[0] = underlyingCfg(ethFeed, ethVol);
        us[1] = underlyingCfg(btcFeed, btcVol);
        address[] memory tokens = new address[](2);
        (tokens[0], tokens[1]) = (address(usdc), address(weth));
        adm.configureMarkets(us, tokens, abi.encode(defaultParams()));
        adm.setLiquidationConfig(ClearingHouseBase.LiquidationConfig(5e16, 5e17, 1 hours, 1e18, 1000e18));
        adm.setRole(ch.MATCHER(), MATCH, true);
        adm.setRole(ch.GUARDIAN(), GUARD, true);
        adm.setRole(ch.RISK_OPERATOR(), RISKOP, true);
        bk = ch.accountId(BACKSTOP_OWNER, 0);
        adm.setBackstop(bk);
        expiry = uint64(T0 + 30 days);
        ethPerp = adm.listInstrument(0, 0, 0, 0);
        btcFut = adm.listInstrument(1, 0, 0, expiry);
        ethCall = adm.listInstrument(0, 1, 2200e18, expiry);
        ethPut = adm.listInstrument(0, 2, 1800e18, expiry);
        vm.stopPrank();
        // The backstop is funded like any account.
        fund(BACKSTOP_OWNER, 0, 1_000_000e6);
    }

    /// @dev The settlement stablecoin (asset 0, 6 decimals). Tests of token callbacks deploy a
    /// token with hooks instead (same interface: it is called through MockERC20's ABI).
    function settlementToken() internal virtual returns (address) {
        return address(new MockERC20("USD Coin", "USDC", 6));
    }

    // ------------------------------------------------------------------ helpers

    /// @dev An underlying's feeds with the fixture's ages (1 hour strict, 1 day lenient).
    function underlyingCfg(MockAggregator price, MockAggregator vol)
        internal
        pure
        returns (ClearingHouseBase.UnderlyingConfig memory)
    {
        return ClearingHouseBase.UnderlyingConfig(
            AggregatorV3Interface(address(price)), 1 hours, 1 days, AggregatorV3Interface(address(vol))
        );
    }

    /// @dev The first round of `feed` published at or after `t`, found from the latest round
    /// backwards (what a keeper does); the latest round must be at or after t.
    function firstRoundAtOrAfter(MockAggregator feed, uint256 t) internal view returns (uint80 r) {
        r = feed.roundId();
        while (r > 1) {
            try feed.getRoundData(r - 1) returns (uint80, int256, uint256, uint256 upd, uint80) {
                if (upd < t) break;
            } catch {
                break;
            }
            --r;
        }
    }

    /// @dev settleInstrument at the first round of the instrument's price feed at or after expiry.
    function settle(uint256 id) internal {
        (uint8 u,,,, uint64 exp,) = ch.instruments(id);
        MockAggregator feed = u == 0 ? ethFeed : btcFeed;
        adm.settleInstrument(id, firstRoundAtOrAfter(feed, exp));
    }

    function acct(address who) internal view returns (uint256) {
        return ch.accountId(who, 0);
    }

    /// @dev Mints `amount` token units of asset to `who` and deposits into its sub-account 0.
    function fund(address who, uint256 asset, uint256 amount) internal returns (uint256 a) {
        a = ch.accountId(who, 0);
        depositTo(who, a, asset, amount);
    }

    function depositTo(address who, uint256 a, uint256 asset, uint256 amount) internal {
        MockERC20 t = asset == 0 ? usdc : weth;
        t.mint(who, amount);
        vm.startPrank(who);
        t.approve(address(ch), amount);
        ch.deposit(a, asset, amount);
        vm.stopPrank();
    }

    /// @dev The matcher settles two orders signed by the accounts' owners, exactly at (q, p).
    function doTrade(uint256 buyer, uint256 seller, uint256 id, int256 q, int256 p) internal {
        signedTrade(ch, MATCH, buyer, seller, id, q, p);
    }

    /// @dev The model mark of an instrument now (spot for a future), rounded down to TICK: a
    /// price inside the band.
    function markPrice(uint256 id) internal view returns (int256 p) {
        (uint8 u, uint8 kind,,, uint64 exp, uint128 strike) = ch.instruments(id);
        Market memory m = marketNow();
        p = m.spots[u];
        if (kind != 0) p = verifier.modelPrice(kind == 1, p, int256(uint256(strike)), exp - block.timestamp, m.vols[u], m.rate);
        p -= p % 1e10;
    }

    function setEth(int256 usd8) internal {
        ethFeed.setAnswer(usd8);
        ethVol.setAnswer(ethVol.answer()); // keep the vol fresh too
    }

    function setBtc(int256 usd8) internal {
        btcFeed.setAnswer(usd8);
        btcVol.setAnswer(btcVol.answer());
    }

    function refreshFeeds() internal {
        ethFeed.setAnswer(ethFeed.answer());
        btcFeed.setAnswer(btcFeed.answer());
        ethVol.setAnswer(ethVol.answer());
        btcVol.setAnswer(btcVol.answer());
    }

    /// @dev The market as the protocol reads it, built from the feeds whatever their age.
    function marketNow() internal view returns (Market memory m) {
        m.timestamp = uint64(block.timestamp);
        m.rate = ch.rate();
        m.spots = new int256[](2);
        m.vols = new int256[](2);
        m.spots[0] = ethFeed.answer() * 1e10;
        m.spots[1] = btcFeed.answer() * 1e10;
        m.vols[0] = ethVol.answer() * 1e10;
        m.vols[1] = btcVol.answer() * 1e10;
    }

    function fullCheckNow(uint256 a) internal view returns (MarginResult memory) {
        return verifier.fullCheck(ch.portfolioOf(a), marketNow(), ch.riskParams());
    }

    function nonceOf(uint256 a) internal view returns (uint64 n) {
        (n,) = ch.accountState(a);
    }

    function flaggedAt(uint256 a) internal view returns (uint64 f) {
        (, f) = ch.accountState(a);
    }

    /// @dev Sum over accounts of a balance, plus the pools, in WAD of the asset.
    function heldWad(uint256 asset) internal view returns (int256) {
        MockERC20 t = asset == 0 ? usdc : weth;
        return int256(t.balanceOf(address(ch))) * (asset == 0 ? int256(1e12) : int256(1));
    }
}
