"""margin.settlement: settled positions folded into the settlement balance (pure, no node).

The on-chain side (portfolioOf / marginOf of books with settled and expired-unsettled
positions) is in tests/test_chain.py; here, thousands of random books against an independent
exact computation (fractions) and Solidity's rounding rules."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from margin.errors import ArithmeticOverflow
from margin.portfolio import CALL, FUTURE, PUT, Portfolio, Position
from margin.settlement import fold_settled, payoff, settlement_cash

WAD = 10**18
LOT = 10**8
TICK = 10**10


def test_payoff_of_each_kind() -> None:
    k, s = 3000 * WAD, 3100 * WAD
    assert payoff(FUTURE, 0, s) == s
    assert payoff(CALL, k, s) == 100 * WAD and payoff(CALL, s, k) == 0
    assert payoff(PUT, k, s) == 0 and payoff(PUT, s, k) == 100 * WAD
    assert payoff(CALL, k, k) == payoff(PUT, k, k) == 0  # at the money: nothing
    with pytest.raises(ValueError):
        payoff(3, k, s)


def test_cash_truncates_toward_zero_like_solidity() -> None:
    # Off the LOT/TICK grid the division is not exact: Solidity truncates toward zero.
    assert settlement_cash(FUTURE, 0, 3, 10**17 * 5) == 1  # 1.5 -> 1
    assert settlement_cash(FUTURE, 0, 3, -(10**17) * 5) == -1  # -1.5 -> -1 (not floor's -2)
    with pytest.raises(ArithmeticOverflow):
        settlement_cash(FUTURE, 0, 2**200, 2**100)


def _random_book(rng: random.Random, n_instruments: int) -> tuple[Portfolio, list[int]]:
    ids = rng.sample(range(1, n_instruments + 1), rng.randrange(0, min(12, n_instruments) + 1))
    positions = []
    for iid in ids:
        kind = iid % 3
        strike = 0 if kind == FUTURE else rng.randrange(1, 10**6) * TICK * 10**4
        q = rng.randrange(1, 10**7) * LOT * rng.choice((1, -1, 10**4))
        positions.append(Position(iid % 2, kind, strike, 1_800_000_000, q, 0))
    cash = rng.randrange(-(10**9), 10**9) * WAD
    return Portfolio(tuple(positions), (cash, rng.randrange(0, 10) * WAD)), ids


def test_random_books_fold_exactly() -> None:
    """Thousands of books on the LOT/TICK grid: the settled positions leave (the others keep
    their order), asset 0 gains exactly sum(q * payoff) / 1e18, nothing else moves."""
    rng = random.Random(13)
    n = 30
    folded_some = 0
    for _ in range(4000):
        pf, ids = _random_book(rng, n)
        prices = {
            i: rng.randrange(0, 10**6) * TICK * 10**4 for i in range(1, n + 1) if rng.random() < 0.4
        }
        out = fold_settled(pf, ids, prices)
        kept = [p for i, p in zip(ids, pf.positions, strict=True) if i not in prices]
        assert list(out.positions) == kept
        exact = sum(
            Fraction(p.quantity * payoff(p.kind, p.strike, prices[i]), WAD)
            for i, p in zip(ids, pf.positions, strict=True)
            if i in prices
        )
        assert exact.denominator == 1  # LOT * TICK == 1e18: no rounding at all
        assert out.collateral == (pf.collateral[0] + int(exact), pf.collateral[1])
        folded_some += len(kept) < len(pf.positions)
    assert folded_some > 1000  # the cases reached the folding


def test_nothing_settled_is_the_same_portfolio() -> None:
    pf = Portfolio((Position(0, CALL, 3000 * WAD, 1, WAD),), (5 * WAD,))
    assert fold_settled(pf, [4], {5: 3000 * WAD}) is pf
    with pytest.raises(ValueError):
        fold_settled(pf, [], {})
    # No asset at all (no risk parameters yet): the position leaves, its cash has nowhere to go.
    bare = Portfolio(pf.positions, ())
    assert fold_settled(bare, [5], {5: 3100 * WAD}) == Portfolio((), ())


def test_settled_at_zero_price_still_folds() -> None:
    """A settled instrument whose price floored to 0 is settled: its position leaves the book
    (a long call pays nothing, a short put owes the whole strike)."""
    pf = Portfolio(
        (Position(0, CALL, 10 * TICK, 1, 2 * WAD), Position(0, PUT, 10 * TICK, 1, -WAD)), (0,)
    )
    out = fold_settled(pf, [1, 2], {1: 0, 2: 0})
    assert out.positions == () and out.collateral == (-10 * TICK,)
