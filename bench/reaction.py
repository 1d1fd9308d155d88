"""Reaction benchmark: blocks and milliseconds from an oracle crash being mined to the keeper's
liquidation being mined, on anvil with interval mining (1-second blocks by default).

Each round seeds one fresh under-water-on-crash account (a naked short put sized just above its
initial margin), crashes the price in one transaction, waits for the keeper's Liquidation of
that account, then restores the price. The keeper runs as the real service (KeeperService in a
thread, SQLite store), polling the head by number.

    .venv/bin/python -m bench.reaction --rounds 50 --block-time 1
Prints p50/p99/max in blocks and milliseconds, plus RPC calls per processed block (the keeper
talks to anvil through a counting proxy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from web3 import Web3
from web3.types import RPCEndpoint

from bench.keeper_setup import bench_keeper_config
from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.deployment import bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import seed_market
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.service import KeeperService
from margin.portfolio import Market
from margin.portfolio_margin import ScenarioTable


def percentile(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def _anvil(w3: Web3, method: str, *params: object) -> object:
    """An anvil control call; an error answer is an error here, not a silently ignored dict."""
    reply = w3.provider.make_request(RPCEndpoint(method), list(params))
    if "error" in reply:
        raise RuntimeError(f"{method}{list(params)}: {reply['error']}")
    return reply.get("result")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--block-time", type=int, default=1, help="seconds (anvil takes whole seconds)")
    ap.add_argument("--accounts", type=int, default=50, help="background accounts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.environ.get("BENCH_LOG"):
        from keeper.logs import configure_logging

        configure_logging("INFO", open(os.environ["BENCH_LOG"], "w"))  # noqa: SIM115
    ensure_built()
    tmp = Path(tempfile.mkdtemp(prefix="bench-reaction-"))
    with Anvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3)
        d.write(tmp / "deployment.json")
        chain = Chain.connect(anvil.url, d)
        seed_market(w3, d, chain, args.accounts, seed=5)
        proxy = CountingProxy(anvil.url)
        proxy.__enter__()
        cfg = bench_keeper_config(
            proxy.url, anvil.chain_id, tmp, poll=0.05, confirmations=1, watchdog=120
        )
        service = KeeperService(cfg)
        thread = threading.Thread(target=lambda: service.run(install_signals=False), daemon=True)
        ch = bind(w3, d, "ClearingHouse")
        feed_abi = bind(w3, d, "MockAggregator:ETH/USD").abi
        _anvil(w3, "evm_setIntervalMining", args.block_time)
        thread.start()
        while service.health.last_block is None:
            time.sleep(0.1)
        blocks: list[int] = []
        millis: list[float] = []
        proxy.reset()
        ticks_before = _count(service)
        for r in range(args.rounds):
            # A fresh victim at today's price (automine for the setup, then back to interval).
            _anvil(w3, "evm_setIntervalMining", 0)
            _anvil(w3, "evm_setAutomine", True)
            victim = seed_market(
                w3, d, chain, 1, seed=1000 + r, maker_usdc=1, kinds=["levered_perp"]
            ).accounts[0]
            _anvil(w3, "evm_setAutomine", False)
            _anvil(w3, "evm_setIntervalMining", args.block_time)
            # The victim's underlying (ETH or BTC): its price feed crashes, its vol feed gets
            # a fresh round at the same value (both must be fresh for the checks).
            price_feed, vol_feed = feeds_of(chain, victim.account)
            feed = w3.eth.contract(address=Web3.to_checksum_address(price_feed), abi=feed_abi)
            vol = w3.eth.contract(address=Web3.to_checksum_address(vol_feed), abi=feed_abi)
            base = int(feed.functions.answer().call())
            crash = crash_answer(chain, victim.account, base)
            h = feed.functions.setAnswer(crash).transact({"from": w3.eth.accounts[0]})
            vol.functions.setAnswer(int(vol.functions.answer().call())).transact(
                {"from": w3.eth.accounts[0]}
            )
            rc = w3.eth.wait_for_transaction_receipt(h, timeout=60, poll_latency=0.01)
            t_crash = time.perf_counter()
            crash_block = rc["blockNumber"]
            event = ch.events.Liquidation()
            found = None
            deadline = time.monotonic() + 30
            while found is None and time.monotonic() < deadline:
                logs = event.get_logs(
                    from_block=crash_block, argument_filters={"account": victim.account}
                )
                if logs:
                    found = logs[0]
                    break
                time.sleep(0.01)
            if found is None:
                print(
                    f"round {r}: no liquidation within 30 s (crash block {crash_block})",
                    file=sys.stderr,
                )
                assert service.store is not None
                for dec in service.store.decisions_for(str(victim.account))[-6:]:
                    print(
                        f"  block {dec.block_number} {dec.state} {dec.action} "
                        f"eq={dec.equity} req={dec.requirement} outcome={dec.outcome}",
                        file=sys.stderr,
                    )
                continue
            t_liq = time.perf_counter()
            blocks.append(found["blockNumber"] - crash_block)
            millis.append((t_liq - t_crash) * 1000)
            h = feed.functions.setAnswer(base).transact({"from": w3.eth.accounts[0]})
            w3.eth.wait_for_transaction_receipt(h, timeout=60)
        service.stop()
        thread.join(60)
        ticks = _count(service) - ticks_before
        requests, calls = proxy.requests, proxy.calls
        methods: dict[str, int] = {}
        for m in proxy.methods:
            methods[m] = methods.get(m, 0) + 1
        proxy.__exit__(None, None, None)
        chain.close()
    res = {
        "rounds": args.rounds,
        "liquidated": len(blocks),
        "block_time_s": args.block_time,
        "blocks_p50": percentile(blocks, 50) if blocks else None,
        "blocks_p99": percentile(blocks, 99) if blocks else None,
        "blocks_max": max(blocks) if blocks else None,
        "ms_p50": round(percentile(millis, 50), 1) if millis else None,
        "ms_p99": round(percentile(millis, 99), 1) if millis else None,
        "mean_blocks": round(statistics.mean(blocks), 3) if blocks else None,
        "blocks_processed": ticks,
        "http_requests_per_processed_block": round(requests / ticks, 2) if ticks else None,
        "jsonrpc_calls_per_processed_block": round(calls / ticks, 2) if ticks else None,
        "methods": dict(sorted(methods.items(), key=lambda kv: -kv[1])[:8]),
    }
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:34} {v}")
    return 0 if len(blocks) == args.rounds else 1


def feeds_of(chain: Chain, account: int) -> tuple[str, str]:
    """Price and vol feed addresses of the underlying of the account's first position."""
    snap = chain.view().snapshot([account])
    u = snap.inputs(account).portfolio.positions[0].underlying
    cfg = snap.underlyings[u]
    return Web3.to_checksum_address(cfg.price_feed), Web3.to_checksum_address(cfg.vol_feed)


