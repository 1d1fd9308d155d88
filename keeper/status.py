"""`keeper status`: what the keeper sees — accounts by health, open transactions, lag, earnings.

Read-only: the store (latest decision per account, transactions) and, when the node answers,
the chain head for the lag. Works while a keeper runs (SQLite WAL / PostgreSQL readers do not
block the writer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from keeper.cluster.view import ClusterStatus
from keeper.store import Store
from keeper.store.models import Decision, IndexedBlock, Transaction


@dataclass
class AccountLine:
    account: str
    state: str
    equity: int
    requirement: int
    initial_margin: int
    block: int
    action: str


@dataclass
class TxLine:
    id: int
    decision_id: int | None
    nonce: int
    status: str
    hash: str | None
    age_seconds: float | None


@dataclass
class EndpointLine:
    """One configured RPC endpoint as ``keeper status`` found it (URL redacted)."""

    index: int
    endpoint: str
    head: int | None
    chain_id: int | None
    error: str | None


def probe_endpoints(urls: list[str], timeout: float) -> list[EndpointLine]:
    """Asks each endpoint, once and without retries, for its chain id and head (the keeper's
    own health scores are in its metrics: ``keeper_rpc_endpoint_healthy``)."""
    from keeper.chain.rpc import Rpc, make_web3
    from keeper.chain.transport import RetryPolicy
    from keeper.secrets import redact_url, scrub

    lines = []
    for i, url in enumerate(urls):
        head = chain_id = error = None
        try:
            rpc = Rpc(make_web3(url, timeout=timeout, retry=RetryPolicy(max_retries=0)), url)
            chain_id = int(rpc.request("eth_chainId", []), 16)
            head = rpc.block("latest").number
        except Exception as exc:  # shown per endpoint; the others still answer
            error = scrub(f"{type(exc).__name__}: {exc}")
        lines.append(EndpointLine(i, redact_url(url), head, chain_id, error))
    return lines


@dataclass
class Status:
    head: int | None
    indexed_block: int | None
    lag_blocks: int | None
    accounts_by_state: dict[str, int]
    unhealthy: list[AccountLine]
    open_transactions: list[TxLine]
    transactions_by_status: dict[str, int]
    decisions: int
    bounty_earned: int
    gas_spent_wei: int
    rpc_error: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Every configured RPC endpoint, when there are several (``[rpc] fallback_urls``).
    endpoints: list[EndpointLine] = field(default_factory=list)
    #: Cluster mode: the keepers, their leases and lag (keeper.cluster.view).
    cluster: ClusterStatus | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def collect(store: Store, head: int | None, *, limit: int = 50) -> Status:
    with store.session() as s:
        latest_ids = (
            select(func.max(Decision.id).label("id")).group_by(col(Decision.account)).subquery()
        )
        latest = s.exec(select(Decision).where(col(Decision.id).in_(select(latest_ids.c.id)))).all()
        by_state: dict[str, int] = {}
        unhealthy: list[AccountLine] = []
        for d in latest:
            by_state[d.state] = by_state.get(d.state, 0) + 1
            if d.state not in ("healthy", "empty"):
                unhealthy.append(
                    AccountLine(
                        d.account,
                        d.state,
                        d.equity,
                        d.requirement,
                        d.initial_margin,
                        d.block_number,
                        d.action,
                    )
                )
        unhealthy.sort(key=lambda a: a.equity - a.requirement)
        decisions = s.exec(select(func.count()).select_from(Decision)).one()
        txs = s.exec(select(Transaction)).all()
        top = s.exec(select(func.max(IndexedBlock.number))).one()
    by_tx: dict[str, int] = {}
    open_tx: list[TxLine] = []
    bounty = 0
    gas = 0
    for t in txs:
        by_tx[str(t.status)] = by_tx.get(str(t.status), 0) + 1
        bounty += t.bounty or 0
        if t.gas_used is not None and t.effective_gas_price is not None:
            gas += t.gas_used * t.effective_gas_price
        if not t.final:
            age = None
            if t.created_at is not None:
                from keeper.store.types import utcnow

                age = (utcnow() - _aware(t.created_at)).total_seconds()
            open_tx.append(
                TxLine(t.id or 0, t.decision_id, t.nonce, str(t.status), t.mined_hash, age)
            )
    indexed = int(top) if top is not None else None
    lag = None if head is None or indexed is None else max(0, head - indexed)
    return Status(
        head,
        indexed,
        lag,
        by_state,
        unhealthy[:limit],
        open_tx,
        by_tx,
        int(decisions),
        bounty,
        gas,
    )


def _aware(ts: Any) -> Any:
    from datetime import UTC

    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def render(status: Status) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    lag = "?" if status.lag_blocks is None else str(status.lag_blocks)
    con.print(
        f"[bold]head[/bold] {status.head if status.head is not None else '?'}   "
        f"[bold]indexed[/bold] {status.indexed_block if status.indexed_block is not None else '-'}"
        f"   [bold]lag[/bold] {lag} blocks   [bold]decisions[/bold] {status.decisions}"
    )
    if status.rpc_error:
        con.print(f"[red]chain unreachable:[/red] {status.rpc_error}")
    for e in status.endpoints:
        state = f"head {e.head}, chain id {e.chain_id}" if e.error is None else e.error
        con.print(f"rpc endpoint {e.index} {e.endpoint}: {state}", highlight=False, markup=False)
    states = Table(title="Accounts by health (latest decision)")
    states.add_column("state")
    states.add_column("accounts", justify="right")
    for state, n in sorted(status.accounts_by_state.items()):
        states.add_row(state, str(n))
    con.print(states)
    if status.unhealthy:
        t = Table(title="Accounts needing attention")
        for c in ("account", "state", "equity", "requirement (MM)", "IM", "block", "action"):
            t.add_column(c)
        for a in status.unhealthy:
            t.add_row(
                _short(a.account),
                a.state,
                _wad(a.equity),
                _wad(a.requirement),
                _wad(a.initial_margin),
                str(a.block),
                a.action,
            )
        con.print(t)
    t = Table(title="Open transactions")
    for c in ("id", "decision", "nonce", "status", "age s"):
        t.add_column(c)
    for x in status.open_transactions:
        age = "-" if x.age_seconds is None else f"{x.age_seconds:.0f}"
        t.add_row(str(x.id), str(x.decision_id), str(x.nonce), x.status, age)
    con.print(t)
    if status.cluster is not None:
        render_cluster(con, status.cluster)
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(status.transactions_by_status.items()))
    con.print(
        f"transactions by status: {by_status or 'none'}   "
        f"bounty earned: {_wad(status.bounty_earned)} USDC   gas spent: {status.gas_spent_wei} wei",
        highlight=False,
    )


def render_cluster(con: Any, cluster: ClusterStatus) -> None:
    from rich.table import Table

    t = Table(title="Cluster: keepers")
    for c in ("keeper", "signer", "live", "leader", "shards", "heartbeat s", "block", "lag"):
        t.add_column(c)
    for k in cluster.keepers:
        live = "draining" if k.draining else "yes" if k.live else "no"
        t.add_row(
            k.keeper_id, _short(k.address or "-"), live, "yes" if k.leader else "",
            str(k.shards), f"{k.heartbeat_age_seconds:.1f}",
            "-" if k.last_block is None else str(k.last_block),
            "-" if k.lag_blocks is None else str(k.lag_blocks),
        )  # fmt: skip
    con.print(t)
    t = Table(title=f"Cluster: leases ({cluster.unowned} shards without a live lease)")
    for c in ("shard", "owner", "token", "held s", "expires in s", "lag"):
        t.add_column(c)
    for sh in cluster.shards:
        t.add_row(
            "leader" if sh.shard < 0 else str(sh.shard), sh.owner or "-", str(sh.token),
            "-" if sh.lease_age_seconds is None else f"{sh.lease_age_seconds:.1f}",
            "-" if sh.expires_in_seconds is None else f"{sh.expires_in_seconds:.1f}",
            "-" if sh.lag_blocks is None else str(sh.lag_blocks),
        )  # fmt: skip
    con.print(t)


def _wad(x: int) -> str:
    return f"{x / 10**18:,.2f}"


def _short(account: str) -> str:
    return account if len(account) <= 18 else account[:10] + "…" + account[-6:]
