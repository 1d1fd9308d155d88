"""Comparison of the keeper's recorded decisions (``decision`` table) with the re-derivation.

Every row in the range (and of the selected accounts) is re-derived at its block and account;
each of ``block_hash``, ``inputs_digest``, ``equity``, ``requirement``, ``initial_margin``,
``state``, ``witness`` and ``loss_matrix`` must equal the chain's. A row that cannot be
re-derived (block missing or reorged away, account id unreadable, no state at that block) is a
mismatch too. ``account`` is read as a decimal string or as 0x-hex.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import col, select

from keeper.replay.derive import Derivation
from keeper.replay.errors import StoreUnavailable
from keeper.replay.mismatch import FieldDiff, Mismatch, normalise
from keeper.secrets import redact_url
from keeper.store import Decision, Store, StoreError

#: States the keeper records without a margin result (zeros, no loss matrix, no witness),
#: each with the chain fact it claims (checked on the re-derivation).
RESULTLESS_STATES = frozenset({"settleable", "bad_debt", "no_price", "empty", "invalid"})


def parse_account(text: str) -> int | None:
    s = text.strip()
    try:
        return int(s, 16) if s.lower().startswith("0x") else int(s, 10)
    except ValueError:
        return None


#: Actions whose recorded witness is the one sent with a flag / liquidation.
WITNESS_ACTIONS = ("flag", "liquidate")


#: Decision rows per database page (keyset pagination: one page in memory at a time).
RECORD_PAGE = 2_000


class RecordSource:
    """The keeper's decision rows of [first, last], block by block in (block, id) order, read
    in pages; plus the flag/liquidate rows up to ``last`` (also before the range: a liquidation
    early in the range may rest on an earlier decision's witness -- few rows)."""

    def __init__(
        self, store: Store | None, first: int, last: int, accounts: Sequence[int] | None
    ) -> None:
        self.store = store
        self.first, self.last = first, last
        self.wanted = set(accounts or ())
        self.actions: list[Decision] = []
        #: Blocks with at least one row (for the progress total; ints only).
        self.blocks: set[int] = set()
        if store is None:
            return
        with store.session() as s:
            q = (
                select(Decision)
                .where(
                    col(Decision.block_number) <= last,
                    col(Decision.action).in_(WITNESS_ACTIONS),
                )
                .order_by(col(Decision.block_number), col(Decision.id))
            )
            self.actions = list(s.exec(q).all())
            q2 = select(col(Decision.block_number)).distinct().where(*self._in_range())
            self.blocks = {int(b) for b in s.exec(q2).all()}

    def _in_range(self) -> tuple[Any, ...]:
        return (col(Decision.block_number) >= self.first, col(Decision.block_number) <= self.last)

    def by_block(self) -> Iterator[tuple[int, list[Decision]]]:
        if self.store is None:
            return
        key = (self.first - 1, 0)
        block: int | None = None
        group: list[Decision] = []
        while True:
            with self.store.session() as s:
                after = or_(
                    col(Decision.block_number) > key[0],
                    and_(col(Decision.block_number) == key[0], col(Decision.id) > key[1]),
                )
                q = (
                    select(Decision)
                    .where(*self._in_range(), after)
                    .order_by(col(Decision.block_number), col(Decision.id))
                    .limit(RECORD_PAGE)
                )
                rows = list(s.exec(q).all())
            if not rows:
                break
            for row in rows:
                if self.wanted and parse_account(row.account) not in self.wanted:
                    continue
                if row.block_number != block:
                    if group:
                        assert block is not None
                        yield block, group
                    block, group = row.block_number, []
                group.append(row)
            key = (rows[-1].block_number, rows[-1].id or 0)
        if group and block is not None:
            yield block, group


@contextmanager
def records_source(
    url: str | None, first: int, last: int, accounts: Sequence[int] | None = None
) -> Iterator[RecordSource]:
    """The store at ``url`` as a ``RecordSource`` (an empty one without a URL)."""
    if url is None:
        yield RecordSource(None, first, last, accounts)
        return
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        # Store.open would create an empty database: an audit must not write anything.
        raise StoreUnavailable(f"no such database file: {url[len('sqlite:///') :]}")
    try:
        store = Store.open(url)
        source = RecordSource(store, first, last, accounts)
    except (StoreError, OSError) as exc:
        raise StoreUnavailable(f"{redact_url(url)}: {exc}") from None
    except Exception as exc:  # SQLAlchemy's errors: an unreachable server, a foreign schema
        raise StoreUnavailable(f"{redact_url(url)}: {type(exc).__name__}") from None
    try:
        yield source
    finally:
        store.close()


def not_about_an_account(rec: Decision) -> bool:
    """A row the keeper records about something else (``instrument:<id>`` for an expiry
    settlement): nothing margin-related to re-derive."""
    return ":" in (rec.account or "") and not rec.account.lower().startswith("0x")


def _resultless(rec: Decision) -> bool:
    if rec.state in ("settleable", "bad_debt"):
        # Recorded with the full check of the folded book when a market could be read.
        return rec.witness is None and not rec.loss_matrix
    if rec.state in RESULTLESS_STATES:
        return True
    # An account without positions or volatile collateral: no market is read, no result kept.
    return rec.state in ("healthy", "empty") and not rec.loss_matrix and rec.witness is None


def _resultless_claim(state: str, d: Derivation) -> str | None:
    """Why the chain contradicts a result-less record's state (None: it agrees)."""
    flat = not d.portfolio.positions
    cash = d.portfolio.collateral[0] if d.portfolio.collateral else 0
    if state == "settleable":
        ok = d.holds_settled
    elif state == "bad_debt":
        ok = flat and cash < 0
    elif state == "empty":
        ok = flat and not any(d.portfolio.collateral)
    elif state == "healthy":
        ok = flat and not d.volatile_collateral and cash >= 0
    elif state == "no_price":
        ok = d.market is None
    elif state == "invalid":
        ok = d.engine_error is not None
    else:
        ok = False
    return None if ok else f"not {state} at this block"


def accepted_states(d: Derivation) -> tuple[str, ...]:
    """Recorded state names that agree with the re-derivation. The full check's state, refined
    as the keeper refines it: below IM and flagged is ``flagged_grace`` until the grace period
    runs out, then ``liquidatable`` (the contract liquidates it at state 1 then); ``bad_debt``
    for a book without live positions whose equity is below zero; ``settleable`` for a book
    holding settled instruments (with no margin action due)."""
    state = d.state
    if not state:
        return ()
    out = [state]
    if state == "margin_call" and d.flagged_at:
        out.insert(0, "liquidatable" if d.grace_over else "flagged_grace")
    if d.result is not None and not d.portfolio.positions and d.result.equity < 0:
        out.append("bad_debt")
    if d.holds_settled:
        out.append("settleable")
    return tuple(out)


def compare(
    rec: Decision, d: Derivation, expected_bounty: int | str | None = None
) -> Mismatch | None:
    """The recorded decision against the re-derivation at its block and account;
    ``expected_bounty``: the bounty its action would be credited at that block
    (``keeper.replay.record.rederived_bounty``: None without an action, a string when it cannot
    be re-derived)."""
    diffs: list[FieldDiff] = []

    def check(name: str, expected: object, found: object) -> None:
        if normalise(expected) != normalise(found):
            diffs.append(FieldDiff(name, normalise(expected), normalise(found)))

    check("block_hash", d.block.hash.lower(), (rec.block_hash or "").lower())
    recorded_lenient = getattr(rec, "lenient", None)  # a column of later schema versions
    r = d.result
    if _resultless(rec):
        why = _resultless_claim(rec.state, d)
        if why is not None:
            diffs.append(FieldDiff("state", why, rec.state))
        expected_digest = d.inputs_digest if rec.state == "invalid" else d.book_digest()
        check("inputs_digest", expected_digest, rec.inputs_digest)
        check("equity", 0, rec.equity)
        check("requirement", 0, rec.requirement)
        check("initial_margin", 0, rec.initial_margin)
        check("witness", None, rec.witness)
        check("loss_matrix", [], rec.loss_matrix or [])
    elif r is None:
        diffs.append(FieldDiff("state", f"no result ({d.error})", rec.state))
    else:
        check("inputs_digest", d.inputs_digest, rec.inputs_digest)
        accepted = accepted_states(d)
        if rec.state not in accepted:
            diffs.append(FieldDiff("state", " or ".join(accepted), rec.state))
        check("equity", r.equity, rec.equity)
        check("requirement", r.requirement, rec.requirement)
        check("initial_margin", r.initial_margin, rec.initial_margin)
        check("witness", r.witness, rec.witness)
        check("loss_matrix", r.scenario_losses, rec.loss_matrix)
        if recorded_lenient is not None:
            check("lenient", d.lenient, recorded_lenient)
    if rec.account_nonce is not None:
        check("account_nonce", d.nonce, rec.account_nonce)
    if rec.action != "liquidate":
        check("fraction", None, rec.fraction)
    check("expected_bounty", expected_bounty, rec.expected_bounty)
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