def crash_answer(chain: Chain, account: int, base: int) -> int:
    """The mildest price move (in 0.5% steps, against the position) that leaves ``account``
    with its equity below 60% of its requirement and above 20%: a solvent liquidation with a
    bounty worth the gas (just under the requirement, the penalty on the small fraction that
    restores it would not pay for the gas), the case the keeper races other keepers for.
    Evaluated with the exact engine at the current block."""
    snap = chain.view().snapshot([account])
    inp = snap.inputs(account)
    pos = inp.portfolio.positions[0]
    u = pos.underlying
    scale = inp.market.spots[u] // base  # feed answer -> WAD spot
    for step in range(1, 100):
        f = 1 - step / 200 if pos.quantity > 0 else 1 + step / 200
        answer = round(base * f)
        spots = list(inp.market.spots)
        spots[u] = answer * scale
        m = Market(inp.market.timestamp, inp.market.rate, tuple(spots), inp.market.vols)
        r = ScenarioTable(m, snap.risk_params).full_check(inp.portfolio)
        if 10 * r.equity < 6 * r.requirement:
            if 5 * r.equity < r.requirement:
                raise RuntimeError(f"account {account}: no solvent liquidatable price found")
            return answer
    raise RuntimeError(f"account {account}: still healthy after a 50% move")


def _count(service: KeeperService) -> int:
    for fam in service.metrics.block_seconds.collect():
        for s in fam.samples:
            if s.name.endswith("_count"):
                return int(s.value)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
