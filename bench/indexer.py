"""Indexer figures: a backfill's blocks/s and logs/s on anvil, SQLite and PostgreSQL.

    .venv/bin/python -m bench.indexer [--rounds 40] [--traders 16] [--gap 10]
        [--pg postgresql://postgres@127.0.0.1:5432/test]

Builds a history on a fresh anvil (the protocol's deployment, then rounds of trades,
transfers and withdrawals by ``traders`` accounts, ``gap`` empty blocks after each round),
then indexes it from the deployment block into a fresh store, for a few chunk sizes; the
node is reached through the counting proxy, so the JSON-RPC round trips are counted too.
Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from web3 import Web3

from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.deployment import Deployment, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.activity import build_history
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.indexer import Indexer
from keeper.store import Store


def run(url: str, proxy: CountingProxy, d: Deployment, chunk: int) -> dict[str, Any]:
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
    return {
        "chunk": chunk,
        "blocks": blocks,
        "logs": res.logs,
        "seconds": round(dt, 3),
        "blocks_per_s": round(blocks / dt),
        "logs_per_s": round(res.logs / dt),
        "http_round_trips": proxy.requests,
        "consistency_accounts": report.accounts_checked,
        "consistency_ms": round(dc * 1e3),
        "consistent": report.ok,
    }


def _line(r: dict[str, Any]) -> str:
    return (
        f"chunk {r['chunk']:>5}: {r['blocks']} blocks, {r['logs']} logs in {r['seconds']:.2f} s"
        f" = {r['blocks_per_s']:,} blocks/s, {r['logs_per_s']:,} logs/s, "
        f"{r['http_round_trips']} HTTP round trips; consistency check of "
        f"{r['consistency_accounts']} accounts {r['consistency_ms']} ms ok={r['consistent']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--traders", type=int, default=16)
    ap.add_argument("--gap", type=int, default=10)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    ensure_built()
    out: dict[str, Any] = {}
    with Anvil(accounts=args.traders + 4) as node, CountingProxy(node.url) as proxy:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3)
        t0 = time.perf_counter()
        build_history(w3, d, traders=args.traders, rounds=args.rounds, gap_blocks=args.gap)
        out["history_blocks"] = w3.eth.block_number
        out["history_build_s"] = round(time.perf_counter() - t0, 1)
        if not args.json:
            print(f"history: {out['history_blocks']} blocks built in {out['history_build_s']} s")
        with tempfile.TemporaryDirectory() as tmp:
            for chunk in (2000, 100):
                url = f"sqlite:///{Path(tmp) / f'bench-{chunk}.db'}"
                out[f"sqlite_chunk_{chunk}"] = r = run(url, proxy, d, chunk)
                if not args.json:
                    print("sqlite    ", _line(r))
        if not args.no_pg:
            import psycopg

            schema = f"keeper_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.pg, autocommit=True) as admin:
                admin.execute(f'CREATE SCHEMA "{schema}"')
                try:
                    url = f"{args.pg}?options=-csearch_path%3D{schema}"
                    out["postgresql_chunk_2000"] = r = run(url, proxy, d, 2000)
                    if not args.json:
                        print("postgresql", _line(r))
                finally:
                    admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
