"""The hand-written ABI encoding of the decision digest equals eth_abi's, byte for byte,
including its refusals of out-of-range values (the digest an auditor recomputes)."""

from __future__ import annotations

import pytest
from eth_abi.exceptions import EncodingError
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.digest import encode_inputs, encode_inputs_reference, inputs_digest
from margin.portfolio import Market, Portfolio, Position

I256 = st.integers(-(2**255), 2**255 - 1)
positions = st.builds(
    Position,
    st.integers(0, 2**256 - 1),
    st.integers(0, 255),
    I256,
    st.integers(0, 2**64 - 1),
    I256,
    I256,
)
portfolios = st.builds(
    Portfolio,
    st.lists(positions, max_size=6).map(tuple),
    st.lists(I256, max_size=4).map(tuple),
)
markets = st.builds(
    Market,
    st.integers(0, 2**64 - 1),
    I256,
    st.lists(I256, max_size=4).map(tuple),
    st.lists(I256, max_size=4).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(portfolios, markets, st.binary(max_size=200), st.booleans())
def test_same_bytes_as_eth_abi(pf: Portfolio, m: Market, params: bytes, lenient: bool) -> None:
    assert encode_inputs(pf, m, params, lenient=lenient) == encode_inputs_reference(
        pf, m, params, lenient=lenient
    )


@pytest.mark.parametrize(
    "pf, m",
    [
        (Portfolio((Position(0, 256, 0, 0, 0, 0),), ()), Market(0, 0, (), ())),
        (Portfolio((Position(-1, 0, 0, 0, 0, 0),), ()), Market(0, 0, (), ())),
        (Portfolio((Position(0, 0, 0, 2**64, 0, 0),), ()), Market(0, 0, (), ())),
        (Portfolio((Position(0, 0, 2**255, 0, 0, 0),), ()), Market(0, 0, (), ())),
        (Portfolio((), (-(2**255) - 1,)), Market(0, 0, (), ())),
        (Portfolio(), Market(-1, 0, (), ())),
        (Portfolio(), Market(0, 0, (2**255,), ())),
    ],
)
def test_out_of_range_values_are_refused_by_both(pf: Portfolio, m: Market) -> None:
    with pytest.raises(EncodingError):
        encode_inputs_reference(pf, m, b"", lenient=False)
    with pytest.raises(ValueError):
        encode_inputs(pf, m, b"", lenient=False)


def test_known_digest_is_stable() -> None:
    """A recorded digest stays valid across releases: the value eth_abi's encoder gave when
    the hand-written encoder replaced it (DIGEST_VERSION 1)."""
    pf = Portfolio((Position(1, 2, 3 * 10**18, 1_700_000_000, -(10**17), 0),), (5 * 10**18, 0))
    m = Market(1_700_000_000, 5 * 10**16, (3000 * 10**18, 60_000 * 10**18), (6 * 10**17, 0))
    assert inputs_digest(pf, m, b"\x01\x02\x03", lenient=True) == (
        "0x6b06cacb145c24126a0f5cf1d5b007769992d59e557f2ad349180d7567c589a8"
    )
