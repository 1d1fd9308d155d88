"""margin.funding: the perpetual funding mirror (pure, no node).

The on-chain side (pokes, accrual and realisation against the compiled clearing house) is in
tests/test_funding_parity.py; here, the arithmetic against independent exact computations
(fractions) and Solidity's rounding rules, at the boundaries."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from margin.errors import ArithmeticOverflow
from margin.funding import (
    TICK,
    FundingClock,
    accrued_funding,
    fold_funding,
    funding_delta,
    is_perpetual,
    poke,
)
from margin.portfolio import CALL, FUTURE, Portfolio, Position

WAD = 10**18
LOT = 10**8


def test_only_futures_without_expiry_are_perpetual() -> None:
    assert is_perpetual(FUTURE, 0)
    assert not is_perpetual(FUTURE, 1_800_000_000)
    assert not is_perpetual(CALL, 0)


def test_accrual_is_exact_on_the_grid_and_signed() -> None:
    """Longs pay a rising index, shorts receive it; on the LOT/TICK grid every payment is
    exact, so a long and a short of the same size cancel to the wei."""
    rng = random.Random(7)
    for _ in range(5000):
        q = rng.randrange(1, 10**14) * LOT
        i0 = rng.randrange(-(10**12), 10**12) * TICK
        i1 = i0 + rng.randrange(-(10**9), 10**9) * TICK
        exact = Fraction(-q * (i1 - i0), WAD)
        assert exact.denominator == 1
        assert accrued_funding(q, i1, i0) == int(exact)
        assert accrued_funding(q, i1, i0) + accrued_funding(-q, i1, i0) == 0
    assert accrued_funding(WAD, 5 * WAD, 2 * WAD) == -3 * WAD  # long, index +3: pays 3
    assert accrued_funding(-WAD, 5 * WAD, 2 * WAD) == 3 * WAD
    assert accrued_funding(7 * WAD, 2 * WAD, 2 * WAD) == 0


def test_accrual_off_the_grid_truncates_toward_zero_like_solidity() -> None:
    assert accrued_funding(3, 5 * 10**17, 0) == -1  # -1.5 -> -1 (sdiv), not floor's -2
    assert accrued_funding(-3, 5 * 10**17, 0) == 1
    with pytest.raises(ArithmeticOverflow):
        accrued_funding(2**200, 2**100, 0)


def test_delta_is_clamped_and_rounded_toward_zero() -> None:
    spot = 2000 * WAD
    cap = 10**15  # 0.1%: 2 per contract
    assert funding_delta(0, spot, cap) == 0  # no trade yet: no funding
    assert funding_delta(2001 * WAD, spot, cap) == WAD
    assert funding_delta(2002 * WAD, spot, cap) == 2 * WAD  # exactly at the cap
    assert funding_delta(2002 * WAD + TICK, spot, cap) == 2 * WAD  # one TICK beyond: clamped
    assert funding_delta(1998 * WAD - TICK, spot, cap) == -2 * WAD
    assert funding_delta(spot, spot, cap) == 0
    # Off-grid cap: 2000.12345678 x 0.001 = 2.00012345678 -> 2.00012345 (toward zero to TICK),
    # on both sides.
    odd = 200_012_345_678 * TICK
    assert funding_delta(odd + 10 * WAD, odd, cap) == 2_000_123_450_000_000_000
    assert funding_delta(odd - 10 * WAD, odd, cap) == -2_000_123_450_000_000_000
    # A zero cap: no funding whatever the premium.
    assert funding_delta(3000 * WAD, spot, 0) == 0


def test_delta_is_always_a_tick_multiple_within_the_cap() -> None:
    rng = random.Random(11)
    for _ in range(5000):
        spot = rng.randrange(1, 10**14) * TICK
        cap = rng.randrange(0, 10**16 + 1)
        mark = max(TICK, spot + rng.randrange(-(10**20), 10**20) // TICK * TICK)
        d = funding_delta(mark, spot, cap)
        cap_abs = spot * cap // WAD
        assert d % TICK == 0 and abs(d) <= cap_abs
        # Toward zero: never further from zero than the clamped premium.
        clamped = max(-cap_abs, min(cap_abs, mark - spot))
        assert abs(clamped) - abs(d) < TICK and (d == 0 or (d > 0) == (clamped > 0))


def test_clock_packs_and_weights_by_time() -> None:
    c = FundingClock.listed(1_000)
    assert FundingClock.unpack(c.pack()) == c
    assert c.mark(4_600) == 0  # no trade yet
    c = c.after_trade(2004 * WAD, 1_000)  # the first trade prices the time before it too
    c = c.after_trade(2000 * WAD, 3_700)
    assert FundingClock.unpack(c.pack()) == c
    assert c.mark(4_600) == 2003 * WAD  # (2004 x 2700 + 2000 x 900) / 3600
    assert c.last_price_ticks * TICK == 2000 * WAD
    p = c.after_poke(4_600)
    assert (p.last_poke, p.last_trade, p.sum_ticks_seconds) == (4_600, 4_600, 0)
    assert p.mark(8_200) == 2000 * WAD  # the last price carries on
    # The TWAP is floored to a TICK.
    odd = FundingClock.listed(0).after_trade(TICK, 0).after_trade(2 * TICK, 1)
    assert odd.mark(3) == TICK  # (1 + 2 x 2) / 3 = 1.67 TICK -> 1 TICK


def test_clock_sum_overflow_is_refused() -> None:
    c = FundingClock(0, 0, 2**70, 0)
    with pytest.raises(ArithmeticOverflow):
        c.after_trade(TICK, 2**40 - 1)


def test_poke_and_fold() -> None:
    c = FundingClock.listed(0).after_trade(2010 * WAD, 0)
    delta, index = poke(5 * WAD, c, 2000 * WAD, 10**16, 3600)
    assert (delta, index) == (10 * WAD, 15 * WAD)
    pf = Portfolio((Position(0, FUTURE, 0, 0, WAD),), (100 * WAD, 1))
    assert fold_funding(pf, -7 * WAD).collateral == (93 * WAD, 1)
    assert fold_funding(pf, 0) is pf
    bare = Portfolio(pf.positions, ())
    assert fold_funding(bare, 5) == bare  # no asset: nowhere to add it (as the contract)
