"""The stress library: every BTC figure recomputed from data/btc_usd_daily.csv, every other
figure cited, malformed libraries rejected by name, and the moves usable in a grid."""

from __future__ import annotations

import copy
import csv
import json
from dataclasses import replace
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest

from margin.params import VOL_UP, RiskParams, span_like
from margin.portfolio import FUTURE, Market, Portfolio, Position
from margin.portfolio_margin import full_check, validate_params
from margin.risk.stress_days import (
    DATA_FILE,
    DuplicateStressScenario,
    InvalidStressJSON,
    InvalidStressValue,
    MissingStressField,
    UnsourcedStressFigure,
    as_extended_moves,
    parse_stress_library,
)

ROOT = Path(__file__).resolve().parents[1]
WAD = 10**18
NAMES = {
    "black_thursday_2020": "2020-03-12",
    "luna_ust_2022": "2022-05-12",
    "ftx_2022": "2022-11-09",
    "yen_carry_unwind_2024": "2024-08-05",
    "tariff_liquidations_2025": "2025-10-10",
}


def doc() -> dict[str, Any]:
    return json.loads(DATA_FILE.read_text())


def btc_rows() -> dict[str, dict[str, str]]:
    with (ROOT / "data" / "btc_usd_daily.csv").open() as f:
        return {r["date"]: r for r in csv.DictReader(f)}


def rounded(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.0001"), ROUND_HALF_EVEN)


def test_the_library_holds_the_named_days() -> None:
    lib = parse_stress_library(DATA_FILE.read_text())
    assert {s.name: s.date.isoformat() for s in lib} == NAMES


def test_btc_figures_recomputed_from_the_csv() -> None:
    rows = btc_rows()
    dates = sorted(rows)
    computed = 0
    for s in parse_stress_library(DATA_FILE.read_text()):
        m = s.moves["btc"]
        assert m.source is not None and m.window is not None
        if m.source.kind != "csv":
            # Only a day the CSV does not cover may take its BTC figure from a citation.
            assert m.window[1].isoformat() > dates[-1]
            continue
        assert m.source.reference == "data/btc_usd_daily.csv"
        frm, to = (d.isoformat() for d in m.window)
        a, b = Decimal(rows[frm]["close"]), Decimal(rows[to]["close"])
        inside = [d for d in dates if frm < d <= to]
        low = min(Decimal(rows[d]["low"]) for d in inside)
        assert (m.from_price, m.to_price, m.low_price) == (str(a), str(b), str(low))
        assert m.move == int(rounded(b / a - 1) * WAD)
        assert m.intraday_move == int(rounded(low / a - 1) * WAD)
        computed += 1
    assert computed == 4
    # The figure data/README.md quotes for 2020-03-12.
    bt = parse_stress_library(DATA_FILE.read_text())[0].moves["btc"]
    assert bt.move == -388_100_000_000_000_000


def test_every_other_figure_is_cited_with_its_measure() -> None:
    for s in parse_stress_library(DATA_FILE.read_text()):
        for asset, m in s.moves.items():
            if m.move is None:
                assert m.unavailable_reason
                continue
            assert m.source is not None and m.measure
            if m.source.kind == "citation":
                assert m.source.reference.startswith("https://"), (s.name, asset)
                assert m.source.states
    # Every ETH figure is a crash of more than 10%.
    for s in parse_stress_library(DATA_FILE.read_text()):
        move = s.moves["eth"].move
        assert move is not None and move < -WAD // 10


def _mutated(path: list[Any], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc())
    node: Any = d
    for k in path[:-1]:
        node = node[k]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "error", "where"),
    [
        (["scenarios", 0, "eth", "move"], None, UnsourcedStressFigure, "scenarios[0].eth"),
        (["scenarios", 0, "eth", "source"], KeyError, MissingStressField, "eth.source"),
        (["scenarios", 1, "eth", "source", "url"], "http://x", UnsourcedStressFigure, "url"),
        (["scenarios", 1, "btc", "move"], "-1.5", InvalidStressValue, "btc.move"),
        (["scenarios", 1, "btc", "move"], -0.2, InvalidStressValue, "btc.move"),
        (["scenarios", 2, "eth", "measure"], "vibes", InvalidStressValue, "measure"),
        (["scenarios", 2, "date"], "2022-13-01", InvalidStressValue, "scenarios[2].date"),
        (["scenarios", 3, "name"], "ftx_2022", DuplicateStressScenario, "scenarios[3].name"),
        (["version"], 2, InvalidStressValue, "version"),
    ],
)
def test_malformed_libraries_are_rejected_by_name(
    path: list[Any], value: Any, error: type[Exception], where: str
) -> None:
    with pytest.raises(error, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_stress_library(_mutated(path, value))
    with pytest.raises(InvalidStressJSON):
        parse_stress_library("{")


def test_a_null_figure_with_its_reason_is_accepted() -> None:
    d = _mutated(["scenarios", 0, "eth"], {"move": None, "unavailable_reason": "no source"})
    lib = parse_stress_library(d)
    assert lib[0].moves["eth"].move is None
    assert len(as_extended_moves(lib, "eth", VOL_UP, WAD)) == len(NAMES) - 1


def test_stress_days_as_extended_moves_raise_a_long_books_requirement() -> None:
    lib = parse_stress_library(DATA_FILE.read_text())
    base = span_like(price_range=5 * 10**16)
    stressed = replace(base, extended=base.extended + as_extended_moves(lib, "btc", VOL_UP, WAD))
    book = Portfolio((Position(0, FUTURE, 0, 0, WAD),), ())
    market = Market(1_700_000_000, 0, (60_000 * WAD,), (WAD // 2,))
    plain = full_check(book, market, RiskParams((base,), (), 0, 12 * 10**17))
    params = RiskParams((stressed,), (), 0, 12 * 10**17)
    validate_params(params)
    hit = full_check(book, market, params)
    # Long one future, counted in full: the worst stress day (-38.81%) sets the requirement.
    assert plain.requirement < hit.requirement
    assert hit.requirement == 388_100_000_000_000_000 * 60_000
