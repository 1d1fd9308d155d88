"""The replay's HTML report: a directory of small static pages, built from the NDJSON report.

``index.html`` opens with the verdict and the mismatches, then the liquidations and margin
calls, then an index of the accounts (one row each: decisions, worst state, least headroom,
mismatches) linking to ``accounts/<id>.html``: the account's plot of equity, maintenance and
initial margin over the blocks (inline SVG, liquidations and margin calls marked) and its
decisions, ``ACCOUNT_PAGE_ROWS`` per page, the risk matrix of every decision that is not a plain
healthy one. No script, nothing loaded from the network.

The NDJSON file is read once, line by line: decisions are spooled per account to temporary
files (at most ``OPEN_SPOOLS`` open at a time), so memory holds one account's rows at most.
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

WAD = 10**18
#: Decision rows per account page.
ACCOUNT_PAGE_ROWS = 500
#: Mismatches listed on the index page (the NDJSON report has every one).
INDEX_MISMATCHES = 500
#: Spool files kept open at once while reading the report.
OPEN_SPOOLS = 64
#: Points of a plot drawn with a marker (beyond: the line only, to keep the page light).
PLOT_MARKERS = 40

_SEVERITY = {"healthy": 0, "margin_call": 1, "liquidatable": 2}
_VOL_STATES = ("down", "unchanged", "up")

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:1.5em auto;color:#222;max-width:1100px;
padding:0 1em} h1,p{overflow-wrap:anywhere}
h1{font-size:1.4em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em;width:100%}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right;vertical-align:top;
white-space:nowrap} th{background:#f4f4f4} td.l,th.l{text-align:left}
td.l{white-space:normal;overflow-wrap:break-word}
.ok{color:#1a7f37} .bad{color:#c62828;font-weight:bold}
.verdict{padding:.6em 1em;border-radius:4px;font-weight:bold}
.verdict.ok{background:#e6f4ea} .verdict.bad{background:#fdecea}
td.w{background:#c62828;color:#fff;font-weight:bold} details{margin:.2em 0}
.healthy{color:#1a7f37} .margin_call,.flagged_grace{color:#b26a00} .liquidatable{color:#c62828}
svg{width:100%;height:auto} svg text{font-size:11px;fill:#444}
nav a{margin-right:.8em} code{font-size:.9em}
"""


def _wad(x: Any, places: int = 2) -> str:
    if x is None:
        return "-"
    return f"{Decimal(int(x)) / WAD:,.{places}f}"


def _pct(x: Any) -> str:
    return f"{Decimal(int(x)) * 100 / WAD:+.1f}%"


def _e(x: object) -> str:
    return html.escape(str(x))


def _short(a: int) -> str:
    h = hex(a)
    return h if len(h) <= 20 else f"{h[:10]}…{h[-6:]}"


