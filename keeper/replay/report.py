"""The replay's reports: JSON for machines, one self-contained HTML page for people.

JSON: every amount (WAD, wei) and account id is a decimal string (exact in any JSON parser);
block numbers and indices are numbers. HTML: no script, no stylesheet or font from the network;
plots are inline SVG drawn here (equity, maintenance and initial margin of each account over
the range's blocks, with its liquidations and margin calls marked), and the risk matrix of
every re-derived decision (scenario losses per underlying, the witness highlighted).
"""

from __future__ import annotations

import html
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from keeper.replay.derive import Derivation
from keeper.replay.mismatch import Mismatch
from keeper.replay.run import Checked, ReplayResult
from keeper.replay.verify import ClaimCheck
from margin.requirement import STATE_NAMES

WAD = 10**18
_VOL_STATES = ("down", "unchanged", "up")
_KINDS = ("future", "call", "put")


def _str(x: Any) -> Any:
    """Integers (amounts, ids) as decimal strings, recursively; bools stay bools."""
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return str(x)
    if isinstance(x, list | tuple):
        return [_str(v) for v in x]
    if isinstance(x, dict):
        return {k: _str(v) for k, v in x.items()}
    return x


def risk_matrix(d: Derivation) -> list[dict[str, Any]]:
    """Per used underlying: spot, vol, loss, witness and every scenario's weighted loss."""
    if d.result is None or d.table is None or d.market is None:
        return []
    res, table = d.result, d.table
    out = []
    for u, scs in enumerate(table.scenarios):
        if d.market.vols[u] == 0 and not any(res.scenario_losses[u]):
            continue  # an underlying the account does not use (placeholder spot, vol 0)
        out.append(
            {
                "underlying": u,
                "spot": d.market.spots[u],
                "vol": d.market.vols[u],
                "loss": res.losses[u],
                "witness": res.witness[u],
                "scenarios": [
                    {
                        "index": j,
                        "move": sc.move,
                        "vol_state": _VOL_STATES[sc.vol_state],
                        "weight": sc.weight,
                        "extended": sc.extended,
                        "loss": res.scenario_losses[u][j],
                    }
                    for j, sc in enumerate(scs)
                ],
            }
        )
    return out


def _matrix_json(m: dict[str, Any]) -> dict[str, Any]:
    small = ("underlying", "witness", "index", "vol_state", "extended")
    scenarios = [{k: v if k in small else str(v) for k, v in s.items()} for s in m["scenarios"]]
    return {**{k: v if k in small else str(v) for k, v in m.items()}, "scenarios": scenarios}


def _decision(c: Checked) -> dict[str, Any]:
    d = c.derivation
    r = d.result
    pf = d.portfolio
    out: dict[str, Any] = {
        "block": d.block.number,
        "block_hash": d.block.hash,
        "timestamp": d.timestamp,
        "account": str(d.account),
        "account_hex": hex(d.account),
        "nonce": d.nonce,
        "flagged_at": d.flagged_at,
        "reasons": d.reasons,
        "lenient": d.lenient,
        "strict_error": str(d.strict_error) if d.strict_error else None,
        "error": d.error,
        "inputs_digest": d.inputs_digest,
        "inputs": {
            "positions": [
                {
                    "underlying": p.underlying,
                    "kind": _KINDS[p.kind] if 0 <= p.kind < 3 else p.kind,
                    "strike": str(p.strike),
                    "expiry": p.expiry,
                    "quantity": str(p.quantity),
                }
                for p in pf.positions
            ],
            "collateral": _str(list(pf.collateral)),
            "market": None
            if d.market is None
            else {
                "timestamp": d.market.timestamp,
                "rate": str(d.market.rate),
                "spots": _str(list(d.market.spots)),
                "vols": _str(list(d.market.vols)),
            },
        },
        "state": d.state,
        "verifier": {"fullCheck": c.verdict.full_check, "marginOf": c.verdict.margin_of},
        "decision_ids": c.decision_ids,
    }
    if r is not None:
        out.update(
            _str(
                {
                    "equity": r.equity,
                    "requirement": r.requirement,
                    "initial_margin": r.initial_margin,
                    "contingencies": r.contingencies,
                    "credit": r.credit,
                    "losses": r.losses,
                }
            )
        )
        out["witness"] = list(r.witness)
        out["risk_matrix"] = [_matrix_json(m) for m in risk_matrix(d)]
    return out


