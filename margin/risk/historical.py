"""The committed historical scenario set: filtered historical simulation from daily closes, plus
the named stress days, built deterministically in fixed point.

Pure (no I/O): the caller reads ``data/btc_usd_daily.csv`` and the stress library
(``scripts/build_historical_set.py`` writes :data:`DATA_FILE`; ``tests/test_historical_set.py``
rebuilds it and compares byte for byte). The rule (:class:`SetRule`, defaults in brackets):

1. Daily simple returns of each series: ``r_t = mul_div_down(close_t, 1e18, close_{t-1}) - 1e18``
   (closes are exact decimals scaled to WAD).
2. EWMA variance of daily returns, RiskMetrics' decay λ [0.94], seeded with the mean square
   of the first ``seed_days`` [20] returns: ``v_t = mul_down(λ, v_{t-1}) + mul_down(1e18 - λ,
   mul_down(r_t, r_t))``. ``σ_t = sqrt_down(v_{t-1})``: the volatility known before day t.
3. Filtered historical simulation: each return is rescaled from its day's volatility to the
   volatility at the end of the series, ``m_t = mul_div_down(r_t, σ_end, σ_t)``, kept within
   the model's move bounds [-0.99, 10]. The set's ``fhs_scale`` is then 1 (the moves already
   carry σ_end); a later recalibration sets it to σ_now / σ_ref without touching the moves.
   The set's reference volatility ``σ_ref = sqrt_down(v_end · 365)`` (v_end the EWMA daily
   variance after the last return: σ_end annualised, rounded down so that the scale rounds
   up) is committed per underlying in the file's ``reference_vols`` (0 for an underlying
   without a series: its historical moves are 0, no scale applies).
4. Selection: over the last ``lookback`` [320] days of the reference series (the first name
   with a series), the ``tail`` [22] most negative and ``tail`` most positive rescaled moves
   (ties: the earlier day), in date order. A joint scenario moves every underlying by its own
   rescaled move of that date; an underlying without a series (the repository has BTC only:
   ETH) moves 0 on historical days, so the grid alone covers it there.
5. Stress days (margin/risk/data/stress_days.json, each figure sourced) follow, unscaled
   (``stress_count`` of them): their cited move per underlying, 0 where the library has none.
6. ``es_count`` [8]: ES = the mean of the 8 worst joint losses; 8 of 320 days is the 2.5%
   tail, Expected Shortfall at 97.5% (the Basel FRTB confidence) over the lookback, since
   the selected tails hold a linear book's worst days in either direction.

Why only the tails: the full check prices every position in every scenario, and the gas
ceiling bounds grid + historical scenarios at MAX_SCENARIOS (90) per underlying; 44 + 5 = 49
scenarios fit next to the Deribit-like grid (34) and the SPAN-like one (23).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from margin.fixed_point import mul_div_down, mul_down, sqrt_down
from margin.params import MAX_EXTENDED_MOVE, MIN_EXTENDED_MOVE, WAD, HistoricalSet
from margin.risk.stress_days import StressScenario

FORMAT_VERSION = 1
DATA_FILE_NAME = "historical_set.json"


class HistoricalSetError(ValueError):
    """Input the builder cannot use, or a malformed set file (the message says where)."""


@dataclass(frozen=True)
class SetRule:
    lam: int = 94 * 10**16
    seed_days: int = 20
    lookback: int = 320
    tail: int = 22
    es_count: int = 8


@dataclass(frozen=True)
class Scenario:
    day: date
    name: str  # the date (historical) or the stress day's name
    stress: bool
    moves: dict[str, int]  # per underlying name, WAD


def parse_closes(csv_text: str) -> list[tuple[date, int]]:
    """(day, close as WAD) from a CSV with ``date`` and ``close`` columns, consecutive days."""
    lines = [ln for ln in csv_text.splitlines() if ln.strip()]
    if not lines:
        raise HistoricalSetError("empty price file")
    head = [h.strip() for h in lines[0].split(",")]
    if "date" not in head or "close" not in head:
        raise HistoricalSetError("the price file needs 'date' and 'close' columns")
    di, ci = head.index("date"), head.index("close")
    out: list[tuple[date, int]] = []
    for n, ln in enumerate(lines[1:], start=2):
        cells = ln.split(",")
        try:
            day = date.fromisoformat(cells[di].strip())
            close = Decimal(cells[ci].strip()) * WAD
        except (IndexError, ValueError, InvalidOperation):
            raise HistoricalSetError(f"line {n}: unreadable date or close") from None
        if close <= 0 or close != close.to_integral_value():
            raise HistoricalSetError(f"line {n}: close must be positive with <= 18 decimals")
        if out and (day - out[-1][0]).days != 1:
            raise HistoricalSetError(f"line {n}: {day} does not follow {out[-1][0]}")
        out.append((day, int(close)))
    return out


def daily_returns(closes: Sequence[tuple[date, int]]) -> list[tuple[date, int]]:
    """(day, mul_div_down(close, 1e18, previous close) - 1e18) from the second day on."""
    return [(d, mul_div_down(c, WAD, c0) - WAD) for (_, c0), (d, c) in itertools.pairwise(closes)]


def _ewma_daily(returns: Sequence[tuple[date, int]], rule: SetRule) -> tuple[list[int], int]:
    """Step 2: σ known before each day after the seed, and the variance after the last day."""
    if len(returns) <= rule.seed_days:
        raise HistoricalSetError(f"need more than {rule.seed_days} returns, got {len(returns)}")
    sq = [mul_down(r, r) for _, r in returns]
    v = sum(sq[: rule.seed_days]) // rule.seed_days
    before: list[int] = []  # sigma known before each day after the seed
    for q in sq[rule.seed_days :]:
        before.append(sqrt_down(v))
        v = mul_down(rule.lam, v) + mul_down(WAD - rule.lam, q)
    return before, v


def rescaled_moves(returns: Sequence[tuple[date, int]], rule: SetRule) -> dict[date, int]:
    """Step 2-3: each return rescaled to the volatility at the end of the series."""
    before, v = _ewma_daily(returns, rule)
    sigma_end = sqrt_down(v)
    out: dict[date, int] = {}
    for (d, r), s in zip(returns[rule.seed_days :], before, strict=True):
        m = mul_div_down(r, sigma_end, s) if s > 0 else r
        out[d] = max(MIN_EXTENDED_MOVE, min(m, MAX_EXTENDED_MOVE))
    return out


def reference_vol_down(returns: Sequence[tuple[date, int]], rule: SetRule) -> int:
    """σ_ref: the volatility the set's moves carry, annualised (WAD, rounded down):
    ``sqrt_down(v_end · 365)``, comparable with the recalibration's annual EWMA volatility."""
    _, v = _ewma_daily(returns, rule)
    return sqrt_down(v * 365)


