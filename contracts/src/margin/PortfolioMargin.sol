// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {FixedPoint} from "../math/FixedPoint.sol";
import {OptionPricing} from "./OptionPricing.sol";

// ---------------------------------------------------------------------------------------------
// Errors (one Python class each in margin/errors.py, same signature). Indices are 0-based
// positions in the arrays the verifier receives; field codes are listed in margin/params.py.
// ---------------------------------------------------------------------------------------------

/// @notice No underlying, or more than PortfolioMargin.MAX_UNDERLYINGS.
error InvalidUnderlyingCount(uint256 count);
/// @notice More collateral assets than PortfolioMargin.MAX_ASSETS.
error InvalidAssetCount(uint256 count);
/// @notice A per-underlying risk parameter is out of bounds.
error InvalidRiskParameter(uint256 underlying, uint256 field);
/// @notice A collateral asset parameter is out of bounds.
error InvalidAssetParameter(uint256 asset, uint256 field);
/// @notice The correlation credit or the IM factor is out of bounds.
error InvalidGlobalParameter(uint256 field);
/// @notice The market does not carry one spot and one vol per underlying.
error MarketLengthMismatch(uint256 expected, uint256 got);
/// @notice A spot outside [MIN_SPOT, MAX_PRICE].
error MarketSpotOutOfRange(uint256 underlying, int256 spot);
/// @notice An implied vol outside [0, MAX_VOL].
error MarketVolOutOfRange(uint256 underlying, int256 vol);
/// @notice More positions than MAX_POSITIONS (the gas ceiling of the full check).
error TooManyPositions(uint256 count);
/// @notice Not one collateral balance per asset.
error CollateralLengthMismatch(uint256 expected, uint256 got);
/// @notice A position names an underlying that the parameters do not have.
error UnknownUnderlying(uint256 position, uint256 underlying);
/// @notice A position's kind is not 0 (future), 1 (call) or 2 (put).
error InvalidInstrumentKind(uint256 position, uint256 kind);
/// @notice An option's strike outside [1, MAX_PRICE].
error InvalidOptionStrike(uint256 position, int256 strike);
/// @notice |quantity| > MAX_QUANTITY.
error QuantityOutOfRange(uint256 position, int256 quantity);
/// @notice |entry price| > MAX_PRICE.
error EntryPriceOutOfRange(uint256 position, int256 entryPrice);
/// @notice |collateral balance| > MAX_COLLATERAL.
error CollateralOutOfRange(uint256 asset, int256 amount);
/// @notice A witness must name one scenario per underlying.
error WitnessLengthMismatch(uint256 expected, uint256 got);
/// @notice A witness names a scenario index the underlying does not have (for an ES index:
/// `underlying` is its position in the witness array, `count` the historical set's size).
error WitnessOutOfRange(uint256 underlying, uint256 index, uint256 count);
/// @notice The ES indices of a witness must be strictly increasing (hence distinct).
error WitnessNotIncreasing(uint256 position, uint256 index);
/// @notice A move of the historical set is out of bounds (field 1 price move, 2 vol move).
error InvalidHistoricalScenario(uint256 scenario, uint256 underlying, uint256 field);

// ---------------------------------------------------------------------------------------------
// Data (field order = the Python dataclasses' to_abi() order; all amounts signed WAD).
// ---------------------------------------------------------------------------------------------

/// @notice An extended (stress) scenario: relative price move, vol state (0 down, 1 unchanged,
/// 2 up) and the fraction of its loss that counts.
struct ExtendedMove {
    int256 move;
    uint8 volState;
    int256 weight;
}

/// @notice Scenario grid and contingency charges of one underlying (see margin/params.py).
struct UnderlyingParams {
    int256 priceRange; // R: regular moves R*k/n, k = -n..n
    uint256 moveSteps; // n
    int256 volShiftBase; // shift at T = volRefTime
    uint256 volRefTime; // seconds
    uint256 volMinTime; // seconds; shorter expiries get the shift of volMinTime
    int256 volExponent; // p: shift = base * (Tref / max(T, Tmin))^p
    int256 volFloor; // down state >= min(vol, floor)
    ExtendedMove[] extended;
    int256 shortOptionCharge; // x spot per net short option contract, per (call/put, strike)
    int256 calendarCharge; // x spot per offsetting future across expiries
    int256 vegaCharge; // x offsetting vega proxy q*S*sqrt(T) across expiries
}

/// @notice A collateral asset: haircut, and the underlying whose price moves it
/// (PortfolioMargin.STABLE for a stablecoin valued at 1).
struct AssetParams {
    int256 haircut;
    uint256 underlying;
}

/// @notice The historical scenario set: S joint scenarios, each a relative price move (and
/// optionally a relative implied-vol move) of every underlying on one date, so the correlation
/// comes from the data. Historical moves are scaled by fhsScale (current over historical vol:
/// filtered historical simulation); the last stressCount scenarios are named stress days,
/// taken as they are. ES = the mean of the worst esCount joint losses (margin/params.py).
struct HistoricalSet {
    int256[] moves; // S * nU, scenario-major: moves[s * nU + u]
    int256[] volMoves; // empty (no vol moves) or S * nU like moves
    uint256 stressCount; // the last stressCount scenarios are stress days (not scaled)
    int256[] fhsScale; // one per underlying (empty when S = 0)
    uint256 esCount; // k in [1, min(S, MAX_ES_COUNT)] (0 when S = 0)
}

struct RiskParams {
    UnderlyingParams[] underlyings;
    AssetParams[] assets;
    int256 correlationCredit; // in [0, 0.8]
    int256 imFactor; // > 1
    HistoricalSet historical;
}

/// @notice A position with its instrument inline. kind 0 = linear future marked at spot
/// (expiry 0 = perpetual), 1 = call, 2 = put (European, cash-settled). Value is futures-style:
/// quantity * (mark - entryPrice) for every kind.
struct Position {
    uint256 underlying;
    uint8 kind;
    int256 strike;
    uint64 expiry;
    int256 quantity;
    int256 entryPrice;
}

/// @notice Positions plus one signed balance per asset of RiskParams.assets.
struct Portfolio {
    Position[] positions;
    int256[] collateral;
}

struct Market {
    uint64 timestamp; // "now" for time to expiry
    int256 rate;
    int256[] spots; // per underlying
    int256[] vols; // implied vol per underlying
}

/// @notice state: PortfolioMargin.HEALTHY, MARGIN_CALL (equity < IM) or LIQUIDATABLE (equity < MM).
struct MarginResult {
    int256 equity;
    int256 requirement;
    int256 initialMargin;
    int256 contingencies;
    int256 credit;
    uint8 state;
    int256[] losses;
    uint256[] witness; // nU grid indices, then (full check: always) the esCount ES indices
    int256 expectedShortfall; // mean of the worst k (witness: the named) joint losses, rounded up
}

