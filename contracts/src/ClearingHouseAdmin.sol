// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AggregatorV3Interface} from "./interfaces/AggregatorV3Interface.sol";
import {IERC20} from "./interfaces/IERC20.sol";
import {ClearingHouseBase} from "./ClearingHouseBase.sol";
import {MarginVerifier} from "./MarginVerifier.sol";
import {OracleLib} from "./oracle/OracleLib.sol";
import {PortfolioMargin} from "./margin/PortfolioMargin.sol";

/// @title ClearingHouseAdmin
/// @notice Governance, risk-operator and guardian entry points of the clearing house. Only
/// ever executed by ClearingHouse's fallback through DELEGATECALL (on the clearing house's
/// storage); calling it directly changes nothing of the protocol's.
contract ClearingHouseAdmin is ClearingHouseBase {
    using OracleLib for AggregatorV3Interface;

    /// @notice Upper bound of maxBounty (WAD of asset 0: 10,000 USDC).
    uint256 public constant MAX_BOUNTY = 1e22;
    /// @notice Bounds of the grace period of a margin call: long enough to cure, short enough
    /// that a flagged account cannot sit below IM for long.
    uint32 public constant MIN_GRACE = 60;
    uint32 public constant MAX_GRACE = 7 days;
    /// @notice The recalibration module (ClearingHouseRecalibration): this module's fallback
    /// passes the calls it does not know on to it, still on the clearing house's storage.
    address public immutable recalibration;

    constructor(MarginVerifier verifier_, address recalibration_) ClearingHouseBase(verifier_) {
        recalibration = recalibration_;
    }

    /// @dev The recalibration entry points (ClearingHouse's fallback -> here -> there, each a
    /// DELEGATECALL: msg.sender, msg.value and storage stay the clearing house's caller's).
    fallback() external {
        address target = recalibration;
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), target, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    // ------------------------------------------------------------------ account entry points and views
    // (Rarely called: kept here, off the size-bound clearing house, on its storage.)

    function setOperator(uint256 account, address operator, bool allowed) external {
        // The owner is the account id's top 160 bits (accountOwner): the cast is exact.
        // forge-lint: disable-next-line(unsafe-typecast)
        if (address(uint160(account >> 96)) != msg.sender) revert NotAuthorized(account, msg.sender);
        isOperator[account][operator] = allowed;
        emit OperatorSet(account, operator, allowed);
    }

    /// @notice Pays the caller's bounties in whole token units (the sub-unit rest stays).
    function claimBounty() external {
        AssetConfig memory a = _assets[0];
        int256 stored = _bountiesPlusOne[msg.sender];
        int256 b = stored == 0 ? int256(0) : stored - 1;
        int256 scale = int256(uint256(a.scale));
        int256 units = b / scale; // b >= 0: floor
        if (units == 0) revert NothingToClaim(msg.sender);
        int256 paid = units * scale;
        _bountiesPlusOne[msg.sender] = stored - paid; // the rest, plus one: never back to zero
        _totalBountiesPlusOne -= _toInt128(paid);
        // forge-lint: disable-next-line(unsafe-typecast)
        if (!IERC20(a.token).transfer(msg.sender, uint256(units))) revert TokenTransferFailed(a.token);
        emit BountyClaimed(msg.sender, paid);
    }

    /// @notice Anyone may add settlement-currency tokens to the insurance fund.
    function depositInsurance(uint256 amount) external {
        int256 received = _pull(_assets[0], amount);
        _insuranceFundPlusOne += _toInt128(received);
        emit InsuranceDeposit(msg.sender, received, _insuranceFundPlusOne - 1);
    }

    function underlyingCount() external view returns (uint256) {
        return _underlyings.length;
    }

    function underlyingConfig(uint256 u) external view returns (UnderlyingConfig memory) {
        return _underlyings[u];
    }

    function assetCount() external view returns (uint256) {
        return _assets.length;
    }

    function assetConfig(uint256 a) external view returns (AssetConfig memory) {
        return _assets[a];
    }

    /// @notice Instrument ids and quantities of an account (storage order).
    function positionsOf(uint256 account) external view returns (uint256[] memory ids, int256[] memory quantities) {
        uint256[] storage slots = _positions[account];
        uint256 n = slots.length;
        ids = new uint256[](n);
        quantities = new int256[](n);
        for (uint256 i; i < n; ++i) {
            uint256 slot = slots[i];
            uint256 id = slot >> 128;
            ids[i] = id;
            quantities[i] = _quantityOf(slot, _instrumentWord(id)); // a backstop's entry: its book
        }
    }


    function setOwner(address owner_) external onlyOwner {
        owner = owner_;
        emit OwnerChanged(owner_);
    }

    function setRole(bytes32 role, address who, bool allowed) external onlyOwner {
        hasRole[role][who] = allowed;
        emit RoleSet(role, who, allowed);
    }

    /// @notice The backstop takes over liquidated positions and absorbs what the insurance fund
    /// cannot. Only an empty account can become it: an account with positions or a debt would
    /// otherwise escape flags and liquidation by being named the backstop.
    /// The former backstop keeps its positions: its book (kept in the instruments' words) becomes
    /// ordinary position slots of its account, and the words' books return to zero.
    function setBackstop(uint256 account) external onlyOwner {
        if (_positions[account].length != 0) revert BackstopNotEmpty(account);
        for (uint256 k; k < _assets.length; ++k) {
            if (balanceOf[account][k] != 0) revert BackstopNotEmpty(account);
        }
        uint256 former = backstop;
        if (former != 0 && former != account) {
            uint256[] storage slots = _positions[former];
            for (uint256 i; i < slots.length; ++i) {
                uint256 id = slots[i] >> 128;
                uint256 w = _instrumentWord(id);
                int256 q = _bookOf(w);
                // |q| <= MAX_QUANTITY < 2^127: the cast is exact.
                // forge-lint: disable-next-line(unsafe-typecast)
                slots[i] = (id << 128) | uint256(uint128(int128(q)));
                _writeBook(id, w, 0);
            }
        }
        backstop = account;
        emit BackstopSet(account);
    }

    function setRate(int256 rate_) external onlyOwner {
        if (rate_ < -MAX_RATE || rate_ > MAX_RATE) revert ParamOutOfBounds(1, rate_, -MAX_RATE, MAX_RATE);
        rate = rate_;
        emit RateSet(rate_);
    }

    /// @notice Replaces the feeds and ages of an existing underlying (new underlyings come with
    /// their risk parameters through `configureMarkets`).
    function setUnderlying(
        uint256 u,
        AggregatorV3Interface priceFeed,
        AggregatorV3Interface volFeed,
        uint32 maxAge,
        uint32 liquidationMaxAge
    ) external onlyOwner {
        if (u >= _underlyings.length) revert UnderlyingNotConfigured(u);
        _underlyings[u] = _checkedUnderlying(UnderlyingConfig(priceFeed, maxAge, liquidationMaxAge, volFeed), u);
    }

    /// @notice Appends underlyings (indices from the current count), then collateral tokens
    /// (asset indices from the current count; asset 0 must be the settlement stablecoin), then
    /// stores `params` (abi.encode(RiskParams)), which must match the new counts: one call, so
    /// there is no moment where a new underlying or token exists without its parameters (checks
    /// would revert and a new token would be valued without its haircut).
    function configureMarkets(
        UnderlyingConfig[] calldata newUnderlyings,
        address[] calldata newTokens,
        bytes calldata params
    ) external onlyOwner {
        for (uint256 i; i < newUnderlyings.length; ++i) {
            uint256 u = _underlyings.length;
            if (u >= PortfolioMargin.MAX_UNDERLYINGS) revert ConfigMismatch(1, PortfolioMargin.MAX_UNDERLYINGS, u + 1);
            _underlyings.push(_checkedUnderlying(newUnderlyings[i], u));
        }
        for (uint256 i; i < newTokens.length; ++i) {
            address token = newTokens[i];
            if (_assets.length >= PortfolioMargin.MAX_ASSETS) {
                revert ConfigMismatch(2, PortfolioMargin.MAX_ASSETS, _assets.length + 1);
            }
            uint8 d = IERC20(token).decimals();
            if (d > 18) revert ParamOutOfBounds(3, int256(uint256(d)), 0, 18);
            _assets.push(AssetConfig(token, d, NO_UNDERLYING, 0, uint64(10 ** (18 - d))));
            emit CollateralConfigured(_assets.length - 1, token, d);
        }
        _storeParams(params);
    }

    function _checkedUnderlying(UnderlyingConfig memory c, uint256 u) private returns (UnderlyingConfig memory) {
        if (c.maxAge == 0 || c.liquidationMaxAge < c.maxAge) {
            revert ParamOutOfBounds(2, int256(uint256(c.liquidationMaxAge)), int256(uint256(c.maxAge)), type(int32).max);
        }
        emit UnderlyingConfigured(u, address(c.priceFeed), address(c.volFeed), c.maxAge, c.liquidationMaxAge);
        return c;
    }

    /// @notice Governance sets the whole parameter set; it must match the configured
    /// underlyings and assets, asset 0 must be STABLE, and the verifier must accept it.
    /// `params` = abi.encode(RiskParams) (the struct of PortfolioMargin.sol).
    function setRiskParams(bytes calldata params) external onlyOwner {
        _storeParams(params);
    }

    function setRiskBounds(uint256 u, RiskBounds calldata b) external onlyOwner {
        if (u >= _underlyings.length) revert UnderlyingNotConfigured(u);
        if (b.minRange > b.maxRange) revert ParamOutOfBounds(4, b.minRange, type(int256).min, b.maxRange);
        if (b.minVolShift > b.maxVolShift) revert ParamOutOfBounds(5, b.minVolShift, type(int256).min, b.maxVolShift);
        riskBounds[u] = b;
        emit RiskBoundsSet(u, b.minRange, b.maxRange, b.minVolShift, b.maxVolShift);
    }

    /// @notice 0 < penaltyRate <= MAX_PENALTY_RATE, bountyShare <= 1, minBounty <= maxBounty
    /// <= MAX_BOUNTY, MIN_GRACE <= gracePeriod <= MAX_GRACE.
    function setLiquidationConfig(LiquidationConfig calldata c) external onlyOwner {
        if (c.penaltyRate == 0 || int256(uint256(c.penaltyRate)) > MAX_PENALTY_RATE) {
            revert ParamOutOfBounds(8, int256(uint256(c.penaltyRate)), 1, MAX_PENALTY_RATE);
        }
        if (c.bountyShare > uint64(uint256(WAD))) revert ParamOutOfBounds(9, int256(uint256(c.bountyShare)), 0, WAD);
        if (c.minBounty > c.maxBounty) revert ParamOutOfBounds(10, int256(uint256(c.minBounty)), 0, int256(uint256(c.maxBounty)));
        if (c.maxBounty > MAX_BOUNTY) {
            // forge-lint: disable-next-line(unsafe-typecast)
            revert ParamOutOfBounds(11, int256(uint256(c.maxBounty)), int256(uint256(c.minBounty)), int256(MAX_BOUNTY));
        }
        if (c.gracePeriod < MIN_GRACE || c.gracePeriod > MAX_GRACE) {
            revert ParamOutOfBounds(12, int256(uint256(c.gracePeriod)), int256(uint256(MIN_GRACE)), int256(uint256(MAX_GRACE)));
        }
        liquidationConfig = c;
        emit LiquidationConfigSet(
            int256(uint256(c.penaltyRate)),
            int256(uint256(c.bountyShare)),
            int256(uint256(c.minBounty)),
            int256(uint256(c.maxBounty)),
            c.gracePeriod
        );
    }

    /// @notice Lists an instrument: a future (strike 0; expiry 0 = perpetual, else in the
    /// future) or a European call/put (strike a positive multiple of TICK, expiry in the future).
    /// An expiry must be below 2^40 (the year 36812): the instrument's word stores it in 40 bits.
    function listInstrument(uint256 underlying, uint8 kind, int256 strike, uint64 expiry)
        external
        onlyOwner
        returns (uint256 id)
    {
        if (underlying >= _underlyings.length) revert UnderlyingNotConfigured(underlying);
        if (kind > PortfolioMargin.PUT) revert InvalidInstrument(1);
        if (kind == PortfolioMargin.FUTURE) {
            if (strike != 0) revert InvalidInstrument(2);
            if (expiry != 0 && expiry <= block.timestamp) revert InvalidInstrument(3);
        } else {
            if (strike <= 0 || strike > MAX_PRICE || strike % TICK != 0) revert InvalidInstrument(2);
            if (expiry <= block.timestamp) revert InvalidInstrument(3);
        }
        if (expiry > type(uint40).max) revert InvalidInstrument(3);
        id = ++instrumentCount;
        // strike in [0, MAX_PRICE] < 2^104, expiry < 2^40: the casts are exact.
        // forge-lint: disable-next-line(unsafe-typecast)
        instruments[id] = Instrument(uint8(underlying), kind, true, false, uint40(expiry), uint104(uint256(strike)));
        // A perpetual's first funding interval starts now (last poke = last trade = listing).
        if (kind == PortfolioMargin.FUTURE && expiry == 0) _fundingClock[id] = (block.timestamp << 40) | block.timestamp;
        emit InstrumentListed(id, underlying, kind, strike, expiry);
    }

    /// @notice Records an expired instrument's settlement price from round `roundId` of its
    /// underlying's price feed: the first round published at or after expiry (valid, updatedAt
    /// >= expiry, and its predecessor published before expiry; a missing predecessor is
    /// accepted only for the first round of a phase). The round is checked, not chosen: a
    /// caller cannot pick a moment after expiry. Price = the answer in WAD, rounded down to TICK.
    /// Anyone, also while paused (settlement lets accounts out of expired risk).
    function settleInstrument(uint256 instrument, uint80 roundId) external {
        Instrument memory ins = instruments[instrument];
        if (!ins.listed) revert UnknownInstrument(instrument);
        if (ins.expiry == 0 || block.timestamp < ins.expiry) revert InstrumentNotExpired(instrument, ins.expiry);
        if (ins.settled) revert InstrumentAlreadySettled(instrument);
        AggregatorV3Interface feed = _underlyings[ins.underlying].priceFeed;
        (int256 spot, uint256 updatedAt) = feed.readRound(roundId);
        if (updatedAt < ins.expiry) revert PriceBeforeExpiry(instrument, updatedAt, ins.expiry);
        // The low 64 bits are the aggregator's round within its phase (truncation intended).
        // forge-lint: disable-next-line(unsafe-typecast)
        if (uint64(roundId) != 1) {
            // (roundId 0 has no predecessor: reported missing, not underflowed.)
            uint256 prev = roundId == 0 ? 0 : feed.updatedAtOf(roundId - 1);
            if (prev == 0) revert PreviousRoundMissing(instrument, roundId);
            if (prev >= ins.expiry) revert NotFirstRoundAfterExpiry(instrument, roundId, prev);
        }
        int256 p = spot - (spot % TICK); // spot > 0: floor
        instruments[instrument].settled = true;
        settlementPrice[instrument] = p;
        emit InstrumentSettled(instrument, p);
    }

    function pause() external onlyRole(GUARDIAN) {
        paused = true;
        emit PausedSet(true, msg.sender);
    }

    function unpause() external onlyRole(GUARDIAN) {
        paused = false;
        emit PausedSet(false, msg.sender);
    }

    /// @notice Bounds the trade price around the model mark: |price - mark| <= band x spot.
    function setPriceBand(int256 band) external onlyOwner {
        if (band < MIN_PRICE_BAND || band > MAX_PRICE_BAND) revert ParamOutOfBounds(20, band, MIN_PRICE_BAND, MAX_PRICE_BAND);
        _priceBand = band;
        emit PriceBandSet(band);
    }

    // ------------------------------------------------------------------ funding

    /// @notice Advances a perpetual's funding index, at most once per FUNDING_INTERVAL; anyone
    /// may call it (the keeper does, on a schedule), also while paused. The mark is the
    /// time-weighted average of trade prices since the last poke (the last price before the
    /// window carries on until the next trade; the first trade ever also prices the time
    /// before it), rounded down to TICK; with no trade yet there is no funding. The index
    /// moves by delta = clamp(mark - spot, +-cap x spot), rounded toward zero to TICK: a long
    /// of one contract pays delta (receives -delta), a short the opposite, so funding moves
    /// cash between accounts and is zero-sum to the wei (positions sum to zero per instrument
    /// and every payment is exact). One interval's funding per poke: an interval without a
    /// poke is not paid later. The spot must be within maxAge (OracleLib's strict read).
    function pokeFunding(uint256 instrument) external returns (int256 delta) {
        Instrument memory ins = instruments[instrument];
        if (!ins.listed || ins.kind != PortfolioMargin.FUTURE || ins.expiry != 0) revert NotPerpetual(instrument);
        uint256 c = _fundingClock[instrument];
        uint256 next = (c & ((1 << 40) - 1)) + FUNDING_INTERVAL;
        if (block.timestamp < next) revert FundingTooEarly(instrument, next);
        UnderlyingConfig memory uc = _underlyings[ins.underlying];
        (int256 spot,) = uc.priceFeed.read(uc.maxAge);
        int256 mark = _fundingMark(c);
        if (mark != 0) {
            int256 cap = (spot * _fundingCap) / WAD; // spot, cap >= 0: floor
            delta = mark - spot;
            if (delta > cap) delta = cap;
            if (delta < -cap) delta = -cap;
            delta -= delta % TICK; // toward zero
        }
        int256 index = _fundingIndex[instrument] + delta;
        _fundingIndex[instrument] = index;
        // A new window: last poke = last trade = now, the last price kept, the sum reset.
        _fundingClock[instrument] = (c & (((1 << 72) - 1) << 80)) | (block.timestamp << 40) | block.timestamp;
        emit FundingPoked(instrument, mark, spot, delta, index);
    }

    /// @dev The time-weighted trade price since the last poke (WAD, a multiple of TICK), now;
    /// 0 before the first trade.
    function _fundingMark(uint256 c) private view returns (int256) {
        uint256 p = (c >> 80) & ((1 << 72) - 1);
        if (p == 0) return 0;
        uint256 lastPoke = c & ((1 << 40) - 1);
        uint256 sum = (c >> 152) + p * (block.timestamp - ((c >> 40) & ((1 << 40) - 1)));
        // forge-lint: disable-next-line(unsafe-typecast)
        return int256(sum / (block.timestamp - lastPoke)) * TICK; // called >= 1 interval after lastPoke
    }

    /// @notice The funding cap per interval (WAD fraction of spot), 0 <= cap <= MAX_FUNDING_CAP.
    function setFundingCap(int256 cap) external onlyOwner {
        if (cap < 0 || cap > MAX_FUNDING_CAP) revert ParamOutOfBounds(21, cap, 0, MAX_FUNDING_CAP);
        _fundingCap = cap;
        emit FundingCapSet(cap);
    }

    function fundingCap() external view returns (int256) {
        return _fundingCap;
    }

    /// @notice A perpetual's funding state: its cumulative index, the time of the last poke
    /// and of the last trade, the last trade price and the mark a poke would use now (0: no
    /// trade yet, or a poke now would be early and the mark is that of the window so far).
    function fundingState(uint256 instrument)
        external
        view
        returns (int256 index, uint256 lastPoke, uint256 lastTrade, int256 lastPrice, int256 mark)
    {
        uint256 c = _fundingClock[instrument];
        index = _fundingIndex[instrument];
        lastPoke = c & ((1 << 40) - 1);
        lastTrade = (c >> 40) & ((1 << 40) - 1);
        // forge-lint: disable-next-line(unsafe-typecast)
        lastPrice = int256((c >> 80) & ((1 << 72) - 1)) * TICK;
        if (lastPrice != 0 && block.timestamp > lastPoke) mark = _fundingMark(c);
    }

    /// @notice Per position of the account (positionsOf's order): the funding index it last
    /// settled at (0 for a position that is not in a perpetual).
    function fundingIndicesOf(uint256 account) external view returns (int256[] memory indices) {
        uint256[] storage slots = _positions[account];
        uint256 n = slots.length;
        indices = new int256[](n);
        for (uint256 i; i < n; ++i) {
            uint256 id = slots[i] >> 128;
            if (_instrumentWord(id) & PERP_MASK == 0) indices[i] = _fundingIndexAt[account][id];
        }
    }

    /// @notice The funding the account has accrued and not yet realised (WAD of asset 0,
    /// received: > 0); every margin check counts it.
    function accruedFunding(uint256 account) external view returns (int256 cash) {
        uint256[] storage slots = _positions[account];
        for (uint256 i; i < slots.length; ++i) {
            uint256 slot = slots[i];
            uint256 id = slot >> 128;
            uint256 w = _instrumentWord(id);
            if (w & PERP_MASK != 0) continue;
            cash -= (_quantityOf(slot, w) * (_fundingIndex[id] - _fundingIndexAt[account][id])) / WAD;
        }
    }

    // ------------------------------------------------------------------ signed orders
    // (Rarely called: kept here, off the size-bound clearing house, on its storage.)

    /// @notice Cancels every order of `account` signed with `nonce` (owner or operator).
    function cancelOrder(uint256 account, uint256 nonce) external {
        // forge-lint: disable-next-line(unsafe-typecast)
        if (address(uint160(account >> 96)) != msg.sender && !isOperator[account][msg.sender]) {
            revert NotAuthorized(account, msg.sender);
        }
        if (_orderCancelled[account][nonce]) revert OrderIsCancelled(account, nonce);
        _orderCancelled[account][nonce] = true;
        emit OrderCancelled(account, nonce);
    }

    /// @notice Magnitude of the order's quantity filled so far.
    function orderFilled(bytes32 orderDigest) external view returns (uint256) {
        return _orderFilled[orderDigest];
    }

    function orderCancelled(uint256 account, uint256 nonce) external view returns (bool) {
        return _orderCancelled[account][nonce];
    }

    /// @notice The EIP-712 digest the order's signer signs.
    function hashOrder(Order calldata o) external view returns (bytes32) {
        return _hashOrder(o);
    }

    // forge-lint: disable-next-line(mixed-case-function)
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparator();
    }

    // forge-lint: disable-next-line(mixed-case-function)
    function ORDER_TYPEHASH() external pure returns (bytes32) {
        return _ORDER_TYPEHASH;
    }

    /// @notice WAD fraction of spot: the widest distance of a trade price from the model mark.
    function priceBand() external view returns (int256) {
        return _priceBand;
    }
}
