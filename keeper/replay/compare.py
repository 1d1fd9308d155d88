"""Comparison of the keeper's recorded decisions (``decision`` table) with the re-derivation.

Every row in the range (and of the selected accounts) is re-derived at its block and account;
each of ``block_hash``, ``inputs_digest``, ``equity``, ``requirement``, ``initial_margin``,
``state``, ``witness`` and ``loss_matrix`` must equal the chain's. A row that cannot be
re-derived (block missing or reorged away, account id unreadable, no state at that block) is a
mismatch too. ``account`` is read as a decimal string or as 0x-hex.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlmodel import col, select

from keeper.replay.derive import Derivation
from keeper.replay.errors import StoreUnavailable
from keeper.replay.mismatch import FieldDiff, Mismatch, normalise
from keeper.secrets import redact_url
from keeper.store import Decision, Store, StoreError

#: Keeper state names that refine a full-check state (the full check decides the rest).
STATE_ALIASES = {"flagged_grace": "margin_call", "empty": "healthy"}
#: Recorded states of a decision without a margin result.
NO_RESULT_STATES = frozenset({"no_price", "invalid"})


def parse_account(text: str) -> int | None:
    s = text.strip()
    try:
        return int(s, 16) if s.lower().startswith("0x") else int(s, 10)
    except ValueError:
        return None


def load_decisions(
    url: str, first: int, last: int, accounts: Sequence[int] | None = None
) -> list[Decision]:
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        # Store.open would create an empty database: an audit must not write anything.
        raise StoreUnavailable(f"no such database file: {url[len('sqlite:///') :]}")
    try:
        with Store.open(url) as store, store.session() as s:
            q = (
                select(Decision)
                .where(col(Decision.block_number) >= first, col(Decision.block_number) <= last)
                .order_by(col(Decision.block_number), col(Decision.id))
            )
            rows = list(s.exec(q).all())
    except (StoreError, OSError) as exc:
        raise StoreUnavailable(f"{redact_url(url)}: {exc}") from None
    except Exception as exc:  # SQLAlchemy's errors: an unreachable server, a foreign schema
        raise StoreUnavailable(f"{redact_url(url)}: {type(exc).__name__}") from None
    if accounts:
        wanted = set(accounts)
        rows = [r for r in rows if parse_account(r.account) in wanted]
    return rows


def compare(rec: Decision, d: Derivation) -> Mismatch | None:
    """The recorded decision against the re-derivation at its block and account."""
    diffs: list[FieldDiff] = []

    def check(name: str, expected: object, found: object) -> None:
        if normalise(expected) != normalise(found):
            diffs.append(FieldDiff(name, normalise(expected), normalise(found)))

    check("block_hash", d.block.hash.lower(), (rec.block_hash or "").lower())
    check("inputs_digest", d.inputs_digest, rec.inputs_digest)
    state = STATE_ALIASES.get(rec.state, rec.state)
    r = d.result
    if r is None:
        if state not in NO_RESULT_STATES:
            diffs.append(FieldDiff("state", f"no result ({d.error})", rec.state))
    else:
        check("state", d.state, state)
        check("equity", r.equity, rec.equity)
        check("requirement", r.requirement, rec.requirement)
        check("initial_margin", r.initial_margin, rec.initial_margin)
        check("witness", r.witness, rec.witness)
        check("loss_matrix", r.scenario_losses, rec.loss_matrix)
    if not diffs:
        return None
    names = ", ".join(x.field for x in diffs)
    return Mismatch(
        "decision", rec.block_number, d.account, f"recorded {names} differ", diffs, rec.id
    )


def unreplayable(rec: Decision, why: str) -> Mismatch:
    return Mismatch(
        "decision",
        rec.block_number,
        parse_account(rec.account),
        f"cannot be re-derived: {why}",
        decision_id=rec.id,
    )