/// @title Portfolio margin: scenario risk arrays, contingencies, witness verification
/// @notice Mirrored integer for integer (and error for error) by margin/portfolio_margin.py; the
/// steps, their rounding and the bounds that rule out overflow are documented there.
/// fullCheck evaluates every scenario (the grid of each underlying and the historical set's
/// joint scenarios: MM = max(grid requirement, ES) + contingencies); witnessCheck only the named
/// scenario per underlying and, optionally, k named historical scenarios (plus the same
/// contingencies), so its requirement is never above fullCheck's and equals it for the witness
/// that fullCheck returns.
library PortfolioMargin {
    using FixedPoint for int256;

    int256 internal constant WAD = 1e18;
    uint256 internal constant YEAR = 31_536_000;
    uint256 internal constant STABLE = type(uint256).max;

    uint256 internal constant MAX_UNDERLYINGS = 8;
    uint256 internal constant MAX_ASSETS = 8;
    uint256 internal constant MAX_POSITIONS = 40;
    uint256 internal constant MAX_MOVE_STEPS = 10;
    uint256 internal constant MAX_EXTENDED = 8;
    int256 internal constant MAX_CORRELATION_CREDIT = 8e17;
    int256 internal constant MAX_IM_FACTOR = 10e18;
    int256 internal constant MAX_PRICE_RANGE = 9e17;
    int256 internal constant MAX_VOL_SHIFT_BASE = 5e18;
    uint256 internal constant MAX_VOL_TIME = 5 * YEAR;
    int256 internal constant MAX_VOL_EXPONENT = 2e18;
    int256 internal constant MIN_EXTENDED_MOVE = -99e16;
    int256 internal constant MAX_EXTENDED_MOVE = 10e18;
    int256 internal constant MAX_QUANTITY = 1e30;
    int256 internal constant MAX_PRICE = 1e30;
    int256 internal constant MIN_SPOT = 1e10;
    int256 internal constant MAX_VOL = 10e18;
    int256 internal constant MAX_COLLATERAL = 1e33;
    int256 internal constant MAX_SCENARIO_VOL = 10e18;
    /// @notice Grid plus historical scenarios of one underlying: the gas ceiling of the full
    /// check at MAX_POSITIONS options (contracts/test/ClearingHouseGas.t.sol).
    uint256 internal constant MAX_SCENARIOS = 90;
    uint256 internal constant MAX_ES_COUNT = 8;
    int256 internal constant MAX_FHS_SCALE = 10e18;

    uint8 internal constant FUTURE = 0;
    uint8 internal constant CALL = 1;
    uint8 internal constant PUT = 2;
    uint8 internal constant VOL_DOWN = 0;
    uint8 internal constant VOL_UNCHANGED = 1;
    uint8 internal constant VOL_UP = 2;

    // Margin states of MarginResult.state (margin/portfolio_margin.py: the same names).
    uint8 internal constant HEALTHY = 0; // equity >= IM
    uint8 internal constant MARGIN_CALL = 1; // MM <= equity < IM
    uint8 internal constant LIQUIDATABLE = 2; // equity < MM

    // Byte offsets of struct fields in memory, read by the assembly below: a memory struct is one
    // 32-byte word per field in declaration order (a dynamic field holds a pointer), so a field
    // at offset 0 is read as mload(struct). test/PortfolioMargin.t.sol (testStructOffsets)
    // writes each struct and reads every field back through these offsets.
    uint256 internal constant RP_ASSETS = 0x20; // RiskParams (underlyings at 0)
    uint256 internal constant RP_CORRELATION_CREDIT = 0x40;
    uint256 internal constant RP_IM_FACTOR = 0x60;
    uint256 internal constant UP_MOVE_STEPS = 0x20; // UnderlyingParams (priceRange at 0)
    uint256 internal constant UP_VOL_SHIFT_BASE = 0x40;
    uint256 internal constant UP_VOL_REF_TIME = 0x60;
    uint256 internal constant UP_VOL_MIN_TIME = 0x80;
    uint256 internal constant UP_VOL_EXPONENT = 0xa0;
    uint256 internal constant UP_VOL_FLOOR = 0xc0;
    uint256 internal constant UP_EXTENDED = 0xe0;
    uint256 internal constant UP_SHORT_OPTION_CHARGE = 0x100;
    uint256 internal constant UP_CALENDAR_CHARGE = 0x120;
    uint256 internal constant UP_VEGA_CHARGE = 0x140;
    uint256 internal constant EM_VOL_STATE = 0x20; // ExtendedMove (move at 0)
    uint256 internal constant EM_WEIGHT = 0x40;
    uint256 internal constant AP_UNDERLYING = 0x20; // AssetParams (haircut at 0)
    uint256 internal constant MK_RATE = 0x20; // Market (timestamp at 0)
    uint256 internal constant MK_SPOTS = 0x40;
    uint256 internal constant MK_VOLS = 0x60;
    uint256 internal constant POS_KIND = 0x20; // Position (underlying at 0)
    uint256 internal constant POS_STRIKE = 0x40;
    uint256 internal constant POS_EXPIRY = 0x60;
    uint256 internal constant POS_QUANTITY = 0x80;
    uint256 internal constant POS_ENTRY_PRICE = 0xa0;

    // ------------------------------------------------------------------ validation

    /// @notice Reverts with the first violated bound (the order of validateParamsInOrder); one
    /// assembly pass decides, and only failing parameters take the slow path (see
    /// validatePortfolio).
    function validateParams(RiskParams memory p) internal pure {
        if (!_paramsInBounds(p)) validateParamsInOrder(p);
        else _validateHistorical(p); // the last checks of the order
    }

    /// @dev True iff validateParamsInOrder passes. lo <= x <= hi is sub(x, lo) <= hi - lo as
    /// unsigned: x < lo wraps above 2^255, and no x in int256 wraps past 2^256 for these lo.
    function _paramsInBounds(RiskParams memory p) private pure returns (bool ok) {
        // (Constants that are expressions: assembly reads them from the stack.)
        uint256 maxVolTime = MAX_VOL_TIME;
        int256 minExtendedMove = MIN_EXTENDED_MOVE;
        uint256 stable = STABLE;
        assembly ("memory-safe") {
            let us := mload(p)
            let nU := mload(us)
            ok := iszero(gt(mload(add(p, RP_CORRELATION_CREDIT)), MAX_CORRELATION_CREDIT))
            ok := and(ok, iszero(gt(sub(mload(add(p, RP_IM_FACTOR)), add(WAD, 1)), sub(MAX_IM_FACTOR, add(WAD, 1)))))
            ok := and(ok, lt(sub(nU, 1), MAX_UNDERLYINGS))
            for { let i := 0 } lt(i, nU) { i := add(i, 1) } {
                let u := mload(add(add(us, 0x20), shl(5, i)))
                ok := and(ok, lt(sub(mload(u), 1), MAX_PRICE_RANGE))
                ok := and(ok, lt(sub(mload(add(u, UP_MOVE_STEPS)), 1), MAX_MOVE_STEPS))
                ok := and(ok, iszero(gt(mload(add(u, UP_VOL_SHIFT_BASE)), MAX_VOL_SHIFT_BASE)))
                let ref := mload(add(u, UP_VOL_REF_TIME))
                ok := and(ok, lt(sub(ref, 1), maxVolTime))
                ok := and(ok, lt(sub(mload(add(u, UP_VOL_MIN_TIME)), 1), ref))
                ok := and(ok, iszero(gt(mload(add(u, UP_VOL_EXPONENT)), MAX_VOL_EXPONENT)))
                ok := and(ok, iszero(gt(mload(add(u, UP_VOL_FLOOR)), WAD)))
                let ext := mload(add(u, UP_EXTENDED))
                ok := and(ok, iszero(gt(mload(ext), MAX_EXTENDED)))
                let end := add(add(ext, 0x20), shl(5, mload(ext)))
                for { let it := add(ext, 0x20) } lt(it, end) { it := add(it, 0x20) } {
                    let e := mload(it)
                    ok := and(ok, iszero(gt(sub(mload(e), minExtendedMove), sub(MAX_EXTENDED_MOVE, minExtendedMove))))
                    ok := and(ok, lt(mload(add(e, EM_VOL_STATE)), 3))
                    ok := and(ok, iszero(gt(mload(add(e, EM_WEIGHT)), WAD)))
                }
                ok := and(ok, iszero(gt(mload(add(u, UP_SHORT_OPTION_CHARGE)), WAD)))
                ok := and(ok, iszero(gt(mload(add(u, UP_CALENDAR_CHARGE)), WAD)))
                ok := and(ok, iszero(gt(mload(add(u, UP_VEGA_CHARGE)), WAD)))
            }
            let as := mload(add(p, RP_ASSETS))
            ok := and(ok, iszero(gt(mload(as), MAX_ASSETS)))
            let end := add(add(as, 0x20), shl(5, mload(as)))
            for { let it := add(as, 0x20) } lt(it, end) { it := add(it, 0x20) } {
                let a := mload(it)
                let au := mload(add(a, AP_UNDERLYING))
                ok := and(ok, iszero(gt(mload(a), WAD)))
                ok := and(ok, or(eq(au, stable), lt(au, nU)))
            }
        }
    }

    /// @notice The reference: each bound in the documented order, reverting with the first
    /// violated one (margin/portfolio_margin.py checks the same order).
    function validateParamsInOrder(RiskParams memory p) internal pure {
        if (p.correlationCredit < 0 || p.correlationCredit > MAX_CORRELATION_CREDIT) {
            revert InvalidGlobalParameter(1);
        }
        if (p.imFactor <= WAD || p.imFactor > MAX_IM_FACTOR) revert InvalidGlobalParameter(2);
        uint256 nU = p.underlyings.length;
        if (nU == 0 || nU > MAX_UNDERLYINGS) revert InvalidUnderlyingCount(nU);
        for (uint256 i; i < nU; ++i) {
            _validateUnderlying(i, p.underlyings[i]);
        }
        if (p.assets.length > MAX_ASSETS) revert InvalidAssetCount(p.assets.length);
        for (uint256 a; a < p.assets.length; ++a) {
            AssetParams memory ap = p.assets[a];
            if (ap.haircut < 0 || ap.haircut > WAD) revert InvalidAssetParameter(a, 1);
            if (ap.underlying != STABLE && ap.underlying >= nU) revert InvalidAssetParameter(a, 2);
        }
        _validateHistorical(p);
    }

    /// @dev The historical set's bounds, in the documented order (after every other parameter):
    /// InvalidGlobalParameter 3 (moves not S * nU), 4 (vol moves neither empty nor S * nU),
    /// 5 (stressCount > S), 6 (fhsScale not nU entries, or not empty when S = 0), 7 (esCount
    /// outside [1, min(S, MAX_ES_COUNT)], or not 0 when S = 0); per underlying
    /// InvalidRiskParameter 15 (fhsScale outside [0, MAX_FHS_SCALE]) and 16 (grid + S >
    /// MAX_SCENARIOS); per scenario and underlying InvalidHistoricalScenario 1 (price move)
    /// and 2 (vol move) outside [MIN_EXTENDED_MOVE, MAX_EXTENDED_MOVE].
    function _validateHistorical(RiskParams memory p) private pure {
        HistoricalSet memory h = p.historical;
        uint256 nU = p.underlyings.length;
        uint256 len = h.moves.length;
        if (len % nU != 0) revert InvalidGlobalParameter(3);
        uint256 s = len / nU;
        if (h.volMoves.length != 0 && h.volMoves.length != len) revert InvalidGlobalParameter(4);
        if (h.stressCount > s) revert InvalidGlobalParameter(5);
        if (h.fhsScale.length != (s == 0 ? 0 : nU)) revert InvalidGlobalParameter(6);
        uint256 kMax = s < MAX_ES_COUNT ? s : MAX_ES_COUNT;
        if (s == 0 ? h.esCount != 0 : (h.esCount < 1 || h.esCount > kMax)) revert InvalidGlobalParameter(7);
        if (s == 0) return;
        for (uint256 u; u < nU; ++u) {
            if (h.fhsScale[u] < 0 || h.fhsScale[u] > MAX_FHS_SCALE) revert InvalidRiskParameter(u, 15);
            if (scenarioCount(p.underlyings[u]) + s > MAX_SCENARIOS) revert InvalidRiskParameter(u, 16);
        }
        bool vm = h.volMoves.length != 0;
        for (uint256 i; i < len; ++i) {
            int256 x = h.moves[i];
            if (x < MIN_EXTENDED_MOVE || x > MAX_EXTENDED_MOVE) revert InvalidHistoricalScenario(i / nU, i % nU, 1);
            if (vm) {
                x = h.volMoves[i];
                if (x < MIN_EXTENDED_MOVE || x > MAX_EXTENDED_MOVE) revert InvalidHistoricalScenario(i / nU, i % nU, 2);
            }
        }
    }

    function _validateUnderlying(uint256 i, UnderlyingParams memory u) private pure {
        if (u.priceRange <= 0 || u.priceRange > MAX_PRICE_RANGE) revert InvalidRiskParameter(i, 1);
        if (u.moveSteps < 1 || u.moveSteps > MAX_MOVE_STEPS) revert InvalidRiskParameter(i, 2);
        if (u.volShiftBase < 0 || u.volShiftBase > MAX_VOL_SHIFT_BASE) revert InvalidRiskParameter(i, 3);
        if (u.volRefTime < 1 || u.volRefTime > MAX_VOL_TIME) revert InvalidRiskParameter(i, 4);
        if (u.volMinTime < 1 || u.volMinTime > u.volRefTime) revert InvalidRiskParameter(i, 5);
        if (u.volExponent < 0 || u.volExponent > MAX_VOL_EXPONENT) revert InvalidRiskParameter(i, 6);
        if (u.volFloor < 0 || u.volFloor > WAD) revert InvalidRiskParameter(i, 7);
        if (u.extended.length > MAX_EXTENDED) revert InvalidRiskParameter(i, 8);
        for (uint256 e; e < u.extended.length; ++e) {
            ExtendedMove memory x = u.extended[e];
            if (x.move < MIN_EXTENDED_MOVE || x.move > MAX_EXTENDED_MOVE) revert InvalidRiskParameter(i, 9);
            if (x.volState > VOL_UP) revert InvalidRiskParameter(i, 10);
            if (x.weight < 0 || x.weight > WAD) revert InvalidRiskParameter(i, 11);
        }
        if (u.shortOptionCharge < 0 || u.shortOptionCharge > WAD) revert InvalidRiskParameter(i, 12);
        if (u.calendarCharge < 0 || u.calendarCharge > WAD) revert InvalidRiskParameter(i, 13);
        if (u.vegaCharge < 0 || u.vegaCharge > WAD) revert InvalidRiskParameter(i, 14);
    }

    /// @notice Reverts with the first violated bound (the order of validateMarketInOrder).
    function validateMarket(Market memory m, RiskParams memory p) internal pure {
        if (!_marketInBounds(m, p.underlyings.length)) validateMarketInOrder(m, p);
    }

    function _marketInBounds(Market memory m, uint256 nU) private pure returns (bool ok) {
        assembly ("memory-safe") {
            let spots := mload(add(m, MK_SPOTS))
            let vols := mload(add(m, MK_VOLS))
            ok := and(eq(mload(spots), nU), eq(mload(vols), nU))
            for { let i := 0 } lt(i, nU) { i := add(i, 1) } {
                let o := shl(5, add(i, 1))
                ok := and(ok, iszero(gt(sub(mload(add(spots, o)), MIN_SPOT), sub(MAX_PRICE, MIN_SPOT))))
                ok := and(ok, iszero(gt(mload(add(vols, o)), MAX_VOL)))
            }
        }
    }

    /// @notice The reference: each bound in the documented order, reverting with the first
    /// violated one (margin/portfolio_margin.py checks the same order).
    function validateMarketInOrder(Market memory m, RiskParams memory p) internal pure {
        uint256 nU = p.underlyings.length;
        if (m.spots.length != nU) revert MarketLengthMismatch(nU, m.spots.length);
        if (m.vols.length != nU) revert MarketLengthMismatch(nU, m.vols.length);
        for (uint256 i; i < nU; ++i) {
            if (m.spots[i] < MIN_SPOT || m.spots[i] > MAX_PRICE) revert MarketSpotOutOfRange(i, m.spots[i]);
            if (m.vols[i] < 0 || m.vols[i] > MAX_VOL) revert MarketVolOutOfRange(i, m.vols[i]);
        }
    }

    /// @notice Reverts with the first violated bound (the order of validatePortfolioInOrder). A
    /// single assembly pass tests every bound; only a failing portfolio takes the slow path,
    /// which finds and reverts with the first error.
    function validatePortfolio(Portfolio memory pf, RiskParams memory p) internal pure {
        if (!_portfolioInBounds(pf, p.underlyings.length, p.assets.length)) validatePortfolioInOrder(pf, p);
    }

    /// @dev True iff validatePortfolioInOrder passes. |x| <= M for M < 2^254 is
    /// add(x, M) <= 2M as unsigned (x < -M wraps above 2^255).
    function _portfolioInBounds(Portfolio memory pf, uint256 nU, uint256 nA) private pure returns (bool ok) {
        Position[] memory ps = pf.positions;
        int256[] memory col = pf.collateral;
        assembly ("memory-safe") {
            let n := mload(ps)
            ok := and(iszero(gt(n, MAX_POSITIONS)), eq(mload(col), nA))
            let end := add(add(ps, 0x20), shl(5, n))
            for { let it := add(ps, 0x20) } lt(it, end) { it := add(it, 0x20) } {
                let q := mload(it)
                let kind := mload(add(q, POS_KIND))
                let strike := mload(add(q, POS_STRIKE))
                ok := and(ok, and(lt(mload(q), nU), lt(kind, 3)))
                // options: 0 < strike <= MAX_PRICE, i.e. strike - 1 < MAX_PRICE as unsigned
                ok := and(ok, or(iszero(kind), lt(sub(strike, 1), MAX_PRICE)))
                ok := and(ok, iszero(gt(add(mload(add(q, POS_QUANTITY)), MAX_QUANTITY), mul(2, MAX_QUANTITY))))
                ok := and(ok, iszero(gt(add(mload(add(q, POS_ENTRY_PRICE)), MAX_PRICE), mul(2, MAX_PRICE))))
            }
            end := add(add(col, 0x20), shl(5, mload(col)))
            for { let it := add(col, 0x20) } lt(it, end) { it := add(it, 0x20) } {
                ok := and(ok, iszero(gt(add(mload(it), MAX_COLLATERAL), mul(2, MAX_COLLATERAL))))
            }
        }
    }

    /// @notice The reference: each bound in the documented order, reverting with the first
    /// violated one (margin/portfolio_margin.py checks the same order).
    function validatePortfolioInOrder(Portfolio memory pf, RiskParams memory p) internal pure {
        uint256 n = pf.positions.length;
        if (n > MAX_POSITIONS) revert TooManyPositions(n);
        if (pf.collateral.length != p.assets.length) {
            revert CollateralLengthMismatch(p.assets.length, pf.collateral.length);
        }
        uint256 nU = p.underlyings.length;
        for (uint256 i; i < n; ++i) {
            Position memory q = pf.positions[i];
            if (q.underlying >= nU) revert UnknownUnderlying(i, q.underlying);
            if (q.kind > PUT) revert InvalidInstrumentKind(i, q.kind);
            if (q.kind != FUTURE && (q.strike <= 0 || q.strike > MAX_PRICE)) revert InvalidOptionStrike(i, q.strike);
            if (q.quantity < -MAX_QUANTITY || q.quantity > MAX_QUANTITY) revert QuantityOutOfRange(i, q.quantity);
            if (q.entryPrice < -MAX_PRICE || q.entryPrice > MAX_PRICE) revert EntryPriceOutOfRange(i, q.entryPrice);
        }
        for (uint256 a; a < pf.collateral.length; ++a) {
            int256 b = pf.collateral[a];
            if (b < -MAX_COLLATERAL || b > MAX_COLLATERAL) revert CollateralOutOfRange(a, b);
        }
    }

    // ------------------------------------------------------------------ scenarios

    function scenarioCount(UnderlyingParams memory u) internal pure returns (uint256) {
        return 3 * (2 * u.moveSteps + 1) + u.extended.length;
    }

    /// @notice Scenario j: (move, vol state, weight, extended?). Regular j: move index j / 3,
    /// move mulDivDown(R, k - n, n), vol state j % 3, weight 1; then the extended moves.
    function scenario(UnderlyingParams memory u, uint256 j)
        internal
        pure
        returns (int256 move, uint8 volState, int256 weight, bool extended)
    {
        uint256 regular = 3 * (2 * u.moveSteps + 1);
        if (j < regular) {
            // k - n in [-10, 10]: the int casts are exact.
            // forge-lint: disable-next-line(unsafe-typecast)
            move = u.priceRange.mulDivDown(int256(j / 3) - int256(u.moveSteps), int256(u.moveSteps));
            // forge-lint: disable-next-line(unsafe-typecast)
            return (move, uint8(j % 3), WAD, false);
        }
        ExtendedMove memory e = u.extended[j - regular];
        return (e.move, e.volState, e.weight, true);
    }

    /// @notice S, the number of historical scenarios (moves / nU).
    function historicalCount(RiskParams memory p) internal pure returns (uint256) {
        return p.historical.moves.length / p.underlyings.length;
    }

    /// @notice The price move of underlying u in historical scenario s: a historical move times
    /// fhsScale[u] (mulDown, floored) kept within [MIN_EXTENDED_MOVE, MAX_EXTENDED_MOVE]; a
    /// stress day's move (the last stressCount scenarios) as it is.
    function historicalMove(RiskParams memory p, uint256 s, uint256 u) internal pure returns (int256 move) {
        HistoricalSet memory h = p.historical;
        uint256 nU = p.underlyings.length;
        move = h.moves[s * nU + u];
        if (s < h.moves.length / nU - h.stressCount) {
            move = move.mulDown(h.fhsScale[u]);
            if (move < MIN_EXTENDED_MOVE) move = MIN_EXTENDED_MOVE;
            else if (move > MAX_EXTENDED_MOVE) move = MAX_EXTENDED_MOVE;
        }
    }

    /// @notice The implied vol of underlying u in historical scenario s: mulDown(vol, 1e18 +
    /// volMove), at most MAX_SCENARIO_VOL (vol itself when the set has no vol moves).
    function historicalVol(RiskParams memory p, uint256 s, uint256 u, int256 vol) internal pure returns (int256 v) {
        int256[] memory vm = p.historical.volMoves;
        if (vm.length == 0) return vol;
        v = vol.mulDown(WAD + vm[s * p.underlyings.length + u]);
        if (v > MAX_SCENARIO_VOL) v = MAX_SCENARIO_VOL;
    }

    /// @notice mulDown(spot, 1e18 + move_j) for every scenario j (the moves of `scenario`,
    /// each regular move computed once for its three vol states).
    function shockedSpots(UnderlyingParams memory u, int256 spot) internal pure returns (int256[] memory sh) {
        uint256 n = u.moveSteps;
        uint256 regular = 3 * (2 * n + 1);
        ExtendedMove[] memory ext = u.extended;
        sh = new int256[](regular + ext.length);
        // k - n in [-10, 10]: the casts are exact; 3k + 2 < regular.
        for (uint256 k; k <= 2 * n; ++k) {
            // forge-lint: disable-next-line(unsafe-typecast)
            int256 s = spot.mulDown(WAD + u.priceRange.mulDivDown(int256(k) - int256(n), int256(n)));
            sh[3 * k] = s;
            sh[3 * k + 1] = s;
            sh[3 * k + 2] = s;
        }
        for (uint256 e; e < ext.length; ++e) {
            sh[regular + e] = spot.mulDown(WAD + ext[e].move);
        }
    }

    /// @notice Absolute vol shift for tau seconds to expiry (rounded up):
    /// base * exp(p * ln(Tref / max(tau, Tmin))).
    function volShiftUp(UnderlyingParams memory u, uint256 tau) internal pure returns (int256 shift) {
        uint256 tEff = tau > u.volMinTime ? tau : u.volMinTime;
        uint256 ref = u.volRefTime;
        int256 p = u.volExponent;
        int256 base = u.volShiftBase;
        // The FixedPoint steps written out for their operands (validated: 1 <= Tmin <= tEff <
        // 2^64, Tref <= 5 years, 0 <= p <= 2e18, 0 <= base <= 5e18):
        // ratio = mulDivDown(Tref, 1e18, tEff): both > 0, so floor is div (may be 0: lnWad reverts);
        // x = mulDown(p, ln ratio): |ln ratio| < 42e18, floored toward -inf;
        // mulUp(base, e^x): e^x <= e^38 * 1e18 (ratio <= 1.6e26), product < 2^255, ceil.
        int256 ratio;
        assembly ("memory-safe") {
            ratio := div(mul(ref, WAD), tEff)
        }
        int256 x = FixedPoint.lnWad(ratio);
        assembly ("memory-safe") {
            let z := mul(p, x)
            x := sub(sdiv(z, WAD), and(slt(z, 0), iszero(iszero(smod(z, WAD)))))
        }
        int256 factor = FixedPoint.expWad(x);
        assembly ("memory-safe") {
            let z := mul(base, factor)
            shift := add(div(z, WAD), iszero(iszero(mod(z, WAD))))
        }
    }

    /// @dev volShiftUp(up, tau) through a one-entry cache per underlying (cache[4u] = tau + 1, 0 when
    /// empty; cache[4u + 1] = the shift, >= 0; words 4u + 2, 4u + 3 are _cachedLnMove's): options of one expiry share tau, so a book of one
    /// expiry pays one ln and one exp per underlying. The same integer (a pure function of up and
    /// tau) and the same first error (a cached tau already computed without one).
    function _cachedShift(UnderlyingParams memory up, uint256 u, uint256 tau, uint256[] memory cache)
        private
        pure
        returns (int256 shift)
    {
        // u < nU (validated) and cache has 4 * nU words: the entry at 0x20 + 128u is in bounds.
        bool hit;
        assembly ("memory-safe") {
            let e := add(add(cache, 0x20), shl(7, u))
            hit := eq(mload(e), add(tau, 1))
            shift := mload(add(e, 0x20))
        }
        if (hit) return shift;
        shift = volShiftUp(up, tau);
        assembly ("memory-safe") {
            let e := add(add(cache, 0x20), shl(7, u))
            mstore(e, add(tau, 1))
            mstore(add(e, 0x20), shift)
        }
    }

    /// @dev OptionPricing.lnRatio(shocked, spot) of underlying u, computed once (cache[4u + 2] = 1
    /// once set, cache[4u + 3] = the value): the witness names one scenario per underlying.
    function _cachedLnMove(int256 shocked, int256 spot, uint256 u, uint256[] memory cache)
        private
        pure
        returns (int256 lnMove)
    {
        bool hit;
        assembly ("memory-safe") {
            let e := add(add(cache, 0x60), shl(7, u))
            hit := mload(e)
            lnMove := mload(add(e, 0x20))
        }
        if (hit) return lnMove;
        lnMove = OptionPricing.lnRatio(shocked, spot);
        assembly ("memory-safe") {
            let e := add(add(cache, 0x60), shl(7, u))
            mstore(e, 1)
            mstore(add(e, 0x20), lnMove)
        }
    }

    function _volFor(UnderlyingParams memory u, int256 vol, int256 shift, uint8 state) private pure returns (int256) {
        if (state == VOL_UP) {
            int256 up = vol + shift;
            return up < MAX_SCENARIO_VOL ? up : MAX_SCENARIO_VOL;
        }
        if (state == VOL_DOWN) {
            int256 lowest = vol < u.volFloor ? vol : u.volFloor;
            int256 down = vol - shift;
            return down > lowest ? down : lowest;
        }
        return vol;
    }

    // ------------------------------------------------------------------ full check

    function fullCheck(Portfolio memory pf, Market memory m, RiskParams memory p)
        internal
        pure
        returns (MarginResult memory r)
    {
        validateParams(p);
        validateMarket(m, p);
        validatePortfolio(pf, p);
        uint256 nU = p.underlyings.length;

        // Shocked spot per underlying and scenario; exact accumulators q * (V_j - V0).
        int256[][] memory shocked = new int256[][](nU);
        int256[][] memory acc = new int256[][](nU);
        for (uint256 u; u < nU; ++u) {
            shocked[u] = shockedSpots(p.underlyings[u], m.spots[u]);
            acc[u] = new int256[](shocked[u].length);
        }

        uint256 nH = historicalCount(p);
        uint256[] memory all = new uint256[](nH);
        for (uint256 s; s < nH; ++s) {
            all[s] = s;
        }
        Hist memory h = _histPlan(pf, m, p, all);
        int256 equity = _fullPositions(pf, m, p, shocked, acc, h);
        equity += _collateralFull(pf, m, p, shocked, acc);
        equity += _histCollateral(pf, m, p, h);

        r.losses = new int256[](nU);
        r.witness = new uint256[](nU + p.historical.esCount);
        for (uint256 u; u < nU; ++u) {
            (r.losses[u], r.witness[u]) = _worstLossUp(acc[u], p.underlyings[u]);
        }
        int256 es;
        if (nH != 0) es = _worstMeanUp(h.acc, r.witness, nU);
        _finish(r, pf, m, p, equity, es);
    }

    /// @dev Every position into the grid's and the historical set's accumulators; returns the
    /// positions' equity.
    function _fullPositions(
        Portfolio memory pf,
        Market memory m,
        RiskParams memory p,
        int256[][] memory shocked,
        int256[][] memory acc,
        Hist memory h
    ) private pure returns (int256 equity) {
        uint256[] memory shiftCache = new uint256[](4 * p.underlyings.length);
        h.gridLn = _lnMoves(pf, m, p, shocked);
        for (uint256 i; i < pf.positions.length; ++i) {
            Position memory q = pf.positions[i];
            uint256 u = q.underlying;
            int256 v0 = _accumulateFull(q, m, p.underlyings[u], shocked[u], acc[u], shiftCache, h);
            equity += q.quantity.mulDown(v0 - q.entryPrice);
        }
    }

    // ------------------------------------------------------------------ historical scenarios

    /// @dev The historical scenarios one check evaluates (index: all of them for the full check,
    /// the named ones for the witness check): per underlying their spots, vols and, for an
    /// underlying with an option, ln(S'_s / S); the joint accumulators, one per scenario, which
    /// every position and volatile asset of every underlying adds to (exact sums).
    struct Hist {
        uint256[] index;
        int256[][] spots; // [u][i] = mulDown(S_u, 1e18 + historicalMove(index[i], u))
        int256[][] vols; // [u][i] = historicalVol(index[i], u)
        int256[][] ln; // [u][i] = lnRatio(spots[u][i], S_u); empty without an option on u
        int256[] acc; // [i] = sum of q * (V_i - V0) and e * (S'_i - S)
        int256[][] gridLn; // full check: the grid's ln moves per underlying (_lnMoves)
    }

    function _histPlan(Portfolio memory pf, Market memory m, RiskParams memory p, uint256[] memory index)
        private
        pure
        returns (Hist memory h)
    {
        uint256 nU = p.underlyings.length;
        uint256 k = index.length;
        h.index = index;
        h.acc = new int256[](k);
        if (k == 0) return h;
        h.spots = new int256[][](nU);
        h.vols = new int256[][](nU);
        h.ln = new int256[][](nU);
        for (uint256 u; u < nU; ++u) {
            (h.spots[u], h.vols[u]) = _histUnderlying(p.historical, index, nU, u, m.spots[u], m.vols[u]);
        }
        for (uint256 j; j < pf.positions.length; ++j) {
            Position memory q = pf.positions[j];
            uint256 u = q.underlying;
            if (q.kind == FUTURE || h.ln[u].length != 0) continue;
            int256[] memory l = new int256[](k);
            for (uint256 i; i < k; ++i) {
                l[i] = OptionPricing.lnRatio(h.spots[u][i], m.spots[u]); // both > 0: never reverts
            }
            h.ln[u] = l;
        }
    }

    /// @dev historicalMove and historicalVol of underlying u for each named scenario, written
    /// out (the same integers), then the scenario spots mulDown(spot, 1e18 + move): spot <=
    /// 1e30 and 1e18 + move in [1e16, 11e18], so S' >= spot / 100 > 0.
    function _histUnderlying(
        HistoricalSet memory hs,
        uint256[] memory index,
        uint256 nU,
        uint256 u,
        int256 spot,
        int256 vol
    ) private pure returns (int256[] memory sp, int256[] memory vs) {
        uint256 k = index.length;
        sp = new int256[](k);
        vs = new int256[](k);
        uint256 scaled = hs.moves.length / nU - hs.stressCount; // below: FHS-scaled
        int256 f = hs.fhsScale[u];
        for (uint256 i; i < k; ++i) {
            uint256 at = index[i] * nU + u;
            int256 move = hs.moves[at];
            if (index[i] < scaled) {
                move = move.mulDown(f);
                if (move < MIN_EXTENDED_MOVE) move = MIN_EXTENDED_MOVE;
                else if (move > MAX_EXTENDED_MOVE) move = MAX_EXTENDED_MOVE;
            }
            sp[i] = spot.mulDown(WAD + move);
            if (hs.volMoves.length == 0) {
                vs[i] = vol;
            } else {
                int256 v = vol.mulDown(WAD + hs.volMoves[at]);
                vs[i] = v > MAX_SCENARIO_VOL ? MAX_SCENARIO_VOL : v;
            }
        }
    }

    /// @dev One position into the joint accumulators: q * (V_s - V0) for each scenario (an
    /// option priced at the scenario's spot and vol, ln(S'/K) = lnSK + ln(S'/S)).
    function _histPosition(Position memory q, Market memory m, Hist memory h, int256 v0, int256 lnSK) private pure {
        if (h.index.length == 0) return;
        uint256 u = q.underlying;
        if (q.kind == FUTURE) {
            _futureScenarios(q.quantity, m.spots[u], h.spots[u], h.acc); // as the grid: no wrap
            return;
        }
        OptionCtx memory c;
        c.isCall = q.kind == CALL;
        c.strike = q.strike;
        c.tau = q.expiry > m.timestamp ? q.expiry - m.timestamp : 0;
        c.rate = m.rate;
        c.qty = q.quantity;
        c.v0 = v0;
        c.lnSK = lnSK;
        _histOption(c, h.spots[u], h.vols[u], h.ln[u], h.acc);
    }

    function _histOption(
        OptionCtx memory c,
        int256[] memory sp,
        int256[] memory vs,
        int256[] memory ln,
        int256[] memory a
    ) private pure {
        for (uint256 i; i < a.length; ++i) {
            int256 pi = OptionPricing.modelPriceLn(c.isCall, sp[i], c.strike, c.tau, vs[i], c.rate, c.lnSK + ln[i]);
            unchecked {
                a[i] += c.qty * (pi - c.v0); // as the grid: no wrap
            }
        }
    }

    /// @dev _histPosition for the witness check, with ln(S/K) as the full check takes it (strike
    /// > 0, spot >= 1e10: never reverts).
    function _histNamed(Position memory q, Market memory m, Hist memory h, int256 v0) private pure {
        int256 lnSK = q.kind == FUTURE ? int256(0) : OptionPricing.lnRatio(m.spots[q.underlying], q.strike);
        _histPosition(q, m, h, v0, lnSK);
    }

    /// @dev Volatile collateral's moves into the joint accumulators; returns 0 (its value is
    /// counted once, by the grid's collateral pass).
    function _histCollateral(Portfolio memory pf, Market memory m, RiskParams memory p, Hist memory h)
        private
        pure
        returns (int256)
    {
        uint256 k = h.index.length;
        if (k == 0) return 0;
        for (uint256 a; a < p.assets.length; ++a) {
            AssetParams memory ap = p.assets[a];
            if (ap.underlying == STABLE) continue;
            int256 e = _haircutDown(pf.collateral[a], ap.haircut);
            int256 spot = m.spots[ap.underlying];
            int256[] memory sp = h.spots[ap.underlying];
            unchecked {
                for (uint256 i; i < k; ++i) {
                    h.acc[i] += e * (sp[i] - spot); // as the grid: no wrap
                }
            }
        }
        return 0;
    }

    /// @dev Joint loss of accumulator x: ceil(-x / 1e18) (losses round up).
    function _jointLossUp(int256 x) private pure returns (int256 lossUp) {
        unchecked {
            lossUp = (-x).mulUp(1); // |x| < 2^250: the negation cannot wrap
        }
    }

    /// @dev ceil(a / k) for k >= 1 (toward +inf; sdiv truncates toward zero, which is the
    /// ceiling for a < 0).
    function _divUpCount(int256 a, uint256 k) private pure returns (int256) {
        // forge-lint: disable-next-line(unsafe-typecast)
        int256 d = int256(k); // k <= MAX_ES_COUNT
        return a > 0 ? (a + d - 1) / d : a / d;
    }

    /// @dev Expected shortfall of the full set: the mean (rounded up) of the k largest joint
    /// losses, ties to the lower index; their indices, increasing, into w[nU..nU + k).
    function _worstMeanUp(int256[] memory acc, uint256[] memory w, uint256 nU) private pure returns (int256 es) {
        uint256 k = w.length - nU;
        int256[] memory top = new int256[](k); // the largest losses so far, non-increasing
        uint256[] memory idx = new uint256[](k);
        uint256 filled;
        int256 floor = type(int256).min; // top[k - 1] once filled: the loss to beat
        uint256 n = acc.length;
        // k >= 1 (validated) and every index below stays within [0, k): unchecked.
        unchecked {
            for (uint256 s; s < n; ++s) {
                int256 loss = _jointLossUp(acc[s]);
                if (filled == k && loss <= floor) continue; // an equal later loss never displaces
                uint256 at = filled < k ? filled++ : k - 1;
                while (at > 0 && top[at - 1] < loss) {
                    top[at] = top[at - 1];
                    idx[at] = idx[at - 1];
                    --at;
                }
                top[at] = loss;
                idx[at] = s;
                if (filled == k) floor = top[k - 1];
            }
        }
        int256 sum;
        for (uint256 i; i < k; ++i) {
            sum += top[i];
            // insertion sort of the indices, increasing
            uint256 v = idx[i];
            uint256 at = i;
            while (at > 0 && w[nU + at - 1] > v) {
                w[nU + at] = w[nU + at - 1];
                --at;
            }
            w[nU + at] = v;
        }
        es = _divUpCount(sum, k);
    }

    /// @dev lnRatio(S'_j, S) for every scenario j of each underlying that has an option (empty
    /// for the others): the scenario prices take ln(S'_j / K) as ln(S/K) + this. S'_j >= S / 100
    /// >= 1e8 and <= 1.1e31: never reverts.
    function _lnMoves(Portfolio memory pf, Market memory m, RiskParams memory p, int256[][] memory shocked)
        private
        pure
        returns (int256[][] memory ln)
    {
        ln = new int256[][](shocked.length);
        for (uint256 i; i < pf.positions.length; ++i) {
            Position memory q = pf.positions[i];
            uint256 u = q.underlying;
            if (q.kind == FUTURE || ln[u].length != 0) continue;
            int256[] memory sh = shocked[u];
            int256[] memory l = new int256[](sh.length);
            uint256 regular = sh.length - p.underlyings[u].extended.length;
            for (uint256 j; j < sh.length; ++j) {
                // the three vol states of a regular move share its spot (shockedSpots): one ln
                l[j] = j < regular && j % 3 != 0 ? l[j - 1] : OptionPricing.lnRatio(sh[j], m.spots[u]);
            }
            ln[u] = l;
        }
    }

    /// @dev The largest weighted scenario loss of one underlying and its lowest index.
    function _worstLossUp(int256[] memory a, UnderlyingParams memory up) private pure returns (int256 best, uint256 arg) {
        uint256 regular = 3 * (2 * up.moveSteps + 1);
        ExtendedMove[] memory ext = up.extended;
        best = type(int256).min;
        for (uint256 j; j < a.length; ++j) {
            // Losses round up: ceil(-acc / 1e18), then ceil(loss * weight) when extended.
            // |acc| < 2^250 (bounds in margin/portfolio_margin.py): the negation cannot wrap.
            int256 lossUp;
            unchecked {
                lossUp = (-a[j]).mulUp(1);
            }
            if (j >= regular) lossUp = lossUp.mulUp(ext[j - regular].weight);
            if (lossUp > best) {
                best = lossUp;
                arg = j;
            }
        }
    }

    /// @dev One position into the accumulators of its underlying, then into the historical
    /// set's; returns its mark V0.
    function _accumulateFull(
        Position memory q,
        Market memory m,
        UnderlyingParams memory up,
        int256[] memory sh,
        int256[] memory a,
        uint256[] memory shiftCache,
        Hist memory h
    ) private pure returns (int256 v0) {
        int256 spot = m.spots[q.underlying];
        if (q.kind == FUTURE) {
            _futureScenarios(q.quantity, spot, sh, a);
            _histPosition(q, m, h, spot, 0);
            return spot;
        }
        OptionCtx memory c;
        c.isCall = q.kind == CALL;
        c.strike = q.strike;
        c.tau = q.expiry > m.timestamp ? q.expiry - m.timestamp : 0;
        c.rate = m.rate;
        c.qty = q.quantity;
        // Order of work (mirrored for the errors): the shift, V0, then V_j by index.
        int256[3] memory vols = _stateVols(up, m.vols[q.underlying], _cachedShift(up, q.underlying, c.tau, shiftCache));
        // ln(S/K) once per option (strike in (0, 1e30], spot >= 1e10: cannot revert), V0 with it.
        c.lnSK = OptionPricing.lnRatio(spot, c.strike);
        v0 = OptionPricing.modelPriceLn(c.isCall, spot, c.strike, c.tau, vols[1], c.rate, c.lnSK);
        c.v0 = v0;
        c.u = q.underlying;
        _optionScenarios(c, up.extended, vols, sh, a, h);
        _histPosition(q, m, h, v0, c.lnSK); // then the historical scenarios, in index order
    }

    /// @dev The vol of each state: down, unchanged, up.
    function _stateVols(UnderlyingParams memory up, int256 vol, int256 shift) private pure returns (int256[3] memory) {
        return [_volFor(up, vol, shift, VOL_DOWN), vol, _volFor(up, vol, shift, VOL_UP)];
    }

    /// @dev A future's q * (S'_j - S) into the accumulators of its underlying's grid.
    function _futureScenarios(int256 qty, int256 spot, int256[] memory sh, int256[] memory a) private pure {
        uint256 count = a.length;
        // |qty * (S'_j - S)| <= 1e30 * 1.1e31 and at most 48 such terms per scenario: no wrap.
        unchecked {
            for (uint256 j; j < count; ++j) {
                a[j] += qty * (sh[j] - spot);
            }
        }
    }

    /// @dev Per-option constants of the scenario loop (a struct keeps the stack shallow).
    struct OptionCtx {
        bool isCall;
        int256 strike;
        uint256 tau;
        int256 rate;
        int256 qty;
        int256 v0;
        int256 lnSK;
        uint256 u;
    }

    function _optionScenarios(
        OptionCtx memory c,
        ExtendedMove[] memory ext,
        int256[3] memory vols,
        int256[] memory sh,
        int256[] memory a,
        Hist memory h
    ) private pure {
        int256[] memory lnMoves = h.gridLn[c.u];
        uint256 regular = sh.length - ext.length;
        uint256 center = regular / 2; // 3n + 1
        for (uint256 j; j < a.length; ++j) {
            if (j == center) continue; // V_center == V0
            int256 pj = _scenarioPrice(c, sh[j], vols[j < regular ? j % 3 : ext[j - regular].volState], lnMoves[j]);
            // Prices are within [0, 1e30] (the pricing domain), |qty| <= 1e30: no wrap.
            unchecked {
                a[j] += c.qty * (pj - c.v0);
            }
        }
    }

    /// @dev The option's price at scenario spot sj and vol: ln(sj / K) = ln(S/K) + ln(sj / S).
    function _scenarioPrice(OptionCtx memory c, int256 sj, int256 vol, int256 lnMove) private pure returns (int256) {
        return OptionPricing.modelPriceLn(c.isCall, sj, c.strike, c.tau, vol, c.rate, c.lnSK + lnMove);
    }

    function _collateralFull(
        Portfolio memory pf,
        Market memory m,
        RiskParams memory p,
        int256[][] memory shocked,
        int256[][] memory acc
    ) private pure returns (int256 value) {
        for (uint256 k; k < p.assets.length; ++k) {
            AssetParams memory ap = p.assets[k];
            int256 e = _haircutDown(pf.collateral[k], ap.haircut);
            if (ap.underlying == STABLE) {
                value += e;
                continue;
            }
            int256 spot = m.spots[ap.underlying];
            value += e.mulDown(spot);
            int256[] memory sh = shocked[ap.underlying];
            int256[] memory a = acc[ap.underlying];
            // |e| <= 1e33, |S'_j - S| <= 1.1e31: no wrap (see the bounds in margin/portfolio_margin.py).
            unchecked {
                for (uint256 j; j < sh.length; ++j) {
                    a[j] += e * (sh[j] - spot);
                }
            }
        }
    }

    /// @dev Effective balance: a positive balance loses its haircut (rounded down); a debt counts in full.
    function _haircutDown(int256 balance, int256 haircut) private pure returns (int256) {
        return balance > 0 ? balance.mulDown(WAD - haircut) : balance;
    }

    // ------------------------------------------------------------------ witness check

    function witnessCheck(Portfolio memory pf, Market memory m, RiskParams memory p, uint256[] memory witness)
        internal
        pure
        returns (MarginResult memory r)
    {
        (r,) = _witnessCheck(pf, m, p, witness, false);
    }

    /// @notice witnessCheck, plus the mark V0 of every position (spot for a future, the option's
    /// Black-Scholes price at the market) as its equity term used it: one pricing pass serves the
    /// check and a liquidation's hand-over prices.
    function witnessCheckWithMarks(Portfolio memory pf, Market memory m, RiskParams memory p, uint256[] memory witness)
        internal
        pure
        returns (MarginResult memory r, int256[] memory marks)
    {
        return _witnessCheck(pf, m, p, witness, true);
    }

    /// @dev The witness check; the marks only when asked (empty otherwise).
    function _witnessCheck(
        Portfolio memory pf,
        Market memory m,
        RiskParams memory p,
        uint256[] memory witness,
        bool withMarks
    ) private pure returns (MarginResult memory r, int256[] memory marks) {
        validateParams(p);
        validateMarket(m, p);
        validatePortfolio(pf, p);
        uint256 nU = p.underlyings.length;
        if (witness.length != nU && witness.length != nU + p.historical.esCount) {
            revert WitnessLengthMismatch(nU + p.historical.esCount, witness.length);
        }
        (int256[] memory shockedW, uint256[] memory stateW, int256[] memory weightW) = _plan(m, p, witness);
        // Without ES indices (witness.length == nU), _esIndices has nothing to check and
        // _histPlan nothing to plan: an empty plan.
        Hist memory h;
        if (witness.length != nU) h = _histPlan(pf, m, p, _esIndices(p, witness));
        int256[] memory acc = new int256[](nU);
        marks = new int256[](withMarks ? pf.positions.length : 0);
        int256 equity = _witnessPositions(pf, m, p, stateW, shockedW, acc, marks, h);
        equity += _witnessCollateral(pf, m, p, shockedW, acc);
        _histCollateral(pf, m, p, h);

        r.losses = _witnessLosses(acc, weightW);
        r.witness = witness;
        _finish(r, pf, m, p, equity, _namedMeanUp(h.acc));
    }

    /// @dev Each underlying's loss in its named scenario: ceil(-acc / 1e18), then times the
    /// scenario's weight (rounded up), at least 0.
    function _witnessLosses(int256[] memory acc, int256[] memory weightW) private pure returns (int256[] memory losses) {
        uint256 nU = acc.length;
        losses = new int256[](nU);
        assembly ("memory-safe") {
            for { let o := 0x20 } iszero(gt(o, shl(5, nU))) { o := add(o, 0x20) } {
                // ceil(-acc / 1e18) (|acc| < 2^250: no wrap), then ceil(loss * weight / 1e18)
                // (weight in [0, 1e18]) and max(., 0): a loss <= 0 gives 0 either way
                let z := sub(0, mload(add(acc, o)))
                let lossUp := add(sdiv(z, WAD), and(sgt(z, 0), iszero(iszero(smod(z, WAD)))))
                if sgt(lossUp, 0) {
                    z := mul(lossUp, mload(add(weightW, o)))
                    mstore(add(losses, o), add(div(z, WAD), iszero(iszero(mod(z, WAD)))))
                }
            }
        }
    }

    /// @dev The mean (rounded up) of the named scenarios' joint losses; 0 when the witness names
    /// none (the grid alone proves the state).
    function _namedMeanUp(int256[] memory acc) private pure returns (int256) {
        if (acc.length == 0) return 0;
        int256 sum;
        for (uint256 i; i < acc.length; ++i) {
            sum += _jointLossUp(acc[i]);
        }
        return _divUpCount(sum, acc.length);
    }

    /// @dev The ES part of a witness (after the nU grid indices): each index below S, strictly
    /// increasing, hence k distinct scenarios whose mean loss is at most the mean of the worst k.
    function _esIndices(RiskParams memory p, uint256[] memory witness) private pure returns (uint256[] memory idx) {
        uint256 nU = p.underlyings.length;
        uint256 nH = historicalCount(p);
        idx = new uint256[](witness.length - nU);
        for (uint256 i; i < idx.length; ++i) {
            uint256 s = witness[nU + i];
            if (s >= nH) revert WitnessOutOfRange(nU + i, s, nH);
            if (i > 0 && s <= idx[i - 1]) revert WitnessNotIncreasing(nU + i, s);
            idx[i] = s;
        }
    }

    /// @dev The collateral's equity (after haircuts) and, for volatile assets, their move in the
    /// named scenario into acc.
    function _witnessCollateral(
        Portfolio memory pf,
        Market memory m,
        RiskParams memory p,
        int256[] memory shockedW,
        int256[] memory acc
    ) private pure returns (int256 equity) {
        AssetParams[] memory assets = p.assets;
        int256[] memory col = pf.collateral;
        uint256 stable = STABLE;
        // Validated: one balance per asset, |balance| <= 1e33, an asset's underlying < nU (or
        // STABLE), spots <= 1e30, scenario spots <= 1.1e31: no product or sum below wraps
        // (the bounds in margin/portfolio_margin.py), so this is the checked arithmetic's result.
        assembly ("memory-safe") {
            for { let k := 0 } lt(k, mload(assets)) { k := add(k, 1) } {
                let ap := mload(add(add(assets, 0x20), shl(5, k)))
                let e := mload(add(add(col, 0x20), shl(5, k)))
                // _haircutDown: a positive balance times (1 - haircut), floored (both >= 0)
                if sgt(e, 0) { e := div(mul(e, sub(WAD, mload(ap))), WAD) }
                let u := mload(add(ap, AP_UNDERLYING))
                switch eq(u, stable)
                case 1 { equity := add(equity, e) }
                default {
                    let o := add(0x20, shl(5, u))
                    let spot := mload(add(mload(add(m, MK_SPOTS)), o))
                    // mulDown(e, spot): floor toward -inf
                    let z := mul(e, spot)
                    equity := add(equity, sub(sdiv(z, WAD), and(slt(z, 0), iszero(iszero(smod(z, WAD))))))
                    let a := add(acc, o)
                    mstore(a, add(mload(a), mul(e, sub(mload(add(shockedW, o)), spot))))
                }
            }
        }
    }

    /// @dev Every position into acc (its named scenario's q * (V_w - V0)); returns the
    /// positions' equity and writes their marks V0 into marks unless it is empty.
    function _witnessPositions(
        Portfolio memory pf,
        Market memory m,
        RiskParams memory p,
        uint256[] memory stateW,
        int256[] memory shockedW,
        int256[] memory acc,
        int256[] memory marks,
        Hist memory h
    ) private pure returns (int256 equity) {
        // 4 words per underlying for _cachedShift and _cachedLnMove, then 8 for _witnessPair.
        uint256[] memory cache = new uint256[](12 * stateW.length);
        for (uint256 i; i < pf.positions.length; ++i) {
            Position memory q = pf.positions[i];
            int256 v0;
            {
                uint256 state;
                int256 sw;
                assembly ("memory-safe") {
                    let o := add(0x20, shl(5, mload(q))) // u < nU = the plan's lengths (validated)
                    state := mload(add(stateW, o))
                    sw := mload(add(shockedW, o))
                }
                v0 = _accumulateWitness(q, m, p.underlyings[q.underlying], state, sw, acc, cache);
            }
            assembly ("memory-safe") {
                if mload(marks) { mstore(add(add(marks, 0x20), shl(5, i)), v0) }
                // equity += mulDown(q, v0 - entry), floored toward -inf without the overflow
                // check: |q| <= 1e30, |mark - entry| < 1.3e31 (a mark is a spot <= 1e30, a call
                // <= spot or a put <= K * D <= 1e30 * e^2.5; |entry| <= 1e30), and a sum of at
                // most 40 such terms: no wrap
                let z := mul(mload(add(q, POS_QUANTITY)), sub(v0, mload(add(q, POS_ENTRY_PRICE))))
                equity := add(equity, sub(sdiv(z, WAD), and(slt(z, 0), iszero(iszero(smod(z, WAD))))))
            }
            if (h.index.length != 0) _histNamed(q, m, h, v0);
        }
    }

    /// @dev The named scenario of each underlying: shocked spot, vol state (3 marks the center
    /// scenario: no move, vol unchanged, nothing to reprice) and weight (1e18 for a regular
    /// scenario: mulUp(loss, 1e18) == loss, so applying it changes nothing).
    function _plan(Market memory m, RiskParams memory p, uint256[] memory witness)
        private
        pure
        returns (int256[] memory shockedW, uint256[] memory stateW, int256[] memory weightW)
    {
        uint256 nU = p.underlyings.length;
        shockedW = new int256[](nU);
        stateW = new uint256[](nU);
        weightW = new int256[](nU);
        for (uint256 u; u < nU; ++u) {
            UnderlyingParams memory up = p.underlyings[u];
            uint256 w;
            int256 spot;
            // u < nU: within witness (>= nU entries, checked) and the market's spots (validated)
            uint256 o = 0x20 + (u << 5);
            assembly ("memory-safe") {
                w := mload(add(witness, o))
                spot := mload(add(mload(add(m, MK_SPOTS)), o))
            }
            (int256 sw, uint256 st, int256 wt) = _planOne(up, u, w, spot);
            assembly ("memory-safe") {
                mstore(add(shockedW, o), sw)
                mstore(add(stateW, o), st)
                mstore(add(weightW, o), wt)
            }
        }
    }

    /// @dev scenarioCount and scenario(up, w) written out (validated: 1 <= n <= 10, at most 8
    /// extended moves, so nothing below wraps), then the shocked spot.
    function _planOne(UnderlyingParams memory up, uint256 u, uint256 w, int256 spot)
        private
        pure
        returns (int256 sw, uint256 state, int256 weight)
    {
        ExtendedMove[] memory ext = up.extended;
        uint256 n = up.moveSteps;
        uint256 regular;
        unchecked {
            regular = 3 * (2 * n + 1);
            if (w >= regular + ext.length) revert WitnessOutOfRange(u, w, regular + ext.length);
        }
        int256 move;
        weight = WAD;
        if (w < regular) {
            // forge-lint: disable-next-line(unsafe-typecast)
            move = up.priceRange.mulDivDown(int256(w / 3) - int256(n), int256(n)); // k - n in [-10, 10]
            state = w == regular / 2 ? 3 : w % 3; // regular / 2 = 3n + 1, the center
        } else {
            ExtendedMove memory e = ext[w - regular];
            (move, state, weight) = (e.move, e.volState, e.weight);
        }
        // mulDown(spot, 1e18 + move): spot <= 1e30 and 1e18 + move in (0, 11e18], so the
        // product is positive and < 2^255: floor is div.
        assembly ("memory-safe") {
            sw := div(mul(spot, add(WAD, move)), WAD)
        }
    }

    /// @dev state: the named scenario's vol state, or 3 for the center scenario. The fields and
    /// entries are read in assembly: u < nU (validated) indexes the market's arrays and acc.
    function _accumulateWitness(
        Position memory q,
        Market memory m,
        UnderlyingParams memory up,
        uint256 state,
        int256 shockedSpot,
        int256[] memory acc,
        uint256[] memory cache
    ) private pure returns (int256 v0) {
        uint256 kind;
        assembly ("memory-safe") {
            kind := mload(add(q, POS_KIND))
            v0 := mload(add(add(mload(add(m, MK_SPOTS)), 0x20), shl(5, mload(q)))) // the spot
        }
        int256 change; // V_w - V0 (a future: S_w - S)
        if (kind == FUTURE) {
            change = shockedSpot - v0; // both in (0, 1.1e31]: no wrap
        } else if (state == 3) {
            // The center: no move, no loss; V0 alone (the vol state needs no shift).
            uint256 tau0 = q.expiry > m.timestamp ? q.expiry - m.timestamp : 0;
            return _price(q, v0, tau0, m.vols[q.underlying], m.rate);
        } else {
            // Same order of work as the full check: the shift, V0, V_w (pricePair's order).
            int256 pw;
            (v0, pw) = _witnessPair(q, m, up, state, shockedSpot, cache);
            change = pw - v0; // prices in [0, 1.3e31]: no wrap
        }
        assembly ("memory-safe") {
            // acc[u] += q * change: bounded (|q| <= 1e30), no wrap
            let a := add(add(acc, 0x20), shl(5, mload(q)))
            mstore(a, add(mload(a), mul(mload(add(q, POS_QUANTITY)), change)))
        }
    }

    /// @dev (V0, V_w) of an option in the named scenario: OptionPricing.pricePair's integers and
    /// first error. Its terms come from a one-entry cache per underlying, after the 4 * nU words
    /// of _cachedShift (cache[4nU + 8u] = tau + 1, 0 when empty; cache[4nU + 8u + 2 ..+ 7] =
    /// OptionPricing.pairTerms; cache has 12 * nU words): the options of one expiry share tau,
    /// the vols, the rate and the scenario spot, so the terms are the same integers, and their
    /// checks (all but the strike's, which pricePairFrom repeats) passed for the first. On a
    /// miss, _pairMiss works in pricePair's order (the shift, the checks, the terms).
    function _witnessPair(
        Position memory q,
        Market memory m,
        UnderlyingParams memory up,
        uint256 state,
        int256 shockedSpot,
        uint256[] memory cache
    ) private pure returns (int256, int256) {
        uint256 t; // the terms' memory address
        {
            bool hit;
            assembly ("memory-safe") {
                let tau := 0
                let expiry := mload(add(q, POS_EXPIRY))
                if gt(expiry, mload(m)) { tau := sub(expiry, mload(m)) }
                // u < nU (validated): the entry 0x20 + 128 nU + 256 u is within the 12 * nU words
                let e := add(add(add(cache, 0x20), div(shl(5, mload(cache)), 3)), shl(8, mload(q)))
                hit := eq(mload(e), add(tau, 1))
                mstore(e, add(tau, 1)) // read back by _pairMiss (a revert there discards it)
                t := add(e, 0x40)
            }
            if (!hit) _pairMiss(q, m, up, state, shockedSpot, cache, t);
        }
        bool isCall;
        int256 spot;
        int256 strike;
        int256 lnMove;
        assembly ("memory-safe") {
            let u := mload(q)
            isCall := eq(mload(add(q, POS_KIND)), CALL)
            spot := mload(add(add(mload(add(m, MK_SPOTS)), 0x20), shl(5, u)))
            strike := mload(add(q, POS_STRIKE))
            lnMove := mload(add(add(cache, 0x80), shl(7, u))) // cache[4u + 3]: _cachedLnMove's
        }
        return OptionPricing.pricePairFrom(isCall, spot, shockedSpot, strike, lnMove, t);
    }

    /// @dev The terms of _witnessPair's entry (tau + 1 already stored before t): the named
    /// scenario's vol (the shift only in the up and down states), the underlying's lnMove, then
    /// OptionPricing.pairTerms.
    function _pairMiss(
        Position memory q,
        Market memory m,
        UnderlyingParams memory up,
        uint256 state,
        int256 shockedSpot,
        uint256[] memory cache,
        uint256 t
    ) private pure {
        uint256 tau;
        int256 vol;
        int256 spot;
        assembly ("memory-safe") {
            tau := sub(mload(sub(t, 0x40)), 1)
            let o := add(0x20, shl(5, mload(q))) // u < nU = the market's lengths (validated)
            vol := mload(add(mload(add(m, MK_VOLS)), o))
            spot := mload(add(mload(add(m, MK_SPOTS)), o))
        }
        int256 volW = vol; // the named scenario's vol: shifted in the up and down states
        if (state != VOL_UNCHANGED) {
            int256 shift = _cachedShift(up, q.underlying, tau, cache);
            volW = _volShifted(vol, shift, state, up.volFloor);
        }
        _cachedLnMove(shockedSpot, spot, q.underlying, cache);
        int256 rate;
        int256 strike;
        assembly ("memory-safe") {
            rate := mload(add(m, MK_RATE))
            strike := mload(add(q, POS_STRIKE))
        }
        OptionPricing.pairTerms(spot, shockedSpot, strike, tau, vol, volW, rate, t);
    }

    /// @dev _volFor for the up (2) and down (0) states, written out: vol <= MAX_VOL and 0 <=
    /// shift < 2^120 (volShiftUp's bounds), so neither vol + shift nor vol - shift wraps.
    function _volShifted(int256 vol, int256 shift, uint256 state, int256 volFloor) private pure returns (int256 v) {
        int256 maxVol = MAX_SCENARIO_VOL;
        assembly ("memory-safe") {
            switch state
            case 2 {
                v := add(vol, shift)
                if iszero(slt(v, maxVol)) { v := maxVol }
            }
            default {
                let lowest := volFloor
                if slt(vol, volFloor) { lowest := vol }
                v := sub(vol, shift)
                if iszero(sgt(v, lowest)) { v := lowest }
            }
        }
    }

    function _price(Position memory q, int256 spot, uint256 tau, int256 vol, int256 rate)
        private
        pure
        returns (int256)
    {
        return OptionPricing.modelPrice(q.kind == CALL, spot, q.strike, tau, vol, rate);
    }

    // ------------------------------------------------------------------ common tail

    /// @dev MM = max(grid requirement, ES) + contingencies: the grid's sum of worst losses less
    /// the correlation credit, or the historical set's expected shortfall, whichever is larger.
    function _finish(
        MarginResult memory r,
        Portfolio memory pf,
        Market memory m,
        RiskParams memory p,
        int256 equity,
        int256 es
    ) private pure {
        int256 total;
        int256 largest;
        for (uint256 u; u < r.losses.length; ++u) {
            total += r.losses[u];
            if (r.losses[u] > largest) largest = r.losses[u];
        }
        // Less credit is the conservative side: rounded down.
        r.credit = (total - largest).mulDown(p.correlationCredit);
        r.contingencies = contingencies(pf, m, p);
        int256 grid = total - r.credit;
        r.expectedShortfall = es;
        r.requirement = (es > grid ? es : grid) + r.contingencies;
        r.initialMargin = r.requirement.mulUp(p.imFactor);
        r.equity = equity;
        r.state = equity < r.requirement ? LIQUIDATABLE : equity < r.initialMargin ? MARGIN_CALL : HEALTHY;
    }

    /// @notice Short-option, calendar-basis and vega-offset charges, summed over underlyings.
    /// Positions are grouped by packed keys in two small hash tables (one pass, no sort); sums
    /// are exact, and each group is rounded once, so the total does not depend on the order of
    /// the positions or of the groups.
    /// Groups: (underlying, call/put, strike) of options for the net short charge;
    /// (underlying, future/option, expiry) for the calendar nets (futures: quantities) and the
    /// vega nets (options: q * sqrt(tau in years), floored; spot applied per underlying).
    /// The same integers as margin/portfolio_margin.py (ScenarioTable.contingencies), with the
    /// FixedPoint steps written out for their operands' signs and bounds:
    /// mulDivDown(tau, 1e18, YEAR) = floor(tau * 1e18 / YEAR) (tau >= 0); sqrtDown(x) = the floor
    /// root of x * 1e18; mulDown(q, r) floors toward -inf; each mulUp has operands >= 0.
    /// Called after validation and after every option was priced, so: u < nU <= 8, kind <= 2,
    /// 0 < strike <= 1e30 < 2^100, expiry < 2^64, |q| <= 1e30, tau <= 5 years (an option with a
    /// longer tau reverted TauOutOfRange in pricing). Then sqrt(tau in years) <= 2.3e18, each
    /// vega term <= 2.3e30, a group or side sum of 40 terms <= 1e32, times spot (<= 1e30) and a
    /// charge (<= 1e18) < 1e80 / 1e18: every product below fits int256 and nothing wraps.
    function contingencies(Portfolio memory pf, Market memory m, RiskParams memory p)
        internal
        pure
        returns (int256 total)
    {
        Position[] memory ps = pf.positions;
        RiskParams memory params = p; // (named for the assembly block)
        assembly ("memory-safe") {
            let n := mload(ps)
            // Two open-addressing hash tables of 2^bits >= 2n slots (key, net), so a table is at
            // most half full and a probe sequence always ends: S groups options by (underlying,
            // call/put, strike) for the short charge, E groups by (underlying, future/option,
            // expiry) for the calendar and vega nets. Keys pack (underlying << 200 | tag << 192 |
            // strike or expiry): exact by the bounds above, never 0 (tag: kind 1/2 for S; 1
            // future, 2 option for E), so 0 marks an empty slot. Each table is followed by its
            // list [count, slot...] of groups in order of creation (sums are exact, so the
            // order does not matter), then 4 sides per underlying: long futures, short futures,
            // long vega, short vega (sums of per-expiry nets).
            let bits := 3
            for {} lt(shl(bits, 1), shl(1, n)) {} { bits := add(bits, 1) }
            let tabS := mload(0x40)
            let tabE := add(tabS, add(shl(add(bits, 6), 1), shl(5, add(n, 1)))) // 2^bits * 64 + list
            let sides := add(tabE, add(shl(add(bits, 6), 1), shl(5, add(n, 1))))
            let size := add(sub(sides, tabS), 0x400) // + 4 * 8 sides
            calldatacopy(tabS, calldatasize(), size) // zeroed: memory past the pointer may be dirty
            mstore(0x40, add(tabS, size))
            let ts := mload(m)
            // sqrt(tau in years) of the last option's expiry: a book's options share few expiries,
            // so most options reuse it (the same integer: a function of expiry and ts only).
            let lastExpiry := not(0) // no expiry is 2^256 - 1 (expiry < 2^64)
            let lastRoot := 0
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                let q := mload(add(add(ps, 0x20), shl(5, i)))
                let kind := mload(add(q, POS_KIND))
                let amount := mload(add(q, POS_QUANTITY))
                if kind {
                    _insert(tabS, bits, or(or(shl(200, mload(q)), shl(192, kind)), mload(add(q, POS_STRIKE))), amount)
                    let expiry := mload(add(q, POS_EXPIRY))
                    if iszero(eq(expiry, lastExpiry)) {
                        lastExpiry := expiry
                        lastRoot := _rootYears(expiry, ts)
                    }
                    amount := _mulDownWad(amount, lastRoot)
                }
                _insert(tabE, bits, or(or(shl(200, mload(q)), shl(192, add(1, iszero(iszero(kind))))), mload(add(q, POS_EXPIRY))), amount)
            }
            let spots := add(mload(add(m, MK_SPOTS)), 0x20)
            let ups := add(mload(params), 0x20)
            // The short charge of each S group with a net short position.
            let list := add(tabS, shl(add(bits, 6), 1))
            for { let g := 0 } lt(g, mload(list)) { g := add(g, 1) } {
                let slot := mload(add(list, shl(5, add(g, 1))))
                let shortNet := mload(add(slot, 0x20))
                if slt(shortNet, 0) {
                    let u := shr(200, mload(slot))
                    let spot := mload(add(spots, shl(5, u)))
                    let charge := mload(add(mload(add(ups, shl(5, u))), UP_SHORT_OPTION_CHARGE))
                    total := add(total, _mulUp(_mulUp(sub(0, shortNet), spot), charge))
                }
            }
            // The net of each E group into the long or short side of its underlying and kind.
            list := add(tabE, shl(add(bits, 6), 1))
            for { let g := 0 } lt(g, mload(list)) { g := add(g, 1) } {
                let slot := mload(add(list, shl(5, add(g, 1))))
                let key := mload(slot)
                let e := mload(add(slot, 0x20))
                // shr(192, key) = underlying << 8 | tag, tag 2 for options
                let side := add(sides, shl(5, add(shl(2, shr(200, key)), shl(1, eq(and(shr(192, key), 0xff), 2)))))
                if sgt(e, 0) { mstore(side, add(mload(side), e)) }
                if slt(e, 0) {
                    side := add(side, 0x20)
                    mstore(side, sub(mload(side), e))
                }
            }
            // Per underlying: calendar (futures) and vega offsets, min(long, short).
            for { let u := 0 } lt(u, mload(mload(params))) { u := add(u, 1) } {
                let side := add(sides, shl(7, u))
                let up := mload(add(ups, shl(5, u)))
                let spot := mload(add(spots, shl(5, u)))
                let offset := _min(mload(side), mload(add(side, 0x20)))
                if offset { total := add(total, _mulUp(_mulUp(offset, spot), mload(add(up, UP_CALENDAR_CHARGE)))) }
                offset := _min(mload(add(side, 0x40)), mload(add(side, 0x60)))
                if offset { total := add(total, _mulUp(_mulUp(offset, spot), mload(add(up, UP_VEGA_CHARGE)))) }
            }

            /// net[key] += amount in the table at tab (2^bits slots of (key, net), then the list of
            /// groups [count, slot...]): multiplicative hashing (the top bits of key * an odd
            /// constant depend on every bit of key), linear probing.
            function _insert(tab, logT, key, amount) {
                let mask := sub(shl(logT, 1), 1)
                let h := shr(sub(256, logT), mul(key, 0x9e3779b97f4a7c15f39cc0605cedc8341082276bf3a27251f86c6a11d0c18e95))
                for {} 1 {} {
                    let slot := add(tab, shl(6, h))
                    let k := mload(slot)
                    if eq(k, key) {
                        mstore(add(slot, 0x20), add(mload(add(slot, 0x20)), amount))
                        break
                    }
                    if iszero(k) {
                        mstore(slot, key)
                        mstore(add(slot, 0x20), amount)
                        let groups := add(tab, shl(add(logT, 6), 1))
                        let c := add(mload(groups), 1)
                        mstore(groups, c)
                        mstore(add(groups, shl(5, c)), slot)
                        break
                    }
                    h := and(add(h, 1), mask)
                }
            }

            /// sqrtDown(mulDivDown(tau, 1e18, YEAR)), tau = max(expiry - now, 0).
            function _rootYears(expiry, now) -> root {
                let tau := 0
                if gt(expiry, now) { tau := sub(expiry, now) }
                root := _isqrtFloor(mul(div(mul(tau, 1000000000000000000), 31536000), 1000000000000000000))
            }

            /// mulDown(q, root): floor(q * root / 1e18) toward -inf.
            function _mulDownWad(q, root) -> v {
                let z := mul(q, root)
                v := sub(sdiv(z, 1000000000000000000), and(slt(z, 0), iszero(iszero(smod(z, 1000000000000000000)))))
            }

            /// ceil(a * b / 1e18) for a, b >= 0 with a * b < 2^255 (FixedPoint.mulUp there).
            function _mulUp(a, b) -> z {
                z := mul(a, b)
                z := add(div(z, 1000000000000000000), iszero(iszero(mod(z, 1000000000000000000))))
            }

            function _min(a, b) -> z {
                z := a
                if lt(b, a) { z := b }
            }

            /// floor(sqrt(x)) for x < 2^256: FixedPoint.isqrtFloor line for line (Yul inside this
            /// block cannot call a Solidity function; tests/test_mirror_names.py keeps the two equal).
            function _isqrtFloor(x) -> y {
                let b := shl(7, lt(0xffffffffffffffffffffffffffffffff, x))
                b := or(b, shl(6, lt(0xffffffffffffffff, shr(b, x))))
                b := or(b, shl(5, lt(0xffffffff, shr(b, x))))
                b := or(b, shl(4, lt(0xffff, shr(b, x))))
                b := or(b, shl(3, lt(0xff, shr(b, x))))
                b := or(b, mul(3, lt(0x1f, shr(b, x))))
                b := add(b, byte(shr(b, x), 0x0000010102020202030303030303030304040404040404040404040404040404))
                y := shl(shr(1, add(b, 2)), 1)
                y := shr(1, add(y, div(x, y)))
                y := shr(1, add(y, div(x, y)))
                y := shr(1, add(y, div(x, y)))
                y := shr(1, add(y, div(x, y)))
                y := shr(1, add(y, div(x, y)))
                y := shr(1, add(y, div(x, y)))
                y := shr(1, add(y, div(x, y)))
                y := sub(y, lt(div(x, y), y))
            }
        }
    }
}
