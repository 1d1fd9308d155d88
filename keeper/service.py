"""The long-running keeper: index, margin, decide, submit (SPEC §6).

``KeeperService`` wires the parts together — verified chain connection, store, signer and
transaction manager, indexer, decision core, metrics — and runs them as APScheduler jobs:

- **block loop** (every ``decisions.block_poll_interval_seconds``): poll the head *by number*
  (no server-side filter that can silently disappear), index the new blocks (reorgs rolled
  back), re-margin the accounts they affect, act, follow open transactions; settle instruments
  when a block passes an expiry. With ``rpc.ws_url`` the head comes from an
  ``eth_subscribe("newHeads")`` subscription instead (keeper.chain.heads; each new head also
  runs the loop at once), and from a poll whenever the subscription is down, refused, or has
  delivered nothing for ``HEAD_FRESH_SECONDS``;
- **full sweep** (``decisions.sweep_interval_seconds``): every indexed account re-margined;
- **consistency check** (``service.consistency_interval_seconds``): indexed state vs chain;
- **settlement catch-up** (``service.settle_interval_seconds``);
- **funding** (``service.funding_interval_seconds``): pokes each perpetual's funding once per
  interval;
- **recalibration** (``service.recalibrate_interval_seconds``, off by default): execute matured
  recalibrations, queue a new one from the oracle rounds (keeper/recalibration_job.py);

All jobs run on one worker thread, so they never interleave their reads and writes. SIGTERM or
SIGINT stops the scheduler after the job in progress (every job's writes are transactional, so
nothing is half-recorded) and closes the store. A **watchdog** turns the keeper unhealthy and
stops it with exit status 3 when no new block has been processed for
``service.watchdog_seconds``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from eth_utils import keccak

from keeper.bounty import auto_claim
from keeper.chain import Chain, ChainError
from keeper.chain.errors import RpcError
from keeper.chain.heads import HeadSubscription
from keeper.chain.rpc import BlockRef
from keeper.cluster import ClusterMember
from keeper.cluster.index import index_changes, index_lock
from keeper.cluster.orphans import resolve_orphans
from keeper.config import KeeperConfig
from keeper.core import KeeperCore
from keeper.deployment import clearing_house_abi, load_deployment
from keeper.indexer import Indexer, ReorgTooDeep, SyncResult
from keeper.metrics import ACCOUNT_STATES, Health, KeeperMetrics, MetricsServer
from keeper.pipeline.types import BlockReport, DecisionPolicy
from keeper.recalibration_job import RecalibrationJob, recalibration_job
from keeper.secrets import scrub
from keeper.signer import load_signer
from keeper.store import Store, Transaction, TxStatus
from keeper.transactions import TxManager, tx_manager_from_config

_T = TypeVar("_T")

log = logging.getLogger("keeper.service")

#: A job failing the same way again logs its traceback at most this often (seconds).
REPEAT_LOG_SECONDS = 30.0


class _SkippedRunFilter(logging.Filter):
    """Drops APScheduler's "skipped: maximum number of running instances" warning.

    With one worker, a block poll that finds a sweep or a slow block still running is skipped
    by design (the next poll catches up, the watchdog covers a real stall); logged at WARNING
    every 50 ms it would drown the log an operator reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_SkippedRunFilter())

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_STALLED = 3
#: How often the signer's balance and unclaimed bounty are read for the metrics.
WALLET_INTERVAL_SECONDS = 60.0
#: The ``from`` of a read-only keeper's simulations (it never signs).
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
#: topic0 of ClearingHouse's BountyCredited(address indexed liquidator, int256 amount).
BOUNTY_CREDITED_TOPIC = "0x" + keccak(text="BountyCredited(address,int256)").hex()
#: A subscribed head older than this is not trusted alone: the block loop polls (a silent
#: subscription must not stall the keeper until the watchdog fires; on a chain with slower
#: blocks this costs one poll per loop between blocks, as without a subscription).
HEAD_FRESH_SECONDS = 15.0

