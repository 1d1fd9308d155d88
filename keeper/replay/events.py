"""The logs a replay needs: the clearing house's events (account set, decision points,
liquidations, margin calls) and the price/vol feeds' round updates.

``eth_getLogs`` runs in bounded chunks; a node that refuses a range (result or range caps)
gets the chunk halved and retried, down to one block.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from eth_abi import decode
from eth_utils import event_abi_to_log_topic
from eth_utils.abi import collapse_if_tuple

from keeper.abi import ABI_DIR, CLEARING_HOUSE_ABIS
from keeper.chain import Chain, RpcError

#: Blocks per eth_getLogs request before any shrinking (public nodes cap 1k..10k).
LOG_CHUNK = 2_000

#: Events whose uint256 arguments of these names are clearing-house account ids.
ACCOUNT_ARGS = ("account", "from", "to", "buyer", "seller")
#: Events that change no account's margin inputs (they may still name an account).
NO_MARGIN_EFFECT = frozenset(
    {
        "OperatorSet",
        "RoleSet",
        "OwnerChanged",
        "BountyCredited",
        "BountyClaimed",
        "InsuranceDeposit",
        "LiquidationConfigSet",
        "RiskBoundsSet",
        "PausedSet",
        "InstrumentListed",
        "BackstopSet",
        "FundingCapSet",
        # A recalibration changes margins through the RiskParamsSet its execution emits.
        "RecalibrationQueued",
        "RecalibrationExecuted",
        "RecalibrationCancelled",
        "RecalibrationConfigSet",
    }
)
#: Market / governance events: a decision point for every account.
MARKET_WIDE = frozenset(
    {
        "RiskParamsSet",
        "RateSet",
        "UnderlyingConfigured",
        "CollateralConfigured",
        "InstrumentSettled",
        # A funding poke moves every perpetual holder's equity (accrued funding).
        "FundingPoked",
    }
)


@dataclass(frozen=True)
class Event:
    name: str
    block: int
    tx_hash: str
    tx_index: int
    log_index: int
    address: str
    args: dict[str, Any]

    @property
    def accounts(self) -> list[int]:
        return [int(self.args[k]) for k in ACCOUNT_ARGS if isinstance(self.args.get(k), int)]


@dataclass(frozen=True)
class _EventAbi:
    name: str
    inputs: tuple[tuple[str, str, bool], ...]  # (name, type, indexed)

    def decode(self, topics: list[bytes], data: bytes) -> dict[str, Any]:
        indexed = [(n, t) for n, t, i in self.inputs if i]
        plain = [(n, t) for n, t, i in self.inputs if not i]
        out: dict[str, Any] = {}
        for (n, t), topic in zip(indexed, topics[1:], strict=True):
            out[n] = decode([t], topic)[0]
        values = decode([t for _, t in plain], data) if plain else ()
        out.update({n: v for (n, _), v in zip(plain, values, strict=True)})
        return out


@cache
def _event_abis(*abi_names: str) -> dict[bytes, _EventAbi]:
    out: dict[bytes, _EventAbi] = {}
    for name in abi_names:
        for e in json.loads((ABI_DIR / f"{name}.json").read_text()):
            if e.get("type") != "event" or e.get("anonymous"):
                continue
            topic = event_abi_to_log_topic(e)
            ins = tuple((i["name"], collapse_if_tuple(i), bool(i["indexed"])) for i in e["inputs"])
            out.setdefault(topic, _EventAbi(e["name"], ins))
    return out


def _hex(b: str) -> bytes:
    return bytes.fromhex(b[2:] if b.startswith("0x") else b)


def get_logs(
    chain: Chain,
    addresses: list[str],
    first: int,
    last: int,
    *,
    chunk: int = LOG_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Raw logs of ``addresses`` in [first, last], in chain order."""
    out: list[dict[str, Any]] = []
    if not addresses or last < first:
        return out
    start, size = first, chunk
    while start <= last:
        end = min(last, start + size - 1)
        params = {"address": addresses, "fromBlock": hex(start), "toBlock": hex(end)}
        try:
            logs = chain.rpc.request("eth_getLogs", [params])
        except RpcError:
            if size == 1:
                raise
            size = max(1, size // 2)  # a range or result cap: shrink and retry
            continue
        out += logs
        if progress is not None:
            progress(end - start + 1)
        start = end + 1
    return out


def clearing_house_events(logs: Iterable[dict[str, Any]]) -> list[Event]:
    abis = _event_abis(*CLEARING_HOUSE_ABIS)
    out = []
    for log in logs:
        if log.get("removed"):
            continue
        topics = [_hex(t) for t in log["topics"]]
        abi = abis.get(topics[0]) if topics else None
        if abi is None:
            continue
        out.append(
            Event(
                abi.name,
                int(log["blockNumber"], 16),
                log["transactionHash"],
                int(log["transactionIndex"], 16),
                int(log["logIndex"], 16),
                log["address"],
                abi.decode(topics, _hex(log["data"])),
            )
        )
    out.sort(key=lambda e: (e.block, e.log_index))
    return out


@dataclass
class ChainHistory:
    """What the logs say about the range: who exists when, and what changed where."""

    events: list[Event]  # clearing-house events, deployment start .. range end
    feed_updates: dict[int, set[str]]  # block -> feed addresses with a new round
    first_seen: dict[int, int] = field(default_factory=dict)  # account -> first block

    def __post_init__(self) -> None:
        for e in self.events:
            for a in e.accounts:
                self.first_seen.setdefault(a, e.block)

    def accounts_at(self, block: int) -> list[int]:
        return [a for a, b in self.first_seen.items() if b <= block]

    def in_range(self, first: int, last: int) -> list[Event]:
        return [e for e in self.events if first <= e.block <= last]

    def feeds(self, deployment_feeds: Iterable[str]) -> list[str]:
        out = list(deployment_feeds)
        for e in self.events:
            if e.name == "UnderlyingConfigured":
                out += [e.args["priceFeed"], e.args["volFeed"]]
        return list(dict.fromkeys(a.lower() for a in out))


def read_history(
    chain: Chain,
    first: int,
    last: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> ChainHistory:
    """Clearing-house logs from the deployment's start block (the account set) to ``last``,
    and the feeds' logs in [first, last] (a log of a feed = a new round)."""
    dep = chain.deployment
    start = min(dep.start_block, first)
    raw = get_logs(chain, [chain.clearing_house], start, last, progress=progress)
    history = ChainHistory(clearing_house_events(raw), {})
    feeds = history.feeds(a for u in dep.underlyings for a in (u["price_feed"], u["vol_feed"]))
    for log in get_logs(chain, feeds, first, last):
        if not log.get("removed"):
            history.feed_updates.setdefault(int(log["blockNumber"], 16), set()).add(
                log["address"].lower()
            )
    return history
