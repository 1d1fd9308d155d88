"""Submitting transactions and following them to finality, with fee-bumped replacement.

Order of operations on every send (the why): the transaction row and its nonce are stored first
(``Store.insert_transaction``), then the signed bytes and hash (``TxAttempt``), and only then is
the transaction broadcast. A crash at any point leaves a record to resume from: a row without an
attempt is signed and sent at the next start; an attempt that may or may not have reached the
node is simply re-broadcast ("already known" is fine). The unique ``decision_id`` makes a second
submission of the same decision fail in the database, whatever the process history.

``poll()`` walks the open transactions of the signer:
- a receipt for *any* of its hashes settles which one mined (every hash is kept: a replaced
  original that mines after all is recognised, never logged as dropped);
- a mined transaction becomes final ``confirmations`` blocks deep; a receipt that vanished
  (reorg) puts it back to pending;
- no receipt and the chain's nonce moved past it: another sender took the nonce (DROPPED);
- no receipt for ``stuck_after_seconds``: a replacement with bumped fees (``FeePolicy.bump``),
  or a re-broadcast of the last hash when the cap leaves no room.

Private submission (``relay``, keeper.relay): a transaction whose decision's action the relay
takes is signed as usual and its bytes sent to the relay only (``Route.RELAY``), with a
deadline of ``fallback_after_blocks`` blocks. Until the head reaches the deadline it is not
replaced (a replacement would have to go public); at the deadline, or at once when the relay
refuses it or cannot be reached, the same bytes go to the public node (``Route.RELAY_FALLBACK``):
one nonce, so whichever copy is included, the effect happens once. From then on the usual
rules (fee-bumped replacements, to the public node) apply. Inclusion is watched on the public
node, by receipt, as for every transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from eth_typing import HexStr
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.types import TxParams, Wei

from keeper.chain.errors import ChainError, RpcError
from keeper.chain.revert import decode_revert, revert_data_of
from keeper.chain.rpc import Rpc
from keeper.fault_points import crash_point
from keeper.fees import FeePolicy, Fees
from keeper.nonces import NonceManager
from keeper.relay import Relay, RelayError
from keeper.secrets import RedactedError, redacting_errors, scrub
from keeper.signer import Signer
from keeper.store import (
    AttemptStatus,
    BatchRefused,
    LeaseLost,
    Route,
    Store,
    StoreError,
    Transaction,
    TxAttempt,
    TxStatus,
)
from keeper.store.types import utcnow

if TYPE_CHECKING:
    from keeper.config import KeeperConfig

log = logging.getLogger(__name__)

_NONCE_CONFLICT = ("nonce too low", "replacement transaction underpriced", "nonce too high")
_ALREADY_KNOWN = ("already known", "known transaction", "already imported")


@dataclass(frozen=True)
class Submission:
    """One transaction to submit (``TxManager.submit_many``)."""

    to: str
    data: str
    gas_limit: int
    decision_id: int | None = None
    value: int = 0

    def fields(self) -> tuple[str, str, int, int, int | None]:
        """``TxManager._submit``'s leading arguments."""
        return self.to, self.data, self.gas_limit, self.value, self.decision_id


class SendError(RuntimeError):
    """The node refused a transaction for a reason other than a nonce conflict."""


#: Exceptions whose messages we build ourselves (no secrets): they pass ``redacting_errors``.
#: keeper.chain's named errors (``RpcUnavailable`` ... from the retrying provider) are scrubbed
#: where they are built.
_OWN_ERRORS: tuple[type[BaseException], ...] = (SendError, RedactedError, StoreError, ChainError)


