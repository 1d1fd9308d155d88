"""Positions in settled instruments, folded into the settlement balance (ClearingHouse mirror).

When the clearing house loads an account's portfolio for a margin check (``_loadPortfolio``,
hence ``portfolioOf``, ``marginOf``, flags, liquidations and bad-debt resolution), a position in
an instrument that has a settlement price is not a position any more: it is left out of the
portfolio's positions and its cash, ``q * payoff(settlementPrice) / 1e18``, is added to the
settlement asset's balance (``collateral[0]``). Positions in instruments that are expired but not
yet settled stay positions (valued at intrinsic, tau 0, with their full scenario risk).

The division is exact: quantities are multiples of LOT (1e8), prices and strikes multiples of
TICK (1e10), and LOT * TICK = 1e18. It is still computed as Solidity does (checked int256
product, division truncated toward zero), so a book that breaks those grid rules folds to the
same wei as on-chain.

Pure: no I/O, nothing from ``keeper``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from margin.errors import ArithmeticOverflow
from margin.fixed_point import INT256_MAX, INT256_MIN, sdiv
from margin.params import WAD
from margin.portfolio import CALL, FUTURE, PUT, Portfolio


def payoff(kind: int, strike: int, price: int) -> int:
    """Per-contract value at settlement price ``price`` (WAD): a future is worth the price, a
    call ``max(price - strike, 0)``, a put ``max(strike - price, 0)``
    (ClearingHouse._payoff)."""
    if kind == FUTURE:
        return price
    if kind == CALL:
        return price - strike if price > strike else 0
    if kind == PUT:
        return strike - price if strike > price else 0
    raise ValueError(f"unknown instrument kind {kind}")


def _checked(x: int) -> int:
    if x < INT256_MIN or x > INT256_MAX:
        raise ArithmeticOverflow()
    return x


def settlement_cash(kind: int, strike: int, price: int, quantity: int) -> int:
    """``quantity * payoff / 1e18`` in Solidity int256 arithmetic (exact on the LOT/TICK grid)."""
    return sdiv(_checked(quantity * payoff(kind, strike, price)), WAD)


def fold_settled(
    portfolio: Portfolio, instruments: Sequence[int], settlement_prices: Mapping[int, int]
) -> Portfolio:
    """The portfolio the clearing house margins: positions whose instrument has a settlement
    price are removed (the others keep their order) and their cash is added to asset 0.

    ``instruments[i]`` is the instrument id of ``portfolio.positions[i]`` (storage order);
    ``settlement_prices`` holds settled instruments only (id -> price, WAD)."""
    if len(instruments) != len(portfolio.positions):
        raise ValueError("one instrument id per position")
    kept = []
    cash = 0
    folded = False
    for iid, pos in zip(instruments, portfolio.positions, strict=True):
        price = settlement_prices.get(iid)
        if price is None:
            kept.append(pos)
            continue
        folded = True
        cash = _checked(cash + settlement_cash(pos.kind, pos.strike, price, pos.quantity))
    if not folded:
        return portfolio
    collateral = list(portfolio.collateral)
    if collateral:  # (no asset configured: the contract has no balance to add it to either)
        collateral[0] = _checked(collateral[0] + cash)
    return Portfolio(tuple(kept), tuple(collateral))


__all__ = ["fold_settled", "payoff", "settlement_cash"]
