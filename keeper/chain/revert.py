"""Revert data -> a named error with its arguments.

Every custom error of the ABIs in abi/ (the clearing house and its admin module, which carry
IClearingHouse's errors, the verifier's margin/math errors, OracleLib's errors) plus
``Error(string)``, ``Panic(uint256)`` and the classes of margin.errors. ``decode_revert`` never
raises: undecodable data comes back as ``name="<unknown>"`` with the raw bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi import decode
from eth_utils import keccak
from eth_utils.abi import collapse_if_tuple
from hexbytes import HexBytes

from keeper.abi import ABI_DIR
from margin.errors import MarginError, Panic, error_by_selector

PANIC_NAMES = {
    0x01: "assert",
    0x11: "arithmetic overflow",
    0x12: "division by zero",
    0x21: "invalid enum",
    0x22: "bad storage byte array",
    0x31: "pop on empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "zero internal function",
}


@dataclass(frozen=True)
class ErrorSpec:
    name: str
    signature: str
    arg_names: tuple[str, ...]
    arg_types: tuple[str, ...]


@dataclass(frozen=True)
class DecodedRevert:
    """A revert as a person (and a store) reads it."""

    name: str  # "StaleAccountNonce", "Panic", "Error", "<unknown>", "<empty>"
    signature: str  # "StaleAccountNonce(uint256,uint64,uint64)" ("" when unknown)
    args: tuple[Any, ...]
    arg_names: tuple[str, ...]
    data: bytes

    @property
    def selector(self) -> bytes:
        return self.data[:4]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: integers stay integers, bytes become 0x-hex."""
        named = {
            (n or f"arg{i}"): (("0x" + a.hex()) if isinstance(a, bytes) else a)
            for i, (n, a) in enumerate(zip(self.arg_names, self.args, strict=True))
        }
        return {"error": self.name, "signature": self.signature, "args": named}

    def margin_error(self) -> MarginError | None:
        """The margin engine's exception for the same failure, when there is one."""
        if self.name == "Panic":
            for cls in _panic_classes():
                if self.args and getattr(cls, "code", None) == self.args[0]:
                    return cls()
            return None
        custom = error_by_selector().get(self.selector)
        return custom(*self.args) if custom is not None else None

    def __str__(self) -> str:
        if self.name in ("<unknown>", "<empty>"):
            return f"{self.name} revert 0x{self.data.hex()}"
        shown = ", ".join(
            f"{n}={_show(a)}" if n else _show(a)
            for n, a in zip(self.arg_names, self.args, strict=True)
        )
        if self.name == "Panic" and self.args:
            return f"Panic({shown}) [{PANIC_NAMES.get(self.args[0], 'unknown panic code')}]"
        return f"{self.name}({shown})"


def _show(a: Any) -> str:
    if isinstance(a, bytes):
        return "0x" + a.hex()
    return str(a)


def _panic_classes() -> list[type[Panic]]:
    out: list[type[Panic]] = []
    stack: list[type[Panic]] = [Panic]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls is not Panic:
            out.append(cls)
    return out


@cache
def error_specs() -> dict[bytes, ErrorSpec]:
    """Every known error by selector (abi/ first, then margin.errors for the rest)."""
    specs: dict[bytes, ErrorSpec] = {}
    builtins = [
        ErrorSpec("Error", "Error(string)", ("message",), ("string",)),
        ErrorSpec("Panic", "Panic(uint256)", ("code",), ("uint256",)),
    ]
    for spec in builtins:
        specs[keccak(text=spec.signature)[:4]] = spec
    for path in sorted(ABI_DIR.glob("*.json")):
        for entry in json.loads(path.read_text()):
            if entry.get("type") != "error":
                continue
            types = tuple(collapse_if_tuple(p) for p in entry.get("inputs", []))
            sig = f"{entry['name']}({','.join(types)})"
            names = tuple(p.get("name", "") for p in entry.get("inputs", []))
            specs.setdefault(keccak(text=sig)[:4], ErrorSpec(entry["name"], sig, names, types))
    for sel, cls in error_by_selector().items():
        if sel in specs:
            continue
        sig = cls.signature
        types = tuple(t for t in sig[sig.index("(") + 1 : -1].split(",") if t)
        specs[sel] = ErrorSpec(sig.split("(")[0], sig, tuple("" for _ in types), types)
    return specs


def decode_revert(data: bytes | str | None) -> DecodedRevert:
    """Decode revert data (bytes or 0x-hex). Never raises."""
    if data is None:
        raw = b""
    elif isinstance(data, str):
        try:
            raw = bytes(HexBytes(data))
        except ValueError:
            return DecodedRevert("<unknown>", "", (), (), data.encode())
    else:
        raw = bytes(data)
    if not raw:
        return DecodedRevert("<empty>", "", (), (), raw)
    spec = error_specs().get(raw[:4])
    if spec is None:
        return DecodedRevert("<unknown>", "", (), (), raw)
    try:
        args = tuple(decode(list(spec.arg_types), raw[4:]))
    except Exception:  # malformed body: keep the name, say it did not decode
        return DecodedRevert("<unknown>", spec.signature, (), (), raw)
    return DecodedRevert(spec.name, spec.signature, args, spec.arg_names, raw)


def revert_data_of(exc: BaseException) -> bytes | None:
    """The revert data carried by a web3 exception (ContractCustomError & co.), if any."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes(HexBytes(data))
        except ValueError:
            return None
    return None
