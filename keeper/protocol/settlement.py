"""Instrument settlement: the round ``settleInstrument(instrument, roundId)`` accepts.

And the gas room ``settleAccount`` needs beyond its simulation (``settling_allowance``).

Pure: no I/O (the rounds are read by the caller, keeper.pipeline.read.find_settlement_round).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keeper.pipeline.types import Action, ActionKind
from keeper.protocol.oracle import RoundData
from margin.funding import is_perpetual

if TYPE_CHECKING:  # the snapshot's module reads the chain; this one only reads snapshots
    from keeper.chain.view import Instrument, ProtocolSnapshot

#: Chainlink round ids: phaseId << 64 | round within the phase (the first round of a phase is 1).
PHASE_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class RoundChoice:
    """``settlement_round``'s answer: the round to name, or why none (yet), or which round to
    read first (``need``: read rounds downwards from this id and ask again)."""

    round_id: int | None
    need: int | None = None
    reason: str = ""


def _present(r: RoundData | None) -> bool:
    return r is not None and r.updated_at != 0


def settlement_round(
    expiry: int,
    latest: RoundData,
    rounds: Mapping[int, RoundData | None],
    *,
    max_rounds: int = 100_000,
) -> RoundChoice:
    """The round ``settleInstrument(instrument, roundId)`` accepts: the first round of the
    price feed updated at or after ``expiry``. The contract checks that the named round is
    valid (answer > 0, complete), updated at or after expiry, and that the round before it was
    updated before expiry; a missing predecessor (no such round: the call reverts or returns
    updatedAt 0) is accepted only for the first round of a phase.

    Scans back from ``latest`` (latestRoundData) through ``rounds`` (getRoundData answers,
    None for a missing round). A round id it needs and ``rounds`` lacks is returned as
    ``need``. Rounds are ordered by updatedAt within a phase, so the first round from the top
    whose predecessor is before expiry is the answer; a gap (missing ids) right below it means
    no round can be named."""
    if not _present(latest) or latest.updated_at < expiry:
        return RoundChoice(None, reason="no round at or after expiry yet")
    above = latest  # the lowest present round seen, updated at or after expiry
    rid = latest.round_id - 1
    for _ in range(max_rounds):
        if rid & PHASE_MASK == 0:  # below the first round of the phase: no predecessor
            if above.round_id & PHASE_MASK == 1:
                return _valid(above)
            return RoundChoice(None, reason=f"round {above.round_id - 1} is missing")
        if rid not in rounds:
            return RoundChoice(None, need=rid)
        r = rounds[rid]
        if not _present(r):
            rid -= 1  # a gap: only a round below it can be the answer
            continue
        assert r is not None
        if r.updated_at >= expiry:
            above, rid = r, rid - 1
            continue
        if rid + 1 != above.round_id:
            return RoundChoice(None, reason=f"round {rid + 1} (after {rid}) is missing")
        return _valid(above)
    return RoundChoice(None, reason=f"no round before expiry within {max_rounds} rounds")


def _valid(r: RoundData) -> RoundChoice:
    if r.answer <= 0 or r.updated_at == 0 or r.answered_in_round < r.round_id:
        return RoundChoice(None, reason=f"round {r.round_id} is not a valid price")
    return RoundChoice(r.round_id)


def latest_round(snap: ProtocolSnapshot, ins: Instrument) -> RoundData | None:
    """The instrument's price feed's latestRoundData at the snapshot (None: it reverted)."""
    feed = snap.feeds.get(snap.underlyings[ins.underlying].price_feed)
    if feed is None or feed.round_revert is not None:
        return None
    return RoundData(feed.round_id, feed.answer, 0, feed.updated_at, feed.answered_in_round)


def expired_unsettled(snap: ProtocolSnapshot) -> list[Instrument]:
    """Listed, unsettled, expired instruments whose price feed has a round updated at or after
    expiry (the round to name is chosen by ``settlement_round``)."""
    out = []
    for ins in snap.instruments.values():
        if not ins.listed or ins.settled or ins.expiry == 0 or snap.timestamp < ins.expiry:
            continue
        latest = latest_round(snap, ins)
        if latest is None or latest.updated_at < ins.expiry:
            continue
        out.append(ins)
    return out


#: Gas one more settled position adds to settleAccount, with room: 15,143 measured
#: (contracts/snapshots/ClearingHouseGas*.json, settleAccount_10 -> _16 -> _40).
SETTLE_POSITION_GAS = 20_000
#: Gas realising a perpetual's funding can add once its index moved: the account's index
#: written (a fresh slot: 22,100), and once per account its cash and the FundingSettled event.
FUNDING_POSITION_GAS = 25_000


def settling_allowance(snap: ProtocolSnapshot, action: Action) -> int:
    """settleAccount realises every position whose instrument is settled *when it runs*, and
    the funding of every perpetual at the index *when it runs*. A transaction mined before it
    in the same block -- the leader's settleInstrument of another of the account's expired
    instruments, or its pokeFunding of one of its perpetuals -- adds work the simulation did
    not see, and a limit estimated without it ran out of gas (the cluster soak's reverts, each
    retried at the same account nonce). Room for each position of the account in an instrument
    that has expired but is not settled yet, and for the funding of each perpetual."""
    if action.kind != ActionKind.SETTLE_ACCOUNT or action.account not in snap.accounts:
        return 0
    settling = perps = 0
    for iid, _ in snap.accounts[action.account].positions:
        ins = snap.instruments.get(iid)
        if ins is None or ins.settled:
            continue
        if is_perpetual(ins.kind, ins.expiry):
            perps += 1
        elif 0 < ins.expiry <= snap.timestamp:
            settling += 1
    return settling * SETTLE_POSITION_GAS + (perps + (perps > 0)) * FUNDING_POSITION_GAS
