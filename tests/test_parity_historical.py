"""Parity of the historical model and the ES witness: margin.portfolio_margin vs
PortfolioMargin.sol on anvil (MarginHarness: the library, the full check behind its forward).

Every Hypothesis example is one market state with a random historical set (1-3 underlyings,
S up to the gas bound, vol moves or none, stress days, FHS scales from 0 to the bound,
k from 1 to MAX_ES_COUNT) and a batch of portfolios from tests/test_parity_margin.py's
generator. Per portfolio: fullCheck, then witnessCheck with the full check's witness, with
its grid part only, with random k increasing ES indices (a "wrong" witness), and with a
malformed one (wrong length, an index out of range, indices not increasing). Results are
compared to the wei, reverts byte for byte; then the soundness of the witness is checked on
the verifier's own answers: a wrong witness never gives a larger requirement, a worse state or
a larger ES than the full check.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3.contract import Contract

from keeper.artifacts import deploy
from margin.params import (
    MAX_ES_COUNT,
    MAX_EXTENDED_MOVE,
    MAX_FHS_SCALE,
    MAX_SCENARIOS,
    MIN_EXTENDED_MOVE,
    WAD,
    HistoricalSet,
    RiskParams,
)
from margin.portfolio import Market, Portfolio
from margin.portfolio_margin import ScenarioTable
from tests.parity import assert_parity, batch_call, outcome_kind, python_outcome
from tests.test_parity_margin import (
    EDGE_PORTFOLIOS,
    _abi,
    _edge_market,
    _edge_params,
    _near_boundary,
    _pool,
    _portfolio,
    _py_full,
    _py_witness,
    _table,
    market_params,
)

pytestmark = pytest.mark.anvil

PORTFOLIOS_PER_EXAMPLE = 30
EXAMPLES = 60  # 1,800 portfolios, each checked fully and with four witnesses
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def harness(w3, contracts_built) -> Contract:  # type: ignore[no-untyped-def]
    return deploy(w3, "MarginHarness")


def random_set(rng: random.Random, params: RiskParams) -> HistoricalSet:
    """A valid historical set for params: S up to the gas bound, moves mostly ordinary, one in
    twenty at a bound; vol moves half the time; FHS scales from 0 to MAX_FHS_SCALE."""
    n_u = len(params.underlyings)
    s_max = MAX_SCENARIOS - max(u.scenario_count for u in params.underlyings)
    s = rng.choice([1, 2, 5, 10, 30, rng.randrange(1, s_max + 1), s_max])

    def move() -> int:
        if rng.random() < 0.05:
            return rng.choice([MIN_EXTENDED_MOVE, MAX_EXTENDED_MOVE, 0])
        return (
            int(rng.gauss(0, 0.08) * WAD) if rng.random() < 0.8 else rng.randrange(-6, 6) * 10**17
        )

    moves = tuple(max(MIN_EXTENDED_MOVE, min(MAX_EXTENDED_MOVE, move())) for _ in range(s * n_u))
    vol_moves: tuple[int, ...] = ()
    if rng.random() < 0.5:
        vol_moves = tuple(max(MIN_EXTENDED_MOVE, min(MAX_EXTENDED_MOVE, move())) for _ in moves)
    scale = tuple(
        rng.choice([0, MAX_FHS_SCALE, WAD])
        if rng.random() < 0.1
        else rng.randrange(WAD // 4, 3 * WAD)
        for _ in range(n_u)
    )
    return HistoricalSet(
        moves=moves,
        vol_moves=vol_moves,
        stress_count=rng.randrange(0, s + 1),
        fhs_scale=scale,
        es_count=rng.randrange(1, min(s, MAX_ES_COUNT) + 1),
    )


def _witnesses(rng: random.Random, params: RiskParams, best: list[int]) -> list[list[int]]:
    """The full check's witness, its grid part, a random valid one and a malformed one."""
    n_u = len(params.underlyings)
    s = params.historical_count
    k = params.historical.es_count
    grid = [rng.randrange(u.scenario_count) for u in params.underlyings]
    if k == 0 or s < k:  # (an invalid set: the parameters' error comes first)
        return [best, best[:n_u], grid, [*grid, 0]]
    wrong = grid + sorted(rng.sample(range(s), k))
    bad = list(wrong)
    kind = rng.randrange(5)
    if kind == 0:
        bad = bad[: n_u + k - 1] if k > 1 else [*bad, 0]  # neither nU nor nU + k long
    elif kind == 1:
        bad[n_u + rng.randrange(k)] = s + rng.randrange(3)  # out of range
    elif kind == 2 and k > 1:
        i = n_u + rng.randrange(1, k)
        bad[i] = bad[i - 1]  # a repeated index
    elif kind == 3 and k > 1:
        bad[n_u:] = sorted(bad[n_u:], reverse=True)  # decreasing
    else:
        bad[n_u - 1] = params.underlyings[-1].scenario_count  # a grid index out of range
    return [best, best[:n_u], wrong, bad]


