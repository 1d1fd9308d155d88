"""The ClearingHouse event indexer: eth_getLogs in bounded chunks into the store, a persisted
cursor, reorg detection by block hash, and a batched consistency check against chain state.

Why it is shaped this way:
- Index up to the head (the keeper reacts to the latest block), but keep the hashes of the
  last ``confirmations`` blocks: a reorg inside that window is rolled back and re-indexed; one
  deeper than the window raises ``ReorgTooDeep`` (nothing is changed).
- Each chunk is stored in one database transaction (logs, accounts, blocks, cursor): a failed
  RPC or a crash never leaves a partial chunk or a cursor ahead of the data.
- Every log is checked against the hash we record for its block, and a chunk's first block
  against the cursor's hash: a lagging node answering from a reorged block is caught
  (``ChainMoved``: the sync starts over from reorg detection, three times at most).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak

from keeper.chain.errors import ChainError, RpcError
from keeper.chain.rpc import BlockRef, _block_ref
from keeper.chain.view import Chain, ChainView
from keeper.indexer.decode import MARKET_EVENTS, DecodedLog, decode_log
from keeper.store import index_store
from keeper.store.db import Store
from keeper.store.models import IndexedBlock

log = logging.getLogger(__name__)

STREAM = "clearinghouse"
ATTEMPTS = 3

#: Wordings of providers' eth_getLogs caps (geth, erigon, Infura, Alchemy, QuickNode, Ankr,
#: BlastAPI, ...): "query returned more than 10000 results", "exceed maximum block range",
#: "block range is too wide", "Log response size exceeded", "limited to a 10,000 range".
_RANGE_WORDS = re.compile(
    r"too large|too wide|too big|too many|more than|exceed|limit|range is|max(imum)? (block )?range"
    r"|response size|block range",
    re.IGNORECASE,
)


class IndexerError(ChainError):
    """Base of the indexer's own failures."""


class ChainMoved(IndexerError):
    """The node's answers do not form one chain (a reorg under the sync, a lagging node)."""


class ReorgTooDeep(IndexerError):
    """No stored block is still canonical: the reorg is deeper than ``confirmations``."""


class LogRangeRefused(IndexerError):
    """eth_getLogs refused even a one-block range."""


def is_range_refusal(exc: RpcError) -> bool:
    """A node's "range too large / too many results / limit exceeded" answer to eth_getLogs
    (JSON-RPC -32005 limit exceeded, or -32602 / -32000 with such wording)."""
    err = exc.error
    code = err.get("code") if isinstance(err, dict) else None
    text = str(err)
    if code is None:
        m = re.search(r"'code':\s*(-?\d+)", text)
        code = int(m.group(1)) if m else None
    if code == -32005:
        return True
    return bool(_RANGE_WORDS.search(text))


@dataclass
class SyncResult:
    from_block: int  # first block indexed in this call
    to_block: int  # last block indexed (the head, or the cursor if nothing new)
    logs: int  # logs stored in this call
    reorg_from: int | None  # first block number rolled back by a reorg, else None
    touched_accounts: set[int] = field(default_factory=set)
    market_changed: bool = False
    settled_instruments: set[int] = field(default_factory=set)
    listed_instruments: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class AccountMismatch:
    account: int
    indexed_nonce: int | None  # None: the store has no account row for it
    chain_nonce: int


@dataclass
class ConsistencyReport:
    block: int  # the view's block
    indexed_to: int  # the cursor when checked
    accounts_checked: int
    mismatched: list[AccountMismatch]
    trade_count: tuple[int, int]  # (indexed Trade logs, chain tradeCount())
    instrument_count: tuple[int, int]  # (indexed InstrumentListed logs, instrumentCount())

    @property
    def ok(self) -> bool:
        return self.indexed_to >= self.block and not self.mismatched and not self.missing_events

    @property
    def missing_events(self) -> bool:
        """The counts disagree: whole logs are missing (or extra), so the index must be
        rebuilt (``Indexer.rewind``), not only the mismatching accounts re-read."""
        return (
            self.trade_count[0] != self.trade_count[1]
            or self.instrument_count[0] != self.instrument_count[1]
        )

    @property
    def mismatched_accounts(self) -> list[int]:
        return [m.account for m in self.mismatched]


