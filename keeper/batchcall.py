"""One ``eth_call`` for many calls: Batchable.batch (contracts/src/harness/Batchable.sol).

``batch_call`` encodes each call with eth-abi, sends a chunk of them as one ``eth_call``, and
decodes each result into an ``Outcome``: the returned value, or the exact revert data.
``python_outcome`` gives the same ``Outcome`` for the Python engine (a ``MarginError`` becomes
the revert data the contract returns), so both sides compare with ``==``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode, encode
from eth_utils import function_signature_to_4byte_selector, keccak
from eth_utils.abi import collapse_if_tuple
from web3.contract import Contract
from web3.types import BlockIdentifier, TxParams

from margin.errors import MarginError, Panic, error_by_selector

#: Calls per eth_call. 1,000 keeps one request well under anvil's limits and the gas cap.
DEFAULT_CHUNK = 1000

PANIC_SELECTOR = keccak(text="Panic(uint256)")[:4]
ERROR_STRING_SELECTOR = keccak(text="Error(string)")[:4]
BATCH_SELECTOR = function_signature_to_4byte_selector("batch(bytes[])")


@dataclass(frozen=True)
class Outcome:
    """How one call ended. Equal outcomes = parity (value to the wei, or identical revert data)."""

    ok: bool
    value: Any = None  # decoded return value (a single output unwrapped), when ok
    revert: bytes = b""  # exact revert data, when not ok
    #: A Python exception that is NOT a MarginError (a bug in the mirror): never equal to any
    #: on-chain outcome, so it always shows up as a mismatch instead of crashing the batch.
    foreign: str | None = None

    def describe(self) -> str:
        if self.foreign is not None:
            return f"python raised {self.foreign}"
        if self.ok:
            return f"returned {format_value(self.value)}"
        return f"reverted {describe_revert(self.revert)}"


def describe_revert(data: bytes) -> str:
    """Revert data as a person reads it: error name and decoded arguments."""
    if not data:
        return "<no data>"
    sel, body = data[:4], data[4:]
    try:
        if sel == PANIC_SELECTOR:
            (code,) = decode(["uint256"], body)
            names = {c.code: c.__name__ for c in _panic_classes()}
            return f"Panic(0x{code:02x}) [{names.get(code, 'unknown panic code')}]"
        if sel == ERROR_STRING_SELECTOR:
            (msg,) = decode(["string"], body)
            return f"Error({msg!r})"
        cls = error_by_selector().get(sel)
        if cls is not None:
            types = [t for t in cls.signature[cls.signature.index("(") + 1 : -1].split(",") if t]
            args = decode(types, body)
            shown = ", ".join(format_value(a) for a in args)
            return f"{cls.signature.split('(')[0]}({shown}) [{cls.__name__}]"
    except Exception as exc:  # malformed data: show it raw, with why decoding failed
        return f"0x{data.hex()} (undecodable: {exc})"
    return f"unknown error 0x{sel.hex()} + {len(body)} bytes: 0x{data.hex()}"


def _panic_classes() -> list[type[Panic]]:
    out: list[type[Panic]] = []
    stack: list[type[Panic]] = [Panic]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls is not Panic:
            out.append(cls)
    return out


def format_value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return repr(v)
    if abs(v) >= 10**15:  # show the WAD reading next to the wei value
        return f"{v} (~{v / 10**18:.6g} WAD)"
    return str(v)


# --- Solidity side -----------------------------------------------------------------------


@dataclass(frozen=True)
class _FnSpec:
    signature: str
    selector: bytes
    input_types: list[str]
    output_types: list[str]


def _fn_spec(contract: Contract, fn_name: str) -> _FnSpec:
    """Function by name, or by full signature ``name(type,...)`` when it is overloaded."""
    candidates = []
    abi: list[dict[str, Any]] = [dict(e) for e in contract.abi]  # web3's TypedDicts, read as data
    for item in abi:
        if item.get("type") != "function":
            continue
        types = [collapse_if_tuple(p) for p in item.get("inputs", [])]
        sig = f"{item['name']}({','.join(types)})"
        if fn_name in (item["name"], sig):
            outs = [collapse_if_tuple(p) for p in item.get("outputs", [])]
            candidates.append(_FnSpec(sig, function_signature_to_4byte_selector(sig), types, outs))
    if not candidates:
        raise ValueError(f"contract has no function {fn_name!r}")
    if len(candidates) > 1:
        sigs = ", ".join(c.signature for c in candidates)
        raise ValueError(f"{fn_name!r} is overloaded ({sigs}); pass the full signature")
    return candidates[0]


def as_args(args: Any) -> tuple[Any, ...]:
    return tuple(args) if isinstance(args, list | tuple) else (args,)


def encode_call(spec: _FnSpec, args: Sequence[Any]) -> bytes:
    try:
        return spec.selector + encode(spec.input_types, list(args))
    except Exception as exc:  # an input outside the ABI type is a bug of the test, say which
        raise ValueError(f"cannot encode {spec.signature} with {args!r}: {exc}") from exc


def batch_call(
    contract: Contract,
    fn_name: str,
    args_list: Iterable[Any],
    *,
    chunk: int = DEFAULT_CHUNK,
    block: BlockIdentifier = "latest",
    gas: int | None = None,
) -> list[Outcome]:
    """Call ``fn_name`` once per element of ``args_list`` (a tuple of arguments, or the single
    argument itself), ``chunk`` calls per ``eth_call`` through ``Batchable.batch``."""
    spec = _fn_spec(contract, fn_name)
    calls = [encode_call(spec, as_args(a)) for a in args_list]
    w3 = contract.w3
    out: list[Outcome] = []
    for start in range(0, len(calls), chunk):
        part = calls[start : start + chunk]
        data = BATCH_SELECTOR + encode(["bytes[]"], [part])
        tx: TxParams = {"to": contract.address, "data": data}
        if gas is not None:
            tx["gas"] = gas
        raw = w3.eth.call(tx, block)
        oks, rets = decode(["bool[]", "bytes[]"], raw)
        if len(oks) != len(part) or len(rets) != len(part):
            raise RuntimeError(f"batch returned {len(oks)} results for {len(part)} calls")
        for ok, ret in zip(oks, rets, strict=True):
            if ok:
                values = decode(spec.output_types, ret)
                out.append(Outcome(True, values[0] if len(values) == 1 else tuple(values)))
            else:
                out.append(Outcome(False, revert=bytes(ret)))
    return out


# --- Python side -------------------------------------------------------------------------


def python_outcome(fn: Callable[..., Any], *args: Any) -> Outcome:
    """The Python mirror's outcome: its value, or the revert data of the MarginError it raised."""
    try:
        value = fn(*args)
    except MarginError as exc:
        return Outcome(False, revert=exc.revert_data())
    except Exception as exc:
        return Outcome(False, foreign=f"{type(exc).__name__}: {exc}")
    return Outcome(True, value)


def python_outcomes(fn: Callable[..., Any], args_list: Iterable[Any]) -> list[Outcome]:
    return [python_outcome(fn, *as_args(a)) for a in args_list]


def revert_name(data: bytes, table: dict[bytes, type[MarginError]] | None = None) -> str:
    if not data:
        return "<no data>"
    sel = data[:4]
    if sel == PANIC_SELECTOR and len(data) == 36:
        return f"Panic(0x{int.from_bytes(data[4:], 'big'):02x})"
    if sel == ERROR_STRING_SELECTOR:
        return "Error(string)"
    cls = (table if table is not None else error_by_selector()).get(sel)
    return cls.__name__ if cls is not None else f"unknown 0x{sel.hex()}"
