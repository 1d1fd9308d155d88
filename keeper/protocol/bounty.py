"""The liquidation's penalty and bounty, as ``ClearingHouse._chargePenalty`` computes them.

Pure: no I/O. The bounty only ever comes out of the penalty; the keeper's profitability rule
and the liquidation's post-book both use these figures.
"""

from __future__ import annotations

from margin.fixed_point import mul_down, mul_up


def liquidation_payout(
    requirement: int,
    equity: int,
    fraction: int,
    config: tuple[int, int, int, int, int],
) -> tuple[int, int]:
    """(penalty, bounty credited) of ``ClearingHouse._chargePenalty`` (witness-check result).
    The bounty only ever comes out of the penalty: a book that cannot pay its penalty pays a
    smaller bounty (none at equity <= 0)."""
    penalty_rate, bounty_share, _grace, min_bounty, max_bounty = config
    penalty = mul_up(mul_up(requirement, fraction), penalty_rate)
    if penalty > equity:
        penalty = equity if equity > 0 else 0
    bounty = mul_down(penalty, bounty_share)
    bounty = min(max(bounty, min_bounty), max_bounty, penalty)
    return penalty, bounty
