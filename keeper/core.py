"""The keeper's per-block step: read -> assess -> execute (keeper/pipeline/).

``KeeperCore.on_block`` is called by the service loop (scheduler/indexer) once per new block:

1. read (keeper/pipeline/read.py): one batched snapshot pinned to the view's block (two when a
   feed moved and the accounts using it were not already in the first);
2. assess (keeper/pipeline/assess.py, pure): ``keeper.book_engine.BookEngine.assess`` -- the
   bounded float pass over the whole book, the exact engine where it cannot decide and wherever
   an action or a record may follow -- classifies every account and chooses its action;
3. execute (keeper/pipeline/execute.py): a ``Decision`` row whenever an account's state or
   inputs digest changed (and for every action), then for each action, most urgent first:
   back-off and idempotency gates, a simulation, the profitability rule, and the send.

The jobs ``settle_expired`` (settleInstrument, then settleAccount for the holders) and
``poke_funding`` (pokeFunding) run the same stages on instrument-level actions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from keeper.book_engine import BookEngine
from keeper.chain.view import Chain, ChainView
from keeper.pipeline.assess import assess_block, most_urgent_first, settle_instrument_action
from keeper.pipeline.execute import Executor
from keeper.pipeline.read import Reader
from keeper.pipeline.types import BlockReport, DecisionPolicy, SkipReason
from keeper.protocol.funding import due_pokes, poke_funding_action
from keeper.protocol.settlement import expired_unsettled
from keeper.store import Store
from keeper.transactions import TxManager

log = logging.getLogger(__name__)


class KeeperCore:
    def __init__(
        self,
        chain: Chain,
        store: Store,
        txm: TxManager | None,
        policy: DecisionPolicy,
        *,
        liquidator: str,
        named_after: Callable[[int], set[int]] | None = None,
    ) -> None:
        self.store = store
        self.txm = txm  # None: dry run (decide, simulate and record; never send)
        self.policy = policy
        self.reader = Reader(named_after)
        #: The whole book in columns, classified every block (keeper.book_engine).
        self.engine = BookEngine()
        self.executor = Executor(chain, store, txm, policy, liquidator=liquidator)
        self._settle_tried_at = -1  # snapshot timestamp of the last settle_expired
        self._settle_rounds: dict[int, int] = {}  # instrument -> price round at that try
        #: Cluster mode (keeper.cluster): the accounts of this keeper's shards (None: all),
        #: and whether it holds the leader lease, which settles instruments (None: always).
        self.owns: Callable[[int], bool] | None = None
        self.leads: Callable[[], bool] | None = None

    # --- the per-block step ------------------------------------------------------------------

    def on_block(
        self,
        view: ChainView,
        touched: set[int],
        known: Iterable[int],
        market_changed: bool,
        sweep: bool = False,
    ) -> BlockReport:
        start = view.round_trips
        self.executor.extra_trips = 0
        report = BlockReport(view.block.number)
        snap, targets = self.reader.read(view, touched, known, market_changed, sweep, self.owns)
        report.accounts_reused = snap.reused_accounts
        try:
            assessed = assess_block(self.engine, snap, targets, self.policy, report)
            self.reader.assessed(snap, assessed)
            self.executor.run(snap, most_urgent_first(assessed), report)
        finally:
            self.executor.flush()  # what was decided is recorded even when a later send fails
        self.reader.last_snap = snap
        report.rpc_round_trips = view.round_trips - start + self.executor.extra_trips
        return report

    @property
    def needs_known(self) -> bool:
        """The next block needs every indexed account (the first block, or after a reorg);
        afterwards the accounts named since the last block are enough."""
        return self.reader.first or self.reader.named_after is None

    @property
    def known_count(self) -> int:
        return len(self.reader.known)

    @property
    def next_expiry(self) -> int | None:
        """When ``settle_expired`` is next worth running (a block timestamp; None: never):
        the earliest unsettled expiry not yet tried, or now for an expired instrument whose
        price feed has a new round since the last try (its settlement may now succeed)."""
        snap = self.reader.last_snap
        if snap is None:
            return None
        due = []
        for ins in snap.instruments.values():
            if not ins.listed or ins.settled or ins.expiry == 0:
                continue
            if ins.expiry > self._settle_tried_at:
                due.append(ins.expiry)
                continue
            feed = snap.feeds.get(snap.underlyings[ins.underlying].price_feed)
            if feed is not None and self._settle_rounds.get(ins.id) != feed.round_id:
                due.append(ins.expiry)
        return min(due, default=None)

    def settle_expired(self, view: ChainView) -> BlockReport:
        """Expiry job: settleInstrument for expired instruments with a post-expiry price, and
        settleAccount for the known holders of instruments already settled at this block (the
        holders of an instrument settled now are paid at the next call or block)."""
        start = view.round_trips
        self.executor.extra_trips = 0
        report = BlockReport(view.block.number)
        snap = self.reader.read_known(view, self.owns)
        self._settle_tried_at = snap.timestamp
        for ins in snap.instruments.values():
            feed = snap.feeds.get(snap.underlyings[ins.underlying].price_feed)
            self._settle_rounds[ins.id] = feed.round_id if feed is not None else -1
        # The key carries the feed's round (a reverted settlement may be retried on a later
        # round): without this a round published while the first settlement is pending would
        # send a second one, which reverts InstrumentAlreadySettled once the first is mined.
        in_flight = (
            self.store.instruments_being_settled(self.txm.signer.address) if self.txm else set()
        )
        leader = self.leads is None or self.leads()
        for ins in expired_unsettled(snap) if leader else []:
            if ins.id in in_flight:
                report.skip(SkipReason.IN_FLIGHT)
                continue
            choice = self.reader.settlement_round(view, snap, ins)
            if choice.round_id is None:
                log.info(
                    "no settlement round to name yet",
                    extra={"instrument": ins.id, "reason": choice.reason},
                )
                continue
            self.executor.act(snap, settle_instrument_action(ins.id, choice.round_id), None, report)
        holders = [
            a
            for a, acc in snap.accounts.items()
            if any(snap.instruments[i].settled for i, _ in acc.positions)
        ]
        try:
            due = []
            for a in assess_block(self.engine, snap, holders, self.policy, report):
                if (candidate := self.executor.handle(snap, a, report)) is not None:
                    due.append(candidate)
            self.executor.execute(snap, due, report)
        finally:
            self.executor.flush()
        report.rpc_round_trips = view.round_trips - start + self.executor.extra_trips
        return report

    def poke_funding(self, view: ChainView) -> BlockReport:
        """Funding job: pokeFunding for every perpetual whose funding interval has passed at
        this block (maintenance actions: gated, simulated and recorded like settlement)."""
        start = view.round_trips
        report = BlockReport(view.block.number)
        if self.leads is not None and not self.leads():
            return report  # cluster mode: instrument-level work is the leader's
        snap = view.snapshot([])
        due = []
        for iid, last in due_pokes(snap):
            action = poke_funding_action(iid, last)
            candidate = self.executor.candidate(snap, action, None, report, True)
            if candidate is not None:
                due.append(candidate)
        self.executor.execute(snap, due, report)
        report.rpc_round_trips = view.round_trips - start
        return report

    def release_reverted(self, decision_id: int, reason: str | None, block: int) -> bool:
        """A transaction of ours reverted on-chain: its decision gives the action key back and
        the target backs off (keeper.pipeline.execute). False when there was nothing to
        release."""
        return self.executor.release_reverted(decision_id, reason, block)

    def forget_accounts(self) -> None:
        """Drop the reused account data (after a reorg: read every book again)."""
        self.reader.forget()
        self.engine.forget()
