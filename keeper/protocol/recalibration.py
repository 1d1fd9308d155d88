"""Recalibration as keeper work: read the oracle rounds from the chain, compute the proposal
with margin/risk/, queue it as the risk operator, execute matured ones.

Every input is read at one pinned block, so the proposal is a function of chain data:

1. **sources**: per underlying, its configured price feed and the round-id window
   ``[last - rounds + 1, last]`` with ``last`` the feed's latest round at the block (round
   ids within the feed's current phase; a feed with fewer rounds: no proposal yet);
2. **rounds**: ``getRoundData`` of every id in the window (one JSON-RPC batch, pinned to the
   block); a missing round is skipped (margin/risk/rounds.py);
3. **series**: sampled every ``interval`` seconds on one grid ending at ``asOf`` (the earliest
   last-round time of the feeds: the contract checks it);
4. **estimates**: EWMA volatility per underlying and correlations (margin/risk/ewma.py);
5. **grid**: the rule's targets (k·σ·sqrt(H/year), m·σ) clamped into the window the contract
   will accept: governance's ``riskBounds``, ``maxStep`` from the current value, ``maxDailyStep``
   from the day's reference (margin/risk/recalibration.py ``within_limits``);
6. **FHS scale** (only when the parameters carry a historical set): ``ceil(σ / σ_ref)`` per
   underlying with σ_ref the set's committed reference volatility (``Settings.ref_vols``,
   default: margin/risk/data/historical_set.json's, for the symbol of the price feed's
   ``description()``, 0 for a symbol the set does not carry: that scale is kept), clamped
   into the model's [0, 10] and the same step limits. Without a historical set (S = 0) the
   proposal carries no scales.

``keeper replay`` runs the same steps from a queued proposal's named sources at the block
before its queue transaction and compares the bytes (keeper/replay/recalibration.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi.abi import decode, encode
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

import margin.risk
from keeper.abi import ABI_DIR
from keeper.chain.rpc import Rpc
from keeper.deployment import decode_risk_params
from margin.params import WAD
from margin.risk.ewma import (
    DEFAULT_LAMBDA,
    CalibrationError,
    ZeroVariance,
    ewma_correlation_down,
    ewma_vol_down,
)
from margin.risk.historical import DATA_FILE_NAME, set_reference_vols
from margin.risk.recalibration import (
    FieldLimits,
    Proposal,
    RecalibrationRule,
    Source,
    UnderlyingProposal,
    canonical_encoding,
    fhs_scale_target_up,
    scale_limits,
    scale_within_limits,
    targets_up,
    within_limits,
)
from margin.risk.rounds import FeedRound, sample_aligned

log = logging.getLogger(__name__)

DAY = 86_400
GET_ROUND_DATA = keccak(text="getRoundData(uint80)")[:4]
#: Default window and sampling of the keeper's recalibration.
DEFAULT_ROUNDS = 500
DEFAULT_INTERVAL = 3600
#: QueuedRecalibration.state
QUEUED, EXECUTED, CANCELLED = 1, 2, 3


class RecalibrationUnavailable(CalibrationError):
    """The clearing house cannot take a recalibration now (no config set, a feed without
    rounds): the message says which."""


@dataclass(frozen=True)
class Settings:
    rounds: int = DEFAULT_ROUNDS
    interval: int = DEFAULT_INTERVAL
    lam: int = DEFAULT_LAMBDA
    rule: RecalibrationRule = field(default_factory=RecalibrationRule)
    #: Queue only when a price range or vol shift base moves by more than this (WAD,
    #: relative to its current value): no churn of the timelock for noise.
    min_change: int = 5 * 10**16
    #: The historical set's reference volatility per underlying (annual, WAD), used only when
    #: the parameters carry a historical set; ``None``: the committed set's, by the symbol of
    #: each price feed's description.
    ref_vols: tuple[int, ...] | None = None


def committed_ref_vols(symbols: Sequence[str]) -> tuple[int, ...]:
    """The committed set's reference vol of each underlying symbol (0 for a symbol the set
    does not carry: its scale stays where it is)."""
    text = (Path(margin.risk.__file__).parent / "data" / DATA_FILE_NAME).read_text()
    carried = set(json.loads(text)["underlyings"])
    known = [s for s in symbols if s in carried]
    refs = dict(zip(known, set_reference_vols(text, known), strict=True))
    return tuple(refs.get(s, 0) for s in symbols)


def feed_symbol(description: str) -> str:
    """The base asset of a price feed's description ("BTC / USD" -> "BTC", Chainlink's form)."""
    return description.split("/")[0].strip().upper()


@dataclass(frozen=True)
class ChainState:
    """What the proposal depends on besides the rounds, at one block."""

    block: int
    timestamp: int
    feeds: tuple[str, ...]  # configured price feed per underlying (lowercase)
    decimals: tuple[int, ...]
    ranges: tuple[FieldLimits, ...]
    shifts: tuple[FieldLimits, ...]
    delay: int
    #: The FHS scale's limits per underlying; empty without a historical set (S = 0).
    scales: tuple[FieldLimits, ...] = ()
    #: Each price feed's base symbol (its description's, at the block).
    symbols: tuple[str, ...] = ()


@cache
def _feed_abi() -> list[dict[str, Any]]:
    data = json.loads((ABI_DIR / "MockAggregator.json").read_text())
    return list(data["abi"] if isinstance(data, dict) else data)


def feed_contract(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=_feed_abi())


def chain_state(w3: Web3, ch: Contract, block: int, now: int | None = None) -> ChainState:
    """The configured feeds, the current grid and the contract's limits at ``block``; ``now``
    (default: the block's timestamp) decides the UTC day of the daily limit."""
    delay, max_step, max_daily = ch.functions.recalibrationConfig().call(block_identifier=block)
    if delay == 0:
        raise RecalibrationUnavailable("the owner has not set the recalibration config")
    n = int(ch.functions.underlyingCount().call(block_identifier=block))
    params = decode_risk_params(bytes(ch.functions.riskParams().call(block_identifier=block)))
    ts = int(w3.eth.get_block(block)["timestamp"]) if now is None else now
    today = ts // DAY
    feeds, decimals, ranges, shifts, scales, symbols = [], [], [], [], [], []
    has_set = bool(params.historical.fhs_scale)
    for u in range(n):
        cfg = ch.functions.underlyingConfig(u).call(block_identifier=block)
        feed = str(cfg[0]).lower()
        feeds.append(feed)
        fc = feed_contract(w3, feed)
        decimals.append(int(fc.functions.decimals().call(block_identifier=block)))
        if has_set:  # the symbol only names the set's reference vol
            desc = fc.functions.description().call(block_identifier=block)
            symbols.append(feed_symbol(str(desc)))
        lo_r, hi_r, lo_s, hi_s = ch.functions.riskBounds(u).call(block_identifier=block)
        day, day_r, day_s, day_f = ch.functions.recalibrationDay(u).call(block_identifier=block)
        cur = params.underlyings[u]
        same = day == today
        ranges.append(
            FieldLimits(
                lo_r, hi_r, cur.price_range, day_r if same else cur.price_range, max_step, max_daily
            )
        )
        shifts.append(
            FieldLimits(
                lo_s,
                hi_s,
                cur.vol_shift_base,
                day_s if same else cur.vol_shift_base,
                max_step,
                max_daily,
            )
        )
        if has_set:
            f = params.historical.fhs_scale[u]
            scales.append(scale_limits(f, day_f if same else f, max_step, max_daily))
    return ChainState(
        block,
        ts,
        tuple(feeds),
        tuple(decimals),
        tuple(ranges),
        tuple(shifts),
        int(delay),
        tuple(scales),
        tuple(symbols),
    )


def latest_round(w3: Web3, feed: str, block: int) -> int:
    rid = feed_contract(w3, feed).functions.latestRoundData().call(block_identifier=block)[0]
    return int(rid)


def read_rounds(rpc: Rpc, feed: str, first: int, last: int, block: int) -> list[FeedRound]:
    """``getRoundData`` of every round id in ``[first, last]`` at ``block`` (one batch); a
    round the feed refuses (missing) is left out."""
    calls = [
        (
            "eth_call",
            [
                {
                    "to": Web3.to_checksum_address(feed),
                    "data": "0x" + (GET_ROUND_DATA + encode(["uint80"], [rid])).hex(),
                },
                hex(block),
            ],
        )
        for rid in range(first, last + 1)
    ]
    out = []
    for rid, reply in zip(range(first, last + 1), rpc.batch(calls), strict=True):
        result = reply.get("result")
        if "error" in reply or not result or len(result) < 2 + 5 * 64:
            continue
        _, answer, _, updated_at, _ = decode(
            ["uint80", "int256", "uint256", "uint256", "uint80"], bytes.fromhex(result[2:])
        )
        out.append(FeedRound(rid, int(answer), int(updated_at)))
    return out


def compute_proposal(
    rpc: Rpc,
    state: ChainState,
    sources: Sequence[Source],
    interval: int,
    lam: int,
    k_sigma: int,
    horizon: int,
    vol_shift_per_vol: int,
    ref_vols: Sequence[int] = (),
) -> Proposal:
    """The proposal the named sources give at ``state``'s block (pure in the chain data and
    ``ref_vols``, the set's reference vols: used only when the state has a historical set)."""
    rounds = [read_rounds(rpc, s.feed, s.first_round, s.last_round, state.block) for s in sources]
    as_of, series = sample_aligned(rounds, state.decimals, interval)
    unders = []
    for u, s in enumerate(series):
        vol = ewma_vol_down(s, lam)
        r_t, b_t = targets_up(vol, k_sigma, horizon, vol_shift_per_vol)
        p = UnderlyingProposal(vol, r_t, b_t, r_t, b_t)
        unders.append(within_limits(p, state.ranges[u], state.shifts[u]))
    corr = []
    for i in range(len(series)):
        for j in range(i + 1, len(series)):
            try:
                corr.append(ewma_correlation_down(series[i], series[j], lam))
            except ZeroVariance:
                corr.append(0)  # a series that never moved: no correlation to estimate
    refs: tuple[int, ...] = ()
    fhs: tuple[int, ...] = ()
    if state.scales:
        if len(ref_vols) != len(state.scales):
            raise RecalibrationUnavailable(
                f"{len(ref_vols)} reference vols for {len(state.scales)} underlyings"
            )
        refs = tuple(ref_vols)
        fhs = tuple(
            scale_within_limits(fhs_scale_target_up(p.vol, ref, lim.current), lim)
            for p, ref, lim in zip(unders, refs, state.scales, strict=True)
        )
    return Proposal(
        as_of,
        lam,
        tuple(unders),
        tuple(corr),
        tuple(sources),
        interval,
        k_sigma,
        horizon,
        vol_shift_per_vol,
        refs,
        fhs,
    )


def propose(w3: Web3, rpc: Rpc, ch: Contract, settings: Settings, block: int) -> Proposal:
    """The keeper's proposal at ``block``: its window over each configured feed."""
    state = chain_state(w3, ch, block)
    sources = []
    for feed in state.feeds:
        last = latest_round(w3, feed, block)
        if last < settings.rounds:
            # A short history is no basis for a new grid: wait for a full window.
            raise RecalibrationUnavailable(
                f"feed {feed} has {last} rounds, the window needs {settings.rounds}"
            )
        sources.append(Source(feed, last - settings.rounds + 1, last))
    r = settings.rule
    return compute_proposal(
        rpc,
        state,
        sources,
        settings.interval,
        settings.lam,
        r.k_sigma,
        r.horizon,
        r.vol_shift_per_vol,
        _ref_vols(settings, state),
    )


def _ref_vols(settings: Settings, state: ChainState) -> tuple[int, ...]:
    if not state.scales:
        return ()  # no historical set: the proposal carries no scales
    if settings.ref_vols is not None:
        return settings.ref_vols
    return committed_ref_vols(state.symbols)


def grid_unchanged(proposal: Proposal, state: ChainState, min_change: int = 0) -> bool:
    """No price range, vol shift base or FHS scale moves by more than ``min_change``
    (relative, WAD) of its current value (a value from zero always counts as a move)."""

    def moves(new: int, cur: int) -> bool:
        return abs(new - cur) * WAD > min_change * cur if cur > 0 else new != cur

    grid = any(
        moves(p.price_range, r.current) or moves(p.vol_shift_base, s.current)
        for p, r, s in zip(proposal.underlyings, state.ranges, state.shifts, strict=True)
    )
    scale = any(
        moves(f, lim.current) for f, lim in zip(proposal.fhs_scales, state.scales, strict=False)
    )
    return not (grid or scale)


@dataclass(frozen=True)
class Queued:
    id: int
    proposal_hash: bytes
    eta: int
    state: int
    data: bytes
    block: int
    tx_hash: str


def queued_recalibrations(w3: Web3, ch: Contract, from_block: int, to_block: int) -> list[Queued]:
    """Every RecalibrationQueued event in the range, with the id's state at ``to_block``."""
    logs = ch.events.RecalibrationQueued().get_logs(from_block=from_block, to_block=to_block)
    out = []
    for e in logs:
        rid = int(e["args"]["id"])
        h, eta, st = ch.functions.queuedRecalibration(rid).call(block_identifier=to_block)
        out.append(
            Queued(
                rid,
                bytes(h),
                int(eta),
                int(st),
                bytes(e["args"]["proposal"]),
                int(e["blockNumber"]),
                e["transactionHash"].hex(),
            )
        )
    return out


def gas_for(call: Any, sender: str, margin_percent: int) -> int:
    return int(call.estimate_gas({"from": sender})) * (100 + margin_percent) // 100


def queue(txm: Any, ch: Contract, proposal: Proposal, sender: str, margin: int = 20) -> Any:
    """Sends queueRecalibration(canonical bytes) through the transaction manager (stored,
    signed, followed like every keeper transaction)."""
    data = canonical_encoding(proposal)
    call = ch.functions.queueRecalibration(data)
    tx = txm.submit(
        to=ch.address,
        data=ch.encode_abi("queueRecalibration", args=[data]),
        gas_limit=gas_for(call, sender, margin),
    )
    log.info(
        "recalibration queued",
        extra={"tx_id": tx.id, "as_of": proposal.as_of, "hash": "0x" + keccak(data).hex()},
    )
    return tx


def execute(txm: Any, ch: Contract, q: Queued, sender: str, margin: int = 20) -> Any:
    call = ch.functions.executeRecalibration(q.id, q.data)
    tx = txm.submit(
        to=ch.address,
        data=ch.encode_abi("executeRecalibration", args=[q.id, q.data]),
        gas_limit=gas_for(call, sender, margin),
    )
    log.info("recalibration executed", extra={"tx_id": tx.id, "recalibration": q.id})
    return tx
