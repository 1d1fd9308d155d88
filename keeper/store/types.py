"""Column types that keep integers exact on every backend.

WAD values (requirement, equity, bounty) exceed 64 bits, and SQLite's NUMERIC affinity turns
large numbers into 8-byte floats. ``BigInt`` therefore stores a canonical decimal *string* and
hands back a Python ``int``; ``ExactJSON`` stores JSON text in which integers stay integers (the
``json`` module reads and writes them exactly, at any size). Both refuse floats when writing:
a float in a margin record is a bug, and it must fail loudly instead of being rounded.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from keeper.secrets import scrub

#: int256 has at most 78 digits plus the sign.
BIGINT_DIGITS = 80


class BigInt(TypeDecorator[int]):
    """An arbitrary-size integer stored as its decimal string."""

    impl = String(BIGINT_DIGITS)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"BigInt column needs an int, got {type(value).__name__}")
        text = str(value)
        if len(text) > BIGINT_DIGITS:
            raise ValueError("integer too large for a BigInt column")
        return text

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def _reject_floats(value: Any, where: str = "$") -> None:
    if isinstance(value, float):
        raise TypeError(f"ExactJSON refuses the float at {where}: store an int or a string")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_floats(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _reject_floats(v, f"{where}[{i}]")


class ExactJSON(TypeDecorator[Any]):
    """JSON as TEXT (not JSONB: other readers of a JSON number may parse it as a double)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        _reject_floats(value)
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite returns naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise TypeError("UTCDateTime needs a timezone-aware datetime")
        moment = value.astimezone(UTC)
        # SQLite stores the text form; without tzinfo, so that it round-trips and sorts.
        return moment.replace(tzinfo=None) if dialect.name == "sqlite" else moment

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # the DateTime impl parses SQLite's text already
            raise TypeError(f"UTCDateTime read a {type(value).__name__}, not a datetime")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class ScrubbedText(TypeDecorator[str]):
    """Free text (revert reasons, errors, outcomes) with every registered secret masked before
    it is written: such text often quotes a third-party message we do not control."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else scrub(str(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value)
