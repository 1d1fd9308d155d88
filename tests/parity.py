"""Differential-test plumbing: the same inputs through the Solidity contract and the Python
mirror, compared outcome by outcome (value to the wei, or revert data byte for byte).

- ``batch_call`` sends a whole chunk of calls in ONE ``eth_call`` through ``Batchable.batch``.
- ``python_outcome`` runs the Python mirror and turns a ``MarginError`` into the revert data the
  contract would return (``Panic`` subclasses give ``Panic(uint256)`` data).
- ``assert_parity`` compares both lists and fails with the first mismatches, readably.
- ``check_parity`` = all three; it returns a tally of the outcomes, so a test can also assert
  that its inputs reached the failure regions it meant to reach.

``batch_call``, ``Outcome`` and ``python_outcome`` live in keeper.batchcall (the demo uses them
too) and are re-exported here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from web3.contract import Contract

from keeper.batchcall import (
    BATCH_SELECTOR,
    DEFAULT_CHUNK,
    ERROR_STRING_SELECTOR,
    PANIC_SELECTOR,
    Outcome,
    as_args,
    batch_call,
    describe_revert,
    format_value,
    python_outcome,
    python_outcomes,
    revert_name,
)
from margin.errors import MarginError, error_by_selector

__all__ = [
    "BATCH_SELECTOR",
    "DEFAULT_CHUNK",
    "ERROR_STRING_SELECTOR",
    "PANIC_SELECTOR",
    "Outcome",
    "assert_parity",
    "batch_call",
    "check_parity",
    "describe_revert",
    "outcome_kind",
    "python_outcome",
    "python_outcomes",
    "revert_name",
]


# --- comparison --------------------------------------------------------------------------


def outcome_kind(o: Outcome, table: dict[bytes, type[MarginError]] | None = None) -> str:
    """A tally key: "ok", "foreign", "Panic(0x11)", the error name, or "unknown 0x<selector>"."""
    if o.foreign is not None:
        return "foreign"
    if o.ok:
        return "ok"
    return revert_name(o.revert, table)


def assert_parity(
    label: str,
    inputs: Sequence[Any],
    solidity: Sequence[Outcome],
    python: Sequence[Outcome],
    *,
    show: int = 5,
) -> Counter[str]:
    """Fail unless every outcome is equal; the message shows the first ``show`` mismatches.

    Returns the tally of outcome kinds (see ``outcome_kind``).
    """
    if not (len(inputs) == len(solidity) == len(python)):
        raise AssertionError(
            f"{label}: length mismatch: {len(inputs)} inputs, {len(solidity)} solidity, "
            f"{len(python)} python outcomes"
        )
    bad = [i for i, (s, p) in enumerate(zip(solidity, python, strict=True)) if s != p]
    if bad:
        head = f"{label}: {len(bad)} of {len(inputs)} outcomes differ; first {min(show, len(bad))}:"
        lines = [head]
        for i in bad[:show]:
            s, p = solidity[i], python[i]
            args = ", ".join(format_value(a) for a in as_args(inputs[i]))
            lines.append(f"  [{i}] {label}({args})")
            lines.append(f"      solidity: {s.describe()}")
            lines.append(f"      python:   {p.describe()}")
            if s.ok and p.ok and isinstance(s.value, int) and isinstance(p.value, int):
                lines.append(f"      python - solidity = {p.value - s.value} wei")
        raise AssertionError("\n".join(lines))
    table = error_by_selector()
    return Counter(outcome_kind(o, table) for o in solidity)


def check_parity(
    contract: Contract,
    fn_name: str,
    py_fn: Callable[..., Any],
    args_list: Iterable[Any],
    *,
    chunk: int = DEFAULT_CHUNK,
    show: int = 5,
) -> Counter[str]:
    """Batch-call the contract and the mirror on the same inputs; assert equal outcomes."""
    inputs = list(args_list)
    solidity = batch_call(contract, fn_name, inputs, chunk=chunk)
    python = python_outcomes(py_fn, inputs)
    return assert_parity(fn_name, inputs, solidity, python, show=show)
