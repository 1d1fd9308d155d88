"""margin.tools.book.Book.patch: accounts rewritten in place equal a new Book of the same
portfolios, column for column and row for row (float and exact), and the sweep and exact
engine on a patched book equal the verifier's full check; a change of shape is refused and
leaves the book as it was."""

from __future__ import annotations

import random
from dataclasses import fields, replace

import numpy as np
import pytest

from margin.errors import MarginError
from margin.portfolio import MAX_COLLATERAL, MAX_QUANTITY, Portfolio, Position
from margin.portfolio_margin import ScenarioTable
from margin.tools import synthetic
from margin.tools.book import Book
from margin.tools.sweep import MarketPrep, Sweep, exact_account
from tests.test_sweep import _exact_states, random_case


def _same_columns(got: Book, want: Book) -> None:
    assert got.n_accounts == want.n_accounts
    assert got.max_qsum == want.max_qsum
    assert got.row_keys == want.row_keys
    assert got.accounts == want.accounts
    assert got.portfolios == want.portfolios
    assert np.array_equal(got.stable, want.stable)
    for g, w in zip(got.legs, want.legs, strict=True):
        for f in fields(g):
            a, b = getattr(g, f.name), getattr(w, f.name)
            if f.name == "buckets":
                assert len(a) == len(b)
                for (ia, la), (ib, lb) in zip(a, b, strict=True):
                    assert np.array_equal(ia, ib) and np.array_equal(la, lb)
            elif isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and np.array_equal(a, b), f.name
            else:
                assert a == b, f.name


def _clamp(x: int, bound: int) -> int:
    return max(-bound, min(bound, x))


def _resized(rng: random.Random, pf: Portfolio) -> Portfolio:
    """The same legs with other sizes: positions resized (sign kept or not, never to 0),
    balances moved without crossing zero (a volatile leg stays a leg)."""
    positions = tuple(
        replace(p, quantity=_clamp(p.quantity * rng.choice((1, 2, -1, 3)) // 2, MAX_QUANTITY) or 1)
        for p in pf.positions
    )
    coll = tuple(_clamp(b * rng.randint(1, 3), MAX_COLLATERAL) for b in pf.collateral)
    return Portfolio(positions, coll)


@pytest.mark.parametrize("seed", range(12))
def test_patch_equals_a_new_book_row_for_row(seed: int) -> None:
    market, params, portfolios = random_case(seed, n_accounts=30)
    rng = random.Random(seed)
    book = Book(params, list(portfolios))
    changes = {a: _resized(rng, portfolios[a]) for a in rng.sample(range(30), 10)}
    assert book.patch(changes) == []
    now = [changes.get(a, pf) for a, pf in enumerate(portfolios)]
    _same_columns(book, Book(params, now))
    # The float pass and the exact engine on the patched columns: the verifier's results.
    table = ScenarioTable(market, params)
    prep = MarketPrep(book, table)
    assert Sweep(book, prep).classify().tolist() == _exact_states(table, now)
    for a in changes:
        try:
            want = table.full_check(now[a])
        except MarginError:
            continue
        assert exact_account(prep, a, want_matrix=True) == want


def test_patch_of_a_synthetic_book_in_several_steps() -> None:
    sb = synthetic.book(300, seed=7)
    rng = random.Random(7)
    book = Book(sb.params, list(sb.portfolios))
    now = list(sb.portfolios)
    for _ in range(4):
        changes = {a: _resized(rng, now[a]) for a in rng.sample(range(300), 25)}
        assert book.patch(changes) == []
        now = [changes.get(a, pf) for a, pf in enumerate(now)]
        _same_columns(book, Book(sb.params, now))


def test_a_change_of_shape_is_refused_and_changes_nothing() -> None:
    sb = synthetic.book(60, seed=3)
    book = Book(sb.params, list(sb.portfolios))
    with_positions = [a for a, pf in enumerate(sb.portfolios) if pf.positions]
    a, b = with_positions[:2]
    p = sb.portfolios[a].positions[0]
    new_row = replace(p, strike=p.strike + 1) if p.kind else replace(p, expiry=p.expiry + 1)
    changed = {
        a: replace(sb.portfolios[a], positions=sb.portfolios[a].positions[1:]),  # one fewer
        b: replace(sb.portfolios[b], positions=(new_row, *sb.portfolios[b].positions[1:])),
    }
    assert sorted(book.patch(changed)) == sorted(changed)
    _same_columns(book, Book(sb.params, list(sb.portfolios)))


def test_an_invalid_portfolio_is_refused_and_changes_nothing() -> None:
    sb = synthetic.book(20, seed=2)
    book = Book(sb.params, list(sb.portfolios))
    good = {0: _resized(random.Random(1), sb.portfolios[0])}
    bad = {1: replace(sb.portfolios[1], collateral=sb.portfolios[1].collateral[:-1])}
    with pytest.raises(MarginError):
        book.patch({**good, **bad})
    _same_columns(book, Book(sb.params, list(sb.portfolios)))


def test_a_book_without_columns_cannot_be_patched() -> None:
    sb = synthetic.book(5, seed=1)
    book = Book(sb.params, list(sb.portfolios), columns=False)
    with pytest.raises(ValueError):
        book.patch({0: sb.portfolios[0]})


def test_position_of_another_instrument_is_a_new_shape() -> None:
    sb = synthetic.book(10, seed=4)
    book = Book(sb.params, list(sb.portfolios))
    a = next(a for a, pf in enumerate(sb.portfolios) if pf.positions)
    p = sb.portfolios[a].positions[0]
    moved = Position(p.underlying, p.kind, p.strike * 3, p.expiry + 7, p.quantity)
    assert book.patch({a: replace(sb.portfolios[a], positions=(moved,))}) == [a]
