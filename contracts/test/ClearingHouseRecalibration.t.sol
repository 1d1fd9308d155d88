// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {IClearingHouseErrors, IClearingHouseEvents} from "../src/interfaces/IClearingHouse.sol";
import {ClearingHouseAdmin} from "../src/ClearingHouseAdmin.sol";
import {ClearingHouseRecalibration} from "../src/ClearingHouseRecalibration.sol";
import {ClearingHouseBase} from "../src/ClearingHouseBase.sol";
import {HistoricalSet, RiskParams} from "../src/margin/PortfolioMargin.sol";

/// @notice Helpers shared by the recalibration unit tests and the invariant handler.
abstract contract RecalibrationHelpers is ClearingHouseFixture {
    uint32 internal constant DELAY = 1 hours;
    uint64 internal constant STEP = 0.2e18;
    uint64 internal constant DAILY = 0.3e18;

    function configureRecalibration() internal {
        vm.startPrank(GOV);
        ClearingHouseRecalibration(address(adm)).setRecalibrationConfig(DELAY, STEP, DAILY);
        adm.setRiskBounds(0, ClearingHouseBase.RiskBounds(5e16, 33e16, 0, 5e17));
        adm.setRiskBounds(1, ClearingHouseBase.RiskBounds(5e16, 33e16, 0, 5e17));
        vm.stopPrank();
    }

    /// @dev The owner gives the parameters a historical set of two joint scenarios (S = 2),
    /// FHS scale 1 for both underlyings.
    function installHistoricalSet() internal {
        RiskParams memory p = abi.decode(ch.riskParams(), (RiskParams));
        int256[] memory moves = new int256[](4);
        (moves[0], moves[1], moves[2], moves[3]) = (-1e17, -8e16, 12e16, 9e16);
        int256[] memory fhs = new int256[](2);
        (fhs[0], fhs[1]) = (1e18, 1e18);
        p.historical = HistoricalSet(moves, new int256[](0), 0, fhs, 1);
        vm.prank(GOV);
        adm.setRiskParams(abi.encode(p));
    }

    /// @dev A proposal naming the feeds' last two rounds, with the given grid (no scales: S = 0).
    function proposal(int256 r0, int256 s0, int256 r1, int256 s1) internal view returns (bytes memory) {
        return proposalScaled(r0, s0, r1, s1, new int256[](0));
    }

    /// @dev The same with FHS scales (and as many reference vols).
    function proposalScaled(int256 r0, int256 s0, int256 r1, int256 s1, int256[] memory fhs)
        internal
        view
        returns (bytes memory)
    {
        ClearingHouseBase.Recalibration memory r;
        r.sources = new ClearingHouseBase.RecalibrationSource[](2);
        uint80 e = ethFeed.roundId();
        uint80 b = btcFeed.roundId();
        r.sources[0] = ClearingHouseBase.RecalibrationSource(address(ethFeed), e - 1, e);
        r.sources[1] = ClearingHouseBase.RecalibrationSource(address(btcFeed), b - 1, b);
        r.interval = 3600;
        uint256 te = ethFeed.updatedAt();
        uint256 tb = btcFeed.updatedAt();
        r.asOf = uint64(te < tb ? te : tb);
        r.lambda = 94e16;
        (r.kSigma, r.horizon, r.volShiftPerVol) = (3e18, 2 days, 2e17);
        r.vols = new uint256[](2);
        (r.vols[0], r.vols[1]) = (5e17, 4e17);
        r.priceRanges = new int256[](2);
        (r.priceRanges[0], r.priceRanges[1]) = (r0, r1);
        r.volShiftBases = new int256[](2);
        (r.volShiftBases[0], r.volShiftBases[1]) = (s0, s1);
        r.correlations = new int256[](1);
        r.correlations[0] = 8e17;
        r.refVols = new uint256[](fhs.length);
        for (uint256 u; u < fhs.length; ++u) {
            r.refVols[u] = 45e16;
        }
        r.fhsScales = fhs;
        return abi.encode(r);
    }

    function scales(int256 f0, int256 f1) internal pure returns (int256[] memory f) {
        f = new int256[](2);
        (f[0], f[1]) = (f0, f1);
    }

    function fhsScale(uint256 u) internal view returns (int256) {
        RiskParams memory p = abi.decode(ch.riskParams(), (RiskParams));
        return p.historical.fhsScale[u];
    }

    function grid(uint256 u) internal view returns (int256 range, int256 shift) {
        RiskParams memory p = abi.decode(ch.riskParams(), (RiskParams));
        return (p.underlyings[u].priceRange, p.underlyings[u].volShiftBase);
    }

    function _queue(bytes memory data) internal returns (uint256 id) {
        vm.prank(RISKOP);
        id = ClearingHouseRecalibration(address(adm)).queueRecalibration(data);
    }

    /// @dev The proposal is built first: prank and expectRevert apply to the next call.
    function _queueFails(bytes memory data, bytes memory err) internal {
        vm.prank(RISKOP);
        vm.expectRevert(err);
        ClearingHouseRecalibration(address(adm)).queueRecalibration(data);
    }

    /// @dev A new round on both feeds (a later asOf for the next proposal).
    function tick(uint256 dt) internal {
        vm.warp(block.timestamp + dt);
        refreshFeeds();
    }
}