def _claim(c: ClaimCheck) -> dict[str, Any]:
    return {
        "kind": c.kind,
        "block": c.event.block,
        "tx_hash": c.event.tx_hash,
        "account": str(c.account),
        "account_hex": hex(c.account),
        "witness": c.witness,
        "witness_source": c.witness_source,
        "state_under_witness": c.state,
        "proven": c.proven,
        "event": _str({k: v for k, v in c.event.args.items() if not isinstance(v, bytes)}),
        "rederived": _str(
            {
                "equity": c.equity,
                "requirement": c.requirement,
                "initial_margin": c.initial_margin,
                "penalty": c.penalty,
                "bounty": c.bounty,
                "to_insurance": c.to_insurance,
            }
        ),
        "positions_taken_over": _str(c.taken_over),
        "bounty_credited": _str(c.bounty_credited),
        "notes": c.notes,
    }


def _mismatch(m: Mismatch) -> dict[str, Any]:
    return {
        "kind": m.kind,
        "block": m.block,
        "account": None if m.account is None else str(m.account),
        "decision_id": m.decision_id,
        "tx_id": m.tx_id,
        "message": m.message,
        "fields": [
            {"field": f.field, "expected": _str(f.expected), "found": _str(f.found)}
            for f in m.fields
        ],
    }


def to_json(r: ReplayResult) -> dict[str, Any]:
    return {
        "verdict": "clean" if r.clean else "mismatch",
        "summary": r.verdict_line(),
        "source": r.source,
        "chain_id": r.chain_id,
        "range": {"from": r.first, "to": r.last},
        "head": r.head,
        "accounts": [str(a) for a in r.accounts],
        "mismatches": [_mismatch(m) for m in r.mismatches],
        "decisions": [_decision(c) for c in r.checked],
        "liquidations": [_claim(c) for c in r.claims if c.kind == "liquidation"],
        "margin_calls": [_claim(c) for c in r.claims if c.kind == "margin_call"],
        "decisions_compared": r.decisions_compared if r.with_db else None,
        "records_skipped": r.records_skipped if r.with_db else None,
    }


def write_json(r: ReplayResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(r), indent=2) + "\n")


# --- HTML -----------------------------------------------------------------------------------


def _wad(x: int | None, places: int = 2) -> str:
    if x is None:
        return "-"
    return f"{Decimal(x) / WAD:,.{places}f}"


def _pct(x: int) -> str:
    return f"{Decimal(x) * 100 / WAD:+.1f}%"


def _e(x: object) -> str:
    return html.escape(str(x))


def _short(a: int) -> str:
    h = hex(a)
    return h if len(h) <= 20 else f"{h[:10]}…{h[-6:]}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right} th{background:#f4f4f4}
