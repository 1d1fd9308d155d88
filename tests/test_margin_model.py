"""Pure unit tests of the portfolio-margin model (margin/): grids, hedges, witness, loader."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from margin import errors
from margin.params import (
    DAY,
    VOL_DOWN,
    VOL_UNCHANGED,
    VOL_UP,
    WAD,
    AssetParams,
    ExtendedMove,
    RiskParams,
    deribit_like,
    span_like,
)
from margin.portfolio import CALL, FUTURE, PUT, Market, Portfolio, Position
from margin.portfolio_margin import (
    HEALTHY,
    LIQUIDATABLE,
    MARGIN_CALL,
    ScenarioTable,
    scenarios,
    vol_for_state,
    vol_shift_up,
)
from margin.tools import loader

T0 = 1_800_000_000
ETH = 3000 * WAD


def _table(preset=deribit_like, credit: int = 3 * 10**17) -> ScenarioTable:
    params = RiskParams(
        (preset(), span_like()),
        (AssetParams(0), AssetParams(10**17, 0)),
        credit,
        125 * 10**16,
    )
    market = Market(T0, 3 * 10**16, (ETH, 60_000 * WAD), (6 * 10**17, 5 * 10**17))
    return ScenarioTable(market, params)


def fut(q: int, u: int = 0, expiry: int = 0, entry: int = ETH) -> Position:
    return Position(u, FUTURE, 0, expiry, q * WAD, entry)


def opt(kind: int, strike: int, days: int, q: int, u: int = 0) -> Position:
    return Position(u, kind, strike * WAD, T0 + days * DAY, q * WAD, 0)


def req(table: ScenarioTable, *positions: Position, collateral=(0, 0)) -> int:
    return table.full_check(Portfolio(tuple(positions), tuple(collateral))).requirement


# --- scenario grids ------------------------------------------------------------------------


def test_span_grid_shape() -> None:
    u = span_like(price_range=15 * 10**16)
    sc = scenarios(u)
    assert u.regular_count == 21 and len(sc) == 23
    moves = sorted({s.move for s in sc[:21]})
    assert moves == [-15 * 10**16, -10 * 10**16, -5 * 10**16, 0, 5 * 10**16, 10**17, 15 * 10**16]
    for j, s in enumerate(sc[:21]):
        assert s.vol_state == j % 3 and s.weight == WAD and not s.extended
    assert [(s.move, s.vol_state, s.weight) for s in sc[21:]] == [
        (45 * 10**16, VOL_UNCHANGED, 35 * 10**16),
        (-45 * 10**16, VOL_UNCHANGED, 35 * 10**16),
    ]
    center = sc[u.center_index]
    assert center.move == 0 and center.vol_state == VOL_UNCHANGED


def test_deribit_grid_shape() -> None:
    u = deribit_like()
    sc = scenarios(u)
    assert len(sc) == 27 + 7
    moves = sorted({s.move for s in sc[:27]})
    assert moves == [k * 4 * 10**16 for k in range(-4, 5)]
    ext = sc[27:]
    assert [s.move for s in ext] == [p * 10**16 for p in (-66, -33, 50, 100, 200, 300, 500)]
    assert all(s.vol_state == VOL_UP and s.weight == 25 * 10**16 for s in ext)


def test_uneven_moves_floor() -> None:
    # R/3 is not exact: moves are floored, so they are symmetric within one wei.
    sc = scenarios(span_like(price_range=10**17))
    moves = sorted({s.move for s in sc[:21]})
    assert moves[2] == -(10**17 // 3) - 1 and moves[4] == 10**17 // 3


def test_vol_shift_bigger_for_short_dated() -> None:
    u = deribit_like()
    shifts = [vol_shift_up(u, t) for t in (0, 3600, DAY, 7 * DAY, 30 * DAY, 365 * DAY)]
    assert shifts[0] == shifts[1] == shifts[2]  # below T_min
    assert shifts[2] > shifts[3] > shifts[4] > shifts[5]
    assert abs(shifts[4] - u.vol_shift_base) <= 10  # T = T_ref: the base, within exp/ln error
    # down state floors at min(vol, floor); up state adds the shift
    assert vol_for_state(u, 5 * 10**16, 10**17, VOL_DOWN) == u.vol_floor
    assert vol_for_state(u, 0, 10**17, VOL_DOWN) == 0
    assert vol_for_state(u, 5 * 10**16, 10**17, VOL_UP) == 15 * 10**16


# --- hedges --------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", [deribit_like, span_like])
def test_hedged_books_need_far_less_than_their_legs(preset) -> None:
    t = _table(preset)
    cases = {
        "long future + long put": (fut(1), opt(PUT, 3000, 30, 1)),
        "call spread": (opt(CALL, 3000, 30, 1), opt(CALL, 3300, 30, -1)),
        "covered call": (fut(1), opt(CALL, 2800, 30, -1)),
    }
    for name, legs in cases.items():
        whole = req(t, *legs)
        isolated = sum(req(t, leg) for leg in legs)
        assert whole < isolated / 2, (name, whole, isolated)
        assert whole > 0, name


def test_offsetting_futures_only_pay_the_calendar_charge() -> None:
    t = _table()
    legs = (fut(2, expiry=T0 + 30 * DAY), fut(-2, expiry=T0 + 90 * DAY))
    r = t.full_check(Portfolio(legs, (0, 0)))
    assert r.losses == [0, 0]
    assert r.contingencies == 2 * 3000 * WAD * 5 // 1000  # 0.5% × spot × 2 contracts
    same = t.full_check(Portfolio((fut(2), fut(-2)), (0, 0)))
    assert same.requirement == 0  # same expiry nets to zero: nothing to charge


def test_short_option_charge_per_strike_nets_longs() -> None:
    t = _table()
    short = t.contingencies(Portfolio((opt(CALL, 3300, 30, -3),), (0, 0)))
    assert short == 3 * 3000 * WAD // 100  # 1% of spot per net short contract
    netted = t.contingencies(Portfolio((opt(CALL, 3300, 30, -3), opt(CALL, 3300, 60, 3)), (0, 0)))
    assert 0 < netted < short  # the strike nets to 0 short; the vega offset across expiries stays


def test_volatile_collateral_moves_with_its_underlying() -> None:
    t = _table()
    r = t.full_check(Portfolio((), (0, 10 * WAD)))
    # 10 ETH, 10% haircut: worth 27,000; worst regular move -16% and extended -66% at 25%
    assert r.equity == 27_000 * WAD
    assert r.losses[0] == max(27_000 * 16 // 100, 27_000 * 66 * 25 // 10_000) * WAD
    hedged = t.full_check(Portfolio((fut(-9),), (0, 10 * WAD)))
    assert hedged.requirement < r.requirement / 5


def test_credit_is_bounded_and_requirement_monotone() -> None:
    t = _table(credit=8 * 10**17)
    both = t.full_check(Portfolio((fut(1), fut(1, u=1, entry=60_000 * WAD)), (0, 0)))
    a, b = both.losses
    assert both.credit == (a + b - max(a, b)) * 8 // 10
    assert both.requirement >= max(a, b)
    with pytest.raises(errors.InvalidGlobalParameter):
        _table(credit=8 * 10**17 + 1)


def test_states() -> None:
    t = _table()
    pf = (opt(CALL, 3000, 30, -1),)
    mm = t.full_check(Portfolio(pf, (0, 0))).requirement
    im = t.full_check(Portfolio(pf, (0, 0))).initial_margin
    premium = -t.full_check(Portfolio(pf, (0, 0))).equity
    assert im == -((-mm * 125 * 10**16) // WAD)
    assert t.full_check(Portfolio(pf, (premium + im, 0))).state == HEALTHY
    assert t.full_check(Portfolio(pf, (premium + im - 1, 0))).state == MARGIN_CALL
    assert t.full_check(Portfolio(pf, (premium + mm - 1, 0))).state == LIQUIDATABLE


# --- witness -------------------------------------------------------------------------------

position_st = st.builds(
    Position,
    underlying=st.integers(0, 1),
    kind=st.sampled_from([FUTURE, CALL, PUT]),
    strike=st.integers(1000, 5000).map(lambda k: k * WAD),
    expiry=st.integers(T0 - DAY, T0 + 365 * DAY),
    quantity=st.integers(-(10**20), 10**20),
    entry_price=st.just(0),
)
TABLE = _table()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(position_st, max_size=8),
    st.integers(0, 10**22),
    st.lists(st.integers(0, 33), min_size=2, max_size=2),
)
def test_witness_never_exceeds_full_and_best_reproduces(positions, cash, witness) -> None:
    pos = tuple(
        p if p.underlying == 0 else Position(1, p.kind, p.strike * 20, *_tail(p)) for p in positions
    )
    pf = Portfolio(pos, (cash, 0))
    full = TABLE.full_check(pf)
    best = TABLE.witness_check(pf, full.witness)
    assert best.requirement == full.requirement and best.losses == full.losses
    assert best.equity == full.equity and best.state == full.state
    w = [witness[0], witness[1] % 23]
    other = TABLE.witness_check(pf, w)
    assert other.requirement <= full.requirement
    assert all(x <= y for x, y in zip(other.losses, full.losses, strict=True))
    assert other.state <= full.state  # a wrong witness never makes an account look worse


def _tail(p: Position) -> tuple[int, int, int]:
    return (p.expiry, p.quantity, p.entry_price)


def test_witness_errors() -> None:
    pf = Portfolio((fut(1),), (0, 0))
    with pytest.raises(errors.WitnessLengthMismatch):
        TABLE.witness_check(pf, [0])
    with pytest.raises(errors.WitnessOutOfRange) as e:
        TABLE.witness_check(pf, [34, 0])
    assert e.value.args_ == (0, 34, 34)


def test_validation_errors() -> None:
    with pytest.raises(errors.TooManyPositions):
        TABLE.full_check(Portfolio(tuple(fut(1) for _ in range(41)), (0, 0)))
    with pytest.raises(errors.CollateralLengthMismatch):
        TABLE.full_check(Portfolio((), (0,)))
    with pytest.raises(errors.UnknownUnderlying):
        TABLE.full_check(Portfolio((fut(1, u=2),), (0, 0)))
    with pytest.raises(errors.InvalidOptionStrike):
        TABLE.full_check(Portfolio((Position(0, PUT, 0, T0, WAD),), (0, 0)))
    with pytest.raises(errors.QuantityOutOfRange):
        TABLE.full_check(Portfolio((Position(0, FUTURE, 0, 0, 10**30 + 1),), (0, 0)))
    bad = RiskParams((span_like(extended=(ExtendedMove(-WAD, 1, WAD),)),), (), 0, 2 * WAD)
    with pytest.raises(errors.InvalidRiskParameter) as e:
        ScenarioTable(Market(T0, 0, (ETH,), (WAD,)), bad)
    assert e.value.args_ == (0, 9)


# --- loader --------------------------------------------------------------------------------

DOC = {
    "version": 1,
    "market": {
        "timestamp": T0,
        "rate": "0.03",
        "underlyings": [{"name": "ETH", "spot": "3000", "vol": "0.6"}],
    },
    "risk": {
        "underlyings": {"ETH": {"preset": "deribit", "price_range": "0.15"}},
        "assets": [
            {"name": "USDC", "haircut": "0"},
            {"name": "WETH", "haircut": "0.1", "underlying": "ETH"},
        ],
        "correlation_credit": "0.3",
        "im_factor": "1.25",
    },
    "portfolio": {
        "positions": [
            {"underlying": "ETH", "kind": "future", "quantity": "1", "entry_price": "2950.5"},
            {
                "underlying": "ETH",
                "kind": "put",
                "strike": "2800",
                "expiry": T0 + 86400,
                "quantity": "1",
            },
        ],
        "collateral": {"USDC": "1000.000001"},
    },
}


def test_loader_roundtrip() -> None:
    f = loader.load_portfolio(json.dumps(DOC))
    assert f.market.spots == (ETH,) and f.market.rate == 3 * 10**16
    assert f.params.underlyings[0] == deribit_like(price_range=15 * 10**16)
    assert f.params.assets[1] == AssetParams(10**17, 0)
    assert f.portfolio.positions[0] == Position(0, FUTURE, 0, 0, WAD, 2950_5 * 10**17)
    assert f.portfolio.collateral == (1000_000_001 * 10**12, 0)
    r = ScenarioTable(f.market, f.params).full_check(f.portfolio)
    assert r.requirement > 0


def _mutate(path: list, value) -> dict:
    doc = json.loads(json.dumps(DOC))
    node = doc
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "error", "where"),
    [
        (["market", "rate"], 0.03, loader.FieldTypeError, "market.rate"),
        (["market", "timestamp"], _DELETE, loader.MissingFieldError, "market.timestamp"),
        (["market", "spotz"], 1, loader.UnknownFieldError, "market.spotz"),
        (["version"], 2, loader.UnsupportedVersionError, "version"),
        (
            ["portfolio", "positions", 1, "kind"],
            "swap",
            loader.UnknownNameError,
            "portfolio.positions[1].kind",
        ),
        (
            ["portfolio", "positions", 1, "strike"],
            "1e-30",
            loader.InvalidNumberError,
            "portfolio.positions[1].strike",
        ),
        (
            ["portfolio", "positions", 1, "strike"],
            "abc",
            loader.InvalidNumberError,
            "portfolio.positions[1].strike",
        ),
        (
            ["portfolio", "positions", 0, "underlying"],
            "BTC",
            loader.UnknownNameError,
            "portfolio.positions[0].underlying",
        ),
        (
            ["portfolio", "collateral", "DAI"],
            "1",
            loader.UnknownNameError,
            "portfolio.collateral.DAI",
        ),
        (
            ["risk", "underlyings", "ETH", "preset"],
            "cme",
            loader.UnknownNameError,
            "risk.underlyings.ETH.preset",
        ),
        (
            ["risk", "underlyings", "ETH"],
            {"price_range": "0.1"},
            loader.MissingFieldError,
            "risk.underlyings.ETH.move_steps",
        ),
        (["portfolio", "positions"], {}, loader.FieldTypeError, "portfolio.positions"),
        (["market", "rate"], "1_0", loader.InvalidNumberError, "market.rate"),
        (["market", "rate"], "١٢", loader.InvalidNumberError, "market.rate"),
        (["market", "rate"], " 1", loader.InvalidNumberError, "market.rate"),
        (["market", "rate"], "9e99999999", loader.InvalidNumberError, "market.rate"),
        (["market", "rate"], "1e-99999999", loader.InvalidNumberError, "market.rate"),
        (["market", "rate"], "NaN", loader.InvalidNumberError, "market.rate"),
        (["market", "rate"], "Infinity", loader.InvalidNumberError, "market.rate"),
        (["market", "rate"], "1" * 300, loader.InvalidNumberError, "market.rate"),
        (
            ["portfolio", "positions", 0, "expiry"],
            -1,
            loader.InvalidNumberError,
            "portfolio.positions[0].expiry",
        ),
    ],
)
def test_loader_named_errors(path, value, error, where) -> None:
    with pytest.raises(error) as e:
        loader.load_portfolio(_mutate(path, value))
    assert e.value.path == where
    assert where in str(e.value)


def test_loader_not_json() -> None:
    with pytest.raises(loader.InvalidJSONError):
        loader.load_portfolio("{not json")
    with pytest.raises(loader.FieldTypeError):
        loader.load_portfolio("[]")


def test_documented_example_loads_and_evaluates() -> None:
    """docs/examples/portfolio.json (the example of docs/portfolio-format.md) stays valid."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "examples" / "portfolio.json").read_text()
    assert text.strip() in (root / "docs" / "portfolio-format.md").read_text()
    f = loader.load_portfolio(text)
    assert f.underlying_names == ("ETH", "BTC") and f.asset_names == ("USDC", "WETH")
    r = ScenarioTable(f.market, f.params).full_check(f.portfolio)
    assert r.requirement > 0 and len(r.witness) == 2


