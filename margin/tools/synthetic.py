"""Deterministic synthetic books for benchmarks and tests (no I/O, seeded ``random``).

A market of four underlyings (two Deribit-like, two SPAN-like grids), stable and volatile
collateral, ~250 live instruments per underlying (futures at five expiries, calls and puts on
a strike ladder at six expiries), and accounts holding 2-3 underlyings with ~10 positions,
mixing naked, spread and hedged legs. Collateral is sized from the notional with a spread wide
enough that a few percent of accounts are in margin call or liquidatable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from margin.params import DAY, STABLE, WAD, AssetParams, RiskParams, deribit_like, span_like
from margin.portfolio import CALL, FUTURE, PUT, Market, Portfolio, Position

T0 = 1_800_000_000
SPOTS = (3_000 * WAD, 60_000 * WAD, 150 * WAD, 30 * WAD)
VOLS = (6 * 10**17, 5 * 10**17, 9 * 10**17, 7 * 10**17)
OPTION_EXPIRIES_DAYS = (2, 7, 30, 60, 90, 180)
FUTURE_EXPIRIES_DAYS = (0, 30, 90, 180, 365)  # 0: perpetual
STRIKES = 20  # per expiry and kind: 2 × 6 × 20 + 5 = 245 instruments per underlying


@dataclass(frozen=True)
class SyntheticBook:
    market: Market
    params: RiskParams
    portfolios: list[Portfolio]
    instruments: list[tuple[int, int, int, int]]


def market() -> Market:
    return Market(T0, 3 * 10**16, SPOTS, VOLS)


def params() -> RiskParams:
    return RiskParams(
        (deribit_like(), deribit_like(), span_like(), span_like()),
        (AssetParams(0, STABLE), AssetParams(10**17, 0), AssetParams(15 * 10**16, 1)),
        3 * 10**17,
        125 * 10**16,
    )


def instruments() -> list[tuple[int, int, int, int]]:
    out = []
    for u, spot in enumerate(SPOTS):
        for d in FUTURE_EXPIRIES_DAYS:
            out.append((u, FUTURE, 0, T0 + d * DAY if d else 0))
        for d in OPTION_EXPIRIES_DAYS:
            for kind in (CALL, PUT):
                for i in range(STRIKES):
                    strike = spot * (50 + 5 * i) // 100  # 50% .. 145% of spot
                    out.append((u, kind, strike, T0 + d * DAY))
    return out


def book(n_accounts: int, seed: int = 7, avg_positions: int = 10) -> SyntheticBook:
    rng = random.Random(seed)
    insts = instruments()
    by_u: dict[int, list[tuple[int, int, int, int]]] = {}
    for ins in insts:
        by_u.setdefault(ins[0], []).append(ins)
    n_u = len(SPOTS)
    portfolios = []
    for _ in range(n_accounts):
        held = rng.sample(range(n_u), rng.choice((2, 2, 3)))
        n_pos = max(1, min(40, int(rng.gauss(avg_positions, 3))))
        positions = []
        notional = 0
        for _ in range(n_pos):
            u = rng.choice(held)
            ins = rng.choice(by_u[u])
            contracts = rng.choice((1, 2, 5, 10, 20, 50)) * WAD // rng.choice((1, 10, 100))
            # Scale so every underlying trades a similar notional per position.
            q = contracts * (60_000 * WAD // SPOTS[u]) // 10
            q = q if rng.random() < 0.55 else -q
            entry = 0 if ins[1] == FUTURE else SPOTS[u] // rng.randrange(20, 200)
            if ins[1] == FUTURE:
                entry = SPOTS[u] * rng.randrange(95, 106) // 100
            positions.append(Position(*ins, quantity=q, entry_price=entry))
            notional += abs(q) * SPOTS[u] // WAD
        # Collateral: 50% .. 316% of notional (log-uniform), part in volatile assets.
        margin = int(notional * 10 ** rng.uniform(-0.3, 0.5))
        eth = rng.choice((0, 0, 1)) * margin // 4 * WAD // SPOTS[0]
        btc = rng.choice((0, 0, 1)) * margin // 4 * WAD // SPOTS[1]
        portfolios.append(Portfolio(tuple(positions), (margin, eth, btc)))
    return SyntheticBook(market(), params(), portfolios, insts)
