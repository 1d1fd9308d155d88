"""Explanation of a loaded portfolio file: every figure of the margin check, as a JSON-ready dict.

Pure (no I/O): ``keeper margin`` reads the file, :func:`explain` builds the dict, the CLI prints
it as JSON or as tables. Exact engine figures (money, prices, quantities) are exact decimal
strings of their WAD integers ("1234.5", "-0.000000000000000001"), so
``Decimal(s).scaleb(18)`` gives back the engine's integer; Greeks are floats (approximations,
see margin/tools/greeks.py). Every figure comes from :class:`margin.portfolio_margin.ScenarioTable`, the
engine API the verifier mirrors; nothing is recomputed here except:

* the isolated ("per position") requirement: the full check of a portfolio holding only that
  position and no collateral, plus one leg for the collateral alone (volatile collateral has
  scenario losses of its own). ``capital_saved = Σ legs − portfolio requirement``: what
  portfolio margining saves against margining each leg separately (same parameters, same
  market, same contingency charges);
* Greeks (off-chain only).
"""

from __future__ import annotations

from typing import Any

from margin.fixed_point import mul_down
from margin.tools.greeks import GREEKS_METHOD, ZERO, Greeks, position_greeks
from margin.tools.loader import PortfolioFile
from margin.params import STABLE, VOL_DOWN, VOL_UNCHANGED, VOL_UP, WAD
from margin.portfolio import CALL, FUTURE, Portfolio
from margin.portfolio_margin import STATE_NAMES, MarginResult, ScenarioTable
from margin.portfolio_margin import Scenario

KIND_LABELS = {FUTURE: "future", CALL: "call", 2: "put"}
VOL_STATE_LABELS = {VOL_DOWN: "down", VOL_UNCHANGED: "unchanged", VOL_UP: "up"}


def wad_str(x: int) -> str:
    """Exact decimal string of a WAD integer, without trailing zeros ("1.5", "-2", "0")."""
    sign = "-" if x < 0 else ""
    whole, frac = divmod(abs(x), WAD)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:018d}".rstrip("0")


def scenario_dict(index: int, sc: Scenario, shocked_spot: int, loss: int) -> dict[str, Any]:
    return {
        "index": index,
        "move": wad_str(sc.move),
        "spot": wad_str(shocked_spot),
        "vol_state": VOL_STATE_LABELS[sc.vol_state],
        "extended": sc.extended,
        "weight": wad_str(sc.weight),
        "loss": wad_str(loss),
    }


def _isolated(table: ScenarioTable, pf: Portfolio) -> tuple[list[int], int]:
    """Requirement of each position alone (no collateral), and of the collateral alone."""
    zero = tuple(0 for _ in pf.collateral)
    legs = [table.full_check(Portfolio((p,), zero)).requirement for p in pf.positions]
    collateral_alone = table.full_check(Portfolio((), pf.collateral)).requirement
    return legs, collateral_alone