td.l,th.l{text-align:left} .ok{color:#1a7f37} .bad{color:#c62828;font-weight:bold}
.verdict{padding:.6em 1em;border-radius:4px;font-weight:bold}
.verdict.ok{background:#e6f4ea} .verdict.bad{background:#fdecea}
td.w{background:#c62828;color:#fff;font-weight:bold} details{margin:.2em 0}
.healthy{color:#1a7f37} .margin_call{color:#b26a00} .liquidatable{color:#c62828}
svg text{font-size:11px;fill:#444}
"""


def plot_svg(
    points: list[tuple[int, dict[str, int]]],
    first: int,
    last: int,
    marks: list[tuple[int, str, str]],
    width: int = 760,
    height: int = 260,
) -> str:
    """Step plot (values hold until the next decision) of equity / MM / IM over blocks."""
    series = (("equity", "#1565c0"), ("requirement", "#c62828"), ("initial_margin", "#ef6c00"))
    values = [v[k] for _, v in points for k, _c in series if k in v]
    if not values:
        return "<p>no margin result to plot</p>"
    lo, hi = min([*values, 0]), max([*values, 0])
    if hi == lo:
        hi = lo + WAD
    pad = (hi - lo) // 10
    lo, hi = (lo - pad if lo < 0 else lo), hi + pad
    left, right, top, bottom = 80, 140, 10, 30
    pw, ph = width - left - right, height - top - bottom
    span = max(last - first, 1)

    def x(b: int) -> float:
        return left + pw * (b - first) / span

    def y(v: int) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
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
    for b in sorted({first, last}):
        out.append(f'<text x="{x(b):.1f}" y="{height - 10}" text-anchor="middle">block {b}</text>')
    if lo < 0 < hi:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999"/>'
        )
    for b, color, label in marks:
        xx = x(b)
        out.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + ph}" stroke="{color}" '
            f'stroke-dasharray="4 3"><title>{_e(label)}</title></line>'
        )
    for k, (name, color) in enumerate(series):
        pts = [(b, v[name]) for b, v in points if name in v]
        if not pts:
            continue
        d = f"M{x(pts[0][0]):.1f},{y(pts[0][1]):.1f}"
        for b, val in pts[1:]:
            d += f" H{x(b):.1f} V{y(val):.1f}"
        d += f" H{x(last):.1f}"
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        for b, val in pts:
            out.append(
                f'<circle cx="{x(b):.1f}" cy="{y(val):.1f}" r="2.5" fill="{color}">'
                f"<title>{name} {_wad(val)} at block {b}</title></circle>"
            )
        ly = top + 14 + 16 * k
        label = {"requirement": "maintenance margin", "initial_margin": "initial margin"}.get(
            name, name
        )
        out.append(
            f'<line x1="{left + pw + 10}" x2="{left + pw + 30}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        out.append(f'<text x="{left + pw + 34}" y="{ly}">{label}</text>')
    out.append("</svg>")
    return "".join(out)


def matrix_html(d: Derivation) -> str:
    parts = []
    for m in risk_matrix(d):
        w = m["witness"]
        rows = []
        regular = [s for s in m["scenarios"] if not s["extended"]]
        for k in range(0, len(regular), 3):
            row = regular[k : k + 3]
            cells = "".join(
                f"<td{' class=w' if s['index'] == w else ''}>{_wad(s['loss'])}</td>" for s in row
            )
            rows.append(f"<tr><td>{_pct(row[0]['move'])}</td>{cells}<td>100%</td></tr>")
        for s in m["scenarios"]:
            if s["extended"]:
                cells = "".join(
                    (f"<td{' class=w' if s['index'] == w else ''}>{_wad(s['loss'])}</td>")
                    if s["vol_state"] == v
                    else "<td></td>"
                    for v in _VOL_STATES
                )
                rows.append(
                    f"<tr><td>{_pct(s['move'])} (ext)</td>{cells}"
                    f"<td>{_pct(s['weight']).lstrip('+')}</td></tr>"
                )
        parts.append(
            f"<table><caption>underlying {m['underlying']}: spot {_wad(m['spot'])}, vol "
            f"{_pct(m['vol']).lstrip('+')}, loss {_wad(m['loss'])}, witness #{w}</caption>"
            "<tr><th>price move</th><th>vol down</th><th>vol unchanged</th><th>vol up</th>"
            f"<th>weight</th></tr>{''.join(rows)}</table>"
        )
    return "".join(parts) or "<p>no position priced (no oracle read)</p>"


def _claim_html(c: ClaimCheck) -> str:
    ev = c.event.args
    taken = ", ".join(
        f"#{t['instrument']}: {_wad(t['quantity'], 4)} @ {_wad(t['price'])}" for t in c.taken_over
    )
    status = '<span class="ok">proven</span>' if c.proven else '<span class="bad">NOT proven</span>'
    if c.kind == "liquidation":
        detail = (
            f"fraction {_wad(int(ev['fraction']), 4)}, equity {_wad(int(ev['equity']))}, "
            f"requirement {_wad(int(ev['requirement']))}, penalty {_wad(int(ev['penalty']))}, "
            f"bounty {_wad(int(ev['bounty']))} (re-derived {_wad(c.bounty)}), to insurance "
            f"{_wad(int(ev['toInsurance']))}; credited {_wad(c.bounty_credited)}"
            + f"; liquidator {_e(ev['liquidator'])}; positions taken over: {taken or '-'}"
        )
    else:
        detail = (
            f"equity {_wad(int(ev['equity']))}, initial margin {_wad(int(ev['initialMargin']))}, "
            f"flagger {_e(ev['flagger'])}"
        )
    notes = "".join(f"<br><i>{_e(n)}</i>" for n in c.notes)
    return (
        f"<tr><td>{c.event.block}</td><td class=l>{c.kind}</td><td class=l>{_short(c.account)}</td>"
        f"<td class=l>{c.witness} ({_e(c.witness_source)})</td><td class=l>{_e(c.state)}</td>"
        f"<td class=l>{status}</td><td class=l>{detail}{notes}</td></tr>"
    )


def to_html(r: ReplayResult) -> str:
    ok = r.clean
    h = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Replay {r.first}..{r.last} chain {r.chain_id}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Audit replay: blocks {r.first}..{r.last}, chain {r.chain_id}</h1>",
        f"<p>source: {_e(r.source)}; head {r.head}</p>",
        f'<p class="verdict {"ok" if ok else "bad"}">{_e(r.verdict_line())}</p>',
    ]
    if r.mismatches:
        h.append(
            "<h2>Mismatches</h2><table><tr><th>block</th><th class=l>kind</th>"
            "<th>decision</th><th class=l>account</th><th class=l>what</th></tr>"
        )
        for m in r.mismatches:
            fields = "".join(
                f"<br>{_e(f.field)}: expected <code>{_e(f.expected)}</code>, found "
                f"<code>{_e(f.found)}</code>"
                for f in m.fields
            )
            acct = "-" if m.account is None else _short(m.account)
            h.append(
                f"<tr><td>{m.block}</td><td class=l>{_e(m.kind)}</td>"
                f"<td>{m.decision_id or '-'}</td>"
                f"<td class=l>{acct}</td><td class=l>{_e(m.message)}{fields}</td></tr>"
            )
        h.append("</table>")
    if r.claims:
        h.append(
            "<h2>Liquidations and margin calls</h2><table><tr><th>block</th><th class=l>kind</th>"
            "<th class=l>account</th><th class=l>witness</th><th class=l>state</th>"
            "<th class=l>check</th><th class=l>details</th></tr>"
        )
        h += [_claim_html(c) for c in r.claims]
        h.append("</table>")
    for account in r.accounts:
        rows = [c for c in r.checked if c.derivation.account == account]
        h.append(f"<h2 id='a{account:x}'>Account {_e(hex(account))}</h2>")
        points = [
            (
                c.derivation.block.number,
                {
                    "equity": c.derivation.result.equity,
                    "requirement": c.derivation.result.requirement,
                    "initial_margin": c.derivation.result.initial_margin,
                },
            )
            for c in rows
            if c.derivation.result is not None
        ]
        marks = [
            (
                cl.event.block,
                "#c62828" if cl.kind == "liquidation" else "#ef6c00",
                f"{cl.kind} at block {cl.event.block}",
            )
            for cl in r.claims
            if cl.account == account
        ]
        # The x axis starts at the account's first decision: a range that begins at the
        # deployment would otherwise squeeze every point to the right.
        start = min([b for b, _ in points] + [b for b, _c, _l in marks], default=r.first)
        h.append(plot_svg(points, start, r.last, marks))
        h.append(
            "<table><tr><th>block</th><th class=l>why</th><th class=l>state</th><th>equity</th>"
            "<th>maintenance</th><th>initial</th><th class=l>oracle ages</th>"
            "<th class=l>fullCheck</th><th class=l>marginOf</th><th class=l>records</th>"
            "<th class=l>risk matrix</th></tr>"
        )
        for c in rows:
            d = c.derivation
            res = d.result
            state = d.state or f"no result: {d.error}"
            cls = d.state or "bad"
            verdicts = [c.verdict.full_check, c.verdict.margin_of]
            vcls = ["bad" if v == "disagrees" else "ok" for v in verdicts]
            ages = f"lenient ({_e(d.strict_error)})" if d.lenient else "strict"
            h.append(
                f"<tr><td>{d.block.number}</td><td class=l>{_e(', '.join(d.reasons))}</td>"
                f"<td class='l {cls}'>{_e(state)}</td>"
                f"<td>{_wad(res.equity if res else None)}</td>"
                f"<td>{_wad(res.requirement if res else None)}</td>"
                f"<td>{_wad(res.initial_margin if res else None)}</td>"
                f"<td class=l>{ages}</td>"
                f"<td class='l {vcls[0]}'>{_e(verdicts[0])}</td>"
                f"<td class='l {vcls[1]}'>{_e(verdicts[1])}</td>"
                f"<td class=l>{', '.join(map(str, c.decision_ids)) or '-'}</td>"
                f"<td class=l><details><summary>witness {res.witness if res else '-'}, digest "
                f"{_e((d.inputs_digest or '-')[:12])}…</summary>{matrix_html(d)}</details>"
                "</td></tr>"
            )
        h.append("</table>")
    h.append(
        f"<p><small>states: {', '.join(STATE_NAMES.values())}; amounts in settlement "
        "currency units (rounded for reading; the JSON report keeps every wei)</small></p>"
    )
    h.append("</body></html>")
    return "\n".join(h)


def write_html(r: ReplayResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_html(r))