/// @notice Queue, timelock, cancel, execute and every bound of the recalibration path. The
/// fixture's grid (spanLike) is price range 0.15 and vol shift base 0.08 for both underlyings;
/// limits: 20% per execution, 30% per UTC day, riskBounds [0.05, 0.33] and [0, 0.5].
contract ClearingHouseRecalibrationTest is RecalibrationHelpers {
    function setUp() public override {
        super.setUp();
        configureRecalibration();
        tick(60);
    }

    function test_queueWaitExecute() public {
        bytes memory data = proposal(17e16, 9e16, 14e16, 7e16);
        uint64 eta = uint64(block.timestamp) + DELAY;
        vm.expectEmit(true, true, false, true);
        emit IClearingHouseEvents.RecalibrationQueued(1, keccak256(data), eta, RISKOP, data);
        uint256 id = _queue(data);
        assertEq(id, 1, "first id");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationTooEarly.selector, id, eta));
        ClearingHouseRecalibration(address(adm)).executeRecalibration(id, data);
        vm.warp(eta);
        vm.expectEmit(true, true, false, true);
        emit IClearingHouseEvents.RecalibrationExecuted(id, keccak256(data), address(this));
        ClearingHouseRecalibration(address(adm)).executeRecalibration(id, data); // anyone
        (int256 r0, int256 s0) = grid(0);
        (int256 r1, int256 s1) = grid(1);
        assertEq(r0, 17e16, "eth range");
        assertEq(s0, 9e16, "eth shift");
        assertEq(r1, 14e16, "btc range");
        assertEq(s1, 7e16, "btc shift");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationNotQueued.selector, id, 2));
        ClearingHouseRecalibration(address(adm)).executeRecalibration(id, data);
    }

    function test_onlyRolesAndConfig() public {
        bytes memory data = proposal(15e16, 8e16, 15e16, 8e16);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotRiskOperator.selector, address(this)));
        ClearingHouseRecalibration(address(adm)).queueRecalibration(data);
        uint256 id = _queue(data);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotGuardian.selector, RISKOP));
        vm.prank(RISKOP);
        ClearingHouseRecalibration(address(adm)).cancelRecalibration(id);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.NotOwner.selector, RISKOP));
        vm.prank(RISKOP);
        ClearingHouseRecalibration(address(adm)).setRecalibrationConfig(60, 1, 1);
        vm.startPrank(GOV);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 21, int256(9), int256(10), int256(7 days)));
        ClearingHouseRecalibration(address(adm)).setRecalibrationConfig(9, 1, 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 22, int256(0), int256(1), int256(1)));
        ClearingHouseRecalibration(address(adm)).setRecalibrationConfig(60, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 22, int256(2), int256(1), int256(1)));
        ClearingHouseRecalibration(address(adm)).setRecalibrationConfig(60, 2, 1);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.ParamOutOfBounds.selector, 23, int256(6e17), int256(1), int256(5e17)));
        ClearingHouseRecalibration(address(adm)).setRecalibrationConfig(60, 1, 6e17);
        vm.stopPrank();
    }

    function test_disabledUntilConfigured() public {
        ClearingHouseRecalibrationFresh fresh = new ClearingHouseRecalibrationFresh();
        fresh.setUp();
        fresh.check();
    }

    function test_cancelledNeverExecutes() public {
        bytes memory data = proposal(14e16, 8e16, 15e16, 8e16);
        uint256 id = _queue(data);
        vm.expectEmit(true, false, false, true);
        emit IClearingHouseEvents.RecalibrationCancelled(id, GUARD);
        vm.prank(GUARD);
        ClearingHouseRecalibration(address(adm)).cancelRecalibration(id);
        vm.warp(block.timestamp + DELAY);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationNotQueued.selector, id, 3));
        ClearingHouseRecalibration(address(adm)).executeRecalibration(id, data);
        vm.prank(GUARD);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationNotQueued.selector, id, 3));
        ClearingHouseRecalibration(address(adm)).cancelRecalibration(id);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationNotQueued.selector, 7, 0));
        ClearingHouseRecalibration(address(adm)).executeRecalibration(7, data);
        // The same bytes queued again wait the whole delay again (a new id).
        uint256 again = _queue(data);
        assertEq(again, id + 1, "new id");
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationTooEarly.selector, again, uint64(block.timestamp) + DELAY));
        ClearingHouseRecalibration(address(adm)).executeRecalibration(again, data);
    }

    function test_executeNeedsTheQueuedBytesAndTheGraceWindow() public {
        bytes memory data = proposal(14e16, 8e16, 15e16, 8e16);
        bytes memory other = proposal(13e16, 8e16, 15e16, 8e16);
        uint256 id = _queue(data);
        vm.warp(block.timestamp + DELAY);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationHashMismatch.selector, id, keccak256(data), keccak256(other)));
        ClearingHouseRecalibration(address(adm)).executeRecalibration(id, other);
        vm.warp(block.timestamp + 2 days + 1);
        vm.expectPartialRevert(IClearingHouseErrors.RecalibrationExpired.selector);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(id, data);
    }

    function test_nonCanonicalBytesRefused() public {
        bytes memory data = abi.encodePacked(proposal(14e16, 8e16, 15e16, 8e16), uint256(0));
        _queueFails(data, abi.encodeWithSelector(IClearingHouseErrors.RecalibrationNotCanonical.selector));
    }

    function test_shapeSourcesAndAsOf() public {
        ClearingHouseBase.Recalibration memory r =
            abi.decode(proposal(14e16, 8e16, 15e16, 8e16), (ClearingHouseBase.Recalibration));
        r.correlations = new int256[](0);
        _queueFails(abi.encode(r), abi.encodeWithSelector(IClearingHouseErrors.RecalibrationShape.selector, 4, 1, 0));
        r.correlations = new int256[](1);
        r.sources[1].feed = address(ethFeed); // not BTC's feed
        _queueFails(
            abi.encode(r),
            abi.encodeWithSelector(
                IClearingHouseErrors.RecalibrationBadSource.selector, 1, address(ethFeed), r.sources[1].firstRound, r.sources[1].lastRound
            )
        );
        r.sources[1].feed = address(btcFeed);
        r.sources[1].lastRound = r.sources[1].lastRound + 5; // no such round
        _queueFails(
            abi.encode(r),
            abi.encodeWithSelector(
                IClearingHouseErrors.RecalibrationBadSource.selector, 1, address(btcFeed), r.sources[1].firstRound, r.sources[1].lastRound
            )
        );
        r.sources[1].lastRound = r.sources[1].lastRound - 5;
        r.asOf = r.asOf - 1; // not the sources' end
        _queueFails(
            abi.encode(r), abi.encodeWithSelector(IClearingHouseErrors.RecalibrationAsOf.selector, r.asOf, uint256(r.asOf) + 1, 0)
        );
    }

    function test_staleProposalCannotFollowANewerOne() public {
        bytes memory older = proposal(14e16, 8e16, 15e16, 8e16);
        uint256 a = _queue(older);
        tick(60);
        bytes memory newer = proposal(135e15, 8e16, 15e16, 8e16);
        uint256 b = _queue(newer);
        vm.warp(block.timestamp + DELAY);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(b, newer);
        vm.expectPartialRevert(IClearingHouseErrors.RecalibrationAsOf.selector);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(a, older);
    }

    function test_absoluteAndStepBounds() public {
        _queueFails(
            proposal(4e16, 8e16, 15e16, 8e16),
            abi.encodeWithSelector(IClearingHouseErrors.RecalibrationOutOfBounds.selector, 0, 0, int256(4e16), int256(5e16), int256(33e16))
        );
        // 0.15 x (1 - 0.2) = 0.12: 0.119 is one step too far down.
        _queueFails(
            proposal(15e16, 8e16, 119e15, 8e16),
            abi.encodeWithSelector(IClearingHouseErrors.RecalibrationStepTooLarge.selector, 1, 0, int256(119e15), int256(12e16), int256(18e16))
        );
        _queueFails(
            proposal(15e16, 97e15, 15e16, 8e16),
            abi.encodeWithSelector(IClearingHouseErrors.RecalibrationStepTooLarge.selector, 0, 1, int256(97e15), int256(64e15), int256(96e15))
        );
        _queue(proposal(12e16, 64e15, 18e16, 96e15)); // exactly at the step ends
    }

    /// Steps down within one UTC day: each within maxStep of the value current at execution,
    /// together bounded by maxDailyStep from the day's start; a new day starts a new budget.
    function test_dailyLimitCumulatesAndIsRecheckedAtExecution() public {
        vm.warp((block.timestamp / 1 days + 1) * 1 days + 1); // early in a UTC day
        tick(1);
        bytes memory first = proposal(125e15, 8e16, 15e16, 8e16); // -16.7%
        uint256 a = _queue(first);
        tick(60);
        // 0.10 is -33% of the current 0.15: refused at queue time already.
        bytes memory tooFar = proposal(10e16, 8e16, 15e16, 8e16);
        vm.prank(RISKOP);
        vm.expectPartialRevert(IClearingHouseErrors.RecalibrationStepTooLarge.selector);
        ClearingHouseRecalibration(address(adm)).queueRecalibration(tooFar);
        bytes memory second = proposal(12e16, 8e16, 15e16, 8e16); // -20% on the day
        uint256 b = _queue(second);
        vm.warp(block.timestamp + DELAY);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(a, first);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(b, second);
        (int256 r0,) = grid(0);
        assertEq(r0, 12e16, "two steps");
        tick(60);
        // 0.104 is within 20% of 0.12 but more than 30% below the day's start 0.15 (min 0.105).
        _queueFails(
            proposal(104e15, 8e16, 15e16, 8e16),
            abi.encodeWithSelector(IClearingHouseErrors.RecalibrationDailyLimit.selector, 0, 0, int256(104e15), int256(105e15), int256(195e15))
        );
        bytes memory cData = proposal(105e15, 8e16, 15e16, 8e16);
        uint256 c = _queue(cData);
        // The next UTC day: the day's reference becomes the value before its first execution.
        vm.warp((block.timestamp / 1 days + 1) * 1 days + 1);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(c, cData); // -12.5% of 0.12
        (uint32 day, int72 dayRange,,) = ClearingHouseRecalibration(address(adm)).recalibrationDay(0);
        assertEq(day, block.timestamp / 1 days, "today");
        assertEq(dayRange, 12e16, "reference: the value before today's first execution");
        tick(60);
        // 0.084 = 0.12 x 0.7 = 0.105 x 0.8: both limits meet there.
        bytes memory dData = proposal(84e15, 8e16, 15e16, 8e16);
        uint256 d = _queue(dData);
        vm.warp(block.timestamp + DELAY);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(d, dData);
        (r0,) = grid(0);
        assertEq(r0, 84e15, "third day-limited step");
    }

    /// A proposal queued when it was within the limits fails at execution when the parameters
    /// moved meanwhile (the owner changed them): the check runs against the current ones.
    function test_executionRechecksAgainstCurrentParams() public {
        bytes memory data = proposal(125e15, 8e16, 15e16, 8e16); // -16.7% of 0.15
        uint256 id = _queue(data);
        RiskParams memory p = abi.decode(ch.riskParams(), (RiskParams));
        p.underlyings[0].priceRange = 20e16;
        vm.prank(GOV);
        adm.setRiskParams(abi.encode(p));
        vm.warp(block.timestamp + DELAY);
        // 0.125 is -37.5% of 0.20 now.
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationStepTooLarge.selector, 0, 0, int256(125e15), int256(16e16), int256(24e16)));
        ClearingHouseRecalibration(address(adm)).executeRecalibration(id, data);
    }
}

