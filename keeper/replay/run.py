"""The replay itself: read the range's logs, re-derive and verify every decision point, check
liquidations and margin calls, compare the keeper's records. Returns a ``ReplayResult``;
``keeper.replay.cli`` prints and writes it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from keeper.chain import BlockNotAvailable, BlockRef, Chain, ChainError, ProtocolSnapshot
from keeper.deployment import clearing_house_abi
from keeper.replay.compare import (
    RecordSource,
    compare,
    not_about_an_account,
    parse_account,
    records_source,
    unreplayable,
)
from keeper.replay.derive import BlockPlan, Derivation, decision_accounts, derive, plan
from keeper.replay.errors import BadBlockRange, StateDumpWithoutHistory, StoreUnavailable
from keeper.replay.events import Event, read_history
from keeper.replay.mismatch import Mismatch
from keeper.replay.recalibration import verify_queued
from keeper.replay.record import RecordCheck, check_record, decode_call, rederived_bounty
from keeper.replay.source import open_source, read_deployment
from keeper.replay.verify import ClaimCheck, Verdict, check_claim, verify_block
from keeper.secrets import redact_url
from keeper.store import Decision, Store, StoreError

#: Progress callback: (task, advance, total or None).
Progress = Callable[[str, int, int | None], None]

CLAIM_EVENTS = {"Liquidation": ("liquidation", "liquidate"), "MarginCall": ("margin_call", "flag")}


@dataclass
class ReplayOptions:
    deployment: Path
    rpc_url: str | None = None
    state_dump: Path | None = None
    first: int | None = None
    last: int | None = None
    db_url: str | None = None
    accounts: list[int] = field(default_factory=list)
    #: Keeper addresses whose transactions must all be recorded (besides the store's senders).
    keepers: list[str] = field(default_factory=list)


@dataclass
class Checked:
    """A re-derived decision with the chain's verdict (and the record it was compared with)."""

    derivation: Derivation
    verdict: Verdict
    decision_ids: list[int] = field(default_factory=list)


class ReplaySink(Protocol):
    """Where each re-derived decision and each re-checked liquidation / margin call goes as
    soon as it is known (keeper.replay.report writes them out): the replay keeps none of them,
    so its memory does not grow with the number of decisions."""

    def start(self, source: str, chain_id: int, first: int, last: int) -> None: ...

    def decision(self, c: Checked) -> None: ...

    def claim(self, c: ClaimCheck) -> None: ...


class _Discard:
    def start(self, source: str, chain_id: int, first: int, last: int) -> None:
        return None

    def decision(self, c: Checked) -> None:
        return None

    def claim(self, c: ClaimCheck) -> None:
        return None


@dataclass
class ReplayResult:
    """The verdict and its counts (the decisions themselves went to the sink)."""

    source: str
    chain_id: int
    first: int
    last: int
    head: int
    accounts: list[int]
    decisions: int = 0
    full_checks: int = 0  # MarginVerifier.fullCheck calls judged
    margin_ofs: int = 0  # ClearingHouse.marginOf calls judged
    liquidations: int = 0
    margin_calls: int = 0
    recalibrations: int = 0  # queued recalibrations recomputed from their named rounds
    decisions_compared: int = 0
    #: Recorded rows that are not about an account (instrument-level actions): not compared.
    records_skipped: list[int] = field(default_factory=list)
    with_db: bool = False
    mismatches: list[Mismatch] = field(default_factory=list)
    #: The transaction record against the chain (with ``--db``).
    record: RecordCheck | None = None

    @property
    def clean(self) -> bool:
        return not self.mismatches

    def verdict_line(self) -> str:
        db = ""
        if self.with_db:
            db = f", {self.decisions_compared} recorded decisions compared"
            if self.records_skipped:
                db += f" ({len(self.records_skipped)} instrument-level rows skipped)"
        if self.record is not None:
            rc = self.record
            db += (
                f", {rc.keeper_transactions} keeper transactions on chain and "
                f"{rc.rows_checked} tx rows checked ({rc.rows_pending} pending)"
            )
        status = "CLEAN" if self.clean else "MISMATCH"
        return (
            f"replay of blocks {self.first}..{self.last} (chain {self.chain_id}, {self.source}): "
            f"{len(self.accounts)} accounts, {self.decisions} decisions re-derived, verified "
            f"on-chain (fullCheck {self.full_checks}, marginOf {self.margin_ofs}), "
            f"{self.liquidations} liquidations and {self.margin_calls} margin calls "
            f"re-checked, {self.recalibrations} recalibrations recomputed{db}: "
            f"{len(self.mismatches)} mismatches -- {status}"
        )


def _noop(task: str, advance: int, total: int | None) -> None:
    return None


