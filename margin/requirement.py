"""Portfolio-margin requirement, equity, witness: mirrors PortfolioMargin.fullCheck/witnessCheck.

Engine shape: a :class:`ScenarioTable` prices each (instrument, scenario) once per market state
and is shared by every account evaluated in that state; the per-account work
(:meth:`ScenarioTable.full_check`, :meth:`ScenarioTable.witness_check`) is integer aggregation.
Table entries hold a value *or the exception* its computation raised, so an account fails with
exactly the error the verifier reverts with first, in the verifier's order of work.

Steps and rounding (identical in Solidity):

1. Validation: parameters, market, portfolio (then the witness), first violation wins.
2. Per position, in order (the verifier's loop): options compute the vol shift (full check
   always; witness check only if the named scenario's vol state is not "unchanged"), then
   the mark V0 = price(S, vol, tau), then each scenario price V_j in index order (the center
   scenario is V0 itself, never repriced). Prices are ``option_model_price`` (the intrinsic
   value where the spot alone leaves the pricing domain); V_j takes ln(S'_j/K) as
   ``ln_ratio(S, K) + ln_ratio(S'_j, S)`` (OptionPricing.modelPriceLn). Futures: V0 = S,
   V_j = S'_j.
   Exact accumulation per underlying and scenario: ``acc_j += q · (V_j − V0)``.
   Volatile collateral of the underlying: ``acc_j += e · (S'_j − S)``, e its haircut balance.
3. Scenario loss ``L_j = mul_up(−acc_j, 1)`` = ceil(−acc_j / 1e18) (losses round up);
   extended scenarios count ``mul_up(L_j, weight)``. Loss of the underlying: the largest
   weighted loss (the center gives 0, so it is >= 0); the witness is its lowest index.
   A witness check uses ``max(weighted L_w, 0)`` of the named scenario instead.
4. Contingencies per underlying (rounded up), the same in both checks:
   short options: per (call/put, strike) group, net quantity n < 0 charges
   ``mul_up(mul_up(−n, S), short_option_charge)``;
   calendar: futures netted per expiry, ``mul_up(mul_up(min(long, short), S), calendar_charge)``;
   vega: options' proxy ``v = mul_down(q, sqrt_down(mul_div_down(tau, 1e18, YEAR)))`` netted per
   expiry, ``mul_up(mul_up(min(Σ positive, Σ −negative), S), vega_charge)`` (q·S·√T, the spot
   applied once per underlying).
5. ``sum = Σ loss_u``, ``credit = mul_down(sum − max_u loss_u, correlation_credit)`` (rounded
   down: less credit), ``MM = sum − credit + Σ contingencies``, ``IM = mul_up(MM, im_factor)``.
6. Equity (rounded down): Σ assets (stable ``e``; volatile ``mul_down(e, S)``, with
   ``e = mul_down(balance, 1e18 − haircut)`` if balance > 0 else balance) + Σ positions
   ``mul_down(q, V0 − entry)``. State: 2 liquidatable if equity < MM, 1 margin call if
   equity < IM, else 0.

Witness soundness: the requirement is non-decreasing in every underlying loss (credit factor
<= 0.8 < 1, and floor(c·(x+1)) − floor(c·x) <= 1), a named scenario's loss is <= the worst,
and contingencies are identical: a witness check never exceeds the full requirement, and the
full check's witness reproduces it exactly.

Bounds (why nothing overflows int256 ~ 5.7e76): |q| <= 1e30, prices <= 1e30, scenario spots
<= 11 · 1e30, so |q·(V_j − V0)| < 1.2e61 and 40 positions + 8 assets (|e·ΔS| <= 1e33·1.1e31)
stay below 1e64; contingency and equity products are of the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from margin.errors import MarginError, WitnessLengthMismatch, WitnessOutOfRange
from margin.fixed_point import mul_div_down, mul_down, mul_up, sqrt_down
from margin.params import STABLE, VOL_UNCHANGED, WAD, YEAR, RiskParams, validate_params
from margin.portfolio import (
    CALL,
    FUTURE,
    Market,
    Portfolio,
    Position,
    validate_market,
    validate_portfolio,
)
from margin.pricing import ln_ratio, option_model_price
from margin.scenarios import Scenario, scenarios, shocked_spot, vol_for_state, vol_shift

HEALTHY, MARGIN_CALL, LIQUIDATABLE = 0, 1, 2
STATE_NAMES = {HEALTHY: "healthy", MARGIN_CALL: "margin_call", LIQUIDATABLE: "liquidatable"}

Outcome = int | MarginError


@dataclass
class MarginResult:
    """What fullCheck / witnessCheck return (Solidity ``MarginResult``), plus, for the full
    check, the weighted scenario losses per underlying (the risk matrix, Python only)."""

    equity: int
    requirement: int  # maintenance margin
    initial_margin: int
    contingencies: int
    credit: int
    state: int
    losses: list[int]  # per underlying
    witness: list[int]  # per underlying
    scenario_losses: list[list[int]] = field(default_factory=list)

    def to_abi(self) -> tuple[Any, ...]:
        return (
            self.equity,
            self.requirement,
            self.initial_margin,
            self.contingencies,
            self.credit,
            self.state,
            list(self.losses),
            list(self.witness),
        )


def _unwrap(x: Outcome) -> int:
    if isinstance(x, MarginError):
        raise x
    return x


def _capture(fn: Callable[..., int], *args: Any) -> Outcome:
    try:
        return fn(*args)
    except MarginError as e:
        return e


@dataclass
class _Row:
    """One instrument in one market state: shift, mark and price per scenario."""

    shift: Outcome  # options only (0 for futures)
    v0: Outcome
    prices: list[Outcome]  # V_j per scenario index (center = v0)
    vega_base: int  # sqrt_down(tau in years), options only


class ScenarioTable:
    """Prices shared by every account in one (market, parameters) state."""

    def __init__(self, market: Market, params: RiskParams) -> None:
        validate_params(params)
        validate_market(market, params)
        self.market = market
        self.params = params
        self.scenarios: list[list[Scenario]] = [scenarios(u) for u in params.underlyings]
        self.shocked: list[list[int]] = [
            [shocked_spot(market.spots[i], s.move) for s in sc]
            for i, sc in enumerate(self.scenarios)
        ]
        self._rows: dict[tuple[int, int, int, int], _Row] = {}
        self._ln_move_cache: dict[int, list[int]] = {}

    def _ln_moves(self, u: int) -> list[int]:
        """ln_ratio(S'_j, S) per scenario j of underlying u (PortfolioMargin._lnMoves)."""
        ln = self._ln_move_cache.get(u)
        if ln is None:
            spot = self.market.spots[u]
            ln = self._ln_move_cache[u] = [ln_ratio(s, spot) for s in self.shocked[u]]
        return ln

    def row(self, pos: Position) -> _Row:
        key = pos.instrument
        r = self._rows.get(key)
        if r is None:
            r = self._rows[key] = self._price(pos)
        return r

    def _price(self, pos: Position) -> _Row:
        u = pos.underlying
        spot = self.market.spots[u]
        shocked = self.shocked[u]
        if pos.kind == FUTURE:
            return _Row(0, spot, list(shocked), 0)
        up = self.params.underlyings[u]
        vol = self.market.vols[u]
        rate = self.market.rate
        tau = pos.expiry - self.market.timestamp if pos.expiry > self.market.timestamp else 0
        is_call = pos.kind == CALL
        shift = _capture(vol_shift, up, tau)
        v0 = _capture(option_model_price, is_call, spot, pos.strike, tau, vol, rate)
        # ln(S_j/K) = ln(S/K) + ln(S_j/S), as the verifier shares them (OptionPricing.modelPriceLn);
        # only when V0 priced (spot and strike in range; otherwise V0's error comes first).
        ln_sk = None if isinstance(v0, MarginError) else ln_ratio(spot, pos.strike)
        ln_moves = None if ln_sk is None else self._ln_moves(u)
        prices: list[Outcome] = []
        center = up.center_index
        for j, sc in enumerate(self.scenarios[u]):
            if j == center:
                prices.append(v0)
            elif sc.vol_state != VOL_UNCHANGED and isinstance(shift, MarginError):
                prices.append(shift)
            else:
                v = vol
                if sc.vol_state != VOL_UNCHANGED:
                    v = vol_for_state(up, vol, shift, sc.vol_state)  # type: ignore[arg-type]
                ln_j = None if ln_sk is None or ln_moves is None else ln_sk + ln_moves[j]
                args = (is_call, shocked[j], pos.strike, tau, v, rate, ln_j)
                prices.append(_capture(option_model_price, *args))
        vega_base = sqrt_down(mul_div_down(tau, WAD, YEAR))
        return _Row(shift, v0, prices, vega_base)

    # --- per account ---------------------------------------------------------------------

    def full_check(self, pf: Portfolio) -> MarginResult:
        validate_portfolio(pf, self.params)
        n_u = len(self.params.underlyings)
        acc = [[0] * len(sc) for sc in self.scenarios]
        equity = 0
        for pos in pf.positions:
            r = self.row(pos)
            if pos.kind != FUTURE:
                _unwrap(r.shift)
            v0 = _unwrap(r.v0)
            a = acc[pos.underlying]
            q = pos.quantity
            for j, pj in enumerate(r.prices):
                a[j] += q * (_unwrap(pj) - v0)
            equity += mul_down(q, v0 - pos.entry_price)
        equity += self._collateral(pf, acc, None)
        losses: list[int] = []
        witness: list[int] = []
        matrix: list[list[int]] = []
        for u in range(n_u):
            row = [
                mul_up(mul_up(-x, 1), sc.weight) if sc.extended else mul_up(-x, 1)
                for x, sc in zip(acc[u], self.scenarios[u], strict=True)
            ]
            best = 0
            for j in range(1, len(row)):
                if row[j] > row[best]:
                    best = j
            matrix.append(row)
            losses.append(row[best])
            witness.append(best)
        res = self._finish(pf, equity, losses, witness)
        res.scenario_losses = matrix
        return res

    def witness_check(self, pf: Portfolio, witness: list[int]) -> MarginResult:
        validate_portfolio(pf, self.params)
        n_u = len(self.params.underlyings)
        if len(witness) != n_u:
            raise WitnessLengthMismatch(n_u, len(witness))
        for u, w in enumerate(witness):
            count = len(self.scenarios[u])
            if not 0 <= w < count:  # (a negative index cannot even be ABI-encoded)
                raise WitnessOutOfRange(u, w, count)
        acc = [0] * n_u
        equity = 0
        for pos in pf.positions:
            u = pos.underlying
            r = self.row(pos)
            w = witness[u]
            if pos.kind != FUTURE and self.scenarios[u][w].vol_state != VOL_UNCHANGED:
                _unwrap(r.shift)
            v0 = _unwrap(r.v0)
            acc[u] += pos.quantity * (_unwrap(r.prices[w]) - v0)
            equity += mul_down(pos.quantity, v0 - pos.entry_price)
        equity += self._collateral(pf, None, (acc, witness))
        losses = []
        for u in range(n_u):
            sc = self.scenarios[u][witness[u]]
            loss = mul_up(-acc[u], 1)
            if sc.extended:
                loss = mul_up(loss, sc.weight)
            losses.append(loss if loss > 0 else 0)
        return self._finish(pf, equity, losses, list(witness))

    def _collateral(
        self,
        pf: Portfolio,
        acc_full: list[list[int]] | None,
        acc_witness: tuple[list[int], list[int]] | None,
    ) -> int:
        """Collateral value after haircuts (rounded down), and its scenario moves into acc."""
        value = 0
        for asset, balance in zip(self.params.assets, pf.collateral, strict=True):
            e = mul_down(balance, WAD - asset.haircut) if balance > 0 else balance
            if asset.underlying == STABLE:
                value += e
                continue
            u = asset.underlying
            spot = self.market.spots[u]
            value += mul_down(e, spot)
            if acc_full is not None:
                row = acc_full[u]
                for j, s_j in enumerate(self.shocked[u]):
                    row[j] += e * (s_j - spot)
            else:
                assert acc_witness is not None
                acc, witness = acc_witness
                acc[u] += e * (self.shocked[u][witness[u]] - spot)
        return value

    def _finish(
        self, pf: Portfolio, equity: int, losses: list[int], witness: list[int]
    ) -> MarginResult:
        total = sum(losses)
        credit = mul_down(total - max(losses), self.params.correlation_credit)
        cont = self.contingencies(pf)
        mm = total - credit + cont
        im = mul_up(mm, self.params.im_factor)
        state = LIQUIDATABLE if equity < mm else MARGIN_CALL if equity < im else HEALTHY
        return MarginResult(equity, mm, im, cont, credit, state, losses, witness)

    def contingencies(self, pf: Portfolio) -> int:
        """Σ over underlyings of short-option, calendar-basis and vega-offset charges."""
        total = 0
        for u, up in enumerate(self.params.underlyings):
            spot = self.market.spots[u]
            shorts: dict[tuple[int, int], int] = {}
            fut: dict[int, int] = {}
            vega: dict[int, int] = {}
            for pos in pf.positions:
                if pos.underlying != u:
                    continue
                if pos.kind == FUTURE:
                    fut[pos.expiry] = fut.get(pos.expiry, 0) + pos.quantity
                    continue
                k = (pos.kind, pos.strike)
                shorts[k] = shorts.get(k, 0) + pos.quantity
                v = mul_down(pos.quantity, self.row(pos).vega_base)
                vega[pos.expiry] = vega.get(pos.expiry, 0) + v
            for net in shorts.values():
                if net < 0:
                    total += mul_up(mul_up(-net, spot), up.short_option_charge)
            f_long = sum(x for x in fut.values() if x > 0)
            f_short = -sum(x for x in fut.values() if x < 0)
            offset = min(f_long, f_short)
            if offset > 0:
                total += mul_up(mul_up(offset, spot), up.calendar_charge)
            v_long = sum(x for x in vega.values() if x > 0)
            v_short = -sum(x for x in vega.values() if x < 0)
            offset = min(v_long, v_short)
            if offset > 0:
                total += mul_up(mul_up(offset, spot), up.vega_charge)
        return total


def full_check(pf: Portfolio, market: Market, params: RiskParams) -> MarginResult:
    """One-shot full check (builds a private table; share a ScenarioTable for many accounts)."""
    return ScenarioTable(market, params).full_check(pf)


def witness_check(
    pf: Portfolio, market: Market, params: RiskParams, witness: list[int]
) -> MarginResult:
    return ScenarioTable(market, params).witness_check(pf, witness)