def run_batch(
    harness: Contract,
    market: Market,
    params: RiskParams,
    portfolios: list[Portfolio],
    rng: random.Random,
) -> Counter[str]:
    table = _table(market, params)
    m, p = market.to_abi(), params.to_abi()
    full_in = [(pf.to_abi(), m, p) for pf in portfolios]
    full_py = [python_outcome(_py_full, table, pf) for pf in portfolios]
    full_sol = batch_call(harness, "fullCheck", full_in, chunk=10)  # (large parameter sets)
    assert_parity("fullCheck", full_in, full_sol, full_py)

    n_u = len(params.underlyings)
    k = params.historical.es_count
    w_in, w_py = [], []
    for pf, out in zip(portfolios, full_py, strict=True):
        best = list(out.value[7]) if out.ok else [0] * (n_u + k)
        for w in _witnesses(rng, params, best):
            w_in.append((pf.to_abi(), m, p, w))
            w_py.append(python_outcome(_py_witness, table, pf, w))
    w_sol = batch_call(harness, "witnessCheck", w_in, chunk=20)
    assert_parity("witnessCheck", w_in, w_sol, w_py)

    # Soundness, on the verifier's own answers: the full check's witness reproduces it; any
    # other well-formed witness gives at most its requirement, state and ES.
    for i, out in enumerate(full_sol):
        best, grid_only, wrong, _ = w_sol[4 * i : 4 * i + 4]
        if not out.ok:
            continue
        assert best.ok and best.value[1] == out.value[1] and best.value[5] == out.value[5]
        assert best.value[8] == out.value[8], "the full witness reproduces ES"
        for w in (grid_only, wrong):
            if w.ok:
                assert w.value[1] <= out.value[1]
                assert w.value[5] <= out.value[5]
        if wrong.ok:
            assert wrong.value[8] <= out.value[8], "a wrong ES witness exceeded the full ES"
    tally = Counter("full:" + outcome_kind(o) for o in full_sol)
    tally.update("witness:" + outcome_kind(o) for o in w_sol)
    tally.update(f"state:{o.value[5]}" for o in full_sol if o.ok)
    # Where ES (not the grid) sets the requirement: requirement - contingencies == ES.
    tally.update(
        "es-binding" for o in full_sol if o.ok and o.value[1] - o.value[3] == o.value[8] > 0
    )
    return tally


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=market_params(), seed=st.integers(0, 2**64 - 1))
def test_parity_historical_random(harness: Contract, case: Any, seed: int) -> None:
    rng = random.Random(seed)
    market, params = case
    params = replace(params, historical=random_set(rng, params))
    pool = _pool(rng, market)
    portfolios = [_portfolio(rng, market, params, pool) for _ in range(PORTFOLIOS_PER_EXAMPLE)]
    table = _table(market, params)
    portfolios = [_near_boundary(rng, table, params, pf) for pf in portfolios]
    TALLY.update(run_batch(harness, market, params, portfolios, rng))


def test_parity_historical_tally_reached_the_regions() -> None:
    """Runs after the random test: success, each state, ES setting the requirement, and every
    witness error were reached."""
    if not TALLY:
        pytest.skip("random parity test did not run in this process")
    assert TALLY["full:ok"] >= 1000, TALLY
    for state in ("state:0", "state:1", "state:2"):
        assert TALLY[state] > 0, TALLY
    assert TALLY["es-binding"] > 0, TALLY
    for err in ("WitnessOutOfRange", "WitnessNotIncreasing", "WitnessLengthMismatch"):
        assert any(k.startswith(f"witness:{err}") for k in TALLY), (err, TALLY)
    print(dict(TALLY))


# --- edges: the set's bounds ----------------------------------------------------------------


