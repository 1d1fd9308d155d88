"""Indexer figures: a backfill's blocks/s and logs/s on anvil, SQLite and PostgreSQL.

    .venv/bin/python scripts/bench_indexer.py [--rounds 40] [--traders 16] [--gap 10]
        [--pg postgresql://postgres@127.0.0.1:5432/test]

Builds a history on a fresh anvil (the protocol's deployment, then rounds of trades,
transfers and withdrawals by ``traders`` accounts, ``gap`` empty blocks after each round),
then indexes it from the deployment block into a fresh store, for a few chunk sizes; the
node is reached through the counting proxy, so the JSON-RPC round trips are counted too.
Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from web3 import Web3

from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.deployment import Deployment, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.activity import build_history
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.indexer import Indexer
from keeper.store import Store


def run(url: str, proxy: CountingProxy, d: Deployment, chunk: int) -> str:
    chain = Chain.connect(proxy.url, d)
    head = chain.head()
    with Store.open(url) as store:
        proxy.reset()
        ix = Indexer(chain, store, confirmations=12, chunk_blocks=chunk)
        t0 = time.perf_counter()
        res = ix.sync(head)
        dt = time.perf_counter() - t0
        blocks = res.to_block - res.from_block + 1
        t1 = time.perf_counter()
        report = ix.check_consistency(chain.view(head))
        dc = time.perf_counter() - t1
    return (
        f"chunk {chunk:>5}: {blocks} blocks, {res.logs} logs in {dt:.2f} s = "
        f"{blocks / dt:,.0f} blocks/s, {res.logs / dt:,.0f} logs/s, "
        f"{proxy.requests} HTTP round trips; consistency check of "
        f"{report.accounts_checked} accounts {dc * 1e3:.0f} ms ok={report.ok}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--traders", type=int, default=16)
    ap.add_argument("--gap", type=int, default=10)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    ensure_built()
    with Anvil(accounts=args.traders + 4) as node, CountingProxy(node.url) as proxy:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3)
        t0 = time.perf_counter()
        build_history(w3, d, traders=args.traders, rounds=args.rounds, gap_blocks=args.gap)
        print(f"history: {w3.eth.block_number} blocks built in {time.perf_counter() - t0:.1f} s")
        with tempfile.TemporaryDirectory() as tmp:
            for chunk in (2000, 100):
                url = f"sqlite:///{Path(tmp) / f'bench-{chunk}.db'}"
                print("sqlite    ", run(url, proxy, d, chunk))
        import psycopg

        schema = f"keeper_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
            try:
                url = f"{args.pg}?options=-csearch_path%3D{schema}"
                print("postgresql", run(url, proxy, d, 2000))
            finally:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
