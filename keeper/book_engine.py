"""The keeper's margin engine over the whole book: one bounded float pass, exact where it matters.

``BookEngine.assess(snap, accounts, policy)`` is the assess step of every block. It holds the
book in the columnar form of ``margin.tools.book.Book`` and, at each snapshot, prices it once in the
snapshot's market (``margin.tools.sweep.MarketPrep``) and classifies every account with the bounded
float pass (``Sweep.bounded_states``, docs/sweep.md). An account's assessment comes from the
float pass alone only when all of this holds:

* the pass proves the account HEALTHY (its distance to IM exceeds the proven error bound);
* the account's book is the one the engine holds: its state nonce and flag are those it was
  read with (the contract bumps the nonce on every change to positions or balances);
* the exact assessment of that same book (same nonce, flag, parameters, rate and settlements)
  was a quiet "healthy": no flag, no action, no note, strict oracle ages.

Then the exact engine would say "healthy" again with the same change digest (the state is the
full check's, proven equal; the digest covers the book only), so nothing is recomputed. Every
other account -- undecided by the bound, unhealthy, flagged, holding settled instruments,
changed since the book was built, or with a rejected oracle answer -- is assessed by the exact
per-account path (``keeper.pipeline.assess.assess_account``: the verifier-identical full check,
witness check and liquidation arithmetic). Every action and every record therefore rests on the
exact result.

How the columns follow the chain: an account whose nonce moved since its columns were written
is assessed by the exact path in that block, and its new book is written into the columns in
place when it keeps its shape (``Book.patch``: a deposit, a resized position; the columns then
equal a rebuild's, row for row), so from the next block on the float pass covers it again.
An account with a new shape (a new instrument or underlying, a position or volatile balance
opened or closed) or a new account is counted as stale and assessed by the exact path until
the columns are rebuilt: when one snapshot reads more than max(``rebuild_after``,
``rebuild_fraction`` x book) stale accounts, at the next snapshot, from that snapshot's books
(its cost is the Book's construction, about 0.1 ms per account). They are rebuilt at once
when what every book depends on changes (risk parameters, rate, settlements, perpetuals'
funding indices: a poke changes the accrued funding in every perpetual holder's equity
without moving its nonce). Accounts a snapshot did not read keep their columns (their nonce
is checked when they are next read). Prices never need a rebuild: every snapshot prices the
book's rows in its own market.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from keeper.pipeline.assess import assess_account
from keeper.pipeline.types import AccountState, Assessment, DecisionPolicy
from keeper.protocol.oracle import OracleError
from margin.errors import MarginError
from margin.portfolio import Market, Portfolio
from margin.portfolio_margin import HEALTHY, validate_portfolio
from margin.tools.book import Book
from margin.tools.sweep import MarketPrep, Sweep

if TYPE_CHECKING:  # the snapshot's module reads the chain; the engine only reads snapshots
    from keeper.chain.rpc import BlockRef
    from keeper.chain.view import AccountSnapshot, ProtocolSnapshot

#: (state nonce, flaggedAt) of an account: equal values prove an unchanged book.
AccountKey = tuple[int, int]
#: (key, change digest, state) of a quiet exact assessment.
Quiet = tuple[AccountKey, str, AccountState]
#: What every account's margin depends on besides its own book and the prices.
Context = tuple[bytes, int, frozenset[tuple[int, int]], int, frozenset[tuple[int, int]]]


@dataclass
class EngineStats:
    """What the last ``assess`` did (for block reports and benchmarks)."""

    bounded: int = 0  # accounts whose assessment came from the float pass alone
    exact: int = 0  # accounts assessed by the exact engine
    stale: int = 0  # accounts read with a book the columns do not hold
    rebuilt: bool = False  # the columns were rebuilt for this snapshot


def _context(snap: ProtocolSnapshot) -> Context:
    return (
        snap.risk_params_bytes,
        snap.rate,
        frozenset(snap.settlement_prices.items()),
        snap.backstop,
        # A funding poke moves every perpetual holder's equity without touching its nonce.
        frozenset(snap.funding_indices.items()),
    )


def book_market(snap: ProtocolSnapshot) -> Market | None:
    """Every underlying's strict price and vol (``maxAge``), as one market for the whole book;
    None when any feed fails OracleLib's strict checks (every account is then assessed by the
    exact path, which knows which accounts use the failing feed)."""
    spots, vols = [], []
    try:
        for cfg in snap.underlyings:
            spots.append(snap.feeds[cfg.price_feed].read(cfg.max_age, snap.timestamp)[0])
            vols.append(snap.feeds[cfg.vol_feed].read(cfg.max_age, snap.timestamp)[0])
    except (OracleError, KeyError):
        return None
    return Market(snap.timestamp, snap.rate, tuple(spots), tuple(vols))


def _bounded(
    account: int, block: BlockRef, acc: AccountSnapshot, quiet: Quiet, digest: _ExactDigest
) -> Assessment:
    """``Assessment(account, block, acc.nonce, quiet state, None, False, digest, None,
    acc.flagged_at, None, quiet digest, bounded=True)``, without the frozen dataclass's
    ``__init__`` (a ``object.__setattr__`` per field: 3x the cost, and every block makes one
    per quiet account). Every field is set (``_BOUNDED_FIELDS``, checked at import), and
    tests/test_book_engine.py compares the two constructions."""
    x = _new(Assessment)
    x.__dict__.update(
        account=account, block=block, nonce=acc.nonce, state=quiet[2], result=None,
        lenient=False, digest_source=digest, action=None, flagged_at=acc.flagged_at, note=None,
        change_digest=quiet[1], oracle_error=None, bounded=True,
    )  # fmt: skip
    return x


_new = object.__new__
_BOUNDED_FIELDS = (
    "account", "block", "nonce", "state", "result", "lenient", "digest_source", "action",
    "flagged_at", "note", "change_digest", "oracle_error", "bounded",
)  # fmt: skip
if {f.name for f in fields(Assessment)} != set(_BOUNDED_FIELDS):
    raise TypeError("keeper.book_engine._bounded does not set every field of Assessment")


class _ExactDigest:
    """A bounded assessment's inputs digest, computed by the exact path if it is ever asked
    for (only a record needs it, and records come from the exact path). One small object per
    account and block: a closure would cost five, and every block allocates one per account."""

    __slots__ = ("account", "policy", "snap")

    def __init__(self, snap: ProtocolSnapshot, account: int, policy: DecisionPolicy) -> None:
        self.snap = snap
        self.account = account
        self.policy = policy

    def __call__(self) -> str:
        return assess_account(self.snap, self.account, self.policy).inputs_digest


class BookEngine:
    """The whole book in columns, classified at every snapshot (see the module docstring)."""

    def __init__(
        self, *, rebuild_after: int = 64, rebuild_fraction: float = 0.02, min_bounded: int = 16
    ) -> None:
        #: Below this many accounts the float pass could settle, the exact path is cheaper
        #: than pricing and sweeping the whole book.
        self.min_bounded = min_bounded
        #: Rebuild once more than max(rebuild_after, rebuild_fraction × accounts) accounts
        #: were read with a book the columns do not hold (each costs an exact assessment).
        self.rebuild_after = rebuild_after
        self.rebuild_fraction = rebuild_fraction
        self.forget()

    def forget(self) -> None:
        """Drop the book (after a reorg: every book is read again)."""
        self._book: Book | None = None
        self._context: Context | None = None
        self._slot: dict[int, int] = {}  # account -> index in the book
        self._keys: list[AccountKey] = []  # per slot: the key the columns were built from
        self._excluded: dict[int, AccountKey] = {}  # refused by the model's validation
        #: account -> (key, change digest, state) of its last exact assessment, when that was
        #: a quiet "healthy" (no flag, no action, no note, strict ages).
        self._quiet: dict[int, Quiet] = {}
        self._stale = 0
        self._freeze_due = False
        self.stats = EngineStats()

    # --- the assess step -----------------------------------------------------------------------

    def assess(
        self, snap: ProtocolSnapshot, accounts: Iterable[int], policy: DecisionPolicy
    ) -> list[Assessment]:
        """One assessment per account of ``accounts`` in the snapshot (the backstop is never
        assessed: it is never acted on)."""
        if self._freeze_due:
            self._freeze()
        books = snap.accounts
        backstop = snap.backstop
        wanted = [a for a in dict.fromkeys(accounts) if a != backstop and a in books]
        self.stats = EngineStats(rebuilt=self._maintain(snap))
        slot_of, keys, quiet_of, excluded = self._slot, self._keys, self._quiet, self._excluded
        # Accounts whose quiet exact assessment is of this very book (bounded candidates, by
        # slot), and the rest (assessed exactly).
        candidates: list[tuple[int, int, Quiet]] = []
        exact: list[int] = []
        changed: dict[int, int] = {}  # slot -> account: read with a book the columns lack
        stale = 0
        for a in wanted:
            acc = books[a]
            key = (acc.nonce, acc.flagged_at)
            slot = slot_of.get(a)
            if slot is None:
                if excluded.get(a) != key:
                    stale += 1
            elif keys[slot] != key:
                changed[slot] = a
            else:
                quiet = quiet_of.get(a)
                if quiet is not None and quiet[0] == key:
                    candidates.append((a, slot, quiet))
                    continue
            exact.append(a)
        stale += self._patch(snap, changed)
        states = self._bounded_states(snap) if len(candidates) >= self.min_bounded else None
        out: dict[int, Assessment] = {}
        if states is not None:
            healthy = states == HEALTHY
            block = snap.block
            for a, slot, quiet in candidates:
                if healthy[slot]:
                    acc = books[a]
                    out[a] = _bounded(a, block, acc, quiet, _ExactDigest(snap, a, policy))
                else:
                    exact.append(a)
        else:
            exact.extend(a for a, _slot, _quiet in candidates)
        self.stats.bounded = len(out)
        for a in exact:
            x = assess_account(snap, a, policy)
            acc = books[a]
            self._remember(a, (acc.nonce, acc.flagged_at), x)
            out[a] = x
        self._stale = stale
        self.stats.stale = stale
        self.stats.exact = len(exact)
        return [out[a] for a in wanted]

    def _patch(self, snap: ProtocolSnapshot, changed: dict[int, int]) -> int:
        """Write the changed books (slot -> account) into the columns where their shape allows
        (``Book.patch``); returns how many stay stale (a new shape, or refused by the model's
        validation: those wait for a rebuild, assessed exactly until then)."""
        if not changed or self._book is None:
            return len(changed)
        books: dict[int, Portfolio] = {}
        for slot, a in changed.items():
            try:
                pf = snap.portfolio(a)
                validate_portfolio(pf, snap.risk_params)
            except (MarginError, KeyError):
                continue
            books[slot] = pf
        unpatched = set(self._book.patch(books))
        for slot, a in changed.items():
            if slot in books and slot not in unpatched:
                acc = snap.accounts[a]
                self._keys[slot] = (acc.nonce, acc.flagged_at)
                self._quiet.pop(a, None)  # of the old book
        return len(changed) - len(books) + len(unpatched)

    def _remember(self, account: int, key: AccountKey, x: Assessment) -> None:
        quiet = (
            x.state == AccountState.HEALTHY
            and x.action is None
            and x.note is None
            and not x.lenient
            and x.result is not None
            and x.flagged_at == 0
        )
        if quiet and account in self._slot:
            self._quiet[account] = (key, x.change_digest, x.state)
        else:
            self._quiet.pop(account, None)

    # --- the book -------------------------------------------------------------------------------

    def _bounded_states(self, snap: ProtocolSnapshot) -> np.ndarray | None:
        """Every book account's state by the bounded float pass (UNDECIDED where the bound
        cannot tell), in the snapshot's market; None when no such market exists."""
        if self._book is None or self._book.n_accounts == 0:
            return None
        market = book_market(snap)
        if market is None:
            return None
        try:
            table = snap.table(market)  # shared with the exact path's accounts of this market
            return Sweep(self._book, MarketPrep(self._book, table)).bounded_states()
        except MarginError:
            return None  # the exact path reports the verifier's error per account

    def _maintain(self, snap: ProtocolSnapshot) -> bool:
        """Rebuild the columns when due; True when rebuilt."""
        context = _context(snap)
        limit = max(self.rebuild_after, int(self.rebuild_fraction * len(self._slot)))
        if self._book is not None and context == self._context and self._stale <= limit:
            return False
        same_context = context == self._context
        keep: dict[int, tuple[AccountKey, Portfolio]] = {}
        if self._book is not None and same_context:
            # Accounts this snapshot did not read keep their columns (checked when next read).
            for a, slot in self._slot.items():
                if a not in snap.accounts:
                    keep[a] = (self._keys[slot], self._book.portfolios[slot])
        self._context = context
        self._excluded = {}
        for a, acc in snap.accounts.items():
            if a == snap.backstop:
                continue
            key = (acc.nonce, acc.flagged_at)
            try:
                pf = snap.portfolio(a)
                validate_portfolio(pf, snap.risk_params)
            except (MarginError, KeyError):
                self._excluded[a] = key
                continue
            keep[a] = (key, pf)
        order = sorted(keep)
        self._slot = {a: i for i, a in enumerate(order)}
        self._keys = [keep[a][0] for a in order]
        self._book = Book(snap.risk_params, [keep[a][1] for a in order])
        if same_context:
            self._quiet = {a: q for a, q in self._quiet.items() if a in self._slot}
        else:
            self._quiet = {}  # digests and states of other parameters, rate or settlements
        self._stale = 0
        self._freeze_due = True
        return True

    def _freeze(self) -> None:
        """At the block after a rebuild (the rebuild's block has recorded what it decided and
        dropped what it no longer needs): every object alive is collected once, then frozen
        out of the cyclic collector's reach (gc.freeze). The book, the books it was built from
        and the process's other long-lived state would otherwise be walked again by every
        full collection -- one every few blocks, as each block's assessments accumulate: 0.7-
        1.3 s a block at 100,000 accounts. Objects frozen at the previous rebuild are thawed
        first, so garbage among them is collected then (nothing stays frozen longer)."""
        self._freeze_due = False
        gc.unfreeze()
        gc.collect()
        gc.freeze()
