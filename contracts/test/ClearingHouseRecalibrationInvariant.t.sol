// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {TestBase} from "./utils/TestBase.sol";
import {InvariantBase} from "./utils/InvariantBase.sol";
import {ClearingHouse} from "../src/ClearingHouse.sol";
import {ClearingHouseAdmin} from "../src/ClearingHouseAdmin.sol";
import {ClearingHouseRecalibration} from "../src/ClearingHouseRecalibration.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {MockAggregator} from "../src/oracle/MockAggregator.sol";
import {RiskParams} from "../src/margin/PortfolioMargin.sol";
import {RecalibrationHelpers} from "./ClearingHouseRecalibration.t.sol";

/// @notice A compromised risk operator with a guardian that sometimes cancels: it queues any
/// grid it likes (far outside the limits too), re-queues cancelled bytes, executes as early as
/// it can, executes cancelled and stale ids. The ghosts record what actually changed the
/// parameters, computed here from the values before and after each successful execution. The
/// parameters carry a historical set, so the FHS scales are attacked the same way.
contract RecalibrationHandler is TestBase {
    ClearingHouse internal ch;
    ClearingHouseAdmin internal adm;
    MockAggregator internal ethFeed;
    MockAggregator internal btcFeed;
    address internal riskOp;
    address internal guardian;
    int256 internal maxStep;
    int256 internal maxDaily;

    bytes[] internal queued; // index = id - 1
    mapping(uint256 => uint64) internal etaOf;
    mapping(uint256 => bool) internal cancelled;
    /// Per grid entry (range 0, shift 0, range 1, shift 1, scale 0, scale 1): the UTC day and the value before that
    /// day's first executed change.
    mapping(uint256 => uint256) internal ghostDay;
    mapping(uint256 => int256) internal ghostDayStart;

    uint256 public executedEarly;
    uint256 public executedCancelled;
    uint256 public stepViolations;
    uint256 public dailyViolations;
    uint256 public boundViolations;
    uint256 public executions;
    uint256 public cancellations;

    constructor(
        ClearingHouse ch_,
        MockAggregator eth,
        MockAggregator btc,
        address riskOp_,
        address guardian_,
        int256 step,
        int256 daily
    ) {
        ch = ch_;
        adm = ClearingHouseAdmin(address(ch_));
        (ethFeed, btcFeed, riskOp, guardian, maxStep, maxDaily) = (eth, btc, riskOp_, guardian_, step, daily);
    }

    function _grid() internal view returns (int256[6] memory g) {
        RiskParams memory p = abi.decode(ch.riskParams(), (RiskParams));
        g = [
            p.underlyings[0].priceRange,
            p.underlyings[0].volShiftBase,
            p.underlyings[1].priceRange,
            p.underlyings[1].volShiftBase,
            p.historical.fhsScale[0],
            p.historical.fhsScale[1]
        ];
    }

    function _proposal(int256[6] memory g) internal view returns (bytes memory) {
        ClearingHouseBase.Recalibration memory r;
        r.sources = new ClearingHouseBase.RecalibrationSource[](2);
        (uint80 e, uint80 b) = (ethFeed.roundId(), btcFeed.roundId());
        r.sources[0] = ClearingHouseBase.RecalibrationSource(address(ethFeed), e - 1, e);
        r.sources[1] = ClearingHouseBase.RecalibrationSource(address(btcFeed), b - 1, b);
        r.interval = 60;
        (uint256 te, uint256 tb) = (ethFeed.updatedAt(), btcFeed.updatedAt());
        r.asOf = uint64(te < tb ? te : tb);
        r.lambda = 94e16;
        (r.kSigma, r.horizon, r.volShiftPerVol) = (3e18, 2 days, 2e17);
        r.vols = new uint256[](2);
        r.priceRanges = new int256[](2);
        r.volShiftBases = new int256[](2);
        (r.priceRanges[0], r.volShiftBases[0], r.priceRanges[1], r.volShiftBases[1]) = (g[0], g[1], g[2], g[3]);
        r.correlations = new int256[](1);
        r.refVols = new uint256[](2);
        r.fhsScales = new int256[](2);
        (r.fhsScales[0], r.fhsScales[1]) = (g[4], g[5]);
        return abi.encode(r);
    }

    /// Queues a grid `pct` percent away from the current one (-60%..+60%, beyond every limit
    /// sometimes), or the bytes of an earlier (maybe cancelled) proposal again.
    function queue(int256 pct0, int256 pct1, uint256 again) external {
        bytes memory data;
        if (again % 4 == 0 && queued.length != 0) {
            data = queued[again % queued.length];
        } else {
            int256[6] memory g = _grid();
            int256 a = bound(pct0, -60, 60);
            int256 b = bound(pct1, -60, 60);
            g[0] = g[0] * (100 + a) / 100;
            g[1] = g[1] == 0 ? int256(1e16) : g[1] * (100 + b) / 100; // a zero vol shift can rise
            g[2] = g[2] * (100 + b) / 100;
            g[3] = g[3] == 0 ? int256(1e16) : g[3] * (100 + a) / 100;
            g[4] = g[4] * (100 + b) / 100;
            g[5] = g[5] == 0 ? int256(1e17) : g[5] * (100 + a) / 100;
            data = _proposal(g);
        }
        vm.prank(riskOp);
        try ClearingHouseRecalibration(address(adm)).queueRecalibration(data) returns (uint256 id) {
            queued.push(data);
            (uint32 delay,,) = ClearingHouseRecalibration(address(adm)).recalibrationConfig();
            etaOf[id] = uint64(block.timestamp) + delay;
        } catch {}
    }

    /// Executes any id (also unqueued, cancelled or already executed ones), at any time.
    function execute(uint256 which) external {
        if (queued.length == 0) return;
        uint256 id = which % (queued.length + 1) + 1; // one past the last: never queued
        bytes memory data = queued[(id - 1) % queued.length];
        int256[6] memory before = _grid();
        try ClearingHouseRecalibration(address(adm)).executeRecalibration(id, data) {
            ++executions;
            if (block.timestamp < etaOf[id] || etaOf[id] == 0) ++executedEarly;
            if (cancelled[id]) ++executedCancelled;
            _checkChange(before, _grid());
        } catch {}
    }

    function cancel(uint256 which) external {
        if (queued.length == 0) return;
        uint256 id = which % queued.length + 1;
        vm.prank(guardian);
        try ClearingHouseRecalibration(address(adm)).cancelRecalibration(id) {
            cancelled[id] = true;
            ++cancellations;
        } catch {}
    }

    function passTime(uint256 secs) external {
        vm.warp(block.timestamp + bound(secs, 1, 20 hours));
        ethFeed.setAnswer(ethFeed.answer());
        btcFeed.setAnswer(btcFeed.answer());
    }

    function _checkChange(int256[6] memory before, int256[6] memory next) internal {
        uint256 today = block.timestamp / 1 days;
        for (uint256 k; k < 6; ++k) {
            (int256 lo, int256 hi) = k >= 4
                ? (int256(0), int256(10e18)) // the FHS scale: the model's bound
                : (k % 2 == 0) ? (int256(5e16), int256(33e16)) : (int256(0), int256(5e17));
            if (next[k] < lo || next[k] > hi) ++boundViolations;
            if (ghostDay[k] != today) (ghostDay[k], ghostDayStart[k]) = (today, before[k]);
            if (before[k] > 0 && !_within(next[k], before[k], maxStep)) ++stepViolations;
            if (ghostDayStart[k] > 0 && !_within(next[k], ghostDayStart[k], maxDaily)) ++dailyViolations;
        }
    }

    /// |x - ref| <= step x ref, in exact rational arithmetic (no rounding to lean on).
    function _within(int256 x, int256 ref, int256 step) internal pure returns (bool) {
        int256 d = x > ref ? x - ref : ref - x;
        return d * 1e18 <= step * ref + 1e18; // + one wei of the contract's rounding up
    }
}