/// @notice The historical set's FHS scale through the recalibration: its shape rule (one per
/// underlying with a set, none without), the model's absolute bound, the step and daily limits
/// at one wei either side, and execution writing it into the stored parameters.
contract ClearingHouseRecalibrationScaleTest is RecalibrationHelpers {
    bytes4 internal immutable SHAPE = IClearingHouseErrors.RecalibrationShape.selector;

    function setUp() public override {
        super.setUp();
        configureRecalibration();
        installHistoricalSet();
        tick(60);
    }

    function test_shapeFollowsTheHistoricalSet() public {
        // With a set: one scale and one reference vol per underlying.
        _queueFails(proposal(15e16, 8e16, 15e16, 8e16), abi.encodeWithSelector(SHAPE, 5, 2, 0));
        ClearingHouseBase.Recalibration memory r =
            abi.decode(proposalScaled(15e16, 8e16, 15e16, 8e16, scales(1e18, 1e18)), (ClearingHouseBase.Recalibration));
        r.fhsScales = new int256[](1);
        _queueFails(abi.encode(r), abi.encodeWithSelector(SHAPE, 6, 2, 1));
        _queue(proposalScaled(15e16, 8e16, 15e16, 8e16, scales(1e18, 1e18)));
    }

    function test_stepLimitsAtOneWei() public {
        // 1 x (1 +- 0.2): [0.8, 1.2].
        bytes4 step = IClearingHouseErrors.RecalibrationStepTooLarge.selector;
        _queueFails(
            proposalScaled(15e16, 8e16, 15e16, 8e16, scales(8e17 - 1, 1e18)),
            abi.encodeWithSelector(step, 0, 2, int256(8e17 - 1), int256(8e17), int256(12e17))
        );
        _queueFails(
            proposalScaled(15e16, 8e16, 15e16, 8e16, scales(1e18, 12e17 + 1)),
            abi.encodeWithSelector(step, 1, 2, int256(12e17 + 1), int256(8e17), int256(12e17))
        );
        _queue(proposalScaled(15e16, 8e16, 15e16, 8e16, scales(8e17, 12e17)));
    }

    function test_modelBoundAtOneWei() public {
        RiskParams memory p = abi.decode(ch.riskParams(), (RiskParams));
        p.historical.fhsScale[0] = 9e18;
        vm.prank(GOV);
        adm.setRiskParams(abi.encode(p));
        bytes4 oob = IClearingHouseErrors.RecalibrationOutOfBounds.selector;
        _queueFails(
            proposalScaled(15e16, 8e16, 15e16, 8e16, scales(10e18 + 1, 1e18)),
            abi.encodeWithSelector(oob, 0, 2, int256(10e18 + 1), int256(0), int256(10e18))
        );
        _queueFails(
            proposalScaled(15e16, 8e16, 15e16, 8e16, scales(9e18, -1)),
            abi.encodeWithSelector(oob, 1, 2, int256(-1), int256(0), int256(10e18))
        );
        _queue(proposalScaled(15e16, 8e16, 15e16, 8e16, scales(10e18, 1e18)));
    }

    /// Execution writes the scale; the day's reference is the scale before its first
    /// execution, and the daily limit (30%) binds the second step at one wei.
    function test_executionWritesTheScaleWithinTheDailyLimit() public {
        vm.warp((block.timestamp / 1 days + 1) * 1 days + 1);
        tick(1);
        bytes memory first = proposalScaled(15e16, 8e16, 15e16, 8e16, scales(12e17, 9e17));
        uint256 a = _queue(first);
        vm.warp(block.timestamp + DELAY);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(a, first);
        assertEq(fhsScale(0), 12e17, "scale 0 written");
        assertEq(fhsScale(1), 9e17, "scale 1 written");
        (,,, int72 dayScale) = ClearingHouseRecalibration(address(adm)).recalibrationDay(0);
        assertEq(dayScale, 1e18, "reference: the scale before today's first execution");
        tick(60);
        // 1.2 x 1.2 = 1.44 is one step, but the day allows 1 x 1.3.
        _queueFails(
            proposalScaled(15e16, 8e16, 15e16, 8e16, scales(13e17 + 1, 9e17)),
            abi.encodeWithSelector(
                IClearingHouseErrors.RecalibrationDailyLimit.selector, 0, 2, int256(13e17 + 1), int256(7e17), int256(13e17)
            )
        );
        bytes memory second = proposalScaled(15e16, 8e16, 15e16, 8e16, scales(13e17, 9e17));
        uint256 b = _queue(second);
        vm.warp(block.timestamp + DELAY);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(b, second);
        assertEq(fhsScale(0), 13e17, "second step");
    }
}