def explain(pfile: PortfolioFile, table: ScenarioTable | None = None) -> dict[str, Any]:
    """Full check of the file's portfolio, explained. Raises the engine's MarginError (the
    verifier's revert) when the parameters, market or portfolio are rejected.

    ``table``: a ScenarioTable already built for the file's market and parameters (the keeper
    shares one per market state); without it a private one is built."""
    market, params, pf = pfile.market, pfile.params, pfile.portfolio
    if table is None:
        table = ScenarioTable(market, params)
    res: MarginResult = table.full_check(pf)
    legs, collateral_alone = _isolated(table, pf)

    pos_greeks = [position_greeks(p, market) for p in pf.positions]
    n_u = len(params.underlyings)
    under_greeks: list[Greeks] = [ZERO] * n_u
    for p, g in zip(pf.positions, pos_greeks, strict=True):
        under_greeks[p.underlying] = under_greeks[p.underlying] + g

    # Collateral: value after haircut and its delta, as the engine moves it in the scenarios
    # (e = balance·(1 − haircut) floored when positive, the full debt when negative).
    collateral = []
    coll_delta = [0.0] * n_u
    for name, asset, balance in zip(pfile.asset_names, params.assets, pf.collateral, strict=True):
        e = mul_down(balance, WAD - asset.haircut) if balance > 0 else balance
        volatile = asset.underlying != STABLE
        value = mul_down(e, market.spots[asset.underlying]) if volatile else e
        if volatile:
            coll_delta[asset.underlying] += e / WAD
        collateral.append(
            {
                "asset": name,
                "underlying": pfile.underlying_names[asset.underlying] if volatile else None,
                "balance": wad_str(balance),
                "haircut": wad_str(asset.haircut),
                "value": wad_str(value),
            }
        )

    underlyings = []
    for u in range(n_u):
        scs = table.scenarios[u]
        losses = res.scenario_losses[u]
        shocked = table.shocked[u]  # the scenario's spot, as the engine computed it
        w = res.witness[u]
        greeks = under_greeks[u].as_dict()
        if greeks["delta"] is not None:
            greeks["delta"] += coll_delta[u]
        underlyings.append(
            {
                "index": u,
                "name": pfile.underlying_names[u],
                "spot": wad_str(market.spots[u]),
                "vol": wad_str(market.vols[u]),
                "loss": wad_str(res.losses[u]),
                "witness": scenario_dict(w, scs[w], shocked[w], losses[w]),
                "greeks": greeks,
                "collateral_delta": coll_delta[u],
                "scenarios": [
                    scenario_dict(j, sc, shocked[j], loss)
                    for j, (sc, loss) in enumerate(zip(scs, losses, strict=True))
                ],
            }
        )

    positions = []
    for i, (p, g, leg) in enumerate(zip(pf.positions, pos_greeks, legs, strict=True)):
        mark = table.row(p).v0
        assert isinstance(mark, int)  # the full check succeeded, so every mark priced
        positions.append(
            {
                "index": i,
                "underlying": pfile.underlying_names[p.underlying],
                "kind": KIND_LABELS[p.kind],
                "strike": wad_str(p.strike) if p.kind != FUTURE else None,
                "expiry": p.expiry,
                "quantity": wad_str(p.quantity),
                "entry_price": wad_str(p.entry_price),
                "mark": wad_str(mark),
                # The engine's equity term of the position: mul_down(q, V0 − entry).
                "value": wad_str(mul_down(p.quantity, mark - p.entry_price)),
                "isolated_requirement": wad_str(leg),
                # Accrued funding (perpetuals), already in the settlement balance.
                "funding": wad_str(pfile.funding[i] if i < len(pfile.funding) else 0),
                "greeks": g.as_dict(),
            }
        )

    isolated_sum = sum(legs) + collateral_alone
    saved = isolated_sum - res.requirement
    return {
        "timestamp": market.timestamp,
        "rate": wad_str(market.rate),
        "state": STATE_NAMES[res.state],
        "equity": wad_str(res.equity),
        "requirement": wad_str(res.requirement),
        "maintenance_margin": wad_str(res.requirement),
        "initial_margin": wad_str(res.initial_margin),
        "excess_over_initial": wad_str(res.equity - res.initial_margin),
        "sum_of_losses": wad_str(sum(res.losses)),
        "correlation_credit": wad_str(res.credit),
        "contingencies": wad_str(res.contingencies),
        "witness": list(res.witness),
        # The historical set (docs/margin-model.md): ES and each joint scenario's loss.
        "expected_shortfall": wad_str(res.expected_shortfall),
        "historical_losses": [wad_str(x) for x in res.historical_losses],
        "loss_matrix": {
            "underlyings": list(pfile.underlying_names),
            "losses": [[wad_str(x) for x in row] for row in res.scenario_losses],
        },
        "underlyings": underlyings,
        "positions": positions,
        "collateral": collateral,
        "isolated": {
            "positions": [wad_str(x) for x in legs],
            "collateral": wad_str(collateral_alone),
            "sum": wad_str(isolated_sum),
            "portfolio": wad_str(res.requirement),
            "capital_saved": wad_str(saved),
            "saved_fraction": saved / isolated_sum if isolated_sum > 0 else None,
        },
        "greeks_method": GREEKS_METHOD,
    }
