// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AggregatorV3Interface} from "./interfaces/AggregatorV3Interface.sol";
import {IERC20} from "./interfaces/IERC20.sol";
import {ClearingHouseBase} from "./ClearingHouseBase.sol";
import {MarginVerifier} from "./MarginVerifier.sol";
import {OracleLib} from "./oracle/OracleLib.sol";
import {PortfolioMargin, RiskParams} from "./margin/PortfolioMargin.sol";

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
    /// @notice Bounds of the recalibration timelock (the floor suits a devnet; a production
    /// owner sets hours, time for the guardian to look), and of its change limits (WAD).
    uint32 public constant MIN_RECALIBRATION_DELAY = 10;
    uint32 public constant MAX_RECALIBRATION_DELAY = 7 days;
    uint64 public constant MAX_RECALIBRATION_STEP = 0.5e18;
    /// @notice A queued recalibration can be executed from eta to eta + RECALIBRATION_GRACE.
    uint64 public constant RECALIBRATION_GRACE = 2 days;

    constructor(MarginVerifier verifier_) ClearingHouseBase(verifier_) {}

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

    // ------------------------------------------------------------------ recalibration
    // The risk operator (the keeper's `keeper calibrate`) queues a new grid per underlying,
    // computed from named oracle rounds; after the owner-set delay anyone executes it, and the
    // guardian can cancel it meanwhile. Every check runs at queue time (to fail early) and
    // again at execution against the parameters current then: a proposal queued against old
    // parameters cannot carry a larger change than the limits allow from the new ones.

    /// @notice 10 s <= delay <= 7 days; 0 < maxStep <= maxDailyStep <= 0.5 (WAD). Applies to
    /// proposals queued from now on (a queued one keeps its eta) and to every execution.
    function setRecalibrationConfig(uint32 delay, uint64 maxStep, uint64 maxDailyStep) external onlyOwner {
        if (delay < MIN_RECALIBRATION_DELAY || delay > MAX_RECALIBRATION_DELAY) {
            revert ParamOutOfBounds(21, int256(uint256(delay)), int256(uint256(MIN_RECALIBRATION_DELAY)), int256(uint256(MAX_RECALIBRATION_DELAY)));
        }
        if (maxStep == 0 || maxStep > maxDailyStep) {
            revert ParamOutOfBounds(22, int256(uint256(maxStep)), 1, int256(uint256(maxDailyStep)));
        }
        if (maxDailyStep > MAX_RECALIBRATION_STEP) {
            revert ParamOutOfBounds(23, int256(uint256(maxDailyStep)), int256(uint256(maxStep)), int256(uint256(MAX_RECALIBRATION_STEP)));
        }
        _recalibrationConfig = RecalibrationConfig(delay, maxStep, maxDailyStep);
        emit RecalibrationConfigSet(delay, maxStep, maxDailyStep);
    }

    /// @notice Queues `proposal` = abi.encode(Recalibration) (canonical bytes only); returns its id.
    function queueRecalibration(bytes calldata proposal) external onlyRole(RISK_OPERATOR) returns (uint256 id) {
        RecalibrationConfig memory c = _recalibrationConfig;
        if (c.delay == 0) revert RecalibrationDisabled();
        Recalibration memory r = _decodeRecalibration(proposal);
        _checkRecalibration(r, c);
        id = ++_recalibrationCount;
        bytes32 h = keccak256(proposal);
        uint64 eta = uint64(block.timestamp) + c.delay;
        _queuedRecalibration[id] = QueuedRecalibration(h, eta, 1);
        emit RecalibrationQueued(id, h, eta, msg.sender, proposal);
    }

    /// @notice Anyone, from eta to eta + RECALIBRATION_GRACE, with the queued bytes: re-checks
    /// the proposal against the current parameters and limits, then stores the new grid.
    function executeRecalibration(uint256 id, bytes calldata proposal) external {
        QueuedRecalibration memory q = _queuedRecalibration[id];
        if (q.state != 1) revert RecalibrationNotQueued(id, q.state);
        if (block.timestamp < q.eta) revert RecalibrationTooEarly(id, q.eta);
        if (block.timestamp > q.eta + RECALIBRATION_GRACE) revert RecalibrationExpired(id, q.eta + RECALIBRATION_GRACE);
        bytes32 h = keccak256(proposal);
        if (h != q.proposalHash) revert RecalibrationHashMismatch(id, q.proposalHash, h);
        Recalibration memory r = abi.decode(proposal, (Recalibration)); // canonical: checked at queue
        RiskParams memory p = _checkRecalibration(r, _recalibrationConfig);
        uint32 today = uint32(block.timestamp / 1 days);
        for (uint256 u; u < r.priceRanges.length; ++u) {
            if (_recalibrationDay[u].day != today) {
                // |values| <= the model's bounds (0.9 and 5 WAD) < 2^111: the casts are exact.
                // forge-lint: disable-next-line(unsafe-typecast)
                _recalibrationDay[u] = RecalibrationDay(today, int112(p.underlyings[u].priceRange), int112(p.underlyings[u].volShiftBase));
            }
            p.underlyings[u].priceRange = r.priceRanges[u];
            p.underlyings[u].volShiftBase = r.volShiftBases[u];
        }
        _queuedRecalibration[id].state = 2;
        _lastRecalibrationAsOf = r.asOf;
        _storeParams(abi.encode(p));
        emit RecalibrationExecuted(id, h, msg.sender);
    }

    /// @notice The guardian cancels a queued recalibration; a cancelled id never executes.
    function cancelRecalibration(uint256 id) external onlyRole(GUARDIAN) {
        uint8 state = _queuedRecalibration[id].state;
        if (state != 1) revert RecalibrationNotQueued(id, state);
        _queuedRecalibration[id].state = 3;
        emit RecalibrationCancelled(id, msg.sender);
    }

    function _decodeRecalibration(bytes calldata proposal) private pure returns (Recalibration memory r) {
        r = abi.decode(proposal, (Recalibration));
        // abi.decode accepts other encodings of the same values (offsets, trailing bytes):
        // only the canonical one is accepted, so a proposal has exactly one hash.
        if (keccak256(abi.encode(r)) != keccak256(proposal)) revert RecalibrationNotCanonical();
    }

    /// @dev Shape, sources, asOf and every limit of `r` against the current parameters, which
    /// it returns decoded.
    function _checkRecalibration(Recalibration memory r, RecalibrationConfig memory c)
        private
        view
        returns (RiskParams memory p)
    {
        uint256 n = _underlyings.length;
        if (r.sources.length != n) revert RecalibrationShape(0, n, r.sources.length);
        if (r.vols.length != n) revert RecalibrationShape(1, n, r.vols.length);
        if (r.priceRanges.length != n) revert RecalibrationShape(2, n, r.priceRanges.length);
        if (r.volShiftBases.length != n) revert RecalibrationShape(3, n, r.volShiftBases.length);
        if (r.correlations.length != n * (n - 1) / 2) revert RecalibrationShape(4, n * (n - 1) / 2, r.correlations.length);
        uint256 end = type(uint256).max;
        for (uint256 u; u < n; ++u) {
            RecalibrationSource memory s = r.sources[u];
            AggregatorV3Interface feed = _underlyings[u].priceFeed;
            if (s.feed != address(feed) || s.firstRound >= s.lastRound) {
                revert RecalibrationBadSource(u, s.feed, s.firstRound, s.lastRound);
            }
            uint256 t = feed.updatedAtOf(s.lastRound);
            if (t == 0) revert RecalibrationBadSource(u, s.feed, s.firstRound, s.lastRound);
            if (t < end) end = t;
        }
        if (r.asOf != end || r.asOf <= _lastRecalibrationAsOf) revert RecalibrationAsOf(r.asOf, end, _lastRecalibrationAsOf);
        p = abi.decode(riskParams(), (RiskParams));
        for (uint256 u; u < n; ++u) {
            _checkUnderlying(u, r.priceRanges[u], r.volShiftBases[u], p, c);
        }
    }

    /// @dev Each field within riskBounds(u), then within maxStep of its current value and
    /// within maxDailyStep of its value before today's first execution.
    function _checkUnderlying(uint256 u, int256 range, int256 shift, RiskParams memory p, RecalibrationConfig memory c)
        private
        view
    {
        RiskBounds memory b = riskBounds[u];
        if (range < b.minRange || range > b.maxRange) revert RecalibrationOutOfBounds(u, 0, range, b.minRange, b.maxRange);
        if (shift < b.minVolShift || shift > b.maxVolShift) {
            revert RecalibrationOutOfBounds(u, 1, shift, b.minVolShift, b.maxVolShift);
        }
        RecalibrationDay memory d = _recalibrationDay[u];
        bool sameDay = d.day == uint32(block.timestamp / 1 days);
        int256 cur = p.underlyings[u].priceRange;
        _checkRelative(u, 0, range, cur, sameDay ? int256(d.priceRange) : cur, c);
        cur = p.underlyings[u].volShiftBase;
        _checkRelative(u, 1, shift, cur, sameDay ? int256(d.volShiftBase) : cur, c);
    }

    /// @dev `value` within maxStep of `current` and within maxDailyStep of `dayStart` (a zero
    /// reference bounds nothing: a value can only rise from it). Lower ends round down and
    /// upper ends up, as margin/risk/recalibration.py.
    function _checkRelative(uint256 u, uint256 field, int256 value, int256 current, int256 dayStart, RecalibrationConfig memory c)
        private
        pure
    {
        (int256 lo, int256 hi) = _stepRange(current, c.maxStep);
        if (current > 0 && (value < lo || value > hi)) revert RecalibrationStepTooLarge(u, field, value, lo, hi);
        (lo, hi) = _stepRange(dayStart, c.maxDailyStep);
        if (dayStart > 0 && (value < lo || value > hi)) revert RecalibrationDailyLimit(u, field, value, lo, hi);
    }

    /// @dev [floor(x (1 - step)), ceil(x (1 + step))] for 0 <= x <= 5e18, step <= 0.5e18.
    function _stepRange(int256 x, uint64 step) private pure returns (int256 lo, int256 hi) {
        int256 s = int256(uint256(step));
        lo = (x * (WAD - s)) / WAD;
        hi = (x * (WAD + s) + WAD - 1) / WAD;
    }

    function recalibrationConfig() external view returns (uint32 delay, uint64 maxStep, uint64 maxDailyStep) {
        RecalibrationConfig memory c = _recalibrationConfig;
        return (c.delay, c.maxStep, c.maxDailyStep);
    }

    /// @notice Recalibration ids run 1..recalibrationCount.
    function recalibrationCount() external view returns (uint256) {
        return _recalibrationCount;
    }

    /// @notice asOf of the last executed recalibration (a new one must be later).
    function lastRecalibrationAsOf() external view returns (uint64) {
        return _lastRecalibrationAsOf;
    }

    /// @notice state: 0 never queued, 1 queued, 2 executed, 3 cancelled.
    function queuedRecalibration(uint256 id) external view returns (bytes32 proposalHash, uint64 eta, uint8 state) {
        QueuedRecalibration memory q = _queuedRecalibration[id];
        return (q.proposalHash, q.eta, q.state);
    }

    /// @notice Underlying u's UTC day of its last executed recalibration, and its price range
    /// and vol shift base before that day's first one (the daily limit's reference).
    function recalibrationDay(uint256 u) external view returns (uint32 day, int112 priceRange, int112 volShiftBase) {
        RecalibrationDay memory d = _recalibrationDay[u];
        return (d.day, d.priceRange, d.volShiftBase);
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

    function _storeParams(bytes memory data) private {
        (uint256 nU, uint256[] memory assetU, int256[] memory haircuts) = verifier.validateParams(data);
        uint256 nA = assetU.length;
        if (nU != _underlyings.length) revert ConfigMismatch(3, _underlyings.length, nU);
        if (nA != _assets.length) revert ConfigMismatch(4, _assets.length, nA);
        if (nA == 0 || assetU[0] != PortfolioMargin.STABLE) revert ConfigMismatch(5, 0, nA);
        for (uint256 k; k < nA; ++k) {
            // forge-lint: disable-next-line(unsafe-typecast)
            _assets[k].underlying = assetU[k] == PortfolioMargin.STABLE ? NO_UNDERLYING : uint8(assetU[k]);
            // forge-lint: disable-next-line(unsafe-typecast)
            _assets[k].haircut = uint64(uint256(haircuts[k]));
        }
        address ptr = _writeBlob(data);
        riskParamsPointer = ptr;
        emit RiskParamsSet(ptr, keccak256(data));
    }

    /// @dev Deploys a contract whose code is 0x00 ++ data (a STOP first: it cannot be called).
    function _writeBlob(bytes memory data) private returns (address ptr) {
        bytes memory init = abi.encodePacked(hex"61", uint16(data.length + 1), hex"80600a3d393df300", data);
        assembly ("memory-safe") {
            ptr := create(0, add(init, 0x20), mload(init))
        }
        if (ptr == address(0)) revert ConfigMismatch(6, 0, data.length);
    }
}