def _page(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


@dataclass
class _Account:
    """What the index shows of one account (a few numbers: memory per account, not per row)."""

    id: int
    decisions: int = 0
    worst: str = "healthy"
    headroom: int | None = None  # least equity - maintenance margin
    headroom_block: int | None = None
    lenient: int = 0
    mismatches: int = 0
    claims: list[dict[str, Any]] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return f"{self.id:x}"


class _Spools:
    """Per-account append-only files; an LRU of open handles."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open: OrderedDict[int, IO[str]] = OrderedDict()

    def path(self, account: int) -> Path:
        return self.root / f"{account:x}.ndjson"

    def write(self, account: int, line: str) -> None:
        f = self.open.pop(account, None)
        if f is None:
            if len(self.open) >= OPEN_SPOOLS:
                _, old = self.open.popitem(last=False)
                old.close()
            f = self.path(account).open("a")
        self.open[account] = f
        f.write(line)

    def close(self) -> None:
        for f in self.open.values():
            f.close()
        self.open.clear()


def write_html(ndjson: Path, out_dir: Path) -> Path:
    """Build the report directory from an NDJSON report; returns the index page's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = out_dir / "accounts"
    if pages.exists():
        shutil.rmtree(pages)  # pages of an earlier report would otherwise linger
    pages.mkdir()
    header: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    mismatches: list[dict[str, Any]] = []
    n_mismatches = 0
    claims: list[dict[str, Any]] = []
    accounts: dict[int, _Account] = {}
    grids: dict[str, list[list[dict[str, Any]]]] = {}
    block_reasons: list[str] = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spool-") as tmp:
        spools = _Spools(Path(tmp))
        try:
            with ndjson.open() as f:
                for line in f:
                    obj = json.loads(line)
                    kind = obj.get("type")
                    if kind == "decision":
                        a = int(obj["account"])
                        acc = accounts.setdefault(a, _Account(a))
                        _tally(acc, obj)
                        if "reasons" not in obj:  # the block line's
                            obj["reasons"] = block_reasons
                            line = json.dumps(obj, separators=(",", ":")) + "\n"
                        spools.write(a, line)
                    elif kind == "block":
                        block_reasons = obj.get("reasons", [])
                    elif kind in ("liquidation", "margin_call"):
                        claims.append(obj)
                        a = int(obj["account"])
                        accounts.setdefault(a, _Account(a)).claims.append(obj)
                    elif kind == "mismatch":
                        n_mismatches += 1
                        if obj.get("account") is not None:
                            a = int(obj["account"])
                            accounts.setdefault(a, _Account(a)).mismatches += 1
                        if len(mismatches) < INDEX_MISMATCHES:
                            mismatches.append(obj)
                    elif kind == "grid":
                        grids[obj["grid"]] = obj["scenarios"]
                    elif kind == "summary":
                        summary = obj
                    elif kind == "replay":
                        header = obj
        finally:
            spools.close()
        rng = summary.get("range") or header.get("range") or {}
        first, last = int(rng.get("from") or 0), int(rng.get("to") or 0)
        for acc in accounts.values():
            _write_account(acc, spools.path(acc.id), pages, first, last, grids)
    index = out_dir / "index.html"
    index.write_text(_index(summary, header, mismatches, n_mismatches, claims, accounts))
    return index


def _tally(acc: _Account, d: dict[str, Any]) -> None:
    acc.decisions += 1
    state = d.get("state") or "no result"
    if _SEVERITY.get(state, 3) > _SEVERITY.get(acc.worst, 3) or state == "no result":
        acc.worst = state
    if d.get("lenient"):
        acc.lenient += 1
    if d.get("equity") is not None:
        room = int(d["equity"]) - int(d["requirement"])
        if acc.headroom is None or room < acc.headroom:
            acc.headroom, acc.headroom_block = room, d["block"]


def _mismatch_rows(mismatches: list[dict[str, Any]], link: bool) -> list[str]:
    out = [
        "<table><tr><th>block</th><th class=l>kind</th><th>row</th><th class=l>account</th>"
        "<th class=l>what</th></tr>"
    ]
    for m in mismatches:
        fields = "".join(
            f"<br>{_e(f['field'])}: expected <code>{_e(f['expected'])}</code>, found "
            f"<code>{_e(f['found'])}</code>"
            for f in m["fields"]
        )
        row = ", ".join(
            x
            for x in (
                f"tx {m['tx_id']}" if m.get("tx_id") is not None else "",
                f"decision {m['decision_id']}" if m.get("decision_id") is not None else "",
            )
            if x
        )
        if m.get("account") is None:
            acct = "-"
        else:
            a = int(m["account"])
            acct = f"<a href='accounts/{a:x}.html'>{_short(a)}</a>" if link else _short(a)
        out.append(
            f"<tr><td>{m['block']}</td><td class=l>{_e(m['kind'])}</td><td>{row or '-'}</td>"
            f"<td class=l>{acct}</td><td class=l>{_e(m['message'])}{fields}</td></tr>"
        )
    out.append("</table>")
    return out


def _claim_rows(claims: list[dict[str, Any]], link: bool) -> list[str]:
    out = [
        "<table><tr><th>block</th><th class=l>kind</th><th class=l>account</th>"
        "<th class=l>witness</th><th class=l>state</th><th class=l>check</th>"
        "<th class=l>details</th></tr>"
    ]
    for c in claims:
        ev = c["event"]
        a = int(c["account"])
        acct = f"<a href='accounts/{a:x}.html'>{_short(a)}</a>" if link else _short(a)
        status = "<span class=ok>proven</span>"
        if not c["proven"]:
            status = "<span class=bad>NOT proven</span>"
        if c["kind"] == "liquidation":
            taken = ", ".join(
                f"#{t['instrument']}: {_wad(t['quantity'], 4)} @ {_wad(t['price'])}"
                for t in c["positions_taken_over"]
            )
            detail = (
                f"fraction {_wad(ev['fraction'], 4)}, equity {_wad(ev['equity'])}, requirement "
                f"{_wad(ev['requirement'])}, penalty {_wad(ev['penalty'])}, bounty "
                f"{_wad(ev['bounty'])} (re-derived {_wad(c['rederived']['bounty'])}), to insurance "
                f"{_wad(ev['toInsurance'])}; credited {_wad(c['bounty_credited'])}; liquidator "
                f"{_e(ev['liquidator'])}; positions taken over: {taken or '-'}"
            )
        else:
            detail = (
                f"equity {_wad(ev['equity'])}, initial margin {_wad(ev['initialMargin'])}, "
                f"flagger {_e(ev['flagger'])}"
            )
        notes = "".join(f"<br><i>{_e(n)}</i>" for n in c["notes"])
        out.append(
            f"<tr><td>{c['block']}</td><td class=l>{c['kind']}</td><td class=l>{acct}</td>"
            f"<td class=l>{c['witness']} ({_e(c['witness_source'])})</td>"
            f"<td class=l>{_e(c['state_under_witness'])}</td><td class=l>{status}</td>"
            f"<td class=l>{detail}{notes}</td></tr>"
        )
    out.append("</table>")
    return out


def _index(
    summary: dict[str, Any],
    header: dict[str, Any],
    mismatches: list[dict[str, Any]],
    n_mismatches: int,
    claims: list[dict[str, Any]],
    accounts: dict[int, _Account],
) -> str:
    ok = summary.get("verdict") == "clean"
    rng = summary.get("range") or header.get("range") or {}
    title = f"Audit replay: blocks {rng.get('from')}..{rng.get('to')}, chain " + str(
        summary.get("chain_id", header.get("chain_id"))
    )
    verdict = summary.get("summary") or "the report has no summary line: the replay did not finish"
    h = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="verdict {"ok" if ok else "bad"}">{_e(verdict)}</p>',
        f"<p>source: {_e(summary.get('source', header.get('source')))}; head "
        f"{_e(summary.get('head', '-'))}</p>",
        "<nav><a href='#mismatches'>mismatches</a><a href='#claims'>liquidations and margin "
        "calls</a><a href='#accounts'>accounts</a></nav>",
        f"<h2 id=mismatches>Mismatches ({n_mismatches})</h2>",
    ]
    if mismatches:
        h += _mismatch_rows(mismatches, link=True)
        if n_mismatches > len(mismatches):
            h.append(
                f"<p>{n_mismatches - len(mismatches)} more in the NDJSON report "
                "(lines with type mismatch).</p>"
            )
    else:
        h.append("<p class=ok>none</p>")
    h.append(f"<h2 id=claims>Liquidations and margin calls ({len(claims)})</h2>")
    h += _claim_rows(claims, link=True) if claims else ["<p>none in the range</p>"]
    h.append(f"<h2 id=accounts>Accounts ({len(accounts)})</h2>")
    h.append(
        "<p>Ordered by least headroom (equity − maintenance margin) first. <b>worst state</b>: "
        "the most severe state of any of its decisions (healthy &lt; margin_call &lt; "
        "liquidatable); <b>lenient</b>: decisions taken with the liquidation oracle ages "
        "(a strict price was stale).</p>"
    )
    h.append(
        "<table><tr><th class=l>account</th><th>decisions</th><th class=l>worst state</th>"
        "<th>least headroom</th><th>at block</th><th>lenient</th><th>liquidations / "
        "margin calls</th><th>mismatches</th></tr>"
    )

    def order(a: _Account) -> tuple[int, int, int]:
        return (-a.mismatches, a.headroom if a.headroom is not None else 0, a.id)

    for a in sorted(accounts.values(), key=order):
        bad = " class=bad" if a.mismatches else ""
        h.append(
            f"<tr><td class=l><a href='accounts/{a.slug}.html'>{_short(a.id)}</a></td>"
            f"<td>{a.decisions}</td><td class='l {_e(a.worst)}'>{_e(a.worst)}</td>"
            f"<td>{_wad(a.headroom)}</td><td>{a.headroom_block or '-'}</td><td>{a.lenient}</td>"
            f"<td>{len(a.claims)}</td><td{bad}>{a.mismatches}</td></tr>"
        )
    h.append("</table>")
    h.append(
        "<p><small>Amounts in settlement-currency units, rounded for reading; the NDJSON report "
        "keeps every wei.</small></p>"
    )
    return _page(title, h)