Recalibrator = Callable[["KeeperService"], None]


class ServiceNotOpen(RuntimeError):
    """A job or view of ``KeeperService`` ran before ``open()`` (or after ``close()``)."""


@dataclass(frozen=True)
class Sender:
    """What sends transactions: the transaction manager and its signer's address."""

    txm: TxManager
    address: str


@dataclass(frozen=True)
class Runtime:
    """Everything a running keeper works with, built once by ``KeeperService.open``.

    ``sender`` is the one optional part: None when the keeper runs read-only (``dry_run``,
    or no ``[signer]``), deciding and recording without sending."""

    chain: Chain
    store: Store
    indexer: Indexer
    core: KeeperCore
    sender: Sender | None


@dataclass
class TickReport:
    head: int
    processed: bool
    touched: int = 0
    assessed: int = 0
    actions: list[str] = field(default_factory=list)
    reorg_from: int | None = None
    seconds: float = 0.0
    bounded: int = 0  # accounts the bounded float pass settled (keeper.book_engine)
    exact: int = 0  # accounts the exact engine assessed
    book_rebuilt: bool = False


class KeeperService:
    def __init__(
        self,
        config: KeeperConfig,
        *,
        progress: bool = False,
        recalibrator: Recalibrator | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.recalibrator = recalibrator
        self._recalibration: RecalibrationJob | None = None
        self.metrics = KeeperMetrics()
        self.health = Health(max_block_age=config.service.watchdog_seconds)
        self.exit_status = EXIT_OK
        self._stop = threading.Event()
        self._last_processed: BlockRef | None = None
        self._last_progress_at = time.monotonic()
        #: (job, error type) -> (monotonic time its traceback was last logged, repeats since):
        #: an outage (database down, node gone) fails every job several times a second, and
        #: one traceback per REPEAT_LOG_SECONDS says as much as hundreds.
        self._failing: dict[tuple[str, str], tuple[float, int]] = {}
        self._last_follow = 0.0
        self._accounted: set[int] = set()
        #: Latest state of every assessed account (for status views), and actions sent so far.
        self.states: dict[int, str] = {}
        self.actions: Counter[str] = Counter()
        #: The latest processed blocks' reports (for status views and benchmarks).
        self.recent: deque[TickReport] = deque(maxlen=4096)
        self._server: MetricsServer | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._runtime: Runtime | None = None
        self._closed = False
        #: New heads by subscription (keeper.chain.heads) when ``rpc.ws_url`` is set.
        self.heads: HeadSubscription | None = None
        #: Cluster mode (``[cluster] enabled``, keeper.cluster): leases, fence, shard filter.
        self.cluster: ClusterMember | None = None
        self._cluster_generation = 0

    @property
    def runtime(self) -> Runtime:
        """The parts of the open keeper; ``ServiceNotOpen`` before ``open()``/after ``close()``."""
        if self._runtime is None or self._closed:
            raise ServiceNotOpen("the keeper service is not open (call open() first)")
        return self._runtime

    # Views of the runtime for callers that look before opening or after closing: None before
    # opening; after closing the store is None (closed) while the chain's counters and the
    # signer's address stay readable for a run's summary.
    @property
    def store(self) -> Store | None:
        return self._runtime.store if self._runtime is not None and not self._closed else None

    @property
    def chain(self) -> Chain | None:
        return self._runtime.chain if self._runtime is not None else None

    @property
    def indexer(self) -> Indexer | None:
        return self._runtime.indexer if self._runtime is not None else None

    @property
    def core(self) -> KeeperCore | None:
        return self._runtime.core if self._runtime is not None else None

    @property
    def txm(self) -> TxManager | None:
        rt = self._runtime
        return rt.sender.txm if rt is not None and rt.sender is not None else None

    @property
    def address(self) -> str | None:
        """The signer's address; None when read-only (or not open)."""
        rt = self._runtime
        return rt.sender.address if rt is not None and rt.sender is not None else None

    # --- start-up ----------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and verify everything, catch up with the chain; raises on any mismatch
        before a single transaction is sent."""
        cfg = self.config
        rt = self._runtime = self._build()
        if cfg.rpc.ws_url is not None:
            self.heads = HeadSubscription(
                cfg.rpc.ws_url,
                on_head=self._on_head,
                on_subscribed=lambda _id: self.metrics.head_subscriptions.inc(),
                timeout=cfg.rpc.timeout_seconds,
            ).start()
        if cfg.cluster.enabled:
            self._join_cluster(rt)
        if rt.sender is not None:
            rt.sender.txm.start()
            # Reverts recorded by an earlier run that died before giving the key back.
            for tx in rt.store.transactions(rt.sender.address):
                if tx.status == TxStatus.REVERTED:
                    self._release_reverted(tx)
        head = rt.chain.head()
        log.info("backfill", extra={"to_block": head.number})
        self._sync(head)
        self.consistency()
        self._process(head, sweep=True)

    def _build(self) -> Runtime:
        """Connect to the chain and the store and make the parts; what was opened is closed
        again when a later part fails."""
        cfg = self.config
        deployment = load_deployment(cfg.deployment.file)
        # A configured WebSocket endpoint carries every read and send (one persistent
        # connection, no HTTP handshake per poll); otherwise HTTP.
        websocket = cfg.rpc.ws_url is not None
        chain = Chain.from_config(cfg.rpc, deployment, websocket=websocket)
        log.info("connected", extra={"transport": "websocket" if websocket else "http"})
        endpoint_states = getattr(chain.w3.provider, "states", None)  # several endpoints
        if callable(endpoint_states):
            self.metrics.watch_endpoints(endpoint_states)
        store: Store | None = None
        try:
            store = Store.open(cfg.store.url)
            sender = self._make_sender(chain, store)
            indexer = Indexer(
                chain,
                store,
                confirmations=cfg.decisions.confirmations,
                chunk_blocks=cfg.indexer.chunk_blocks,
                progress=self.progress,
            )
            core = KeeperCore(
                chain,
                store,
                sender.txm if sender is not None else None,
                policy_from_config(cfg),
                liquidator=sender.address if sender is not None else ZERO_ADDRESS,
                named_after=indexer.accounts_named_after,
            )
        except BaseException:
            if store is not None:
                store.close()
            chain.close()
            raise
        return Runtime(chain, store, indexer, core, sender)

    # --- cluster mode (keeper.cluster) -------------------------------------------------------

    def _join_cluster(self, rt: Runtime) -> None:
        """Take a first share of the leases; from here on the store records decisions and
        transactions only under them (the fence) and the core assesses this keeper's shards."""
        cfg = self.config.cluster
        address = rt.sender.address if rt.sender is not None else None
        member = self.cluster = ClusterMember(rt.store.engine, cfg, address=address)
        rt.store.fence = member
        rt.core.owns = member.owns  # accounts: this keeper's shards only
        rt.core.leads = lambda: member.is_leader  # instruments: the leader only
        self.health.max_leaseless = cfg.max_leaseless_seconds
        self.health.leaseless_since = lambda: member.leaseless_since
        self.metrics.watch_cluster(member, lambda: self.health.lag_blocks)
        member.start()
        log.info(
            "cluster joined",
            extra={"keeper_id": member.keeper_id, "leases": sorted(member.held())},
        )

    def _leader_job(self) -> bool:
        """Whether this keeper runs the consistency check and the recalibration hook: always
        alone, the leader's lease holder in cluster mode (settlement: ``KeeperCore.leads``)."""
        return self.cluster is None or self.cluster.is_leader

    def _cluster_block(self, head: BlockRef, synced: SyncResult) -> None:
        """Before a block is decided in cluster mode: freeze the leases it is decided under,
        learn from the shared index what another keeper indexed, and re-read the whole book
        after gaining a shard (its accounts were not followed)."""
        member, rt, last = self.cluster, self.runtime, self._last_processed
        assert member is not None
        member.begin_block()
        if last is not None:
            seen = index_changes(rt.store, last.number, head.number, last.hash)
            synced.market_changed = bool(synced.market_changed or seen.market_changed)
            synced.listed_instruments |= seen.listed
            synced.settled_instruments |= seen.settled
            if seen.reorged and synced.reorg_from is None:
                synced.reorg_from = last.number
        if member.generation != self._cluster_generation:
            self._cluster_generation = member.generation
            rt.core.forget_accounts()
            log.info("leases gained: the whole book is read again",
                     extra={"leases": sorted(member.held()), "block": head.number})  # fmt: skip

    def _resolve_orphans(self) -> None:
        """The leader follows what dead keepers left in flight (keeper.cluster.orphans)."""
        member, rt = self.cluster, self.runtime
        if member is None or not member.is_leader:
            return
        release = rt.core.release_reverted
        resolve_orphans(rt.store, rt.chain.rpc, ttl_us=member.ttl_us,
                        confirmations=self.config.decisions.confirmations,
                        release_reverted=release)  # fmt: skip

    def _make_sender(self, chain: Chain, store: Store) -> Sender | None:
        cfg = self.config
        if cfg.service.dry_run or cfg.signer is None:
            if not cfg.service.dry_run:
                log.warning("no [signer] configured: running read-only (assess and record)")
            return None
        signer = load_signer(cfg.signer)
        relay = None
        if cfg.relay is not None:
            from keeper.relay import Relay

            relay = Relay(cfg.relay)
        txm = tx_manager_from_config(
            cfg,
            store,
            chain.w3,
            signer,
            relay=relay,
            on_relay=lambda event: self.metrics.relay.labels(event).inc(),
        )
        return Sender(txm, signer.address)

    # --- jobs --------------------------------------------------------------------------------

    def tick(self) -> TickReport | None:
        """The block loop: one poll of the head; processes it when it is new."""
        return self._guard("block", self._tick)

    def _on_head(self, head: BlockRef) -> None:
        """A head from the subscription (its thread): run the block loop now, not at the next
        poll interval."""
        sched = self._scheduler
        if sched is None or not sched.running:
            return
        try:
            sched.modify_job("block", next_run_time=datetime.now(UTC))
        except Exception:  # the scheduler shutting down: the head is simply not acted on
            log.debug("block job not woken", extra={"block": head.number})

    def _tick(self) -> TickReport:
        rt = self.runtime
        head = self.heads.fresh_head(HEAD_FRESH_SECONDS) if self.heads is not None else None
        source = "subscription"
        last = self._last_processed
        if head is not None and last is not None and head.number < last.number:
            head = None  # behind what a poll found: a reorg to a lower head is polled too
        if head is None:
            head, source = rt.chain.head(), "poll"
        self.metrics.head.set(head.number)
        # By hash, not number: a reorg to a chain of the same height is a new head too.
        if last is not None and (head.number, head.hash) == (last.number, last.hash):
            # No new block, no new receipt: between blocks only the clock moves (a stuck
            # transaction's replacement), so open transactions are followed once a second
            # (more often only when the stuck threshold itself is that short).
            every = min(1.0, float(self.config.fees.stuck_after_seconds) / 2)
            if rt.sender is not None and time.monotonic() - self._last_follow >= every:
                self._follow_transactions(rt.sender, head.number)
            self._watch(head)
            return TickReport(head.number, processed=False)
        self.metrics.heads.labels(source).inc()
        return self._process(head)

    def _process(self, head: BlockRef, *, sweep: bool = False) -> TickReport:
        t0 = time.perf_counter()
        if self._last_processed is not None:
            # While this block is processed the keeper's view is the last processed block:
            # the gauge says how far behind it is now (1 in steady state, more after a long
            # block such as a crash's), and 0 once this block is done.
            behind = max(head.number - self._last_processed.number, 0)
            self.metrics.lag.set(behind)
            self.health.behind(behind)
        synced = self._sync(head)
        if self.cluster is not None:
            self._cluster_block(head, synced)
        try:
            out = self._decide(head, synced, t0, sweep)
        finally:
            if self.cluster is not None:
                self.cluster.end_block()
        if self.cluster is not None:
            self.cluster.head = head.number
        return out

    def _decide(self, head: BlockRef, synced: SyncResult, t0: float, sweep: bool) -> TickReport:
        rt = self.runtime
        if synced.reorg_from is not None:
            rt.core.forget_accounts()
            self.metrics.reorgs.inc()
            log.warning("reorg rolled back", extra={"from_block": synced.reorg_from})
        view = rt.chain.view(head)
        # Every indexed account on the first block (and after a reorg); then the core follows
        # the accounts the index names block by block.
        known = rt.indexer.known_accounts() if rt.core.needs_known else []
        report = rt.core.on_block(
            view,
            set(synced.touched_accounts),
            known,
            bool(synced.market_changed),
            sweep=sweep,
        )
        actions = list(report.actions_sent)
        if self._expiry_due(head) or synced.listed_instruments or synced.settled_instruments:
            settled = rt.core.settle_expired(view)
            actions += list(settled.actions_sent)
            self._record(settled)
        self._record(report)
        if rt.sender is not None:
            self._follow_transactions(rt.sender, head.number)
        self._resolve_orphans()
        self._last_processed = head
        self._last_progress_at = time.monotonic()
        self.metrics.known_accounts.set(rt.core.known_count)
        self.metrics.indexed.set(head.number)
        self.metrics.lag.set(0)
        self.health.block(head.number, 0)
        seconds = time.perf_counter() - t0
        self.metrics.block_seconds.observe(seconds)
        out = TickReport(
            head.number,
            processed=True,
            touched=len(synced.touched_accounts),
            assessed=report.accounts_assessed,
            actions=actions,
            reorg_from=synced.reorg_from,
            seconds=seconds,
            bounded=report.accounts_bounded,
            exact=report.accounts_exact,
            book_rebuilt=report.book_rebuilt,
        )
        self.recent.append(out)
        log.info(
            "block",
            extra={
                "block": head.number,
                "touched": out.touched,
                "assessed": out.assessed,
                "bounded": out.bounded,
                "actions": actions,
                "by_state": dict(report.by_state),
                "ms": round(seconds * 1000, 1),
            },
        )
        return out

    def _sync(self, head: BlockRef) -> SyncResult:
        """``Indexer.sync``; a reorg deeper than the stored window (``ReorgTooDeep``: none of
        the last ``confirmations`` block hashes is canonical) rebuilds the index from the
        deployment block: failing instead would repeat at every block until the watchdog
        stopped the keeper, and again at every restart. Every account is then re-margined
        (all of them are touched by the re-index)."""
        rt = self.runtime
        if self.cluster is not None:  # one writer of the shared index at a time
            with index_lock(rt.store.engine):
                return self._sync_index(head)
        return self._sync_index(head)

    def _sync_index(self, head: BlockRef) -> SyncResult:
        rt = self.runtime
        try:
            return rt.indexer.sync(head)
        except ReorgTooDeep as exc:
            log.error(
                "reorg deeper than confirmations: re-indexing from the deployment block",
                extra={"error": scrub(str(exc))},
            )
            rt.indexer.rewind()
            synced = rt.indexer.sync(head)
            synced.reorg_from = rt.chain.deployment.start_block
            return synced

    def sweep(self) -> TickReport | None:
        """Every indexed account re-margined at the head."""
        return self._guard("sweep", lambda: self._process(self.runtime.chain.head(), sweep=True))

    def settle(self) -> None:
        def run() -> None:
            rt = self.runtime
            self._record(rt.core.settle_expired(rt.chain.view()))

        self._guard("settle", run)

    def funding(self) -> None:
        """Funding job: pokes the perpetuals due a funding poke (keeper/protocol/funding.py)."""

        def run() -> None:
            rt = self.runtime
            self._record(rt.core.poke_funding(rt.chain.view()))

        self._guard("funding", run)

    def consistency(self) -> None:
        """Indexed state against on-chain state (batched); mismatching accounts are re-margined
        from the chain at once, and a re-index is forced when whole events are missing."""

        def run() -> None:
            rt = self.runtime
            if not self._leader_job():
                return
            # At the indexed block, not the head: between two block runs the head is ahead of
            # the index, and every account or trade in between showed as a mismatch (and a
            # trade as missing logs: a whole re-index) -- found by the soak run.
            cursor = rt.indexer.cursor()
            view = rt.chain.view(cursor) if cursor is not None else rt.chain.view()
            report = rt.indexer.check_consistency(view)
            if report.ok:
                return
            log.error("indexed state disagrees with the chain", extra={"report": str(report)})
            if report.missing_events:
                # Whole logs are missing: rebuild the index (the next block loop re-syncs).
                rt.indexer.rewind()
                rt.indexer.sync(view.block)
            accounts = set(report.mismatched_accounts)
            rt.core.on_block(view, accounts, rt.indexer.known_accounts(), True, sweep=True)

        self._guard("consistency", run)

    def wallet(self) -> None:
        """The signer's native balance and unclaimed bounty, into their gauges (alerts on a
        keeper running out of gas money, or sitting on a large unclaimed bounty); the scheduled
        claim when ``service.claim_bounty_above_usdc`` is set (keeper.bounty.auto_claim)."""

        def run() -> None:
            rt = self.runtime
            if rt.sender is None:  # scheduled only with a signer
                return
            w3 = rt.chain.w3
            address = w3.to_checksum_address(rt.sender.address)
            self.metrics.signer_balance.set(int(w3.eth.get_balance(address)))
            ch = w3.eth.contract(address=rt.chain.clearing_house, abi=clearing_house_abi())
            unclaimed = int(ch.functions.bounties(rt.sender.address).call())
            self.metrics.bounty_unclaimed.set(unclaimed)
            above = self.config.service.claim_bounty_above_usdc
            if above is not None:
                margin = self.config.decisions.gas_margin_percent
                threshold = int(above.scaleb(18))
                auto_claim(rt.sender.txm, ch, rt.sender.address, unclaimed, threshold, margin)

        self._guard("wallet", run)

    def recalibrate(self) -> None:
        def run() -> None:
            if not self._leader_job():
                return
            if self.recalibrator is not None:
                self.recalibrator(self)
                return
            rt = self.runtime
            if rt.sender is None:
                log.info("recalibration: read-only keeper, nothing sent")
                return
            if self._recalibration is None:
                self._recalibration = recalibration_job(self.config, rt.chain, rt.sender)
            report = self._recalibration.run()
            log.info(
                "recalibration job",
                extra={
                    "block": report.block,
                    "executed": report.executed,
                    "queued_tx": report.queued,
                    "skipped": report.skipped,
                },
            )

        self._guard("recalibrate", run)

    # --- helpers -----------------------------------------------------------------------------

    def _follow_transactions(self, sender: Sender, head: int | None = None) -> None:
        """Follow open transactions; a transaction that became final is accounted once: gas
        paid, status, and the bounty its receipt credited to us (recorded on the row)."""
        store = self.runtime.store
        self._last_follow = time.monotonic()
        for tx in sender.txm.poll(head=head):
            if tx.status == TxStatus.REVERTED:
                self._release_reverted(tx)
            if not tx.final or tx.id is None or tx.id in self._accounted:
                continue
            self._accounted.add(tx.id)
            self.metrics.transactions.labels(str(tx.status)).inc()
            if tx.gas_used is not None and tx.effective_gas_price is not None:
                self.metrics.gas_used.inc(tx.gas_used)
                self.metrics.gas_spent.inc(tx.gas_used * tx.effective_gas_price)
        # From the store, not from this pass: a final transaction is returned by one poll only,
        # and a fault (or a kill) between that poll and the receipt read below must not lose
        # its bounty for good (found by the soak run).
        due = {tx.id: tx.mined_hash for tx in store.final_without_bounty(sender.address)}
        bounties = {}
        for (tx_id, tx_hash), bounty in zip(
            due.items(), self._bounties(list(due.values()), sender.address), strict=True
        ):
            if bounty is None:  # a node without its receipt (pruned): the others go on
                log.warning("receipt of a final transaction not found", extra={"tx_id": tx_id})
                continue
            assert tx_id is not None and tx_hash is not None
            bounties[tx_id] = bounty
            if bounty:
                self.metrics.bounty.inc(bounty)
        store.set_bounties(bounties)
        self.metrics.pending_tx.set(len(store.open_transactions(sender.address)))

    def _release_reverted(self, tx: Transaction) -> None:
        """A reverted transaction gives its decision's action key back (``KeeperCore.
        release_reverted``: idempotent, so every poll pass may ask)."""
        rt = self.runtime
        if tx.decision_id is not None:
            block = tx.block_number if tx.block_number is not None else rt.chain.head().number
            rt.core.release_reverted(tx.decision_id, tx.revert_reason, block)

    def _bounties(self, tx_hashes: list[str | None], liquidator: str) -> list[int | None]:
        """Per transaction, Σ BountyCredited(us, amount) in its receipt: what the chain actually
        paid (None: the node has no receipt). Every receipt in one JSON-RPC batch."""
        chain = self.runtime.chain
        replies = chain.rpc.batch([("eth_getTransactionReceipt", [h]) for h in tx_hashes])
        house = chain.clearing_house.lower()
        us = "0x" + "0" * 24 + liquidator.lower().removeprefix("0x")
        out: list[int | None] = []
        for reply in replies:
            if "error" in reply:
                raise RpcError("eth_getTransactionReceipt", scrub(str(reply["error"])))
            receipt = reply.get("result")
            if receipt is None:
                out.append(None)
                continue
            out.append(
                sum(
                    int.from_bytes(bytes.fromhex(entry["data"][2:66]), "big", signed=True)
                    for entry in receipt["logs"]
                    if entry["address"].lower() == house
                    and len(entry["topics"]) == 2
                    and entry["topics"][0].lower() == BOUNTY_CREDITED_TOPIC
                    and entry["topics"][1].lower() == us
                )
            )
        return out

    def _record(self, report: BlockReport) -> None:
        # A block report covers the accounts it re-margined; the gauge covers every account.
        self.states.update(report.states)
        by_state = self.last_by_state
        for state in ACCOUNT_STATES:
            self.metrics.accounts.labels(state).set(by_state.get(state, 0))
        for reason, n in report.oracle_rejections.items():
            self.metrics.oracle_rejections.labels(reason).inc(n)
        self.metrics.assessed.inc(report.accounts_assessed)
        for kind in report.kinds_sent:
            self.actions[kind] += 1
            self.metrics.decisions.labels(kind).inc()
        for reason, n in report.skipped.items():
            self.metrics.skipped.labels(reason).inc(n)

    @property
    def last_by_state(self) -> dict[str, int]:
        return dict(Counter(self.states.values()))

    def _expiry_due(self, head: BlockRef) -> bool:
        nxt = self.runtime.core.next_expiry
        return nxt is not None and nxt <= head.timestamp

    def _watch(self, head: BlockRef) -> None:
        idle = time.monotonic() - self._last_progress_at
        if idle > self.config.service.watchdog_seconds:
            self._stall(f"no new block for {idle:.0f} s (head {head.number})")

    def _stall(self, why: str) -> None:
        log.error("watchdog: keeper stalled, stopping", extra={"reason": why})
        self.health.stalled = True
        self.exit_status = EXIT_STALLED
        self._stop.set()

    def _guard(self, job: str, fn: Callable[[], _T]) -> _T | None:
        """Run one job; a chain fault is counted, logged and retried at the next run (the
        watchdog catches one that never heals); nothing escapes into the scheduler."""
        try:
            return fn()
        except ChainError as exc:
            self.metrics.rpc_errors.labels(type(exc).__name__).inc()
            self.health.error(scrub(f"{type(exc).__name__}: {exc}"))
            log.warning("chain fault in job", extra={"job": job, "error": scrub(str(exc))})
        except Exception as exc:
            self.metrics.rpc_errors.labels(type(exc).__name__).inc()
            self.health.error(scrub(f"{type(exc).__name__}: {exc}"))
            self._log_failure(job, exc, time.monotonic())
        if time.monotonic() - self._last_progress_at > self.config.service.watchdog_seconds:
            self._stall(f"job {job} keeps failing")
        return None

    def _log_failure(self, job: str, exc: Exception, now: float) -> None:
        """The traceback of a job's failure, once per ``REPEAT_LOG_SECONDS`` for the same job
        and error type; the repeats in between are counted and reported with the next one."""
        key = (job, type(exc).__name__)
        last, repeats = self._failing.get(key, (-REPEAT_LOG_SECONDS, 0))
        if now - last < REPEAT_LOG_SECONDS:
            self._failing[key] = (last, repeats + 1)
            return
        self._failing[key] = (now, 0)
        log.error(
            "job failed",
            exc_info=exc,
            extra={"job": job, "repeats_not_logged": repeats, "error": scrub(str(exc))},
        )

    # --- running -----------------------------------------------------------------------------

    def start_metrics(self) -> int | None:
        m = self.config.metrics
        if not m.enabled:
            return None
        self._server = MetricsServer(self.metrics, self.health, m.host, m.port).start()
        return self._server.port

    def schedule(self) -> BackgroundScheduler:
        cfg = self.config
        sched = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        sched.add_job(
            self.tick,
            "interval",
            seconds=cfg.decisions.block_poll_interval_seconds,
            id="block",
        )
        sched.add_job(
            self.sweep, "interval", seconds=cfg.decisions.sweep_interval_seconds, id="sweep"
        )
        sched.add_job(
            self.settle, "interval", seconds=cfg.service.settle_interval_seconds, id="settle"
        )
        if cfg.service.funding_interval_seconds > 0:
            sched.add_job(
                self.funding,
                "interval",
                seconds=cfg.service.funding_interval_seconds,
                id="funding",
            )
        if cfg.service.consistency_interval_seconds > 0:
            sched.add_job(
                self.consistency,
                "interval",
                seconds=cfg.service.consistency_interval_seconds,
                id="consistency",
            )
        if self.address is not None:
            sched.add_job(
                self.wallet,
                "interval",
                seconds=WALLET_INTERVAL_SECONDS,
                id="wallet",
                next_run_time=datetime.now(UTC),
            )
        if cfg.service.recalibrate_interval_seconds > 0:
            sched.add_job(
                self.recalibrate,
                "interval",
                seconds=cfg.service.recalibrate_interval_seconds,
                id="recalibrate",
            )
        self._scheduler = sched
        return sched

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, install_signals: bool = True) -> int:
        """Open, schedule, serve until SIGTERM/SIGINT (or ``stop()``, or the watchdog);
        returns the exit status."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        self.start_metrics()
        try:
            self.open()
        except Exception:
            self.close()
            raise
        sched = self.schedule()
        sched.start()
        log.info("keeper running", extra={"address": self.address})
        try:
            while not self._stop.wait(0.5):
                if time.monotonic() - self._last_progress_at > self.config.service.watchdog_seconds:
                    # A job stuck inside an RPC call never returns to _guard: check here too.
                    self._stall("block loop made no progress")
        finally:
            self.health.stopping = True
            log.info("stopping: waiting for the job in progress")
            sched.shutdown(wait=True)
            self.close()
        return self.exit_status

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
        self._stop.set()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop(release=True)  # a clean stop: no one waits for the leases' ttl
            self.cluster = None
        if self.heads is not None:
            self.heads.stop()
            self.heads = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        rt = self._runtime
        if rt is not None and not self._closed:
            self._closed = True
            rt.chain.close()
            rt.store.close()


def policy_from_config(config: KeeperConfig) -> DecisionPolicy:
    return DecisionPolicy.from_config(config.decisions)
