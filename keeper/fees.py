"""EIP-1559 fee policy: initial fees from the base fee, a hard cap, and replacement bumps.

Rules (the why):
- ``maxFeePerGas = base fee × multiplier + tip``: headroom for the base fee rising by up to
  12.5 % per block while the transaction waits; then capped at the operator's ``max_fee_per_gas``.
- A replacement must raise *both* fees by at least 10 % or nodes reject it ("replacement
  transaction underpriced"); we raise both by ``bump_percent`` (≥ 10), rounding up, and at least
  to what the current base fee needs.
- The cap is absolute: when a bump would exceed it, the bump is clipped; when the clipped fees
  are no longer a valid replacement (< +10 % on either fee), ``bump`` returns None and the
  transaction waits at the cap instead of spamming rejected replacements.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeper.config import FeesConfig

#: What nodes (geth, anvil, reth) demand of a replacement, on each fee.
MIN_REPLACEMENT_PERCENT = 10


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def __post_init__(self) -> None:
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise ValueError("priority fee above max fee")
        if self.max_priority_fee_per_gas < 0:
            raise ValueError("negative fee")


def _percent_up(value: int, percent: int) -> int:
    """ceil(value × (100 + percent) / 100), in integers."""
    return -(-value * (100 + percent) // 100)


def is_valid_replacement(old: Fees, new: Fees) -> bool:
    return new.max_fee_per_gas >= _percent_up(
        old.max_fee_per_gas, MIN_REPLACEMENT_PERCENT
    ) and new.max_priority_fee_per_gas >= _percent_up(
        old.max_priority_fee_per_gas, MIN_REPLACEMENT_PERCENT
    )


class FeePolicy:
    def __init__(self, config: FeesConfig) -> None:
        self.cap = config.max_fee_per_gas
        self.tip = config.priority_fee
        self.multiplier_percent = config.base_fee_multiplier_percent
        self.bump_percent = config.bump_percent

    def initial(self, base_fee: int) -> Fees:
        """Fees for a new transaction at the current ``base_fee``."""
        tip = min(self.tip, self.cap)
        max_fee = min(self.cap, base_fee * self.multiplier_percent // 100 + tip)
        return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=min(tip, max_fee))

    def bump(self, old: Fees, base_fee: int) -> Fees | None:
        """Fees for a replacement of a transaction sent with ``old``; None when the cap leaves
        no room for a valid replacement."""
        tip = _percent_up(old.max_priority_fee_per_gas, self.bump_percent)
        # A zero tip bumps to zero: give it a floor of 1 wei so the replacement is strictly
        # better (some nodes compare with >).
        tip = max(tip, old.max_priority_fee_per_gas + 1)
        max_fee = max(
            _percent_up(old.max_fee_per_gas, self.bump_percent),
            base_fee * self.multiplier_percent // 100 + tip,
        )
        max_fee = min(max_fee, self.cap)
        tip = min(tip, max_fee)
        new = Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=tip)
        return new if is_valid_replacement(old, new) else None
