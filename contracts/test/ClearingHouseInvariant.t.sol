// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {InvariantBase} from "./utils/InvariantBase.sol";
import {OrderSigner} from "./utils/OrderSigner.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {ClearingHouse} from "../src/ClearingHouse.sol";
import {ClearingHouseAdmin} from "../src/ClearingHouseAdmin.sol";
import {ClearingHouseRecalibration} from "../src/ClearingHouseRecalibration.sol";
import {MarginVerifier} from "../src/MarginVerifier.sol";
import {MockERC20} from "../src/token/MockERC20.sol";
import {MockAggregator} from "../src/oracle/MockAggregator.sol";
import {IClearingHouseEvents} from "../src/interfaces/IClearingHouse.sol";
import {Vm} from "./utils/Vm.sol";
import {MarginResult, Market, Portfolio} from "../src/margin/PortfolioMargin.sol";

/// @notice Random actions on a live clearing house: deposits, withdrawals, matched trades,
/// price and time moves, flags, liquidations, bounty claims and calls from strangers. It keeps
/// ghost counters of every property violation it observes; the invariant test asserts them.
contract Handler is OrderSigner {
    ClearingHouse internal ch;
    ClearingHouseAdmin internal adm;
    MarginVerifier internal verifier;
    MockERC20 internal usdc;
    MockERC20 internal weth;
    MockAggregator internal ethFeed;
    MockAggregator internal btcFeed;
    MockAggregator internal ethVol;
    MockAggregator internal btcVol;
    address internal matcher;
    uint256[] internal instruments;
    address[3] internal actors; // of private keys 0xA1, 0xA2, 0xA3: they sign their orders
    address internal constant LIQUIDATOR = address(0x1D0);
    address internal constant STRANGER = address(0x5757);

    // Ghosts.
    uint256 public healthyLiquidated; // a liquidation or flag of an account passing the full check
    uint256 public liquidationWorseThanModel;
    uint256 public insurancePaidLiquidator; // the fund fell during a liquidation (it only absorbs bad debt)
    uint256 public badDebtOfSolventAccount; // resolveBadDebt succeeded on an account with equity >= 0
    uint256 public unauthorisedSucceeded;
    uint256 public liquidations;
    uint256 public trades;
    int256 public bountiesClaimed;
    uint256 public badDebtsResolved;
    uint256 public settlements;
    uint256 public settlementMovedEquity; // realising settled positions changed the model equity
    /// What the backstop should hold per instrument: the net of every hand-over (the
    /// liquidated account's loss per instrument), zero once a settled instrument is realised.
    mapping(uint256 => int256) public handedOver;
    /// Funding realised into balances (every FundingSettled event), all accounts.
    int256 public fundingRealised;
    uint256 public pokes;

    /// Starts recording events before a call that may realise funding (every action does).
    modifier collectsFunding() {
        vm.recordLogs();
        _;
        vm.getRecordedLogs(); // (what a failed call left: discarded)
    }

    /// After a call that succeeded: adds the funding it realised to fundingRealised and starts
    /// recording afresh. (The logs of a reverted call can be recorded too: every call that may
    /// fail is followed by _discard instead.)
    function _collect() internal {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(ch) && logs[i].topics[0] == IClearingHouseEvents.FundingSettled.selector) {
                fundingRealised += abi.decode(logs[i].data, (int256));
            }
        }
    }

    function _discard() internal {
        vm.getRecordedLogs();
    }

    constructor(
        ClearingHouse ch_,
        MockERC20 usdc_,
        MockERC20 weth_,
        MockAggregator[4] memory feeds,
        address matcher_,
        uint256[] memory instruments_
    ) {
        ch = ch_;
        adm = ClearingHouseAdmin(address(ch_));
        verifier = ch_.verifier();
        usdc = usdc_;
        weth = weth_;
        (ethFeed, btcFeed, ethVol, btcVol) = (feeds[0], feeds[1], feeds[2], feeds[3]);
        matcher = matcher_;
        instruments = instruments_;
        for (uint256 i; i < 3; ++i) {
            actors[i] = registerKey(0xA1 + i);
        }
    }

    function actor(uint256 i) external view returns (address) {
        return actors[i];
    }

    function actorAccount(uint256 i) public view returns (uint256) {
        return ch.accountId(actors[i], 0);
    }

    // ------------------------------------------------------------------ actions

    function deposit(uint256 who, bool volatileAsset, uint256 amount) external {
        address a = actors[who % 3];
        uint256 asset = volatileAsset ? 1 : 0;
        amount = volatileAsset ? bound(amount, 1e15, 20e18) : bound(amount, 1e6, 50_000e6);
        MockERC20 t = volatileAsset ? weth : usdc;
        t.mint(a, amount);
        vm.startPrank(a);
        t.approve(address(ch), amount);
        ch.deposit(ch.accountId(a, 0), asset, amount);
        vm.stopPrank();
    }

    function withdraw(uint256 who, bool volatileAsset, uint256 amount) external collectsFunding {
        address a = actors[who % 3];
        uint256 acct = ch.accountId(a, 0);
        amount = volatileAsset ? bound(amount, 1, 10e18) : bound(amount, 1, 20_000e6);
        vm.prank(a);
        try ch.withdraw(acct, volatileAsset ? 1 : 0, amount) {
            _collect();
        } catch {
            _discard();
        }
    }

    function trade(uint256 buyer, uint256 seller, uint256 inst, uint256 qty, uint256 priceSeed) external collectsFunding {
        uint256 b = actorAccount(buyer % 3);
        uint256 s = actorAccount(seller % 3);
        if (b == s) s = actorAccount((seller + 1) % 3);
        uint256 id = instruments[inst % instruments.length];
        int256 q = int256(bound(qty, 1, 2000)) * 1e16;
        (, uint8 kind,,, uint64 exp, uint128 strike) = ch.instruments(id);
        int256 price;
        if (kind == 0) {
            int256 spot = (id == instruments[1] ? btcFeed.answer() : ethFeed.answer()) * 1e10;
            price = spot - spot % 1e10 + int256(bound(priceSeed, 0, 20)) * 1e18 - 10e18;
        } else {
            // Within +-50 of the model mark (the options are on ETH), so most prices are inside
            // the band and the trade reaches the margin rule.
            if (block.timestamp >= exp) return;
            int256 mark = verifier.modelPrice(
                kind == 1, ethFeed.answer() * 1e10, int256(uint256(strike)), exp - block.timestamp, ethVol.answer() * 1e10, ch.rate()
            );
            price = mark - mark % 1e10 + int256(bound(priceSeed, 0, 20)) * 5e18 - 50e18;
            if (price < 0) price = 0;
        }
        ClearingHouseBase.Order memory bo = newOrder(b, id, q, price);
        ClearingHouseBase.Order memory so = newOrder(s, id, -q, price);
        bytes memory bs = signFor(address(ch), bo);
        bytes memory ss = signFor(address(ch), so);
        vm.prank(matcher);
        try ch.trade(bo, bs, so, ss, q, price) {
            ++trades;
            _collect();
            // A signed order fills at most once its quantity: the same match again must fail.
            vm.prank(matcher);
            try ch.trade(bo, bs, so, ss, q, price) {
                ++unauthorisedSucceeded;
                _collect();
            } catch {
                _discard();
            }
        } catch {
            _discard();
        }
    }

    /// Moves ETH and BTC by up to +-8% each (within [200, 20000] and [5000, 400000]), and the
    /// vols within [20%, 150%]; refreshes every feed.
    function movePrices(uint256 ethMove, uint256 btcMove, uint256 volMove) external {
        int256 e = ethFeed.answer();
        int256 b = btcFeed.answer();
        e = e + e * (int256(bound(ethMove, 0, 160)) - 80) / 1000;
        b = b + b * (int256(bound(btcMove, 0, 160)) - 80) / 1000;
        e = e < 200e8 ? int256(200e8) : e > 20_000e8 ? int256(20_000e8) : e;
        b = b < 5000e8 ? int256(5000e8) : b > 400_000e8 ? int256(400_000e8) : b;
        ethFeed.setAnswer(e);
        btcFeed.setAnswer(b);
        int256 v = int256(bound(volMove, 20, 150)) * 1e6;
        ethVol.setAnswer(v);
        btcVol.setAnswer(v);
    }

    /// Moves to the perpetual's next funding interval (when `wait`) and pokes its funding: the
    /// index moves by the clamped premium of the trades since the last poke.
    function pokeFunding(bool wait) external collectsFunding {
        if (wait) {
            (, uint256 lastPoke,,,) = adm.fundingState(instruments[0]);
            if (block.timestamp < lastPoke + 1 hours) vm.warp(lastPoke + 1 hours);
            ethFeed.setAnswer(ethFeed.answer());
            btcFeed.setAnswer(btcFeed.answer());
            ethVol.setAnswer(ethVol.answer());
            btcVol.setAnswer(btcVol.answer());
        }
        try adm.pokeFunding(instruments[0]) {
            ++pokes;
        } catch {}
    }

    /// The funding accrued and not realised, over every account (the backstop too).
    function accruedAll() public view returns (int256 sum) {
        sum = adm.accruedFunding(ch.backstop());
        for (uint256 i; i < 3; ++i) {
            sum += adm.accruedFunding(actorAccount(i));
        }
    }

    function passTime(uint256 secs) external {
        vm.warp(block.timestamp + bound(secs, 1, 3 hours));
        ethFeed.setAnswer(ethFeed.answer());
        btcFeed.setAnswer(btcFeed.answer());
        ethVol.setAnswer(ethVol.answer());
        btcVol.setAnswer(btcVol.answer());
    }

    /// Tries to liquidate with the best witness; checks the model's promises around it.
    function liquidate(uint256 who, uint256 fractionSeed) external collectsFunding {
        uint256 acct = actorAccount(who % 3);
        MarginResult memory r;
        try ch.marginOf(acct) returns (MarginResult memory res) {
            r = res;
        } catch {
            return;
        }
        int256 fraction = int256(bound(fractionSeed, 1e16, 1e18));
        (uint64 nonce,) = ch.accountState(acct);
        int256 equityBefore = r.equity;
        int256 insuranceBefore = ch.insuranceFund();
        int256 bountiesBefore = ch.totalBounties();
        int256[] memory held = _quantities(acct);
        vm.prank(LIQUIDATOR);
        try ch.liquidate(acct, nonce, r.witness, fraction) returns (int256) {
            ++liquidations;
            _collect();
            int256[] memory left = _quantities(acct);
            for (uint256 i; i < instruments.length; ++i) {
                // A settled position is realised, not handed over: its instrument is not live.
                (,,, bool settled,,) = ch.instruments(instruments[i]);
                if (!settled) handedOver[instruments[i]] += held[i] - left[i];
            }
            if (r.state == 0) ++healthyLiquidated;
            // The fund never pays a liquidator: it only gains from penalties here.
            if (ch.insuranceFund() < insuranceBefore) ++insurancePaidLiquidator;
            // The account loses at most the penalty plus the TICK rounding of the marks.
            int256 penalty = ch.insuranceFund() - insuranceBefore + ch.totalBounties() - bountiesBefore;
            (uint256[] memory ids,) = adm.positionsOf(acct);
            int256 slack = int256(ids.length + 40) * 1e10;
            try ch.marginOf(acct) returns (MarginResult memory after_) {
                if (after_.equity < equityBefore - penalty - slack) ++liquidationWorseThanModel;
            } catch {}
        } catch {
            _discard();
        }
    }

    /// Flag and liquidation attempts on an account that passes the full check, with every
    /// witness index of ETH: none may succeed.
    function attackHealthy(uint256 who, uint256 scenarioSeed) external collectsFunding {
        uint256 acct = actorAccount(who % 3);
        MarginResult memory r;
        try ch.marginOf(acct) returns (MarginResult memory res) {
            r = res;
        } catch {
            return;
        }
        if (r.state != 0) return;
        (uint64 nonce,) = ch.accountState(acct);
        uint256[] memory w = new uint256[](2);
        w[0] = bound(scenarioSeed, 0, 22);
        w[1] = bound(scenarioSeed >> 8, 0, 22);
        vm.prank(LIQUIDATOR);
        try ch.flag(acct, nonce, w) {
            ++healthyLiquidated;
        } catch {}
        _discard(); // (a flag realises nothing)
        vm.prank(LIQUIDATOR);
        try ch.liquidate(acct, nonce, w, 1e18) {
            ++healthyLiquidated;
            _collect();
        } catch {
            _discard();
        }
    }

    function flag(uint256 who) external collectsFunding {
        uint256 acct = actorAccount(who % 3);
        try ch.marginOf(acct) returns (MarginResult memory r) {
            (uint64 nonce,) = ch.accountState(acct);
            try ch.flag(acct, nonce, r.witness) {
                if (r.state == 0) ++healthyLiquidated;
            } catch {}
        } catch {}
    }

    function claim() external {
        int256 before = ch.bounties(LIQUIDATOR);
        vm.prank(LIQUIDATOR);
        try adm.claimBounty() {
            bountiesClaimed += before - ch.bounties(LIQUIDATOR);
        } catch {}
    }

    /// A stranger calls a state-changing entry point; any success is a violation.
    function stranger(uint256 which, uint256 arg) external collectsFunding {
        uint256 victim = actorAccount(arg % 3);
        bytes memory data;
        uint256 k = which % 10;
        if (k == 0) data = abi.encodeCall(ch.withdraw, (victim, 0, 1));
        else if (k == 1) data = _strangerTrade(victim, actorAccount((arg + 1) % 3));
        else if (k == 2) data = abi.encodeCall(ch.transferCollateral, (victim, victim + 1, 0, 1));
        else if (k == 3) data = abi.encodeCall(adm.setOperator, (victim, STRANGER, true));
        else if (k == 4) data = abi.encodeCall(adm.setBackstop, (victim));
        else if (k == 5) data = abi.encodeCall(adm.pause, ());
        else if (k == 6) data = abi.encodeCall(adm.setRiskParams, (ch.riskParams()));
        else if (k == 7) data = abi.encodeCall(ClearingHouseRecalibration(address(adm)).queueRecalibration, (""));
        else if (k == 8) data = abi.encodeCall(adm.listInstrument, (0, 0, 0, 0));
        else data = abi.encodeCall(adm.setRole, (ch.MATCHER(), STRANGER, true));
        vm.prank(STRANGER);
        (bool ok,) = address(ch).call(data);
        if (ok) ++unauthorisedSucceeded;
        if (ok) _collect();
        else _discard();
    }

    /// A trade of two orders signed by their owners, sent by someone without the matcher role.
    function _strangerTrade(uint256 buyer, uint256 seller) internal returns (bytes memory) {
        int256 p = ethFeed.answer() * 1e10;
        ClearingHouseBase.Order memory bo = newOrder(buyer, instruments[0], 1e16, p);
        ClearingHouseBase.Order memory so = newOrder(seller, instruments[0], -1e16, p);
        return abi.encodeCall(ch.trade, (bo, signFor(address(ch), bo), so, signFor(address(ch), so), 1e16, p));
    }

    /// Resolves the bad debt of an actor when it has any (insurance first, then the backstop);
    /// only an account whose model equity (lenient market, settled positions folded) is below
    /// zero may be resolved.
    function resolveBadDebt(uint256 who) external collectsFunding {
        uint256 acct = actorAccount(who % 3);
        int256 equity;
        bool known;
        try verifier.fullCheck(ch.portfolioOf(acct), _market(), ch.riskParams()) returns (MarginResult memory r) {
            (equity, known) = (r.equity, true);
        } catch {}
        try ch.resolveBadDebt(acct) {
            ++badDebtsResolved;
            _collect();
            if (known && equity >= 0) ++badDebtOfSolventAccount;
        } catch {
            _discard();
        }
    }

    function _equity(uint256 acct) internal view returns (bool known, int256 equity) {
        try verifier.fullCheck(ch.portfolioOf(acct), _market(), ch.riskParams()) returns (MarginResult memory r) {
            return (true, r.equity);
        } catch {}
    }

    /// The feeds' latest answers in WAD, whatever their age (the resolution reads them leniently).
    function _market() internal view returns (Market memory m) {
        m.timestamp = uint64(block.timestamp);
        m.rate = ch.rate();
        m.spots = new int256[](2);
        m.vols = new int256[](2);
        m.spots[0] = ethFeed.answer() * 1e10;
        m.spots[1] = btcFeed.answer() * 1e10;
        m.vols[0] = ethVol.answer() * 1e10;
        m.vols[1] = btcVol.answer() * 1e10;
    }

    /// The first round of `feed` published at or after `t` (the round settlement must name).
    function _firstRoundAtOrAfter(MockAggregator feed, uint256 t) internal view returns (uint80 r) {
        r = feed.roundId();
        while (r > 1) {
            (,,, uint256 upd,) = feed.getRoundData(r - 1);
            if (upd < t) break;
            --r;
        }
    }

    /// Rarely (1 in 8): jump to the dated instruments' expiry, settle them and every account.
    function expireAndSettle(uint256 seed) external collectsFunding {
        if (seed % 8 != 0) return;
        (,,,, uint64 exp,) = ch.instruments(instruments[1]);
        if (block.timestamp < exp) vm.warp(exp);
        ethFeed.setAnswer(ethFeed.answer());
        btcFeed.setAnswer(btcFeed.answer());
        ethVol.setAnswer(ethVol.answer());
        btcVol.setAnswer(btcVol.answer());
        for (uint256 i = 1; i < instruments.length; ++i) {
            (uint8 u,,,, uint64 e,) = ch.instruments(instruments[i]);
            try adm.settleInstrument(instruments[i], _firstRoundAtOrAfter(u == 0 ? ethFeed : btcFeed, e)) {} catch {}
        }
        for (uint256 i; i < 4; ++i) {
            uint256 acct = i < 3 ? actorAccount(i) : ch.backstop();
            // Checks already value settled positions at their payoff: realising them is a
            // bookkeeping step that must not move the equity by a wei.
            (bool known, int256 before) = _equity(acct);
            try ch.settleAccount(acct) {
                ++settlements;
                _collect();
                if (i == 3) _backstopSettled();
                (bool knownAfter, int256 after_) = _equity(acct);
                if (known && knownAfter && after_ != before) ++settlementMovedEquity;
            } catch {
                _discard();
            }
        }
    }

    /// The backstop's positions in settled instruments are realised: nothing of them is left.
    function _backstopSettled() internal {
        for (uint256 i; i < instruments.length; ++i) {
            (,,, bool settled,,) = ch.instruments(instruments[i]);
            if (settled) handedOver[instruments[i]] = 0;
        }
    }

    /// The account's quantity in each of the handler's instruments (0 when it has none).
    function _quantities(uint256 acct) internal view returns (int256[] memory q) {
        q = new int256[](instruments.length);
        (uint256[] memory ids, int256[] memory qs) = adm.positionsOf(acct);
        for (uint256 i; i < instruments.length; ++i) {
            for (uint256 j; j < ids.length; ++j) {
                if (ids[j] == instruments[i]) q[i] = qs[j];
            }
        }
    }

    function actorCount() external pure returns (uint256) {
        return 3;
    }
}

