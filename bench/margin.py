"""Benchmark of the Python margin engine: one shared scenario table, many accounts.

Prints the time to price the table (every instrument × scenario once per market state) and the
per-account cost of the full check and of the witness check (integer aggregation only).

    .venv/bin/python -m bench.margin [accounts] [instruments]
"""

from __future__ import annotations

import random
import sys
import time

from margin.params import DAY, STABLE, WAD, AssetParams, RiskParams, deribit_like, span_like
from margin.portfolio import CALL, FUTURE, PUT, Market, Portfolio, Position
from margin.portfolio_margin import ScenarioTable

T0 = 1_800_000_000


def main() -> None:
    accounts = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    n_instruments = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    rng = random.Random(7)
    spots = (3000 * WAD, 60_000 * WAD, 150 * WAD)
    market = Market(T0, 3 * 10**16, spots, (6 * 10**17, 5 * 10**17, 9 * 10**17))
    params = RiskParams(
        (deribit_like(), deribit_like(), span_like()),
        (AssetParams(0, STABLE), AssetParams(10**17, 0), AssetParams(15 * 10**16, 1)),
        3 * 10**17,
        125 * 10**16,
    )
    instruments = []
    for _ in range(n_instruments):
        u = rng.randrange(3)
        kind = rng.choice([FUTURE, CALL, PUT])
        strike = 0 if kind == FUTURE else int(spots[u] * rng.uniform(0.6, 1.6))
        instruments.append((u, kind, strike, T0 + rng.randrange(1, 365) * DAY))
    books = []
    for _ in range(accounts):
        chosen = rng.sample(instruments, rng.randrange(1, 41))
        positions = tuple(
            Position(u, k, s, e, rng.choice([-1, 1]) * rng.randrange(1, 100) * WAD // 10, 0)
            for u, k, s, e in chosen
        )
        books.append(Portfolio(positions, (10**5 * WAD, 2 * WAD, WAD // 10)))

    t = time.perf_counter()
    table = ScenarioTable(market, params)
    for u, k, s, e in instruments:
        table.row(Position(u, k, s, e, 0))
    t_table = time.perf_counter() - t
    scen = sum(len(s) for s in table.scenarios)

    t = time.perf_counter()
    results = [table.full_check(pf) for pf in books]
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    for pf, r in zip(books, results, strict=True):
        table.witness_check(pf, r.witness)
    t_witness = time.perf_counter() - t

    n_positions = sum(len(pf.positions) for pf in books)
    print(
        f"table: {n_instruments} instruments x {scen} scenarios (3 underlyings) "
        f"priced in {t_table:.2f} s"
    )
    print(
        f"full check: {accounts} accounts ({n_positions} positions) in {t_full:.2f} s = "
        f"{1e3 * t_full / accounts:.2f} ms/account"
    )
    print(f"witness check: {1e3 * t_witness / accounts:.2f} ms/account")


if __name__ == "__main__":
    main()
