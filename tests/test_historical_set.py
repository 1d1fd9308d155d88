"""The historical scenario set: its builder (margin/risk/historical.py) on data with a known
answer, the committed file reproduced from the repository's data, the set in the model with
both presets, and the whole-book sweep with a set (exact results equal the engine's)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from margin.params import (
    DAY,
    STABLE,
    WAD,
    AssetParams,
    RiskParams,
    deribit_like,
    span_like,
)
from margin.portfolio import CALL, FUTURE, Market, Portfolio, Position
from margin.portfolio_margin import LIQUIDATABLE, ScenarioTable
from margin.risk.historical import (
    DATA_FILE_NAME,
    HistoricalSetError,
    SetRule,
    build_scenarios,
    daily_returns,
    historical_set,
    parse_closes,
    reference_vol_down,
    rescaled_moves,
    set_reference_vols,
)
from margin.risk.stress_days import DATA_FILE as STRESS_FILE
from margin.risk.stress_days import parse_stress_library
from margin.tools import synthetic
from margin.tools.book import Book
from margin.tools.sweep import MarketPrep, Sweep, exact_account

ROOT = Path(__file__).resolve().parent.parent
SET_FILE = ROOT / "margin" / "risk" / "data" / DATA_FILE_NAME
T0 = 1_800_000_000


def _closes(returns_pct: list[float], start: float = 100.0) -> list[tuple[date, int]]:
    d0 = date(2020, 1, 1)
    out = [(d0, int(start * WAD))]
    price = start * WAD
    for i, r in enumerate(returns_pct, start=1):
        price = price * (100 + r) // 100
        out.append((d0 + timedelta(days=i), int(price)))
    return out


def test_parse_closes_and_errors() -> None:
    text = "date,open,close\n2024-01-01,1,100.5\n2024-01-02,1,101\n"
    assert parse_closes(text) == [(date(2024, 1, 1), 1005 * 10**17), (date(2024, 1, 2), 101 * WAD)]
    with pytest.raises(HistoricalSetError, match="does not follow"):
        parse_closes("date,close\n2024-01-01,1\n2024-01-03,1\n")
    with pytest.raises(HistoricalSetError, match="positive"):
        parse_closes("date,close\n2024-01-01,0\n")
    with pytest.raises(HistoricalSetError, match="columns"):
        parse_closes("day,price\n2024-01-01,1\n")


def test_constant_volatility_leaves_returns_unchanged() -> None:
    """Returns alternating +-1%: the EWMA vol before every day equals the vol at the end, so
    filtered historical simulation keeps every move as it is (to the wei)."""
    closes = [(date(2020, 1, 1) + timedelta(days=i), 100 * WAD) for i in range(61)]
    rets = [(closes[i][0], (10**16 if i % 2 else -(10**16))) for i in range(1, 61)]
    moves = rescaled_moves(rets, SetRule(seed_days=20))
    assert len(moves) == 40
    assert all(moves[d] == r for d, r in rets[20:])


def test_rescaling_follows_the_volatility_ratio() -> None:
    """Quiet days (+-1%) before a stormy end (+-4%): a quiet day's move is scaled up toward the
    end's volatility (filtered historical simulation), a stormy day's stays near itself."""
    pct = [1.0 if i % 2 else -1.0 for i in range(60)] + [4.0 if i % 2 else -4.0 for i in range(60)]
    moves = rescaled_moves(daily_returns(_closes(pct)), SetRule(seed_days=20))
    days = sorted(moves)
    quiet, stormy = moves[days[10]], moves[days[-1]]
    assert abs(quiet) > 3 * 10**16  # a 1% day, rescaled by ~4x
    assert 35 * 10**15 < abs(stormy) < 45 * 10**15


def test_tails_are_the_extreme_days_in_date_order() -> None:
    pct = [0.1 * ((i * 7) % 11 - 5) for i in range(100)]
    pct[70], pct[80], pct[90] = -9.0, 8.0, -7.0
    rule = SetRule(seed_days=20, lookback=60, tail=2)
    sc = build_scenarios({"BTC": _closes(pct)}, ("BTC", "ETH"), (), rule)
    assert len(sc) == 4 and [s.day for s in sc] == sorted(s.day for s in sc)
    by_day = {s.day: s.moves for s in sc}
    d0 = date(2020, 1, 1)
    for i in (70, 80, 90):
        assert d0 + timedelta(days=i + 1) in by_day  # return i is the move into day i + 1
    assert all(m["ETH"] == 0 for m in by_day.values())  # no ETH series: 0 on historical days


def test_committed_set_is_reproducible() -> None:
    """margin/risk/data/historical_set.json is what the builder makes from the repository's
    data, byte for byte."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_historical_set.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_committed_set_in_the_model() -> None:
    """The committed set validates next to both presets; its last scenarios are the stress
    days (unscaled); a naked long BTC future needs the mean of its 8 worst joint losses, at
    least the COVID crash's 38.81% / 8."""
    text = SET_FILE.read_text()
    stress = parse_stress_library(STRESS_FILE.read_text())
    h = historical_set(text, ("BTC", "ETH"))
    assert h.stress_count == len(stress) and h.es_count == 8
    assert h.moves[-2 * len(stress)] == stress[0].moves["btc"].move
    spot = 60_000 * WAD
    for preset in (deribit_like, span_like):
        p = RiskParams((preset(), preset()), (AssetParams(0, STABLE),), 0, 12 * 10**17, h)
        table = ScenarioTable(Market(T0, 0, (spot, 3000 * WAD), (5 * 10**17, 6 * 10**17)), p)
        r = table.full_check(Portfolio((Position(0, FUTURE, 0, 0, WAD, spot),), (0,)))
        assert r.expected_shortfall >= 3881 * spot // 10**4 // 8
        assert len(r.witness) == 2 + 8
    with pytest.raises(HistoricalSetError, match="no moves for"):
        historical_set(text, ("BTC", "SOL"))
    swapped = historical_set(text, ("ETH", "BTC"))
    assert swapped.moves[1::2] == h.moves[0::2]


