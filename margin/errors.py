"""Typed exceptions that mirror the Solidity verifier's reverts one to one.

Every revert the contracts can raise has exactly one exception class here. A class carries
the Solidity error signature, so a differential test can compare the 4-byte selector (and the
ABI-encoded arguments) of an on-chain revert with the exception raised off-chain.
"""

from __future__ import annotations

from typing import ClassVar

from eth_utils.crypto import keccak


class MarginError(Exception):
    """Base of every engine failure that the on-chain verifier also fails on."""

    #: Solidity error signature, e.g. ``"ExpOverflow(int256)"``; ``Panic(uint256)`` for panics.
    signature: ClassVar[str] = ""

    def __init__(self, *args: int) -> None:
        super().__init__(*args)
        self.args_: tuple[int, ...] = args

    @classmethod
    def selector(cls) -> bytes:
        return keccak(text=cls.signature)[:4]

    def revert_data(self) -> bytes:
        """The exact revert data the contract returns for this failure."""
        from eth_abi.abi import encode

        types = self.signature[self.signature.index("(") + 1 : -1]
        arg_types = [t for t in types.split(",") if t]
        return self.selector() + encode(arg_types, list(self.args_))

    def __str__(self) -> str:
        name = self.signature.split("(")[0] or type(self).__name__
        return f"{name}({', '.join(str(a) for a in self.args_)})"


# --- fixed-point core (contracts/src/math/FixedPoint.sol) -------------------------------


class MulDivOverflow(MarginError):
    """An intermediate product or a quotient does not fit in int256."""

    signature = "MulDivOverflow()"


class DivisionByZero(MarginError):
    """A fixed-point division by zero (a named error, not Panic(0x12))."""

    signature = "DivisionByZero()"


class ExpOverflow(MarginError):
    """exp(x) would exceed int256: x is above the documented maximum."""

    signature = "ExpOverflow(int256)"


class LnOfNonPositive(MarginError):
    """ln(x) with x <= 0."""

    signature = "LnOfNonPositive(int256)"


class SqrtOfNegative(MarginError):
    """sqrt(x) with x < 0."""

    signature = "SqrtOfNegative(int256)"


class SqrtOverflow(MarginError):
    """sqrt(x) of a WAD so large that x * 1e18 does not fit in int256."""

    signature = "SqrtOverflow(int256)"


# --- option pricing (contracts/src/margin/OptionPricing.sol) ----------------------------


class SpotOutOfRange(MarginError):
    """Spot outside [MIN_PRICE, MAX_PRICE] of margin.option_pricing (option_price); for the model's
    option_model_price, a spot <= 0 or above MAX_PRICE."""

    signature = "SpotOutOfRange(int256)"


class ForwardOutOfRange(MarginError):
    """Black-76 forward outside [MIN_PRICE, MAX_PRICE] of margin.option_pricing."""

    signature = "ForwardOutOfRange(int256)"


class StrikeOutOfRange(MarginError):
    """Strike outside [MIN_PRICE, MAX_PRICE] of margin.option_pricing."""

    signature = "StrikeOutOfRange(int256)"


class MoneynessOutOfRange(MarginError):
    """strike > MAX_STRIKE_RATIO x underlying (spot or forward): the price would lose accuracy."""

    signature = "MoneynessOutOfRange(int256,int256)"


class TauOutOfRange(MarginError):
    """Time to expiry (seconds) above MAX_TAU."""

    signature = "TauOutOfRange(uint256)"


class VolOutOfRange(MarginError):
    """Implied volatility outside [0, MAX_VOL]."""

    signature = "VolOutOfRange(int256)"


class RateOutOfRange(MarginError):
    """|rate| above MAX_RATE."""

    signature = "RateOutOfRange(int256)"


class ZeroSigmaSqrtTau(MarginError):
    """d1/d2 asked for while sigma*sqrt(tau) floors to 0 (expired or zero vol)."""

    signature = "ZeroSigmaSqrtTau(uint256,int256)"


# --- Solidity panics (checked arithmetic in high-level Solidity code) -------------------


class Panic(MarginError):
    """Solidity ``Panic(uint256)``; subclasses fix the code."""

    signature = "Panic(uint256)"
    code: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__(self.code)


class ArithmeticOverflow(Panic):
    """Panic(0x11): checked +, -, * over- or underflowed."""

    code = 0x11


class PanicDivisionByZero(Panic):
    """Panic(0x12): checked / or % by zero."""

    code = 0x12


