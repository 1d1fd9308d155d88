"""Store figures: decisions and transactions written per second, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.store [--n 500] [--pg postgresql://postgres@127.0.0.1:5432/test]

Each backend gets a fresh database (a temporary SQLite file; a temporary PostgreSQL schema,
dropped after). Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from keeper.store import Decision, Store, Transaction

WAD = 10**18


def run(url: str, n: int) -> dict[str, float]:
    with Store.open(url) as store:
        t0 = time.perf_counter()
        ids: list[int] = []
        for i in range(n):
            d = store.add_decision(
                Decision(block_number=i, block_hash="0x" + "00" * 32, account="0x" + "11" * 20,
                         inputs_digest="0x" + "22" * 32,
                         loss_matrix={"ETH": [k * WAD for k in range(-40, 41)]},
                         requirement=2**200, initial_margin=2**201, equity=-(2**200),
                         witness={"ETH": 3}, state="liquidatable", action="liquidate")
            )  # fmt: skip
            assert d.id is not None
            ids.append(d.id)
        t1 = time.perf_counter()
        sender = "0x" + "ab" * 20
        store.set_next_nonce(sender, 0)
        for i in ids:
            store.insert_transaction(
                Transaction(decision_id=i, sender=sender, to=sender, gas_limit=21_000,
                            chain_id=1)
            )  # fmt: skip
        t2 = time.perf_counter()
        assert len(store.open_transactions(sender)) == n  # one scan over n open txs
        t3 = time.perf_counter()
    return {
        "decision/s": n / (t1 - t0),
        "tx+nonce/s": n / (t2 - t1),
        f"scan of {n} open ms": (t3 - t2) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fig = run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.n)
        print("sqlite    ", "  ".join(f"{k} {v:,.0f}" for k, v in fig.items()))
    import psycopg

    schema = f"keeper_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            fig = run(f"{args.pg}?options=-csearch_path%3D{schema}", args.n)
            print("postgresql", "  ".join(f"{k} {v:,.0f}" for k, v in fig.items()))
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