def build_scenarios(
    series: Mapping[str, Sequence[tuple[date, int]]],
    names: Sequence[str],
    stress: Sequence[StressScenario],
    rule: SetRule = SetRule(),
) -> list[Scenario]:
    """Steps 1-5: the historical tail days (date order), then the stress days."""
    ref = next((n for n in names if n in series), None)
    if ref is None:
        raise HistoricalSetError(f"no price series for any of {list(names)}")
    moves = {n: rescaled_moves(daily_returns(series[n]), rule) for n in names if n in series}
    days = sorted(moves[ref])[-rule.lookback :]
    if len(days) < 2 * rule.tail:
        raise HistoricalSetError(f"lookback of {len(days)} days cannot hold 2 x {rule.tail} tails")
    by_move = sorted(days, key=lambda d: (moves[ref][d], d))
    up = sorted(days, key=lambda d: (-moves[ref][d], d))
    chosen = sorted(set(by_move[: rule.tail]) | set(up[: rule.tail]))
    out = [
        Scenario(
            d, d.isoformat(), False, {n: moves[n].get(d, 0) if n in moves else 0 for n in names}
        )
        for d in chosen
    ]
    for s in stress:
        m = {n: (s.moves[n.lower()].move or 0) if n.lower() in s.moves else 0 for n in names}
        out.append(Scenario(s.date, s.name, True, m))
    return out


def reference_vols(
    series: Mapping[str, Sequence[tuple[date, int]]], names: Sequence[str], rule: SetRule
) -> dict[str, int]:
    """σ_ref per underlying (0 without a series)."""
    return {
        n: reference_vol_down(daily_returns(series[n]), rule) if n in series else 0 for n in names
    }


def encode_set(
    scenarios: Sequence[Scenario],
    names: Sequence[str],
    rule: SetRule,
    sources: Mapping[str, str],
    ref_vols: Mapping[str, int],
) -> str:
    """The committed JSON (moves as WAD integer strings: exact)."""
    doc: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "comment": (
            "Historical scenario set built by scripts/build_historical_set.py (rule: "
            "margin/risk/historical.py). Moves are WAD integers (1e18 = +100%), FHS-rescaled to "
            "the volatility at the end of the series; stress days are unscaled."
        ),
        "rule": {
            "lambda": str(rule.lam),
            "seed_days": rule.seed_days,
            "lookback": rule.lookback,
            "tail": rule.tail,
            "es_count": rule.es_count,
        },
        "sources": dict(sources),
        "underlyings": list(names),
        "reference_vols": {n: str(ref_vols[n]) for n in names},
        "scenarios": [
            {
                "name": s.name,
                "date": s.day.isoformat(),
                "stress": s.stress,
                "moves": {n: str(s.moves[n]) for n in names},
            }
            for s in scenarios
        ],
    }
    return json.dumps(doc, indent=1) + "\n"


def set_reference_vols(doc_text: str, names: Sequence[str]) -> tuple[int, ...]:
    """The committed σ_ref of each of `names` (annual, WAD), in that order."""
    try:
        refs = json.loads(doc_text)["reference_vols"]
        return tuple(int(refs[n]) for n in names)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise HistoricalSetError(f"malformed set file: no reference vol {e}") from None


def historical_set(doc_text: str, names: Sequence[str]) -> HistoricalSet:
    """The committed set as a HistoricalSet for underlyings in the order `names` (a name the
    file does not carry is an error: moving it 0 must be a choice made in the builder)."""
    try:
        doc = json.loads(doc_text)
        carried = doc["underlyings"]
        scen = doc["scenarios"]
        k = int(doc["rule"]["es_count"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise HistoricalSetError(f"malformed set file: {e}") from None
    missing = [n for n in names if n not in carried]
    if missing:
        raise HistoricalSetError(f"the set has no moves for {missing} (it has {carried})")
    hist = [s for s in scen if not s["stress"]]
    stress = [s for s in scen if s["stress"]]
    if [s for s in scen if s["stress"]] != scen[len(hist) :]:
        raise HistoricalSetError("stress days must follow the historical days")
    moves = tuple(int(s["moves"][n]) for s in hist + stress for n in names)
    return HistoricalSet(
        moves=moves,
        vol_moves=(),
        stress_count=len(stress),
        fhs_scale=(WAD,) * len(names),
        es_count=min(k, len(scen)),
    )
