"""One disagreement found by the replay (every kind of check reports the same shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Fields of a margin result, in the order of the verifier's MarginResult struct.
RESULT_FIELDS = (
    "equity",
    "requirement",
    "initial_margin",
    "contingencies",
    "credit",
    "state",
    "losses",
    "witness",
    "expected_shortfall",
)


@dataclass(frozen=True)
class FieldDiff:
    field: str
    expected: Any  # what the chain (or the re-derivation from it) says
    found: Any  # what the checked party (verifier, record, event) says


@dataclass
class Mismatch:
    #: verifier | marginOf | decision | liquidation | margin_call | derivation | transaction |
    #: unrecorded_transaction | missing_transaction (keeper/replay/record.py)
    kind: str
    block: int
    account: int | None
    message: str
    fields: list[FieldDiff] = field(default_factory=list)
    decision_id: int | None = None
    tx_id: int | None = None  # the ``tx`` row, for the record checks

    def line(self) -> str:
        who = f"decision {self.decision_id} " if self.decision_id is not None else ""
        if self.tx_id is not None:
            who = f"tx {self.tx_id} " + who
        acct = f", account {hex(self.account)}" if self.account is not None else ""
        head = f"MISMATCH {self.kind}: {who}(block {self.block}{acct}): {self.message}"
        diffs = "; ".join(
            f"{d.field}: expected {d.expected!r}, found {d.found!r}" for d in self.fields
        )
        return head + (f" -- {diffs}" if diffs else "")


def normalise(value: Any) -> Any:
    """Tuples and lists compare equal; nested."""
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return value


def result_diffs(
    expected: tuple[Any, ...] | list[Any], found: tuple[Any, ...] | list[Any]
) -> list[FieldDiff]:
    return [
        FieldDiff(name, normalise(e), normalise(f))
        for name, e, f in zip(RESULT_FIELDS, expected, found, strict=True)
        if normalise(e) != normalise(f)
    ]
