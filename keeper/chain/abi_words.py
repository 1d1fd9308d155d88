"""ABI encoding of the few shapes the snapshot reads thousands of times per block, word by word.

A snapshot of N accounts encodes N ``accountState(uint256)`` calls into ``aggregate3`` and
decodes N ``(bool, bytes)`` results and their ``(uint256, uint256)`` / ``int256`` returns;
through eth_abi's generic codec that costs about 0.25 ms per account, more than the margin
engine. These functions produce and read the same bytes directly (the ABI's head/tail layout of
32-byte words). Anything outside the shapes handled here returns None, and the caller uses
eth_abi (which also raises the errors for out-of-range values). tests/test_abi_words.py checks
every function against eth_abi on random inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_W = 32
_ZERO12 = bytes(12)


def _bits(t: str, prefix: str) -> int | None:
    rest = t[len(prefix) :]
    if not rest.isdigit():
        return None
    n = int(rest)
    return n if 0 < n <= 256 and n % 8 == 0 else None


def encode_static(types: Sequence[str], args: Sequence[Any]) -> bytes | None:
    """The ABI encoding of ``args`` when every type is uintN, intN, address or bool and every
    value is in range; else None."""
    if len(types) != len(args):
        return None
    out = bytearray()
    for t, v in zip(types, args, strict=True):
        if t == "bool" and isinstance(v, bool):
            out += (1 if v else 0).to_bytes(_W, "big")
        elif t == "address" and isinstance(v, str) and len(v) == 42 and v[:2] in ("0x", "0X"):
            try:
                out += _ZERO12 + bytes.fromhex(v[2:])
            except ValueError:
                return None
        elif t.startswith("uint") and type(v) is int:
            n = _bits(t, "uint")
            if n is None or not 0 <= v < 1 << n:
                return None
            out += v.to_bytes(_W, "big")
        elif t.startswith("int") and type(v) is int:
            n = _bits(t, "int")
            if n is None or not -(1 << (n - 1)) <= v < 1 << (n - 1):
                return None
            out += v.to_bytes(_W, "big", signed=True)
        else:
            return None
    return bytes(out)


def decode_static(types: Sequence[str], data: bytes) -> tuple[Any, ...] | None:
    """The values of ``data`` when every type is uintN, intN, address or bool and every word is
    a valid encoding of its type (no dirty padding); else None."""
    if len(data) < _W * len(types):
        return None
    out: list[Any] = []
    for k, t in enumerate(types):
        word = data[_W * k : _W * (k + 1)]
        if t.startswith("uint"):
            n = _bits(t, "uint")
            v = int.from_bytes(word, "big")
            if n is None or v >> n:
                return None
            out.append(v)
        elif t.startswith("int"):
            n = _bits(t, "int")
            v = int.from_bytes(word, "big", signed=True)
            if n is None or not -(1 << (n - 1)) <= v < 1 << (n - 1):
                return None
            out.append(v)
        elif t == "address":
            if word[:12] != _ZERO12:
                return None
            out.append("0x" + word[12:].hex())  # lower case, as eth_abi returns it
        elif t == "bool":
            v = int.from_bytes(word, "big")
            if v > 1:
                return None
            out.append(bool(v))
        else:
            return None
    return tuple(out)


def _pad(n: int) -> int:
    return -(-n // _W) * _W


def encode_aggregate3(calls: Sequence[tuple[str, bool, bytes]]) -> bytes:
    """``encode(["(address,bool,bytes)[]"], [calls])``: the argument of Multicall3.aggregate3."""
    n = len(calls)
    heads = bytearray()
    tails = bytearray()
    offset = _W * n  # the first tuple follows the n offsets
    for target, allow, data in calls:
        heads += offset.to_bytes(_W, "big")
        tup = (
            _ZERO12
            + bytes.fromhex(target[2:])
            + (1 if allow else 0).to_bytes(_W, "big")
            + (3 * _W).to_bytes(_W, "big")
            + len(data).to_bytes(_W, "big")
            + data
            + bytes(_pad(len(data)) - len(data))
        )
        tails += tup
        offset += len(tup)
    return _W.to_bytes(_W, "big") + n.to_bytes(_W, "big") + bytes(heads) + bytes(tails)


def decode_aggregate3_results(raw: bytes) -> list[tuple[bool, bytes]] | None:
    """``decode(["(bool,bytes)[]"], raw)``: aggregate3's results; None when ``raw`` is not a
    well-formed encoding (the caller then lets eth_abi raise)."""
    try:
        base = int.from_bytes(raw[0:_W], "big")
        n = int.from_bytes(raw[base : base + _W], "big")
        elems = base + _W
        if len(raw) < elems + _W * n:
            return None
        out = []
        for i in range(n):
            at = elems + int.from_bytes(raw[elems + _W * i : elems + _W * (i + 1)], "big")
            flag = int.from_bytes(raw[at : at + _W], "big")
            if flag > 1:
                return None
            data_at = at + int.from_bytes(raw[at + _W : at + 2 * _W], "big")
            length = int.from_bytes(raw[data_at : data_at + _W], "big")
            end = data_at + _W + length
            if end > len(raw):
                return None
            out.append((bool(flag), raw[data_at + _W : end]))
        return out
    except (IndexError, ValueError):
        return None
