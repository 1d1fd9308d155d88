"""keeper.chain.abi_words produces and reads exactly eth_abi's bytes (random inputs), and
declines (None) whatever it does not handle, so the generic codec raises as before."""

from __future__ import annotations

import random

import pytest
from eth_abi import decode, encode
from eth_utils import to_checksum_address

from keeper.chain.abi_words import (
    decode_aggregate3_results,
    decode_static,
    encode_aggregate3,
    encode_static,
)

TYPES = ["uint256", "int256", "uint8", "int64", "address", "bool", "uint80"]


def _value(rng: random.Random, t: str) -> object:
    if t == "address":
        return to_checksum_address(rng.randbytes(20))
    if t == "bool":
        return rng.random() < 0.5
    if t.startswith("uint"):
        n = int(t[4:])
        return rng.choice((0, 1, (1 << n) - 1, rng.randrange(1 << n)))
    n = int(t[3:])
    return rng.choice(
        (0, -1, -(1 << (n - 1)), (1 << (n - 1)) - 1, rng.randrange(-(1 << (n - 1)), 1 << (n - 1)))
    )


@pytest.mark.parametrize("seed", range(20))
def test_static_codec_equals_eth_abi(seed: int) -> None:
    rng = random.Random(seed)
    types = [rng.choice(TYPES) for _ in range(rng.randint(0, 6))]
    values = [_value(rng, t) for t in types]
    data = encode(types, values)
    assert encode_static(types, values) == data
    assert decode_static(types, data) == tuple(decode(types, data))


def test_static_codec_declines_what_it_does_not_handle() -> None:
    assert encode_static(["uint8"], [256]) is None  # out of range: eth_abi raises
    assert encode_static(["uint256"], [-1]) is None
    assert encode_static(["bytes"], [b"x"]) is None
    assert encode_static(["uint256[]"], [[1]]) is None
    assert decode_static(["uint8"], (256).to_bytes(32, "big")) is None  # dirty padding
    assert decode_static(["bool"], (2).to_bytes(32, "big")) is None
    assert decode_static(["address"], b"\x01" * 32) is None
    assert decode_static(["uint256"], b"\x00" * 31) is None  # short


@pytest.mark.parametrize("seed", range(10))
def test_aggregate3_codec_equals_eth_abi(seed: int) -> None:
    rng = random.Random(seed)
    calls = [
        (
            to_checksum_address(rng.randbytes(20)),
            rng.random() < 0.5,
            rng.randbytes(rng.choice((0, 4, 36, 68, 100))),
        )
        for _ in range(rng.randint(0, 30))
    ]
    assert encode_aggregate3(calls) == encode(["(address,bool,bytes)[]"], [calls])
    results = [(ok, data) for _, ok, data in calls]
    raw = encode(["(bool,bytes)[]"], [results])
    assert decode_aggregate3_results(raw) == list(decode(["(bool,bytes)[]"], raw)[0])


def test_malformed_aggregate3_results_are_declined() -> None:
    raw = encode(["(bool,bytes)[]"], [[(True, b"abcd")]])
    assert decode_aggregate3_results(raw[:-40]) is None
    assert decode_aggregate3_results(b"") is None
