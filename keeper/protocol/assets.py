"""The clearing house's asset constants (``ClearingHouseBase``). Pure: no I/O."""

from __future__ import annotations

#: ``AssetConfig.underlying`` of a stablecoin (``type(uint8).max``): its balance never moves
#: with a price, so it needs no oracle.
NO_UNDERLYING = 255
