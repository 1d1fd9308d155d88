"""The nonce manager: the next nonce of a signer, persisted in the store, reconciled with the chain.

Why a local manager: the "pending" nonce of a hosted RPC behind a load balancer is often wrong
(another node's mempool), and a keeper that restarts must not reuse or skip a nonce. The store is
the source of truth for *our* transactions; the chain for what is already mined:

    next = max(chain "latest" count, 1 + highest nonce of our open transactions)

- A nonce is taken together with the transaction row that uses it, in one database transaction
  (``Store.insert_transaction``): a crash can leave a signed-but-unsent transaction, never a gap.
- An open transaction whose nonce is below the chain's "latest" count, with no receipt for any of
  its hashes, lost its nonce to another sender using the same key: it is marked DROPPED (final)
  and never waited for again.
- The node's "pending" count is used only after a nonce conflict at broadcast ("nonce too low",
  "replacement transaction underpriced"), where it is evidence of a foreign pending transaction;
  at start-up it is only compared and logged, because a wrong-high value would create a gap that
  stalls every later transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from eth_typing import HexStr
from web3 import Web3
from web3.exceptions import TransactionNotFound

from keeper.store import AttemptStatus, Store, TxStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconciliation:
    next_nonce: int
    chain_latest: int
    chain_pending: int
    dropped: tuple[int, ...]  # store ids of transactions whose nonce another sender took
    #: Store ids of transactions that never reached a node and whose nonce is now used: they
    #: need a fresh nonce (``Store.renonce_transaction``), not a verdict.
    unsent_stale: tuple[int, ...] = ()


class NonceManager:
    def __init__(self, store: Store, w3: Web3, address: str) -> None:
        self.store = store
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)

    def find_receipt_hash(self, tx_id: int) -> str | None:
        """The hash among a transaction's attempts that has a receipt, if any."""
        for attempt in self.store.attempts(tx_id):
            try:
                self.w3.eth.get_transaction_receipt(HexStr(attempt.hash))
            except TransactionNotFound:
                continue
            return attempt.hash
        return None

    def reconcile(self, *, trust_pending: bool = False) -> Reconciliation:
        """Re-derive the next nonce from the chain and the store (start-up, after errors)."""
        latest = self.w3.eth.get_transaction_count(self.address, "latest")
        pending = self.w3.eth.get_transaction_count(self.address, "pending")
        dropped: list[int] = []
        unsent: list[int] = []
        highest_open: int | None = None
        for tx in self.store.open_transactions(self.address):
            assert tx.id is not None
            if tx.nonce < latest:
                if tx.status != TxStatus.PENDING or self.find_receipt_hash(tx.id) is not None:
                    continue  # mined: the transaction manager records the receipt
                reached = any(a.status != AttemptStatus.FAILED for a in self.store.attempts(tx.id))
                if not reached:
                    unsent.append(tx.id)
                else:
                    self.store.update_transaction(tx.id, status=TxStatus.DROPPED, final=True)
                    dropped.append(tx.id)
                    log.warning(
                        "nonce taken by another sender",
                        extra={"sender": self.address, "nonce": tx.nonce, "tx_id": tx.id},
                    )
                continue
            highest_open = tx.nonce if highest_open is None else max(highest_open, tx.nonce)
        next_nonce = max(latest, highest_open + 1 if highest_open is not None else 0)
        if pending > next_nonce:
            if trust_pending:
                next_nonce = pending
            else:
                log.warning(
                    "node reports pending transactions that are not ours",
                    extra={"sender": self.address, "pending": pending, "next_nonce": next_nonce},
                )
        previous = self.store.next_nonce(self.address)
        self.store.set_next_nonce(self.address, next_nonce)
        if previous != next_nonce:
            log.info(
                "nonce reconciled",
                extra={
                    "sender": self.address,
                    "previous": previous,
                    "next_nonce": next_nonce,
                    "latest": latest,
                    "pending": pending,
                },
            )
        return Reconciliation(next_nonce, latest, pending, tuple(dropped), tuple(unsent))

    def peek(self) -> int | None:
        """The next nonce the store will hand out (None before the first reconcile)."""
        return self.store.next_nonce(self.address)
