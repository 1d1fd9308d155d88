"""The liquidation's checks and effect on a book, as ``ClearingHouse.liquidate`` and
``_handOver`` compute them.

``liquidate`` accepts a witness result below MM, or below IM once the account's grace period is
over (``grace_over``, ``may_liquidate``). Per position ``|q|·fraction`` rounded down to LOT
(all of it at 1e18), priced at the verifier's mark rounded to TICK against the account; the
penalty (keeper.protocol.bounty) leaves the account's settlement balance. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import replace

from margin.portfolio import Portfolio
from margin.portfolio_margin import LIQUIDATABLE, MARGIN_CALL, ScenarioTable

WAD = 10**18
LOT = 10**8
TICK = 10**10


def grace_over(flagged_at: int, grace_period: int, now: int) -> bool:
    """``liquidate``'s ``graceOver``: the account is flagged and its grace period has run out
    at block timestamp ``now``."""
    return flagged_at != 0 and now >= flagged_at + grace_period


def may_liquidate(witness_state: int, grace_is_over: bool) -> bool:
    """``liquidate``'s check on the witness result: below MM, or below IM once the grace period
    is over (else it reverts)."""
    return witness_state == LIQUIDATABLE or (witness_state == MARGIN_CALL and grace_is_over)


def close_qty(q: int, fraction: int) -> int:
    """The quantity ``liquidate(fraction)`` closes of a position of ``q``."""
    if fraction == WAD:
        return q
    m = abs(q) * fraction // WAD
    m -= m % LOT
    return -m if q < 0 else m


def price_against(q: int, mark: int) -> int:
    """The mark rounded to TICK against the holder of ``q`` (down for a long, up for a short)."""
    if q > 0:
        return mark - mark % TICK
    r = mark % TICK
    return mark if r == 0 else mark + (TICK - r)


def after_liquidation(
    table: ScenarioTable, pf: Portfolio, fraction: int, penalty: int
) -> Portfolio | None:
    """The account's book after ``liquidate(fraction)`` (None: nothing would move).
    Partial closes never empty a position, so the storage order is unchanged."""
    positions = []
    cash = 0
    moved = False
    for pos in pf.positions:
        close = close_qty(pos.quantity, fraction)
        if close != 0:
            moved = True
            mark = table.row(pos).v0
            assert isinstance(mark, int)
            cash += close * price_against(pos.quantity, mark) // WAD
        if pos.quantity - close != 0:
            positions.append(replace(pos, quantity=pos.quantity - close))
    if not moved:
        return None
    coll = list(pf.collateral)
    coll[0] += cash - penalty
    return Portfolio(tuple(positions), tuple(coll))
