"""Decoding ClearingHouse logs (abi/ClearingHouse.json + the admin module's events, which the
clearing house emits through its fallback) and what each event does to account state.

An account's nonce is bumped by every state change; most events carry the new value, a few
bump without saying so (the backstop in a liquidation and a bad-debt resolution, the account
in a bad-debt resolution). ``effects`` lists, per named account, whether the log sets the nonce
to a carried value, bumps it by one, or leaves it: replayed in log order from the deployment
block, this reproduces ``accountState(a).nonce`` exactly (checked by check_consistency).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from eth_abi import decode
from eth_utils import event_abi_to_log_topic

from keeper.abi import ABI_DIR, CLEARING_HOUSE_ABIS

UNKNOWN = "unknown"

#: Events that carry the account's new nonce: (account arg, nonce arg) pairs, in bump order.
NONCE_CARRIED: dict[str, tuple[tuple[str, str], ...]] = {
    "Deposit": (("account", "nonce"),),
    "Withdrawal": (("account", "nonce"),),
    "CollateralTransfer": (("from", "fromNonce"), ("to", "toNonce")),
    "Trade": (("buyer", "buyerNonce"), ("seller", "sellerNonce")),
    "MarginCall": (("account", "nonce"),),  # flag checks the nonce, does not bump it
    "Liquidation": (("account", "nonce"),),
    "PositionSettled": (("account", "nonce"),),  # the nonce settleAccount ends with
}
#: Events that bump the named account's nonce without carrying it.
NONCE_BUMPED: dict[str, tuple[str, ...]] = {"BadDebtResolved": ("account",)}
#: Events naming an account whose nonce they leave alone (its state may still change).
NAMED_ONLY: dict[str, tuple[str, ...]] = {
    "MarginCallCleared": ("account",),
    "CollateralSeized": ("account",),
    "OperatorSet": ("account",),
    "BackstopSet": ("account",),
    # Emitted inside a call that bumps the account's nonce (trade, withdrawal, ...), or for the
    # backstop in a liquidation.
    "FundingSettled": ("account",),
}
#: Events that change the backstop's book: (bumps its nonce?) -- the backstop is not named.
BACKSTOP_CHANGES: dict[str, bool] = {
    "Liquidation": True,
    "BadDebtResolved": True,
    "CollateralSeized": False,
}
MARKET_EVENTS = frozenset(
    {
        "RiskParamsSet",
        "RateSet",
        "UnderlyingConfigured",
        "CollateralConfigured",
        "InstrumentListed",
        "InstrumentSettled",
        "LiquidationConfigSet",
        "BackstopSet",
        "PausedSet",
        "RiskBoundsSet",
        # A poke moves every perpetual holder's accrued funding, hence its equity.
        "FundingPoked",
    }
)

SET, BUMP, KEEP = "set", "bump", "keep"


@dataclass(frozen=True)
class EventAbi:
    name: str
    inputs: tuple[tuple[str, str, bool], ...]  # (name, canonical type, indexed)


@cache
def event_table(
    abi_names: tuple[str, ...] = CLEARING_HOUSE_ABIS,
) -> dict[str, EventAbi]:
    """topic0 (0x-hex) -> event, from the checked-in abi/ files."""
    out: dict[str, EventAbi] = {}
    for name in abi_names:
        for e in json.loads((ABI_DIR / f"{name}.json").read_text()):
            if e.get("type") != "event" or e.get("anonymous"):
                continue
            topic = "0x" + event_abi_to_log_topic(e).hex()
            out.setdefault(
                topic,
                EventAbi(
                    e["name"], tuple((i["name"], i["type"], i["indexed"]) for i in e["inputs"])
                ),
            )
    return out


def _plain(value: Any) -> Any:
    """JSON-safe and exact: ints stay ints, bytes become 0x-hex, addresses lower-case."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass
class DecodedLog:
    block_number: int
    log_index: int
    block_hash: str
    tx_hash: str
    name: str
    args: dict[str, Any]
    #: (account, SET/BUMP/KEEP, carried nonce or 0), in the order the contract applies them.
    effects: list[tuple[int, str, int]] = field(default_factory=list)

    @property
    def accounts(self) -> list[int]:
        return list(dict.fromkeys(a for a, _, _ in self.effects))


def _static(abi_type: str) -> bool:
    return (
        abi_type not in ("string", "bytes") and not abi_type.endswith("]") and "(" not in abi_type
    )


def _hex_int(x: Any) -> int:
    return int(x, 16) if isinstance(x, str) else int(x)


def decode_log(raw: dict[str, Any], backstop: int | None) -> DecodedLog:
    """One eth_getLogs entry; never raises on an unknown or malformed log (stored raw)."""
    topics = [t.lower() for t in raw.get("topics", [])]
    data = raw.get("data", "0x")
    base = dict(
        block_number=_hex_int(raw["blockNumber"]),
        log_index=_hex_int(raw["logIndex"]),
        block_hash=raw["blockHash"].lower(),
        tx_hash=(raw.get("transactionHash") or "0x").lower(),
    )
    ev = event_table().get(topics[0]) if topics else None
    try:
        if ev is None:
            raise ValueError("unknown topic")
        indexed = [(n, t) for n, t, i in ev.inputs if i]
        if len(topics) != 1 + len(indexed):
            raise ValueError("topic count")
        # One decode for all topics: a topic is the 32-byte word of a static value (a dynamic
        # value's topic is its keccak, kept as bytes32).
        words = b"".join(bytes.fromhex(t[2:]) for t in topics[1:])
        if len(words) != 32 * len(indexed):
            raise ValueError("topic size")
        types = [t if _static(t) else "bytes32" for _, t in indexed]
        values = decode(types, words)
        args = {n: _plain(v) for (n, _), v in zip(indexed, values, strict=True)}
        rest = [(n, t) for n, t, i in ev.inputs if not i]
        values = decode([t for _, t in rest], bytes.fromhex(data[2:]))
        for (n, _), v in zip(rest, values, strict=True):
            args[n] = _plain(v)
    except Exception:  # undecodable: keep it, raw, and move on
        return DecodedLog(**base, name=UNKNOWN, args={"topics": topics, "data": data.lower()})
    log = DecodedLog(**base, name=ev.name, args=args)
    log.effects = effects(ev.name, args, backstop)
    return log


def effects(name: str, args: dict[str, Any], backstop: int | None) -> list[tuple[int, str, int]]:
    out: list[tuple[int, str, int]] = []
    bk = BACKSTOP_CHANGES.get(name)
    if bk is not None and backstop:
        out.append((backstop, BUMP if bk else KEEP, 0))  # liquidate bumps it first
    for acct_arg, nonce_arg in NONCE_CARRIED.get(name, ()):
        out.append((int(args[acct_arg]), SET, int(args[nonce_arg])))
    for acct_arg in NONCE_BUMPED.get(name, ()):
        out.append((int(args[acct_arg]), BUMP, 0))
    for acct_arg in NAMED_ONLY.get(name, ()):
        out.append((int(args[acct_arg]), KEEP, 0))
    return out
