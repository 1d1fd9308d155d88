"""The soak run's audit: the chain against the keeper's store, after the keeper stopped.

Read independently of the keeper (web3 on the node directly, the store's rows as written):
every transaction the keeper's address mined in the block range, with its receipt and the
clearing-house events in it, and every decision, transaction and attempt row.

**Duplicates** (each must be 0):

- ``decision_key``: two decision rows with one ``action_key``;
- ``tx_per_decision``: two transaction rows for one decision;
- ``mined_per_decision``: two mined keeper transactions (any status) mapping to one decision;
- ``succeeded_per_key``: two successful keeper transactions for one action key;
- ``effect_per_decision``: one decision's transactions emitting the same effect event (name,
  account, instrument) twice;
- ``sent_while_in_flight``: a keeper transaction that reverted, for a target (account, or
  instrument) of which an earlier keeper transaction mined after the block the reverted one
  was decided at: two transactions sent for one target, the second decided without the
  first's effect (e.g. an instrument's settlement sent again at the next price round);
- ``effect_onchain``: the chain itself holding a second ``Liquidation`` for one (account,
  account nonce), ``MarginCall`` for one (account, account nonce) without a
  ``MarginCallCleared`` of the account between the two (a flag and its clearing leave the
  nonce alone), ``InstrumentSettled`` for one instrument, or ``PositionSettled`` for one
  (account, instrument) — whoever sent it.

**Lost records** (each must be 0):

- ``untracked_tx``: a mined keeper transaction whose hash is no attempt in the store;
- ``hash_mismatch`` / ``status_mismatch`` / ``block_mismatch``: its row names another mined
  hash, a status the receipt contradicts (success: mined or final; failure: reverted), or
  another block;
- ``phantom_receipt``: a row naming a mined hash the chain has no such transaction of ours for;
- ``tx_without_decision``: a transaction row (other than a nonce gap filler: a 0-value
  self-transfer) without an existing decision;
- ``decision_without_tx``: a decision acted on (``action_key`` set) without its transaction;
- ``bounty_mismatch``: a successful final row whose recorded bounty differs from the
  ``BountyCredited`` to the keeper in its receipt;
- ``event_not_indexed``: an effect event of a keeper transaction, at or below the indexer's
  cursor, missing from the store's event index.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import select
from web3 import Web3
from web3.logs import DISCARD
from web3.types import RPCEndpoint

from keeper.chain.revert import decode_revert
from keeper.deployment import Deployment, bind
from keeper.indexer.core import STREAM
from keeper.store import Store
from keeper.store.models import Decision, EventLog, Transaction, TxAttempt

#: Clearing-house events a keeper transaction causes (its effects).
EFFECTS = (
    "MarginCall",
    "MarginCallCleared",
    "Liquidation",
    "PositionSettled",
    "InstrumentSettled",
    "BadDebtResolved",
)
DUPLICATE_KINDS = (
    "decision_key",
    "tx_per_decision",
    "mined_per_decision",
    "succeeded_per_key",
    "effect_per_decision",
    "sent_while_in_flight",
    "effect_onchain",
)
LOST_KINDS = (
    "untracked_tx",
    "hash_mismatch",
    "status_mismatch",
    "block_mismatch",
    "phantom_receipt",
    "tx_without_decision",
    "decision_without_tx",
    "bounty_mismatch",
    "event_not_indexed",
)
_OK_STATUSES = ("mined", "final")


@dataclass
class Audit:
    blocks: tuple[int, int]
    keeper_txs_onchain: int = 0
    keeper_txs_reverted: int = 0
    effects: dict[str, int] = field(default_factory=dict)  # keeper-caused events by name
    decisions: dict[str, int] = field(default_factory=dict)  # by action
    decisions_acted_on: int = 0  # with an action key: a transaction was (or is) due
    actions_sent: dict[str, int] = field(default_factory=dict)  # transaction rows by action
    transactions: dict[str, int] = field(default_factory=dict)  # rows by status
    gap_fillers: int = 0
    open_at_end: int = 0  # rows not final when the keeper stopped
    liquidations_acted: int = 0  # liquidate decisions whose transaction emitted Liquidation
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DUPLICATE_KINDS, 0))
    lost: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOST_KINDS, 0))
    examples: list[str] = field(default_factory=list)  # the first problems, for the log
    #: Each reverted keeper transaction: block, action key, gas, the node's trace of the
    #: failure and the reason the keeper recorded.
    reverts: list[str] = field(default_factory=list)

    @property
    def duplicates_total(self) -> int:
        return sum(self.duplicates.values())

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    def flag(self, table: dict[str, int], kind: str, what: str, n: int = 1) -> None:
        table[kind] += n
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {what}")


@dataclass
class _Mined:
    """One keeper transaction found in a block, with its receipt and decoded effects."""

    hash: str
    block: int
    index: int  # position in the block
    ok: bool
    effects: list[tuple[str, int, dict[str, Any]]]  # (name, log index, args)
    bounty: int
    failure: str | None = None  # a revert: what the node's trace of it says


def audit(
    w3: Web3,
    deployment: Deployment,
    store: Store,
    keeper: str | Sequence[str],
    first_block: int,
    last_block: int,
) -> Audit:
    """Compare blocks ``first_block..last_block`` with the store (see the module doc).
    ``keeper``: the keeper's address, or every address of a cluster's keepers (one store)."""
    out = Audit((first_block, last_block))
    ch = bind(w3, deployment, "ClearingHouse")
    keepers = {keeper.lower()} if isinstance(keeper, str) else {k.lower() for k in keeper}
    mined = _keeper_transactions(w3, ch, keepers, first_block, last_block)
    with store.session() as s:
        decisions = {d.id: d for d in s.exec(select(Decision)).all()}
        txs = {t.id: t for t in s.exec(select(Transaction)).all()}
        attempts = list(s.exec(select(TxAttempt)).all())
        indexed = {(e.block_number, e.log_index): e.tx_hash for e in s.exec(select(EventLog))}
    cursor = store.cursor(STREAM)
    indexed_to = cursor.block_number if cursor is not None else -1

    _count_store(out, decisions, txs)
    _check_store(out, decisions, txs)
    by_hash = {a.hash.lower(): txs.get(a.tx_id) for a in attempts}
    _check_chain(out, mined, by_hash, decisions, indexed, indexed_to)
    _check_rows_against_chain(out, txs, {m.hash: m for m in mined})
    _check_onchain_uniqueness(out, ch, first_block, last_block)
    return out


def _keeper_transactions(
    w3: Web3, ch: Any, keepers: set[str], first: int, last: int
) -> list[_Mined]:
    found = []
    for n in range(first, last + 1):
        block = w3.eth.get_block(n, full_transactions=True)
        txs: list[Any] = list(block["transactions"])  # TxData with full_transactions
        for tx in txs:
            me = str(tx["from"]).lower()
            if me not in keepers:
                continue
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            effects = []
            for name in EFFECTS:
                for ev in getattr(ch.events, name)().process_receipt(receipt, errors=DISCARD):
                    effects.append((name, int(ev["logIndex"]), dict(ev["args"])))
            bounty = sum(
                int(ev["args"]["amount"])
                for ev in ch.events.BountyCredited().process_receipt(receipt, errors=DISCARD)
                if str(ev["args"]["liquidator"]).lower() == me
            )
            found.append(
                _Mined(
                    "0x" + bytes(tx["hash"]).hex(),
                    n,
                    int(tx["transactionIndex"]),
                    receipt["status"] == 1,
                    effects,
                    bounty,
                    None if receipt["status"] == 1 else _traced_failure(w3, tx, receipt),
                )
            )
    return found


def _traced_failure(w3: Web3, tx: Any, receipt: Any) -> str:
    """A reverted transaction's failure, from the node's own trace of it (anvil's
    ``debug_traceTransaction`` with the call tracer): exact, whatever else the block held."""
    used = f"gas {receipt['gasUsed']:,} of {int(tx['gas']):,}"
    try:
        params = ["0x" + bytes(tx["hash"]).hex(), {"tracer": "callTracer"}]
        method = RPCEndpoint("debug_traceTransaction")
        trace = w3.provider.make_request(method, params).get("result") or {}
    except Exception as exc:  # a node without the tracer: the gas figures still say much
        return f"{used}; no trace ({type(exc).__name__})"
    error = trace.get("error", "?")
    output = trace.get("output") or "0x"
    if len(output) > 2:
        error = f"{error}: {decode_revert(bytes.fromhex(output[2:]))}"
    return f"{error} ({used})"


def _count_store(out: Audit, decisions: dict[Any, Decision], txs: dict[Any, Transaction]) -> None:
    out.decisions = dict(Counter(d.action for d in decisions.values()))
    out.decisions_acted_on = sum(1 for d in decisions.values() if d.action_key is not None)
    out.transactions = dict(Counter(str(t.status) for t in txs.values()))
    out.actions_sent = dict(
        Counter(decisions[t.decision_id].action for t in txs.values() if t.decision_id in decisions)
    )
    out.gap_fillers = sum(1 for t in txs.values() if _is_gap_filler(t))
    out.open_at_end = sum(1 for t in txs.values() if not t.final)


def _is_gap_filler(t: Transaction) -> bool:
    return t.decision_id is None and t.to == t.sender and t.value == 0 and t.data == "0x"


def _check_store(out: Audit, decisions: dict[Any, Decision], txs: dict[Any, Transaction]) -> None:
    keys = Counter(d.action_key for d in decisions.values() if d.action_key is not None)
    for key, n in keys.items():
        if n > 1:
            out.flag(out.duplicates, "decision_key", f"{key} recorded {n} times", n - 1)
    per_decision = Counter(t.decision_id for t in txs.values() if t.decision_id is not None)
    for d_id, n in per_decision.items():
        if n > 1:
            out.flag(out.duplicates, "tx_per_decision", f"decision {d_id}: {n} transactions", n - 1)
    for t in txs.values():
        if _is_gap_filler(t):
            continue
        if t.decision_id is None or t.decision_id not in decisions:
            out.flag(out.lost, "tx_without_decision", f"tx {t.id} (nonce {t.nonce})")
    for d in decisions.values():
        if d.action_key is not None and d.id not in per_decision:
            out.flag(out.lost, "decision_without_tx", f"decision {d.id} {d.action_key}")


def _check_chain(
    out: Audit,
    mined: list[_Mined],
    by_hash: dict[str, Transaction | None],
    decisions: dict[Any, Decision],
    indexed: dict[tuple[int, int], str],
    indexed_to: int,
) -> None:
    per_decision: Counter[int] = Counter()
    succeeded_per_key: Counter[str] = Counter()
    effect_per_decision: Counter[tuple[int, str, int, int]] = Counter()
    effects: Counter[str] = Counter()
    # target -> (mined block, index, decided at block, ok) of each keeper transaction
    by_target: dict[str, list[tuple[int, int, int, bool]]] = defaultdict(list)
    for m in mined:
        out.keeper_txs_onchain += 1
        out.keeper_txs_reverted += 0 if m.ok else 1
        for name, log_index, _args in m.effects:
            effects[name] += 1
            if m.block <= indexed_to and indexed.get((m.block, log_index)) != m.hash:
                out.flag(out.lost, "event_not_indexed", f"{name} at {m.block}:{log_index}")
        row = by_hash.get(m.hash)
        if row is None:
            out.flag(out.lost, "untracked_tx", f"{m.hash} in block {m.block}")
            continue
        if (row.mined_hash or "").lower() != m.hash:
            out.flag(out.lost, "hash_mismatch", f"tx {row.id}: {row.mined_hash} vs {m.hash}")
        want = _OK_STATUSES if m.ok else ("reverted",)
        if str(row.status) not in want:
            out.flag(out.lost, "status_mismatch", f"tx {row.id}: {row.status}, receipt ok={m.ok}")
        if row.block_number != m.block:
            out.flag(out.lost, "block_mismatch", f"tx {row.id}: {row.block_number} vs {m.block}")
        if m.ok and str(row.status) == "final" and row.bounty != m.bounty:
            out.flag(out.lost, "bounty_mismatch", f"tx {row.id}: {row.bounty} vs {m.bounty}")
        decision = decisions.get(row.decision_id) if row.decision_id is not None else None
        if not m.ok:
            key = decision.action_key or decision.action if decision is not None else "-"
            out.reverts.append(
                f"block {m.block}:{m.index} tx {row.id} {key}: {m.failure}; "
                f"recorded: {row.revert_reason}"
            )
        if row.decision_id is None:
            continue
        per_decision[row.decision_id] += 1
        if m.ok and decision is not None and decision.action_key is not None:
            succeeded_per_key[decision.action_key] += 1
        if decision is not None:
            by_target[decision.account].append((m.block, m.index, decision.block_number, m.ok))
        for name, _, args in m.effects:
            target = (row.decision_id, name, int(args.get("account", -1)), _instrument(args))
            effect_per_decision[target] += 1
        if (
            m.ok
            and decision is not None
            and decision.action == "liquidate"
            and any(name == "Liquidation" for name, _, _ in m.effects)
        ):
            out.liquidations_acted += 1
    out.effects = dict(effects)
    for d, n in per_decision.items():
        if n > 1:
            out.flag(out.duplicates, "mined_per_decision", f"decision {d}: {n} mined", n - 1)
    for key, n in succeeded_per_key.items():
        if n > 1:
            out.flag(out.duplicates, "succeeded_per_key", f"{key}: {n} succeeded", n - 1)
    for target, n in effect_per_decision.items():
        if n > 1:
            out.flag(out.duplicates, "effect_per_decision", f"{target}: {n} times", n - 1)
    for target_key, sent in by_target.items():
        sent.sort()
        for i, (block, _, decided, ok) in enumerate(sent):
            if not ok and any(a_block > decided for a_block, _, _, _ in sent[:i]):
                what = f"{target_key}: reverted in block {block}, decided at {decided}"
                out.flag(out.duplicates, "sent_while_in_flight", what)


def _instrument(args: dict[str, Any]) -> int:
    return int(args.get("instrument", -1))


def _check_rows_against_chain(
    out: Audit, txs: dict[Any, Transaction], mined: dict[str, _Mined]
) -> None:
    for t in txs.values():
        if t.mined_hash is None or t.block_number is None:
            continue
        if t.block_number < out.blocks[0] or t.block_number > out.blocks[1]:
            continue  # outside the audited range
        if t.mined_hash.lower() not in mined:
            out.flag(out.lost, "phantom_receipt", f"tx {t.id}: {t.mined_hash} not ours on chain")


def _check_onchain_uniqueness(out: Audit, ch: Any, first: int, last: int) -> None:
    def logs(name: str) -> list[Any]:
        return list(getattr(ch.events, name)().get_logs(from_block=first, to_block=last))

    # A flag and its clearing leave the account's nonce alone: after a clearing (clearFlag,
    # or money in) the account may be flagged again at the same nonce, a new margin call. Two
    # MarginCalls are one too many only with no clearing of the account between them.
    clearings: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for e in logs("MarginCallCleared"):
        clearings[int(e["args"]["account"])].append((e["blockNumber"], e["logIndex"]))

    def cleared_before(e: Any) -> int:
        at = (e["blockNumber"], e["logIndex"])
        return sum(1 for c in clearings[int(e["args"]["account"])] if c < at)

    keyed: dict[str, Any] = {
        "Liquidation": lambda e: (int(e["args"]["account"]), int(e["args"]["nonce"])),
        "MarginCall": lambda e: (
            int(e["args"]["account"]),
            int(e["args"]["nonce"]),
            cleared_before(e),
        ),
        "InstrumentSettled": lambda e: int(e["args"]["instrument"]),
        "PositionSettled": lambda e: (int(e["args"]["account"]), int(e["args"]["instrument"])),
    }
    for name, key in keyed.items():
        seen: dict[Any, int] = defaultdict(int)
        for e in logs(name):
            seen[key(e)] += 1
        for k, n in seen.items():
            if n > 1:
                out.flag(out.duplicates, "effect_onchain", f"{name} {k}: {n} times", n - 1)