def replay(
    opts: ReplayOptions, progress: Progress = _noop, sink: ReplaySink | None = None
) -> ReplayResult:
    deployment = read_deployment(opts.deployment)
    with open_source(deployment, rpc_url=opts.rpc_url, state_dump=opts.state_dump) as src:
        chain = src.chain
        head = chain.head().number
        first = deployment.start_block if opts.first is None else opts.first
        last = head if opts.last is None else opts.last
        _check_range(first, last, head, deployment.start_block)
        if first < src.oldest_state:
            raise StateDumpWithoutHistory(
                f"the dump holds the state of block {src.oldest_state} only; write it on exit "
                "from an anvil started with --preserve-historical-states (docs/replay.md)"
            )
        sink = sink or _Discard()
        with records_source(opts.db_url, first, last, opts.accounts) as records:
            sink.start(src.description, deployment.chain_id, first, last)
            result = _Replay(
                chain, src.description, first, last, head, opts, records, progress,
                sink,
            ).run()  # fmt: skip
        if opts.db_url:
            result.record = _check_record(chain, opts, first, last, progress)
            result.mismatches += result.record.mismatches
            result.mismatches.sort(key=lambda m: (m.block, m.decision_id or 0, m.kind))
        return result


def _check_record(
    chain: Chain, opts: ReplayOptions, first: int, last: int, progress: Progress
) -> RecordCheck:
    assert opts.db_url is not None
    progress("transactions", 0, last - first + 1)
    try:
        store = Store.open(opts.db_url)
    except (StoreError, OSError) as exc:
        raise StoreUnavailable(f"{redact_url(opts.db_url)}: {exc}") from None
    try:
        return check_record(
            chain,
            store,
            first,
            last,
            opts.keepers,
            progress=lambda n: progress("transactions", n, None),
        )
    finally:
        store.close()


def _check_range(first: int, last: int, head: int, start: int) -> None:
    if first < 0 or last < 0:
        raise BadBlockRange(f"negative block number ({first}..{last})")
    if last < first:
        raise BadBlockRange(f"--to {last} is before --from {first}")
    if last > head:
        raise BadBlockRange(f"--to {last} is beyond the chain's head {head}")
    if first < start:
        raise BadBlockRange(f"--from {first} is before the deployment's start block {start}")


