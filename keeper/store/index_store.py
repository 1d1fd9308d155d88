"""Store side of the event indexer (keeper/indexer): one chunk (logs, accounts, blocks, cursor)
in one database transaction, the reorg rollback in one transaction, and the read queries.

An account's indexed nonce is the nonce of its latest ``event_account`` row, so a rollback is a
delete of every row above the fork point plus a recomputation from the remaining rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, insert
from sqlmodel import Session, col, delete, select

from keeper.store.models import Account, EventAccount, EventLog, IndexCursor, IndexedBlock
from keeper.store.types import utcnow

if TYPE_CHECKING:
    from keeper.store.db import Store

SUB_BITS = 96
#: Logs per round of work (rows built, then inserted) inside store_chunk's one transaction. In
#: cluster mode PostgreSQL ends a session idle in a transaction for ``lease_ttl -
#: safety_margin`` (keeper.cluster.member), so the time between two statements must not grow
#: with the chunk: a seeded venue's first chunk holds every account's logs (~250,000 at
#: 100,000 accounts), and building their rows took longer than that.
STORE_BATCH = 1_000


class IndexedLog(Protocol):
    """What the store reads of a decoded log (``keeper.indexer.decode.DecodedLog``): the
    store does not depend on the indexer."""

    block_number: int
    log_index: int
    block_hash: str
    tx_hash: str
    name: str
    args: dict[str, Any]
    #: (account, SET/BUMP/KEEP, carried nonce or 0), in the order the contract applies them.
    effects: list[tuple[int, str, int]]

    @property
    def accounts(self) -> list[int]: ...


@dataclass
class RolledBack:
    """What a rollback removed: logs, and the accounts and event names they named."""

    logs: int = 0
    accounts: set[int] = field(default_factory=set)
    names: set[str] = field(default_factory=set)


def _new_account(account: int, block: int) -> Account:
    return Account(
        id=account,
        owner="0x" + f"{account >> SUB_BITS:040x}",
        sub=account & ((1 << SUB_BITS) - 1),
        nonce=0,
        first_block=block,
        last_block=block,
    )


def _load_accounts(s: Session, ids: set[int]) -> dict[int, Account]:
    out: dict[int, Account] = {}
    todo = sorted(ids)
    for i in range(0, len(todo), 500):  # bounded IN lists
        q = select(Account).where(col(Account.id).in_(todo[i : i + 500]))
        out.update((int(a.id), a) for a in s.exec(q))
    return out


def store_chunk(
    store: Store,
    stream: str,
    logs: Sequence[IndexedLog],
    blocks: Sequence[IndexedBlock],
    cursor: IndexedBlock,
    prune_below: int,
) -> None:
    """Logs with their account effects, the blocks of the unconfirmed window, the cursor, and
    the pruning of final blocks: all or nothing. Logs and links go in as executemany inserts
    (the ORM's per-object bookkeeping cost more than the database itself)."""
    with store.session() as s:
        accounts: dict[int, Account] = {}
        for i in range(0, len(logs), STORE_BATCH):
            _store_logs(s, logs[i : i + STORE_BATCH], accounts)
        for b in [*blocks, cursor]:
            s.merge(IndexedBlock.model_validate(b.model_dump()))
        s.flush()
        s.exec(
            delete(IndexedBlock)
            .where(col(IndexedBlock.number) < prune_below)
            .where(col(IndexedBlock.number) != cursor.number)
        )
        cursor_row = s.get(IndexCursor, stream)
        if cursor_row is None:
            s.add(IndexCursor(stream=stream, block_number=cursor.number, block_hash=cursor.hash))
        else:
            cursor_row.block_number, cursor_row.block_hash = cursor.number, cursor.hash
            cursor_row.updated_at = utcnow()


def _store_logs(s: Session, logs: Sequence[IndexedLog], accounts: dict[int, Account]) -> None:
    """One batch of store_chunk: its logs, their account links, its new accounts (flushed),
    the nonces of the accounts it touches; ``accounts`` carries the rows across batches."""
    accounts.update(
        _load_accounts(s, {a for log in logs for a, _, _ in log.effects} - accounts.keys())
    )
    new: dict[int, Account] = {}
    log_rows: list[dict[str, object]] = []
    link_rows: list[dict[str, object]] = []
    for log in logs:
        log_rows.append(
            {
                "block_number": log.block_number,
                "log_index": log.log_index,
                "block_hash": log.block_hash,
                "tx_hash": log.tx_hash,
                "name": log.name,
                "args": log.args,
                "accounts": log.accounts,
            }
        )
        after: dict[int, int] = {}
        for account, kind, value in log.effects:
            row = accounts.get(account)
            if row is None:
                row = accounts[account] = new[account] = _new_account(account, log.block_number)
            if kind == "set":
                row.nonce = value
            elif kind == "bump":
                row.nonce += 1
            row.last_block = log.block_number
            after[account] = row.nonce
        link_rows += [
            {
                "block_number": log.block_number,
                "log_index": log.log_index,
                "account": account,
                "nonce": nonce,
            }
            for account, nonce in after.items()
        ]
    if log_rows:
        s.exec(insert(EventLog), params=log_rows)
    if link_rows:
        s.exec(insert(EventAccount), params=link_rows)
    s.add_all(new.values())
    s.flush()


def rollback_index_after(store: Store, stream: str, number: int) -> RolledBack:
    """Forget every log and block above ``number`` (the common ancestor), move the cursor to
    it, and recompute the named accounts from the logs that remain: one transaction."""
    out = RolledBack()
    with store.session() as s:
        out.accounts = {
            int(a)
            for a in s.exec(
                select(EventAccount.account).where(col(EventAccount.block_number) > number)
            )
        }
        out.names = set(
            s.exec(select(EventLog.name).where(col(EventLog.block_number) > number).distinct())
        )
        out.logs = int(
            s.exec(
                select(func.count())
                .select_from(EventLog)
                .where(col(EventLog.block_number) > number)
            ).one()
        )
        for model in (EventAccount, EventLog):
            s.exec(delete(model).where(col(model.block_number) > number))
        s.exec(delete(IndexedBlock).where(col(IndexedBlock.number) > number))
        keep = s.get(IndexedBlock, number)
        cur = s.get(IndexCursor, stream)
        if cur is not None and cur.block_number > number:
            cur.block_number, cur.block_hash = number, keep.hash if keep else ""
            cur.updated_at = utcnow()
        recompute_accounts(s, out.accounts)
    return out


def recompute_accounts(s: Session, accounts: Iterable[int]) -> None:
    """Account rows from their remaining event_account rows (deleted when none remain)."""
    for account in accounts:
        rows = s.exec(
            select(EventAccount)
            .where(EventAccount.account == account)
            .order_by(col(EventAccount.block_number), col(EventAccount.log_index))
        ).all()
        row = s.get(Account, account)
        if not rows:
            if row is not None:
                s.delete(row)
            continue
        if row is None:
            row = _new_account(account, rows[0].block_number)
            s.add(row)
        row.nonce = rows[-1].nonce
        row.first_block, row.last_block = rows[0].block_number, rows[-1].block_number


def known_accounts(store: Store) -> list[int]:
    """Every account ever named by an indexed log (the account table)."""
    with store.session() as s:
        return sorted(int(a) for a in s.exec(select(Account.id)))


def accounts_named_after(store: Store, block: int) -> set[int]:
    """Accounts an indexed log named in a block after ``block`` (``account.last_block`` is
    indexed: the answer costs what changed, not the size of the book)."""
    with store.session() as s:
        rows = s.exec(select(Account.id).where(col(Account.last_block) > block))
        return {int(a) for a in rows}


def account(store: Store, account_id: int) -> Account | None:
    with store.session() as s:
        return s.get(Account, account_id)


def indexed_nonces(store: Store, up_to_block: int) -> dict[int, int | None]:
    """Per account named by an indexed log at or below ``up_to_block``: its indexed nonce as of
    that block (the account row's, or the latest event_account row's when the account moved
    since), or None when the account table lost its row."""
    with store.session() as s:
        named = {
            int(a)
            for a in s.exec(
                select(EventAccount.account)
                .where(col(EventAccount.block_number) <= up_to_block)
                .distinct()
            )
        }
        # Columns, not ORM objects: building 100,000 of them took longer than the
        # idle-in-transaction limit of cluster mode (keeper.cluster.member) before the commit.
        cols = (Account.id, Account.nonce, Account.first_block, Account.last_block)
        table = {int(r[0]): r for r in s.exec(select(*cols))}
        out: dict[int, int | None] = {}
        for a in named | table.keys():
            row = table.get(a)
            if row is None:
                out[a] = None
            elif row[2] > up_to_block:
                continue  # not on chain yet at that block
            elif row[3] <= up_to_block:
                out[a] = row[1]
            else:  # moved after the block checked: its nonce as of then
                out[a] = s.exec(
                    select(EventAccount.nonce)
                    .where(EventAccount.account == a)
                    .where(col(EventAccount.block_number) <= up_to_block)
                    .order_by(
                        col(EventAccount.block_number).desc(), col(EventAccount.log_index).desc()
                    )
                    .limit(1)
                ).one()
        return out


def event_count(store: Store, name: str, up_to_block: int | None = None) -> int:
    with store.session() as s:
        q = select(func.count()).select_from(EventLog).where(EventLog.name == name)
        if up_to_block is not None:
            q = q.where(col(EventLog.block_number) <= up_to_block)
        return int(s.exec(q).one())


def events(store: Store, name: str | None = None) -> list[EventLog]:
    with store.session() as s:
        q = select(EventLog).order_by(col(EventLog.block_number), col(EventLog.log_index))
        if name is not None:
            q = q.where(EventLog.name == name)
        return list(s.exec(q))


def latest_backstop(store: Store) -> int | None:
    """The backstop account per the latest indexed BackstopSet log."""
    with store.session() as s:
        row = s.exec(
            select(EventLog)
            .where(EventLog.name == "BackstopSet")
            .order_by(col(EventLog.block_number).desc(), col(EventLog.log_index).desc())
            .limit(1)
        ).first()
    return int(row.args["account"]) if row else None


def indexed_blocks(store: Store) -> list[IndexedBlock]:
    """Stored blocks, newest first (the unconfirmed window and the cursor block)."""
    with store.session() as s:
        return list(s.exec(select(IndexedBlock).order_by(col(IndexedBlock.number).desc())))
