"""Python margin.pricing vs Solidity OptionPricing (PricingHarness on anvil): equal to the wei,
and a revert on-chain <=> the same named exception off-chain (identical revert data).

Each Hypothesis example is ONE batched eth_call of 300 cases; inputs cover the accepted domain
(log-uniform prices, moneyness near the money and in the wings, expiries from 1 s to 5 years,
vols from 0 to 1000%, rates at and inside the bounds) plus out-of-domain values of every input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.contract import Contract

from keeper.artifacts import deploy
from margin.pricing import (
    MAX_PRICE,
    MAX_RATE,
    MAX_STRIKE_RATIO,
    MAX_TAU,
    MAX_VOL,
    MIN_PRICE,
    d1_d2,
    discount_factor,
    option_price,
    option_price_black76,
    sigma_sqrt_tau,
)
from tests.parity import check_parity

pytestmark = pytest.mark.anvil

WAD = 10**18
INT_MIN = -(2**255)
INT_MAX = 2**255 - 1
UINT_MAX = 2**256 - 1
BATCH = 300

#: Tallies of outcome kinds over the whole module, so the last test can check coverage.
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def pricing(w3: Web3, contracts_built: None) -> Contract:
    return deploy(w3, "PricingHarness")


# --- strategies --------------------------------------------------------------------------

def _log_uniform(lo_exp: int, hi_exp: int) -> st.SearchStrategy[int]:
    """Integers spread over decades [10**lo_exp, 10**hi_exp]."""
    return st.integers(lo_exp, hi_exp - 1).flatmap(
        lambda e: st.integers(10**e, 10 ** (e + 1))
    )


prices_in = st.one_of(
    _log_uniform(10, 30),
    st.sampled_from([MIN_PRICE, MAX_PRICE, WAD, 3_000 * WAD]),
)
prices_out = st.sampled_from([MIN_PRICE - 1, MAX_PRICE + 1, 0, -1, -WAD, INT_MIN, INT_MAX])

taus = st.one_of(
    st.integers(0, 600),
    st.integers(0, 90 * 86_400),
    st.integers(0, MAX_TAU),
    st.sampled_from([0, 1, MAX_TAU]),
)
vols = st.one_of(
    st.integers(0, MAX_VOL),
    _log_uniform(16, 19).map(lambda v: min(v, MAX_VOL)),
    st.integers(0, 10**9),
    st.sampled_from([0, 1, MAX_VOL]),
)
rates = st.one_of(
    st.integers(-MAX_RATE, MAX_RATE),
    st.integers(-WAD // 10, WAD // 10),
    st.sampled_from([0, -MAX_RATE, MAX_RATE]),
)


@st.composite
def strikes_for(draw: st.DrawFn, under: int) -> int:
    """A strike near the money (±~50%), in the wings, at the moneyness cap, or anywhere."""
    kind = draw(st.integers(0, 9))
    if kind <= 4 and under > 0:
        k = under * draw(st.integers(500, 1500)) // 1000
    elif kind <= 6 and under > 0:
        k = under * draw(_log_uniform(0, 7)) if draw(st.booleans()) else under // draw(
            _log_uniform(0, 20)
        )
    elif kind == 7 and under > 0:
        k = under * MAX_STRIKE_RATIO + draw(st.sampled_from([-1, 0, 1]))
    else:
        k = draw(prices_in)
    return max(min(k, INT_MAX), INT_MIN)


@st.composite
def cases(draw: st.DrawFn) -> tuple[bool, int, int, int, int, int]:
    """(is_call, underlying, strike, tau, vol, rate); ~1 in 8 has some input out of domain."""
    out = draw(st.integers(0, 15))
    under = draw(prices_out) if out == 0 else draw(prices_in)
    strike = draw(prices_out) if out == 1 else draw(strikes_for(under))
    tau = draw(st.sampled_from([MAX_TAU + 1, UINT_MAX])) if out == 2 else draw(taus)
    vol = draw(st.sampled_from([-1, MAX_VOL + 1, INT_MIN, INT_MAX])) if out == 3 else draw(vols)
    rate = draw(st.sampled_from([MAX_RATE + 1, -MAX_RATE - 1, INT_MIN])) if out == 4 else draw(
        rates
    )
    return draw(st.booleans()), under, strike, tau, vol, rate


batches = st.lists(cases(), min_size=BATCH, max_size=BATCH)
SETTINGS = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- property tests: one eth_call per example --------------------------------------------

@SETTINGS
@given(batches)
def test_price_parity(pricing: Contract, batch: list[tuple]) -> None:
    TALLY.update(check_parity(pricing, "price", option_price, batch))


@settings(SETTINGS, max_examples=5)
@given(batches)
def test_black76_parity(pricing: Contract, batch: list[tuple]) -> None:
    TALLY.update(check_parity(pricing, "priceBlack76", option_price_black76, batch))


@settings(SETTINGS, max_examples=3)
@given(batches)
def test_helpers_parity(pricing: Contract, batch: list[tuple]) -> None:
    args5 = [c[1:] for c in batch]
    check_parity(pricing, "d1d2", d1_d2, args5)
    check_parity(pricing, "sigmaSqrtTau", sigma_sqrt_tau, [(c[3], c[4]) for c in batch])
    check_parity(pricing, "discountFactor", discount_factor, [(c[3], c[5]) for c in batch])


# --- edges --------------------------------------------------------------------------------

def _edge_cases() -> Iterator[tuple[bool, int, int, int, int, int]]:
    month = 30 * 86_400
    spots = [MIN_PRICE, WAD, 3_000 * WAD, MAX_PRICE]
    for is_call in (True, False):
        for s in spots:
            for k in {MIN_PRICE, s // 2 or 1, s, 2 * s, min(s * MAX_STRIKE_RATIO, MAX_PRICE),
                      MAX_PRICE}:
                for tau in (0, 1, 60, month, MAX_TAU):  # expiry now .. max tau
                    for vol in (0, 1, WAD // 100, WAD, MAX_VOL):  # zero .. max vol
                        for rate in (-MAX_RATE, 0, MAX_RATE):
                            yield is_call, s, k, tau, vol, rate
        # out of domain: every input, one at a time, and all at once (first check wins)
        yield is_call, 0, WAD, month, WAD, 0
        yield is_call, MIN_PRICE - 1, WAD, month, WAD, 0
        yield is_call, MAX_PRICE + 1, WAD, month, WAD, 0
        yield is_call, INT_MIN, WAD, month, WAD, 0
        yield is_call, WAD, 0, month, WAD, 0
        yield is_call, WAD, MAX_PRICE + 1, month, WAD, 0
        yield is_call, MIN_PRICE, MIN_PRICE * MAX_STRIKE_RATIO + 1, month, WAD, 0
        yield is_call, WAD, WAD, MAX_TAU + 1, WAD, 0
        yield is_call, WAD, WAD, UINT_MAX, WAD, 0
        yield is_call, WAD, WAD, month, -1, 0
        yield is_call, WAD, WAD, month, MAX_VOL + 1, 0
        yield is_call, WAD, WAD, month, WAD, MAX_RATE + 1
        yield is_call, WAD, WAD, month, WAD, INT_MIN
        yield is_call, -1, -1, UINT_MAX, -1, INT_MAX


EDGES = list(_edge_cases())


def test_price_edges_parity(pricing: Contract) -> None:
    tally = check_parity(pricing, "price", option_price, EDGES)
    TALLY.update(tally)
    # Every named error is reached, and the in-domain corners all price.
    for name in ("SpotOutOfRange", "StrikeOutOfRange", "MoneynessOutOfRange", "TauOutOfRange",
                 "VolOutOfRange", "RateOutOfRange"):
        assert tally[name] > 0, (name, tally)
    assert tally["ok"] >= len(EDGES) - 40


def test_black76_edges_parity(pricing: Contract) -> None:
    tally = check_parity(pricing, "priceBlack76", option_price_black76, EDGES)
    assert tally["ForwardOutOfRange"] > 0 and tally["ok"] >= len(EDGES) - 40


def test_helper_edges_parity(pricing: Contract) -> None:
    tally = check_parity(pricing, "d1d2", d1_d2, [c[1:] for c in EDGES])
    assert tally["ZeroSigmaSqrtTau"] > 0 and tally["ok"] > 0
    check_parity(pricing, "sigmaSqrtTau", sigma_sqrt_tau, [(c[3], c[4]) for c in EDGES])
    check_parity(pricing, "discountFactor", discount_factor, [(c[3], c[5]) for c in EDGES])


def test_generated_cases_reached_every_region() -> None:
    """The random batches priced thousands of cases and hit the domain errors too."""
    if TALLY["ok"] == 0:
        pytest.skip("runs after the parity tests of this module (not selected)")
    assert TALLY["ok"] >= 3_000, TALLY
    for name in ("SpotOutOfRange", "StrikeOutOfRange", "TauOutOfRange", "VolOutOfRange",
                 "RateOutOfRange"):
        assert TALLY[name] > 0, (name, TALLY)