/// @notice Invariants of the clearing house under the Handler's random actions (runs and depth
/// in contracts/foundry.toml, [invariant]).
contract ClearingHouseInvariantTest is ClearingHouseFixture, InvariantBase {
    Handler internal handler;

    function setUp() public override {
        super.setUp();
        uint256[] memory ids = new uint256[](4);
        (ids[0], ids[1], ids[2], ids[3]) = (ethPerp, btcFut, ethCall, ethPut);
        handler = new Handler(ch, usdc, weth, [ethFeed, btcFeed, ethVol, btcVol], MATCH, ids);
        // Seed the actors so trades can happen from the first call.
        for (uint256 i; i < 3; ++i) {
            fund(handler.actor(i), 0, 20_000e6);
        }
        targetContract(address(handler));
        vm.prank(GOV);
        adm.setFundingCap(0.01e18); // 1% of spot per interval: funding moves equity visibly
        bytes4[] memory sel = new bytes4[](14);
        sel[0] = Handler.deposit.selector;
        sel[1] = Handler.withdraw.selector;
        sel[2] = Handler.trade.selector;
        sel[3] = Handler.trade.selector; // trades twice as likely
        sel[4] = Handler.movePrices.selector;
        sel[5] = Handler.passTime.selector;
        sel[6] = Handler.liquidate.selector;
        sel[7] = Handler.attackHealthy.selector;
        sel[8] = Handler.claim.selector;
        sel[9] = Handler.stranger.selector;
        sel[10] = Handler.resolveBadDebt.selector;
        sel[11] = Handler.expireAndSettle.selector;
        sel[12] = Handler.pokeFunding.selector;
        sel[13] = Handler.pokeFunding.selector; // funding as often as trades
        targetSelector(FuzzSelector(address(handler), sel));
    }

    /// The handler reaches the interesting states: trades settle and liquidations happen (so
    /// the invariants below are not vacuous).
    function test_handlerReachesLiquidation() public {
        handler.trade(0, 1, 0, 1999, 10); // actor 0 buys 20 ETH perp (TestBase.bound maps 1999 to 2000 lots) at spot from actor 1
        handler.trade(0, 1, 0, 1999, 10);
        handler.trade(0, 1, 0, 1999, 10);
        assertEq(handler.trades(), 2, "trades settle (the third fails the IM check)");
        for (uint256 i; i < 12 && handler.liquidations() == 0; ++i) {
            handler.movePrices(0, 80, 50); // ETH -8%
            handler.liquidate(0, 5e17);
        }
        assertTrue(handler.liquidations() > 0, "a liquidation happened");
        assertTrue(handler.handedOver(1) > 0, "the backstop took actor 0's long");
        invariant_backstopBookIsTheNetOfHandOvers();
        handler.claim();
        invariant_collateralConserved();
        invariant_liquidationWithinModel();
        invariant_openInterestZeroSum();
    }

    /// Bad debt and settlement are reachable too.
    function test_handlerReachesBadDebtAndSettlement() public {
        handler.trade(0, 1, 0, 1999, 10); // actor 0 long 20 ETH perp
        handler.trade(0, 1, 0, 1999, 10);
        handler.trade(2, 1, 2, 99, 100); // actor 2 buys 1 call
        for (uint256 i; i < 6; ++i) {
            handler.movePrices(0, 80, 50); // ETH -8% each, no liquidation in between
        }
        handler.liquidate(0, 99e16); // TestBase.bound maps 0.99e18 to a fraction of 1e18: everything
        handler.resolveBadDebt(0);
        assertEq(handler.badDebtsResolved(), 1, "bad debt resolved");
        handler.expireAndSettle(0);
        assertTrue(handler.settlements() >= 2, "accounts settled");
        assertEq(handler.settlementMovedEquity(), 0, "folding == realising");
        invariant_backstopBookIsTheNetOfHandOvers();
        invariant_collateralConserved();
        invariant_openInterestZeroSum();
    }

    /// tokens held (in WAD) == sum of balances + insurance fund + unclaimed bounties, per asset;
    /// for the settlement asset, balances include the funding accrued and not yet realised
    /// (realised funding moves between balances as it is paid).
    function invariant_collateralConserved() public view {
        int256 sumUsdc = ch.balanceOf(bk, 0) + ch.insuranceFund() + ch.totalBounties() + handler.accruedAll();
        int256 sumWeth = ch.balanceOf(bk, 1);
        for (uint256 i; i < 3; ++i) {
            uint256 a = handler.actorAccount(i);
            sumUsdc += ch.balanceOf(a, 0);
            sumWeth += ch.balanceOf(a, 1);
        }
        assertEq(heldWad(0), sumUsdc, "USDC held == balances + insurance + bounties");
        assertEq(heldWad(1), sumWeth, "WETH held == balances");
        assertGe(ch.insuranceFund(), 0, "insurance fund never negative");
    }

    /// Funding is zero-sum to the wei: what every account (the backstop included) realised plus
    /// what it has accrued and not realised is exactly zero.
    function invariant_fundingZeroSum() public view {
        assertEq(handler.fundingRealised() + handler.accruedAll(), 0, "realised + accrued funding == 0");
    }

    /// The handler reaches funding: a trade off the spot, a poke, a liquidation of a perpetual,
    /// realisations on both sides and the backstop's accrual.
    function test_handlerReachesFunding() public {
        handler.trade(0, 1, 0, 1999, 20); // actor 0 long 20 ETH perp at spot + 10 from actor 1
        handler.trade(0, 1, 0, 1999, 20);
        handler.pokeFunding(true);
        assertEq(handler.pokes(), 1, "poked");
        assertTrue(handler.accruedAll() == 0 && adm.accruedFunding(handler.actorAccount(0)) < 0, "the long pays");
        for (uint256 i; i < 12 && handler.liquidations() == 0; ++i) {
            handler.movePrices(0, 80, 50); // ETH -8%
            handler.liquidate(0, 5e17);
        }
        assertTrue(handler.liquidations() > 0, "a liquidation happened");
        assertTrue(handler.fundingRealised() != 0, "funding realised");
        handler.pokeFunding(true);
        assertTrue(adm.accruedFunding(bk) != 0, "the backstop accrues");
        invariant_fundingZeroSum();
        invariant_collateralConserved();
        invariant_openInterestZeroSum();
    }

    function invariant_healthyNeverFlaggedOrLiquidated() public view {
        assertEq(handler.healthyLiquidated(), 0, "a healthy account was flagged or liquidated");
    }

    function invariant_liquidationWithinModel() public view {
        assertEq(handler.liquidationWorseThanModel(), 0, "liquidation cost more than penalty + rounding");
    }

    function invariant_settledPositionsValuedAtTheirPayoff() public view {
        assertEq(handler.settlementMovedEquity(), 0, "realising settled positions moved the equity");
    }

    function invariant_insuranceOnlyAbsorbsBadDebt() public view {
        assertEq(handler.insurancePaidLiquidator(), 0, "insurance fund fell during a liquidation");
        assertEq(handler.badDebtOfSolventAccount(), 0, "bad debt resolved on an account with equity >= 0");
    }

    function invariant_unauthorisedCallsChangeNothing() public view {
        assertEq(handler.unauthorisedSucceeded(), 0, "a stranger's call succeeded");
    }

    /// Positions are zero-sum per instrument (every trade and takeover is matched).
    function invariant_openInterestZeroSum() public view {
        for (uint256 id = 1; id <= 4; ++id) {
            int256 net = _qty(bk, id);
            for (uint256 i; i < 3; ++i) {
                net += _qty(handler.actorAccount(i), id);
            }
            assertEq(net, 0, "net open interest");
        }
    }

    /// The backstop's book (keyed by instrument, in the instruments' words) is exactly the net
    /// of what liquidations handed over, instrument by instrument; its position list names each
    /// instrument it holds once, never one at zero; and the verifier sees the same book
    /// (portfolioOf: the live instruments, in the list's order).
    function invariant_backstopBookIsTheNetOfHandOvers() public view {
        for (uint256 id = 1; id <= 4; ++id) {
            assertEq(_qty(bk, id), handler.handedOver(id), "backstop's book == net of hand-overs");
        }
        (uint256[] memory ids, int256[] memory q) = adm.positionsOf(bk);
        Portfolio memory pf = ch.portfolioOf(bk);
        uint256 live;
        for (uint256 i; i < ids.length; ++i) {
            assertTrue(q[i] != 0, "no entry at zero");
            for (uint256 j = i + 1; j < ids.length; ++j) {
                assertTrue(ids[i] != ids[j], "one entry per instrument");
            }
            (,,, bool settled,,) = ch.instruments(ids[i]);
            if (settled) continue;
            assertEq(pf.positions[live++].quantity, q[i], "portfolioOf reads the book");
        }
        assertEq(pf.positions.length, live, "portfolioOf: the live entries");
    }

    function _qty(uint256 a, uint256 id) internal view returns (int256) {
        (uint256[] memory ids, int256[] memory q) = adm.positionsOf(a);
        for (uint256 i; i < ids.length; ++i) {
            if (ids[i] == id) return q[i];
        }
        return 0;
    }
}
