"""The keeper's tables (SQLModel). Addresses and hashes are 0x-prefixed lower-case hex strings.

Every integer that can exceed 64 bits (WADs, wei amounts, fees) is a ``BigInt`` column (a
decimal string underneath): exact on SQLite and PostgreSQL alike. Block numbers, nonces and gas
amounts fit in 64 bits and use native integers (so they can be compared and sorted in SQL).

A change to a table here comes with an Alembic revision in ``keeper/store/migrations/versions``
(``python -m keeper.store.migrate check`` and the tests fail while the two disagree).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from keeper.store.types import BigInt, ExactJSON, ScrubbedText, UTCDateTime, utcnow


class TxStatus(StrEnum):
    """Life of one intended transaction (one nonce of one signer)."""

    PENDING = "pending"  # signed (and normally broadcast), no receipt yet
    MINED = "mined"  # one of its hashes has a successful receipt, not yet final
    REVERTED = "reverted"  # one of its hashes mined with status 0 (the nonce is consumed)
    FINAL = "final"  # mined successfully and ``confirmations`` deep
    DROPPED = "dropped"  # the nonce was consumed by a transaction that is not ours
    FAILED = "failed"  # refused by the node at broadcast: never on chain, its nonce released


class AttemptStatus(StrEnum):
    """One signed variant (hash) of a transaction: the original or a fee-bumped replacement."""

    SENT = "sent"  # broadcast (or about to be); may still mine
    MINED = "mined"  # this hash is the one in the chain
    REPLACED = "replaced"  # another hash of the same nonce mined (settled only at finality)
    FAILED = "failed"  # the node refused it at broadcast


class DecisionOutcome(StrEnum):
    """What became of a decision (``decision.outcome``), one word; the particulars (a revert
    reason, the profit that fell short, an assessment's note) are in ``outcome_detail``. A
    quiet record (no action, nothing to say) has neither."""

    NO_ACTION = "no_action"  # no action; the detail says why where one might be expected
    BACKOFF = "backoff"  # the target is backed off after an earlier failure
    DUPLICATE = "duplicate"  # the action's key was taken already (detail: the key)
    IN_FLIGHT = "in_flight"  # a transaction for the target has no receipt yet
    SIMULATION_REVERTED = "simulation_reverted"  # eth_call/estimateGas reverted (the reason)
    UNPROFITABLE = "unprofitable"  # expected bounty minus gas below ``min_profit``
    DRY_RUN = "dry_run"  # would have been sent: the keeper runs read-only
    SENT = "sent"  # handed to the transaction manager with its key
    SEND_FAILED = "send_failed"  # the send raised (detail: the error, scrubbed)
    ABANDONED = "abandoned"  # key released: no transaction was ever stored for it
    FLAG_CLEARED = "flag_cleared"  # key released: our flag landed and was cleared since
    REVERTED = "reverted"  # key released: its transaction reverted on-chain (the reason)


class Route(StrEnum):
    """How one attempt was broadcast."""

    PUBLIC = "public"  # to the node the keeper reads from
    RELAY = "relay"  # to the private relay only
    RELAY_FALLBACK = "relay_public"  # to the relay, then (not included in time) to the public node


class IndexCursor(SQLModel, table=True):
    """How far one event stream is indexed: the last block fully processed, with its hash."""

    __tablename__ = "index_cursor"

    stream: str = Field(primary_key=True, max_length=64)
    block_number: int = Field(sa_type=BigInteger)
    block_hash: str = Field(max_length=66)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class IndexedBlock(SQLModel, table=True):
    """A block the indexer has seen: the parent hash chain is how a reorg is detected."""

    __tablename__ = "indexed_block"

    number: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: str = Field(max_length=66)
    parent_hash: str = Field(max_length=66)
    timestamp: int = Field(default=0, sa_type=BigInteger)


class Decision(SQLModel, table=True):
    """One margin decision about one account at one block, with everything needed to audit it."""

    __tablename__ = "decision"
    __table_args__ = (Index("uq_decision_action_key", "action_key", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    block_number: int = Field(sa_type=BigInteger, index=True)
    block_hash: str = Field(max_length=66)
    #: An address, or a clearing-house account id as a decimal string (up to 78 digits).
    account: str = Field(max_length=80, index=True)
    #: keccak of the canonical encoding of every input read at ``block_number``.
    inputs_digest: str = Field(max_length=66)
    #: Scenario losses per underlying, as integers (WAD).
    loss_matrix: Any = Field(sa_type=ExactJSON)
    requirement: int = Field(sa_type=BigInt)
    initial_margin: int = Field(sa_type=BigInt)
    equity: int = Field(sa_type=BigInt)
    witness: Any = Field(default=None, sa_column=Column(ExactJSON, nullable=True))
    #: A keeper.pipeline.types.AccountState value ("expired" for an instrument's settlement,
    #: "funding" for a perpetual's funding poke).
    state: str = Field(max_length=32)
    action: str = Field(max_length=32)  # a keeper.pipeline.types.ActionKind value, or "none"
    fraction: int | None = Field(default=None, sa_type=BigInt)  # WAD
    expected_bounty: int | None = Field(default=None, sa_type=BigInt)  # wei
    #: A ``DecisionOutcome`` value; the particulars in words are ``outcome_detail``. (A TEXT
    #: column, as it was when it held both: no table rebuild on SQLite to narrow it.)
    outcome: str | None = Field(default=None, sa_type=Text)
    outcome_detail: str | None = Field(default=None, sa_type=ScrubbedText)

    # --- the decision loop's action records (keeper/core.py) -------------------------------
    # ``action_key`` is the idempotency key of a sent action (``flag:<account>:<nonce>``...):
    # unique in the database, so the same action is never sent twice, across restarts and
    # keepers sharing the store.
    action_key: str | None = Field(default=None, max_length=160)
    account_nonce: int | None = Field(default=None, sa_type=BigInteger)
    instrument: int | None = Field(default=None, sa_type=BigInteger)
    lenient: bool | None = Field(default=None)  # oracle ages: liquidationMaxAge (True) / maxAge
    backoff_until: int | None = Field(default=None, sa_type=BigInteger)  # block number
    expected_gas_cost: int | None = Field(default=None, sa_type=BigInt)  # asset-0 WAD
    #: ``inputs_digest`` with the market timestamp zeroed: a new record is due when it (or
    #: the state) changes, not merely because a block passed.
    change_digest: str | None = Field(default=None, max_length=66)


class Transaction(SQLModel, table=True):
    """One intended transaction: a nonce of a signer, for at most one decision.

    ``decision_id`` is unique: a decision is submitted once, across restarts and across keepers
    sharing the database (the insert of a second row fails in the database itself).
    """

    __tablename__ = "tx"
    __table_args__ = (UniqueConstraint("decision_id", name="uq_tx_decision"),)

    id: int | None = Field(default=None, primary_key=True)
    decision_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("decision.id"), nullable=True)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sender: str = Field(max_length=42, index=True)
    nonce: int = Field(default=-1, sa_type=BigInteger, index=True)  # set by insert_transaction
    to: str | None = Field(default=None, max_length=42)
    value: int = Field(default=0, sa_type=BigInt)
    data: str = Field(default="0x")
    gas_limit: int = Field(sa_type=BigInteger)
    chain_id: int = Field(sa_type=BigInteger)
    status: str = Field(default=TxStatus.PENDING, max_length=16, index=True)
    #: Settled for good: mined (or reverted) ``confirmations`` deep, or its nonce consumed by a
    #: transaction that is not ours. Open transactions are watched; final ones never again.
    final: bool = Field(default=False, index=True)
    #: The hash that mined (one of the attempts), once known.
    mined_hash: str | None = Field(default=None, max_length=66)
    block_number: int | None = Field(default=None, sa_type=BigInteger)
    block_hash: str | None = Field(default=None, max_length=66)
    gas_used: int | None = Field(default=None, sa_type=BigInteger)
    effective_gas_price: int | None = Field(default=None, sa_type=BigInt)
    revert_reason: str | None = Field(default=None, sa_type=ScrubbedText)
    #: Bounty credited to the sender by the final receipt (asset-0 WAD; BountyCredited events).
    bounty: int | None = Field(default=None, sa_type=BigInt)


class TxAttempt(SQLModel, table=True):
    """Every hash ever signed for a transaction, kept until the transaction is final: a bumped
    replacement must never make the keeper forget the original, which may still be the one that
    mines."""

    __tablename__ = "tx_attempt"

    id: int | None = Field(default=None, primary_key=True)
    tx_id: int = Field(sa_column=Column(Integer, ForeignKey("tx.id"), nullable=False, index=True))
    hash: str = Field(max_length=66, unique=True)
    raw: str  # the signed transaction, hex: re-broadcast after a node lost it
    max_fee_per_gas: int = Field(sa_type=BigInt)
    max_priority_fee_per_gas: int = Field(sa_type=BigInt)
    sent_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    status: str = Field(default=AttemptStatus.SENT, max_length=16)
    error: str | None = Field(default=None, sa_type=ScrubbedText)
    #: Where these bytes were broadcast (``Route``): the public node, a private relay, or the
    #: relay first and the public node after (the same bytes: one nonce, one effect).
    route: str = Field(default="public", max_length=16)
    #: A relayed attempt goes to the public node once the head reaches this block.
    relay_until_block: int | None = Field(default=None, sa_type=BigInteger)


class NonceState(SQLModel, table=True):
    """The next nonce to use, per signer (a cache of ``max(chain, our transactions)``)."""

    __tablename__ = "nonce_state"

    sender: str = Field(primary_key=True, max_length=42)
    next_nonce: int = Field(sa_type=BigInteger)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- event index (keeper/indexer) ----------------------------------------------------------


class EventLog(SQLModel, table=True):
    """One ClearingHouse log, decoded (``name`` "unknown" with raw topics/data otherwise)."""

    __tablename__ = "event_log"
    __table_args__ = (Index("ix_event_log_name_block", "name", "block_number"),)

    block_number: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    log_index: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    block_hash: str = Field(max_length=66)
    tx_hash: str = Field(max_length=66)
    name: str = Field(max_length=64)
    #: Decoded arguments by name: integers exact (any size), addresses/bytes as 0x-hex.
    args: Any = Field(sa_type=ExactJSON)
    #: Account ids this log names (including the backstop it implicitly changes).
    accounts: Any = Field(sa_type=ExactJSON)


class EventAccount(SQLModel, table=True):
    """An account named by a log, with the account's nonce after that log: the latest row of
    an account is its indexed state, which makes a reorg rollback a plain delete."""

    __tablename__ = "event_account"

    block_number: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    log_index: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    account: int = Field(sa_column=Column(BigInt, primary_key=True, index=True))
    nonce: int = Field(sa_type=BigInteger)


class Account(SQLModel, table=True):
    """An account ever named by an event: id = owner << 96 | sub (up to 2^256, so BigInt)."""

    __tablename__ = "account"

    id: int = Field(sa_column=Column(BigInt, primary_key=True))
    owner: str = Field(max_length=42, index=True)
    sub: int = Field(sa_type=BigInt)
    nonce: int = Field(default=0, sa_type=BigInteger)  # the nonce after its latest event
    first_block: int = Field(sa_type=BigInteger)
    last_block: int = Field(sa_type=BigInteger, index=True)


class ClusterLease(SQLModel, table=True):
    """One lease of cluster mode (keeper.cluster): a shard of the book, or the leader lease
    (``shard`` -1: the instrument-level jobs). Times are microseconds on the database's clock,
    so keepers on machines whose clocks disagree still agree on who holds what. ``token`` (the
    fencing token) grows by one at every change of owner: a decision is recorded only while
    its shard's row still names its keeper with the token it acted under."""

    __tablename__ = "cluster_lease"

    shard: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    owner: str | None = Field(default=None, max_length=64)
    token: int = Field(default=0, sa_type=BigInteger)
    expires_us: int = Field(default=0, sa_type=BigInteger)
    acquired_us: int = Field(default=0, sa_type=BigInteger)


class ClusterKeeper(SQLModel, table=True):
    """A keeper of the cluster: its signer, its heartbeat (database clock, microseconds), the
    last block it processed (lag per shard in ``keeper status``), and whether it is draining."""

    __tablename__ = "cluster_keeper"

    keeper_id: str = Field(primary_key=True, max_length=64)
    address: str | None = Field(default=None, max_length=42)
    started_us: int = Field(default=0, sa_type=BigInteger)
    heartbeat_us: int = Field(default=0, sa_type=BigInteger)
    head: int | None = Field(default=None, sa_type=BigInteger)
    draining: bool = Field(default=False)
