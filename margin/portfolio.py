"""Instruments, positions, collateral and the market state (Solidity structs of PortfolioMargin).

Conventions (docs/portfolio-format.md says the same for file authors):

* An instrument is carried inline by its position: underlying index, kind (0 future,
  1 call, 2 put), strike (options; ignored for futures), expiry (unix seconds; 0 = perpetual
  future; an option at or past expiry is valued at intrinsic, tau = 0).
* Futures are linear and cash-settled, marked at the underlying's spot (the basis between
  expiries is not priced, it is charged by the calendar contingency).
* Every position is *futures-style*: its value is ``quantity × (mark − entry_price)``, for options
  too (the premium is not exchanged up front; ``entry_price`` is the premium per contract).
  Scenario losses only use mark changes, so ``entry_price`` affects equity, never the
  requirement.
* Collateral: one signed balance (WAD units of the asset) per asset of the risk parameters.
  A positive balance counts ``balance × (1 − haircut)`` (floored), a negative one (a debt)
  counts in full. A volatile asset is valued at its underlying's spot and moves with that
  underlying's price scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from margin.params import WAD

FUTURE, CALL, PUT = 0, 1, 2
KIND_NAMES = {"future": FUTURE, "call": CALL, "put": PUT}

MAX_POSITIONS = 40
#: |quantity| <= 1e12 contracts.
MAX_QUANTITY = 10**12 * WAD
#: Spot, strike and |entry price| <= 1e12 (the pricing library's MAX_PRICE); spot >= 1e-8.
MAX_PRICE = 10**12 * WAD
MIN_SPOT = 10**10
#: Implied vol <= 1000%.
MAX_VOL = 10 * WAD
#: |collateral balance| <= 1e15 units.
MAX_COLLATERAL = 10**15 * WAD
MAX_UINT64 = 2**64 - 1


@dataclass(frozen=True)
class Position:
    underlying: int
    kind: int
    strike: int
    expiry: int
    quantity: int
    entry_price: int = 0

    @property
    def instrument(self) -> tuple[int, int, int, int]:
        """The key of the shared pricing table: equal instruments price identically."""
        strike = 0 if self.kind == FUTURE else self.strike
        return (self.underlying, self.kind, strike, self.expiry)

    def to_abi(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.underlying,
            self.kind,
            self.strike,
            self.expiry,
            self.quantity,
            self.entry_price,
        )


@dataclass(frozen=True)
class Portfolio:
    positions: tuple[Position, ...] = ()
    collateral: tuple[int, ...] = field(default_factory=tuple)

    def to_abi(self) -> tuple[Any, ...]:
        return ([p.to_abi() for p in self.positions], list(self.collateral))


@dataclass(frozen=True)
class Market:
    timestamp: int  # unix seconds ("now" for time to expiry)
    rate: int  # continuously compounded annual rate, WAD
    spots: tuple[int, ...]  # per underlying, WAD
    vols: tuple[int, ...]  # implied vol per underlying, WAD (flat across strikes)

    def to_abi(self) -> tuple[Any, ...]:
        return (self.timestamp, self.rate, list(self.spots), list(self.vols))
