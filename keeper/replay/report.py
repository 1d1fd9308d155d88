"""The replay's machine report: newline-delimited JSON, written while the replay runs.

One object per line, each with a ``type``: ``replay`` first (source, chain, range), then
``decision`` (one per re-derived decision, in block order), ``liquidation`` / ``margin_call``,
``mismatch``, and ``summary`` last (the verdict and its counts). Every amount (WAD, wei) and
account id is a decimal string (exact in any JSON parser); block numbers and indices are
numbers. A decision carries its inputs, result, witness and the chain's answers; the full risk
matrix (every scenario's move, vol state, weight and loss) only when the decision is not a
plain healthy one (`keeper explain --account ID --block N` prints it for any decision).
The HTML report is built from this file (keeper/replay/html.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO, Any

from web3 import Web3

from keeper.replay.derive import Derivation
from keeper.replay.mismatch import Mismatch
from keeper.replay.run import Checked, ReplayResult
from keeper.replay.verify import ClaimCheck

_VOL_STATES = ("down", "unchanged", "up")
WAD = 10**18
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


def grid_json(d: Derivation) -> list[list[dict[str, Any]]]:
    """The scenario grid of the decision's risk parameters, per underlying: each scenario's
    move, vol state, weight and whether it is extended (the same for every decision under the
    same parameters: written once per parameter set, as a ``grid`` line)."""
    if d.table is None:
        return []
    return [
        [
            {
                "move": str(sc.move),
                "vol_state": _VOL_STATES[sc.vol_state],
                "weight": str(sc.weight),
                "extended": sc.extended,
            }
            for sc in scs
        ]
        for scs in d.table.scenarios
    ]


def grid_id(d: Derivation) -> str:
    """A short name for the risk-parameter set (the grid depends on nothing else)."""
    return Web3.keccak(d.risk_params).hex().removeprefix("0x")[:16]


def risk_matrix(d: Derivation) -> list[dict[str, Any]]:
    """Per used underlying: spot, vol, loss, witness and every scenario's loss, in the order
    of the grid (the ``grid`` line named by the decision's ``grid``)."""
    if d.result is None or d.table is None or d.market is None:
        return []
    res = d.result
    out = []
    for u in range(len(d.table.scenarios)):
        if d.market.vols[u] == 0 and not any(res.scenario_losses[u]):
            continue  # an underlying the account does not use (placeholder spot, vol 0)
        out.append(
            {
                "underlying": u,
                "spot": str(d.market.spots[u]),
                "vol": str(d.market.vols[u]),
                "loss": str(res.losses[u]),
                "witness": res.witness[u],
                "losses": _str(list(res.scenario_losses[u])),
            }
        )
    return out


def book_json(d: Derivation) -> dict[str, Any]:
    pf = d.portfolio
    return {
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
    }


def decision_json(c: Checked, book: bool = True, matrix: bool | None = None) -> dict[str, Any]:
    """One decision line. ``book``: include the positions and collateral (the writer leaves
    them out when unchanged since the account's previous line). Optional fields are left out
    at their default: ``lenient`` false, ``flagged_at`` 0, ``strict_error`` / ``error`` none,
    ``contingencies`` / ``credit`` 0, ``decision_ids`` empty."""
    d = c.derivation
    r = d.result
    out: dict[str, Any] = {
        "type": "decision",
        "block": d.block.number,
        "account": str(d.account),
        "nonce": d.nonce,
        "reasons": d.reasons,
        "state": d.state,
        "inputs_digest": d.inputs_digest,
        "fullCheck": c.verdict.full_check,
        "marginOf": c.verdict.margin_of,
    }
    if d.lenient:
        out["lenient"] = True
    if d.flagged_at:
        out["flagged_at"] = d.flagged_at
    if d.strict_error:
        out["strict_error"] = str(d.strict_error)
    if d.error:
        out["error"] = d.error
    if c.decision_ids:
        out["decision_ids"] = c.decision_ids
    # No market read: null (a decision line without them reads its block line's).
    out["spots"] = None if d.market is None else _str(list(d.market.spots))
    out["vols"] = None if d.market is None else _str(list(d.market.vols))
    if book:
        out["book"] = book_json(d)
    if r is not None:
        out["equity"] = str(r.equity)
        out["requirement"] = str(r.requirement)
        out["initial_margin"] = str(r.initial_margin)
        if r.contingencies:
            out["contingencies"] = str(r.contingencies)
        if r.credit:
            out["credit"] = str(r.credit)
        out["losses"] = _str(list(r.losses))
        out["witness"] = list(r.witness)
        if notable(c) if matrix is None else matrix:
            out["grid"] = grid_id(d)
            out["risk_matrix"] = risk_matrix(d)
    return out


def notable(c: Checked) -> bool:
    """Worth the full risk matrix in the reports: anything but a plain healthy decision that
    the chain agreed with."""
    d = c.derivation
    return (
        d.state != "healthy"
        or d.lenient
        or d.error is not None
        or "disagrees" in (c.verdict.full_check, c.verdict.margin_of)
    )


def claim_json(c: ClaimCheck) -> dict[str, Any]:
    return {
        "type": c.kind,
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


def mismatch_json(m: Mismatch) -> dict[str, Any]:
    return {
        "type": "mismatch",
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


class NdjsonReport:
    """A ``ReplaySink`` writing one line per decision and claim as it comes; ``finish`` adds
    the mismatches and the summary line. Nothing is kept in memory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._out: IO[str] = path.open("w")
        self._block: int | None = None
        self._books: dict[int, str] = {}  # account -> its last book line (unchanged: left out)
        self._grids: set[str] = set()
        # One block's decision lines (at most one per account), written when the block ends.
        self._pending: list[dict[str, Any]] = []
        self._block_line: dict[str, Any] = {}

    def _line(self, obj: dict[str, Any]) -> None:
        self._out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def start(self, source: str, chain_id: int, first: int | None, last: int | None) -> None:
        self._line(
            {"type": "replay", "source": source, "chain_id": chain_id,
             "range": {"from": first, "to": last}}
        )  # fmt: skip

    def decision(self, c: Checked) -> None:
        d = c.derivation
        if d.block.number != self._block:
            self._flush()
            self._block = d.block.number
            self._block_line = {
                "type": "block", "block": d.block.number, "hash": d.block.hash,
                "timestamp": d.timestamp, "rate": str(d.rate),
            }  # fmt: skip
        book = json.dumps(book_json(d), separators=(",", ":"))
        changed = self._books.get(d.account) != book
        self._books[d.account] = book
        line = decision_json(c, book=changed)
        grid = line.get("grid")
        if grid is not None and grid not in self._grids:
            self._grids.add(grid)
            self._line({"type": "grid", "grid": grid, "scenarios": grid_json(d)})
        self._pending.append(line)

    def _flush(self) -> None:
        """Write the buffered block. Its ``block`` line carries the oracle answers read at
        the block (``spots``, ``vols``: per underlying, the value the most decisions read;
        placeholders spot 1e18 / vol 0 for one nobody used). A decision line then gives
        ``used`` instead of its own ``spots`` / ``vols`` when they are exactly the block's for
        the underlyings in ``used`` and the placeholders elsewhere (keeper.chain.view builds
        every market so); otherwise it keeps its own. Likewise ``reasons``: the block line's
        (the most common), left out of the decision lines that have the same."""
        if not self._pending:
            return
        with_market = [x for x in self._pending if x["spots"] is not None]
        n = max((len(x["spots"]) for x in with_market), default=0)
        spots, vols = [str(WAD)] * n, ["0"] * n
        for u in range(n):
            seen = Counter(
                (x["spots"][u], x["vols"][u]) for x in with_market if x["vols"][u] != "0"
            )
            if seen:
                spots[u], vols[u] = seen.most_common(1)[0][0]
        if n:
            self._block_line["spots"], self._block_line["vols"] = spots, vols
        reasons = Counter(tuple(x["reasons"]) for x in self._pending).most_common(1)[0][0]
        self._block_line["reasons"] = list(reasons)
        self._line(self._block_line)
        for x in self._pending:
            if tuple(x["reasons"]) == reasons:
                del x["reasons"]  # the block line's
            if x["spots"] is not None and len(x["spots"]) == n:
                used = [u for u in range(n) if x["vols"][u] != "0"]
                rebuilt_spots = [spots[u] if u in used else str(WAD) for u in range(n)]
                rebuilt_vols = [vols[u] if u in used else "0" for u in range(n)]
                if (rebuilt_spots, rebuilt_vols) == (x["spots"], x["vols"]):
                    del x["spots"], x["vols"]
                    x["used"] = used
            self._line(x)
        self._pending = []

    def claim(self, c: ClaimCheck) -> None:
        self._flush()
        self._line(claim_json(c))

    def finish(self, r: ReplayResult) -> None:
        self._flush()
        for m in r.mismatches:
            self._line(mismatch_json(m))
        self._line(summary_json(r))
        self.close()

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()


def summary_json(r: ReplayResult) -> dict[str, Any]:
    rc = r.record
    return {
        "type": "summary",
        "verdict": "clean" if r.clean else "mismatch",
        "summary": r.verdict_line(),
        "source": r.source,
        "chain_id": r.chain_id,
        "range": {"from": r.first, "to": r.last},
        "head": r.head,
        "accounts": len(r.accounts),
        "decisions": r.decisions,
        "full_checks": r.full_checks,
        "margin_ofs": r.margin_ofs,
        "liquidations": r.liquidations,
        "margin_calls": r.margin_calls,
        "mismatches": len(r.mismatches),
        "decisions_compared": r.decisions_compared if r.with_db else None,
        "records_skipped": r.records_skipped if r.with_db else None,
        "record": None
        if rc is None
        else {
            "keepers": rc.keepers,
            "keeper_transactions": rc.keeper_transactions,
            "rows_checked": rc.rows_checked,
            "rows_pending": rc.rows_pending,
            "sent_decisions": rc.sent_decisions,
        },
    }


def read_report(path: Path) -> dict[str, Any]:
    """A report file gathered by type, each decision completed from its block line (its
    ``reasons``, ``spots``, ``vols``): for tests and small ranges, it holds every line."""
    out: dict[str, Any] = {"decisions": [], "liquidations": [], "margin_calls": [],
                           "mismatches": [], "blocks": [], "grids": []}  # fmt: skip
    plural = {"decision": "decisions", "liquidation": "liquidations", "block": "blocks",
              "grid": "grids", "margin_call": "margin_calls", "mismatch": "mismatches"}  # fmt: skip
    block: dict[str, Any] = {}
    with path.open() as f:
        for line in f:
            obj = json.loads(line)
            kind = obj["type"]
            if kind == "block":
                block = obj
            elif kind == "decision":  # completed from its block line
                obj.setdefault("reasons", block.get("reasons", []))
                if "used" in obj:
                    used = obj.pop("used")
                    n = len(block["spots"])
                    obj["spots"] = [block["spots"][u] if u in used else str(WAD) for u in range(n)]
                    obj["vols"] = [block["vols"][u] if u in used else "0" for u in range(n)]
            if kind in plural:
                out[plural[kind]].append(obj)
            else:
                out[kind] = obj
    return out


__all__ = [
    "NdjsonReport",
    "book_json",
    "decision_json",
    "grid_json",
    "notable",
    "read_report",
    "risk_matrix",
    "summary_json",
]