def test_explain_carries_the_matrix_and_witness() -> None:
    from decimal import Decimal

    from margin.tools.explain import explain
    from margin.tools.loader import PortfolioFile

    pf = Portfolio((opt(CALL, 3000, 30, -1), fut(1, u=1, entry=60_000 * WAD)), (10**4 * WAD, 0))
    names = tuple(f"U{u}" for u in range(len(TABLE.params.underlyings)))
    assets = tuple(f"A{k}" for k in range(len(TABLE.params.assets)))
    pfile = PortfolioFile(TABLE.market, TABLE.params, pf, names, assets)
    out = explain(pfile, TABLE)
    assert explain(pfile) == out  # a shared table and a private one give the same report

    def wei(s: str) -> int:
        return int(Decimal(s).scaleb(18))

    full = TABLE.full_check(pf)
    assert wei(out["requirement"]) == full.requirement and out["witness"] == list(full.witness)
    u0 = out["underlyings"][0]
    assert len(u0["scenarios"]) == 34
    assert (
        wei(u0["scenarios"][u0["witness"]["index"]]["loss"])
        == wei(u0["loss"])
        == max(wei(s["loss"]) for s in u0["scenarios"])
    )
    assert json.loads(json.dumps(out)) == out  # plain JSON data


@settings(max_examples=100, deadline=None)
@given(st.integers(-(10**40), 10**40))
def test_wad_decimal_roundtrip(x: int) -> None:
    assert loader._wad(loader.wad_to_decimal(x), "x") == x


@settings(max_examples=40, deadline=None)
@given(st.lists(position_st, max_size=6), st.integers(-(10**22), 10**22))
def test_dump_then_load_is_identity(positions, cash) -> None:
    # Underlying 0 only (the document has one); a future's strike means nothing and is not written.
    pos = tuple(
        Position(0, p.kind, 0 if p.kind == FUTURE else p.strike, *_tail(p))
        for p in positions
        if p.underlying == 0
    )
    f = loader.load_portfolio(DOC)
    pf = Portfolio(pos, (cash, 3 * WAD))
    doc = loader.dump_portfolio(f.market, f.params, pf, f.underlying_names, f.asset_names)
    back = loader.load_portfolio(json.dumps(doc))
    assert back.market == f.market and back.params == f.params and back.portfolio == pf
