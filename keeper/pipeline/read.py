"""The read stage: one snapshot pinned to the block, and which accounts it covers.

``Reader.read`` chooses the accounts a block must assess and reads them in one batched
snapshot pinned to the view's block (``keeper.chain.view.ChainView.snapshot``), two when a
feed moved and the accounts using it were not already in the first:

* every known account at the first block, after a market change (a risk parameter, a listing)
  and at a sweep; otherwise the accounts touched since the last block (named by the index, or
  by the caller) and the ones in ``WATCH_STATES``;
* the accounts using an underlying whose price or vol feed has a new round;
* with the index, books no event named since they were read are taken as they are; without it,
  each one's nonce and flag are read to prove it unchanged (``reuse``).

``find_settlement_round`` reads the rounds the settlement of an instrument names
(keeper.protocol.settlement decides which).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from keeper.chain.view import AccountSnapshot, ChainView, Instrument, ProtocolSnapshot
from keeper.pipeline.types import Assessment
from keeper.protocol.assets import NO_UNDERLYING
from keeper.protocol.oracle import RoundData
from keeper.protocol.settlement import PHASE_MASK, RoundChoice, latest_round, settlement_round

#: States re-assessed at every block until they leave them, touched or not.
WATCH_STATES = frozenset({"margin_call", "liquidatable", "flagged_grace", "bad_debt", "settleable"})
#: getRoundData calls per read when scanning a feed back for the settlement round (the first
#: read; each further one doubles, up to ROUND_SCAN_MAX).
ROUND_SCAN_CHUNK = 16
ROUND_SCAN_MAX = 1024


class Reader:
    """The read stage's state across blocks: the accounts known, the ones watched, the
    underlyings each uses, the feeds' last rounds and the account data that can be reused."""

    def __init__(self, named_after: Callable[[int], set[int]] | None = None) -> None:
        #: Accounts an indexed event named after a block (Indexer.accounts_named_after); None
        #: without an index: books are then proven unchanged by their nonce, one read each.
        self.named_after = named_after
        self.first = True  # the next block reads every known account
        self.known: set[int] = set()
        self._watch: set[int] = set()  # accounts re-assessed every block (WATCH_STATES)
        self._uses: dict[int, frozenset[int]] = {}  # account -> underlyings it uses
        #: underlying -> the accounts using it (``_uses`` inverted): a price round names its
        #: holders by one set union, not by a Python pass over every known account.
        self._users: dict[int, set[int]] = {}
        self._rounds: dict[str, tuple[int, int, int]] = {}  # feed -> (round, answer, updatedAt)
        #: Account data of earlier blocks, reused when the account's nonce and flag have not
        #: moved (ChainView.snapshot ``reuse``): a price round re-margins every holder without
        #: re-reading every book. A sweep reads everything again.
        self.accounts: dict[int, AccountSnapshot] = {}
        #: The last block's snapshot (None: none yet).
        self.last_snap: ProtocolSnapshot | None = None
        #: feed -> rounds read by getRoundData (a published round never changes).
        self._feed_rounds: dict[str, dict[int, RoundData | None]] = {}

    def read(
        self,
        view: ChainView,
        touched: set[int],
        known: Iterable[int],
        everything: bool,
        sweep: bool,
        owns: Callable[[int], bool] | None,
    ) -> tuple[ProtocolSnapshot, list[int]]:
        """The block's snapshot and the accounts to assess in it, sorted. ``everything``: a
        market change (every known account); ``owns``: cluster mode, this keeper's shards."""
        touched = set(touched)
        if self.named_after is not None and self.last_snap is not None:
            # Every change to an account emits an event naming it: what the index saw after
            # the last processed block is every account whose data may have moved.
            touched |= self.named_after(self.last_snap.block.number)
        self.known |= set(known) | touched
        everything = self.first or everything or sweep
        # Besides the touched ones: accounts still waiting for an action (a grace period runs
        # out with time alone; a back-off ends; gas may become cheap enough).
        targets = set(self.known) if everything else touched | self._watch
        if sweep or self.first:
            self.accounts.clear()
        for a in touched:
            self.accounts.pop(a, None)
        if owns is not None:  # cluster mode: this keeper's shards only
            targets = {a for a in targets if owns(a)}
        snap = self._snapshot(view, targets)
        moved = self._moved_underlyings(snap)
        if not everything and moved:
            extra = set().union(*(self._users.get(u, ()) for u in moved)) - targets
            if owns is not None:
                extra = {a for a in extra if owns(a)}
            if extra:
                targets |= extra
                snap = self._snapshot(view, targets)
        self.accounts.update(snap.accounts)
        self.first = False
        return snap, sorted(targets)

    def read_known(self, view: ChainView, owns: Callable[[int], bool] | None) -> ProtocolSnapshot:
        """Every known account (this keeper's shards in cluster mode), books reused where
        their nonce and flag prove them unchanged: the expiry job's snapshot."""
        mine = sorted(a for a in self.known if owns is None or owns(a))
        snap = view.snapshot(mine, reuse=self.accounts)
        self.accounts.update(snap.accounts)
        self.last_snap = snap
        return snap

    def assessed(self, snap: ProtocolSnapshot, assessed: Iterable[Assessment]) -> None:
        """What the next block reads follows what this one found: the underlyings each book
        uses (a bounded assessment proves the book unchanged), and the accounts to watch."""
        for one in assessed:
            if not one.bounded:
                self._use(one.account, _used_underlyings(snap, one.account))
            if one.state in WATCH_STATES:
                self._watch.add(one.account)
            else:
                self._watch.discard(one.account)

    def _use(self, account: int, used: frozenset[int]) -> None:
        before = self._uses.get(account, frozenset())
        if used == before:
            return
        for u in before - used:
            self._users[u].discard(account)
        for u in used - before:
            self._users.setdefault(u, set()).add(account)
        self._uses[account] = used

    def _snapshot(self, view: ChainView, targets: set[int]) -> ProtocolSnapshot:
        """With the index (``named_after``), books no event named since they were read are
        taken as they are: the read covers what changed, not the whole book. Without it, each
        such book's nonce and flag are read to prove it unchanged."""
        if self.named_after is None:
            return view.snapshot(sorted(targets), reuse=self.accounts)
        unchanged = {a: self.accounts[a] for a in targets if a in self.accounts}
        return view.snapshot(sorted(targets), unchanged=unchanged)

    def _moved_underlyings(self, snap: ProtocolSnapshot) -> frozenset[int]:
        """Underlyings whose price or vol feed round changed since the previous call."""
        rounds = {f: (r.round_id, r.answer, r.updated_at) for f, r in snap.feeds.items()}
        moved = frozenset(
            u.index
            for u in snap.underlyings
            if any(rounds.get(f) != self._rounds.get(f) for f in (u.price_feed, u.vol_feed))
        )
        self._rounds = rounds
        return moved

    def settlement_round(
        self, view: ChainView, snap: ProtocolSnapshot, ins: Instrument
    ) -> RoundChoice:
        """``find_settlement_round`` with the rounds of the instrument's feed read before."""
        feed = snap.underlyings[ins.underlying].price_feed
        return find_settlement_round(view, snap, ins, self._feed_rounds.setdefault(feed, {}))

    def forget(self) -> None:
        """Drop the reused account data (after a reorg: read every book again)."""
        self.accounts.clear()
        self.first = True