/// @notice Without a historical set (S = 0) a proposal carries no scales: one with scales is
/// refused, one without executes and leaves the (empty) scale alone.
contract ClearingHouseRecalibrationNoSetTest is RecalibrationHelpers {
    function setUp() public override {
        super.setUp();
        configureRecalibration();
        tick(60);
    }

    function test_scalesRefusedWithoutASet() public {
        bytes memory scaled = proposalScaled(15e16, 8e16, 15e16, 8e16, scales(1e18, 1e18));
        vm.prank(RISKOP);
        vm.expectRevert(abi.encodeWithSelector(IClearingHouseErrors.RecalibrationShape.selector, 5, 0, 2));
        ClearingHouseRecalibration(address(adm)).queueRecalibration(scaled);
        bytes memory data = proposal(14e16, 8e16, 15e16, 8e16);
        vm.prank(RISKOP);
        uint256 id = ClearingHouseRecalibration(address(adm)).queueRecalibration(data);
        vm.warp(block.timestamp + DELAY);
        ClearingHouseRecalibration(address(adm)).executeRecalibration(id, data);
        RiskParams memory p = abi.decode(ch.riskParams(), (RiskParams));
        assertEq(p.historical.fhsScale.length, 0, "no scale");
        assertEq(p.underlyings[0].priceRange, 14e16, "grid written");
    }
}

/// @dev A clearing house whose owner never set the recalibration config.
contract ClearingHouseRecalibrationFresh is RecalibrationHelpers {
    function check() external {
        bytes memory data = proposal(15e16, 8e16, 15e16, 8e16);
        vm.prank(RISKOP);
        vm.expectRevert(IClearingHouseErrors.RecalibrationDisabled.selector);
        ClearingHouseRecalibration(address(adm)).queueRecalibration(data);
    }
}
