"""Python margin/fixed_point.py vs Solidity FixedPoint.sol (through MathHarness), to the wei.

Each Hypothesis example is a list of 500 distinct inputs checked in ONE batched eth_call; 15
examples give 7,500 random inputs per primitive (mulDiv: 30 x 250 triples), of which > 5,500 are
distinct across batches, plus explicit edge lists. Outcome equality means: equal
values, or a revert on-chain <=> the mirror raising the error with identical revert data.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from web3.contract import Contract

from margin import fixed_point as fp
from tests import strategies as S
from tests.parity import check_parity
from tests.strategies import BATCH, RANDOM, batch_of, check_batch

pytestmark = pytest.mark.anvil

BINARY: dict[str, Callable[[int, int], int]] = {
    "mulDown": fp.mul_down,
    "mulUp": fp.mul_up,
    "divDown": fp.div_down,
    "divUp": fp.div_up,
}
TERNARY: dict[str, Callable[[int, int, int], int]] = {
    "mulDivDown": fp.mul_div_down,
    "mulDivUp": fp.mul_div_up,
}
SQRT: dict[str, Callable[[int], int]] = {"sqrtDown": fp.sqrt_down, "sqrtUp": fp.sqrt_up}


# --- random batches ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mulDown", "mulUp"])
@RANDOM
@given(batch_of(S.mul_pairs()))
def test_mul_random(math_harness: Contract, name: str, pairs: list[tuple[int, int]]) -> None:
    check_batch(math_harness, name, BINARY[name], pairs)


@pytest.mark.parametrize("name", ["divDown", "divUp"])
@RANDOM
@given(batch_of(S.div_pairs()))
def test_div_random(math_harness: Contract, name: str, pairs: list[tuple[int, int]]) -> None:
    check_batch(math_harness, name, BINARY[name], pairs)


@pytest.mark.parametrize("name", list(TERNARY))
@settings(RANDOM, max_examples=2 * RANDOM.max_examples)  # half-size batches, twice as many
@given(batch_of(S.mul_div_triples(), size=BATCH // 2))
def test_mul_div_random(
    math_harness: Contract, name: str, triples: list[tuple[int, int, int]]
) -> None:
    check_batch(math_harness, name, TERNARY[name], triples)


@RANDOM
@given(batch_of(S.exp_inputs()))
def test_exp_random(math_harness: Contract, xs: list[int]) -> None:
    check_batch(math_harness, "expWad", fp.exp_wad, xs)


@RANDOM
@given(batch_of(S.ln_inputs()))
def test_ln_random(math_harness: Contract, xs: list[int]) -> None:
    check_batch(math_harness, "lnWad", fp.ln_wad, xs)


@pytest.mark.parametrize("name", list(SQRT))
@RANDOM
@given(batch_of(S.sqrt_inputs()))
def test_sqrt_random(math_harness: Contract, name: str, xs: list[int]) -> None:
    check_batch(math_harness, name, SQRT[name], xs)


# --- explicit edges: every pair of edge values, and each failure region must be reached ----

EDGE_PAIRS = list(itertools.product(S.EDGE_VALUES, repeat=2))


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_edges(math_harness: Contract, name: str) -> None:
    tally = check_parity(math_harness, name, BINARY[name], EDGE_PAIRS)
    assert tally["ok"] > 0 and tally["MulDivOverflow"] > 0, tally
    if name.startswith("div"):
        assert tally["DivisionByZero"] > 0, tally


@pytest.mark.parametrize("name", list(TERNARY))
def test_mul_div_edges(math_harness: Contract, name: str) -> None:
    divisors = [0, 1, -1, 2, -2, 3, S.WAD, -S.WAD, S.INT_MAX, S.INT_MIN, 2**128, -(2**128)]
    triples = [(a, b, c) for (a, b) in EDGE_PAIRS[::3] for c in divisors]
    triples += [(-(2**k), 2 ** (255 - k), c) for k in range(1, 255) for c in (-1, 1, -2)]
    triples += [(S.INT_MIN, 1, -1), (S.INT_MIN, -1, 1), (S.INT_MAX, 1, -1), (0, 0, 0)]
    tally = check_parity(math_harness, name, TERNARY[name], triples)
    assert tally["ok"] > 0 and tally["MulDivOverflow"] > 0 and tally["DivisionByZero"] > 0, tally


def test_exp_edges(math_harness: Contract) -> None:
    xs = [
        *S.EDGE_VALUES,
        *(fp.EXP_MAX_WAD + d for d in range(-5, 6)),
        *(fp.EXP_MIN_WAD + d for d in range(-5, 6)),
        *(k * S.WAD for k in range(-45, 140)),
        *(d for d in range(-50, 51)),
    ]
    tally = check_parity(math_harness, "expWad", fp.exp_wad, xs)
    assert tally["ok"] > 0 and tally["ExpOverflow"] > 0, tally
    assert fp.exp_wad(fp.EXP_MIN_WAD - 1) == 0 and fp.exp_wad(0) == S.WAD


def test_ln_edges(math_harness: Contract) -> None:
    xs = [
        *S.EDGE_VALUES,
        *(2**k + d for k in range(256) for d in (-1, 0, 1) if 0 < 2**k + d <= S.INT_MAX),
        *(S._sqrt2_boundary(k, d) for k in range(97, 255) for d in (-1, 0, 1)),
        *(10**k for k in range(77)),
    ]
    tally = check_parity(math_harness, "lnWad", fp.ln_wad, xs)
    assert tally["ok"] > 0 and tally["LnOfNonPositive"] > 0, tally
    assert fp.ln_wad(S.WAD) == 0


@pytest.mark.parametrize("name", list(SQRT))
def test_sqrt_edges(math_harness: Contract, name: str) -> None:
    xs = [
        *S.EDGE_VALUES,
        *(fp.SQRT_MAX_WAD + d for d in range(-3, 4)),
        *(m * m + d for m in range(0, 2000, 7) for d in (-1, 0, 1) if m * m + d >= 0),
        *(S._perfect_square_neighbour(k, s, d) for k in (1, 2, 3, 10**6, 10**20, 10**29)
          for s in (1, -1) for d in (-1, 0, 1)),
        *(2**k for k in range(256) if 2**k <= S.INT_MAX),
    ]  # fmt: skip
    tally = check_parity(math_harness, name, SQRT[name], xs)
    assert tally["ok"] > 0 and tally["SqrtOfNegative"] > 0 and tally["SqrtOverflow"] > 0, tally