def _write_account(
    acc: _Account,
    spool: Path,
    pages: Path,
    first: int,
    last: int,
    grids: dict[str, list[list[dict[str, Any]]]],
) -> None:
    rows: list[dict[str, Any]] = []
    if spool.exists():
        with spool.open() as f:
            rows = [json.loads(line) for line in f]
    points = [
        (int(d["block"]), int(d["equity"]), int(d["requirement"]), int(d["initial_margin"]))
        for d in rows
        if d.get("equity") is not None
    ]
    marks = [
        (int(c["block"]), "#c62828" if c["kind"] == "liquidation" else "#ef6c00", c["kind"])
        for c in acc.claims
    ]
    start = min([p[0] for p in points] + [m[0] for m in marks], default=first)
    n_pages = max(1, -(-len(rows) // ACCOUNT_PAGE_ROWS))
    for k in range(n_pages):
        name = f"{acc.slug}.html" if k == 0 else f"{acc.slug}-{k + 1}.html"
        chunk = rows[k * ACCOUNT_PAGE_ROWS : (k + 1) * ACCOUNT_PAGE_ROWS]
        title = f"Account {hex(acc.id)}"
        h = [
            "<nav><a href='../index.html'>← index</a></nav>",
            f"<h1>{_e(title)}</h1>",
            f"<p>{acc.decisions} decisions, worst state <span class='{_e(acc.worst)}'>"
            f"{_e(acc.worst)}</span>, least headroom {_wad(acc.headroom)}, {acc.mismatches} "
            "mismatches</p>",
        ]
        if n_pages > 1:
            links = " ".join(
                f"<a href='{acc.slug}{'' if j == 0 else f'-{j + 1}'}.html'>{j + 1}</a>"
                if j != k
                else f"<b>{j + 1}</b>"
                for j in range(n_pages)
            )
            h.append(f"<nav>pages: {links}</nav>")
        if k == 0:
            h.append(plot_svg(points, start, max(last, start), marks))
            if acc.claims:
                h += _claim_rows(acc.claims, link=False)
        h.append(
            "<p><b>on chain</b>: MarginVerifier.fullCheck / ClearingHouse.marginOf at the "
            "block — ✓ agrees, ✓r reverts as the engine expects, ✗ disagrees, · not run. "
            "<b>lenient</b>: decided under the liquidation oracle ages, a strict price being "
            "stale. <b>records</b>: the keeper's decision rows compared.</p>"
        )
        h.append(
            "<table><tr><th>block<th class=l>why<th class=l>state<th>equity<th>maintenance"
            "<th>initial<th>on chain<th>records<th>witness, risk matrix</tr>"
        )
        h += [_decision_row(d, grids) for d in chunk]
        h.append("</table>")
        (pages / name).write_text(_page(title, h))


_UNNAMED = {"move": 0, "vol_state": "unchanged", "weight": WAD, "extended": False}

_VERDICT_MARK = {
    "agrees": "✓",
    "reverts as expected": "✓r",
    "disagrees": "<b class=bad>✗</b>",
    "not run": "·",
}


def _decision_row(d: dict[str, Any], grids: dict[str, list[list[dict[str, Any]]]]) -> str:
    """One compact row (end tags omitted, as HTML allows: these pages hold many rows)."""
    state = d.get("state") or f"no result: {d.get('error')}"
    cls = d.get("state") or "bad"
    marks = " ".join(_VERDICT_MARK.get(x, _e(x)) for x in (d["fullCheck"], d["marginOf"]))
    witness = d.get("witness", "-")
    matrix = d.get("risk_matrix")
    detail = (
        f"<details><summary>{witness}</summary>"
        f"{matrix_html(matrix, grids.get(d.get('grid', ''), []))}</details>"
        if matrix
        else str(witness)
    )
    lenient = f" lenient ({_e(d['strict_error'])})" if d.get("strict_error") else ""
    ids = ", ".join(map(str, d.get("decision_ids", [])))
    return (
        f"<tr><td>{d['block']}<td class=l>{_e(', '.join(d['reasons']))}"
        f"<td class='l {_e(cls)}'>{_e(state)}{lenient}<td>{_wad(d.get('equity'))}"
        f"<td>{_wad(d.get('requirement'))}<td>{_wad(d.get('initial_margin'))}"
        f"<td>{marks}<td>{ids}<td class=l>{detail}\n"
    )


def matrix_html(matrix: list[dict[str, Any]], grid: list[list[dict[str, Any]]]) -> str:
    """Scenario losses per underlying: price move × vol state, the extended moves below, the
    witness scenario highlighted. ``grid``: the scenarios of the decision's risk parameters."""
    parts = []
    for m in matrix:
        u = m["underlying"]
        w = m["witness"]
        # A grid line missing (a truncated report): the losses alone, as unnamed scenarios.
        names = grid[u] if u < len(grid) else []
        scs = [
            {**(names[j] if j < len(names) else _UNNAMED), "index": j, "loss": loss}
            for j, loss in enumerate(m["losses"])
        ]
        rows = []
        regular = [s for s in scs if not s["extended"]]
        for k in range(0, len(regular), 3):
            row = regular[k : k + 3]
            cells = "".join(
                f"<td{' class=w' if s['index'] == w else ''}>{_wad(s['loss'])}" for s in row
            )
            rows.append(f"<tr><td>{_pct(row[0]['move'])}{cells}<td>100%\n")
        for s in scs:
            if s["extended"]:
                cells = "".join(
                    (f"<td{' class=w' if s['index'] == w else ''}>{_wad(s['loss'])}")
                    if s["vol_state"] == v
                    else "<td>"
                    for v in _VOL_STATES
                )
                rows.append(
                    f"<tr><td>{_pct(s['move'])} (ext){cells}<td>{_pct(s['weight']).lstrip('+')}\n"
                )
        parts.append(
            f"<table><caption>underlying {u}: spot {_wad(m['spot'])}, vol "
            f"{_pct(m['vol']).lstrip('+')}, loss {_wad(m['loss'])}, witness #{w}</caption>"
            "<tr><th>price move<th>vol down<th>vol unchanged<th>vol up<th>weight\n"
            f"{''.join(rows)}</table>"
        )
    return "".join(parts) or "<p>no position priced (no oracle read)</p>"


def plot_svg(
    points: list[tuple[int, int, int, int]],
    first: int,
    last: int,
    marks: list[tuple[int, str, str]],
    width: int = 900,
    height: int = 280,
) -> str:
    """Step plot (values hold until the next decision) of equity / MM / IM over blocks; the
    legend sits below the plot area (never clipped). Scales to the page width (viewBox)."""
    names = ("equity", "maintenance margin", "initial margin")
    colors = ("#1565c0", "#c62828", "#ef6c00")
    values = [v for p in points for v in p[1:]]
    if not values:
        return "<p>no margin result to plot</p>"
    lo, hi = min([*values, 0]), max([*values, 0])
    if hi == lo:
        hi = lo + WAD
    pad = (hi - lo) // 10
    lo, hi = (lo - pad if lo < 0 else lo), hi + pad
    left, right, top, bottom = 90, 20, 10, 50
    pw, ph = width - left - right, height - top - bottom
    span = max(last - first, 1)

    def x(b: int) -> float:
        return left + pw * (b - first) / span

    def y(v: int) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="equity and margins over blocks">'
    ]
    out.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>'
    )
    for i in range(5):
        v = lo + (hi - lo) * i // 4
        yy = y(v)
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e0e0e0"/>'
        )
        out.append(f'<text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end">{_wad(v, 0)}</text>')
    for b, anchor in ((first, "start"), (last, "end")):
        out.append(
            f'<text x="{x(b):.1f}" y="{top + ph + 14}" text-anchor="{anchor}">block {b}</text>'
        )
    if lo < 0 < hi:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999"/>'
        )
    for b, color, label in marks:
        xx = x(b)
        out.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + ph}" stroke="{color}" '
            f'stroke-dasharray="4 3"><title>{_e(label)} at block {b}</title></line>'
        )
    for k, (name, color) in enumerate(zip(names, colors, strict=True)):
        pts = [(p[0], p[k + 1]) for p in points]
        d = f"M{x(pts[0][0]):.1f},{y(pts[0][1]):.1f}"
        for b, val in pts[1:]:
            d += f" H{x(b):.1f} V{y(val):.1f}"
        d += f" H{x(last):.1f}"
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(pts) <= PLOT_MARKERS:
            for b, val in pts:
                out.append(
                    f'<circle cx="{x(b):.1f}" cy="{y(val):.1f}" r="2.5" fill="{color}">'
                    f"<title>{name} {_wad(val)} at block {b}</title></circle>"
                )
        lx = left + 190 * k
        ly = height - 12
        out.append(
            f'<line x1="{lx}" x2="{lx + 20}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        out.append(f'<text x="{lx + 24}" y="{ly}">{name}</text>')
    if marks:
        lx = left + 190 * 3
        out.append(
            f'<line x1="{lx}" x2="{lx + 20}" y1="{height - 16}" y2="{height - 16}" '
            'stroke="#c62828" stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{lx + 24}" y="{height - 12}">liquidation / margin call</text>')
    out.append("</svg>")
    return "".join(out)


__all__ = ["matrix_html", "plot_svg", "write_html"]
