"""Scenario grid of one underlying: price moves, vol states, weights, and the vol shift.

Mirrors ``PortfolioMargin._scenario``, ``_shockedSpot`` and ``_volShift`` integer for integer.

Scenario index j of an underlying with n move steps (2n+1 moves) and E extended moves:

* ``j < 3(2n+1)`` (regular): move index ``k = j // 3`` in 0..2n, price move
  ``mul_div_down(R, k - n, n)`` (floored, so -R·1/3 is one wei more negative than exact), vol
  state ``j % 3`` (0 down, 1 unchanged, 2 up), weight 1 (not applied).
* ``j = 3(2n+1) + e`` (extended): ``extended[e]`` = (move, vol state, weight).

The center scenario ``3n + 1`` (move 0, vol unchanged) reprices nothing and has loss exactly 0,
so the worst loss of an underlying is never negative.

Shocked spot: ``mul_down(S, 1e18 + move)`` (floored; the same integer on both sides is what
matters, the direction is immaterial as long as both sides agree and it is documented).

Vol shift of an option with time to expiry T seconds (computed once per option):
``factor = exp_wad(mul_down(p, ln_wad(mul_div_down(T_ref, 1e18, max(T, T_min)))))``,
``shift = mul_up(base, factor)`` (rounded up: a bigger shift is the conservative side).
With the parameter bounds ln(T_ref/T_min) <= ln(1.6e8) < 19 and p <= 2, so the exponent is
below 38 and exp never overflows. States: up = ``min(vol + shift, MAX_SCENARIO_VOL)``,
down = ``max(vol - shift, min(vol, floor))``, unchanged = vol.
"""

from __future__ import annotations

from dataclasses import dataclass

from margin.fixed_point import exp_wad, ln_wad, mul_div_down, mul_down, mul_up
from margin.params import VOL_DOWN, VOL_UNCHANGED, VOL_UP, WAD, UnderlyingParams

#: The up state is capped here: the pricing library accepts vols up to 1000%.
MAX_SCENARIO_VOL = 10 * WAD


@dataclass(frozen=True)
class Scenario:
    move: int  # relative price move, WAD
    vol_state: int
    weight: int  # WAD; regular scenarios carry WAD and the weight is not applied
    extended: bool


def scenario(u: UnderlyingParams, j: int) -> Scenario:
    """Scenario j of an underlying (0 <= j < scenario_count)."""
    regular = u.regular_count
    if j < regular:
        k = j // 3
        move = mul_div_down(u.price_range, k - u.move_steps, u.move_steps)
        return Scenario(move, j % 3, WAD, False)
    e = u.extended[j - regular]
    return Scenario(e.move, e.vol_state, e.weight, True)


def scenarios(u: UnderlyingParams) -> list[Scenario]:
    return [scenario(u, j) for j in range(u.scenario_count)]


def shocked_spot(spot: int, move: int) -> int:
    return mul_down(spot, WAD + move)


def vol_shift(u: UnderlyingParams, tau: int) -> int:
    """Absolute vol shift for an option with tau seconds to expiry (bigger when short-dated)."""
    t_eff = tau if tau > u.vol_min_time else u.vol_min_time
    ratio = mul_div_down(u.vol_ref_time, WAD, t_eff)
    factor = exp_wad(mul_down(u.vol_exponent, ln_wad(ratio)))
    return mul_up(u.vol_shift_base, factor)


def vol_for_state(u: UnderlyingParams, vol: int, shift: int, state: int) -> int:
    if state == VOL_UP:
        up = vol + shift
        return up if up < MAX_SCENARIO_VOL else MAX_SCENARIO_VOL
    if state == VOL_DOWN:
        lowest = vol if vol < u.vol_floor else u.vol_floor
        down = vol - shift
        return down if down > lowest else lowest
    assert state == VOL_UNCHANGED
    return vol
