"""The stress library: named crypto stress days as hypothetical BTC / ETH price moves.

The data is ``margin/risk/data/stress_days.json`` (:data:`DATA_FILE`; the caller reads it, this
module only parses). Every figure carries its source: ``{"kind": "csv", "file": ...}`` for moves
computed from a price file in the repository (with the prices they come from), or
``{"kind": "citation", "url": ..., "states": ...}`` for figures taken from a public page
(``states`` says in our words what the page reports; ``note``, if any, how it was read). A move
may be ``null`` only with ``unavailable_reason``: a figure nobody can cite is not invented.

Moves are exact decimals scaled to WAD (``"-0.3881"`` -> ``-388_100_000_000_000_000``), in the
unit of :class:`margin.params.ExtendedMove`, so a scenario can be added to a grid's extended
moves with :func:`as_extended_moves`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from margin.params import MAX_EXTENDED_MOVE, MIN_EXTENDED_MOVE, WAD, ExtendedMove

DATA_FILE = Path(__file__).resolve().parent / "data" / "stress_days.json"
FORMAT_VERSION = 1
ASSETS = ("btc", "eth")
MEASURES = frozenset({"close_to_close", "week_to_date", "24h", "peak_to_trough"})


class StressLibraryError(ValueError):
    """A malformed stress library; the message names the JSON path."""


class InvalidStressJSON(StressLibraryError):
    pass


class MissingStressField(StressLibraryError):
    pass


class InvalidStressValue(StressLibraryError):
    pass


class UnsourcedStressFigure(StressLibraryError):
    """A move without a usable source, or a null move without the reason."""


class DuplicateStressScenario(StressLibraryError):
    pass


@dataclass(frozen=True)
class Source:
    kind: str  # "csv" or "citation"
    reference: str  # the file (csv) or the URL (citation)
    states: str | None = None  # citation: what the page reports, paraphrased


@dataclass(frozen=True)
class AssetMove:
    move: int | None  # WAD relative move, None when no source gives one
    measure: str | None
    window: tuple[date, date] | None
    source: Source | None
    unavailable_reason: str | None = None
    intraday_move: int | None = None  # csv only: previous close to the lowest low
    from_price: str | None = None  # csv only: the closes the move is computed from
    to_price: str | None = None
    low_price: str | None = None


@dataclass(frozen=True)
class StressScenario:
    name: str
    title: str
    date: date
    moves: dict[str, AssetMove]  # "btc", "eth"


def _get(d: dict[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise MissingStressField(f"{path}.{key}: required field is missing")
    return d[key]


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise InvalidStressValue(f"{path}: expected a non-empty string")
    return v


def _date(v: Any, path: str) -> date:
    try:
        return date.fromisoformat(_str(v, path))
    except ValueError:
        raise InvalidStressValue(f"{path}: not an ISO date: {v!r}") from None


def move_to_wad(v: Any, path: str) -> int:
    """An exact decimal string -> WAD, within the extended-move bounds of the grid."""
    if not isinstance(v, str):
        raise InvalidStressValue(f"{path}: a move is a decimal string, got {type(v).__name__}")
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise InvalidStressValue(f"{path}: not a decimal: {v!r}") from None
    if not d.is_finite():
        raise InvalidStressValue(f"{path}: not a finite decimal: {v!r}")
    scaled = d * WAD
    if scaled != scaled.to_integral_value():
        raise InvalidStressValue(f"{path}: more than 18 decimals: {v!r}")
    wad = int(scaled)
    if not MIN_EXTENDED_MOVE <= wad <= MAX_EXTENDED_MOVE:
        raise InvalidStressValue(f"{path}: move {v} outside [-0.99, 10]")
    return wad


def _source(v: Any, path: str) -> Source:
    if not isinstance(v, dict):
        raise UnsourcedStressFigure(f"{path}: a figure needs a source object")
    kind = _str(_get(v, "kind", path), f"{path}.kind")
    if kind == "csv":
        return Source(kind, _str(_get(v, "file", path), f"{path}.file"))
    if kind == "citation":
        url = _str(_get(v, "url", path), f"{path}.url")
        if not url.startswith("https://"):
            raise UnsourcedStressFigure(f"{path}.url: a citation is an https:// address")
        return Source(kind, url, _str(_get(v, "states", path), f"{path}.states"))
    raise UnsourcedStressFigure(f"{path}.kind: 'csv' or 'citation', got {kind!r}")


def _asset_move(v: Any, path: str) -> AssetMove:
    if not isinstance(v, dict):
        raise InvalidStressValue(f"{path}: expected an object")
    raw = _get(v, "move", path)
    if raw is None:
        reason = v.get("unavailable_reason")
        if not isinstance(reason, str) or not reason:
            raise UnsourcedStressFigure(f"{path}: a null move needs unavailable_reason")
        return AssetMove(None, None, None, None, reason)
    move = move_to_wad(raw, f"{path}.move")
    measure = _str(_get(v, "measure", path), f"{path}.measure")
    if measure not in MEASURES:
        raise InvalidStressValue(f"{path}.measure: one of {sorted(MEASURES)}, got {measure!r}")
    w = _get(v, "window", path)
    if not isinstance(w, list) or len(w) != 2:
        raise InvalidStressValue(f"{path}.window: expected [from, to]")
    window = (_date(w[0], f"{path}.window[0]"), _date(w[1], f"{path}.window[1]"))
    if window[0] > window[1]:
        raise InvalidStressValue(f"{path}.window: from after to")
    source = _source(_get(v, "source", path), f"{path}.source")
    if source.kind == "csv":
        return AssetMove(
            move,
            measure,
            window,
            source,
            intraday_move=move_to_wad(_get(v, "intraday_move", path), f"{path}.intraday_move"),
            from_price=_str(_get(v, "from_price", path), f"{path}.from_price"),
            to_price=_str(_get(v, "to_price", path), f"{path}.to_price"),
            low_price=_str(_get(v, "low_price", path), f"{path}.low_price"),
        )
    return AssetMove(move, measure, window, source)


def parse_stress_library(source: str | bytes | dict[str, Any]) -> tuple[StressScenario, ...]:
    """Parse the library (JSON text or a parsed dict); typed errors name the JSON path."""
    if isinstance(source, str | bytes):
        try:
            doc = json.loads(source)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidStressJSON(f"not valid JSON: {e}") from None
    else:
        doc = source
    if not isinstance(doc, dict):
        raise InvalidStressJSON("the library is a JSON object")
    if _get(doc, "version", "") != FORMAT_VERSION:
        raise InvalidStressValue(f"version: unsupported version {doc['version']!r}")
    items = _get(doc, "scenarios", "")
    if not isinstance(items, list) or not items:
        raise InvalidStressValue("scenarios: expected a non-empty list")
    out: list[StressScenario] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        path = f"scenarios[{i}]"
        if not isinstance(item, dict):
            raise InvalidStressValue(f"{path}: expected an object")
        name = _str(_get(item, "name", path), f"{path}.name")
        if name in seen:
            raise DuplicateStressScenario(f"{path}.name: {name!r} appears twice")
        seen.add(name)
        moves = {a: _asset_move(_get(item, a, path), f"{path}.{a}") for a in ASSETS}
        out.append(
            StressScenario(
                name,
                _str(_get(item, "title", path), f"{path}.title"),
                _date(_get(item, "date", path), f"{path}.date"),
                moves,
            )
        )
    return tuple(out)


def as_extended_moves(
    scenarios: tuple[StressScenario, ...], asset: str, vol_state: int, weight: int
) -> tuple[ExtendedMove, ...]:
    """The library's moves of one asset as extended grid moves (scenarios without a figure
    for that asset are skipped). Weight and vol state are the operator's choice."""
    if asset not in ASSETS:
        raise InvalidStressValue(f"asset: one of {ASSETS}, got {asset!r}")
    return tuple(
        ExtendedMove(m, vol_state, weight)
        for s in scenarios
        if (m := s.moves[asset].move) is not None
    )
