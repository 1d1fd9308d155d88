// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AggregatorV3Interface} from "./interfaces/AggregatorV3Interface.sol";
import {IERC20} from "./interfaces/IERC20.sol";
import {ClearingHouseBase} from "./ClearingHouseBase.sol";
import {OracleLib} from "./oracle/OracleLib.sol";
import {FixedPoint} from "./math/FixedPoint.sol";
import {MarginVerifier} from "./MarginVerifier.sol";
import {
    PortfolioMargin, Portfolio, Position, Market, MarginResult
} from "./margin/PortfolioMargin.sol";

// The margin states of MarginResult.state (PortfolioMargin's HEALTHY, MARGIN_CALL,
// LIQUIDATABLE), as file-level uint256 constants: measured against the literals they replace,
// they cost nothing (flag 2 gas less, every other figure equal), where uint8 constants or
// PortfolioMargin's own moved liquidate by +3 and withdraw by +1.
uint256 constant HEALTHY = 0; // equity >= IM
uint256 constant MARGIN_CALL = 1; // MM <= equity < IM
uint256 constant LIQUIDATABLE = 2; // equity < MM

/// @title ClearingHouse
/// @notice Portfolio-margined clearing of cash-settled futures and European options.
///
/// Accounts. An account id packs (owner, sub): `owner << 96 | sub`. Sub 0 is the owner's
/// cross-margin account, subs 1.. are isolated sub-accounts; every account is margined on its
/// own. The owner may authorise operators per account (deposit, withdraw to the owner,
/// transfer between the owner's accounts, clear a flag).
///
/// Cash model. Asset 0 is the settlement stablecoin. A trade of q at price p moves exactly
/// q*p/1e18 of asset 0 from buyer to seller; positions carry no entry price (entryPrice 0 in
/// the model, so equity = collateral + sum q*mark). Quantities are multiples of LOT (1e8) and
/// prices/strikes/settlement prices multiples of TICK (1e10), so q*p/1e18 is an integer: every
/// cash flow is exact and zero-sum, and `tokens held * scale == sum of balances + insurance
/// fund + unclaimed bounties` holds to the wei for every asset (tested as an invariant).
///
/// Rounding in the protocol's favour: deposits credit what actually arrived; withdrawals debit
/// exactly amount*scale; bounty claims pay floor(bounty/scale) tokens; marks used to hand
/// positions to the backstop are rounded to TICK against the liquidated account; the penalty
/// rounds up; settlement prices round down to TICK (symmetric between longs and shorts).
///
/// Oracle policy (liveness versus safety). Non-positive answers and incomplete rounds always
/// revert. A price older than `maxAge` blocks everything that needs a healthy full check
/// (trades that add risk, withdrawals, transfers out, clearing a flag). Flags, liquidations,
/// the trade price band and the "risk does not grow" rule of trades accept prices up to
/// `liquidationMaxAge` old: the scenario grid already stresses the last good price by +-R, the
/// liquidator must prove a loss beyond equity in one scenario, and positions go to the backstop
/// at the model mark rounded against the account. Beyond `liquidationMaxAge` nothing that needs
/// the price proceeds. Deposits and settlement (a named past round) never need a fresh price.
///
/// Settlement. An expired instrument is settled at the first oracle round at or after its
/// expiry (`settleInstrument`, in ClearingHouseAdmin). From then on every check values a
/// position in it at its settled payoff, with no scenario risk (folded into the cash balance
/// when the portfolio is loaded), whether or not `settleAccount` has realised it yet.
///
/// Bad debt. Only an account whose model equity is below zero has bad debt (negative cash
/// backed by collateral is a loan, which the margin check governs). It is resolved by
/// `resolveBadDebt` once it has no live position: volatile collateral is sold to the backstop
/// at spot after haircut, the insurance fund covers what it can, and the rest is socialised to
/// the backstop account (the protocol's own book, whose equity is the pool that absorbs
/// losses), recorded in `totalSocialisedLoss`. The insurance fund falls only by bad debt
/// absorbed. Nothing is silently lost.
///
/// Pause. Deposits, clearing a flag, insurance deposits, settlement, flags and liquidations
/// stay open (an owner can always cure, solvency goes on); withdrawals and transfers revert.
contract ClearingHouse is ClearingHouseBase {
    using OracleLib for AggregatorV3Interface;
    using FixedPoint for int256;

    /// @notice The governance module (ClearingHouseAdmin) that unknown selectors go to.
    address public immutable admin;


    constructor(address owner_, MarginVerifier verifier_, address admin_) ClearingHouseBase(verifier_) {
        owner = owner_;
        admin = admin_;
        _priceBand = 0.05e18;
        (_insuranceFundPlusOne, _totalBountiesPlusOne) = (1, 1); // both zero, stored plus one
        emit OwnerChanged(owner_);
        emit PriceBandSet(0.05e18);
    }

    /// @dev Governance calls (ClearingHouseAdmin's functions) run on this storage.
    fallback() external {
        address target = admin;
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), target, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    // ============================================================== account ids and views

    function accountId(address who, uint256 sub) public pure returns (uint256) {
        if (sub >= 1 << 96) revert InvalidSubAccount(sub);
        return (uint256(uint160(who)) << 96) | sub;
    }

    function accountOwner(uint256 account) public pure returns (address) {
        return address(uint160(account >> 96));
    }

    /// @notice The account as the verifier sees it (positions in storage order, entryPrice 0).
    function portfolioOf(uint256 account) external view returns (Portfolio memory pf) {
        (pf,) = _loadPortfolio(account);
    }

    /// @notice The market the protocol uses for this account now (strict: reverts on a stale feed).
    function marketOf(uint256 account) external view returns (Market memory) {
        (Portfolio memory pf,) = _loadPortfolio(account);
        return _market(pf, false);
    }

    /// @notice The full check of an account now (strict oracles).
    function marginOf(uint256 account) external view returns (MarginResult memory) {
        (Portfolio memory pf,) = _loadPortfolio(account);
        return verifier.fullCheck(pf, _market(pf, false), riskParams());
    }
    // ============================================================== collateral

    /// @notice Deposits `amount` token units from the caller (owner or operator) into the
    /// account; credits what actually arrived. Open while paused (a cure must always be
    /// possible); clears a margin-call flag if the account now passes the full check.
    function deposit(uint256 account, uint256 asset, uint256 amount) external {
        _onlyAuthorized(account);
        AssetConfig memory a = _asset(asset);
        int256 received = _pull(a, amount);
        balanceOf[account][asset] += received;
        uint64 nonce = _bump(account);
        emit Deposit(account, asset, msg.sender, received, nonce);
        _tryClearFlag(account);
    }

    /// @notice Withdraws `amount` token units to the account's owner. A volatile asset's
    /// balance may not go negative; the account must pass the full IM check afterwards (no
    /// oracle is needed when it then holds no position and no debt).
    function withdraw(uint256 account, uint256 asset, uint256 amount) external whenNotPaused {
        _onlyAuthorized(account);
        AssetConfig memory a = _asset(asset);
        int256 wad = _toWad(a, amount);
        int256 bal = balanceOf[account][asset];
        // The settlement asset may go negative (cash is borrowed against positions' value, the
        // full check decides); a volatile asset cannot be borrowed.
        if (asset != 0 && bal < wad) revert InsufficientBalance(account, asset, bal, wad);
        balanceOf[account][asset] = bal - wad;
        _requireHealthyAfter(account);
        uint64 nonce = _bump(account);
        address to = accountOwner(account);
        if (!IERC20(a.token).transfer(to, amount)) revert TokenTransferFailed(a.token);
        emit Withdrawal(account, asset, to, wad, nonce);
    }

    /// @notice Moves collateral (WAD) between two accounts of the same owner, e.g. to fund an
    /// isolated sub-account; the source must pass the full IM check afterwards.
    function transferCollateral(uint256 from, uint256 to, uint256 asset, int256 amount) external whenNotPaused {
        _onlyAuthorized(from);
        if (accountOwner(from) != accountOwner(to) || from == to) revert NotSameOwner(from, to);
        _asset(asset);
        if (amount <= 0) revert ZeroAmount();
        int256 bal = balanceOf[from][asset];
        if (asset != 0 && bal < amount) revert InsufficientBalance(from, asset, bal, amount);
        balanceOf[from][asset] = bal - amount;
        balanceOf[to][asset] += amount;
        _requireHealthyAfter(from);
        emit CollateralTransfer(from, to, asset, amount, _bump(from), _bump(to));
        _tryClearFlag(to);
    }

    // ============================================================== trading

    /// @notice Settles a match of two signed orders: `buy.account` buys `quantity` (> 0,
    /// multiple of LOT) of the orders' instrument from `sell.account` at `price` (multiple of
    /// TICK; > 0 for futures). The matcher can fill only what was signed: each signature must
    /// be the account owner's or an operator's, each order live (deadline, not cancelled), its
    /// limit respected and its filled magnitude stay within its signed quantity. The price must
    /// lie within priceBand x spot of the model mark. Each side then passes the margin rule of
    /// _tradeMargin (so a pause leaves only trades that do not add risk).
    function trade(
        Order calldata buy,
        bytes calldata buySig,
        Order calldata sell,
        bytes calldata sellSig,
        int256 quantity,
        int256 price
    ) external onlyRole(MATCHER) {
        uint256 instrument = buy.instrument;
        if (sell.instrument != instrument) revert OrderMismatch(instrument, sell.instrument);
        if (buy.account == sell.account) revert SelfTrade(buy.account);
        int256 mark = _checkTrade(instrument, quantity, price);
        if (price > buy.limitPrice) revert LimitPriceViolated(buy.account, price, buy.limitPrice);
        if (price < sell.limitPrice) revert LimitPriceViolated(sell.account, price, sell.limitPrice);
        _fill(buy, buySig, quantity);
        _fill(sell, sellSig, -quantity);
        _settle(buy.account, sell.account, instrument, quantity, price, mark);
    }

    function _settle(uint256 buyer, uint256 seller, uint256 instrument, int256 quantity, int256 price, int256 mark)
        private
    {
        int256 cash = (quantity * price) / WAD; // exact: LOT * TICK == 1e18
        if (_instrumentWord(instrument) & PERP_MASK == 0) _recordFundingPrice(instrument, price);
        _tradeSide(buyer, instrument, quantity, -cash, price > mark);
        _tradeSide(seller, instrument, -quantity, cash, price < mark);
        emit Trade(++tradeCount, buyer, seller, instrument, quantity, price, _bump(buyer), _bump(seller));
    }

    /// @dev Adds the time since the last trade (or poke) at the last trade price to the
    /// perpetual's price-time sum, then makes `price` the last trade price (the funding mark is
    /// this sum over the time since the last poke: pokeFunding). The first trade ever prices
    /// the time before it too. Prices are multiples of TICK: stored in TICKs (< 2^67).
    function _recordFundingPrice(uint256 id, int256 price) private {
        uint256 c = _fundingClock[id];
        uint256 p = (c >> 80) & ((1 << 72) - 1);
        // forge-lint: disable-next-line(unsafe-typecast)
        uint256 np = uint256(price) / uint256(TICK); // 0 < price <= MAX_PRICE
        if (p == 0) p = np;
        uint256 sum = (c >> 152) + p * (block.timestamp - ((c >> 40) & ((1 << 40) - 1)));
        // 2^104 TICK-seconds: ~4,000 years at the largest price without a poke.
        if (sum >> 104 != 0) revert InvalidPrice(price);
        _fundingClock[id] = (c & ((1 << 40) - 1)) | (block.timestamp << 40) | (np << 80) | (sum << 152);
    }

    /// @dev Checks one order for a fill of `fill` (signed as the account sees it) and books it.
    function _fill(Order calldata o, bytes calldata sig, int256 fill) private {
        uint256 account = o.account;
        int256 q = o.quantity;
        // The order's side must be the fill's; |q| bounded so its magnitude cannot overflow.
        if (fill > 0 ? (q <= 0 || q > MAX_QUANTITY) : (q >= 0 || q < -MAX_QUANTITY)) {
            revert InvalidOrderQuantity(account, q);
        }
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp > o.deadline) revert OrderExpired(account, o.nonce, o.deadline);
        if (_orderCancelled[account][o.nonce]) revert OrderIsCancelled(account, o.nonce);
        bytes32 digest = _hashOrder(o);
        address signer = _recover(digest, sig, account);
        if (signer != accountOwner(account) && !isOperator[account][signer]) revert UnauthorizedSigner(account, signer);
        uint256 signed = uint256(q < 0 ? -q : q);
        uint256 filled = _orderFilled[digest] + uint256(fill < 0 ? -fill : fill);
        if (filled > signed) revert OrderOverfilled(digest, filled, signed);
        _orderFilled[digest] = filled;
        emit OrderFilled(digest, account, fill, filled);
    }

    /// @dev ecrecover of a 65-byte r||s||v signature. Only the low-s form with v 27/28 is
    /// accepted (one valid encoding per signature: no malleated twin), and never address(0).
    function _recover(bytes32 digest, bytes calldata sig, uint256 account) private pure returns (address signer) {
        if (sig.length != 65) revert InvalidSignature(account);
        bytes32 r;
        bytes32 s;
        uint256 v;
        assembly ("memory-safe") {
            r := calldataload(sig.offset)
            s := calldataload(add(sig.offset, 0x20))
            v := byte(0, calldataload(add(sig.offset, 0x40)))
        }
        if (uint256(s) > 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0 || (v != 27 && v != 28)) {
            revert InvalidSignature(account);
        }
        // forge-lint: disable-next-line(unsafe-typecast)
        signer = ecrecover(digest, uint8(v), r, s); // v is one byte
        if (signer == address(0)) revert InvalidSignature(account);
    }

    /// @dev Quantity and price form, and the price band: |price - mark| <= priceBand x spot,
    /// mark = spot for a future, the model price for an option (what every check values it
    /// at), oracle at the liquidation age (a band needs no fresher price than a liquidation).
    function _checkTrade(uint256 instrument, int256 quantity, int256 price) private view returns (int256 mark) {
        Instrument memory ins = _liveInstrument(instrument);
        if (quantity <= 0 || quantity > MAX_QUANTITY || quantity % LOT != 0) revert InvalidQuantity(quantity);
        if (price < 0 || price > MAX_PRICE || price % TICK != 0 || (price == 0 && ins.kind == PortfolioMargin.FUTURE)) {
            revert InvalidPrice(price);
        }
        UnderlyingConfig memory uc = _underlyings[ins.underlying];
        (int256 spot,) = uc.priceFeed.read(uc.liquidationMaxAge);
        mark = spot;
        if (ins.kind != PortfolioMargin.FUTURE) {
            (int256 vol,) = uc.volFeed.read(uc.liquidationMaxAge);
            mark = verifier.modelPrice(
                ins.kind == PortfolioMargin.CALL, spot, int256(uint256(ins.strike)), ins.expiry - block.timestamp, vol, rate
            );
        }
        int256 band = spot.mulDown(_priceBand);
        if (price > mark + band || price < mark - band) revert PriceOutsideBand(price, mark, band);
    }

    /// @dev One side of a trade; `worseThanMark`: the price is worse than the model mark for this
    /// side. A book with more live positions than the model checks (MAX_POSITIONS: only the
    /// backstop, or a former backstop, exempt from the position limit in hand-overs, has one)
    /// cannot pass either margin rule; it may only unwind: strictly reduce a position, without
    /// flipping it, at the mark or better for itself. Its model value cannot fall and its
    /// positions cannot grow, so no value leaves it and the book shrinks back into checkable size.
    function _tradeSide(uint256 account, uint256 instrument, int256 delta, int256 cash, bool worseThanMark)
        private
    {
        (Portfolio memory before, uint256[] memory ids) = _loadPortfolio(account);
        _realiseLoaded(account, before, ids); // (before already counts it: unchanged)
        int256 q = _applyPosition(account, instrument, delta);
        balanceOf[account][0] += cash;
        if (before.positions.length > MAX_POSITIONS) {
            bool reduces = (q > 0 && delta < 0 && q + delta >= 0) || (q < 0 && delta > 0 && q + delta <= 0);
            if (!reduces || worseThanMark) revert UnwindOnly(account, before.positions.length);
            return;
        }
        _tradeMargin(account, before);
    }

    /// @dev The margin rule of one side of a trade (`before`: its portfolio before the trade).
    /// It passes (a) unpaused, if the full IM check after the trade is healthy with every feed
    /// within maxAge (an account left without positions and debt is healthy without an oracle),
    /// which also clears a margin-call flag; or (b) if its risk does not grow at the portfolio
    /// level: with the same market (liquidation age), requirement_after <= requirement_before
    /// and equity_after - IM_after >= equity_before - IM_before, and equity_after >=
    /// min(equity_before, 0): IM falls faster than MM as risk is cut, so without that floor an
    /// account below IM could close at a band-edge price into negative equity and hand its
    /// deficit to the insurance fund (a trade never creates or deepens bad debt). A per-position test would not
    /// do: closing one leg of a hedge reduces a position and leaves the other leg naked, and a
    /// reducing trade at a price far from the mark moves value out of the account. The rule
    /// binds the backstop too: value leaves it through a trade like any other account.
    function _tradeMargin(uint256 account, Portfolio memory before) private {
        (Portfolio memory pf,) = _loadPortfolio(account);
        bool open = !paused;
        MarginResult memory r;
        bool stale;
        bool healthy = open && pf.positions.length == 0 && !_hasDebt(account);
        if (!healthy) {
            Market memory m;
            (m, stale) = _readMarket(pf, true);
            r = _verify(pf, m);
            healthy = open && !stale && r.state == HEALTHY;
        }
        if (healthy) {
            if (accountState[account].flaggedAt != 0) {
                accountState[account].flaggedAt = 0;
                emit MarginCallCleared(account, r.equity, r.initialMargin);
            }
            return;
        }
        // (b), only when (a) failed: the before check costs a second full check.
        MarginResult memory r0 = _verify(before, _market(before, true));
        if (
            r.requirement > r0.requirement || r.equity - r.initialMargin < r0.equity - r0.initialMargin
                || r.equity < (r0.equity < 0 ? r0.equity : int256(0))
        ) {
            if (!open) revert ProtocolPaused();
            if (stale) _market(pf, false); // reverts with the stale feed's named error
            revert InsufficientMargin(account, r.equity, r.initialMargin);
        }
    }

    // ============================================================== margin calls

    /// @notice Flags an account below IM, proven by one scenario per underlying. `nonce` is the
    /// account's state nonce the caller computed against.
    function flag(uint256 account, uint64 nonce, uint256[] calldata witness) external {
        AccountState memory s = _checkNonce(account, nonce);
        if (s.flaggedAt != 0) revert AlreadyFlagged(account, s.flaggedAt);
        (Portfolio memory pf,) = _loadPortfolio(account);
        MarginResult memory r = verifier.witnessCheck(pf, _market(pf, true), riskParams(), witness);
        if (r.state == HEALTHY) revert AccountNotBelowInitialMargin(account, r.equity, r.initialMargin);
        accountState[account].flaggedAt = uint64(block.timestamp);
        emit MarginCall(account, msg.sender, nonce, r.equity, r.initialMargin, block.timestamp + liquidationConfig.gracePeriod);
    }

    /// @notice Clears a flag by a full check at IM (owner, operator or anyone: the check decides).
    function clearFlag(uint256 account) external {
        if (accountState[account].flaggedAt == 0) revert NotFlagged(account);
        MarginResult memory r = _fullCheck(account, false);
        if (r.state != HEALTHY) revert InsufficientMargin(account, r.equity, r.initialMargin);
        accountState[account].flaggedAt = 0;
        emit MarginCallCleared(account, r.equity, r.initialMargin);
    }

    /// @dev After money came in: clears a cured flag, so that a later dip needs a new flag and
    /// a new grace period. A self-call caught whatever happens (still below IM, stale oracle,
    /// out of gas): it never blocks the deposit.
    function _tryClearFlag(uint256 account) private {
        if (accountState[account].flaggedAt != 0) {
            try this.clearFlag(account) {} catch {}
        }
    }

    // ============================================================== liquidation

    struct LiqVars {
        int256 cash;
        uint256 bk;
        uint256[] taken; // (instrument << 128) | uint128(quantity), as the Liquidation event carries them
        int256[] prices;
        int256 funding; // the account's funding, realised (every perpetual is a live position)
        int256 bkFunding; // the backstop's funding settled in the perpetuals it takes over
    }

    /// @notice Partially liquidates an account below MM (or below IM after its grace period):
    /// `fraction` (WAD, (0, 1]) of every position goes to the backstop at the model mark
    /// (rounded to TICK against the account), quantities rounded down to LOT (all of it at 1).
    /// Penalty = fraction * MM requirement * penaltyRate (rounded up), capped at the account's
    /// positive equity; the liquidator's bounty = clamp(penalty * bountyShare, min, max),
    /// never above the penalty; the rest goes to the insurance fund. Positions in settled
    /// instruments are realised first (`PositionSettled`). Returns the bounty credited.
    function liquidate(uint256 account, uint64 nonce, uint256[] calldata witness, int256 fraction)
        external
        returns (int256 bounty)
    {
        _checkNonce(account, nonce);
        if (fraction <= 0 || fraction > WAD) revert InvalidFraction(fraction);
        LiqVars memory v;
        v.bk = backstop;
        if (v.bk == 0) revert BackstopNotSet();
        if (account == v.bk) revert BackstopAccount(account);
        (Portfolio memory pf, uint256[] memory ids) = _loadPortfolio(account);
        if (ids.length != _positions[account].length) {
            // Settled positions were folded out of the portfolio: realise them first, so that
            // the portfolio's indices are the storage slots the hand-over writes.
            _realiseSettled(account);
            (pf, ids) = _loadPortfolio(account);
        }
        (MarginResult memory r, int256[] memory marks) =
            verifier.witnessCheckWithMarks(pf, _market(pf, true), riskParams(), witness);
        {
            uint64 flaggedAt = accountState[account].flaggedAt;
            bool graceOver = flaggedAt != 0 && block.timestamp >= uint256(flaggedAt) + liquidationConfig.gracePeriod;
            if (!(r.state == LIQUIDATABLE || (r.state == MARGIN_CALL && graceOver))) {
                revert NotLiquidatable(account, r.equity, r.requirement, r.initialMargin);
            }
        }
        _handOver(account, pf, ids, marks, fraction, v);
        balanceOf[account][0] += v.cash + v.funding;
        balanceOf[v.bk][0] += v.bkFunding - v.cash;
        if (v.funding != 0) emit FundingSettled(account, v.funding);
        if (v.bkFunding != 0) emit FundingSettled(v.bk, v.bkFunding);

        accountState[account].flaggedAt = 0;
        _bump(v.bk);
        return _chargePenalty(account, r, fraction, v);
    }

    /// @dev Penalty, bounty and insurance share of a liquidation, booked and emitted. The
    /// bounty only ever comes out of the penalty: the insurance fund never pays a liquidator
    /// (a top-up could be farmed by one owner on both sides of a dust book).
    function _chargePenalty(uint256 account, MarginResult memory r, int256 fraction, LiqVars memory v)
        private
        returns (int256 bounty)
    {
        LiquidationConfig memory c = liquidationConfig;
        int256 penalty = r.requirement.mulUp(fraction).mulUp(int256(uint256(c.penaltyRate)));
        if (penalty > r.equity) penalty = r.equity > 0 ? r.equity : int256(0);
        bounty = penalty.mulDown(int256(uint256(c.bountyShare)));
        if (bounty < int256(uint256(c.minBounty))) bounty = int256(uint256(c.minBounty));
        if (bounty > int256(uint256(c.maxBounty))) bounty = int256(uint256(c.maxBounty));
        if (bounty > penalty) bounty = penalty;
        balanceOf[account][0] -= penalty;
        if (penalty != bounty) _insuranceFundPlusOne += _toInt128(penalty - bounty);
        emit Liquidation(
            account,
            msg.sender,
            _bump(account),
            fraction,
            r.equity,
            r.requirement,
            penalty,
            bounty,
            penalty - bounty,
            v.taken,
            v.prices
        );
        if (bounty > 0) {
            int256 b = _bountiesPlusOne[msg.sender];
            _bountiesPlusOne[msg.sender] = (b == 0 ? int256(1) : b) + bounty;
            _totalBountiesPlusOne += _toInt128(bounty);
            emit BountyCredited(msg.sender, bounty);
        }
    }

    /// @dev Moves fraction of each position to the backstop v.bk; sets v.cash, the cash the
    /// account receives (sum of q_closed * price), and, for the Liquidation event, v.taken and
    /// v.prices: each position moved (packed as in storage: (instrument << 128) |
    /// uint128(quantity)) and its price, in the order of the hand-over. Goes backwards so
    /// swap-and-pop never skips a slot.
    function _handOver(
        uint256 account,
        Portfolio memory pf,
        uint256[] memory ids,
        int256[] memory marks,
        int256 fraction,
        LiqVars memory v
    ) private {
        v.taken = new uint256[](ids.length);
        v.prices = new int256[](ids.length);
        int256 cash;
        uint256 moved;
        uint256 base; // the storage slot of the account's first position (computed once)
        {
            uint256[] storage slots = _positions[account];
            assembly ("memory-safe") {
                mstore(0, slots.slot)
                base := keccak256(0, 0x20)
            }
        }
        for (uint256 i = ids.length; i > 0;) {
            unchecked {
                --i;
            }
            int256 price = marks[i]; // (the verifier's array: its length checked)
            int256 q;
            uint256 id;
            assembly ("memory-safe") {
                // i < ids.length = pf.positions.length (_loadPortfolio builds them together)
                let o := add(0x20, shl(5, i))
                q := mload(add(mload(add(mload(pf), o)), 0x80)) // pf.positions[i].quantity
                id := mload(add(ids, o))
            }
            int256 closeQty = q;
            // The rounding helpers written out (this loop runs per position): |q| <= 1e30 and
            // fraction <= 1e18, so |q| * fraction < 2^256 / 2; marks are in [0, 1.3e31].
            unchecked {
                if (fraction != WAD) {
                    int256 mag = ((q < 0 ? -q : q) * fraction) / WAD; // |q| * fraction, rounded down
                    mag -= mag % LOT; // toward zero to LOT
                    closeQty = q < 0 ? -mag : mag;
                }
                // Against the account: it sells longs at the mark rounded down to TICK, buys back
                // shorts rounded up.
                int256 r = price % TICK;
                if (r != 0) price = q > 0 ? price - r : price + (TICK - r);
            }
            {
                bool perp;
                assembly ("memory-safe") {
                    // pf.positions[i]: kind (0x20) 0, a future, and expiry (0x60) 0: a perpetual
                    let pos := mload(add(mload(pf), add(0x20, shl(5, i))))
                    perp := iszero(or(mload(add(pos, 0x20)), mload(add(pos, 0x60))))
                }
                if (perp) _handOverFunding(account, id, q, closeQty, v);
            }
            if (closeQty == 0) continue;
            unchecked {
                cash += (closeQty * price) / WAD; // exact; |closeQty * price| < 1.3e61: no wrap
            }
            if (q != closeQty) {
                q = int256(_pack(id, q - closeQty)); // (the slot's new value, reusing the variable)
                assembly ("memory-safe") {
                    sstore(add(base, i), q) // i < the list's length: a live position's index
                }
            } else {
                _setQuantityAt(account, i, id, 0);
            }
            _addToBackstop(v.bk, id, closeQty);
            q = int256(_pack(id, closeQty));
            assembly ("memory-safe") {
                // v.taken[moved] and v.prices[moved]: moved < ids.length, their length
                let o := add(0x20, shl(5, moved))
                mstore(add(mload(add(v, 0x40)), o), q)
                mstore(add(mload(add(v, 0x60)), o), price)
            }
            ++moved;
        }
        if (moved == 0) revert NothingToLiquidate(account);
        v.cash = cash;
        (uint256[] memory taken, int256[] memory prices) = (v.taken, v.prices);
        assembly ("memory-safe") {
            // Shrink to the positions moved (moved <= ids.length: the arrays only get shorter).
            mstore(taken, moved)
            mstore(prices, moved)
        }
    }

    /// @dev A perpetual in a liquidation: the account's funding is realised (pf counts it
    /// already) and, when part of the position moves, the backstop's (its book changes).
    function _handOverFunding(uint256 account, uint256 id, int256 q, int256 closeQty, LiqVars memory v) private {
        v.funding += _settleFundingAt(account, id, q);
        if (closeQty != 0) v.bkFunding += _settleFundingAt(v.bk, id, _bookOf(_instrumentWord(id)));
    }

    /// @notice Resolves the bad debt of an account with no live position whose model equity
    /// (full check, lenient oracle ages) is below zero. Its settled positions are realised
    /// first. Volatile collateral is sold to the backstop at spot after haircut (rounded down),
    /// the insurance fund covers what it can of the remaining negative settlement balance, the
    /// backstop absorbs the rest. Negative cash that the collateral covers is not bad debt.
    function resolveBadDebt(uint256 account) external {
        uint256 bk = backstop;
        if (bk == 0) revert BackstopNotSet();
        if (account == bk) revert BackstopAccount(account);
        _realiseSettled(account);
        uint256 n = _positions[account].length;
        if (n != 0) revert HasOpenPositions(account, n);
        {
            int256 equity = _fullCheck(account, true).equity;
            if (equity >= 0) revert NoBadDebt(account, equity);
        }
        int256 bal = balanceOf[account][0];
        for (uint256 k = 1; k < _assets.length; ++k) {
            AssetConfig memory a = _assets[k];
            int256 amt = balanceOf[account][k];
            if (amt <= 0) continue;
            int256 paid;
            if (a.underlying == NO_UNDERLYING) {
                paid = amt.mulDown(WAD - int256(uint256(a.haircut)));
            } else {
                UnderlyingConfig memory uc = _underlyings[a.underlying];
                (int256 spot,) = uc.priceFeed.read(uc.liquidationMaxAge);
                paid = amt.mulDown(spot).mulDown(WAD - int256(uint256(a.haircut)));
            }
            balanceOf[account][k] = 0;
            balanceOf[bk][k] += amt;
            balanceOf[bk][0] -= paid;
            bal += paid;
            emit CollateralSeized(account, k, amt, paid);
        }
        int256 fromInsurance;
        int256 socialised;
        if (bal < 0) {
            int256 debt = -bal;
            int256 fund = _insuranceFundPlusOne - 1;
            fromInsurance = debt < fund ? debt : fund;
            socialised = debt - fromInsurance;
            _insuranceFundPlusOne -= _toInt128(fromInsurance);
            balanceOf[bk][0] -= socialised;
            totalSocialisedLoss += socialised;
            bal = 0;
        }
        balanceOf[account][0] = bal;
        _bump(account);
        _bump(bk);
        emit BadDebtResolved(account, fromInsurance + socialised, fromInsurance, socialised);
    }

    // ============================================================== settlement

    /// @notice Pays out every position of the account in a settled instrument (exact cash:
    /// q * payoff / 1e18 with payoff a multiple of TICK) and removes it.
    function settleAccount(uint256 account) external returns (uint256 settled) {
        settled = _realiseSettled(account);
        if (settled == 0) revert NothingToSettle(account);
        _realiseFunding(account);
    }

    /// @dev settleAccount's work (nonce bumped only when something was settled).
    function _realiseSettled(uint256 account) private returns (uint256 settled) {
        uint256[] storage slots = _positions[account];
        int256 cash;
        for (uint256 k = slots.length; k > 0; --k) {
            uint256 slot = slots[k - 1];
            uint256 w = _instrumentWord(slot >> 128);
            if ((w >> 24) & 0xff == 0) continue; // not settled
            cash += _settlePosition(account, k - 1, slot, w);
            ++settled;
        }
        if (settled == 0) return 0;
        balanceOf[account][0] += cash;
        _bump(account);
    }

    /// @dev Realises the position `slot` at index i of the account, in the settled instrument of
    /// word w (a backstop's entry: its book, which returns to zero); returns its exact cash.
    function _settlePosition(uint256 account, uint256 i, uint256 slot, uint256 w) private returns (int256 c) {
        uint256 id = slot >> 128;
        int256 q = _quantityOf(slot, w);
        c = (q * _payoff((w >> 8) & 0xff, int256((w >> 72) & type(uint104).max), settlementPrice[id])) / WAD; // exact
        if (uint128(slot) == 0) _writeBook(id, w, 0);
        _setQuantityAt(account, i, id, 0);
        emit PositionSettled(account, id, q, c, accountState[account].nonce + 1);
    }

    /// @dev Payoff per unit at settlement price s (a multiple of TICK, as strikes are).
    function _payoff(uint256 kind, int256 k, int256 s) private pure returns (int256) {
        if (kind == PortfolioMargin.FUTURE) return s;
        if (kind == PortfolioMargin.CALL) return s > k ? s - k : int256(0);
        return k > s ? k - s : int256(0);
    }

    // ============================================================== internals: accounts

    function _onlyAuthorized(uint256 account) private view {
        if (accountOwner(account) != msg.sender && !isOperator[account][msg.sender]) {
            revert NotAuthorized(account, msg.sender);
        }
    }

    /// @dev Realises the funding accrued on every perpetual position of the account into its
    /// settlement balance (the checks count it either way: _loadPortfolio). Called by every
    /// entry point that changes the account and bumps its nonce, before its positions change.
    function _realiseFunding(uint256 account) private {
        uint256[] storage slots = _positions[account];
        uint256 n = slots.length;
        int256 cash;
        for (uint256 i; i < n; ++i) {
            uint256 slot = _slotRead(slots, i);
            uint256 id = slot >> 128;
            uint256 w = _instrumentWord(id);
            if (w & PERP_MASK == 0) cash += _settleFundingAt(account, id, _quantityOf(slot, w));
        }
        if (cash != 0) {
            balanceOf[account][0] += cash;
            emit FundingSettled(account, cash);
        }
    }

    /// @dev _realiseFunding from a portfolio just loaded (`pf`, `ids`: _loadPortfolio's; the
    /// perpetuals are all live positions), without reading the position list again.
    function _realiseLoaded(uint256 account, Portfolio memory pf, uint256[] memory ids) private {
        int256 cash;
        for (uint256 i; i < ids.length; ++i) {
            Position memory p = pf.positions[i];
            if (p.kind == PortfolioMargin.FUTURE && p.expiry == 0) cash += _settleFundingAt(account, ids[i], p.quantity);
        }
        if (cash != 0) {
            balanceOf[account][0] += cash;
            emit FundingSettled(account, cash);
        }
    }

    function _bump(uint256 account) private returns (uint64 n) {
        n = accountState[account].nonce + 1;
        accountState[account].nonce = n;
    }

    function _checkNonce(uint256 account, uint64 nonce) private view returns (AccountState memory s) {
        s = accountState[account];
        if (s.nonce != nonce) revert StaleAccountNonce(account, nonce, s.nonce);
        if (account == backstop) revert BackstopAccount(account);
    }

    /// @dev Full IM check after a change; a passing check also clears a margin-call flag.
    /// The backstop is checked like any account (value leaving it must leave it healthy). An
    /// unflagged account with no positions and no negative balance is healthy without reading
    /// any oracle (a flagged one takes the full check, so that its clearing is announced).
    function _requireHealthyAfter(uint256 account) private {
        if (_positions[account].length == 0 && !_hasDebt(account) && accountState[account].flaggedAt == 0) return;
        (Portfolio memory pf, uint256[] memory ids) = _loadPortfolio(account);
        _realiseLoaded(account, pf, ids); // (an account without positions has none to realise)
        MarginResult memory r = _verify(pf, _market(pf, false));
        if (r.state != HEALTHY) revert InsufficientMargin(account, r.equity, r.initialMargin);
        if (accountState[account].flaggedAt != 0) {
            accountState[account].flaggedAt = 0;
            emit MarginCallCleared(account, r.equity, r.initialMargin);
        }
    }

    function _hasDebt(uint256 account) private view returns (bool) {
        for (uint256 k; k < _assets.length; ++k) {
            if (balanceOf[account][k] < 0) return true;
        }
        return false;
    }

    function _fullCheck(uint256 account, bool lenient) private view returns (MarginResult memory) {
        (Portfolio memory pf,) = _loadPortfolio(account);
        return _verify(pf, _market(pf, lenient));
    }

    function _verify(Portfolio memory pf, Market memory m) private view returns (MarginResult memory) {
        return verifier.fullCheck(pf, m, riskParams());
    }

    // ============================================================== internals: positions

    function _unpack(uint256 slot) private pure returns (uint256 id, int256 q) {
        id = slot >> 128;
        // forge-lint: disable-next-line(unsafe-typecast)
        q = int256(int128(uint128(slot)));
    }

    function _pack(uint256 id, int256 q) private pure returns (uint256) {
        // |q| <= 2 * MAX_QUANTITY < 2^127 (checked by callers' bounds): the cast is exact.
        // forge-lint: disable-next-line(unsafe-typecast)
        return (id << 128) | uint256(uint128(int128(q)));
    }

    /// @dev Adds delta to the account's position; returns the quantity before (0 for a new slot).
    /// Enforces MAX_POSITIONS (not for the backstop, whose quantities are its book: a new
    /// instrument gets an entry, the quantity goes to the instrument's word).
    function _applyPosition(uint256 account, uint256 id, int256 delta) private returns (int256 q) {
        uint256 idx = _positionIndex[account][id];
        if (idx == 0) {
            // A new position settles funding from now on.
            if (_instrumentWord(id) & PERP_MASK == 0) _settleFundingAt(account, id, 0);
            if (account == backstop) {
                _addToBackstop(account, id, delta);
                return 0;
            }
            uint256 n = _positions[account].length + 1;
            if (n > MAX_POSITIONS) revert PositionLimitExceeded(account, n, MAX_POSITIONS);
            _positions[account].push(_pack(id, delta));
            _positionIndex[account][id] = n;
            return 0;
        }
        uint256 slot = _slotRead(_positions[account], idx - 1);
        if (uint128(slot) == 0) {
            // The backstop's entry: the quantity is the instrument's book.
            q = _bookOf(_instrumentWord(id));
            _addToBackstop(account, id, delta);
            return q;
        }
        (, q) = _unpack(slot);
        int256 nq = q + delta;
        if (nq > MAX_QUANTITY || nq < -MAX_QUANTITY) revert InvalidQuantity(nq);
        _setQuantityAt(account, idx - 1, id, nq);
    }

    /// @dev Adds delta to the backstop's book in the instrument: one write of the instrument's
    /// word (warm: every portfolio load reads it), no position limit (the backstop is exempt).
    /// Only when the book leaves or reaches zero does the backstop's entry list change (an
    /// entry `id << 128` pushed, or removed by swap-and-pop).
    function _addToBackstop(uint256 bk, uint256 id, int256 delta) private {
        Instrument storage ins = instruments[id];
        uint256 w;
        assembly ("memory-safe") {
            w := sload(ins.slot)
        }
        // In lots: the book is |lots| <= 1e22 and |delta| <= 2 * MAX_QUANTITY, so nothing here
        // can overflow; a delta off the LOT grid (never: quantities are LOT multiples) reverts.
        int256 q; // the book before, in lots
        int256 nq; // after
        unchecked {
            // forge-lint: disable-next-line(unsafe-typecast)
            q = int256(w) >> BOOK_SHIFT;
            nq = q + delta / LOT;
            if (nq > MAX_QUANTITY / LOT || nq < -MAX_QUANTITY / LOT || delta % LOT != 0) {
                revert InvalidQuantity(q * LOT + delta);
            }
        }
        // forge-lint: disable-next-line(unsafe-typecast)
        w = (w & FIELDS_MASK) | (uint256(nq) << BOOK_SHIFT); // as _writeBook, one slot hash
        assembly ("memory-safe") {
            sstore(ins.slot, w)
        }
        if (q == 0) {
            uint256[] storage slots = _positions[bk];
            slots.push(id << 128);
            _positionIndex[bk][id] = slots.length;
        } else if (nq == 0) {
            _setQuantityAt(bk, _positionIndex[bk][id] - 1, id, 0);
        }
    }

    /// @dev Writes quantity q at index i (removes the slot by swap-and-pop when q == 0).
    function _setQuantityAt(uint256 account, uint256 i, uint256 id, int256 q) private {
        uint256[] storage slots = _positions[account];
        if (q != 0) {
            _slotWrite(slots, i, _pack(id, q));
            return;
        }
        uint256 last = slots.length - 1;
        if (i != last) {
            uint256 moved = slots[last];
            slots[i] = moved;
            _positionIndex[account][moved >> 128] = i + 1;
        }
        slots.pop();
        delete _positionIndex[account][id];
    }

    /// @dev slots[i] without the length check (an SLOAD): callers pass i < slots.length, which
    /// _positionIndex (index + 1 of a present instrument) and the loops' bounds guarantee.
    function _slotRead(uint256[] storage slots, uint256 i) private view returns (uint256 v) {
        assembly ("memory-safe") {
            mstore(0, slots.slot)
            v := sload(add(keccak256(0, 0x20), i))
        }
    }

    /// @dev slots[i] = v without the length check (i < slots.length, as for _slotRead).
    function _slotWrite(uint256[] storage slots, uint256 i, uint256 v) private {
        assembly ("memory-safe") {
            mstore(0, slots.slot)
            sstore(add(keccak256(0, 0x20), i), v)
        }
    }

    /// @dev The account as the verifier sees it. A position in a settled instrument is worth
    /// exactly q * payoff / 1e18 (the cash settleAccount would pay) and carries no risk: it is
    /// left out of the positions and added to the settlement balance, so no check values it at
    /// the live spot. `ids[i]` is the instrument of `pf.positions[i]`; both are shorter than the
    /// storage list exactly when something was folded.
    function _loadPortfolio(uint256 account) private view returns (Portfolio memory pf, uint256[] memory ids) {
        uint256[] storage slots = _positions[account];
        uint256 n = slots.length;
        Position[] memory ps = new Position[](n);
        ids = new uint256[](n);
        uint256 live;
        int256 settledCash;
        for (uint256 i; i < n; ++i) {
            uint256 slot = _slotRead(slots, i);
            uint256 id = slot >> 128;
            // The instrument's one packed slot, read once: underlying (bits 0-7), kind (8-15),
            // listed (16-23), settled (24-31), expiry (32-71), strike (72-175), the backstop's
            // book (176-255: the quantity of a backstop's entry).
            uint256 w = _instrumentWord(id);
            // _quantityOf written out (this loop runs in every check): |book| <= 1e22 lots.
            // forge-lint: disable-next-line(unsafe-typecast)
            int256 q = int256(int128(uint128(slot)));
            unchecked {
                // forge-lint: disable-next-line(unsafe-typecast)
                if (q == 0) q = (int256(w) >> BOOK_SHIFT) * LOT;
            }
            int256 strike = int256((w >> 72) & type(uint104).max);
            if ((w >> 24) & 0xff != 0) {
                settledCash += (q * _payoff((w >> 8) & 0xff, strike, settlementPrice[id])) / WAD; // exact
                continue;
            }
            ids[live] = id;
            ps[live++] = Position(w & 0xff, uint8(w >> 8), strike, uint64(uint40(w >> 32)), q, 0);
            // A perpetual's funding accrued since the position last settled counts as cash.
            if (w & PERP_MASK == 0) settledCash += _accrued(account, id, q);
        }
        assembly ("memory-safe") {
            // Shrink to the live positions (live <= n: the arrays only get shorter).
            mstore(ps, live)
            mstore(ids, live)
        }
        pf.positions = ps;
        uint256 nA = _assets.length;
        pf.collateral = new int256[](nA);
        for (uint256 k; k < nA; ++k) {
            pf.collateral[k] = balanceOf[account][k];
        }
        if (nA != 0) pf.collateral[0] += settledCash;
    }

    /// @dev The funding accrued by the account's position q in the perpetual id since it last
    /// settled (what _settleFundingAt would pay it now).
    function _accrued(uint256 account, uint256 id, int256 q) private view returns (int256) {
        return -(q * (_fundingIndex[id] - _fundingIndexAt[account][id])) / WAD;
    }

    /// @dev Reads the feeds of the underlyings the portfolio uses (positions and non-zero
    /// volatile collateral); the others get a placeholder spot of 1 and vol 0, which the
    /// model never uses for them. `lenient`: the liquidation age bound instead of maxAge.
    function _market(Portfolio memory pf, bool lenient) private view returns (Market memory m) {
        (m,) = _readMarket(pf, lenient);
    }

    /// @dev _market, and whether a feed read is older than its strict maxAge (`stale`: only
    /// possible when lenient), so one read serves both the strict and the lenient rule.
    function _readMarket(Portfolio memory pf, bool lenient) private view returns (Market memory m, bool stale) {
        uint256 nU = _underlyings.length;
        bool[] memory used = new bool[](nU);
        for (uint256 i; i < pf.positions.length; ++i) {
            used[pf.positions[i].underlying] = true;
        }
        for (uint256 k; k < pf.collateral.length; ++k) {
            if (pf.collateral[k] == 0) continue; // (no config read for an empty balance)
            uint8 u = _assets[k].underlying;
            if (u != NO_UNDERLYING) used[u] = true;
        }
        m.timestamp = uint64(block.timestamp);
        m.rate = rate;
        m.spots = new int256[](nU);
        m.vols = new int256[](nU);
        for (uint256 u; u < nU; ++u) {
            if (!used[u]) {
                m.spots[u] = WAD;
                continue;
            }
            UnderlyingConfig memory uc = _underlyings[u];
            uint256 age = lenient ? uc.liquidationMaxAge : uc.maxAge;
            uint256 t0;
            uint256 t1;
            (m.spots[u], t0) = uc.priceFeed.read(age);
            (m.vols[u], t1) = uc.volFeed.read(age);
            if (t1 < t0) t0 = t1;
            // As OracleLib: a future timestamp counts as fresh.
            if (t0 < block.timestamp && block.timestamp - t0 > uc.maxAge) stale = true;
        }
    }

    function _liveInstrument(uint256 id) private view returns (Instrument memory ins) {
        ins = instruments[id];
        if (!ins.listed) revert UnknownInstrument(id);
        if (ins.expiry != 0 && block.timestamp >= ins.expiry) revert InstrumentExpired(id, ins.expiry);
    }

    // ============================================================== internals: params, tokens, math
    function _asset(uint256 asset) private view returns (AssetConfig memory) {
        if (asset >= _assets.length) revert UnknownAsset(asset);
        return _assets[asset];
    }

}
