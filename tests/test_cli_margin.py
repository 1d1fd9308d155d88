"""`keeper margin`: the CLI's figures are the engine's, its Greeks are sane, bad files are refused.

The expected figures are computed here through the engine API (margin.tools.loader +
margin.portfolio_margin.ScenarioTable), never hard-coded, and compared exactly (the JSON
carries exact WAD decimals). Greeks are compared with analytic float Black-Scholes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keeper.cli import app
from margin.params import DAY, WAD, YEAR
from margin.portfolio import CALL, FUTURE, MIN_SPOT, PUT, Market, Portfolio, Position
from margin.portfolio_margin import STATE_NAMES, ScenarioTable
from margin.tools.greeks import Greeks, position_greeks
from margin.tools.loader import load_portfolio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "portfolios"
# The CLI's examples, and the format's own example (docs/portfolio-format.md).
EXAMPLE_FILES = [*sorted(EXAMPLES.glob("*.json")), ROOT / "docs" / "examples" / "portfolio.json"]
HEDGED = EXAMPLES / "hedged_book.json"


def wei(s: str) -> int:
    """Exact WAD integer of a decimal string of the JSON output."""
    d = Decimal(s).scaleb(18)
    assert d == d.to_integral_value(), s
    return int(d)


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["margin", *map(str, args)])


def explain_json(path: Path) -> dict[str, Any]:
    r = run_cli("--json", path)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    return json.loads(r.stdout)


def test_examples_exist() -> None:
    names = {p.stem for p in EXAMPLE_FILES}
    assert {"hedged_book", "call_spread", "naked_short_call", "covered_call"} <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.parent.name + "/" + p.stem)
def test_json_matches_engine(path: Path) -> None:
    out = explain_json(path)
    pf = load_portfolio(path.read_text())
    table = ScenarioTable(pf.market, pf.params)
    res = table.full_check(pf.portfolio)

    assert wei(out["requirement"]) == res.requirement
    assert wei(out["maintenance_margin"]) == res.requirement
    assert wei(out["initial_margin"]) == res.initial_margin
    assert wei(out["equity"]) == res.equity
    assert wei(out["contingencies"]) == res.contingencies
    assert wei(out["correlation_credit"]) == res.credit
    assert out["state"] == STATE_NAMES[res.state]
    assert out["witness"] == res.witness
    assert [[wei(x) for x in row] for row in out["loss_matrix"]["losses"]] == res.scenario_losses
    assert out["loss_matrix"]["underlyings"] == list(pf.underlying_names)
    for u, entry in enumerate(out["underlyings"]):
        assert wei(entry["loss"]) == res.losses[u]
        assert entry["witness"]["index"] == res.witness[u]
        assert wei(entry["witness"]["loss"]) == res.losses[u]
        sc = table.scenarios[u][res.witness[u]]
        assert wei(entry["witness"]["move"]) == sc.move

    # Every scenario of the matrix as the engine's table holds it (exact, in wei).
    for u, entry in enumerate(out["underlyings"]):
        assert [
            (wei(s["move"]), s["vol_state"], wei(s["weight"]), wei(s["spot"]), wei(s["loss"]))
            for s in entry["scenarios"]
        ] == [
            (sc.move, ("down", "unchanged", "up")[sc.vol_state], sc.weight, spot, loss)
            for sc, spot, loss in zip(
                table.scenarios[u], table.shocked[u], res.scenario_losses[u], strict=True
            )
        ]

    # The witness reproduces the requirement through the verifier's cheap path.
    wit = table.witness_check(pf.portfolio, out["witness"])
    assert wit.requirement == wei(out["requirement"])

    # Isolated legs: each position alone, no collateral; then the collateral alone.
    zero = tuple(0 for _ in pf.portfolio.collateral)
    legs = [table.full_check(Portfolio((p,), zero)).requirement for p in pf.portfolio.positions]
    alone = table.full_check(Portfolio((), pf.portfolio.collateral)).requirement
    iso = out["isolated"]
    assert [wei(x) for x in iso["positions"]] == legs
    assert [wei(p["isolated_requirement"]) for p in out["positions"]] == legs
    assert wei(iso["collateral"]) == alone
    assert wei(iso["sum"]) == sum(legs) + alone
    assert wei(iso["capital_saved"]) == sum(legs) + alone - res.requirement

    for p, entry in zip(pf.portfolio.positions, out["positions"], strict=True):
        assert wei(entry["mark"]) == table.row(p).v0
        assert wei(entry["quantity"]) == p.quantity
    # Equity splits exactly into the positions' values and the collateral's.
    parts = [wei(p["value"]) for p in out["positions"]] + [
        wei(c["value"]) for c in out["collateral"]
    ]
    assert sum(parts) == res.equity


def test_hedged_book_saves_capital() -> None:
    out = explain_json(HEDGED)
    iso = out["isolated"]
    portfolio, total = wei(iso["portfolio"]), wei(iso["sum"])
    assert wei(iso["capital_saved"]) > 0
    # The put caps the future's downside: the pair needs well under half of its legs alone.
    assert portfolio < total // 2, (portfolio, total)
    # Each leg alone already needs more than a third of the pair's figure... and the future
    # alone more than the whole hedged book.
    future_leg = wei(iso["positions"][0])
    assert future_leg > portfolio

    table = run_cli(HEDGED)
    assert table.exit_code == 0, table.stderr
    text = table.stdout
    assert "Capital saved" in text and "capital saved" in text
    saved = Decimal(iso["capital_saved"])
    assert f"{saved:,.2f}" in text
    assert f"{Decimal(out['requirement']):,.2f}" in text


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.parent.name + "/" + p.stem)
def test_table_output(path: Path) -> None:
    out = explain_json(path)
    r = run_cli(path)
    assert r.exit_code == 0, r.stderr
    text = r.stdout
    assert r.stderr == ""
    for label in ("maintenance margin", "initial margin", "Scenario losses", "Positions"):
        assert label in text
    assert f"{Decimal(out['requirement']):,.2f}" in text
    assert f"{Decimal(out['initial_margin']):,.2f}" in text
    assert out["state"] in text
    for u in out["underlyings"]:
        # The witness cell is labelled with its scenario index in the grid.
        assert f"#{u['witness']['index']}" in text


# --- Greeks ---------------------------------------------------------------------------------


def _ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _bs(is_call: bool, s: float, k: float, t: float, v: float, r: float) -> float:
    if t <= 0:
        return max(s - k, 0.0) if is_call else max(k - s, 0.0)
    d1 = (math.log(s / k) + (r + v * v / 2) * t) / (v * math.sqrt(t))
    d2 = d1 - v * math.sqrt(t)
    if is_call:
        return s * _ncdf(d1) - k * math.exp(-r * t) * _ncdf(d2)
    return k * math.exp(-r * t) * _ncdf(-d2) - s * _ncdf(-d1)


def _analytic(is_call: bool, s: float, k: float, t: float, v: float, r: float) -> dict:
    """Float Black-Scholes Greeks per contract, in the units of margin/tools/greeks.py."""
    d1 = (math.log(s / k) + (r + v * v / 2) * t) / (v * math.sqrt(t))
    pdf = math.exp(-d1 * d1 / 2) / math.sqrt(2 * math.pi)
    return {
        "delta": _ncdf(d1) if is_call else _ncdf(d1) - 1,
        "gamma": pdf / (s * v * math.sqrt(t)),
        "vega": s * pdf * math.sqrt(t) / 100,  # per vol point
        "theta": _bs(is_call, s, k, t - DAY / YEAR, v, r) - _bs(is_call, s, k, t, v, r),
    }


def _position_cases() -> list[tuple[Path, int]]:
    cases = []
    for path in EXAMPLE_FILES:
        n = len(load_portfolio(path.read_text()).portfolio.positions)
        cases.extend((path, i) for i in range(n))
    return cases


@pytest.mark.parametrize("path,index", _position_cases(), ids=lambda x: getattr(x, "stem", x))
def test_position_greeks(path: Path, index: int) -> None:
    out = explain_json(path)
    pf = load_portfolio(path.read_text())
    pos = pf.portfolio.positions[index]
    g = out["positions"][index]["greeks"]
    q = pos.quantity / WAD
    if pos.kind == FUTURE:
        assert g == {"delta": q, "gamma": 0.0, "vega": 0.0, "theta": 0.0}
        return
    per_unit = {k: v / q for k, v in g.items()}
    if pos.kind == CALL:
        assert 0 < per_unit["delta"] < 1
    else:
        assert pos.kind == PUT
        assert -1 < per_unit["delta"] < 0
    assert per_unit["gamma"] >= 0
    assert per_unit["vega"] >= 0

    m = pf.market
    u = pos.underlying
    t = (pos.expiry - m.timestamp) / YEAR
    ref = _analytic(
        pos.kind == CALL, m.spots[u] / WAD, pos.strike / WAD, t, m.vols[u] / WAD, m.rate / WAD
    )
    assert per_unit["delta"] == pytest.approx(ref["delta"], abs=1e-5)
    assert per_unit["gamma"] == pytest.approx(ref["gamma"], rel=1e-4)
    assert per_unit["vega"] == pytest.approx(ref["vega"], rel=1e-4)
    assert per_unit["theta"] == pytest.approx(ref["theta"], rel=1e-4)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.parent.name + "/" + p.stem)
def test_underlying_greeks_are_sums(path: Path) -> None:
    """Per underlying: Σ position Greeks, plus the haircut balance of volatile collateral."""
    out = explain_json(path)
    pf = load_portfolio(path.read_text())
    for u, entry in enumerate(out["underlyings"]):
        mine = [g for g in out["positions"] if g["underlying"] == entry["name"]]
        for k in ("gamma", "vega", "theta"):
            assert entry["greeks"][k] == pytest.approx(sum(p["greeks"][k] for p in mine))
        coll = 0.0
        for a, bal in zip(pf.params.assets, pf.portfolio.collateral, strict=True):
            if a.underlying == u:
                coll += (bal * (WAD - a.haircut) // WAD if bal > 0 else bal) / WAD
        assert entry["collateral_delta"] == pytest.approx(coll)
        expected = sum(p["greeks"]["delta"] for p in mine) + coll
        assert entry["greeks"]["delta"] == pytest.approx(expected)


def test_covered_call_collateral_delta() -> None:
    out = explain_json(EXAMPLES / "covered_call.json")
    (eth,) = out["underlyings"]
    assert eth["collateral_delta"] == pytest.approx(9.0)  # 10 WETH at a 10% haircut
    assert 0 < eth["greeks"]["delta"] < 9  # short calls take part of it away


def test_greeks_edge_cases() -> None:
    """Expired options (intrinsic), a vol below the bump (one-sided vega), a spot at the
    pricer's floor (the bumped spot leaves the domain: None, not an error)."""
    t0 = 1_800_000_000
    m = Market(t0, 0, (3000 * WAD,), (6 * 10**17,))
    itm = position_greeks(Position(0, CALL, 2500 * WAD, t0, 2 * WAD), m)
    assert itm == Greeks(2.0, 0.0, 0.0, 0.0)
    otm = position_greeks(Position(0, PUT, 2500 * WAD, t0 - 1, 2 * WAD), m)
    assert otm == Greeks(0.0, 0.0, 0.0, 0.0)

    low_vol = Market(t0, 0, (3000 * WAD,), (5 * 10**14,))
    g = position_greeks(Position(0, CALL, 3000 * WAD, t0 + 30 * DAY, WAD), low_vol)
    assert g.vega is not None and g.vega > 0 and g.theta is not None and g.theta < 0

    floor = Market(t0, 0, (MIN_SPOT,), (6 * 10**17,))
    g = position_greeks(Position(0, CALL, MIN_SPOT, t0 + 30 * DAY, WAD), floor)
    assert g.delta is None and g.gamma is None
    assert g.vega is not None and g.vega > 0


