"""Simulating a crash's actions: ``eth_simulateV1`` against ``eth_call`` + ``eth_estimateGas``.

A fresh anvil with ``n`` accounts seeded through the devnet batch seeder; both underlyings fall
by ``--crash``. The keeper's own per-block step (KeeperCore.on_block, dry run) decides the
crash block's actions; the chunks of ``SIMULATION_CHUNK`` actions it would simulate are then
simulated again and again by keeper.simulation.Simulator, the code ``keeper run`` calls, both
ways, alternating, on the same chain state. Prints per-chunk wall time of each way (p50 / p90)
and their ratio, measured in the same process (the machine's load affects both alike), and
checks that both ways agree on every verdict. Nothing is asserted.

    .venv/bin/python -m bench.simulation [--accounts 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from web3 import Web3

from bench.rpc_per_block import _pct
from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.chain.view import ProtocolSnapshot
from keeper.core import KeeperCore
from keeper.deployment import bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.venue import seed_venue
from keeper.pipeline.execute import SIMULATION_CHUNK, Executor
from keeper.pipeline.types import BlockReport, Candidate, DecisionPolicy
from keeper.simulation import Simulator
from keeper.store import Store

#: anvil's ninth dev account: any funded address works, simulations are not sent.
SENDER = "0xa0Ee7A142d267C1f36714E5a8F75612F20a79720"


class _Decided(Executor):
    """The keeper's execute stage, keeping the chunks it hands to the simulation."""

    chunks: list[list[Candidate]]

    def execute(self, snap: ProtocolSnapshot, due: list[Candidate], report: BlockReport) -> None:
        self.chunks.append(list(due))
        super().execute(snap, due, report)


def run(
    n_accounts: int = 10_000, crash: float = 0.3, rounds: int = 5, seed: int = 3
) -> dict[str, Any]:
    ensure_built()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 600}))
        d = deploy_protocol(w3)
        market = seed_venue(w3, d, Chain.connect(node.url, d), n_accounts, seed=seed)
        admin = w3.eth.accounts[0]
        for u in d.underlyings:
            price = bind(w3, d, f"MockAggregator:{u['symbol']}/USD")
            vol = bind(w3, d, f"MockAggregator:{u['symbol']}/IV")
            answer = int(price.functions.answer().call())
            price.functions.setAnswer(round(answer * (1 - crash))).transact({"from": admin})
            vol.functions.setAnswer(int(vol.functions.answer().call())).transact({"from": admin})
        chain = Chain.connect(node.url, d, timeout=600)
        store = Store.open(f"sqlite:///{tmp / 'k.db'}")
        policy = DecisionPolicy(min_profit=0)
        core = KeeperCore(chain, store, None, policy, liquidator=SENDER)
        decided = core.executor = _Decided(chain, store, None, policy, liquidator=SENDER)
        decided.chunks = []
        view = chain.view()
        known = [a.account for a in market.accounts] + [market.maker]
        core.on_block(view, set(), known, market_changed=True)
        chunks = [
            [{"from": SENDER, "to": chain.clearing_house, "data": c.data} for c in ch]
            for ch in decided.chunks
        ]
        chunks = [c for c in chunks if len(c) == SIMULATION_CHUNK]
        fast = Simulator(chain.rpc, gas_margin_percent=20)
        slow = Simulator(chain.rpc, gas_margin_percent=20)
        slow.simulate_v1 = False
        times: dict[str, list[float]] = {"eth_simulateV1": [], "eth_estimateGas": []}
        disagree = 0
        for _ in range(rounds):
            for txs in chunks:
                got = {}
                for sim in (fast, slow):
                    t = time.perf_counter()
                    out = sim.run(txs)
                    times[out.method].append(time.perf_counter() - t)
                    got[out.method] = [v.error is None for v in out.verdicts]
                disagree += sum(
                    a != b
                    for a, b in zip(got["eth_simulateV1"], got["eth_estimateGas"], strict=True)
                )
        store.close()
    f, s = times["eth_simulateV1"], times["eth_estimateGas"]
    return {
        "accounts": n_accounts,
        "chunks_of_32": len(chunks),
        "simulated_chunks_each_way": len(f),
        "simulate_v1_ms_p50_p90": [round(1000 * _pct(f, 50), 1), round(1000 * _pct(f, 90), 1)],
        "call_estimate_ms_p50_p90": [round(1000 * _pct(s, 50), 1), round(1000 * _pct(s, 90), 1)],
        "ratio_p50": round(_pct(s, 50) / _pct(f, 50), 2) if f else None,
        "verdicts_that_differ": disagree,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--crash", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON line (bench/run_all.py)")
    args = ap.parse_args()
    r = run(args.accounts, args.crash, args.rounds)
    if args.json:
        print(json.dumps(r))
        return 0
    for k, v in r.items():
        print(f"{k:<36} {json.dumps(v)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
