"""Perpetual funding, mirrored integer for integer from the clearing house.

A perpetual is a listed future without expiry (kind 0, expiry 0). Each perpetual has a
cumulative funding index ``I`` (WAD of the settlement asset per contract of 1e18, a multiple of
TICK); each position carries the index it last settled at, ``I_at``. What the position has
accrued and not yet realised (``ClearingHouse._loadPortfolio``, ``_settleFundingAt``) is

    accrued = -(q * (I - I_at)) / 1e18      (Solidity int256: checked product, sdiv)

received when positive. ``q`` is a multiple of LOT (1e8) and the indices multiples of TICK
(1e10), so the division is exact and funding is zero-sum to the wei: positions sum to zero
per instrument across all accounts (the backstop included), hence so do the payments. Every
margin check counts ``accrued`` in the settlement balance (``collateral[0]``); the clearing house
realises it into the balance whenever the account is changed.

A poke (``ClearingHouseAdmin.pokeFunding``) moves the index by

    delta = clamp(mark - spot, -cap_abs, +cap_abs),  cap_abs = spot * cap / 1e18 (floor)
    delta -= delta % TICK                           (toward zero)

where ``mark`` is the time-weighted average of trade prices since the last poke
(:func:`funding_mark`; 0 before the first trade, and then ``delta = 0``).

The funding clock (one storage word per perpetual) packs the last poke (bits 0-39), the last
trade (40-79), the last trade price in TICKs (80-151) and the price-time sum since the last poke
in TICK-seconds (152-255).

Pure: no I/O, nothing from ``keeper``.
"""

from __future__ import annotations

from dataclasses import dataclass

from margin.errors import ArithmeticOverflow
from margin.fixed_point import INT256_MAX, INT256_MIN, sdiv
from margin.params import WAD
from margin.portfolio import FUTURE, Portfolio

TICK = 10**10
#: The clearing house's FUNDING_INTERVAL (seconds) and MAX_FUNDING_CAP (WAD of spot).
FUNDING_INTERVAL = 3600
MAX_FUNDING_CAP = 10**16

_MASK40 = (1 << 40) - 1
_MASK72 = (1 << 72) - 1


def _checked(x: int) -> int:
    if x < INT256_MIN or x > INT256_MAX:
        raise ArithmeticOverflow()
    return x


def _smod(a: int, b: int) -> int:
    """The EVM's ``smod``: the remainder takes the dividend's sign."""
    return a - sdiv(a, b) * b


def is_perpetual(kind: int, expiry: int) -> bool:
    """A future without expiry (the clearing house's PERP_MASK test, for a listed instrument)."""
    return kind == FUTURE and expiry == 0


def accrued_funding(quantity: int, index: int, index_at: int) -> int:
    """The cash a position of ``quantity`` receives (negative: pays) when it settles from
    ``index_at`` to ``index`` (``_settleFundingAt``): ``-(q * (I - I_at)) / 1e18``."""
    return sdiv(_checked(-_checked(quantity * _checked(index - index_at))), WAD)


def funding_delta(mark: int, spot: int, cap: int) -> int:
    """The index move of a poke (``pokeFunding``): 0 without a mark, else
    ``clamp(mark - spot, +-floor(spot * cap / 1e18))`` rounded toward zero to TICK."""
    if mark == 0:
        return 0
    cap_abs = sdiv(_checked(spot * cap), WAD)
    delta = _checked(mark - spot)
    if delta > cap_abs:
        delta = cap_abs
    if delta < -cap_abs:
        delta = -cap_abs
    return delta - _smod(delta, TICK)


@dataclass(frozen=True)
class FundingClock:
    """The packed funding clock of a perpetual (``ClearingHouseBase._fundingClock``)."""

    last_poke: int
    last_trade: int
    last_price_ticks: int
    sum_ticks_seconds: int

    @classmethod
    def unpack(cls, word: int) -> FundingClock:
        return cls(word & _MASK40, (word >> 40) & _MASK40, (word >> 80) & _MASK72, word >> 152)

    def pack(self) -> int:
        return (
            self.last_poke
            | (self.last_trade << 40)
            | (self.last_price_ticks << 80)
            | (self.sum_ticks_seconds << 152)
        )

    @classmethod
    def listed(cls, now: int) -> FundingClock:
        """A perpetual's clock at listing: last poke = last trade = now, no price."""
        return cls(now, now, 0, 0)

    def after_trade(self, price: int, now: int) -> FundingClock:
        """``_recordFundingPrice``: the time since the last trade at the last price (the
        first trade ever prices the time before it too), then ``price`` is the last price.
        Raises ArithmeticOverflow where the contract reverts (a sum beyond 2**104)."""
        new_ticks = price // TICK
        p = self.last_price_ticks or new_ticks
        total = self.sum_ticks_seconds + p * (now - self.last_trade)
        if total >> 104:
            raise ArithmeticOverflow()
        return FundingClock(self.last_poke, now, new_ticks, total)

    def mark(self, now: int) -> int:
        """The time-weighted trade price since the last poke at ``now`` (WAD, floored to a
        TICK; 0 before the first trade). ``now > last_poke``."""
        if self.last_price_ticks == 0:
            return 0
        total = self.sum_ticks_seconds + self.last_price_ticks * (now - self.last_trade)
        return total // (now - self.last_poke) * TICK

    def after_poke(self, now: int) -> FundingClock:
        """A new window: last poke = last trade = now, the price kept, the sum reset."""
        return FundingClock(now, now, self.last_price_ticks, 0)


def poke(index: int, clock: FundingClock, spot: int, cap: int, now: int) -> tuple[int, int]:
    """``pokeFunding`` on a perpetual whose interval has passed: (delta, new index)."""
    delta = funding_delta(clock.mark(now), spot, cap)
    return delta, _checked(index + delta)


def fold_funding(portfolio: Portfolio, accrued: int) -> Portfolio:
    """The portfolio with the accrued funding added to the settlement balance, as
    ``_loadPortfolio`` adds it to ``collateral[0]`` (nothing without an asset)."""
    if accrued == 0 or not portfolio.collateral:
        return portfolio
    collateral = list(portfolio.collateral)
    collateral[0] = _checked(collateral[0] + accrued)
    return Portfolio(portfolio.positions, tuple(collateral))


__all__ = [
    "FUNDING_INTERVAL",
    "MAX_FUNDING_CAP",
    "TICK",
    "FundingClock",
    "accrued_funding",
    "fold_funding",
    "funding_delta",
    "is_perpetual",
    "poke",
]