# --- bad input --------------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    return json.loads(HEDGED.read_text())


def _mutated(fn) -> str:  # type: ignore[no-untyped-def]
    d = _doc()
    fn(d)
    return json.dumps(d)


def _set(path: tuple, value: Any):  # type: ignore[no-untyped-def]
    def fn(d: dict) -> None:
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value

    return fn


POS0 = ("portfolio", "positions", 0)
BAD_FILES: dict[str, tuple[str | bytes, str]] = {
    "not_json": ("{", "InvalidJSONError"),
    "binary": (b"\xff\xfe\x00\x01garbage", "InvalidJSONError"),
    "empty": ("", "InvalidJSONError"),
    "array": ("[]", "FieldTypeError"),
    "deep": ("[" * 100_000 + "]" * 100_000, "InvalidJSONError"),
    "deepish": ("[" * 40 + "]" * 40, "InvalidJSONError"),
    "huge_int_literal": ('{"version": 1' + "0" * 5000 + "}", "InvalidJSONError"),
    "version": (_mutated(_set(("version",), 2)), "UnsupportedVersionError"),
    "missing_market": (_mutated(lambda d: d.pop("market")), "MissingFieldError"),
    "unknown_field": (_mutated(_set((*POS0, "qty"), "1")), "UnknownFieldError"),
    "float_quantity": (_mutated(_set((*POS0, "quantity"), 1.5)), "FieldTypeError"),
    "bad_decimal": (_mutated(_set((*POS0, "quantity"), "ten")), "InvalidNumberError"),
    "too_precise": (_mutated(_set((*POS0, "quantity"), "1e-19")), "InvalidNumberError"),
    "huge_exponent": (_mutated(_set((*POS0, "quantity"), "1e999990")), "InvalidNumberError"),
    "overflow_exponent": (_mutated(_set((*POS0, "quantity"), "9e99999999")), "InvalidNumberError"),
    "tiny_exponent": (_mutated(_set((*POS0, "quantity"), "1e-99999999")), "InvalidNumberError"),
    "nan": (_mutated(_set((*POS0, "quantity"), "NaN")), "InvalidNumberError"),
    "unknown_kind": (_mutated(_set((*POS0, "kind"), "swap")), "UnknownNameError"),
    "unknown_underlying": (_mutated(_set((*POS0, "underlying"), "DOGE")), "UnknownNameError"),
    "engine_bound": (
        _mutated(_set(("risk", "underlyings", "ETH", "price_range"), "0.95")),
        "MarginError",
    ),
    "engine_quantity": (_mutated(_set((*POS0, "quantity"), "1e13")), "MarginError"),
    "engine_spot": (
        _mutated(_set(("market", "underlyings", 0, "spot"), "-3000")),
        "MarginError",
    ),
    "pricing_domain": (_mutated(_set(("market", "rate"), "0.9")), "MarginError"),
    # Funding accrues on perpetuals only (position 1 is a put).
    "funding_on_option": (
        _mutated(_set(("portfolio", "positions", 1, "funding"), "-3")),
        "InvalidFundingError",
    ),
    "funding_bad_number": (_mutated(_set((*POS0, "funding"), "x")), "InvalidNumberError"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_bad_file_named_error(tmp_path: Path, case: str, as_json: bool) -> None:
    content, name = BAD_FILES[case]
    path = tmp_path / "p.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    r = run_cli(*(["--json"] if as_json else []), path)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith(f"error: {name}: "), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_engine_error_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(BAD_FILES["engine_bound"][0])
    r = run_cli(path)
    assert "InvalidRiskParameter(0, 1)" in r.stderr
    assert "risk.underlyings.ETH.price_range" in r.stderr


def test_engine_error_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(BAD_FILES["engine_quantity"][0])
    r = run_cli(path)
    assert r.stderr.startswith("error: MarginError: rejected by the margin engine: ")
    assert f"QuantityOutOfRange(0, {10**13 * WAD}): at portfolio.positions[0]" in r.stderr


def test_number_like_names_are_names(tmp_path: Path) -> None:
    """The guard against absurd exponents looks at numbers only: "1e99" may name a market."""
    d = _doc()
    d["market"]["underlyings"][0]["name"] = "1e99"
    d["risk"]["underlyings"] = {"1e99": {"preset": "deribit"}}
    for p in d["portfolio"]["positions"]:
        p["underlying"] = "1e99"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    out = explain_json(path)
    assert out["requirement"] == explain_json(HEDGED)["requirement"]


def test_brackets_inside_strings_do_not_nest(tmp_path: Path) -> None:
    """The depth pre-scan skips string contents, escaped quotes included."""
    d = _doc()
    d["comment"] = '\\"' + "[{" * 50 + '\\"'
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    assert explain_json(path)["requirement"] == explain_json(HEDGED)["requirement"]


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    r = run_cli(tmp_path / "absent.json")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("error: PortfolioFileNotFound: ")
    r = run_cli(tmp_path)  # a directory
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("error: PortfolioFileUnreadable: ")
    big = tmp_path / "big.json"
    big.write_text(" " * (1 << 20) + "{}")
    r = run_cli(big)
    assert r.exit_code == 1 and r.stderr.startswith("error: PortfolioFileTooLarge: ")


def test_hostile_names_do_not_reach_the_terminal(tmp_path: Path) -> None:
    evil = "\x1b[31mEVIL[bold]"
    d = _doc()
    d["market"]["underlyings"][0]["name"] = evil
    d["risk"]["underlyings"] = {evil: {"preset": "deribit"}}
    for p in d["portfolio"]["positions"]:
        p["underlying"] = evil
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    r = run_cli(path)
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert "\\x1b[31mEVIL[bold]" in r.stdout  # escaped, and not taken as rich markup
    # ... and in an error message.
    d["portfolio"]["positions"][0]["kind"] = evil
    path.write_text(json.dumps(d))
    r = run_cli(path)
    assert r.exit_code == 1 and "\x1b" not in r.stderr


def test_installed_entry_point() -> None:
    """The real `keeper` script, in a subprocess: status codes and streams as a shell sees them."""
    keeper = Path(sys.executable).parent / "keeper"
    ok = subprocess.run([keeper, "margin", "--json", HEDGED], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["requirement"] == explain_json(HEDGED)["requirement"]
    bad = subprocess.run([keeper, "margin", "/nonexistent.json"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == "error: PortfolioFileNotFound: no such file: /nonexistent.json\n"


def test_perpetual_funding_is_shown_and_counts_in_equity(tmp_path: Path) -> None:
    """A perpetual's accrued funding (a position's ``funding``) is shown per position and
    counts in the settlement balance, as the clearing house counts it: equity moves by exactly
    the funding, the requirement not at all; the file written back reads the same."""
    from margin.tools.loader import dump_portfolio

    base = explain_json(HEDGED)
    path = tmp_path / "funded.json"
    path.write_text(_mutated(_set((*POS0, "funding"), "-12.5")))
    out = explain_json(path)
    assert out["positions"][0]["funding"] == "-12.5" and out["positions"][1]["funding"] == "0"
    assert wei(out["equity"]) == wei(base["equity"]) - 12_500_000_000_000_000_000
    assert out["requirement"] == base["requirement"]
    table = run_cli(path)
    assert table.exit_code == 0 and "funding" in table.stdout and "-12.50" in table.stdout
    pfile = load_portfolio(path.read_text())
    again = load_portfolio(
        json.dumps(
            dump_portfolio(
                pfile.market, pfile.params, pfile.portfolio, pfile.underlying_names,
                pfile.asset_names, pfile.funding,
            )
        )
    )  # fmt: skip
    assert again == pfile
