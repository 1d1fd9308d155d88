"""Recalibrations re-computed from the chain: for every ``RecalibrationQueued`` event, the
proposal's named sources are read again (the same round ids, at the block before the queue
transaction), sampled, estimated and clamped into the contract's limits as they stood there
(keeper/protocol/recalibration.py), and the canonical bytes are compared with the queued
ones. Any difference is a ``recalibration`` mismatch naming the fields that differ: a risk
operator that queued numbers other than the ones its named data give is found out. With a
historical set the FHS scales are recomputed from the recomputed volatilities over the committed
set's reference volatilities (margin/risk/data/historical_set.json, by each price feed's
description symbol): a proposal stating other
reference volatilities, or other scales, is a mismatch too.
"""

from __future__ import annotations

from typing import Any

from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from keeper.chain.rpc import Rpc
from keeper.protocol.recalibration import chain_state, committed_ref_vols, compute_proposal
from keeper.replay.mismatch import FieldDiff, Mismatch
from margin.risk.ewma import CalibrationError
from margin.risk.recalibration import Proposal, canonical_encoding, decode_proposal

KIND = "recalibration"


def _diffs(expected: Proposal, found: Proposal) -> list[FieldDiff]:
    out = []
    for name in ("as_of", "lam", "correlations", "sources", "interval", "ref_vols", "fhs_scales"):
        e, f = getattr(expected, name), getattr(found, name)
        if e != f:
            out.append(FieldDiff(name, e, f))
    for u, (e, f) in enumerate(zip(expected.underlyings, found.underlyings, strict=False)):
        for name in ("vol", "price_range", "vol_shift_base"):
            if getattr(e, name) != getattr(f, name):
                out.append(FieldDiff(f"{name}[{u}]", getattr(e, name), getattr(f, name)))
    return out


def verify_queued(
    w3: Web3, rpc: Rpc, ch: Contract, block: int, args: dict[str, Any]
) -> list[Mismatch]:
    """The mismatches of one RecalibrationQueued event (none: recomputed byte for byte)."""
    rid = int(args["id"])
    data = bytes(args["proposal"])
    head = f"recalibration {rid}"
    if keccak(data) != bytes(args["proposalHash"]):
        return [Mismatch(KIND, block, None, f"{head}: the event's hash is not the bytes' keccak")]
    try:
        found = decode_proposal(data)
    except CalibrationError as e:
        return [Mismatch(KIND, block, None, f"{head}: {e}")]
    try:
        state = chain_state(w3, ch, block - 1, now=int(w3.eth.get_block(block)["timestamp"]))
        expected = compute_proposal(
            rpc, state, found.sources, found.interval, found.lam, found.k_sigma,
            found.horizon, found.vol_shift_per_vol,
            committed_ref_vols(state.symbols) if state.scales else (),
        )  # fmt: skip
    except CalibrationError as e:
        return [Mismatch(KIND, block, None, f"{head}: its sources give no proposal: {e}")]
    if canonical_encoding(expected) == data:
        return []
    return [
        Mismatch(
            KIND,
            block,
            None,
            f"{head}: the queued proposal is not what its named rounds give",
            _diffs(expected, found),
        )
    ]
