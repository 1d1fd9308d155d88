// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {InvariantBase} from "./utils/InvariantBase.sol";
import {OrderSigner} from "./utils/OrderSigner.sol";
import {IClearingHouseErrors, IClearingHouseEvents} from "../src/interfaces/IClearingHouse.sol";
import {Vm} from "./utils/Vm.sol";
import {ClearingHouse} from "../src/ClearingHouse.sol";
import {ClearingHouseAdmin} from "../src/ClearingHouseAdmin.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {MarginVerifier} from "../src/MarginVerifier.sol";
import {MockERC20} from "../src/token/MockERC20.sol";
import {MockAggregator} from "../src/oracle/MockAggregator.sol";
import {FixedPoint} from "../src/math/FixedPoint.sol";
import {MarginResult, Market, Portfolio, Position} from "../src/margin/PortfolioMargin.sol";

/// @notice Random actions on a live clearing house by two honest owners (two sub-accounts
/// each), the backstop, an honest keeper and a self-dealing attacker who controls three owner
/// keys (two sub-accounts each, six books), signs for all of them, makes its keys operators of
/// each other's books, trades with itself at any price the band allows (and some it does not),
/// liquidates its own books for the bounty and asks for its deficits to be written off.
///
/// A refused action reverts the handler call with NoOp(reason): forge counts it in its revert
/// metrics (`show_metrics`) and, with fail_on_revert = false, it is a no-op. A probe of something the
/// protocol must refuse (a forged signature, a stranger settling a match, ...) returns normally
/// whatever happens and records a violation if it succeeded.
///
/// Ghost accounting, in two units. "eq" is the model equity exactly as the protocol computes
/// it (settled positions at their payoff, WETH after its haircut rounded down, every position
/// q * mark floored): the metric of the margin rules and of bad debt; an account's deficit is
/// max(0, -eq). "Value" is the same valuation without rounding, in WAD^2 units (cash * 1e18 +
/// WETH * spot * (1 - haircut) + sum q * mark): linear, so it is exactly conserved.
contract AdversarialHandler is OrderSigner {
    using FixedPoint for int256;

    /// The action changed nothing: `reason` is the selector of the refusal that decided it
    /// (0 when the handler found nothing to do).
    error NoOp(bytes4 reason);

    struct Px {
        int256[] mark; // per instrument id: the model mark (spot for a future, the settled payoff once settled)
        int256[] band; // per instrument id: priceBand x spot of its underlying
        int256 spotE;
        int256 pw; // value of one WETH: spot x (1 - haircut), exact (spot is a multiple of 1e10)
    }

    struct Snap {
        Px x;
        int256[] eq; // per account index
        int256[] v; // per account index: exact value (WAD^2)
        int256 wA; // the attacker's value (its six books and its liquidators' bounties), FULL snapshots only
        uint256 mask; // the accounts snapshotted
    }

    struct Signed {
        ClearingHouseBase.Order o;
        bytes sig;
        address signer;
    }

    struct Match {
        Signed b;
        Signed s;
        uint256 bi; // account indices
        uint256 si;
        int256 q;
        int256 p;
    }

    struct Liq {
        uint256 i;
        address by;
        uint256[] witness;
        int256 fraction;
        bool due;
        int256 penalty;
        int256 bounty;
        int256 roundBound;
        uint64 nonce;
    }

    int256 internal constant WAD = 1e18;
    int256 internal constant TICK = 1e10;
    int256 internal constant LOT = 1e8;

    // Instruments (ids as listed: the fixture's four, then the test's three).
    uint256 internal constant PERP = 1; // ETH perpetual
    uint256 internal constant BTC_FUT = 2; // BTC future, 30 days
    uint256 internal constant CALL_2200 = 3; // ETH call 2200, 30 days
    uint256 internal constant PUT_1800 = 4; // ETH put 1800, 30 days
    uint256 internal constant FUT_30D = 5; // ETH future, 30 days (a calendar against the perp)
    uint256 internal constant CALL_2200_60D = 6; // ETH call 2200, 60 days (a calendar against CALL_2200)
    uint256 internal constant CALL_2000 = 7; // ETH call 2000, 30 days (a vertical against CALL_2200)
    uint256 internal constant N_INST = 7;

    // Accounts: 0-3 honest (owner i / 2, sub i % 2), 4-9 the attacker's, 10 the backstop.
    uint256 internal constant N_ACCT = 11;
    uint256 internal constant FIRST_ATTACKER = 4;
    uint256 internal constant BK = 10;
    uint256 internal constant POOL = 8;
    uint256 internal constant FULL = 2 ** N_ACCT - 1; // every account

    address internal constant LIQ = address(0x11D8); // honest keeper
    address internal constant INSURER = address(0x1A5C);

    // Violation classes, one per invariant family (the first violation's text is kept).
    uint256 internal constant RISK = 0;
    uint256 internal constant LIQUIDATION = 1;
    uint256 internal constant INSURANCE = 2;
    uint256 internal constant DEFICIT = 3;
    uint256 internal constant ORDERS = 4;
    uint256 internal constant MIRROR = 5;

    // What kind of action a snapshot pair brackets (see _post).
    uint8 internal constant OTHER = 0;
    uint8 internal constant MARKET = 1;
    uint8 internal constant LIQUIDATED = 2;
    uint8 internal constant WRITTEN_OFF = 3;

    ClearingHouse internal immutable ch;
    ClearingHouseAdmin internal immutable adm;
    MarginVerifier internal immutable verifier;
    MockERC20 internal immutable usdc;
    MockERC20 internal immutable weth;
    MockAggregator internal immutable ethFeed;
    MockAggregator internal immutable btcFeed;
    MockAggregator internal immutable ethVol;
    MockAggregator internal immutable btcVol;
    address internal immutable matcher;
    address internal immutable guardian;
    int256 internal immutable haircut; // of WETH

    uint256[N_ACCT] internal accts;
    address[N_ACCT] internal ownerOf;
    mapping(uint256 => uint256) internal indexOf; // account id => index + 1
    address[3] internal attackers;
    uint8[N_INST + 1] internal kindOf;
    uint8[N_INST + 1] internal underlyingOf;
    uint64[N_INST + 1] internal expiryOf;

    // ------------------------------------------------------------------ ghosts

    uint256[7] public violations;
    string public firstViolation;

    /// What the attacker is entitled to (WAD^2): tokens it put in minus tokens it took out,
    /// plus q * (mark - price) of every trade between one of its books and an honest account,
    /// plus the change of its value in every market action (price, vol, time, settlement).
    int256 public ledgerA;
    /// Deficit the market made in the attacker's books (WAD^2): every increase of a book's
    /// deficit in a market action, plus the TICK rounding of a liquidation against a book.
    int256 public allowanceA;
    int256 public writtenOffA; // bad debt of the attacker's books written off (WAD)
    int256 public ghostInsurance; // deposits + penalty shares - bad debt covered, each computed here
    int256 public ghostSocialised;
    uint256 public ghostTrades; // successful matches sent by the matcher
    mapping(bytes32 => uint256) public ghostFilled;
    mapping(uint256 => mapping(address => bool)) internal ghostOperator;
    mapping(uint256 => mapping(uint256 => bool)) internal ghostCancelled;
    Signed[POOL] internal pool; // orders with something left to fill
    uint256 internal poolNext;
    bytes4 internal transient _lastError; // the last refusal (for NoOp's reason)
    int256[N_ACCT] internal knownMM; // the requirement and IM of each account at its last full
    int256[N_ACCT] internal knownIM; // check here: a cheap screen for _findBelow
    uint256 internal actions; // handler actions so far
    uint256 internal unpauseAt; // the action at which the guardian lifts its pause

    /// Every action first lets the guardian lift a pause that has run its course.
    /// And every action's changes to a book are announced (see _checkAnnounced).
    modifier tick() {
        ++actions;
        if (unpauseAt != 0 && actions >= unpauseAt) {
            unpauseAt = 0;
            vm.prank(guardian);
            adm.unpause();
        }
        bytes32[N_ACCT] memory before = _fingerprints();
        vm.recordLogs();
        _;
        _checkAnnounced(before, vm.getRecordedLogs());
    }

    /// Each book's nonce, flag, positions and balances, hashed.
    function _fingerprints() internal view returns (bytes32[N_ACCT] memory f) {
        for (uint256 i; i < N_ACCT; ++i) {
            uint256 a = accts[i];
            (uint64 nonce, uint64 flaggedAt) = ch.accountState(a);
            (uint256[] memory ids, int256[] memory qs) = adm.positionsOf(a);
            f[i] = keccak256(abi.encode(nonce, flaggedAt, ids, qs, ch.balanceOf(a, 0), ch.balanceOf(a, 1)));
        }
    }

    /// Every book (the backstop's aside: it is never assessed) whose nonce, flag, positions or
    /// balances an action changed is named by one of the clearing house's events that the
    /// keeper's indexer reads accounts from (keeper/indexer/decode.py: NONCE_CARRIED,
    /// NONCE_BUMPED, NAMED_ONLY). The keeper re-reads exactly the books the index names since
    /// its last block and takes every other book as it was (keeper/core.py, _snapshot).
    function _checkAnnounced(bytes32[N_ACCT] memory before, Vm.Log[] memory logs) internal {
        bytes32[N_ACCT] memory after_ = _fingerprints();
        for (uint256 i; i < N_ACCT; ++i) {
            if (i == BK || after_[i] == before[i]) continue;
            if (!_named(accts[i], logs)) _fail(6, "book changed without an event naming it", i, 0, 0);
        }
    }

    function _named(uint256 acct, Vm.Log[] memory logs) internal view returns (bool) {
        for (uint256 k; k < logs.length; ++k) {
            Vm.Log memory l = logs[k];
            if (l.emitter != address(ch) || l.topics.length == 0 || !_accountEvent(l.topics[0])) continue;
            for (uint256 t = 1; t < l.topics.length; ++t) {
                if (uint256(l.topics[t]) == acct) return true;
            }
            for (uint256 w; w + 32 <= l.data.length; w += 32) {
                if (uint256(bytes32(_slice32(l.data, w))) == acct) return true;
            }
        }
        return false;
    }

    function _slice32(bytes memory b, uint256 at) internal pure returns (bytes32 x) {
        assembly ("memory-safe") {
            x := mload(add(add(b, 32), at))
        }
    }

    /// The events keeper/indexer/decode.py takes account ids from.
    function _accountEvent(bytes32 topic0) internal pure returns (bool) {
        return topic0 == IClearingHouseEvents.Deposit.selector || topic0 == IClearingHouseEvents.Withdrawal.selector
            || topic0 == IClearingHouseEvents.CollateralTransfer.selector || topic0 == IClearingHouseEvents.Trade.selector
            || topic0 == IClearingHouseEvents.MarginCall.selector || topic0 == IClearingHouseEvents.Liquidation.selector
            || topic0 == IClearingHouseEvents.PositionSettled.selector
            || topic0 == IClearingHouseEvents.BadDebtResolved.selector
            || topic0 == IClearingHouseEvents.MarginCallCleared.selector
            || topic0 == IClearingHouseEvents.CollateralSeized.selector || topic0 == IClearingHouseEvents.OperatorSet.selector
            || topic0 == IClearingHouseEvents.BackstopSet.selector;
    }

    // Reach: how often each interesting path succeeded.
    uint256 public selfTrades;
    uint256 public attackerHonestTrades;
    uint256 public operatorFills;
    uint256 public pooledFills;
    uint256 public dumps;
    uint256 public liquidations;
    uint256 public selfLiquidations;
    uint256 public badDebts;
    uint256 public attackerBadDebts;
    uint256 public flags;
    uint256 public settlements;
    uint256 public outflows;
    uint256 public claims;
    uint256 public pausedTrades;

    constructor(
        ClearingHouse ch_,
        MockERC20 usdc_,
        MockERC20 weth_,
        MockAggregator[4] memory feeds,
        address matcher_,
        address guardian_
    ) {
        ch = ch_;
        adm = ClearingHouseAdmin(address(ch_));
        verifier = ch_.verifier();
        usdc = usdc_;
        weth = weth_;
        (ethFeed, btcFeed, ethVol, btcVol) = (feeds[0], feeds[1], feeds[2], feeds[3]);
        matcher = matcher_;
        guardian = guardian_;
        haircut = _i(adm.assetConfig(1).haircut);
        address[2] memory honest = [registerKey(0x4801), registerKey(0x4802)];
        for (uint256 k; k < 3; ++k) {
            attackers[k] = registerKey(0xBAD1 + k);
        }
        for (uint256 i; i < BK; ++i) {
            address o = i < FIRST_ATTACKER ? honest[i / 2] : attackers[(i - FIRST_ATTACKER) / 2];
            (ownerOf[i], accts[i]) = (o, ch.accountId(o, i % 2));
        }
        accts[BK] = ch.backstop();
        ownerOf[BK] = ch.accountOwner(accts[BK]);
        require(registerKey(0xBAC) == ownerOf[BK], "backstop key");
        for (uint256 i; i < N_ACCT; ++i) {
            indexOf[accts[i]] = i + 1;
        }
        for (uint256 id = 1; id <= N_INST; ++id) {
            (underlyingOf[id], kindOf[id],,, expiryOf[id],) = ch.instruments(id);
        }
    }

    /// Opening balances, through the tracked paths (so every ghost starts from them).
    function init() external {
        for (uint256 i; i < BK; ++i) {
            bool sub0 = i % 2 == 0;
            uint256 amount = i < FIRST_ATTACKER ? (sub0 ? 200_000e6 : 20_000e6) : (sub0 ? 20_000e6 : 5000e6);
            require(_deposit(i, 0, amount), "opening deposit");
            if (sub0) require(_deposit(i, 1, i < FIRST_ATTACKER ? 10e18 : 2e18), "opening WETH");
        }
        require(_depositInsurance(10_000e6), "opening insurance");
        // Opening books near IM, so that every run starts with risk a move can turn into a
        // margin call, a liquidation or bad debt: the attacker long the perp against an honest
        // book, long and short the perp against itself, short calls, long BTC, and a calendar
        // (long the dated future, short the perp).
        _open(4, 0, PERP, _leveraged(4, PERP, 60));
        _open(6, 8, PERP, _leveraged(6, PERP, 60));
        _open(1, 5, CALL_2200, _leveraged(5, CALL_2200, 60));
        _open(9, 2, BTC_FUT, _leveraged(9, BTC_FUT, 60));
        int256 q = _leveraged(7, FUT_30D, 60); // (its first leg is naked for a moment)
        _open(7, 3, FUT_30D, q);
        _open(3, 7, PERP, q);
    }

    /// bi buys q from si at the mark.
    function _open(uint256 bi, uint256 si, uint256 id, int256 q) internal {
        Snap memory s0 = _snap(_bit(bi) | _bit(si));
        require(_match(_leg(bi, si, id, q, _clampPrice(id, _floorTick(s0.x.mark[id])), 1), s0), "opening book");
    }

    // ================================================================== views for the test

    function account(uint256 i) external view returns (uint256) {
        return accts[i];
    }

    function attacker(uint256 k) external view returns (address) {
        return attackers[k];
    }

    function accountCount() external pure returns (uint256) {
        return N_ACCT;
    }

    function instrumentCount() external pure returns (uint256) {
        return N_INST;
    }

    function isAttacker(uint256 i) public pure returns (bool) {
        return i >= FIRST_ATTACKER && i < BK;
    }

    function violationCount() external view returns (uint256 n) {
        for (uint256 k; k < violations.length; ++k) {
            n += violations[k];
        }
    }

    /// Everything the invariants read of the state, in one pass over the accounts.
    struct Audit {
        int256 wA; // the attacker's value (WAD^2): its books and its keys' unclaimed bounties
        int256 wH; // the honest side's: honest books, backstop, insurance fund, the keeper's bounties
        int256 tokens; // value of the tokens the clearing house holds (WAD^2)
        int256 creditedUsdc; // sum of USDC balances, settled positions not yet realised at their payoff
        int256 creditedWeth;
        int256 bounties; // sum of the unclaimed bounties of everyone who liquidates here
        int256[] net; // per instrument id not yet settled: sum of positions
    }

    function audit() external view returns (Audit memory a) {
        Px memory x = _px(_market());
        a.net = new int256[](N_INST + 1);
        bool[] memory settled = new bool[](N_INST + 1);
        for (uint256 id = 1; id <= N_INST; ++id) {
            (,,, settled[id],,) = ch.instruments(id);
        }
        for (uint256 i; i < N_ACCT; ++i) {
            int256 c = ch.balanceOf(accts[i], 0);
            int256 w = ch.balanceOf(accts[i], 1);
            int256 v = c * WAD + w * x.pw;
            (uint256[] memory ids, int256[] memory qs) = adm.positionsOf(accts[i]);
            for (uint256 k; k < ids.length; ++k) {
                v += qs[k] * x.mark[ids[k]];
                if (settled[ids[k]]) c += (qs[k] * x.mark[ids[k]]) / WAD; // exact: the payoff is a multiple of TICK
                else a.net[ids[k]] += qs[k];
            }
            if (isAttacker(i)) a.wA += v;
            else a.wH += v;
            a.creditedUsdc += c;
            a.creditedWeth += w;
        }
        for (uint256 k; k < 3; ++k) {
            int256 b = ch.bounties(attackers[k]);
            a.wA += b * WAD;
            a.bounties += b;
        }
        a.bounties += ch.bounties(LIQ);
        a.wH += (ch.bounties(LIQ) + ch.insuranceFund()) * WAD;
        a.tokens = _i(usdc.balanceOf(address(ch))) * 1e12 * WAD + _i(weth.balanceOf(address(ch))) * x.pw;
    }

    // ================================================================== collateral actions

    function deposit(uint256 who, bool volatileAsset, uint256 amount) external tick {
        // WETH in whole gwei: every valuation of a WETH balance is then exact (see _px).
        amount = volatileAsset ? bound(amount, 1, 20e9) * 1e9 : bound(amount, 1e6, 50_000e6);
        if (!_deposit(who % BK, volatileAsset ? 1 : 0, amount)) revert NoOp(_lastError);
    }

    /// Withdraws a random amount, or everything the margin allows (the attacker's favourite).
    function withdraw(uint256 who, bool volatileAsset, uint256 amount) external tick {
        uint256 i = who % N_ACCT;
        uint256 asset = volatileAsset ? 1 : 0;
        if (amount % 2 == 0) amount = _freeUnits(i, asset, amount >> 1);
        else amount = volatileAsset ? bound(amount, 1, 10e9) * 1e9 : bound(amount, 1, 60_000e6);
        Snap memory s0 = _snap(_bit(i));
        MockERC20 t = volatileAsset ? weth : usdc;
        address o = ownerOf[i];
        uint256 before = t.balanceOf(o);
        vm.prank(o);
        try ch.withdraw(accts[i], asset, amount) {}
        catch (bytes memory e) {
            revert NoOp(_why(e));
        }
        if (isAttacker(i)) ledgerA -= _tokenValue(asset, t.balanceOf(o) - before, s0.x);
        _checkOutflow(i, "withdrawal");
        ++outflows;
        _post(s0, OTHER, 0, 0);
    }

    /// Moves collateral between the two sub-accounts of one owner.
    function transferCollateral(uint256 who, bool volatileAsset, uint256 amount) external tick {
        uint256 i = who % BK;
        uint256 j = i % 2 == 0 ? i + 1 : i - 1;
        uint256 asset = volatileAsset ? 1 : 0;
        int256 wad;
        if (amount % 2 == 0) {
            wad = _i(_freeUnits(i, asset, amount >> 1)) * (volatileAsset ? int256(1) : int256(1e12));
        } else {
            wad = volatileAsset ? _i(bound(amount, 1, 10e9)) * 1e9 : _i(bound(amount, 1, 60_000e18));
        }
        Snap memory s0 = _snap(_bit(i) | _bit(j));
        vm.prank(ownerOf[i]);
        try ch.transferCollateral(accts[i], accts[j], asset, wad) {}
        catch (bytes memory e) {
            revert NoOp(_why(e));
        }
        _checkOutflow(i, "transfer");
        ++outflows;
        _post(s0, OTHER, 0, 0);
    }

    function depositInsurance(uint256 amount) external tick {
        if (!_depositInsurance(bound(amount, 1, 5000e6))) revert NoOp(_lastError);
    }

    /// A liquidator (the keeper or one of the attacker's keys) claims its bounties.
    function claimBounty(uint256 who) external tick {
        address c = who % 4 == 3 ? LIQ : attackers[who % 4];
        if ((who >> 2) % 2 == 0) {
            for (uint256 k; k < 3; ++k) {
                if (ch.bounties(attackers[k]) > ch.bounties(c)) c = attackers[k];
            }
            if (ch.bounties(LIQ) > ch.bounties(c)) c = LIQ;
        }
        Snap memory s0 = _snap(0);
        uint256 before = usdc.balanceOf(c);
        vm.prank(c);
        try adm.claimBounty() {}
        catch (bytes memory e) {
            revert NoOp(_why(e));
        }
        if (c != LIQ) ledgerA -= _tokenValue(0, usdc.balanceOf(c) - before, s0.x);
        ++claims;
        _post(s0, OTHER, 0, 0);
    }

    // ================================================================== trading actions

    /// Any two accounts (the backstop included) trade one instrument.
    function trade(uint256 pairSeed, uint256 instSeed, uint256 qtySeed, uint256 priceSeed) external tick {
        (uint256 bi, uint256 si) = _pair(pairSeed, false);
        if (!_tradeOne(bi, si, _liveInstrument(instSeed), qtySeed, priceSeed)) revert NoOp(_lastError);
    }

    /// The attacker trades with itself (two of its books), mostly at the band's edges.
    function selfDeal(uint256 pairSeed, uint256 instSeed, uint256 qtySeed, uint256 priceSeed) external tick {
        (uint256 bi, uint256 si) = _pair(pairSeed, true);
        if (!_tradeOne(bi, si, _liveInstrument(instSeed), qtySeed, priceSeed)) revert NoOp(_lastError);
    }

    /// Two legs between one pair (mostly the attacker with itself): a vertical call spread, a
    /// calendar of calls, a calendar of futures (perp against the dated future), or a strangle.
    function combo(uint256 pairSeed, uint256 kindSeed, uint256 qtySeed, uint256 priceSeed) external tick {
        (uint256 bi, uint256 si) = _pair(pairSeed, pairSeed % 3 != 0);
        uint256 k = kindSeed % 4;
        (uint256 a, uint256 b) = k == 0
            ? (CALL_2000, CALL_2200)
            : k == 1 ? (CALL_2200_60D, CALL_2200) : k == 2 ? (PERP, FUT_30D) : (CALL_2200, PUT_1800);
        bool ok1 = _tradeOne(bi, si, a, qtySeed, priceSeed);
        // The spreads sell the second leg back to the same counterparty; the strangle buys both.
        bool ok2 =
            k == 3 ? _tradeOne(bi, si, b, qtySeed, priceSeed >> 5) : _tradeOne(si, bi, b, qtySeed, priceSeed >> 5);
        if (!ok1 && !ok2) revert NoOp(_lastError);
    }

    /// The attack the equity floor of rule (b) stops: one of the attacker's books closes a
    /// position at the band's worst edge for itself against another of its books (which
    /// pockets the difference to the mark), then asks for its deficit to be written off.
    function dumpDeficit(uint256 bookSeed, uint256 colluderSeed, uint256 closeSeed) external tick {
        uint256 book = FIRST_ATTACKER + bookSeed % 6;
        if ((bookSeed >> 8) % 2 == 0) book = _weakestBook(book);
        uint256 colluder = FIRST_ATTACKER + (book - FIRST_ATTACKER + 1 + colluderSeed % 5) % 6;
        (uint256[] memory ids, int256[] memory qs) = adm.positionsOf(accts[book]);
        bool ok;
        if (ids.length != 0) {
            uint256 k = closeSeed % ids.length;
            ok = _dump(book, colluder, ids[k], qs[k], closeSeed >> 8);
        }
        if (ch.portfolioOf(accts[book]).positions.length == 0 && _resolve(book)) ok = true;
        if (!ok) revert NoOp(_lastError);
    }

    /// Fills (again) an order left in the pool, against a fresh counter-order: sometimes more
    /// than what is left of it, or beyond its limit price (both must be refused).
    function fillPooled(uint256 slotSeed, uint256 counterSeed, uint256 qtySeed, uint256 priceSeed) external tick {
        Signed memory po = pool[slotSeed % POOL];
        if (po.o.account == 0) revert NoOp(0);
        uint256 pi = indexOf[po.o.account] - 1;
        uint256 ci = (pi + 1 + counterSeed % (N_ACCT - 1)) % N_ACCT;
        uint256 id = po.o.instrument;
        bool buy = po.o.quantity > 0;
        int256 left = (buy ? po.o.quantity : -po.o.quantity) - _i(ghostFilled[digestOf(address(ch), po.o)]);
        int256 q;
        if (qtySeed % 4 == 3 || left < LOT) q = left + LOT * _i(1 + (qtySeed >> 2) % 10); // beyond what is left
        else q = _i(bound(qtySeed >> 2, 1, _u(left / LOT))) * LOT;
        Snap memory s0 = _snap(_bit(pi) | _bit(ci));
        int256 p = _price(s0.x, id, priceSeed);
        // Within the pooled order's limit, unless the seed says to cross it by a tick.
        if (buy ? p > po.o.limitPrice : p < po.o.limitPrice) p = po.o.limitPrice;
        if ((priceSeed >> 16) % 8 == 7) p = buy ? po.o.limitPrice + TICK : po.o.limitPrice - TICK;
        Signed memory counter = _sign(newOrder(accts[ci], id, buy ? -q : q, p), ownerOf[ci]);
        Match memory t = buy ? Match(po, counter, pi, ci, q, p) : Match(counter, po, ci, pi, q, p);
        if (!_match(t, s0)) revert NoOp(_lastError);
        ++pooledFills;
    }

    /// The owner (or an operator) cancels a pooled order's nonce.
    function cancelPooled(uint256 slotSeed) external tick {
        Signed memory po = pool[slotSeed % POOL];
        if (po.o.account == 0) revert NoOp(0);
        vm.prank(ownerOf[indexOf[po.o.account] - 1]);
        try adm.cancelOrder(po.o.account, po.o.nonce) {}
        catch (bytes memory e) {
            revert NoOp(_why(e));
        }
        ghostCancelled[po.o.account][po.o.nonce] = true;
    }

    /// One attacker key becomes (or stops being) an operator of another key's book: its
    /// signatures then fill that book's orders.
    function setOperator(uint256 bookSeed, uint256 opSeed, bool allowed) external tick {
        uint256 i = FIRST_ATTACKER + bookSeed % 6;
        uint256 owner = (i - FIRST_ATTACKER) / 2;
        address op = attackers[(owner + 1 + opSeed % 2) % 3]; // another of the attacker's keys
        vm.prank(ownerOf[i]);
        adm.setOperator(accts[i], op, allowed);
        ghostOperator[accts[i]][op] = allowed;
    }

    /// Something the protocol must refuse, on an otherwise valid small trade (an honest book
    /// buys 0.01 ETH perp from one of the attacker's books at the mark): a signature by a key
    /// that is neither the owner nor an operator, a match sent by the attacker instead of the
    /// matcher, a price above the buyer's limit, an expired order, a cancelled order, a price
    /// outside the band. Any success is a violation.
    function probe(uint256 kind, uint256 seed) external tick {
        uint256 k = kind % 6;
        uint256 hi = seed % FIRST_ATTACKER;
        uint256 ai = FIRST_ATTACKER + (seed >> 8) % 6;
        Px memory x = _px(_market());
        int256 p = x.mark[PERP];
        if (k == 5) p += x.band[PERP] + TICK;
        ClearingHouseBase.Order memory bo = newOrder(accts[hi], PERP, 1e16, k == 2 ? p - TICK : p);
        ClearingHouseBase.Order memory so = newOrder(accts[ai], PERP, -1e16, p);
        if (k == 3) bo.deadline = uint64(block.timestamp - 1);
        if (k == 4) {
            vm.prank(ownerOf[hi]);
            adm.cancelOrder(accts[hi], bo.nonce);
            ghostCancelled[accts[hi]][bo.nonce] = true;
        }
        address bSigner = ownerOf[hi];
        if (k == 0) {
            // The attacker's key on an honest book (never its operator), or on a book of
            // another attacker key that has not made it an operator.
            address forger = attackers[(seed >> 16) % 3];
            if ((seed >> 24) % 2 == 0 && forger != ownerOf[ai] && !ghostOperator[accts[ai]][forger]) {
                _tryForbidden(
                    _sign(bo, bSigner),
                    _sign(so, forger),
                    matcher,
                    "a sell order signed by a non-owner, non-operator filled"
                );
                return;
            }
            bSigner = forger;
        }
        _tryForbidden(
            _sign(bo, bSigner),
            _sign(so, ownerOf[ai]),
            k == 1 ? ownerOf[ai] : matcher,
            k == 0
                ? "an order signed by a non-owner, non-operator filled"
                : k == 1
                    ? "a match not sent by the matcher settled"
                    : k == 2
                        ? "a fill above the buyer's limit price"
                        : k == 3
                            ? "an expired order filled"
                            : k == 4 ? "a cancelled order filled" : "a fill outside the price band"
        );
    }

    // ================================================================== market actions

    /// ETH and BTC move by up to +-3%, +-10% or +-35% (within [400, 10000] and [10000, 300000]):
    /// large moves beyond what IM covers make deficits; every feed is refreshed.
    function movePrices(uint256 ethMove, uint256 btcMove, uint256 mode) external tick {
        Snap memory s0 = _snap(FULL);
        int256 size = mode % 3 == 0 ? int256(30) : mode % 3 == 1 ? int256(100) : int256(350);
        int256 e = ethFeed.answer();
        int256 b = btcFeed.answer();
        e += (e * (_i(bound(ethMove, 0, _u(2 * size))) - size)) / 1000;
        b += (b * (_i(bound(btcMove, 0, _u(2 * size))) - size)) / 1000;
        e = e < 400e8 ? int256(400e8) : e > 10_000e8 ? int256(10_000e8) : e;
        b = b < 10_000e8 ? int256(10_000e8) : b > 300_000e8 ? int256(300_000e8) : b;
        ethFeed.setAnswer(e);
        btcFeed.setAnswer(b);
        ethVol.setAnswer(ethVol.answer());
        btcVol.setAnswer(btcVol.answer());
        _post(s0, MARKET, 0, 0);
    }

    /// Implied vols anywhere in [10%, 200%]; every feed is refreshed.
    function moveVol(uint256 ethV, uint256 btcV) external tick {
        Snap memory s0 = _snap(FULL);
        ethVol.setAnswer(_i(bound(ethV, 10, 200)) * 1e6);
        btcVol.setAnswer(_i(bound(btcV, 10, 200)) * 1e6);
        _refresh();
        _post(s0, MARKET, 0, 0);
    }

    /// Time passes: seconds to hours (feeds refreshed), hours without a refresh (older than
    /// maxAge: only risk-reducing trades, flags and liquidations), days without one (older than
    /// liquidationMaxAge: nothing that needs a price), or to just past the next expiry.
    function warp(uint256 secs, uint256 mode) external tick {
        Snap memory s0 = _snap(FULL);
        uint256 m = mode % 16;
        uint256 dt;
        bool refresh = true;
        if (m < 7) {
            dt = bound(secs, 1, 600);
        } else if (m < 10) {
            dt = bound(secs, 1 hours, 3 hours);
        } else if (m == 10) {
            (dt, refresh) = (bound(secs, 1 hours + 1, 6 hours), false);
        } else if (m == 11) {
            (dt, refresh) = (bound(secs, 1 days + 1, 2 days), false);
        } else {
            uint256 next = _expired(BTC_FUT) ? expiryOf[CALL_2200_60D] : expiryOf[BTC_FUT];
            dt = next > _now() ? next - _now() + bound(secs, 0, 600) : bound(secs, 1, 600);
        }
        vm.warp(block.timestamp + dt);
        if (refresh) _refresh();
        _post(s0, MARKET, 0, 0);
    }

    /// Settles every expired instrument at the first round at or after its expiry (a market
    /// action: marks become payoffs), then realises one account's settled positions.
    function settle(uint256 who) external tick {
        bool any;
        Snap memory s0 = _snap(FULL);
        for (uint256 id = 1; id <= N_INST; ++id) {
            (,,, bool settled,,) = ch.instruments(id);
            if (settled || !_expired(id)) continue;
            MockAggregator feed = underlyingOf[id] == 0 ? ethFeed : btcFeed;
            try adm.settleInstrument(id, _firstRoundAtOrAfter(feed, expiryOf[id])) {
                any = true;
            } catch {}
        }
        if (any) _post(s0, MARKET, 0, 0);
        uint256 i = _withSettled(who % N_ACCT);
        s0 = _snap(_bit(i));
        try ch.settleAccount(accts[i]) {
            any = true;
            ++settlements;
        } catch {}
        _post(s0, OTHER, 0, 0);
        if (!any) revert NoOp(_lastError);
    }

    /// The first account from `start` on holding a position in a settled instrument (`start` if none).
    function _withSettled(uint256 start) internal view returns (uint256) {
        for (uint256 k; k < N_ACCT; ++k) {
            uint256 i = (start + k) % N_ACCT;
            (uint256[] memory ids,) = adm.positionsOf(accts[i]);
            for (uint256 j; j < ids.length; ++j) {
                (,,, bool settled,,) = ch.instruments(ids[j]);
                if (settled) return i;
            }
        }
        return start;
    }

    /// The guardian pauses for the next 1 to 8 actions (then unpauses: see `tick`), or unpauses now.
    function pause(uint256 seed) external tick {
        bool paused = ch.paused();
        vm.prank(guardian);
        if (paused) {
            adm.unpause();
            unpauseAt = 0;
        } else {
            adm.pause();
            unpauseAt = actions + 1 + bound(seed, 1, 8);
        }
    }

    // ================================================================== margin calls and liquidation

    /// The keeper or one of the attacker's keys flags an account, with the best witness or a
    /// random one.
    function flag(uint256 who, uint256 witnessSeed, bool byAttacker) external tick {
        // Three times in four, the first unflagged account from `who` on that is below IM (if any).
        uint256 i = witnessSeed % 16 < 4 ? who % N_ACCT : _findBelow(who % N_ACCT, false);
        MarginResult memory r = _fullCheck(ch.portfolioOf(accts[i]));
        uint256[] memory w = witnessSeed % 4 == 0 ? _randomWitness(witnessSeed >> 2) : r.witness;
        (uint64 nonce,) = ch.accountState(accts[i]);
        Snap memory s0 = _snap(0);
        vm.prank(byAttacker ? attackers[witnessSeed % 3] : LIQ);
        try ch.flag(accts[i], nonce, w) {}
        catch (bytes memory e) {
            revert NoOp(_why(e));
        }
        if (r.state == 0) _fail(LIQUIDATION, "flagged an account at or above IM", i, r.equity, r.initialMargin);
        ++flags;
        _post(s0, OTHER, 0, 0);
    }

    /// Anyone clears the flag of the first flagged account from `who` on.
    function clearFlag(uint256 who) external tick {
        uint256 i = who % N_ACCT;
        for (uint256 k; k < N_ACCT; ++k) {
            (, uint64 f) = ch.accountState(accts[(i + k) % N_ACCT]);
            if (f != 0) {
                i = (i + k) % N_ACCT;
                break;
            }
        }
        Snap memory s0 = _snap(0);
        try ch.clearFlag(accts[i]) {}
        catch (bytes memory e) {
            revert NoOp(_why(e));
        }
        Portfolio memory pf = ch.portfolioOf(accts[i]);
        MarginResult memory r = _fullCheck(pf);
        if (r.state != 0 || !_fresh(pf)) {
            _fail(LIQUIDATION, "cleared the flag of an account below IM", i, r.equity, r.initialMargin);
        }
        _post(s0, OTHER, 0, 0);
    }

    /// Liquidates an account: the keeper, or for one of the attacker's books (half the time)
    /// one of the attacker's own keys, farming the bounty. Best or random witness, all or a
    /// random fraction.
    function liquidate(uint256 who, uint256 liqSeed, uint256 witnessSeed, uint256 fracSeed) external tick {
        // Three times in four, the first account from `who` on that is due (if any).
        uint256 i = liqSeed % 4 == 0 ? who % N_ACCT : _findBelow(who % N_ACCT, true);
        address by = isAttacker(i) && liqSeed % 2 == 0 ? attackers[(liqSeed >> 1) % 3] : LIQ;
        if (!_liquidate(i, by, witnessSeed, fracSeed)) revert NoOp(_lastError);
        // The keeper resolves the bad debt its full liquidation leaves behind at once (the
        // attacker leaves that to resolveBadDebt and dumpDeficit).
        if (by == LIQ && ch.portfolioOf(accts[i]).positions.length == 0) _resolve(i);
    }

    /// Half the time, the first account from `who` on without live positions and with a deficit.
    function resolveBadDebt(uint256 who) external tick {
        uint256 i = who % N_ACCT;
        if ((who >> 8) % 2 == 0) {
            Px memory x = _px(_market());
            for (uint256 k; k < N_ACCT; ++k) {
                uint256 j = (i + k) % N_ACCT;
                (, int256 eq) = _val(accts[j], x);
                if (eq < 0 && ch.portfolioOf(accts[j]).positions.length == 0) {
                    i = j;
                    break;
                }
            }
        }
        if (!_resolve(i)) revert NoOp(_lastError);
    }

    /// The first account from `start` on (the backstop aside) with live positions that is due
    /// for liquidation (`due`), or unflagged and below IM; `start` if none found. Screened
    /// cheaply first (equity against the requirement of the account's last full check here,
    /// with 10% slack for the market's moves since), then at most three full checks.
    function _findBelow(uint256 start, bool due) internal view returns (uint256) {
        Px memory x = _px(_market());
        (,, uint32 grace,,) = ch.liquidationConfig();
        uint256 checked;
        for (uint256 k; k < N_ACCT && checked < 3; ++k) {
            uint256 i = (start + k) % N_ACCT;
            (, uint64 flaggedAt) = ch.accountState(accts[i]);
            (, int256 eq) = _val(accts[i], x);
            bool graceOver = flaggedAt != 0 && _now() >= uint256(flaggedAt) + grace;
            bool screened =
                due ? (eq < (knownMM[i] * 11) / 10 || graceOver) : (eq < (knownIM[i] * 11) / 10 && flaggedAt == 0);
            if (!screened || i == BK) continue;
            Portfolio memory pf = ch.portfolioOf(accts[i]);
            if (pf.positions.length == 0) continue;
            ++checked;
            MarginResult memory r = _fullCheck(pf);
            if (due ? _due(r, flaggedAt) : r.state != 0) return i;
        }
        return start;
    }

    /// Below MM, or below IM and flagged at least a grace period ago.
    function _due(MarginResult memory r, uint64 flaggedAt) internal view returns (bool) {
        (,, uint32 grace,,) = ch.liquidationConfig();
        return r.state == 2 || (r.state == 1 && flaggedAt != 0 && _now() >= uint256(flaggedAt) + grace);
    }

    // ================================================================== internals: actions

    function _deposit(uint256 i, uint256 asset, uint256 amount) internal returns (bool ok) {
        MockERC20 t = asset == 0 ? usdc : weth;
        address o = ownerOf[i];
        t.mint(o, amount);
        Snap memory s0 = _snap(_bit(i));
        uint256 before = t.balanceOf(o);
        vm.startPrank(o);
        t.approve(address(ch), amount);
        try ch.deposit(accts[i], asset, amount) {
            ok = true;
        } catch (bytes memory e) {
            _lastError = _why(e);
        }
        vm.stopPrank();
        if (!ok) return false;
        if (isAttacker(i)) ledgerA += _tokenValue(asset, before - t.balanceOf(o), s0.x);
        _post(s0, OTHER, 0, 0);
    }

    function _depositInsurance(uint256 amount) internal returns (bool ok) {
        usdc.mint(INSURER, amount);
        Snap memory s0 = _snap(0);
        uint256 held = usdc.balanceOf(address(ch));
        vm.startPrank(INSURER);
        usdc.approve(address(ch), amount);
        try adm.depositInsurance(amount) {
            ok = true;
        } catch {}
        vm.stopPrank();
        if (!ok) return false;
        ghostInsurance += _i(usdc.balanceOf(address(ch)) - held) * 1e12;
        _post(s0, OTHER, 0, 0);
    }

    function _tradeOne(uint256 bi, uint256 si, uint256 id, uint256 qtySeed, uint256 priceSeed) internal returns (bool) {
        if (_expired(id)) return false;
        Snap memory s0 = _snap(_bit(bi) | _bit(si));
        // Half the time sized to what one side's margin allows (the attacker's favourite).
        int256 q = qtySeed % 2 == 0
            ? _leveraged((qtySeed >> 1) % 2 == 0 ? bi : si, id, qtySeed >> 2)
            : _quantity(id, qtySeed >> 1);
        Match memory t = _leg(bi, si, id, q, _price(s0.x, id, priceSeed), priceSeed >> 8);
        return _match(t, s0);
    }

    /// A quantity using 30% to 130% of the account's surplus over IM, at about a fifth of the
    /// underlying's spot of IM per unit.
    function _leveraged(uint256 i, uint256 id, uint256 seed) internal view returns (int256 q) {
        Portfolio memory pf = ch.portfolioOf(accts[i]);
        MarginResult memory r = _fullCheck(pf);
        int256 spot = (underlyingOf[id] == 0 ? ethFeed : btcFeed).answer() * 1e10;
        int256 free = r.equity - r.initialMargin;
        if (free <= 0) return LOT;
        q = (free * 5 * _i(bound(seed, 30, 130))) / (spot / 1e16);
        q -= q % LOT;
        if (q <= 0) q = LOT;
        if (q > 1e24) q = 1e24;
    }

    /// Two fresh orders for exactly (q, p), each signed by its account's owner or (a quarter of
    /// the time, when it has one) an operator; a third of them signed for twice the quantity
    /// and valid for a day and an hour, so that the rest stays in the pool.
    function _leg(uint256 bi, uint256 si, uint256 id, int256 q, int256 p, uint256 seed)
        internal
        returns (Match memory t)
    {
        bool pooled = seed % 3 == 0;
        int256 signedQ = pooled ? 2 * q : q;
        ClearingHouseBase.Order memory bo = newOrder(accts[bi], id, signedQ, p);
        ClearingHouseBase.Order memory so = newOrder(accts[si], id, -signedQ, p);
        if (pooled) (bo.deadline, so.deadline) = (bo.deadline + 1 days, so.deadline + 1 days);
        t.b = _sign(bo, _signer(bi, seed >> 2));
        t.s = _sign(so, _signer(si, seed >> 4));
        (t.bi, t.si, t.q, t.p) = (bi, si, q, p);
    }

    /// The matcher settles t; on success every ghost learns of it and each side's margin rule
    /// is re-checked from outside.
    function _match(Match memory t, Snap memory s0) internal returns (bool) {
        Portfolio memory pb = ch.portfolioOf(accts[t.bi]);
        Portfolio memory ps = ch.portfolioOf(accts[t.si]);
        vm.prank(matcher);
        try ch.trade(t.b.o, t.b.sig, t.s.o, t.s.sig, t.q, t.p) {}
        catch (bytes memory e) {
            _lastError = _why(e);
            return false;
        }
        ++ghostTrades;
        if (ch.paused()) ++pausedTrades;
        uint256 id = t.b.o.instrument;
        _recordFill(t.b, t.q, t.p, s0.x, id);
        _recordFill(t.s, -t.q, t.p, s0.x, id);
        _checkSide(t.bi, pb, s0.x);
        _checkSide(t.si, ps, s0.x);
        bool ab = isAttacker(t.bi);
        bool as_ = isAttacker(t.si);
        if (ab && as_) {
            ++selfTrades;
        } else if (ab || as_) {
            // The attacker's side of a trade with an honest account: what it agreed to.
            ledgerA += (ab ? t.q : -t.q) * (s0.x.mark[id] - t.p);
            ++attackerHonestTrades;
        }
        _post(s0, OTHER, 0, 0);
        return true;
    }

    function _liquidate(uint256 i, address by, uint256 witnessSeed, uint256 fracSeed) internal returns (bool) {
        Liq memory l;
        (l.i, l.by) = (i, by);
        Portfolio memory pf = ch.portfolioOf(accts[i]);
        MarginResult memory r = _fullCheck(pf);
        (knownMM[i], knownIM[i]) = (r.requirement, r.initialMargin);
        l.witness = witnessSeed % 4 == 0 ? _randomWitness(witnessSeed >> 2) : r.witness;
        l.fraction = fracSeed % 2 == 0 ? WAD : _i(bound(fracSeed >> 1, 1e15, 1e18));
        uint64 flaggedAt;
        (l.nonce, flaggedAt) = ch.accountState(accts[i]);
        l.due = _due(r, flaggedAt);
        (l.penalty, l.bounty) =
            _expectedPenalty(verifier.witnessCheck(pf, _market(), ch.riskParams(), l.witness), l.fraction);
        // The hand-over rounds each mark to TICK against the account, and each q * mark of
        // the metric floors: at most |q| * TICK / 1e18 + 1 wei per position.
        l.roundBound = 1;
        for (uint256 k; k < pf.positions.length; ++k) {
            int256 q = pf.positions[k].quantity;
            l.roundBound += (q < 0 ? -q : q) / LOT + 1;
        }
        if (!_liquidateCall(l)) return false;
        if (!l.due) _fail(LIQUIDATION, "liquidated an account that was not due", i, r.equity, r.requirement);
        return true;
    }

    /// The liquidation itself and what it must have booked.
    function _liquidateCall(Liq memory l) internal returns (bool) {
        Snap memory s0 = _snap(_bit(l.i) | _bit(BK));
        int256 ins0 = ch.insuranceFund();
        int256 b0 = ch.bounties(l.by);
        vm.prank(l.by);
        try ch.liquidate(accts[l.i], l.nonce, l.witness, l.fraction) returns (int256 paid) {
            if (paid != l.bounty || ch.bounties(l.by) - b0 != l.bounty) {
                _fail(
                    LIQUIDATION, "a liquidation paid a bounty other than its share of the penalty", l.i, paid, l.bounty
                );
            }
        } catch (bytes memory e) {
            _lastError = _why(e);
            return false;
        }
        (, uint64 f) = ch.accountState(accts[l.i]);
        if (f != 0) _fail(LIQUIDATION, "a liquidation left the flag", l.i, 0, 0);
        int256 moved = ch.insuranceFund() - ins0;
        if (moved != l.penalty - l.bounty) {
            _fail(
                INSURANCE,
                "a liquidation moved the fund by other than penalty - bounty",
                l.i,
                moved,
                l.penalty - l.bounty
            );
        }
        ghostInsurance += l.penalty - l.bounty;
        // The hand-over is at the marks rounded against the book: exactly, the book loses at
        // least its penalty and the backstop loses nothing.
        (int256 vBook,) = _val(accts[l.i], s0.x);
        (int256 vBk,) = _val(accts[BK], s0.x);
        if (vBook > s0.v[l.i] - l.penalty * WAD || vBk < s0.v[BK]) {
            _fail(LIQUIDATION, "a hand-over moved value to the book or out of the backstop", l.i, vBook, s0.v[l.i]);
        }
        ++liquidations;
        if (l.by != LIQ) ++selfLiquidations;
        _post(s0, LIQUIDATED, l.i, l.roundBound);
        return true;
    }

    /// Penalty and bounty as _chargePenalty defines them, from the witness check.
    function _expectedPenalty(MarginResult memory rw, int256 fraction) internal view returns (int256 pen, int256 bty) {
        (uint64 rate_, uint64 share,, uint128 minB, uint128 maxB) = ch.liquidationConfig();
        pen = rw.requirement.mulUp(fraction).mulUp(_i(rate_));
        if (pen > rw.equity) pen = rw.equity > 0 ? rw.equity : int256(0);
        bty = pen.mulDown(_i(share));
        if (bty < _i(minB)) bty = _i(minB);
        if (bty > _i(maxB)) bty = _i(maxB);
        if (bty > pen) bty = pen;
    }

    /// The attacker's book with live positions and the lowest equity (`fallback_` if none).
    function _weakestBook(uint256 fallback_) internal view returns (uint256 book) {
        book = fallback_;
        Px memory x = _px(_market());
        int256 lowest = type(int256).max;
        for (uint256 i = FIRST_ATTACKER; i < BK; ++i) {
            (, int256 eq) = _val(accts[i], x);
            if (eq < lowest && ch.portfolioOf(accts[i]).positions.length != 0) (book, lowest) = (i, eq);
        }
    }

    /// The book closes all or half of its position `held` in `id` at the band's edge against
    /// itself (it sells a long at the lowest price, buys back a short at the highest).
    function _dump(uint256 book, uint256 colluder, uint256 id, int256 held, uint256 seed) internal returns (bool ok) {
        if (_expired(id)) return false;
        Snap memory s0 = _snap(_bit(book) | _bit(colluder));
        int256 q = held < 0 ? -held : held;
        if (seed % 2 == 0 && q >= 2 * LOT) q = (q / 2) - (q / 2) % LOT;
        int256 m = s0.x.mark[id];
        int256 b = s0.x.band[id];
        Match memory t = held > 0
            ? _leg(colluder, book, id, q, _clampPrice(id, _ceilTick(m - b)), seed >> 1)
            : _leg(book, colluder, id, q, _floorTick(m + b), seed >> 1);
        ok = _match(t, s0);
        if (ok) ++dumps;
    }

    /// resolveBadDebt, with the debt and the insurance fund's share computed here first.
    function _resolve(uint256 i) internal returns (bool) {
        Portfolio memory pf = ch.portfolioOf(accts[i]);
        Snap memory s0 = _snap(_bit(i) | _bit(BK));
        int256 debt;
        if (pf.positions.length == 0) {
            int256 bal = pf.collateral[0];
            if (pf.collateral[1] > 0) bal += pf.collateral[1].mulDown(s0.x.spotE).mulDown(WAD - haircut);
            debt = bal < 0 ? -bal : int256(0);
        }
        int256 ins0 = ch.insuranceFund();
        int256 soc0 = ch.totalSocialisedLoss();
        try ch.resolveBadDebt(accts[i]) {}
        catch (bytes memory e) {
            _lastError = _why(e);
            return false;
        }
        int256 cover = debt < ins0 ? debt : ins0;
        if (ch.insuranceFund() != ins0 - cover || ch.totalSocialisedLoss() != soc0 + debt - cover) {
            _fail(
                INSURANCE,
                "bad debt covered other than insurance first, then the backstop",
                i,
                ins0 - ch.insuranceFund(),
                cover
            );
        }
        // The amount written off is exactly the account's deficit (model equity below zero).
        if (debt == 0 || s0.eq[i] != -debt) {
            _fail(INSURANCE, "wrote off something other than the deficit", i, debt, s0.eq[i]);
        }
        ghostInsurance -= cover;
        ghostSocialised += debt - cover;
        ++badDebts;
        if (isAttacker(i)) {
            writtenOffA += debt;
            ++attackerBadDebts;
        }
        _post(s0, WRITTEN_OFF, i, 0);
        return true;
    }

    /// A trade the protocol must refuse; success is a violation (recorded, not reverted).
    function _tryForbidden(Signed memory b, Signed memory s, address sender, string memory what) internal {
        vm.prank(sender);
        try ch.trade(b.o, b.sig, s.o, s.sig, 1e16, s.o.limitPrice) {
            _fail(ORDERS, what, indexOf[b.o.account] - 1, 0, 0);
        } catch {}
    }

    // ================================================================== internals: checks

    /// One side of a successful trade passed the margin rule of _tradeMargin, re-derived from
    /// outside: (a) unpaused, fresh prices, healthy after (or no positions and no debt); else
    /// (b) its risk did not grow: requirement not up, surplus (equity - IM) not down, equity
    /// not below min(equity before, 0). A trade that fails (b) increased the account's risk
    /// (more scenario loss, less buffer, or a deeper deficit): it must have left it above IM.
    function _checkSide(uint256 i, Portfolio memory before, Px memory x) internal {
        Portfolio memory pf = ch.portfolioOf(accts[i]);
        bool open = !ch.paused();
        if (open && pf.positions.length == 0 && !_hasDebt(pf)) return;
        MarginResult memory r = _fullCheck(pf);
        (knownMM[i], knownIM[i]) = (r.requirement, r.initialMargin);
        (, int256 eq) = _val(accts[i], x);
        if (eq != r.equity) _fail(MIRROR, "the ghost equity differs from the model's", i, eq, r.equity);
        if (open && r.state == 0 && _fresh(pf)) return;
        MarginResult memory r0 = _fullCheck(before);
        int256 floor_ = r0.equity < 0 ? r0.equity : int256(0);
        if (r.requirement > r0.requirement) {
            _fail(
                RISK, "a trade raised the requirement of an account it left below IM", i, r.requirement, r0.requirement
            );
        } else if (r.equity - r.initialMargin < r0.equity - r0.initialMargin) {
            _fail(
                RISK,
                "a trade cut the surplus of an account it left below IM",
                i,
                r.equity - r.initialMargin,
                r0.equity - r0.initialMargin
            );
        } else if (r.equity < floor_) {
            _fail(RISK, "a trade created or deepened a deficit", i, r.equity, floor_);
        }
    }

    /// After value left an account (withdrawal, transfer out): it must be healthy on fresh
    /// prices, unpaused (an account without positions and debt needs no price).
    function _checkOutflow(uint256 i, string memory what) internal {
        if (ch.paused()) _fail(RISK, string.concat(what, " while paused"), i, 0, 0);
        Portfolio memory pf = ch.portfolioOf(accts[i]);
        if (pf.positions.length == 0 && !_hasDebt(pf)) return;
        MarginResult memory r = _fullCheck(pf);
        (knownMM[i], knownIM[i]) = (r.requirement, r.initialMargin);
        if (r.state != 0 || !_fresh(pf)) {
            _fail(RISK, string.concat(what, " left an account below IM"), i, r.equity, r.initialMargin);
        }
    }

    /// Every fill: within the signed quantity (and the contract's count agrees), signed by the
    /// owner or a current operator, live (deadline, not cancelled), within the limit and the band.
    function _recordFill(Signed memory so, int256 fill, int256 p, Px memory x, uint256 id) internal {
        bytes32 d = digestOf(address(ch), so.o);
        uint256 filled = ghostFilled[d] + _u(fill < 0 ? -fill : fill);
        ghostFilled[d] = filled;
        uint256 i = indexOf[so.o.account] - 1;
        if (filled > _u(so.o.quantity < 0 ? -so.o.quantity : so.o.quantity)) {
            _fail(ORDERS, "an order filled beyond its signed quantity", i, _i(filled), so.o.quantity);
        }
        if (adm.orderFilled(d) != filled) {
            _fail(ORDERS, "the order's filled count differs from its fills", i, _i(adm.orderFilled(d)), _i(filled));
        }
        if (so.signer != ownerOf[i]) {
            if (!ghostOperator[so.o.account][so.signer]) {
                _fail(ORDERS, "a non-owner, non-operator signature filled", i, 0, 0);
            }
            ++operatorFills;
        }
        if (_now() > so.o.deadline || ghostCancelled[so.o.account][so.o.nonce]) {
            _fail(ORDERS, "an expired or cancelled order filled", i, _i(block.timestamp), _i(so.o.deadline));
        }
        if (fill > 0 ? p > so.o.limitPrice : p < so.o.limitPrice) {
            _fail(ORDERS, "a fill beyond the limit price", i, p, so.o.limitPrice);
        }
        if (p > x.mark[id] + x.band[id] || p < x.mark[id] - x.band[id]) {
            _fail(ORDERS, "a fill outside the price band", i, p, x.mark[id]);
        }
        if (filled < _u(so.o.quantity < 0 ? -so.o.quantity : so.o.quantity)) {
            pool[poolNext % POOL] = so;
            ++poolNext;
        }
    }

    /// Closes the ghost accounting of one action (s0: the snapshot before it). Only a market
    /// action may deepen a deficit (its increase in the attacker's books is the allowance);
    /// a liquidation by at most its rounding bound (which the backstop took first); the
    /// backstop absorbs liquidations and socialised losses by design; anything else that
    /// deepens a deficit is a violation. A market action's change of the attacker's value is
    /// what the market moves gave it: it goes to the ledger.
    function _post(Snap memory s0, uint8 kind, uint256 target, int256 roundBound) internal {
        Snap memory s1 = kind == MARKET ? _snap(FULL) : _snapAt(s0.x, s0.mask);
        for (uint256 i; i < N_ACCT; ++i) {
            if (s0.mask & _bit(i) == 0) continue;
            int256 d0 = s0.eq[i] < 0 ? -s0.eq[i] : int256(0);
            int256 d1 = s1.eq[i] < 0 ? -s1.eq[i] : int256(0);
            if (d1 <= d0) continue;
            if (kind == MARKET || (kind == LIQUIDATED && i == target && d1 - d0 <= roundBound)) {
                if (isAttacker(i)) allowanceA += (d1 - d0) * WAD;
                continue;
            }
            if (i == BK && (kind == LIQUIDATED || kind == WRITTEN_OFF)) continue;
            _fail(DEFICIT, "an action other than a market move deepened a deficit", i, -d1, -d0);
        }
        if (kind == MARKET) ledgerA += s1.wA - s0.wA;
    }

    function _fail(uint256 cls, string memory what, uint256 i, int256 a, int256 b) internal {
        if (bytes(firstViolation).length == 0) {
            firstViolation = string.concat(
                what,
                " (account ",
                vm.toString(i),
                ": ",
                vm.toString(a),
                " vs ",
                vm.toString(b),
                ", t = ",
                vm.toString(block.timestamp),
                ")"
            );
        }
        ++violations[cls];
    }

    // ================================================================== internals: valuation

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

    function _fullCheck(Portfolio memory pf) internal view returns (MarginResult memory) {
        return verifier.fullCheck(pf, _market(), ch.riskParams());
    }

    /// Marks as every check uses them: spot for a future, the model price (time to expiry
    /// clamped at 0) for an option, the payoff at the settlement price once settled.
    function _px(Market memory m) internal view returns (Px memory x) {
        x.mark = new int256[](N_INST + 1);
        x.band = new int256[](N_INST + 1);
        int256 pb = adm.priceBand();
        for (uint256 id = 1; id <= N_INST; ++id) {
            x.band[id] = m.spots[underlyingOf[id]].mulDown(pb);
            x.mark[id] = _mark(m, id);
        }
        x.spotE = m.spots[0];
        x.pw = (x.spotE * (WAD - haircut)) / WAD; // exact: spot is a multiple of 1e10
    }

    function _mark(Market memory m, uint256 id) internal view returns (int256) {
        (,,, bool settled,, uint128 strike) = ch.instruments(id);
        int256 k = _i(strike);
        if (settled) {
            int256 sp = ch.settlementPrice(id);
            if (kindOf[id] == 0) return sp;
            if (kindOf[id] == 1) return sp > k ? sp - k : int256(0);
            return k > sp ? k - sp : int256(0);
        }
        uint256 u = underlyingOf[id];
        if (kindOf[id] == 0) return m.spots[u];
        uint256 tau = _expired(id) ? 0 : expiryOf[id] - _now();
        return verifier.modelPrice(kindOf[id] == 1, m.spots[u], k, tau, m.vols[u], m.rate);
    }

    /// (value, eq) of an account: value exact in WAD^2, eq the model's equity to the wei.
    function _val(uint256 a, Px memory x) internal view returns (int256 value, int256 eq) {
        int256 c = ch.balanceOf(a, 0);
        int256 w = ch.balanceOf(a, 1);
        value = c * WAD + w * x.pw;
        eq = c + (w > 0 ? w.mulDown(WAD - haircut).mulDown(x.spotE) : w);
        (uint256[] memory ids, int256[] memory qs) = adm.positionsOf(a);
        for (uint256 k; k < ids.length; ++k) {
            int256 mk = x.mark[ids[k]];
            value += qs[k] * mk;
            eq += qs[k].mulDown(mk); // exact for a settled position (payoff: a multiple of TICK)
        }
    }

    /// The marks, and the equity of the accounts in `mask` (bit i: account i). A market action
    /// moves every account (FULL, which also sums the attacker's value); any other action
    /// snapshots the accounts it acts on (what it does to the others is what
    /// inv_tokensConserved and inv_openInterestZeroSum see).
    function _snap(uint256 mask) internal view returns (Snap memory) {
        return _snapAt(_px(_market()), mask);
    }

    /// A snapshot at known marks (an action that is not a market action leaves them unchanged).
    function _snapAt(Px memory x, uint256 mask) internal view returns (Snap memory s) {
        (s.x, s.mask) = (x, mask);
        s.eq = new int256[](N_ACCT);
        s.v = new int256[](N_ACCT);
        for (uint256 i; i < N_ACCT; ++i) {
            if (mask & _bit(i) == 0) continue;
            (s.v[i], s.eq[i]) = _val(accts[i], s.x);
            if (isAttacker(i)) s.wA += s.v[i];
        }
        if (mask != FULL) return s;
        for (uint256 k; k < 3; ++k) {
            s.wA += ch.bounties(attackers[k]) * WAD;
        }
    }

    function _bit(uint256 i) internal pure returns (uint256) {
        return 2 ** i;
    }

    function _tokenValue(uint256 asset, uint256 units, Px memory x) internal pure returns (int256) {
        return asset == 0 ? _i(units) * 1e12 * WAD : _i(units) * x.pw;
    }

    /// As _readMarket: a feed of an underlying the portfolio uses older than maxAge is stale.
    function _fresh(Portfolio memory pf) internal view returns (bool) {
        bool[2] memory used;
        for (uint256 k; k < pf.positions.length; ++k) {
            used[pf.positions[k].underlying] = true;
        }
        if (pf.collateral[1] != 0) used[0] = true;
        for (uint256 u; u < 2; ++u) {
            if (!used[u]) continue;
            uint256 t0 = (u == 0 ? ethFeed : btcFeed).updatedAt();
            uint256 t1 = (u == 0 ? ethVol : btcVol).updatedAt();
            if (t1 < t0) t0 = t1;
            if (t0 < _now() && _now() - t0 > adm.underlyingConfig(u).maxAge) return false;
        }
        return true;
    }

    function _hasDebt(Portfolio memory pf) internal pure returns (bool) {
        return pf.collateral[0] < 0 || pf.collateral[1] < 0;
    }

    // ================================================================== internals: choices

    /// The first instrument from `seed` on that has not expired (the perpetual never does).
    function _liveInstrument(uint256 seed) internal view returns (uint256 id) {
        for (uint256 k; k < N_INST; ++k) {
            id = 1 + (seed + k) % N_INST;
            if (!_expired(id)) return id;
        }
    }

    /// Two distinct account indices; `attackerOnly`: two of the attacker's books.
    function _pair(uint256 seed, bool attackerOnly) internal pure returns (uint256 bi, uint256 si) {
        if (attackerOnly) {
            bi = FIRST_ATTACKER + seed % 6;
            si = FIRST_ATTACKER + (bi - FIRST_ATTACKER + 1 + (seed >> 8) % 5) % 6;
        } else {
            bi = seed % N_ACCT;
            si = (bi + 1 + (seed >> 8) % (N_ACCT - 1)) % N_ACCT;
        }
    }

    /// Dust (1e-10 to 1e-4 units) one time in eight, else 0.01 to 20 units; a thirtieth of
    /// that for BTC (similar notional).
    function _quantity(uint256 id, uint256 seed) internal view returns (int256 q) {
        q = seed % 8 == 0 ? _i(bound(seed >> 3, 1, 1e6)) * LOT : _i(bound(seed >> 3, 1, 2000)) * 1e16;
        if (underlyingOf[id] == 1) {
            q /= 30;
            q -= q % LOT;
            if (q == 0) q = LOT;
        }
    }

    /// At the mark, at either edge of the band, anywhere inside it, or (one time in sixteen)
    /// a tick outside it.
    function _price(Px memory x, uint256 id, uint256 seed) internal view returns (int256 p) {
        int256 hi = _floorTick(x.mark[id] + x.band[id]);
        int256 lo = _ceilTick(x.mark[id] - x.band[id]);
        uint256 mode = seed % 16;
        if (mode < 3) p = _floorTick(x.mark[id]);
        else if (mode < 7) p = hi;
        else if (mode < 11) p = lo;
        else if (mode < 15) p = lo + _i(bound(seed >> 4, 0, _u((hi - lo) / TICK))) * TICK;
        else p = (seed >> 4) % 2 == 0 ? hi + TICK : lo - TICK;
        p = _clampPrice(id, p);
    }

    /// A price the form checks accept: >= 0, and > 0 for a future.
    function _clampPrice(uint256 id, int256 p) internal view returns (int256) {
        if (kindOf[id] == 0 && p < TICK) return TICK;
        return p < 0 ? int256(0) : p;
    }

    /// The owner's key, or a quarter of the time one of its current operators (attacker keys).
    function _signer(uint256 i, uint256 seed) internal view returns (address) {
        if (seed % 4 == 0) {
            for (uint256 k; k < 3; ++k) {
                if (ghostOperator[accts[i]][attackers[k]]) return attackers[k];
            }
        }
        return ownerOf[i];
    }

    function _sign(ClearingHouseBase.Order memory o, address signer) internal view returns (Signed memory) {
        return Signed(o, signDigest(keyOf[signer], digestOf(address(ch), o)), signer);
    }

    /// Token units of `asset` the account could take out by the model: everything above IM
    /// (of a volatile asset at most its balance, in whole gwei), scaled by a random fraction
    /// in (0, 1].
    function _freeUnits(uint256 i, uint256 asset, uint256 seed) internal view returns (uint256) {
        Portfolio memory pf = ch.portfolioOf(accts[i]);
        int256 free;
        if (pf.positions.length == 0 && !_hasDebt(pf)) {
            free = asset == 0 ? pf.collateral[0] : pf.collateral[1];
        } else {
            MarginResult memory r = _fullCheck(pf);
            free = r.equity - r.initialMargin;
            if (asset == 1) {
                int256 perUnit = (ethFeed.answer() * 1e10).mulDown(WAD - haircut);
                free = (free * WAD) / perUnit;
                if (free > pf.collateral[1]) free = pf.collateral[1];
            }
        }
        if (free <= 0) return asset == 0 ? 1 : 1e9; // (refused, unless the account owes nothing)
        int256 frac = seed % 2 == 0 ? WAD : _i(bound(seed >> 1, 1e16, 1e18));
        free = free.mulDown(frac);
        return asset == 0 ? _u(free / 1e12) : _u(free - free % 1e9);
    }

    function _randomWitness(uint256 seed) internal pure returns (uint256[] memory w) {
        w = new uint256[](2);
        w[0] = bound(seed, 0, 22); // 3 vol states x 7 moves + 2 extended moves
        w[1] = bound(seed >> 8, 0, 22);
    }

    function _refresh() internal {
        ethFeed.setAnswer(ethFeed.answer());
        btcFeed.setAnswer(btcFeed.answer());
        ethVol.setAnswer(ethVol.answer());
        btcVol.setAnswer(btcVol.answer());
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

    // forge-lint: disable-start(block-timestamp)
    // (The harness reads the test chain's clock; no validator picks it.)

    function _now() internal view returns (uint256) {
        return block.timestamp;
    }

    /// The instrument is dated and at or past its expiry.
    function _expired(uint256 id) internal view returns (bool) {
        return expiryOf[id] != 0 && block.timestamp >= expiryOf[id];
    }

    // forge-lint: disable-end(block-timestamp)

    function _floorTick(int256 p) internal pure returns (int256) {
        int256 r = p % TICK;
        return r < 0 ? p - r - TICK : p - r;
    }

    function _ceilTick(int256 p) internal pure returns (int256) {
        int256 f = _floorTick(p);
        return f == p ? p : f + TICK;
    }

    /// The selector of a revert (0 for none).
    function _why(bytes memory err) internal pure returns (bytes4) {
        // forge-lint: disable-next-line(unsafe-typecast)
        return bytes4(err); // the first four bytes: truncation intended
    }

    function _i(uint256 x) internal pure returns (int256) {
        require(x <= uint256(type(int256).max), "int256 range");
        // forge-lint: disable-next-line(unsafe-typecast)
        return int256(x);
    }

    function _u(int256 x) internal pure returns (uint256) {
        require(x >= 0, "uint256 range");
        // forge-lint: disable-next-line(unsafe-typecast)
        return uint256(x);
    }
}

/// @notice The protocol's safety claims against a self-dealing attacker (AdversarialHandler),
/// checked after every call of an invariant run (runs and depth: contracts/foundry.toml,
/// [invariant]; the `deep` profile runs 256 x 128), plus directed tests of the attacks the
/// rule-(b) equity floor of ClearingHouse._tradeMargin stops and of the UnwindOnly rule.
contract ClearingHouseAdversarialTest is ClearingHouseFixture, InvariantBase {
    uint256 internal constant MALLORY_PK = 0xBAD5;
    uint256 internal constant TRENT_PK = 0xBAD6;

    AdversarialHandler internal handler;
    address internal mallory; // the directed tests' attacker: two keys
    address internal trent;

    function setUp() public override {
        super.setUp();
        mallory = registerKey(MALLORY_PK);
        trent = registerKey(TRENT_PK);
        // The handler's instruments 5-7 (after the fixture's four): a dated ETH future, a 60-day
        // call (calendars) and a 2000 call (verticals).
        vm.startPrank(GOV);
        require(adm.listInstrument(0, 0, 0, expiry) == 5, "ETH future is instrument 5");
        require(adm.listInstrument(0, 1, 2200e18, expiry + 30 days) == 6, "60-day call is instrument 6");
        require(adm.listInstrument(0, 1, 2000e18, expiry) == 7, "2000 call is instrument 7");
        vm.stopPrank();
        handler = new AdversarialHandler(ch, usdc, weth, [ethFeed, btcFeed, ethVol, btcVol], MATCH, GUARD);
        handler.init();

        targetContract(address(handler));
        // Weights by repetition: trades (honest, self-dealing, combos, dumps) and market moves
        // most often.
        bytes4[] memory sel = new bytes4[](30);
        sel[0] = AdversarialHandler.deposit.selector;
        sel[1] = AdversarialHandler.withdraw.selector;
        sel[2] = AdversarialHandler.withdraw.selector;
        sel[3] = AdversarialHandler.transferCollateral.selector;
        sel[4] = AdversarialHandler.depositInsurance.selector;
        sel[5] = AdversarialHandler.claimBounty.selector;
        sel[6] = AdversarialHandler.trade.selector;
        sel[7] = AdversarialHandler.trade.selector;
        sel[8] = AdversarialHandler.trade.selector;
        sel[9] = AdversarialHandler.selfDeal.selector;
        sel[10] = AdversarialHandler.selfDeal.selector;
        sel[11] = AdversarialHandler.selfDeal.selector;
        sel[12] = AdversarialHandler.combo.selector;
        sel[13] = AdversarialHandler.dumpDeficit.selector;
        sel[14] = AdversarialHandler.dumpDeficit.selector;
        sel[15] = AdversarialHandler.fillPooled.selector;
        sel[16] = AdversarialHandler.cancelPooled.selector;
        sel[17] = AdversarialHandler.setOperator.selector;
        sel[18] = AdversarialHandler.probe.selector;
        sel[19] = AdversarialHandler.movePrices.selector;
        sel[20] = AdversarialHandler.movePrices.selector;
        sel[21] = AdversarialHandler.moveVol.selector;
        sel[22] = AdversarialHandler.warp.selector;
        sel[23] = AdversarialHandler.settle.selector;
        sel[24] = AdversarialHandler.pause.selector;
        sel[25] = AdversarialHandler.flag.selector;
        sel[26] = AdversarialHandler.clearFlag.selector;
        sel[27] = AdversarialHandler.liquidate.selector;
        sel[28] = AdversarialHandler.liquidate.selector;
        sel[29] = AdversarialHandler.resolveBadDebt.selector;
        targetSelector(FuzzSelector(address(handler), sel));
    }

    // ================================================================== directed attacks

    /// A book under water (below MM, equity -10: a deficit the market made) sells its 1 ETH at
    /// the band's low edge (spot - 5%) to the attacker's other book. Rule (b) alone let that
    /// through: the requirement falls to 0 and the surplus rises (the concession, 79.5, is less
    /// than the IM it frees, ~313); the deficit grew to 89.5, the colluder pocketed 79.5 and
    /// resolveBadDebt took 89.5 from the insurance fund. The equity floor refuses it, whole or
    /// in part; the keeper's liquidation then leaves exactly the market's 10 to write off.
    function test_liquidatableBookCannotDumpItsDeficit() public {
        _insure(10_000e6);
        uint256 bob = fund(BOB, 0, 1_000_000e6);
        uint256 book = ch.accountId(mallory, 1);
        depositTo(mallory, book, 0, 400e6);
        uint256 colluder = fund(trent, 0, 100_000e6);
        doTrade(book, bob, ethPerp, 1e18, 2000e18);
        setEth(1590e8);
        MarginResult memory r = fullCheckNow(book);
        assertEq(uint256(r.state), 2, "below MM");
        assertEq(r.equity, -10e18, "a deficit of 10, made by the market");
        assertTrue(79.5e18 < r.initialMargin, "the concession is below the IM the close frees");

        int256 edge = 1590e18 - 79.5e18; // the band's low edge: spot - 5% of spot
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(colluder, book, ethPerp, 1e18, edge);
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(colluder, book, ethPerp, 5e17, edge);
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(colluder, book, ethPerp, 1e18, 1590e18 - 1e10); // a tick below the mark is too much

        r = fullCheckNow(book);
        vm.prank(LIQ);
        ch.liquidate(book, nonceOf(book), r.witness, 1e18);
        int256 fund0 = ch.insuranceFund();
        ch.resolveBadDebt(book);
        assertEq(fund0 - ch.insuranceFund(), 10e18, "the fund paid the market's deficit, not a wei more");
        assertEq(ch.balanceOf(colluder, 0), 100_000e18, "the colluder got nothing");
        assertEq(ch.portfolioOf(colluder).positions.length, 0, "and holds nothing");
    }

    /// A book in margin call (flagged: below IM, above MM, equity > 0) short 100 far
    /// out-of-the-money calls buys them back from the attacker's other book at the mark plus
    /// just under IM / 100 per call (inside the band: the band is 5% of spot, the calls' IM a
    /// few dollars each). Rule (b) alone let that through (requirement to 0, surplus not down),
    /// leaving the book with no position and an equity below zero, which resolveBadDebt hands
    /// to the insurance fund while the colluder keeps the premium. The equity floor (min(equity
    /// before, 0) = 0 here) refuses it: no margin call becomes bad debt by a trade.
    function test_marginCallDeficitCannotBecomeBadDebt() public {
        _insure(10_000e6);
        int256 fund0 = ch.insuranceFund();
        uint256 bob = fund(BOB, 0, 1_000_000e6);
        vm.prank(GOV);
        uint256 far = adm.listInstrument(0, 1, 4000e18, expiry);
        uint256 book = ch.accountId(mallory, 1);
        depositTo(mallory, book, 0, 10_000e6);
        uint256 colluder = fund(trent, 0, 100_000e6);
        int256 q = 100e18;
        doTrade(bob, book, far, q, markPrice(far)); // the book sells 100 calls to an honest buyer
        MarginResult memory r = ch.marginOf(book);
        vm.prank(mallory);
        ch.withdraw(book, 0, uint256((r.equity - r.initialMargin) / 1e12) - 1e6); // 1 USDC above IM
        // ETH creeps up (0.5% steps) until the book is in margin call.
        int256 eth = 2000e8;
        while (uint256(fullCheckNow(book).state) == 0 && eth < 3000e8) {
            eth += 10e8;
            setEth(eth);
        }
        r = fullCheckNow(book);
        assertEq(uint256(r.state), 1, "below IM, above MM");
        assertTrue(r.equity > 0, "no deficit yet");
        ch.flag(book, nonceOf(book), r.witness);

        Market memory m = marketNow();
        int256 mark = verifier.modelPrice(true, m.spots[0], 4000e18, expiry - block.timestamp, m.vols[0], 0);
        int256 p = mark + ((r.initialMargin - 1e12) * 1e18) / q;
        p -= p % 1e10;
        assertTrue(p - mark <= m.spots[0] / 20, "inside the band");
        assertTrue((q * (p - mark)) / 1e18 > r.equity + 1e12, "the close would leave the book below zero");
        vm.expectPartialRevert(IClearingHouseErrors.InsufficientMargin.selector);
        doTrade(book, colluder, far, q, p);

        vm.expectPartialRevert(IClearingHouseErrors.HasOpenPositions.selector);
        ch.resolveBadDebt(book);
        assertEq(ch.insuranceFund(), fund0, "nothing reached the fund");
    }

    /// The attacker has its own book liquidated into the backstop, a 41st live position: beyond
    /// the model's bound, the backstop can only unwind (strictly reduce a position, no flip, at
    /// the mark or better for itself). Selling below the mark, adding, flipping and a tick under
    /// the mark are refused; the close at the mark settles and the backstop loses no value.
    function test_oversizedBackstopOnlyUnwinds() public {
        uint256 dave = fund(registerKey(0xDA7E1), 0, 10_000_000e6);
        uint256[] memory opts = new uint256[](40);
        vm.startPrank(GOV);
        int256 strike = 1500e18;
        for (uint256 i; i < 40; ++i) {
            opts[i] = adm.listInstrument(0, 1, strike, expiry);
            strike += 50e18;
        }
        vm.stopPrank();
        for (uint256 i; i < 40; ++i) {
            doTrade(bk, dave, opts[i], 1e16, markPrice(opts[i])); // the backstop's 40 checked longs
        }
        uint256 book = ch.accountId(mallory, 1);
        depositTo(mallory, book, 0, 400e6);
        uint256 colluder = fund(trent, 0, 100_000e6);
        doTrade(book, colluder, ethPerp, 1e18, 2000e18);
        setEth(1500e8);
        MarginResult memory r = fullCheckNow(book);
        vm.prank(trent); // the attacker's other key liquidates its book
        ch.liquidate(book, nonceOf(book), r.witness, 1e18);
        assertEq(ch.portfolioOf(bk).positions.length, 41, "beyond the model's bound");
        int256 v0 = _exactValue(bk);

        bytes memory unwindOnly = abi.encodeWithSelector(IClearingHouseErrors.UnwindOnly.selector, bk, 41);
        int256 floorMark = markPrice(opts[0]);
        vm.expectRevert(unwindOnly);
        doTrade(colluder, bk, opts[0], 1e16, floorMark); // sells below its mark (floored)
        vm.expectRevert(unwindOnly);
        doTrade(bk, colluder, ethPerp, 1e17, 1500e18); // adds, even at the mark
        vm.expectRevert(unwindOnly);
        doTrade(colluder, bk, ethPerp, 2e18, 1500e18); // flips long 1 to short 1
        vm.expectRevert(unwindOnly);
        doTrade(colluder, bk, ethPerp, 5e17, 1500e18 - 1e10); // a tick under the mark
        doTrade(colluder, bk, ethPerp, 1e18, 1500e18); // closes at the mark
        assertEq(ch.portfolioOf(bk).positions.length, 40, "back within the bound");
        assertGe(_exactValue(bk), v0, "no value left the backstop");
    }

    /// Cash and positions at the model's marks, without rounding (WAD^2).
    function _exactValue(uint256 a) internal view returns (int256 v) {
        Portfolio memory pf = ch.portfolioOf(a);
        Market memory m = marketNow();
        v = pf.collateral[0] * WAD + pf.collateral[1] * ((m.spots[0] * 9) / 10);
        for (uint256 i; i < pf.positions.length; ++i) {
            Position memory ps = pf.positions[i];
            int256 mark = m.spots[ps.underlying];
            if (ps.kind != 0) {
                mark = verifier.modelPrice(
                    ps.kind == 1, mark, ps.strike, ps.expiry - block.timestamp, m.vols[ps.underlying], m.rate
                );
            }
            v += ps.quantity * mark;
        }
    }

    function _insure(uint256 usdc6) internal {
        vm.startPrank(CAROL);
        usdc.mint(CAROL, usdc6);
        usdc.approve(address(ch), usdc6);
        adm.depositInsurance(usdc6);
        vm.stopPrank();
    }

    // ================================================================== reach

    /// The handler reaches every path the invariants speak about (so none of them holds
    /// vacuously): operator-signed and pooled fills, self-dealing and trades with honest books,
    /// a band-edge dump, a risk-reducing trade while paused (a withdrawal refused), margin call,
    /// self-liquidation for a bounty, bad debt of an attacker's book written off, a bounty
    /// claimed, expiry and settlement, and every forbidden-order probe refused.
    function test_handlerReachesEveryPath() public {
        handler.setOperator(0, 0, true); // attacker key 1 operates book 4
        handler.selfDeal(0, 0, 3, 0); // book 4 buys 0.01 ETH perp from book 5 at the mark, operator-signed
        handler.fillPooled(0, 1, 1, 1); // the rest of that order
        handler.trade(1544, 0, 3, 0); // book 4 buys 0.01 ETH perp from honest book 0
        handler.dumpDeficit(0, 0, 0); // book 4 dumps half its perp on book 5 at the band's low edge
        handler.withdraw(1, false, 1); // honest book 1 takes out what its margin allows
        handler.transferCollateral(4, false, 1); // book 4 moves its free margin to book 5
        handler.pause(7); // for the next 8 actions
        handler.trade(770, 0, 3, 0); // paused: honest book 0 buys back from book 4 (both reduce)
        vm.expectRevert(
            abi.encodeWithSelector(AdversarialHandler.NoOp.selector, IClearingHouseErrors.ProtocolPaused.selector)
        );
        handler.withdraw(1, false, 1);
        handler.pause(0); // lifted
        handler.movePrices(0, 100, 1); // ETH -10%
        handler.flag(4, 1, true); // the attacker flags its own book
        handler.liquidate(4, 2, 1, 0); // and liquidates it with another of its keys, for the bounty
        handler.claimBounty(0);
        handler.movePrices(0, 350, 2); // ETH -35%: the self-dealt long perp of book 6 goes under water
        handler.liquidate(6, 2, 1, 0); // liquidated by the attacker
        handler.resolveBadDebt(6); // its deficit written off
        handler.warp(0, 14); // to just past the 30-day expiry
        handler.settle(0);
        for (uint256 k; k < 6; ++k) {
            handler.probe(k, k);
        }
        assertTrue(handler.operatorFills() > 0 && handler.pooledFills() > 0, "operator and pooled fills");
        assertTrue(handler.selfTrades() > 0 && handler.attackerHonestTrades() > 0 && handler.dumps() > 0, "trades");
        assertTrue(handler.pausedTrades() > 0 && handler.outflows() >= 2, "paused trade, outflows");
        assertTrue(handler.flags() > 0 && handler.selfLiquidations() >= 2 && handler.claims() > 0, "margin calls");
        assertTrue(handler.attackerBadDebts() > 0 && handler.settlements() > 0, "bad debt, settlement");
        assertTrue(handler.allowanceA() > 0, "the market made a deficit in the attacker's books");
        assertEq(handler.violationCount(), 0, handler.firstViolation());
        invariant_adversarial();
    }

    // ================================================================== invariants

    /// Every check after every call (one function, one audit of the state: one pass per step).
    function invariant_adversarial() public view {
        AdversarialHandler.Audit memory a = handler.audit();
        inv_riskIncreaseLeavesHealthy();
        inv_liquidationOnlyWhenDue();
        inv_insuranceOnlyFallsByBadDebt();
        inv_attackerGainsOnlyWhatWasAgreed(a);
        inv_tokensConserved(a);
        inv_openInterestZeroSum(a);
        inv_ordersAndRoles();
        inv_everyBookChangeIsAnnounced();
    }

    /// Every change to a book's nonce, flag, positions or balances (the backstop aside) emits
    /// an event the keeper's indexer reads that account from: the keeper takes every book the
    /// index has not named since its last block as unchanged (handler: _checkAnnounced).
    function inv_everyBookChangeIsAnnounced() internal view {
        assertEq(handler.violations(6), 0, handler.firstViolation());
    }

    /// Every successful trade side that increased the account's risk (requirement up, surplus
    /// down, or deficit deeper) left it healthy (equity >= IM, fresh prices, unpaused); every
    /// withdrawal and transfer out left its account healthy (handler: _checkSide, _checkOutflow).
    function inv_riskIncreaseLeavesHealthy() internal view {
        assertEq(handler.violations(0), 0, handler.firstViolation());
        assertEq(handler.violations(5), 0, handler.firstViolation()); // the equity mirror these checks rest on
    }

    /// Every successful liquidation hit an account below MM, or below IM and flagged at least a
    /// grace period before, by the full check at that moment; it cleared the flag, paid the
    /// liquidator exactly its share of the penalty, and handed positions over at marks rounded
    /// against the book (exactly: the book lost at least its penalty, the backstop nothing).
    /// Every flag hit an account below IM, every cleared flag an account at or above it.
    function inv_liquidationOnlyWhenDue() internal view {
        assertEq(handler.violations(1), 0, handler.firstViolation());
    }

    /// The fund equals deposits + each liquidation's penalty - bounty - the bad debt it covered,
    /// each term computed by the handler (not read back); only resolveBadDebt lowers it, by
    /// min(debt, fund), and the backstop takes the rest (totalSocialisedLoss agrees).
    function inv_insuranceOnlyFallsByBadDebt() internal view {
        assertEq(handler.violations(2), 0, handler.firstViolation());
        assertEq(ch.insuranceFund(), handler.ghostInsurance(), "insurance fund == ghost ledger");
        assertEq(ch.totalSocialisedLoss(), handler.ghostSocialised(), "socialised loss == ghost ledger");
        assertGe(ch.insuranceFund(), 0, "insurance fund never negative");
    }

    /// The attacker's value W_A (its six books at the model's marks without rounding, plus its
    /// keys' unclaimed bounties, in WAD^2) never exceeds its ledger L_A plus the allowance M_A:
    ///   L_A = tokens it deposited - tokens it withdrew or claimed
    ///       + sum over its trades with honest accounts (backstop included) of q * (mark - price)
    ///       + the change of W_A in every market action (price, vol, time, settlement);
    ///   M_A = the deficit market actions made in its books (sum of every increase of
    ///         max(0, -equity) in a market action) + the TICK rounding of liquidations.
    /// Proof sketch: actions move W_A exactly as L_A except (i) liquidations of its books, which
    /// only take (penalty - bounty >= 0, hand-over rounded against the book), and (ii) bad debt
    /// written off its books, which adds the deficit; trades with itself move value between its
    /// books, never in. Trades, withdrawals and transfers never deepen a deficit (rule (b)'s
    /// floor, IM after outflows: the handler checks it per action, DEFICIT), so every deficit
    /// written off was made by the market: sum of write-offs <= M_A. Hence W_A <= L_A + M_A,
    /// exactly (the rounding all runs against the attacker). Since tokens are conserved and
    /// positions net to zero, W_A + W_H == the value of the tokens held (checked here), so the
    /// honest side (honest books, backstop, insurance fund, keeper bounties) loses to the
    /// attacker no more than agreed trades and market moves on its positions give it, plus the
    /// market-made deficits of its books: self-dealing (band-edge dumps, self-liquidation for
    /// bounties, write-offs of trade-made deficits) extracts nothing.
    function inv_attackerGainsOnlyWhatWasAgreed(AdversarialHandler.Audit memory a) internal view {
        assertEq(handler.violations(3), 0, handler.firstViolation());
        assertEq(a.wA + a.wH, a.tokens, "attacker + honest side == value of the tokens held");
        int256 allowance = handler.allowanceA();
        assertLe(
            handler.writtenOffA() * WAD,
            allowance,
            "written-off deficits of the attacker <= the deficits the market made"
        );
        assertLe(
            a.wA,
            handler.ledgerA() + allowance,
            "the attacker gained more than agreed trades, market moves and market-made deficits"
        );
    }

    /// Per token, to the wei: tokens held == every account's credited balance + insurance fund
    /// + unclaimed bounties (USDC), == every account's balance (WETH); and the unclaimed
    /// bounties are the liquidators' credits. A settled position not yet realised is credited
    /// as its payoff (the balance portfolioOf folds it into, which every check uses): realising
    /// the long side of a settled future before the short side pays it out of nobody's raw
    /// balance, so raw balances alone only balance once every side is realised.
    function inv_tokensConserved(AdversarialHandler.Audit memory a) internal view {
        assertEq(
            heldWad(0),
            a.creditedUsdc + ch.insuranceFund() + ch.totalBounties(),
            "USDC held == credited balances + insurance + bounties"
        );
        assertEq(heldWad(1), a.creditedWeth, "WETH held == balances");
        assertEq(ch.totalBounties(), a.bounties, "totalBounties == the liquidators' credits");
    }

    /// Per instrument not yet settled, the positions of every account (the backstop included)
    /// sum to zero. (Once settled, positions only leave, each side when it is realised: their
    /// payoffs are in inv_tokensConserved.)
    function inv_openInterestZeroSum(AdversarialHandler.Audit memory a) internal pure {
        for (uint256 id = 1; id < a.net.length; ++id) {
            assertEq(a.net[id], 0, "net open interest");
        }
    }

    /// No order filled beyond its signed quantity (and the contract's count equals the fills),
    /// outside its deadline, after its cancellation, beyond its limit or the band; no signature
    /// of a non-owner non-operator filled; only the matcher settled: tradeCount == its matches.
    function inv_ordersAndRoles() internal view {
        assertEq(handler.violations(4), 0, handler.firstViolation());
        assertEq(ch.tradeCount(), handler.ghostTrades(), "every trade was a match sent by the matcher");
    }
}
