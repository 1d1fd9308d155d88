"""Python margin.option_pricing vs Solidity OptionPricing (PricingHarness on anvil): equal to the
wei, and a revert on-chain <=> the same named exception off-chain (identical revert data).

Each Hypothesis example is ONE batched eth_call of 300 cases; inputs cover the accepted domain
(log-uniform prices, moneyness near the money and in the wings, expiries from 1 s to 5 years,
vols from 0 to 1000%, rates at and inside the bounds) plus out-of-domain values of every input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.contract import Contract

from keeper.artifacts import deploy
from margin.option_pricing import (
    MAX_PRICE,
    MAX_RATE,
    MAX_STRIKE_RATIO,
    MAX_TAU,
    MAX_VOL,
    MIN_PRICE,
    d1_d2,
    discount_factor,
    ln_ratio,
    option_model_price,
    option_price,
    option_price_black76,
    option_price_pair,
    sigma_sqrt_tau,
)
from tests.parity import check_parity
from tests.strategies import RANDOM

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
# A case is six plain draws (a bool and five 128-bit integers) mapped deterministically onto the
# regions below: nested strategies over 300-element lists overrun Hypothesis's per-example
# choice budget and make it discard most attempts. Shrinking still goes toward 0 = the simplest
# region of each input.

_OUT_PRICES = (MIN_PRICE - 1, MAX_PRICE + 1, 0, -1, -WAD, INT_MIN, INT_MAX)
_SPECIAL_PRICES = (MIN_PRICE, MAX_PRICE, WAD, 3_000 * WAD)


def _log_uniform(x: int, lo_exp: int, hi_exp: int) -> int:
    """An integer spread over the decades [10**lo_exp, 10**hi_exp), chosen by the bits of x."""
    e = lo_exp + x % (hi_exp - lo_exp)
    return 10**e + (x >> 8) % (9 * 10**e)


def _price(x: int) -> int:
    mode, rest = x % 16, x >> 4
    if mode == 0:
        return _OUT_PRICES[rest % len(_OUT_PRICES)]
    if mode == 1:
        return _SPECIAL_PRICES[rest % len(_SPECIAL_PRICES)]
    return _log_uniform(rest, 10, 30)


def _strike(x: int, under: int) -> int:
    """Near the money (±50%), in the wings, at the moneyness cap, or anywhere."""
    mode, rest = x % 10, x >> 4
    if under <= 0 or mode == 8:
        return _price(rest)
    if mode <= 4:
        return under * (500 + rest % 1001) // 1000
    if mode == 5:
        return under * _log_uniform(rest, 0, 7) // 10
    if mode == 6:
        return under // _log_uniform(rest, 0, 20)
    if mode == 7:
        return under * MAX_STRIKE_RATIO + (rest % 3 - 1)
    return _OUT_PRICES[rest % len(_OUT_PRICES)]


def _tau(x: int) -> int:
    mode, rest = x % 4, x >> 2
    if mode == 0:
        return rest % 601
    if mode == 1:
        return rest % (90 * 86_400 + 1)
    if mode == 2:
        return rest % (MAX_TAU + 1)
    return (0, 1, MAX_TAU, 0, 1, MAX_TAU, MAX_TAU + 1, UINT_MAX)[rest % 8]


def _vol(x: int) -> int:
    mode, rest = x % 4, x >> 2
    if mode == 0:
        return rest % (MAX_VOL + 1)
    if mode == 1:
        return min(_log_uniform(rest, 16, 19), MAX_VOL)
    if mode == 2:
        return rest % (10**9 + 1)
    return (0, 1, MAX_VOL, MAX_VOL, -1, MAX_VOL + 1, INT_MIN, INT_MAX)[rest % 8]


def _rate(x: int) -> int:
    mode, rest = x % 4, x >> 2
    if mode == 0:
        return rest % (2 * MAX_RATE + 1) - MAX_RATE
    if mode == 1:
        return rest % (WAD // 5 + 1) - WAD // 10
    if mode == 2:
        return 0
    return (0, -MAX_RATE, MAX_RATE, 0, MAX_RATE + 1, -MAX_RATE - 1, INT_MIN, 0)[rest % 8]


def _to_case(raw: tuple[bool, int, int, int, int, int]) -> tuple[bool, int, int, int, int, int]:
    is_call, u, k, t, v, r = raw
    under = _price(u)
    strike = max(min(_strike(k, under), INT_MAX), INT_MIN)  # stays ABI-encodable
    return is_call, under, strike, _tau(t), _vol(v), _rate(r)


_bits = st.integers(0, 2**128 - 1)
cases = st.tuples(st.booleans(), _bits, _bits, _bits, _bits, _bits).map(_to_case)

batches = st.lists(cases, min_size=BATCH, max_size=BATCH)


def _in_domain(case: tuple[bool, int, int, int, int, int]) -> bool:
    """The accepted domain, restated independently of margin.option_pricing's checks."""
    _, under, strike, tau, vol, rate = case
    return (
        MIN_PRICE <= under <= MAX_PRICE
        and MIN_PRICE <= strike <= MAX_PRICE
        and strike <= under * MAX_STRIKE_RATIO
        and tau <= MAX_TAU
        and 0 <= vol <= MAX_VOL
        and -MAX_RATE <= rate <= MAX_RATE
    )