class _Replay:
    def __init__(
        self,
        chain: Chain,
        source: str,
        first: int,
        last: int,
        head: int,
        opts: ReplayOptions,
        records: RecordSource,
        progress: Progress,
        sink: ReplaySink,
    ) -> None:
        self.chain = chain
        self.opts = opts
        self.records = records
        self.actions = records.actions  # flag/liquidate decisions up to the range's end
        self.progress = progress
        self.sink = sink
        self.seen: set[int] = set()
        self.selected = set(opts.accounts)
        self.result = ReplayResult(
            source, chain.deployment.chain_id, first, last, head, [], with_db=bool(opts.db_url)
        )
        self.feed_names = {}
        for u in chain.deployment.underlyings:
            self.feed_names[u["price_feed"].lower()] = f"{u['symbol']}/USD"
            self.feed_names[u["vol_feed"].lower()] = f"{u['symbol']}/IV"

    def _wanted(self, account: int) -> bool:
        return not self.selected or account in self.selected

    def run(self) -> ReplayResult:
        r = self.result
        span = r.last - min(self.chain.deployment.start_block, r.first) + 1
        self.progress("logs", 0, span)
        history = read_history(
            self.chain, r.first, r.last, progress=lambda n: self.progress("logs", n, None)
        )
        self.history = history
        self.by_tx: dict[str, list[Event]] = {}
        for ev in history.in_range(r.first, r.last):
            self.by_tx.setdefault(ev.tx_hash, []).append(ev)
        plans = {p.block: p for p in plan(history, r.first, r.last)}
        self.progress("blocks", 0, len(set(plans) | self.records.blocks))
        for b, p, recs in _merge(sorted(plans), plans, self.records.by_block()):
            self._block(b, p, recs)
            self.progress("blocks", 1, None)
        del plans
        claims = [e for e in history.in_range(r.first, r.last) if e.name in CLAIM_EVENTS]
        claims = [e for e in claims if self._wanted(int(e.args["account"]))]
        self.progress("claims", 0, len(claims))
        for e in claims:
            c = self._claim(e)
            if c.kind == "liquidation":
                r.liquidations += 1
            else:
                r.margin_calls += 1
            r.mismatches += c.mismatches
            self.sink.claim(c)
            self.progress("claims", 1, None)
        self._recalibrations(history.in_range(r.first, r.last))
        r.accounts = sorted(self.seen)
        r.mismatches.sort(key=lambda m: (m.block, m.decision_id or 0, m.kind))
        return r

    def _recalibrations(self, events: Iterable[Event]) -> None:
        queued = [e for e in events if e.name == "RecalibrationQueued"]
        if not queued:
            return
        w3 = self.chain.w3
        ch = w3.eth.contract(address=self.chain.clearing_house, abi=clearing_house_abi())
        self.progress("recalibrations", 0, len(queued))
        for e in queued:
            self.result.mismatches += verify_queued(w3, self.chain.rpc, ch, e.block, e.args)
            self.result.recalibrations += 1
            self.progress("recalibrations", 1, None)

    # --- one block ---------------------------------------------------------------------

    def _snapshot(self, number: int, accounts: list[int]) -> ProtocolSnapshot:
        ref = self.chain.rpc.block(number)
        return self.chain.view(ref).snapshot(accounts)

    def _block(self, number: int, p: BlockPlan | None, records: list[Decision]) -> None:
        r = self.result
        if p is not None and (p.feeds or p.market_wide):
            wanted = [a for a in self.history.accounts_at(number) if self._wanted(a)]
        else:  # only the accounts named at this block can have a decision point here
            wanted = [a for a in (p.named if p is not None else {}) if self._wanted(a)]
        recorded: dict[int, list[Decision]] = {}
        for rec in records:
            a = parse_account(rec.account)
            if a is None and not_about_an_account(rec):
                r.records_skipped.append(rec.id or 0)
                continue
            if a is None:
                r.mismatches.append(unreplayable(rec, f"unreadable account {rec.account!r}"))
                continue
            recorded.setdefault(a, []).append(rec)
        to_read = list(dict.fromkeys(wanted + list(recorded)))
        if not to_read:
            return  # nobody to decide about yet (e.g. the deployment's own blocks)
        try:
            snap = self._snapshot(number, to_read)
        except (BlockNotAvailable, ChainError) as exc:
            for recs in recorded.values():
                r.mismatches += [unreplayable(rec, str(exc)) for rec in recs]
            if p is not None:
                r.mismatches.append(
                    Mismatch("derivation", number, None, f"no state at block {number}: {exc}")
                )
            r.decisions_compared += sum(len(v) for v in recorded.values())
            return
        points: dict[int, list[str]] = {}
        if p is not None:
            points = {
                a: why
                for a, why in decision_accounts(p, snap, self.feed_names).items()
                if self._wanted(a)
            }
        for a in recorded:
            if a not in points:
                points[a] = ["recorded decision"]
        derivations = [derive(snap, a, why) for a, why in points.items()]
        verdicts = verify_block(self.chain, snap.block, derivations) if derivations else []
        for d, v in zip(derivations, verdicts, strict=True):
            checked = Checked(d, v)
            for rec in recorded.get(d.account, []):
                r.decisions_compared += 1
                checked.decision_ids.append(rec.id or 0)
                mm = compare(rec, d, rederived_bounty(snap, d.account, rec))
                if mm is not None:
                    r.mismatches.append(mm)
            r.decisions += 1
            r.full_checks += v.full_check != "not run"
            r.margin_ofs += v.margin_of != "not run"
            r.mismatches += v.mismatches
            self.seen.add(d.account)
            self.sink.decision(checked)
            d.table = None  # the block's scenario tables go with its snapshot

    # --- liquidations and margin calls -------------------------------------------------

    def _sent_witness(self, tx_hash: str) -> tuple[list[int] | None, str]:
        """The witness the caller sent: the ``flag`` / ``liquidate`` calldata of the event's
        transaction (not in the event itself). None when the call was made through another
        contract (the calldata is not the clearing house's)."""
        try:
            tx = self.chain.rpc.request("eth_getTransactionByHash", [tx_hash])
        except ChainError:
            return None, "none"
        call = decode_call((tx or {}).get("input") or "0x")
        if call is None or call[0] not in ("flag", "liquidate"):
            return None, "none"
        return [int(w) for w in call[1][2]], "calldata"

    def _claim(self, e: Event) -> ClaimCheck:
        kind, action = CLAIM_EVENTS[e.name]
        account = int(e.args["account"])
        witness, source = self._sent_witness(e.tx_hash)
        for rec in reversed(self.actions if witness is None else []):
            if (
                rec.block_number < e.block
                and rec.action == action
                and parse_account(rec.account) == account
                and rec.witness is not None
            ):
                witness, source = [int(w) for w in rec.witness], f"decision {rec.id}"
                break
        same_tx = self.by_tx.get(e.tx_hash, [])
        try:
            parent = self._snapshot(e.block - 1, [account])
            ts = self.chain.rpc.block(e.block).timestamp
        except (BlockNotAvailable, ChainError) as exc:
            c = ClaimCheck(kind, e, account, witness, source)
            c.mismatches.append(
                Mismatch(kind, e.block, account, f"no state at parent block {e.block - 1}: {exc}")
            )
            return c
        return check_claim(kind, e, parent, ts, witness, source, same_tx)


def _merge(
    planned: list[int], plans: dict[int, BlockPlan], records: Iterator[tuple[int, list[Decision]]]
) -> Iterator[tuple[int, BlockPlan | None, list[Decision]]]:
    """The decision blocks in order: those the chain's events plan, merged with those the
    keeper recorded a decision at (both ascending; records arrive block by block)."""
    i = 0
    pending = next(records, None)
    while i < len(planned) or pending is not None:
        b_plan = planned[i] if i < len(planned) else None
        b_rec = pending[0] if pending is not None else None
        b = min(x for x in (b_plan, b_rec) if x is not None)
        recs: list[Decision] = []
        if pending is not None and b_rec == b:
            recs = pending[1]
            pending = next(records, None)
        if b_plan == b:
            i += 1
        yield b, plans.get(b), recs


__all__ = ["BlockRef", "Checked", "ReplayOptions", "ReplayResult", "ReplaySink", "replay"]