def find_settlement_round(
    view: ChainView,
    snap: ProtocolSnapshot,
    ins: Instrument,
    known: dict[int, RoundData | None] | None = None,
) -> RoundChoice:
    """The round to name in ``settleInstrument`` for ``ins``
    (keeper.protocol.settlement.settlement_round) at the view's block, reading the rounds it
    asks for with getRoundData in chunks that double. ``known``: the rounds of the
    instrument's price feed read before, updated in place (a published round never changes)."""
    latest = latest_round(snap, ins)
    if latest is None:
        return RoundChoice(None, reason="latestRoundData reverted")
    feed = snap.underlyings[ins.underlying].price_feed
    known = {} if known is None else known
    chunk = ROUND_SCAN_CHUNK
    while True:
        choice = settlement_round(ins.expiry, latest, known)
        if choice.need is None:
            return choice
        low = max(choice.need - chunk + 1, (choice.need & ~PHASE_MASK) + 1)
        known.update(view.feed_rounds(feed, list(range(choice.need, low - 1, -1))))
        chunk = min(2 * chunk, ROUND_SCAN_MAX)


def _used_underlyings(snap: ProtocolSnapshot, account: int) -> frozenset[int]:
    acc = snap.accounts[account]
    used = {snap.instruments[i].underlying for i, _ in acc.positions}
    for k, bal in enumerate(acc.balances):
        u = snap.assets[k].underlying
        if bal != 0 and u != NO_UNDERLYING:
            used.add(u)
    return frozenset(used)
