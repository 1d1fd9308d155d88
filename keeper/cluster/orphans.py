"""What a dead keeper left in flight, resolved exactly once by the leader.

A keeper killed mid-block can leave, for an action it decided:

1. **a decision without a transaction** (killed between the two writes): its action key is
   taken, so nobody else decides the action again; the keeper that now holds the shard gives
   the key back once the decision is ``ABANDONED_AFTER_BLOCKS`` old (``Executor._abandoned``,
   as for a single keeper's crash) and decides afresh. The dead keeper cannot store a
   transaction for it later: the fence needs the key and the lease (``admit_transactions``);
2. **a stored transaction never signed** (killed before its first attempt): nobody can sign
   it but its own key, and it must not stay "in flight" forever. The leader fails it (FAILED,
   final: never on chain; its nonce is a gap its signer fills if it comes back) and gives the
   decision's key back, in one database transaction that first locks the transaction row: a
   keeper that was only paused and resumes finds it closed when it tries to sign
   (``admit_attempts``);
3. **a signed, broadcast transaction** (the usual case): it may still mine, so the action key
   stays taken and the target stays in flight (``Executor._gates_pass``): no other keeper
   sends the same action. The leader drives it to its end with the dead keeper's own signed
   bytes: it re-broadcasts the last attempt (same nonce, same hash: one effect at most) and
   records its receipt -- mined, final, or reverted (the key is then given back as for any
   revert) -- or DROPPED when the signer's nonce was used by another of its transactions.

"Dead" means: the transaction's sender is not the signer of any keeper whose heartbeat is
within the lease ttl. A restarted keeper with the same signer follows its own open
transactions again (``TxManager.start``); what the leader closed meanwhile is final and is not
sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select

from keeper.chain.rpc import Rpc
from keeper.cluster.leases import live_addresses
from keeper.store import AttemptStatus, DecisionOutcome, Store, Transaction, TxAttempt, TxStatus
from keeper.store.models import Decision
from keeper.store.types import utcnow
from keeper.transactions import _receipt_fields

log = logging.getLogger("keeper.cluster")


@dataclass
class OrphanReport:
    followed: int = 0
    failed: list[int] = field(default_factory=list)  # never signed: closed, key given back
    rebroadcast: int = 0
    final: list[int] = field(default_factory=list)
    reverted: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


def orphans(store: Store, ttl_us: int) -> list[Transaction]:
    """Open transactions whose sender is no live keeper's signer."""
    with store.session() as s:
        live = live_addresses(s.connection(), ttl_us)
        rows = s.exec(select(Transaction).where(col(Transaction.final).is_(False))).all()
    return [tx for tx in rows if tx.sender.lower() not in live]


def resolve_orphans(
    store: Store,
    rpc: Rpc,
    *,
    ttl_us: int,
    confirmations: int,
    release_reverted: Callable[[int, str | None, int], Any],
) -> OrphanReport:
    """One pass over the dead keepers' open transactions (see the module docstring)."""
    report = OrphanReport()
    txs = orphans(store, ttl_us)
    if not txs:
        return report
    attempts = store.attempts_of([tx.id for tx in txs if tx.id is not None])
    head = int(rpc.batch([("eth_blockNumber", [])])[0]["result"], 16)
    hashes = [a.hash for tx in txs if tx.id is not None for a in attempts[tx.id]]
    replies = rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
    receipts = {h: _receipt_fields(r.get("result")) for h, r in zip(hashes, replies, strict=True)}
    senders = sorted({tx.sender for tx in txs})
    counts = rpc.batch([("eth_getTransactionCount", [s, "latest"]) for s in senders])
    mined_count = {s: int(c["result"], 16) for s, c in zip(senders, counts, strict=True)}
    for tx in txs:
        assert tx.id is not None
        report.followed += 1
        sent = [a for a in attempts[tx.id] if a.status != AttemptStatus.FAILED]
        found = [(a, r) for a in sent if (r := receipts.get(a.hash)) is not None]
        if found:
            attempt, receipt = found[0]
            _record_receipt(store, tx, attempt, receipt, head, confirmations, report)
            if receipt["status"] == 0 and tx.decision_id is not None:
                release_reverted(tx.decision_id, "reverted (followed after its keeper died)",
                                 receipt["blockNumber"])  # fmt: skip
            continue
        if not sent:
            if _fail_unsigned(store, tx.id):
                report.failed.append(tx.id)
            continue
        if tx.nonce < mined_count[tx.sender]:
            store.update_transaction(tx.id, status=TxStatus.DROPPED, final=True)
            _give_key_back(store, tx.decision_id, "its nonce was used by another transaction")
            report.dropped.append(tx.id)
            continue
        # Still able to mine: the same signed bytes again ("already known" is fine).
        reply = rpc.batch([("eth_sendRawTransaction", [sent[-1].raw])])[0]
        report.rebroadcast += 1
        if "error" in reply:
            log.info("orphan re-broadcast refused", extra={"tx_id": tx.id})
    if report.failed or report.final or report.reverted or report.dropped:
        log.info("orphaned transactions resolved", extra=report.__dict__)
    return report


def _record_receipt(
    store: Store,
    tx: Transaction,
    attempt: TxAttempt,
    receipt: dict[str, Any],
    head: int,
    confirmations: int,
    report: OrphanReport,
) -> None:
    assert tx.id is not None
    ok = receipt["status"] == 1
    depth = max(head, receipt["blockNumber"]) - receipt["blockNumber"] + 1
    final = depth >= max(confirmations, 1) or not ok
    status = (TxStatus.FINAL if final else TxStatus.MINED) if ok else TxStatus.REVERTED
    store.update_transaction(
        tx.id,
        status=status,
        final=final,
        mined_hash=attempt.hash,
        block_number=receipt["blockNumber"],
        block_hash="0x" + bytes(receipt["blockHash"]).hex(),
        gas_used=receipt["gasUsed"],
        effective_gas_price=receipt["effectiveGasPrice"],
        revert_reason=None if ok else "reverted (followed after its keeper died)",
    )
    if final:
        store.settle_attempts(tx.id, attempt.hash)
        (report.final if ok else report.reverted).append(tx.id)


def _fail_unsigned(store: Store, tx_id: int) -> bool:
    """Close a transaction that was stored but never signed, and give its decision's key
    back: one database transaction, the transaction row locked first so a paused keeper that
    resumes cannot sign it in between (its ``admit_attempts`` waits, then finds it closed)."""
    with store.session() as s:
        row = s.exec(select(Transaction).where(Transaction.id == tx_id).with_for_update()).first()
        if row is None or row.status != TxStatus.PENDING:
            return False
        # A new statement after the lock: it sees an attempt committed while we waited.
        signed = s.exec(select(TxAttempt.id).where(TxAttempt.tx_id == tx_id)).first()
        if signed is not None:
            return False
        row.status, row.final, row.updated_at = TxStatus.FAILED, True, utcnow()
        if row.decision_id is not None:
            decision = s.get(Decision, row.decision_id)
            if decision is not None and decision.action_key is not None:
                decision.action_key = None
                decision.outcome = DecisionOutcome.ABANDONED
                decision.outcome_detail = "its keeper died before signing the transaction"
    log.warning("unsigned transaction of a dead keeper closed", extra={"tx_id": tx_id})
    return True


def _give_key_back(store: Store, decision_id: int | None, why: str) -> None:
    if decision_id is None:
        return
    d = store.decision(decision_id)
    if d is not None and d.action_key is not None:
        store.update_decision(decision_id, action_key=None, outcome=DecisionOutcome.ABANDONED,
                              outcome_detail=why)  # fmt: skip