class TxManager:
    def __init__(
        self,
        store: Store,
        w3: Web3,
        signer: Signer,
        fees: FeePolicy,
        *,
        chain_id: int,
        confirmations: int,
        stuck_after_seconds: float,
        relay: Relay | None = None,
        on_relay: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.w3 = w3
        #: Batched reads (every open transaction's receipts in one request).
        self.rpc = Rpc(w3, str(getattr(w3.provider, "endpoint_uri", "") or ""))
        self.signer = signer
        self.fees = fees
        self.chain_id = chain_id
        self.confirmations = confirmations
        self.stuck_after = timedelta(seconds=stuck_after_seconds)
        self.nonces = NonceManager(store, w3, signer.address)
        self.relay = relay
        #: Told of every relay event: "submitted", "refused" (error or unreachable),
        #: "fallback" (sent to the public node), "included" (mined without a public broadcast).
        self.on_relay = on_relay or (lambda event: None)
        #: Transactions whose new attempt may have been recorded and was not broadcast: the
        #: store failed while recording it, and a database that crashes while answering a
        #: commit leaves the commit made. ``poll`` re-broadcasts their last attempt at once
        #: rather than after ``stuck_after`` (the same bytes: one effect at most).
        self._unbroadcast: set[int] = set()

    # --- start-up ----------------------------------------------------------------------------

    def start(self) -> None:
        """Reconcile nonces with the chain, then (re)send what a previous run left unsent."""
        with redacting_errors(*_OWN_ERRORS):
            self._start()

    def _start(self) -> None:
        rec = self.nonces.reconcile()
        for tx_id in rec.unsent_stale:
            self.store.renonce_transaction(tx_id)
        for tx in self.store.open_transactions(self.signer.address):
            assert tx.id is not None
            live = [a for a in self.store.attempts(tx.id) if a.status == AttemptStatus.SENT]
            if tx.status == TxStatus.PENDING and not live:
                self._send_attempt(tx, self.fees.initial(self._base_fee()), self._private(tx))
            elif tx.status == TxStatus.PENDING:
                self._broadcast(tx, live[-1], rebroadcast=True)  # the node may have lost it

    # --- submission --------------------------------------------------------------------------

    def submit(
        self,
        *,
        to: str,
        data: str = "0x",
        gas_limit: int,
        value: int = 0,
        decision_id: int | None = None,
        base_fee: int | None = None,
    ) -> Transaction:
        """Store, sign and broadcast a new transaction. Raises ``DuplicateSubmission`` when the
        decision already has one, ``SendError`` when the node refuses it, ``RedactedError`` (the
        message scrubbed of credentials) on a transport failure. ``base_fee``: the latest
        block's, when the caller has just read it (a round trip less per transaction)."""
        with redacting_errors(*_OWN_ERRORS):
            return self._submit(to, data, gas_limit, value, decision_id, base_fee)

    def _submit(
        self,
        to: str,
        data: str,
        gas_limit: int,
        value: int,
        decision_id: int | None,
        base_fee: int | None,
    ) -> Transaction:
        tx = self.store.insert_transaction(
            Transaction(
                decision_id=decision_id,
                sender=self.signer.address,
                to=Web3.to_checksum_address(to).lower(),
                value=value,
                data=data,
                gas_limit=gas_limit,
                chain_id=self.chain_id,
            )
        )
        base = self._base_fee() if base_fee is None else base_fee
        return self._send_attempt(tx, self.fees.initial(base), self._private(tx))

    def submit_many(
        self, subs: list[Submission], *, base_fee: int | None = None
    ) -> list[Transaction | Exception]:
        """``submit`` for many transactions at once, in order (consecutive nonces): one database
        transaction stores them all, one JSON-RPC batch broadcasts them all. Each element of
        the answer is the stored transaction or the exception ``submit`` would have raised for
        it. With a private relay configured, each goes through ``submit`` (the relay takes one
        transaction per request)."""
        out: list[Transaction | Exception] = []
        if len(subs) <= 1 or self.relay is not None:
            for sub in subs:
                out.append(self._one(partial(self._submit, *sub.fields(), base_fee)))
            return out
        with redacting_errors(*_OWN_ERRORS):
            base = self._base_fee() if base_fee is None else base_fee
            rows = [
                Transaction(decision_id=sub.decision_id, sender=self.signer.address,
                            to=Web3.to_checksum_address(sub.to).lower(), value=sub.value,
                            data=sub.data, gas_limit=sub.gas_limit, chain_id=self.chain_id)
                for sub in subs
            ]  # fmt: skip
            try:
                txs = self.store.insert_transactions(rows)
            except BatchRefused:
                # Another writer took something of the batch (a decision's transaction): one
                # by one, each insert names its own duplicate.
                for sub in subs:
                    out.append(self._one(partial(self._submit, *sub.fields(), base)))
                return out
            fees = self.fees.initial(base)
            attempts = []
            for tx in txs:
                assert tx.id is not None
                crash_point("before_sign")
                tx_hash, raw = self._sign(tx, fees)
                attempts.append(
                    TxAttempt(tx_id=tx.id, hash=tx_hash, raw="0x" + raw.hex(),
                              max_fee_per_gas=fees.max_fee_per_gas,
                              max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
                              route=Route.PUBLIC)
                )  # fmt: skip
            try:
                attempts = self.store.add_attempts(attempts)
            except LeaseLost:
                raise
            except Exception:
                self._unbroadcast.update(tx.id for tx in txs if tx.id is not None)
                raise
            for tx, attempt in zip(txs, attempts, strict=True):
                log.info(
                    "transaction sent",
                    extra={"tx_id": tx.id, "nonce": tx.nonce, "hash": attempt.hash,
                           "max_fee_per_gas": fees.max_fee_per_gas,
                           "max_priority_fee_per_gas": fees.max_priority_fee_per_gas,
                           "route": attempt.route},
                )  # fmt: skip
            try:
                replies = self.rpc.batch([("eth_sendRawTransaction", [a.raw]) for a in attempts])
            except Exception as exc:
                failure = self._transport_failure(txs[0], exc)
                return [failure for _ in txs]
        for tx, attempt, reply in zip(txs, attempts, replies, strict=True):
            if "error" not in reply:
                crash_point("after_send")
                out.append(tx)
                continue
            message = scrub(str(reply["error"]))
            out.append(self._one(partial(self._refused, tx, attempt, message, False)))
        return out

    @staticmethod
    def _one(step: Callable[[], Transaction]) -> Transaction | Exception:
        """Run one transaction's step; its exception (scrubbed, as ``submit`` raises it) is the
        answer instead of stopping the others."""
        try:
            with redacting_errors(*_OWN_ERRORS):
                return step()
        except Exception as exc:
            return exc

    def _private(self, tx: Transaction) -> bool:
        """Whether ``tx`` goes to the relay: its decision's action is one the relay takes."""
        if self.relay is None or tx.decision_id is None:
            return False
        decision = self.store.decision(tx.decision_id)
        return decision is not None and self.relay.takes(decision.action)

    def _base_fee(self) -> int:
        with redacting_errors(*_OWN_ERRORS):
            block = self.w3.eth.get_block("latest")
        return int(block.get("baseFeePerGas", 0))

    def _sign(self, tx: Transaction, fees: Fees) -> tuple[str, bytes]:
        signed = self.signer.sign(
            {
                "type": 2,
                "chainId": tx.chain_id,
                "nonce": tx.nonce,
                "to": Web3.to_checksum_address(tx.to) if tx.to else None,
                "value": tx.value,
                "data": tx.data,
                "gas": tx.gas_limit,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            }
        )
        return signed.hash, signed.raw

    def _send_attempt(self, tx: Transaction, fees: Fees, private: bool = False) -> Transaction:
        assert tx.id is not None
        crash_point("before_sign")
        tx_hash, raw = self._sign(tx, fees)
        known = self.store.attempt_by_hash(tx_hash)
        if known is not None:
            # Same nonce and fees sign to the same hash: re-broadcast it, never record it twice.
            assert known.id is not None
            self.store.update_attempt(known.id, status=AttemptStatus.SENT, error=None)
            return self._broadcast(tx, known)
        until = None
        if private:
            assert self.relay is not None
            until = int(self.w3.eth.block_number) + self.relay.fallback_after_blocks
        try:
            attempt = self.store.add_attempt(
                TxAttempt(
                    tx_id=tx.id,
                    hash=tx_hash,
                    raw="0x" + raw.hex(),
                    max_fee_per_gas=fees.max_fee_per_gas,
                    max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
                    route=Route.RELAY if private else Route.PUBLIC,
                    relay_until_block=until,
                )
            )
        except LeaseLost:
            raise
        except Exception:
            self._unbroadcast.add(tx.id)
            raise
        log.info(
            "transaction sent",
            extra={
                "tx_id": tx.id,
                "nonce": tx.nonce,
                "hash": tx_hash,
                "max_fee_per_gas": fees.max_fee_per_gas,
                "max_priority_fee_per_gas": fees.max_priority_fee_per_gas,
                "route": attempt.route,
            },
        )
        return self._broadcast(tx, attempt)

    def _broadcast(
        self, tx: Transaction, attempt: TxAttempt, *, rebroadcast: bool = False
    ) -> Transaction:
        """Send ``attempt``; ``rebroadcast`` when the node may already have (or have mined) it:
        a refusal then proves nothing about the attempt, so its status is left alone."""
        assert tx.id is not None and attempt.id is not None
        if attempt.route == Route.RELAY:
            assert attempt.relay_until_block is not None
            if self.relay is not None:
                try:
                    self.relay.send(attempt.raw, attempt.relay_until_block)
                except RelayError as exc:
                    self.on_relay("refused")
                    attempt = self._fall_back(tx, attempt, str(exc))
                    return self._broadcast(tx, attempt, rebroadcast=rebroadcast)
                self.on_relay("submitted")
                return tx
            # Relay since removed from the configuration: the public node it is.
            attempt = self._fall_back(tx, attempt, "no relay configured any more")
            rebroadcast = True
        assert attempt.id is not None
        try:
            self.w3.eth.send_raw_transaction(HexStr(attempt.raw))
        except Web3RPCError as exc:
            return self._refused(tx, attempt, scrub(str(exc)), rebroadcast)
        except Exception as exc:
            raise self._transport_failure(tx, exc) from None
        crash_point("after_send")
        return tx

    def _transport_failure(self, tx: Transaction, exc: Exception) -> Exception:
        """The error to raise for a broadcast that failed in transport: the node may or may not
        have the transaction. The attempt stays SENT, so its hash is watched and ``poll``
        replaces it once it counts as stuck."""
        message = scrub(str(exc))
        log.warning("broadcast failed", extra={"tx_id": tx.id, "error": message})
        if isinstance(exc, ChainError):  # named and scrubbed already (keeper.chain)
            return exc
        return RedactedError(type(exc).__name__, message)

    def _refused(
        self, tx: Transaction, attempt: TxAttempt, message: str, rebroadcast: bool
    ) -> Transaction:
        """The node answered an error to ``attempt``'s broadcast (``message``, scrubbed)."""
        assert tx.id is not None and attempt.id is not None
        lowered = message.lower()
        if any(s in lowered for s in _ALREADY_KNOWN):
            return tx
        if rebroadcast:
            # "nonce too low" here usually means this very hash mined: poll will see it.
            log.info("re-broadcast refused", extra={"tx_id": tx.id, "error": message})
            return tx
        if any(s in lowered for s in _NONCE_CONFLICT) and self._node_has(attempt.hash):
            # Our own bytes hold the nonce: a send retried after its answer was lost (a
            # timeout, a dropped connection) reached the node the first time.
            log.info("send answered late: already with the node", extra={"tx_id": tx.id})
            return tx
        self.store.update_attempt(attempt.id, status=AttemptStatus.FAILED, error=message)
        if any(s in lowered for s in _NONCE_CONFLICT):
            return self._resolve_nonce_conflict(tx, message)
        if not any(a.status != AttemptStatus.FAILED for a in self.store.attempts(tx.id)):
            # Refused for good (bad gas, insufficient funds ...) and no earlier hash of it
            # can mine: it is FAILED and its nonce released (``reconcile`` hands it out
            # again when it was the highest; ``poll`` fills it when it was not).
            self.store.update_transaction(
                tx.id, status=TxStatus.FAILED, final=True, revert_reason=message
            )
            self.nonces.reconcile()
        raise SendError(f"transaction {tx.id} (nonce {tx.nonce}) refused: {message}")

    def _fall_back(self, tx: Transaction, attempt: TxAttempt, reason: str) -> TxAttempt:
        """Mark a relayed attempt as going to the public node too (the caller broadcasts it).
        Its stuck clock restarts: the public node has only had it from now."""
        assert attempt.id is not None and tx.id is not None
        log.warning(
            "private relay: broadcasting to the public node",
            extra={"tx_id": tx.id, "hash": attempt.hash, "reason": scrub(reason)},
        )
        self.on_relay("fallback")
        return self.store.update_attempt(attempt.id, route=Route.RELAY_FALLBACK, sent_at=utcnow())

    def _node_has(self, tx_hash: str) -> bool:
        try:
            self.w3.eth.get_transaction(HexStr(tx_hash))
        except TransactionNotFound:
            return False
        return True

    def _resolve_nonce_conflict(self, tx: Transaction, message: str) -> Transaction:
        """Our nonce is taken (by a mined or pending transaction not in our store)."""
        assert tx.id is not None
        log.warning("nonce conflict", extra={"tx_id": tx.id, "nonce": tx.nonce, "error": message})
        live = [a for a in self.store.attempts(tx.id) if a.status == AttemptStatus.SENT]
        if live or self.nonces.find_receipt_hash(tx.id) is not None:
            # An earlier hash of ours holds this nonce (a replacement was refused): keep waiting.
            return tx
        self.nonces.reconcile(trust_pending=True)
        moved = self.store.renonce_transaction(tx.id)
        log.info(
            "transaction moved to a fresh nonce",
            extra={"tx_id": tx.id, "old_nonce": tx.nonce, "nonce": moved.nonce},
        )
        return self._send_attempt(moved, self.fees.initial(self._base_fee()))

    # --- following ---------------------------------------------------------------------------

    def poll(self, now: datetime | None = None, *, head: int | None = None) -> list[Transaction]:
        """One pass over the open transactions; returns them as updated. ``head``: the latest
        block number when the caller has just read it (saves a round trip)."""
        with redacting_errors(*_OWN_ERRORS):
            return self._poll(now or utcnow(), head)

    def _poll(self, now: datetime, known_head: int | None = None) -> list[Transaction]:
        open_txs = self.store.open_transactions(self.signer.address)
        if not open_txs:
            # Nothing to follow and no nonce above a gap: the block loop polls this several
            # times a block, so an idle keeper asks the node nothing here.
            return []
        # Two requests, whatever the number of open transactions: the signer's mined count and
        # the head, then a receipt per hash (a crash leaves hundreds open at once). Not one
        # batch: a node may answer a batch's requests in any order (anvil does), and a count
        # read after a block that the receipts were read before would take our own mined
        # transaction for another sender's ("nonce taken": found by the soak).
        attempts = self.store.attempts_of([tx.id for tx in open_txs if tx.id is not None])
        hashes = [a.hash for tx_attempts in attempts.values() for a in tx_attempts]
        first: list[tuple[str, list[Any]]] = [
            ("eth_getTransactionCount", [Web3.to_checksum_address(self.signer.address), "latest"]),
            ("eth_blockNumber", []),
        ]
        counted = self.rpc.batch(first)
        latest_count = int(_result(counted[0], first[0][0]), 16)
        head = int(_result(counted[1], first[1][0]), 16) if known_head is None else known_head
        replies = self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        seen = _Pass(
            receipts={
                h: _receipt_fields(_result(r, "eth_getTransactionReceipt"))
                for h, r in zip(hashes, replies, strict=True)
            },
            attempts=attempts,
        )
        out = [self._follow(tx, head, latest_count, now, seen) for tx in open_txs]
        # What the receipts said, in one database transaction (a pass cut short before this
        # loses nothing: the next pass reads the same receipts again).
        self.store.update_transactions(seen.updates)
        self.store.settle_attempts_many(seen.settled)
        for tx_id, tx_hash in seen.settled:
            log.info("transaction final", extra={"tx_id": tx_id, "hash": tx_hash})
        out += self._fill_gaps(latest_count)
        return out

    def _fill_gaps(self, latest_count: int) -> list[Transaction]:
        """Cancel-style fillers (0-value self-transfers) for nonces below an open transaction
        that nothing of ours will ever mine: without them, one refused transaction would block
        every later one of this signer."""
        open_nonces = {t.nonce for t in self.store.open_transactions(self.signer.address)}
        if not open_nonces:
            return []
        candidates = set(range(latest_count, max(open_nonces))) - open_nonces
        if candidates:
            # ``latest_count`` was read before this pass followed the receipts: a transaction
            # that mined (and went final) since holds its nonce too. Only a nonce that no
            # transaction of ours holds any more (FAILED, or moved to a fresh nonce) is a gap.
            held = {
                t.nonce
                for t in self.store.transactions(self.signer.address)
                if t.status != TxStatus.FAILED
            }
            candidates -= held
        filled = []
        for nonce in sorted(candidates):
            log.warning("filling a nonce gap", extra={"nonce": nonce})
            filler = self.store.insert_gap_filler(
                Transaction(sender=self.signer.address, nonce=nonce,
                            to=self.signer.address.lower(), gas_limit=21_000,
                            chain_id=self.chain_id)
            )  # fmt: skip
            filled.append(self._send_attempt(filler, self.fees.initial(self._base_fee())))
        return filled

    def _receipt(self, tx_id: int, seen: _Pass) -> tuple[TxAttempt, Any] | None:
        """The first of ``tx_id``'s attempts with a receipt, from the pass's batch."""
        for attempt in seen.attempts.get(tx_id, []):
            receipt = seen.receipts.get(attempt.hash)
            if receipt is not None:
                return attempt, receipt
        return None

    def _follow(
        self, tx: Transaction, head: int, latest_count: int, now: datetime, seen: _Pass
    ) -> Transaction:
        assert tx.id is not None
        tx_id = tx.id  # fixed for the whole pass; tx is re-read below
        crash_point("before_receipt")
        found = self._receipt(tx_id, seen)
        if found is not None:
            attempt, receipt = found
            ok = receipt["status"] == 1
            # The head was read before the receipt: a block mined in between is still depth 1.
            depth = max(head, receipt["blockNumber"]) - receipt["blockNumber"] + 1
            final = depth >= max(self.confirmations, 1)
            status = (TxStatus.FINAL if final else TxStatus.MINED) if ok else TxStatus.REVERTED
            fields: dict[str, Any] = {
                "status": status,
                "final": final,
                "mined_hash": attempt.hash,
                "block_number": receipt["blockNumber"],
                "block_hash": "0x" + bytes(receipt["blockHash"]).hex(),
                "gas_used": receipt["gasUsed"],
                "effective_gas_price": receipt["effectiveGasPrice"],
                "revert_reason": None
                if ok
                else self._revert_reason(tx, receipt["blockNumber"], receipt["gasUsed"]),
            }
            # Written with the pass's other receipts (``_poll``); the caller sees it now.
            seen.updates[tx_id] = fields
            for name, value in fields.items():
                setattr(tx, name, value)
            if final:
                # Only now are the other hashes settled as replaced: before finality, a reorg
                # could still bring any of them in instead.
                seen.settled.append((tx_id, attempt.hash))
                if attempt.route == Route.RELAY:
                    self.on_relay("included")
            return tx
        if tx.status in (TxStatus.MINED, TxStatus.REVERTED):
            log.warning(
                "receipt vanished (reorg): back to pending, re-broadcast",
                extra={"tx_id": tx_id, "block": tx.block_number, "hash": tx.mined_hash},
            )
            orphaned = self.store.attempt_by_hash(tx.mined_hash) if tx.mined_hash else None
            orphaned_in = (tx.block_number, tx.block_hash)
            tx = self.store.update_transaction(
                tx_id,
                status=TxStatus.PENDING,
                mined_hash=None,
                block_number=None,
                block_hash=None,
                gas_used=None,
                effective_gas_price=None,
            )
            if orphaned is not None and orphaned.id is not None:
                note = f"reorged out of block {orphaned_in[0]} ({orphaned_in[1]}); re-broadcast"
                orphaned = self.store.update_attempt(orphaned.id, error=note)
                # Nodes drop the transactions of orphaned blocks or keep them in their pool:
                # the same bytes go out again now ("already known" is fine), not after
                # ``stuck_after``. The nonce is judged at the next pass: ``latest_count`` was
                # read before the receipt vanished and may still count this transaction.
                return self._broadcast(tx, orphaned, rebroadcast=True)
            return tx
        if tx.nonce < latest_count:
            if not any(a.status != AttemptStatus.FAILED for a in self.store.attempts(tx_id)):
                # It never reached a node: nothing of ours can mine, so it needs a fresh nonce.
                self.nonces.reconcile(trust_pending=True)
                moved = self.store.renonce_transaction(tx_id)
                return self._send_attempt(moved, self.fees.initial(self._base_fee()))
            # The chain used this nonce and none of our hashes has a receipt.
            log.warning("nonce taken by another sender", extra={"tx_id": tx_id, "nonce": tx.nonce})
            return self.store.update_transaction(tx_id, status=TxStatus.DROPPED, final=True)
        live = [a for a in self.store.attempts(tx_id) if a.status == AttemptStatus.SENT]
        unbroadcast = tx_id in self._unbroadcast
        self._unbroadcast.discard(tx_id)
        if not live:
            return self._send_attempt(tx, self.fees.initial(self._base_fee()))
        last = live[-1]
        if unbroadcast:
            log.info(
                "re-broadcasting an attempt recorded while the store failed",
                extra={"tx_id": tx_id, "hash": last.hash},
            )
            return self._broadcast(tx, last, rebroadcast=True)
        if last.route == Route.RELAY:
            # Held by the relay: no replacement (it would have to go public) until the deadline.
            assert last.relay_until_block is not None
            if head < last.relay_until_block:
                return tx
            reason = f"not included by block {last.relay_until_block}"
            return self._broadcast(tx, self._fall_back(tx, last, reason), rebroadcast=True)
        if now - last.sent_at < self.stuck_after:
            return tx
        old = Fees(last.max_fee_per_gas, last.max_priority_fee_per_gas)
        bumped = self.fees.bump(old, self._base_fee())
        if bumped is None:
            log.warning("stuck at the fee cap: re-broadcasting", extra={"tx_id": tx_id})
            return self._broadcast(tx, last, rebroadcast=True)
        log.info("replacing a stuck transaction", extra={"tx_id": tx_id, "replaces": last.hash})
        return self._send_attempt(tx, bumped)

    def _revert_reason(self, tx: Transaction, block_number: int, gas_used: int = -1) -> str:
        """Best effort: replay the call and decode the revert data (``keeper.chain.revert``:
        every error of abi/ and margin.errors). A receipt that used the whole gas limit ran out
        of gas: a replay cannot say so (it runs on another state, or fails the same way without
        data). Otherwise first on the parent block's state: exact when nothing earlier in the
        same block mattered. When that replay succeeds, an earlier transaction of the same
        block made the difference (typically a competitor's liquidation ordered first):
        replayed again on the block's own final state, which includes it. A replay the node
        did not answer (a transport fault, not an execution error) is tried again: an answer
        without a reason was how the cluster soak lost its reverts' reasons."""
        if gas_used >= tx.gas_limit > 0:
            return f"out of gas (used the whole limit, {tx.gas_limit})"
        call: TxParams = {
            "from": self.signer.address,
            "to": Web3.to_checksum_address(tx.to or ""),
            "data": HexStr(tx.data),
            "value": Wei(tx.value),
            "gas": tx.gas_limit,
        }
        for at, label in (
            (block_number - 1, "replayed"),
            (block_number, "replayed after its block"),
        ):
            for _ in range(_REPLAY_TRIES):
                try:
                    self.w3.eth.call(call, at)
                    break
                except Exception as exc:
                    data = revert_data_of(exc)
                    if data is not None:
                        return scrub(f"{decode_revert(data)} ({label})")
                    message = str(getattr(exc, "message", None) or exc)
                    if _execution_error(message):
                        return scrub(f"reverted: {message} ({label})")
            else:
                return "reverted (the replay went unanswered: reason unknown)"
        return "reverted (replays before and after its block succeed: state-dependent revert)"


#: Replays of a reverted call before its reason is given up as unknown.
_REPLAY_TRIES = 4
_EXECUTION_WORDS = ("revert", "out of gas", "invalid opcode", "stack", "execution")


def _execution_error(message: str) -> bool:
    """Whether a failed eth_call is the call's own failure (not the node's or the network's)."""
    lowered = message.lower()
    return any(word in lowered for word in _EXECUTION_WORDS)


@dataclass
class _Pass:
    """One ``poll`` pass: what its batch read, and the receipts' writes it owes the store."""

    receipts: dict[str, dict[str, Any] | None]
    attempts: dict[int, list[TxAttempt]]
    updates: dict[int, dict[str, Any]] = field(default_factory=dict)
    settled: list[tuple[int, str]] = field(default_factory=list)  # (tx id, mined hash)


def _result(reply: dict[str, Any], method: str) -> Any:
    if "error" in reply:
        raise RpcError(method, scrub(str(reply["error"])))
    return reply.get("result")


def _receipt_fields(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fields ``_follow`` reads of a raw JSON-RPC receipt, typed as web3 gives them."""
    if raw is None:
        return None
    return {
        "status": int(raw["status"], 16),
        "blockNumber": int(raw["blockNumber"], 16),
        "blockHash": HexBytes(raw["blockHash"]),
        "gasUsed": int(raw["gasUsed"], 16),
        "effectiveGasPrice": int(raw.get("effectiveGasPrice") or "0x0", 16),
    }


def tx_manager_from_config(
    cfg: KeeperConfig,
    store: Store,
    w3: Web3,
    signer: Signer,
    *,
    relay: Relay | None = None,
    on_relay: Callable[[str], None] | None = None,
) -> TxManager:
    """The transaction manager a configuration asks for (fees, chain id, confirmations, stuck
    threshold); the service adds the private relay, a bounty claim sends publicly."""
    return TxManager(
        store,
        w3,
        signer,
        FeePolicy(cfg.fees),
        chain_id=cfg.rpc.chain_id,
        confirmations=cfg.decisions.confirmations,
        stuck_after_seconds=cfg.fees.stuck_after_seconds,
        relay=relay,
        on_relay=on_relay,
    )