def _in_model_domain(case: tuple[bool, int, int, int, int, int]) -> bool:
    """option_model_price's domain: the price's, except that any spot in (0, MAX_PRICE] prices
    (the intrinsic value where the spot alone leaves the accuracy domain)."""
    _, under, strike, tau, vol, rate = case
    return (
        0 < under <= MAX_PRICE
        and MIN_PRICE <= strike <= MAX_PRICE
        and tau <= MAX_TAU
        and 0 <= vol <= MAX_VOL
        and -MAX_RATE <= rate <= MAX_RATE
    )


def _ln(a: int, b: int) -> int:
    """ln_ratio(a, b), or 0 where undefined (the pair fails on its spots before using it)."""
    return ln_ratio(a, b) if 0 < a <= 2 * 10**31 and 0 < b <= 2 * 10**31 else 0


def _pair_cases(batch: list[tuple]) -> list[tuple]:
    """pricePair inputs from consecutive cases: the second case's spot and vol as the scenario's,
    and the caller's ln_move = ln_ratio(spot_w, spot)."""
    out = []
    for a, b in zip(batch, batch[1:] + batch[:1], strict=True):
        is_call, spot, strike, tau, vol, rate = a
        out.append((is_call, spot, b[1], strike, tau, vol, b[4], rate, _ln(b[1], spot)))
    return out


#: The shared batched-run settings (derandomized, no shrinking): 10 batches of 300 per test.
SETTINGS = settings(RANDOM, max_examples=10)


# --- property tests: one eth_call per example --------------------------------------------


@SETTINGS
@given(batches)
def test_price_parity(pricing: Contract, batch: list[tuple]) -> None:
    tally = check_parity(pricing, "price", option_price, batch)
    assert tally["ok"] == sum(map(_in_domain, batch)), tally  # prices <=> in domain
    TALLY.update(tally)


@settings(SETTINGS, max_examples=5)
@given(batches)
def test_model_price_parity(pricing: Contract, batch: list[tuple]) -> None:
    tally = check_parity(pricing, "modelPrice", option_model_price, batch)
    assert tally["ok"] == sum(map(_in_model_domain, batch)), tally
    assert tally["MoneynessOutOfRange"] == 0, tally


@settings(SETTINGS, max_examples=3)
@given(batches)
def test_price_pair_parity(pricing: Contract, batch: list[tuple]) -> None:
    check_parity(pricing, "pricePair", option_price_pair, _pair_cases(batch))
    # ln(S/K) as the model shares it, and a price taking it (any ln_sk: the checks come first)
    pairs = [(c[1], c[2]) for c in batch if 0 < c[1] <= MAX_PRICE and 0 < c[2] <= MAX_PRICE]
    check_parity(pricing, "lnRatio", ln_ratio, pairs)
    moved = [(*c, _ln(c[1], c[2]) + (i % 3 - 1)) for i, c in enumerate(batch)]
    tally = check_parity(pricing, "modelPriceLn", option_model_price, moved)
    assert tally["ok"] == sum(map(_in_model_domain, batch)), tally


@settings(SETTINGS, max_examples=5)
@given(batches)
def test_black76_parity(pricing: Contract, batch: list[tuple]) -> None:
    tally = check_parity(pricing, "priceBlack76", option_price_black76, batch)
    assert tally["ok"] == sum(map(_in_domain, batch)), tally
    TALLY.update(tally)


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
            for k in {
                MIN_PRICE,
                s // 2 or 1,
                s,
                2 * s,
                min(s * MAX_STRIKE_RATIO, MAX_PRICE),
                MAX_PRICE,
            }:
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
    for name in (
        "SpotOutOfRange",
        "StrikeOutOfRange",
        "MoneynessOutOfRange",
        "TauOutOfRange",
        "VolOutOfRange",
        "RateOutOfRange",
    ):
        assert tally[name] > 0, (name, tally)
    assert tally["ok"] == sum(map(_in_domain, EDGES)) > 2_000


def test_model_price_edges_parity(pricing: Contract) -> None:
    tally = check_parity(pricing, "modelPrice", option_model_price, EDGES)
    assert tally["ok"] == sum(map(_in_model_domain, EDGES)) > sum(map(_in_domain, EDGES)), tally
    for name in (
        "SpotOutOfRange",
        "StrikeOutOfRange",
        "TauOutOfRange",
        "VolOutOfRange",
        "RateOutOfRange",
    ):
        assert tally[name] > 0, (name, tally)
    check_parity(pricing, "pricePair", option_price_pair, _pair_cases(EDGES))


def test_black76_edges_parity(pricing: Contract) -> None:
    tally = check_parity(pricing, "priceBlack76", option_price_black76, EDGES)
    assert tally["ForwardOutOfRange"] > 0 and tally["ok"] == sum(map(_in_domain, EDGES))


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
    for name in (
        "SpotOutOfRange",
        "StrikeOutOfRange",
        "TauOutOfRange",
        "VolOutOfRange",
        "RateOutOfRange",
    ):
        assert TALLY[name] > 0, (name, TALLY)
