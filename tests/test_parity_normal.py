"""Python margin/normal_dist.py cdf_wad vs Solidity NormalDist.cdf (MathHarness), to the wei.

cdf never reverts, so parity is value equality on every int256 input. Random batches of 500
(one eth_call each) plus the piece edges and cut-off, one wei at a time, on both signs.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from web3.contract import Contract

from margin.normal_dist import CUT_WAD, WAD, cdf_wad
from tests import strategies as S
from tests.parity import check_parity
from tests.strategies import RANDOM, batch_of, check_batch

pytestmark = pytest.mark.anvil


@RANDOM
@given(batch_of(S.cdf_inputs()))
def test_cdf_random(math_harness: Contract, xs: list[int]) -> None:
    check_batch(math_harness, "cdf", cdf_wad, xs)


def test_cdf_edges(math_harness: Contract) -> None:
    near = [e + d for e in S.CDF_EDGES for d in range(-3, 4)]
    xs = [*near, *(-x for x in near), *S.EDGE_VALUES, *(k * WAD // 4 for k in range(-40, 41))]
    tally = check_parity(math_harness, "cdf", cdf_wad, xs)
    assert tally == {"ok": len(xs)}
    assert cdf_wad(0) == WAD // 2 and cdf_wad(CUT_WAD) == WAD and cdf_wad(-CUT_WAD) == 0