def _with_set(params: RiskParams) -> RiskParams:
    h = historical_set(SET_FILE.read_text(), ("BTC", "ETH"))
    n_u = len(params.underlyings)
    moves = tuple(
        m for i in range(0, len(h.moves), 2) for m in (h.moves[i], h.moves[i + 1]) * (n_u // 2)
    )
    stress = replace(h, moves=moves, fhs_scale=(3 * WAD,) * n_u)
    return replace(params, historical=stress)


def test_sweep_with_a_set_equals_the_engine() -> None:
    """With a historical set the whole-book sweep's exact path is the engine's full check, and
    the float pass keeps only what it still proves (liquidatable): every state is exact."""
    sb = synthetic.book(150, seed=4)
    params = _with_set(sb.params)
    table = ScenarioTable(sb.market, params)
    book = Book(params, sb.portfolios)
    prep = MarketPrep(book, table)
    sweep = Sweep(book, prep)
    states = sweep.classify()
    bounded = sweep.bounded_states()
    for a, pf in enumerate(sb.portfolios):
        r = table.full_check(pf)
        assert exact_account(prep, a).to_abi() == r.to_abi()
        assert states[a] == r.state
        assert bounded[a] in (-2, LIQUIDATABLE)
        if bounded[a] == LIQUIDATABLE:
            assert r.state == LIQUIDATABLE
    assert np.count_nonzero(states == LIQUIDATABLE) > 0
    assert any(table.full_check(pf).expected_shortfall > 0 for pf in sb.portfolios)


def test_es_only_raises_requirements() -> None:
    """Adding a set never lowers a requirement (MM = max(grid, ES) + contingencies)."""
    sb = synthetic.book(80, seed=9)
    grid = ScenarioTable(sb.market, sb.params)
    hist = ScenarioTable(sb.market, _with_set(sb.params))
    raised = 0
    for pf in sb.portfolios:
        g, h = grid.full_check(pf), hist.full_check(pf)
        assert h.requirement >= g.requirement and h.witness[:4] == g.witness
        raised += h.requirement > g.requirement
    assert raised > 0
    call = Position(0, CALL, sb.market.spots[0], T0 + 30 * DAY, WAD)
    assert hist.full_check(Portfolio((call,), (0, 0, 0))).requirement >= 0


def test_reference_vol_is_the_end_vol_annualised_and_committed() -> None:
    """Returns of ±1% every day: the EWMA daily variance stays 1e-4, so σ_ref = 1% · √365
    (rounded down, within the floors' few wei); the committed file carries the builder's
    value for BTC and 0 for ETH (no series)."""
    closes = _closes([1.0 if i % 2 else -1.0 for i in range(60)])
    ref = reference_vol_down(daily_returns(closes), SetRule())
    exact = 0.01 * 365**0.5 * WAD
    assert abs(ref - exact) < exact * 1e-9, (ref, exact)
    btc = parse_closes((ROOT / "data" / "btc_usd_daily.csv").read_text())
    committed = set_reference_vols(SET_FILE.read_text(), ["ETH", "BTC"])
    assert committed == (0, reference_vol_down(daily_returns(btc), SetRule()))
    with pytest.raises(HistoricalSetError):
        set_reference_vols(SET_FILE.read_text(), ["SOL"])
