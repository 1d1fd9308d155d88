"""Whole-book sweeps (margin/tools/sweep.py) against the exact engine, account by account.

* the packed-row exact engine equals ScenarioTable.full_check to the wei (matrix and witness
  included), and so does the forked exact sweep;
* the bounded float classification equals the exact state of every account: random books
  (Hypothesis: every magnitude the bounds allow, extreme spots, expired options, debts,
  volatile collateral, any credit and IM factor) and adversarial books whose equity sits at
  MM and IM exactly and one wei either side (the bound must send those to the exact engine);
* instruments whose pricing fails make their accounts fail with the verifier's error;
* incremental re-margin after one price move equals a fresh sweep.
No timing assertions: speed is measured by bench/run_all.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from margin.errors import MarginError
from margin.params import (
    DAY,
    STABLE,
    WAD,
    YEAR,
    AssetParams,
    ExtendedMove,
    RiskParams,
    deribit_like,
    span_like,
)
from margin.portfolio import (
    CALL,
    FUTURE,
    MAX_COLLATERAL,
    MAX_POSITIONS,
    MAX_PRICE,
    MAX_QUANTITY,
    PUT,
    Market,
    Portfolio,
    Position,
)
from margin.portfolio_margin import ScenarioTable
from margin.tools import synthetic
from margin.tools.book import Book
from margin.tools.sweep import (
    ERROR,
    UNDECIDED,
    IncrementalMismatch,
    MarketPrep,
    Sweep,
    exact_account,
    exact_sweep,
    reprice_table,
)

T0 = 1_800_000_000


def _log_int(rng: random.Random, lo: int, hi: int) -> int:
    """An integer in [lo, hi] with a log-uniform magnitude (every order of size)."""
    m = int(10 ** rng.uniform(math.log10(lo), math.log10(hi)))
    m ^= rng.getrandbits(max(0, m.bit_length() - 2))  # full-width low bits, not round numbers
    return max(lo, min(hi, m))


def random_case(seed: int, n_accounts: int = 25) -> tuple[Market, RiskParams, list[Portfolio]]:
    rng = random.Random(seed)
    n_u = rng.randint(1, 3)
    unders = []
    for _ in range(n_u):
        base = rng.choice((span_like, deribit_like))(rng.randint(2, 30) * 10**16)
        unders.append(
            replace(
                base,
                short_option_charge=rng.choice((0, rng.randint(0, WAD))),
                calendar_charge=rng.choice((0, rng.randint(0, WAD // 10))),
                vega_charge=rng.choice((0, rng.randint(0, WAD // 10))),
                extended=base.extended
                + (
                    (ExtendedMove(rng.randint(-99, 300) * 10**16, rng.randint(0, 2), 0),)
                    if rng.random() < 0.2
                    else ()
                ),
            )
        )
    assets = [AssetParams(0, STABLE)]
    for _ in range(rng.randint(0, 3)):
        und = rng.choice((STABLE, rng.randrange(n_u)))
        assets.append(AssetParams(rng.randint(0, WAD), und))
    params = RiskParams(
        tuple(unders),
        tuple(assets),
        rng.choice((0, 8 * 10**17, rng.randint(0, 8 * 10**17))),
        rng.choice((WAD + 1, 10 * WAD, rng.randint(WAD + 1, 3 * WAD))),
    )
    spots = tuple(
        rng.choice((_log_int(rng, 10**10, MAX_PRICE // 20), rng.randint(1, 100_000) * WAD))
        for _ in range(n_u)
    )
    vols = tuple(rng.choice((rng.randint(5, 400) * 10**16, 0)) for _ in range(n_u))
    market = Market(T0, rng.randint(0, 10**17), spots, vols)
    pool = []
    for _ in range(rng.randint(1, 30)):
        u = rng.randrange(n_u)
        kind = rng.choice((FUTURE, CALL, PUT))
        strike = max(1, spots[u] * rng.randint(30, 200) // 100)
        expiry = rng.choice((0, T0 - DAY, T0 + rng.randint(1, 2 * YEAR), T0 + rng.randint(60, DAY)))
        pool.append((u, kind, strike, expiry))
    portfolios = []
    for _ in range(n_accounts):
        n_pos = rng.choice((0, 1, 2, rng.randint(1, 12), MAX_POSITIONS))
        positions = []
        for _ in range(n_pos):
            u, kind, strike, expiry = rng.choice(pool)
            q = _log_int(rng, 1, MAX_QUANTITY) * rng.choice((1, -1))
            entry = rng.choice((0, rng.randint(-MAX_PRICE, MAX_PRICE), spots[u]))
            positions.append(Position(u, kind, strike, expiry, q, entry))
        coll = tuple(
            rng.choice((0, _log_int(rng, 1, MAX_COLLATERAL))) * rng.choice((1, 1, -1))
            for _ in assets
        )
        portfolios.append(Portfolio(tuple(positions), coll))
    return market, params, portfolios


def _exact_states(table: ScenarioTable, portfolios: list[Portfolio]) -> list[int]:
    out = []
    for pf in portfolios:
        try:
            out.append(table.full_check(pf).state)
        except MarginError:
            out.append(ERROR)
    return out


def _check_case(market: Market, params: RiskParams, portfolios: list[Portfolio]) -> Sweep:
    table = ScenarioTable(market, params)
    book = Book(params, portfolios)
    prep = MarketPrep(book, table)
    for a, pf in enumerate(portfolios):
        try:
            want = table.full_check(pf)
        except MarginError as e:
            try:
                exact_account(prep, a)
            except MarginError as got:
                assert type(got) is type(e) and got.args == e.args
                continue
            raise AssertionError("exact engine did not fail like full_check") from e
        assert exact_account(prep, a, want_matrix=True) == want
        assert exact_account(prep, a).to_abi() == want.to_abi()
    sweep = Sweep(book, prep)
    states = sweep.classify()
    assert states.tolist() == _exact_states(table, portfolios)
    assert UNDECIDED not in states.tolist()
    return sweep


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_random_books_classify_exactly(seed: int) -> None:
    _check_case(*random_case(seed))


def _at_boundaries(table: ScenarioTable, portfolios: list[Portfolio]) -> list[Portfolio]:
    """Each portfolio re-funded (stable asset 0, no haircut) so its equity is MM or IM
    exactly and one wei either side: the float bound can never decide these."""
    out = []
    for pf in portfolios:
        try:
            r = table.full_check(pf)
        except MarginError:
            continue
        base = r.equity - pf.collateral[0]
        for target in (r.requirement, r.initial_margin):
            for d in (-1, 0, 1):
                bal = target + d - base
                if -MAX_COLLATERAL <= bal <= MAX_COLLATERAL:
                    out.append(Portfolio(pf.positions, (bal, *pf.collateral[1:])))
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_boundary_books_go_exact(seed: int) -> None:
    market, params, portfolios = random_case(seed, n_accounts=6)
    edge = _at_boundaries(ScenarioTable(market, params), portfolios)
    sweep = _check_case(market, params, edge)
    # Books with positions carry a bound of at least 2 wei: floats never settle them here
    # (a book without positions has an exactly known requirement and may be settled).
    for a, pf in enumerate(edge):
        if pf.positions:
            assert a in sweep.exact or a in sweep.errors


def test_synthetic_book_and_its_boundaries() -> None:
    sb = synthetic.book(400, seed=3)
    table = ScenarioTable(sb.market, sb.params)
    sweep = _check_case(sb.market, sb.params, sb.portfolios)
    assert {0, 1, 2} <= set(sweep.states.tolist())  # the book exercises every state
    edge = _at_boundaries(table, sb.portfolios[:40])
    edge_sweep = _check_case(sb.market, sb.params, edge)
    assert edge_sweep.decided_by_float == 0  # all within a wei of a threshold


def test_pricing_errors_fail_like_the_verifier() -> None:
    # A shocked spot above the pricing bound (1e12): +500% on a spot of 5e11 fails the
    # option's scenario pricing; futures of the same underlying still price.
    params = RiskParams((deribit_like(),), (AssetParams(0, STABLE),), 0, 12 * 10**17)
    market = Market(T0, 0, (MAX_PRICE // 2,), (5 * 10**17,))
    opt = Position(0, CALL, MAX_PRICE // 2, T0 + 30 * DAY, WAD)
    fut = Position(0, FUTURE, 0, 0, WAD)
    books = [Portfolio((fut,), (10**30,)), Portfolio((fut, opt), (10**30,))]
    sweep = _check_case(market, params, books)
    assert sweep.states.tolist()[1] == ERROR and 1 in sweep.errors


def test_exact_sweep_equals_full_check() -> None:
    sb = synthetic.book(300, seed=11)
    table = ScenarioTable(sb.market, sb.params)
    prep = MarketPrep(Book(sb.params, sb.portfolios), table)
    got = exact_sweep(prep, workers=2, chunk=64)
    assert [g[0] for g in got] == list(range(300))
    for (a, equity, mm, im, state, witness), pf in zip(got, sb.portfolios, strict=True):
        r = table.full_check(pf)
        assert (equity, mm, im, state, witness) == (
            r.equity,
            r.requirement,
            r.initial_margin,
            r.state,
            r.witness,
        ), a


def test_incremental_equals_fresh_sweep() -> None:
    sb = synthetic.book(600, seed=5)
    book = Book(sb.params, sb.portfolios)
    table = ScenarioTable(sb.market, sb.params)
    sweep = Sweep(book, MarketPrep(book, table))
    sweep.classify()
    for u, factor in ((0, 90), (2, 112), (0, 80)):
        spots = list(sweep.prep.table.market.spots)
        spots[u] = spots[u] * factor // 100
        market = replace(sweep.prep.table.market, spots=tuple(spots))
        new_table = ScenarioTable(market, sb.params)
        kept = reprice_table(sweep.prep.table, market)  # other underlyings' rows reused
        states = sweep.remargin(MarketPrep(book, kept), [u]).copy()
        fresh = Sweep(book, MarketPrep(book, new_table))
        assert states.tolist() == fresh.classify().tolist()
        assert states.tolist() == _exact_states(new_table, sb.portfolios)
        for a, res in sweep.exact.items():
            assert res.to_abi() == new_table.full_check(sb.portfolios[a]).to_abi()
    # A market that moved elsewhere too (here: the time) is refused, nothing changed.
    before = sweep.states.copy()
    later = replace(sweep.prep.table.market, timestamp=sweep.prep.table.market.timestamp + 60)
    with pytest.raises(IncrementalMismatch):
        sweep.remargin(MarketPrep(book, ScenarioTable(later, sb.params)), [0])
    assert (sweep.states == before).all()