class Indexer:
    def __init__(
        self,
        chain: Chain,
        store: Store,
        *,
        confirmations: int,
        chunk_blocks: int = 2000,
        progress: bool = False,
    ) -> None:
        if confirmations < 0 or chunk_blocks < 1:
            raise ValueError("confirmations >= 0 and chunk_blocks >= 1")
        self.chain = chain
        self.store = store
        self.confirmations = confirmations
        self.chunk_blocks = chunk_blocks  # halved (for good) on a node's range refusal
        self.progress = progress
        self.address = chain.clearing_house.lower()
        self.start_block = chain.deployment.start_block

    # --- public ------------------------------------------------------------------------------

    def sync(self, head: BlockRef | None = None) -> SyncResult:
        """Index everything up to ``head`` (the node's latest block if None) from the cursor.

        If the chain moves under the sync (``ChainMoved``), it starts over from reorg detection
        against the node's new head, so ``to_block`` may then exceed ``head.number``."""
        head = head or self.chain.head()
        # One result across attempts: chunks stored before a ChainMoved count as well.
        result = SyncResult(from_block=-1, to_block=-1, logs=0, reorg_from=None)
        for attempt in range(ATTEMPTS):
            try:
                self._sync_once(head, result)
                return result
            except ChainMoved as exc:
                if attempt == ATTEMPTS - 1:
                    raise
                log.warning("chain moved during sync (%s); starting over", exc)
                head = self.chain.head()
        raise AssertionError("unreachable")

    def rewind(self, to_block: int | None = None) -> None:
        """Forget everything indexed above ``to_block`` (default: everything), in one
        transaction; the next ``sync`` re-indexes from there (after a consistency failure
        with missing events, or a ``ReorgTooDeep``)."""
        floor = self.start_block - 1
        index_store.rollback_index_after(
            self.store, STREAM, floor if to_block is None else max(to_block, floor)
        )

    def known_accounts(self) -> list[int]:
        return index_store.known_accounts(self.store)

    def accounts_named_after(self, block: int) -> set[int]:
        """Accounts an indexed event named after ``block`` (new ones included)."""
        return index_store.accounts_named_after(self.store, block)

    def cursor(self) -> int | None:
        cur = self.store.cursor(STREAM)
        return cur.block_number if cur else None

    def check_consistency(self, view: ChainView) -> ConsistencyReport:
        """Indexed nonces and counts against the chain at ``view``'s block, in one batched
        read (Multicall3 through the view). Accounts the index missed altogether show as a
        count mismatch (their trades are missing) unless they never traded."""
        block = view.block.number
        cursor = self.cursor() or (self.start_block - 1)
        as_of = min(block, cursor)
        nonces = index_store.indexed_nonces(self.store, as_of)
        accounts = sorted(nonces)
        calls = [view.ch_call("tradeCount"), view.ch_call("instrumentCount")]
        calls += [view.ch_call("accountState", a) for a in accounts]
        res = view.call_many(calls)
        trades, instruments = res[0].one(), res[1].one()
        mismatched = []
        for a, r in zip(accounts, res[2:], strict=True):
            chain_nonce = int(r.one()[0])
            if nonces[a] != chain_nonce:
                mismatched.append(AccountMismatch(a, nonces[a], chain_nonce))
        return ConsistencyReport(
            block=block,
            indexed_to=cursor,
            accounts_checked=len(accounts),
            mismatched=mismatched,
            trade_count=(index_store.event_count(self.store, "Trade", as_of), int(trades)),
            instrument_count=(
                index_store.event_count(self.store, "InstrumentListed", as_of),
                int(instruments),
            ),
        )

    # --- one pass ------------------------------------------------------------------------------

    def _sync_once(self, head: BlockRef, res: SyncResult) -> None:
        fork = self._find_fork()
        if fork is not None:
            rolled = index_store.rollback_index_after(self.store, STREAM, fork)
            log.warning("reorg: rolled back %d logs above block %d", rolled.logs, fork)
            res.reorg_from = fork + 1 if res.reorg_from is None else min(res.reorg_from, fork + 1)
            res.touched_accounts |= rolled.accounts
            res.market_changed |= bool(rolled.names & MARKET_EVENTS)
        cur = self.store.cursor(STREAM)
        start = cur.block_number + 1 if cur else self.start_block
        prev_hash = cur.block_hash if cur else None
        res.from_block = start if res.from_block < 0 else min(res.from_block, start)
        res.to_block = max(start - 1, head.number)
        if start > head.number:
            return
        backstop = index_store.latest_backstop(self.store)
        with self._progress(head.number - start + 1) as advance:
            while start <= head.number:
                end = min(start + self.chunk_blocks - 1, head.number)
                raw = self._get_logs(start, end)
                if raw is None:
                    continue  # chunk halved: same start, smaller end
                headers = self._headers(start, end, head, raw)
                self._check(start, end, head, prev_hash, headers, raw)
                logs = []
                for r in sorted(
                    raw, key=lambda x: (int(x["blockNumber"], 16), int(x["logIndex"], 16))
                ):
                    d = decode_log(r, backstop)
                    if d.name == "BackstopSet":
                        backstop = int(d.args["account"])
                    logs.append(d)
                window_from = head.number - self.confirmations
                blocks = [_row(headers[n]) for n in sorted(headers) if n >= window_from]
                index_store.store_chunk(
                    self.store, STREAM, logs, blocks, _row(headers[end]), window_from
                )
                self._fold(res, logs)
                advance(end - start + 1, len(logs))
                start, prev_hash = end + 1, headers[end].hash

    @staticmethod
    def _fold(res: SyncResult, logs: list[DecodedLog]) -> None:
        res.logs += len(logs)
        for d in logs:
            res.touched_accounts.update(d.accounts)
            if d.name in MARKET_EVENTS:
                res.market_changed = True
            if d.name == "InstrumentSettled":
                res.settled_instruments.add(int(d.args["instrument"]))
            elif d.name == "InstrumentListed":
                res.listed_instruments.add(int(d.args["instrument"]))

    # --- reorgs --------------------------------------------------------------------------------

    def _find_fork(self) -> int | None:
        """None when the latest stored block is still canonical; else the highest stored block
        that is (the common ancestor), walking back through the stored window."""
        stored = index_store.indexed_blocks(self.store)
        if not stored:
            return None
        top = stored[0]
        if self._node_hash(top.number) == top.hash:
            return None
        got = self._node_headers([b.number for b in stored[1:]])
        for b in stored[1:]:
            ref = got.get(b.number)
            if ref is not None and ref.hash == b.hash:
                return b.number
        raise ReorgTooDeep(
            f"none of the {len(stored)} stored blocks ({stored[-1].number}..{top.number}) is "
            f"canonical any more: a reorg deeper than confirmations={self.confirmations}"
        )

    def _node_hash(self, number: int) -> str | None:
        ref = self._node_headers([number]).get(number)
        return ref.hash if ref else None

    def _node_headers(
        self, numbers: list[int], blooms: dict[int, bytes] | None = None
    ) -> dict[int, BlockRef]:
        """Headers by number in one JSON-RPC batch; numbers the node does not have are absent.
        ``blooms`` (if given) receives each header's logsBloom."""
        replies = self.chain.rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        out = {}
        for n, reply in zip(numbers, replies, strict=True):
            if "error" in reply:
                raise RpcError("eth_getBlockByNumber", reply["error"])
            if reply.get("result"):
                out[n] = _block_ref(reply["result"])
                if blooms is not None and reply["result"].get("logsBloom"):
                    blooms[n] = bytes.fromhex(reply["result"]["logsBloom"][2:])
        return out

    # --- one chunk -----------------------------------------------------------------------------

    def _get_logs(self, start: int, end: int) -> list[dict[str, Any]] | None:
        """The chunk's logs, or None after halving ``chunk_blocks`` on a range refusal."""
        flt = {"address": self.chain.clearing_house, "fromBlock": hex(start), "toBlock": hex(end)}
        try:
            return list(self.chain.rpc.request("eth_getLogs", [flt]))
        except RpcError as exc:
            if not is_range_refusal(exc):
                raise
            span = end - start + 1
            if span <= 1:
                raise LogRangeRefused(f"eth_getLogs refused block {start} alone: {exc}") from None
            self.chunk_blocks = max(1, span // 2)
            log.info("eth_getLogs refused %d blocks; chunks of %d now", span, self.chunk_blocks)
            return None

    def _headers(
        self, start: int, end: int, head: BlockRef, raw: list[dict[str, Any]]
    ) -> dict[int, BlockRef]:
        """Headers of: the chunk's ends, its blocks in the unconfirmed window, its log blocks."""
        want = {start, end}
        want.update(range(max(start, head.number - self.confirmations), end + 1))
        want.update(int(r["blockNumber"], 16) for r in raw)
        numbers = sorted(want)
        blooms: dict[int, bytes] = {}
        got = self._node_headers(numbers, blooms)
        missing = [n for n in numbers if n not in got]
        if missing:
            raise ChainMoved(f"the node no longer has block(s) {missing[:5]}")
        self._check_omissions(start, end, head, got, blooms, raw)
        return got

    def _check_omissions(
        self,
        start: int,
        end: int,
        head: BlockRef,
        headers: dict[int, BlockRef],
        blooms: dict[int, bytes],
        raw: list[dict[str, Any]],
    ) -> None:
        """A window block whose logsBloom names the clearing house but that came back without
        logs: ask for that block's logs by hash (EIP-234), exact; any answer means the range
        query omitted them (a node behind a load balancer answering from another view)."""
        with_logs = {int(r["blockNumber"], 16) for r in raw}
        address = bytes.fromhex(self.address[2:])
        for n in range(max(start, head.number - self.confirmations), end + 1):
            if n in with_logs or not bloom_has(blooms.get(n, b""), address):
                continue
            flt = {"address": self.chain.clearing_house, "blockHash": headers[n].hash}
            if self.chain.rpc.request("eth_getLogs", [flt]):
                raise ChainMoved(f"eth_getLogs omitted the logs of block {n}")

    def _check(
        self,
        start: int,
        end: int,
        head: BlockRef,
        prev_hash: str | None,
        headers: dict[int, BlockRef],
        raw: list[dict[str, Any]],
    ) -> None:
        if prev_hash and headers[start].parent_hash != prev_hash:
            raise ChainMoved(f"block {start}'s parent is not the indexed block {start - 1}")
        if end == head.number and headers[end].hash != head.hash:
            raise ChainMoved(f"head {head.number} changed hash during the sync")
        for n in range(start + 1, end + 1):  # the window's blocks form one chain
            if n in headers and n - 1 in headers and headers[n].parent_hash != headers[n - 1].hash:
                raise ChainMoved(f"blocks {n - 1} and {n} are not parent and child")
        for r in raw:
            n = int(r["blockNumber"], 16)
            if r.get("removed") or not start <= n <= end:
                raise ChainMoved(f"log of block {n} outside {start}..{end} or removed")
            if r["address"].lower() != self.address:
                raise ChainMoved(f"log from {r['address']} for a ClearingHouse-only filter")
            if r["blockHash"].lower() != headers[n].hash.lower():
                raise ChainMoved(f"log of block {n} has a hash the node's block {n} has not")

    # --- progress ------------------------------------------------------------------------------

    @contextmanager
    def _progress(self, total: int) -> Iterator[Any]:
        if not self.progress:
            yield lambda blocks, logs: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        done = {"logs": 0}
        bar = Progress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("blocks, {task.fields[logs]} logs"),
            console=Console(file=sys.stderr),
            transient=False,
        )
        task = bar.add_task("index", total=total, logs=0)

        def advance(blocks: int, logs: int) -> None:
            done["logs"] += logs
            bar.update(task, advance=blocks, logs=done["logs"])

        with bar:
            yield advance


def bloom_has(bloom: bytes, item: bytes) -> bool:
    """The 2048-bit logsBloom may contain ``item`` (an address or topic): its three bits,
    from the first three byte pairs of keccak(item), are set. An absent bloom says yes."""
    if len(bloom) != 256:
        return True
    h = keccak(item)
    for i in (0, 2, 4):
        bit = ((h[i] << 8) | h[i + 1]) & 2047
        if not bloom[255 - bit // 8] & (1 << (bit % 8)):
            return False
    return True


def _row(ref: BlockRef) -> IndexedBlock:
    return IndexedBlock(
        number=ref.number, hash=ref.hash, parent_hash=ref.parent_hash, timestamp=ref.timestamp
    )


__all__ = [
    "STREAM",
    "AccountMismatch",
    "ChainMoved",
    "ConsistencyReport",
    "Indexer",
    "IndexerError",
    "LogRangeRefused",
    "ReorgTooDeep",
    "SyncResult",
    "bloom_has",
    "is_range_refusal",
]
