"""The pure parts of the on-chain recalibration: sampling rounds onto one grid
(margin/risk/rounds.py), the mirror of the contract's limits and the canonical encoding
(margin/risk/recalibration.py), on inputs with a known answer."""

from __future__ import annotations

import pytest

from margin.risk.ewma import OracleRound, TooFewRounds
from margin.risk.recalibration import (
    FieldLimits,
    NoFeasibleUpdate,
    Proposal,
    RecalibrationDailyLimit,
    RecalibrationOutOfBounds,
    RecalibrationStepTooLarge,
    Source,
    UnderlyingProposal,
    canonical_encoding,
    check_limit,
    check_underlying,
    decode_proposal,
    fhs_scale_target_up,
    limit_window,
    scale_limits,
    scale_within_limits,
    within_limits,
)
from margin.risk.rounds import FeedRound, sample_aligned, scale_answer_down

E = 10**16  # 0.01 WAD


def test_sampling_by_hand() -> None:
    # Feed A: rounds at 100, 130, 190, 250; feed B: at 110, 200, 240 (a missing round 2).
    a = [
        FeedRound(1, 100, 100),
        FeedRound(2, 101, 130),
        FeedRound(3, 102, 190),
        FeedRound(4, 103, 250),
    ]
    b = [FeedRound(7, 50, 110), FeedRound(8, 0, 0), FeedRound(9, 51, 200), FeedRound(10, 52, 240)]
    end, (sa, sb) = sample_aligned([a, b], [8, 8], 60)
    # end = min(250, 240) = 240; start = max(100, 110) = 110; samples at 120, 180, 240.
    assert end == 240
    assert [r.timestamp for r in sa] == [120, 180, 240] == [r.timestamp for r in sb]
    assert [r.price for r in sa] == [100 * 10**10, 101 * 10**10, 102 * 10**10]
    assert [r.price for r in sb] == [50 * 10**10, 50 * 10**10, 52 * 10**10]
    with pytest.raises(TooFewRounds):
        sample_aligned([a, b], [8, 8], 200)  # one sample only


def test_scaling_matches_oraclelib() -> None:
    assert scale_answer_down(123, 8) == 123 * 10**10
    assert scale_answer_down(123, 18) == 123
    assert scale_answer_down(1999, 21) == 1  # floored, as the contract's truncation


def test_limits_mirror_the_contract_order_and_rounding() -> None:
    lim = FieldLimits(lo=5 * E, hi=33 * E, current=15 * E, day_start=15 * E,
                      max_step=20 * E, max_daily_step=30 * E)  # fmt: skip
    check_limit(0, 0, 12 * E, lim)  # exactly -20%
    with pytest.raises(RecalibrationStepTooLarge) as step:
        check_limit(1, 0, 12 * E - 1, lim)
    assert step.value.args_tuple == (1, 0, 12 * E - 1, 12 * E, 18 * E)
    with pytest.raises(RecalibrationOutOfBounds):
        check_limit(0, 1, 4 * E, lim)
    later = FieldLimits(5 * E, 33 * E, current=12 * E, day_start=15 * E,
                        max_step=20 * E, max_daily_step=30 * E)  # fmt: skip
    with pytest.raises(RecalibrationDailyLimit) as daily:
        check_limit(0, 0, 10 * E, later)  # -16.7% of 0.12, -33% of the day's 0.15
    assert daily.value.args_tuple == (0, 0, 10 * E, 105 * 10**15, 195 * 10**15)
    assert limit_window(later) == (105 * 10**15, 144 * 10**15)
    # A zero reference bounds nothing relative: only the absolute bounds.
    zero = FieldLimits(0, 5 * E, 0, 0, 20 * E, 30 * E)
    assert limit_window(zero) == (0, 5 * E)
    # Owner moved the value far outside governance's bounds: no value passes.
    with pytest.raises(NoFeasibleUpdate):
        limit_window(FieldLimits(5 * E, 10 * E, 50 * E, 50 * E, 20 * E, 30 * E))


