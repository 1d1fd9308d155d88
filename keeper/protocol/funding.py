"""The funding job: which perpetuals are due a poke, and the action that pokes one.

``ClearingHouseAdmin.pokeFunding(instrument)`` advances a perpetual's funding index at most once
per ``FUNDING_INTERVAL``; anyone may call it and it pays no bounty, so the keeper sends it as a
maintenance action (no profitability rule), recorded like every other action. The key names the
poke it advances from (``poke_funding:<instrument>:<last poke>``): one transaction per interval
and perpetual, ever, across restarts and keepers sharing the store.
"""

from __future__ import annotations

from keeper.chain.view import ProtocolSnapshot
from keeper.decisions import Action, ActionKind
from margin.funding import FUNDING_INTERVAL


def due_pokes(snap: ProtocolSnapshot) -> list[tuple[int, int]]:
    """(perpetual, its last poke) for every listed perpetual whose interval has passed at the
    snapshot's block timestamp (what the contract's check sees), in instrument order."""
    return [
        (iid, last)
        for iid, last in sorted(snap.funding_last_poke.items())
        if snap.instruments[iid].listed and snap.timestamp >= last + FUNDING_INTERVAL
    ]


def poke_funding_action(instrument: int, last_poke: int) -> Action:
    """pokeFunding(instrument); the key carries the poke it advances from."""
    key = f"poke_funding:{instrument}:{last_poke}"
    return Action(ActionKind.POKE_FUNDING, None, instrument, None, None, None, 0, key)


__all__ = ["due_pokes", "poke_funding_action"]
