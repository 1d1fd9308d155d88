"""Off-chain Greeks of positions, from the engine's own integer pricer (explanation only).

Nothing here feeds the requirement: the verifier never sees Greeks. They are computed by finite
differences on :func:`margin.option_pricing.option_price`, the exact integer Black-Scholes price the
scenario losses use, so a Greek describes the same pricing surface as the loss matrix (not an
independent float model). Units and bumps, per position of quantity q (contracts, WAD):

* delta = q · ∂V/∂S, central difference with ``h = S · 10⁻³`` (floored to an integer ≥ 1 wei):
  ``(V(S+h) − V(S−h)) / 2h``. Units of the underlying.
* gamma = q · ∂²V/∂S², central second difference with the same h:
  ``(V(S+h) − 2·V(S) + V(S−h)) / h²``. Per unit of underlying price.
* vega = q · ∂V/∂σ per vol point (σ + 0.01), central difference with ``h_σ = 0.001`` (0.1 vol
  point), one-sided from σ when σ < h_σ. Units of the quote currency.
* theta = q · (V(τ − 1 day) − V(τ)): the value lost (negative) or gained over one day with
  spot, vol and rate unchanged; ``τ − 1 day`` is floored at 0 (expiry). Quote currency per day.

Why these bumps: the pricer is accurate to ~1e-9·S (tests/test_pricing_accuracy.py) and rounds
to the wei, so a relative spot bump of 1e-3 keeps the difference error near 1e-6 for delta and
near 1e-3/S for gamma, while the central differences' truncation error (∝ h²) stays below that.
tests/test_cli_margin.py compares against analytic float Black-Scholes Greeks.

Futures are linear (V = S): delta = q exactly, the other Greeks are 0. An option at or past
expiry is priced at intrinsic value, so its delta is 0, ±q or ±q/2 at the strike, its gamma is
the finite difference of a kink (a spike of size 1/(2h) at the strike, 0 elsewhere) and its vega
and theta are 0. A bump that leaves the pricer's domain (a spot within 0.1% of MIN_PRICE, a
strike at the moneyness cap) makes that Greek ``None`` ("not available"), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from margin.errors import MarginError
from margin.params import DAY, WAD
from margin.portfolio import CALL, FUTURE, Market, Position
from margin.option_pricing import option_price

#: Relative spot bump of delta and gamma: S / 1000.
SPOT_BUMP_DIVISOR = 1000
#: Absolute vol bump of vega: 0.001 (0.1 vol point).
VOL_BUMP = WAD // 1000
#: Vega is reported per vol point (0.01 absolute).
VEGA_UNIT = WAD // 100
#: Theta horizon.
THETA_HORIZON = DAY

GREEKS_METHOD = (
    "central finite differences on the engine's integer pricer margin.option_pricing.option_price: "
    "delta/gamma bump spot by ±S/1000, vega bumps vol by ±0.001 and is per vol point (0.01), "
    "theta is V(tau - 1 day) - V(tau); futures: delta = quantity, other Greeks 0"
)


@dataclass(frozen=True)
class Greeks:
    """Position (or portfolio) Greeks as floats; None when a bump left the pricing domain."""

    delta: float | None
    gamma: float | None
    vega: float | None
    theta: float | None

    def __add__(self, other: Greeks) -> Greeks:
        return Greeks(
            _add(self.delta, other.delta),
            _add(self.gamma, other.gamma),
            _add(self.vega, other.vega),
            _add(self.theta, other.theta),
        )

    def as_dict(self) -> dict[str, float | None]:
        return {"delta": self.delta, "gamma": self.gamma, "vega": self.vega, "theta": self.theta}


ZERO = Greeks(0.0, 0.0, 0.0, 0.0)


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def time_to_expiry(pos: Position, market: Market) -> int:
    """Seconds to expiry exactly as the engine computes it (0 once expired)."""
    return pos.expiry - market.timestamp if pos.expiry > market.timestamp else 0


def position_greeks(pos: Position, market: Market) -> Greeks:
    """Greeks of one position in the given market state (see the module docstring)."""
    q = pos.quantity
    spot = market.spots[pos.underlying]
    if pos.kind == FUTURE:
        # V = S: the derivative is exact; q is WAD-scaled contracts.
        return Greeks(float(Fraction(q, WAD)), 0.0, 0.0, 0.0)
    vol = market.vols[pos.underlying]
    rate = market.rate
    tau = time_to_expiry(pos, market)
    is_call = pos.kind == CALL

    def price(s: int = spot, t: int = tau, v: int = vol) -> int:
        return option_price(is_call, s, pos.strike, t, v, rate)

    v0 = price()  # the mark: the engine has priced it already, so it is in domain

    h = max(spot // SPOT_BUMP_DIVISOR, 1)
    delta: float | None
    gamma: float | None
    try:
        up, down = price(s=spot + h), price(s=spot - h)
        # (V(S+h) − V(S−h)) / 2h is dimensionless (both WAD); × q / WAD.
        delta = float(Fraction(q * (up - down), 2 * h * WAD))
        # ΔV / h² carries one 1/WAD too few: (ΔV/1e18) / (h/1e18)² × q/1e18 = q·ΔV / h².
        gamma = float(Fraction(q * (up - 2 * v0 + down), h * h))
    except MarginError:
        delta = gamma = None

    vega: float | None
    try:
        if vol >= VOL_BUMP:
            dv, span = price(v=vol + VOL_BUMP) - price(v=vol - VOL_BUMP), 2 * VOL_BUMP
        else:
            dv, span = price(v=vol + VOL_BUMP) - v0, VOL_BUMP
        # (ΔV / span) · VEGA_UNIT is quote currency per vol point (WAD); × q / WAD.
        vega = float(Fraction(q * dv * VEGA_UNIT, span * WAD * WAD))
    except MarginError:
        vega = None

    theta: float | None
    try:
        later = price(t=max(tau - THETA_HORIZON, 0))
        theta = float(Fraction(q * (later - v0), WAD * WAD))
    except MarginError:
        theta = None
    return Greeks(delta, gamma, vega, theta)