def test_within_limits_clamps_into_the_window() -> None:
    lim = FieldLimits(5 * E, 33 * E, 15 * E, 15 * E, 25 * 10**16, 50 * 10**16)
    p = UnderlyingProposal(10**18, 90 * E, 0, 90 * E, 0)
    out = within_limits(p, lim, lim)
    assert out.price_range == 1875 * 10**14 and out.vol_shift_base == 1125 * 10**14
    assert out.price_range_target == 90 * E  # the target stays visible


def test_canonical_encoding_round_trips_and_refuses_other_bytes() -> None:
    u = UnderlyingProposal(5 * 10**17, 16 * E, 8 * E, 16 * E, 8 * E)
    sources = (Source("0x" + "11" * 20, 1, 50), Source("0x" + "22" * 20, 3, 52))
    p = Proposal(1_700_000_000, 94 * E, (u, u), (8 * 10**17,), sources, 60)
    data = canonical_encoding(p)
    assert canonical_encoding(decode_proposal(data)) == data
    with pytest.raises(Exception, match="canonical"):
        decode_proposal(data + b"\0" * 32)


def test_oracle_round_type_is_the_ewma_input() -> None:
    _, (s,) = sample_aligned([[FeedRound(1, 1, 0 + 10), FeedRound(2, 2, 20)]], [18], 10)
    assert s == [OracleRound(10, 1), OracleRound(20, 2)]


def test_fhs_scale_rule_by_hand() -> None:
    """F* = ceil(σ / σ_ref) in WAD, capped at the model's 10; σ_ref = 0 keeps the current."""
    w = 10**18
    assert fhs_scale_target_up(60 * E, 40 * E, w) == 15 * 10**17  # exact
    assert fhs_scale_target_up(1 * E, 3 * E, w) == w // 3 + 1  # 0.333... rounded up
    assert fhs_scale_target_up(500 * E, 10 * E, w) == 10 * w  # the model's bound
    assert fhs_scale_target_up(60 * E, 0, 7 * 10**17) == 7 * 10**17
    # Clamped into the step window of the current 1 (25%): [0.75, 1.25].
    lim = scale_limits(w, w, 25 * E, 50 * E)
    assert scale_within_limits(15 * 10**17, lim) == 125 * 10**16
    assert scale_within_limits(w // 3 + 1, lim) == 75 * 10**16


def test_scale_checked_after_both_grid_bounds_then_relative() -> None:
    """The contract's order: absolute bounds of range, shift, scale; then each relative."""
    w = 10**18
    ranges = FieldLimits(5 * E, 33 * E, 15 * E, 15 * E, 20 * E, 30 * E)
    shifts = FieldLimits(0, 50 * E, 8 * E, 8 * E, 20 * E, 30 * E)
    scales = scale_limits(w, w, 20 * E, 30 * E)
    with pytest.raises(RecalibrationOutOfBounds) as e:
        check_underlying(0, 4 * E, 8 * E, ranges, shifts, 11 * w, scales)
    assert e.value.args_tuple[1] == 0  # the range's bound first
    with pytest.raises(RecalibrationOutOfBounds) as e:
        check_underlying(0, 119 * 10**15, 8 * E, ranges, shifts, 11 * w, scales)
    assert e.value.args_tuple == (0, 2, 11 * w, 0, 10 * w)  # before the range's step
    with pytest.raises(RecalibrationStepTooLarge) as e:
        check_underlying(0, 15 * E, 8 * E, ranges, shifts, 12 * 10**17 + 1, scales)
    assert e.value.args_tuple == (0, 2, 12 * 10**17 + 1, 8 * 10**17, 12 * 10**17)
    check_underlying(0, 15 * E, 8 * E, ranges, shifts, 12 * 10**17, scales)
    check_underlying(0, 15 * E, 8 * E, ranges, shifts)  # no set: no scale checked


def test_proposal_with_scales_round_trips() -> None:
    p = Proposal(
        1_700_000_000,
        94 * E,
        (UnderlyingProposal(50 * E, 15 * E, 8 * E, 15 * E, 8 * E),),
        (),
        (Source("0x" + "ab" * 20, 1, 9),),
        60,
        ref_vols=(245763769862960313,),
        fhs_scales=(125 * 10**16,),
    )
    data = canonical_encoding(p)
    assert decode_proposal(data) == p
    assert canonical_encoding(Proposal(**{**p.__dict__, "ref_vols": (), "fhs_scales": ()})) != data