def _max_set(params: RiskParams, **kw: Any) -> HistoricalSet:
    """The largest set the gas bound allows, moves alternating between the bounds and zero,
    FHS scales at the bound (historical moves clamp), k = MAX_ES_COUNT."""
    n_u = len(params.underlyings)
    s = MAX_SCENARIOS - max(u.scenario_count for u in params.underlyings)
    cycle = (MIN_EXTENDED_MOVE, MAX_EXTENDED_MOVE, 0, -(10**17), 3 * 10**16)
    moves = tuple(cycle[i % len(cycle)] for i in range(s * n_u))
    base = dict(
        moves=moves,
        vol_moves=tuple(cycle[(i + 1) % len(cycle)] for i in range(s * n_u)),
        stress_count=s // 2,
        fhs_scale=(MAX_FHS_SCALE,) + (WAD,) * (n_u - 1),
        es_count=MAX_ES_COUNT,
    )
    base.update(kw)
    return HistoricalSet(**base)


def _edge_sets() -> list[tuple[str, RiskParams]]:
    p = _edge_params()
    mx = _max_set(p)
    s = len(mx.moves) // 2
    one = HistoricalSet(moves=(-(10**17), 5 * 10**16), fhs_scale=(WAD, WAD), es_count=1)
    return [
        ("max set", replace(p, historical=mx)),
        ("max set, no vol moves", replace(p, historical=replace(mx, vol_moves=()))),
        ("all stress", replace(p, historical=replace(mx, stress_count=s))),
        ("zero scale", replace(p, historical=replace(mx, fhs_scale=(0, 0)))),
        ("one scenario", replace(p, historical=one)),
        ("k = S", replace(p, historical=replace(one, moves=one.moves * 3, es_count=3))),
        # each bound of the set, one past it: the named errors on both sides
        ("moves not S x nU", replace(p, historical=replace(one, moves=(0,) * 3))),
        ("vol moves length", replace(p, historical=replace(one, vol_moves=(0,)))),
        ("stress count", replace(p, historical=replace(one, stress_count=2))),
        ("fhs length", replace(p, historical=replace(one, fhs_scale=(WAD,)))),
        ("k = 0", replace(p, historical=replace(one, es_count=0))),
        ("k > S", replace(p, historical=replace(one, es_count=2))),
        ("k at S = 0", replace(p, historical=HistoricalSet(es_count=1))),
        ("fhs scale", replace(p, historical=replace(one, fhs_scale=(WAD, MAX_FHS_SCALE + 1)))),
        (
            "too many scenarios",
            replace(
                p, historical=replace(mx, moves=(*mx.moves, 0, 0), vol_moves=(*mx.vol_moves, 0, 0))
            ),
        ),
        ("move below", replace(p, historical=replace(one, moves=(0, MIN_EXTENDED_MOVE - 1)))),
        ("move above", replace(p, historical=replace(one, moves=(MAX_EXTENDED_MOVE + 1, 0)))),
        ("vol move", replace(p, historical=replace(one, vol_moves=(0, MAX_EXTENDED_MOVE + 1)))),
    ]


EDGE_SETS = _edge_sets()
EXPECTED_ERRORS = {
    "moves not S x nU": "InvalidGlobalParameter",
    "vol moves length": "InvalidGlobalParameter",
    "stress count": "InvalidGlobalParameter",
    "fhs length": "InvalidGlobalParameter",
    "k = 0": "InvalidGlobalParameter",
    "k > S": "InvalidGlobalParameter",
    "k at S = 0": "InvalidGlobalParameter",
    "fhs scale": "InvalidRiskParameter",
    "too many scenarios": "InvalidRiskParameter",
    "move below": "InvalidHistoricalScenario",
    "move above": "InvalidHistoricalScenario",
    "vol move": "InvalidHistoricalScenario",
}


@pytest.mark.parametrize(("label", "params"), EDGE_SETS, ids=[e[0] for e in EDGE_SETS])
def test_parity_historical_edges(harness: Contract, label: str, params: RiskParams) -> None:
    portfolios = [pf for _, pf in EDGE_PORTFOLIOS if len(pf.collateral) == 2]
    market = _edge_market()
    tally = run_batch(harness, market, params, portfolios, random.Random(label))
    if label in EXPECTED_ERRORS:
        assert tally[f"full:{EXPECTED_ERRORS[label]}"] == len(portfolios), tally
    else:
        assert tally["full:ok"] > 0, tally


def test_max_set_sits_at_the_gas_bound() -> None:
    """The edge "max set" is the largest the bound accepts (one more scenario is rejected)."""
    p = dict(EDGE_SETS)["max set"]
    assert max(u.scenario_count for u in p.underlyings) + p.historical_count == MAX_SCENARIOS
    table = ScenarioTable(_edge_market(), p)
    r = table.full_check(dict(EDGE_PORTFOLIOS)["max positions"])
    assert len(r.witness) == 2 + MAX_ES_COUNT and len(r.historical_losses) == p.historical_count
    assert _abi(r)[8] == r.expected_shortfall
