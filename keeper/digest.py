"""The inputs digest of a margin decision: one hash an auditor can recompute from chain data.

``keccak256(abi.encode(Portfolio, Market, riskParamsBytes, lenient))`` with the verifier's own
struct layout, so the digest is the hash of exactly what ``MarginVerifier.fullCheck`` would be
called with at that block (``lenient`` says which oracle-age policy built the market: strict
``maxAge`` for health, ``liquidationMaxAge`` for flag/liquidate). Shared by the decision loop
and by ``replay``; changing it invalidates every recorded digest, so it is versioned.

The encoding is written out by hand for this one layout: eth_abi's generic encoder costs ~1 ms
a call, which made the digest the largest cost of a block. ``encode_inputs_reference`` keeps
eth_abi's encoding and the tests hold the two byte-identical.
"""

from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak

from margin.portfolio import Market, Portfolio

DIGEST_VERSION = 1
_TYPES = [
    "((uint256,uint8,int256,uint64,int256,int256)[],int256[])",
    "(uint64,int256,int256[],int256[])",
    "bytes",
    "bool",
]
_POSITION_BITS = (256, 8, None, 64, None, None)  # uintN bit size; None: int256


def _uint(v: int, bits: int = 256) -> bytes:
    if not 0 <= v < 1 << bits:
        raise ValueError(f"value {v} does not fit uint{bits}")
    return v.to_bytes(32, "big")


def _int(v: int) -> bytes:
    try:
        return v.to_bytes(32, "big", signed=True)
    except OverflowError:
        raise ValueError(f"value {v} does not fit int256") from None


def _word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def _int_array(xs: tuple[int, ...] | list[int]) -> bytes:
    return _word(len(xs)) + b"".join(_int(x) for x in xs)


def _portfolio(p: Portfolio) -> bytes:
    rows = []
    for pos in p.positions:
        for v, bits in zip(pos.to_abi(), _POSITION_BITS, strict=True):
            rows.append(_int(v) if bits is None else _uint(v, bits))
    positions = _word(len(p.positions)) + b"".join(rows)
    collateral = _int_array(p.collateral)
    return _word(64) + _word(64 + len(positions)) + positions + collateral


def _market(m: Market) -> bytes:
    spots = _int_array(m.spots)
    vols = _int_array(m.vols)
    head = _uint(m.timestamp, 64) + _int(m.rate) + _word(128) + _word(128 + len(spots))
    return head + spots + vols


def encode_inputs(
    portfolio: Portfolio, market: Market, risk_params: bytes, *, lenient: bool
) -> bytes:
    """``abi.encode(portfolio, market, riskParams, lenient)``, byte for byte eth_abi's."""
    pf, mk = _portfolio(portfolio), _market(market)
    padded = bytes(risk_params) + b"\0" * (-len(risk_params) % 32)
    params = _word(len(risk_params)) + padded
    head = _word(128) + _word(128 + len(pf)) + _word(128 + len(pf) + len(mk))
    return head + _word(1 if lenient else 0) + pf + mk + params


def encode_inputs_reference(
    portfolio: Portfolio, market: Market, risk_params: bytes, *, lenient: bool
) -> bytes:
    """The same encoding by eth_abi (the definition the hand-written one is tested against)."""
    return encode(_TYPES, [portfolio.to_abi(), market.to_abi(), risk_params, lenient])


def inputs_digest(
    portfolio: Portfolio, market: Market, risk_params: bytes, *, lenient: bool = False
) -> str:
    """0x-prefixed keccak256 of the ABI-encoded verifier inputs."""
    return "0x" + keccak(encode_inputs(portfolio, market, risk_params, lenient=lenient)).hex()
