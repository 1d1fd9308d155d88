"""Decoding revert data into a readable reason: ``Error(string)``, ``Panic(uint256)``, every
custom error of the margin engine (``margin.errors``) and any custom error of a given ABI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eth_abi import decode
from eth_utils import keccak

from margin.errors import Panic, error_by_selector

ERROR_STRING = keccak(text="Error(string)")[:4]
PANIC = keccak(text="Panic(uint256)")[:4]


def _types(signature: str) -> list[str]:
    inner = signature[signature.index("(") + 1 : -1]
    return [t for t in inner.split(",") if t]


def errors_from_abi(abi: Iterable[Mapping[str, Any]]) -> dict[bytes, str]:
    """Selector -> signature of every custom error in a contract ABI."""
    out = {}
    for item in abi:
        if item.get("type") == "error":
            sig = f"{item['name']}({','.join(i['type'] for i in item.get('inputs', []))})"
            out[keccak(text=sig)[:4]] = sig
    return out


def decode_revert(data: bytes | str | None, extra: Mapping[bytes, str] | None = None) -> str:
    """``Name(arg, ...)`` for known revert data; ``unknown error 0x...`` otherwise."""
    if data is None:
        return "reverted without data"
    raw = (
        bytes.fromhex(data[2:] if data.startswith("0x") else data)
        if isinstance(data, str)
        else data
    )
    if not raw:
        return "reverted without data"
    selector, body = raw[:4], raw[4:]
    try:
        if selector == ERROR_STRING:
            (message,) = decode(["string"], body)
            return f"Error({message!r})"
        if selector == PANIC:
            (code,) = decode(["uint256"], body)
            return f"Panic({code:#x})"
        signatures = {s: c.signature for s, c in error_by_selector().items()
                      if not issubclass(c, Panic)}  # fmt: skip
        signatures.update(extra or {})
        if selector in signatures:
            sig = signatures[selector]
            args = decode(_types(sig), body)
            return f"{sig.split('(')[0]}({', '.join(str(a) for a in args)})"
    except Exception:  # malformed body: fall through to the raw form
        pass
    return f"unknown error 0x{raw.hex()}"
