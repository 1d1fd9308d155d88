"""The funding job: which perpetuals are due a poke, and the action that pokes one.

``ClearingHouseAdmin.pokeFunding(instrument)`` advances a perpetual's funding index at most once
per ``FUNDING_INTERVAL``; anyone may call it and it pays no bounty, so the keeper sends it as a
maintenance action (no profitability rule), recorded like every other action. The key names the
poke it advances from (``poke_funding:<instrument>:<last poke>``): one transaction per interval
and perpetual, ever, across restarts and keepers sharing the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keeper.pipeline.types import Action, ActionKind
from margin.funding import FUNDING_INTERVAL, is_perpetual

if TYPE_CHECKING:  # the snapshot's module reads the chain; this one only reads snapshots
    from keeper.chain.view import ProtocolSnapshot


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


#: Gas a poke mined between an action's simulation and the action can add to it, per perpetual
#: position the action realises funding on: the position's settled index written from zero to
#: non-zero (a cold SSTORE, 22,100) and its share of the FundingSettled event and arithmetic.
REALISATION_GAS_PER_PERPETUAL = 25_000
#: Once per account realised: its settlement balance written and the event's base cost.
REALISATION_GAS_PER_ACCOUNT = 5_000
#: The actions whose funding realisation this covers: liquidate (the account's books and the
#: backstop's). settleAccount gets its own, larger room
#: (keeper.protocol.settlement.settling_allowance).
_REALISING = frozenset({ActionKind.LIQUIDATE})


def realisation_headroom(snap: ProtocolSnapshot, action: Action) -> int:
    """Gas to add to the simulated limit of ``action``: its simulation ran before the next
    funding poke, and a poke of the same block (the keeper's own, sent earlier, or anyone's)
    makes its funding realisation write what it did not (found by the demo: a liquidation
    simulated before the first poke ran out of gas after it). 0 for an account without
    perpetuals and for other actions."""
    if action.kind not in _REALISING or action.account is None:
        return 0
    acc = snap.accounts.get(action.account)
    if acc is None:
        return 0
    perps = sum(
        1
        for iid, _ in acc.positions
        if (ins := snap.instruments.get(iid)) is not None and is_perpetual(ins.kind, ins.expiry)
    )
    if perps == 0:
        return 0
    # The account's books and the backstop's (it settles the perpetuals it takes over).
    return 2 * (perps * REALISATION_GAS_PER_PERPETUAL + REALISATION_GAS_PER_ACCOUNT)


__all__ = ["due_pokes", "poke_funding_action", "realisation_headroom"]
