// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AggregatorV3Interface} from "./interfaces/AggregatorV3Interface.sol";
import {ClearingHouseBase} from "./ClearingHouseBase.sol";
import {MarginVerifier} from "./MarginVerifier.sol";
import {OracleLib} from "./oracle/OracleLib.sol";
import {PortfolioMargin, RiskParams} from "./margin/PortfolioMargin.sol";

/// @title ClearingHouseRecalibration
/// @notice The risk operator's timelocked, bounded recalibration of the grid and of the
/// historical set's FHS scale. Only ever executed
/// through the clearing house's fallback and then ClearingHouseAdmin's (each a DELEGATECALL, on
/// the clearing house's storage); calling it directly changes nothing of the protocol's. A
/// module of its own: the governance module is size-bound (EIP-170) too.
contract ClearingHouseRecalibration is ClearingHouseBase {
    using OracleLib for AggregatorV3Interface;

    /// @notice Bounds of the recalibration timelock (the floor suits a devnet; a production
    /// owner sets hours, time for the guardian to look), and of its change limits (WAD).
    uint32 public constant MIN_RECALIBRATION_DELAY = 10;
    uint32 public constant MAX_RECALIBRATION_DELAY = 7 days;
    uint64 public constant MAX_RECALIBRATION_STEP = 0.5e18;
    /// @notice A queued recalibration can be executed from eta to eta + RECALIBRATION_GRACE.
    uint64 public constant RECALIBRATION_GRACE = 2 days;

    constructor(MarginVerifier verifier_) ClearingHouseBase(verifier_) {}

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
        bool scaled = r.fhsScales.length != 0; // the parameters carry a historical set
        for (uint256 u; u < r.priceRanges.length; ++u) {
            if (_recalibrationDay[u].day != today) {
                // |values| <= the model's bounds (0.9, 5 and 10 WAD) < 2^71: the casts are exact.
                // forge-lint: disable-next-line(unsafe-typecast)
                _recalibrationDay[u] = RecalibrationDay(today, int72(p.underlyings[u].priceRange), int72(p.underlyings[u].volShiftBase), int72(scaled ? p.historical.fhsScale[u] : int256(0)));
            }
            p.underlyings[u].priceRange = r.priceRanges[u];
            p.underlyings[u].volShiftBase = r.volShiftBases[u];
            if (scaled) p.historical.fhsScale[u] = r.fhsScales[u];
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
        // One scale per underlying with a historical set, none without (the model's own rule
        // for fhsScale): a deployment with S = 0 sends both arrays empty.
        uint256 nS = p.historical.fhsScale.length;
        if (r.refVols.length != nS) revert RecalibrationShape(5, nS, r.refVols.length);
        if (r.fhsScales.length != nS) revert RecalibrationShape(6, nS, r.fhsScales.length);
        for (uint256 u; u < n; ++u) {
            _checkUnderlying(u, r, p, c);
        }
    }

    /// @dev Each field within its absolute bounds (governance's riskBounds(u) for the grid,
    /// the model's [0, MAX_FHS_SCALE] for the scale: governance sets no scale bounds), then
    /// within maxStep of its current value and within maxDailyStep of its value before today's
    /// first execution. Fields: 0 price range, 1 vol shift base, 2 FHS scale.
    function _checkUnderlying(uint256 u, Recalibration memory r, RiskParams memory p, RecalibrationConfig memory c)
        private
        view
    {
        RiskBounds memory b = riskBounds[u];
        int256 range = r.priceRanges[u];
        int256 shift = r.volShiftBases[u];
        bool scaled = r.fhsScales.length != 0;
        if (range < b.minRange || range > b.maxRange) revert RecalibrationOutOfBounds(u, 0, range, b.minRange, b.maxRange);
        if (shift < b.minVolShift || shift > b.maxVolShift) {
            revert RecalibrationOutOfBounds(u, 1, shift, b.minVolShift, b.maxVolShift);
        }
        if (scaled && (r.fhsScales[u] < 0 || r.fhsScales[u] > PortfolioMargin.MAX_FHS_SCALE)) {
            revert RecalibrationOutOfBounds(u, 2, r.fhsScales[u], 0, PortfolioMargin.MAX_FHS_SCALE);
        }
        RecalibrationDay memory d = _recalibrationDay[u];
        bool sameDay = d.day == uint32(block.timestamp / 1 days);
        int256 cur = p.underlyings[u].priceRange;
        _checkRelative(u, 0, range, cur, sameDay ? int256(d.priceRange) : cur, c);
        cur = p.underlyings[u].volShiftBase;
        _checkRelative(u, 1, shift, cur, sameDay ? int256(d.volShiftBase) : cur, c);
        if (scaled) {
            cur = p.historical.fhsScale[u];
            _checkRelative(u, 2, r.fhsScales[u], cur, sameDay ? int256(d.fhsScale) : cur, c);
        }
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

    /// @dev [floor(x (1 - step)), ceil(x (1 + step))] for 0 <= x <= 10e18, step <= 0.5e18.
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

    /// @notice Underlying u's UTC day of its last executed recalibration, and its price range,
    /// vol shift base and FHS scale (0 without a historical set) before that day's first one
    /// (the daily limit's reference).
    function recalibrationDay(uint256 u)
        external
        view
        returns (uint32 day, int72 priceRange, int72 volShiftBase, int72 fhsScale)
    {
        RecalibrationDay memory d = _recalibrationDay[u];
        return (d.day, d.priceRange, d.volShiftBase, d.fhsScale);
    }
}
