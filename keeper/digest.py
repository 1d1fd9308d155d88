"""The inputs digest of a margin decision: one hash an auditor can recompute from chain data.

``keccak256(abi.encode(Portfolio, Market, riskParamsBytes, lenient))`` with the verifier's own
struct layout, so the digest is the hash of exactly what ``MarginVerifier.fullCheck`` would be
called with at that block (``lenient`` says which oracle-age policy built the market: strict
``maxAge`` for health, ``liquidationMaxAge`` for flag/liquidate). Shared by the decision loop
and by ``replay``; changing it invalidates every recorded digest, so it is versioned.
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


def encode_inputs(
    portfolio: Portfolio, market: Market, risk_params: bytes, *, lenient: bool
) -> bytes:
    return encode(_TYPES, [portfolio.to_abi(), market.to_abi(), risk_params, lenient])


def inputs_digest(
    portfolio: Portfolio, market: Market, risk_params: bytes, *, lenient: bool = False
) -> str:
    """0x-prefixed keccak256 of the ABI-encoded verifier inputs."""
    return "0x" + keccak(encode_inputs(portfolio, market, risk_params, lenient=lenient)).hex()