/// @notice Whatever a compromised risk operator does, the parameters change only through the
/// timelock, never from a cancelled id, and never faster than the step and daily limits.
contract ClearingHouseRecalibrationInvariantTest is RecalibrationHelpers, InvariantBase {
    RecalibrationHandler internal handler;

    function setUp() public override {
        super.setUp();
        configureRecalibration();
        installHistoricalSet();
        handler = new RecalibrationHandler(ch, ethFeed, btcFeed, RISKOP, GUARD, int256(uint256(STEP)), int256(uint256(DAILY)));
        targetContract(address(handler));
        bytes4[] memory sel = new bytes4[](5);
        sel[0] = RecalibrationHandler.queue.selector;
        sel[1] = RecalibrationHandler.execute.selector;
        sel[2] = RecalibrationHandler.execute.selector;
        sel[3] = RecalibrationHandler.cancel.selector;
        sel[4] = RecalibrationHandler.passTime.selector;
        targetSelector(FuzzSelector(address(handler), sel));
    }

    /// The handler's path reaches executions (the invariants below are not vacuous).
    function test_handlerExecutes() public {
        handler.passTime(60);
        handler.queue(50, 70, 1); // -10%, +10% (bound maps x to -60 + x % 121)
        handler.passTime(2 hours);
        handler.execute(0);
        assertEq(handler.executions(), 1, "executed");
        handler.queue(45, 45, 1);
        handler.cancel(1);
        handler.passTime(2 hours);
        handler.execute(1);
        assertEq(handler.executions(), 1, "cancelled id not executed");
        assertEq(handler.cancellations(), 1, "cancelled");
        RiskParams memory p = abi.decode(ch.riskParams(), (RiskParams));
        assertEq(p.historical.fhsScale[0], 11e17, "the scale moved through the timelock"); // +10%
    }

    function invariant_onlyThroughTheTimelock() public view {
        assertEq(handler.executedEarly(), 0, "executed before eta or never queued");
        assertEq(handler.executedCancelled(), 0, "a cancelled id executed");
    }

    function invariant_changeLimits() public view {
        assertEq(handler.stepViolations(), 0, "more than maxStep in one execution");
        assertEq(handler.dailyViolations(), 0, "more than maxDailyStep in one UTC day");
        assertEq(handler.boundViolations(), 0, "outside riskBounds");
    }
}
