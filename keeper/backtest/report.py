"""The backtest's JSON summary and its self-contained HTML report (inline SVG, no script)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from keeper.backtest.engine import Day
from margin.risk.coverage_tests import (
    christoffersen_independence,
    conditional_coverage,
    kupiec_pof,
)
from margin.tools.loader import wad_to_decimal

#: Exceedance rows listed in the HTML table (the JSON lists them all).
MAX_HTML_ROWS = 300
#: The loss/requirement chart clips its y axis here (values beyond are drawn at the edge).
RATIO_CLIP = (-2.0, 4.0)


def summarize(days: Sequence[Day], expected_rate: float, meta: dict[str, Any]) -> dict[str, Any]:
    hits = [d.exceeded for d in days]
    kup = kupiec_pof(hits, expected_rate)
    ind = christoffersen_independence(hits)
    cc = conditional_coverage(kup, ind)
    return {
        **meta,
        "first_day": days[0].date.isoformat(),
        "last_day": days[-1].date.isoformat(),
        "observations": kup.observations,
        "exceedances": kup.exceedances,
        "expected_rate": expected_rate,
        "exceedance_rate": kup.observed_rate,
        "kupiec_pof": {"lr": kup.lr, "p_value": kup.p_value},
        "christoffersen_independence": {
            "n00": ind.n00,
            "n01": ind.n01,
            "n10": ind.n10,
            "n11": ind.n11,
            "pi01": ind.pi01,
            "pi11": ind.pi11,
            "lr": ind.lr,
            "p_value": ind.p_value,
        },
        "conditional_coverage": {"lr": cc.lr, "p_value": cc.p_value},
        "exceedance_days": [
            {
                "date": d.date.isoformat(),
                "horizon_date": d.horizon_date.isoformat(),
                "loss": wad_to_decimal(d.loss),
                "requirement": wad_to_decimal(d.requirement),
            }
            for d in days
            if d.exceeded
        ],
    }


def _ratio(d: Day) -> float:
    if d.requirement <= 0:  # nothing held: any loss is off the chart
        return RATIO_CLIP[1] if d.loss > 0 else 0.0
    r = d.loss / d.requirement
    return min(max(r, RATIO_CLIP[0]), RATIO_CLIP[1])


def _svg_frame(w: int, h: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>',
        f'<text x="10" y="16" font-size="13" font-family="sans-serif">{html.escape(title)}</text>',
    ]


def ratio_chart(days: Sequence[Day], w: int = 960, h: int = 300) -> str:
    """Daily loss / requirement; above 1 (the dashed line) is an exceedance, drawn red."""
    left, right, top, bottom = 50, 10, 25, 25
    lo, hi = RATIO_CLIP
    n = max(len(days) - 1, 1)

    def x(i: int) -> float:
        return left + (w - left - right) * i / n

    def y(v: float) -> float:
        return top + (h - top - bottom) * (hi - v) / (hi - lo)

    out = _svg_frame(w, h, "Loss over the horizon / requirement (clipped to [-2, 4])")
    for v in (-2, -1, 0, 1, 2, 3, 4):
        dash = ' stroke-dasharray="4 3"' if v == 1 else ""
        color = "#c00" if v == 1 else "#eee"
        out.append(
            f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="{color}"{dash}/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end" '
            f'font-family="sans-serif">{v}</text>'
        )
    pts = " ".join(f"{x(i):.1f},{y(_ratio(d)):.1f}" for i, d in enumerate(days))
    out.append(f'<polyline fill="none" stroke="#36c" stroke-width="0.6" points="{pts}"/>')
    for i, d in enumerate(days):
        if d.exceeded:
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(_ratio(d)):.1f}" r="2.5" fill="#c00"/>')
    for i in (0, len(days) // 2, len(days) - 1):
        out.append(
            f'<text x="{x(i):.1f}" y="{h - 8}" font-size="10" text-anchor="middle" '
            f'font-family="sans-serif">{days[i].date.isoformat()}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def cumulative_chart(days: Sequence[Day], expected_rate: float, w: int = 960, h: int = 260) -> str:
    """Cumulative exceedances (red) against the expected count p·t (grey)."""
    left, right, top, bottom = 50, 10, 25, 25
    n = max(len(days) - 1, 1)
    counts: list[int] = []
    c = 0
    for d in days:
        c += d.exceeded
        counts.append(c)
    top_v = max(counts[-1], expected_rate * len(days), 1.0)

    def x(i: int) -> float:
        return left + (w - left - right) * i / n

    def y(v: float) -> float:
        return top + (h - top - bottom) * (1 - v / top_v)

    out = _svg_frame(w, h, "Cumulative exceedances (red) vs expected (grey)")
    out.append(
        f'<line x1="{x(0):.1f}" y1="{y(0):.1f}" x2="{x(n):.1f}" '
        f'y2="{y(expected_rate * len(days)):.1f}" stroke="#999"/>'
    )
    pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(counts))
    out.append(f'<polyline fill="none" stroke="#c00" stroke-width="1.2" points="{pts}"/>')
    out.append(
        f'<text x="{left - 6}" y="{y(top_v) + 4:.1f}" font-size="10" text-anchor="end" '
        f'font-family="sans-serif">{top_v:.0f}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def render_html(summary: dict[str, Any], days: Sequence[Day]) -> str:
    esc = html.escape
    kup, ind, cc = (
        summary["kupiec_pof"],
        summary["christoffersen_independence"],
        summary["conditional_coverage"],
    )
    rows = [
        ("Book", summary.get("book", "")),
        ("Prices", summary.get("prices", "")),
        ("Days", f"{summary['first_day']} to {summary['last_day']} ({summary['observations']})"),
        ("Horizon", f"{summary.get('horizon_days')} day(s), against {summary.get('against')}"),
        (
            "Exceedances",
            f"{summary['exceedances']} (rate {summary['exceedance_rate']:.4%}, "
            f"expected {summary['expected_rate']:.4%})",
        ),
        ("Kupiec POF", f"LR = {kup['lr']:.4f}, p-value = {kup['p_value']:.4g}"),
        (
            "Christoffersen independence",
            f"LR = {ind['lr']:.4f}, p-value = {ind['p_value']:.4g} "
            f"(n00={ind['n00']}, n01={ind['n01']}, n10={ind['n10']}, n11={ind['n11']})",
        ),
        ("Conditional coverage", f"LR = {cc['lr']:.4f}, p-value = {cc['p_value']:.4g}"),
    ]
    table = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
    ex = summary["exceedance_days"]
    ex_rows = "\n".join(
        f"<tr><td>{esc(e['date'])}</td><td>{esc(e['horizon_date'])}</td>"
        f"<td>{esc(e['loss'])}</td><td>{esc(e['requirement'])}</td></tr>"
        for e in ex[:MAX_HTML_ROWS]
    )
    more = (
        f"<p>{len(ex) - MAX_HTML_ROWS} more in the JSON summary.</p>"
        if len(ex) > MAX_HTML_ROWS
        else ""
    )
    note = (
        "<p>With a horizon longer than one day the windows overlap, so exceedances on "
        "neighbouring days are dependent by construction and the independence test is "
        "not meaningful.</p>"
        if (summary.get("horizon_days") or 1) > 1
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Margin backtest</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}
table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
</style></head><body>
<h1>Margin backtest</h1>
<table>{table}</table>
{note}
<h2>Loss against requirement</h2>
{ratio_chart(days)}
<h2>Exceedances over time</h2>
{cumulative_chart(days, summary["expected_rate"])}
<h2>Exceedance days</h2>
<table><tr><th>Day</th><th>Horizon end</th><th>Loss</th><th>Requirement</th></tr>
{ex_rows}</table>
{more}
</body></html>
"""
