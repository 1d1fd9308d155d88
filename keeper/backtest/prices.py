"""Daily price histories from CSV: ``date`` (ISO, strictly increasing) plus price columns.

Prices are decimal strings scaled exactly to WAD (at most 18 decimals), like the portfolio
format; a value that is not a positive decimal is a named error with its line number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

WAD = 10**18
#: A daily history of a century is ~36,500 rows; refuse anything absurdly larger.
MAX_FILE_BYTES = 64 << 20
MAX_ROWS = 200_000
#: Days are unix timestamps (the market's clock): none before the epoch.
EPOCH = date(1970, 1, 1)


class PriceFileError(Exception):
    """A rejected price file, printed as ``error: <class name>: <message>``."""


class PriceFileNotFound(PriceFileError):
    pass


class PriceFileUnreadable(PriceFileError):
    pass


class PriceFileTooLarge(PriceFileError):
    pass


class PriceFormatError(PriceFileError):
    """Bad header, bad date, bad number, non-increasing dates (message names the line)."""


class MissingPriceColumn(PriceFileError):
    pass


@dataclass(frozen=True)
class PriceHistory:
    """Daily closes: ``columns[name][i]`` is the WAD price of ``name`` on ``dates[i]``."""

    dates: tuple[date, ...]
    columns: dict[str, tuple[int, ...]]

    def timestamp(self, i: int) -> int:
        """Unix seconds of day i at 00:00 UTC."""
        d = self.dates[i]
        return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())

    def column(self, name: str) -> tuple[int, ...]:
        try:
            return self.columns[name]
        except KeyError:
            have = ", ".join(sorted(self.columns))
            raise MissingPriceColumn(f"no price column {name!r} (columns: {have})") from None

    def between(self, first: date | None, last: date | None) -> PriceHistory:
        keep = [
            i
            for i, d in enumerate(self.dates)
            if (first is None or d >= first) and (last is None or d <= last)
        ]
        return PriceHistory(
            tuple(self.dates[i] for i in keep),
            {k: tuple(v[i] for i in keep) for k, v in self.columns.items()},
        )


def decimal_to_wad(text: str, where: str) -> int:
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise PriceFormatError(f"{where}: not a decimal number: {text[:40]!r}") from None
    if not d.is_finite() or abs(d.adjusted()) > 30:
        raise PriceFormatError(f"{where}: number out of range: {text[:40]!r}")
    scaled = d.scaleb(18)
    if scaled != scaled.to_integral_value():
        raise PriceFormatError(f"{where}: more than 18 decimals: {text[:40]!r}")
    return int(scaled)


def parse_prices(text: str, source: str = "prices") -> PriceHistory:
    try:
        return _parse(csv.reader(io.StringIO(text)), source)
    except csv.Error as e:  # a NUL byte, a field over the csv module's size limit
        raise PriceFormatError(f"{source}: not a readable CSV: {e}") from None


def _parse(reader: Iterator[list[str]], source: str) -> PriceHistory:
    try:
        header = next(reader)
    except StopIteration:
        raise PriceFormatError(f"{source}: empty file") from None
    header = [h.strip() for h in header]
    if not header or header[0] != "date":
        raise PriceFormatError(f"{source}: line 1: the first column must be 'date'")
    if len(set(header)) != len(header):
        raise PriceFormatError(f"{source}: line 1: duplicate column names")
    dates: list[date] = []
    values: list[list[int]] = [[] for _ in header[1:]]
    for n, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise PriceFormatError(
                f"{source}: line {n}: {len(row)} fields, the header has {len(header)}"
            )
        try:
            d = date.fromisoformat(row[0].strip())
        except ValueError:
            raise PriceFormatError(
                f"{source}: line {n}: not an ISO date: {row[0][:40]!r}"
            ) from None
        if d < EPOCH:
            raise PriceFormatError(f"{source}: line {n}: date {d} before 1970-01-01")
        if dates and d <= dates[-1]:
            raise PriceFormatError(f"{source}: line {n}: date {d} not after {dates[-1]}")
        for j, cell in enumerate(row[1:]):
            wad = decimal_to_wad(cell, f"{source}: line {n}, column {header[j + 1]}")
            if wad <= 0:
                raise PriceFormatError(
                    f"{source}: line {n}, column {header[j + 1]}: price must be positive"
                )
            values[j].append(wad)
        dates.append(d)
        if len(dates) > MAX_ROWS:
            raise PriceFileTooLarge(f"{source}: more than {MAX_ROWS} rows")
    if not dates:
        raise PriceFormatError(f"{source}: no data rows")
    return PriceHistory(
        tuple(dates), {h: tuple(v) for h, v in zip(header[1:], values, strict=True)}
    )


def read_prices(path: Path) -> PriceHistory:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PriceFileNotFound(f"no such file: {path}") from None
    except OSError as e:
        raise PriceFileUnreadable(f"{path}: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PriceFileTooLarge(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PriceFormatError(f"{path}: not UTF-8 text: {e}") from None
    return parse_prices(text, str(path))