def error_by_selector() -> dict[bytes, type[MarginError]]:
    """Every concrete error class by its 4-byte selector (panics share one selector)."""
    out: dict[bytes, type[MarginError]] = {}
    stack: list[type[MarginError]] = [MarginError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.signature and not issubclass(cls, Panic):
            out[cls.selector()] = cls
    return out


# --- portfolio margin (contracts/src/margin/PortfolioMargin.sol) ------------------------
# Input validation of the margin model. Indices are 0-based positions in the arrays the
# verifier receives (positions, underlyings, assets); field codes are in margin/params.py.


class InvalidUnderlyingCount(MarginError):
    """The risk parameters name no underlying, or more than MAX_UNDERLYINGS."""

    signature = "InvalidUnderlyingCount(uint256)"


class InvalidAssetCount(MarginError):
    """More collateral assets than MAX_ASSETS."""

    signature = "InvalidAssetCount(uint256)"


class InvalidRiskParameter(MarginError):
    """A per-underlying risk parameter is outside its bounds (underlying, field code)."""

    signature = "InvalidRiskParameter(uint256,uint256)"


class InvalidAssetParameter(MarginError):
    """A collateral asset parameter is outside its bounds (asset, field code)."""

    signature = "InvalidAssetParameter(uint256,uint256)"


class InvalidGlobalParameter(MarginError):
    """A portfolio-wide parameter (correlation credit, IM factor) is out of bounds (field)."""

    signature = "InvalidGlobalParameter(uint256)"


class MarketLengthMismatch(MarginError):
    """The market state does not carry one spot and one vol per underlying (expected, got)."""

    signature = "MarketLengthMismatch(uint256,uint256)"


class MarketSpotOutOfRange(MarginError):
    """An underlying's spot is outside [MIN_SPOT, MAX_SPOT] (underlying, spot)."""

    signature = "MarketSpotOutOfRange(uint256,int256)"


class MarketVolOutOfRange(MarginError):
    """An underlying's implied vol is outside [0, MAX_VOL] (underlying, vol)."""

    signature = "MarketVolOutOfRange(uint256,int256)"


class TooManyPositions(MarginError):
    """More positions than MAX_POSITIONS (the gas ceiling of the full check)."""

    signature = "TooManyPositions(uint256)"


class CollateralLengthMismatch(MarginError):
    """Not one collateral balance per asset (expected, got)."""

    signature = "CollateralLengthMismatch(uint256,uint256)"


class UnknownUnderlying(MarginError):
    """A position names an underlying index that the parameters do not have (position, idx)."""

    signature = "UnknownUnderlying(uint256,uint256)"


class InvalidInstrumentKind(MarginError):
    """A position's kind is not 0 (future), 1 (call) or 2 (put) (position, kind)."""

    signature = "InvalidInstrumentKind(uint256,uint256)"


class InvalidOptionStrike(MarginError):
    """An option's strike is outside [1, MAX_PRICE] (position, strike)."""

    signature = "InvalidOptionStrike(uint256,int256)"


class QuantityOutOfRange(MarginError):
    """|quantity| > MAX_QUANTITY (position, quantity)."""

    signature = "QuantityOutOfRange(uint256,int256)"


class EntryPriceOutOfRange(MarginError):
    """|entry price| > MAX_PRICE (position, entry price)."""

    signature = "EntryPriceOutOfRange(uint256,int256)"


class CollateralOutOfRange(MarginError):
    """|balance| > MAX_COLLATERAL (asset, balance)."""

    signature = "CollateralOutOfRange(uint256,int256)"


class WitnessLengthMismatch(MarginError):
    """A witness must name one scenario per underlying (expected, got)."""

    signature = "WitnessLengthMismatch(uint256,uint256)"


class WitnessOutOfRange(MarginError):
    """A witness names a scenario index the underlying does not have (underlying, idx, count);
    for an ES index: (its position in the witness, idx, number of historical scenarios)."""

    signature = "WitnessOutOfRange(uint256,uint256,uint256)"


class WitnessNotIncreasing(MarginError):
    """The ES indices of a witness must be strictly increasing (position in the witness, idx)."""

    signature = "WitnessNotIncreasing(uint256,uint256)"


class InvalidHistoricalScenario(MarginError):
    """A move of the historical set is out of bounds (scenario, underlying, field: 1 price
    move, 2 vol move)."""

    signature = "InvalidHistoricalScenario(uint256,uint256,uint256)"
