"""A crash at venue size: blocks from the crash to the keeper's first liquidation, and
liquidations per block after it.

A fresh anvil with the protocol and ``n`` accounts seeded through the devnet batch seeder
(keeper.devnet.venue.seed_venue, the devnet market's engine-sized books). The keeper runs as the
real service (KeeperService in a thread, SQLite store, the bench signer: ``keeper run``'s code
path, keeper/core.py and the whole-book engine of keeper/book_engine.py) and the chain mines on
an interval (``--block-time``, 1 s by default). After a few quiet blocks both underlyings' prices
fall by ``--crash`` in one block. Measured from the chain (the clearing house's Liquidation and
MarginCall logs), not from the keeper's own reports:

* blocks from the crash block to the block of the first Liquidation (1 = the next block);
* Liquidations per block over the following blocks, the block gas they used, and the order of
  value: the mean credited bounty of the first block's liquidations against the later ones';
* the keeper's per-block wall time around the crash (``KeeperService.recent``).

At 100,000 accounts anvil 1.7.1 itself needs seconds per block (it rebuilds the whole state
trie for every block: BENCHMARKS.md, "The keeper service"); the figures in blocks stay
meaningful, the wall-clock interval does not hold. Prints figures only; nothing is asserted.

    .venv/bin/python -m bench.crash [--accounts 10000] [--crash 0.3] [--after 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hexbytes import HexBytes
from web3 import Web3
from web3.types import TxParams

from bench.keeper_setup import bench_keeper_config
from bench.rpc_per_block import _pct, _wait_block
from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.deployment import bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.venue import seed_venue
from keeper.service import KeeperService


def run(
    n_accounts: int = 10_000,
    crash: float = 0.3,
    after: int = 10,
    block_time: int = 1,
    poll: float = 0.2,
    seed: int = 3,
) -> dict[str, Any]:
    ensure_built()
    tmp = Path(tempfile.mkdtemp(prefix="bench-crash-"))
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 600}))
        d = deploy_protocol(w3)
        d.write(tmp / "deployment.json")
        ch = bind(w3, d, "ClearingHouse")
        t_seed = time.perf_counter()
        seed_venue(w3, d, Chain.connect(node.url, d), n_accounts, seed=seed)
        seed_s = time.perf_counter() - t_seed
        prices = [bind(w3, d, f"MockAggregator:{u['symbol']}/USD") for u in d.underlyings]
        vols = [bind(w3, d, f"MockAggregator:{u['symbol']}/IV") for u in d.underlyings]
        admin = w3.eth.accounts[0]
        cfg = bench_keeper_config(
            node.url, node.chain_id, tmp, poll=poll, confirmations=2, watchdog=600
        )
        service = KeeperService(cfg)
        thread = threading.Thread(target=lambda: service.run(install_signals=False), daemon=True)
        t_open = time.perf_counter()
        thread.start()
        while service.health.last_block is None:
            if not thread.is_alive():
                raise RuntimeError("the keeper stopped during start-up")
            time.sleep(0.05)
        startup_s = time.perf_counter() - t_open
        node.rpc("evm_setIntervalMining", [block_time])

        def fresh_rounds(scale: float) -> None:
            """New rounds of every feed (the keeper needs fresh answers), prices scaled."""
            tx: TxParams = {"from": admin, "gas": 200_000}
            for f in prices:
                f.functions.setAnswer(round(int(f.functions.answer().call()) * scale)).transact(tx)
            for f in vols:
                f.functions.setAnswer(int(f.functions.answer().call())).transact(tx)

        head = int(w3.eth.block_number)
        for _ in range(3):  # quiet blocks: the keeper holds the whole book
            head = _wait_block(w3, head, 120.0)
            fresh_rounds(1.0)
        head = _wait_block(w3, head, 120.0)
        reports0 = len(service.recent)
        fresh_rounds(1.0 - crash)
        crash_block = _wait_block(w3, head, 120.0)
        # Rounds keep coming every block, as on a live venue (the liquidation age bound).
        last = crash_block
        while last < crash_block + after:
            last = _wait_block(w3, last, 120.0)
            fresh_rounds(1.0)
        deadline = time.monotonic() + 600
        while (service.health.last_block or 0) < last and time.monotonic() < deadline:
            time.sleep(0.1)
        reports = [r for r in list(service.recent)[reports0:]]
        service.stop()
        thread.join(120)

        # Topics as bytes: the logs carry HexBytes, which never equal a hex string.
        liq_topic = HexBytes(ch.events.Liquidation().topic)
        call_topic = HexBytes(ch.events.MarginCall().topic)
        logs = w3.eth.get_logs(
            {
                "fromBlock": crash_block,
                "toBlock": last,
                "address": ch.address,
                "topics": [[liq_topic, call_topic]],
            }
        )
        per_block: dict[int, list[int]] = {}
        flags: dict[int, int] = {}
        for log in logs:
            if bytes(log["topics"][0]) == liq_topic:
                ev = ch.events.Liquidation().process_log(log)
                per_block.setdefault(log["blockNumber"], []).append(int(ev["args"]["bounty"]))
            else:
                flags[log["blockNumber"]] = flags.get(log["blockNumber"], 0) + 1
        gas = {n: int(w3.eth.get_block(n)["gasUsed"]) for n in range(crash_block, last + 1)}
        gas_limit = int(w3.eth.get_block(last)["gasLimit"])

    first = min(per_block, default=None)
    counts = [len(per_block.get(n, [])) for n in range(first, last + 1)] if first else []
    first_bounties = per_block.get(first, []) if first else []
    later = [b for n, bs in per_block.items() if n != first for b in bs]
    secs = [r.seconds for r in reports if r.processed]
    return {
        "accounts": n_accounts,
        "seed_s": round(seed_s, 1),
        "startup_s": round(startup_s, 1),
        "crash": crash,
        "crash_block": crash_block,
        "blocks_to_first_liquidation": (first - crash_block) if first else None,
        "liquidations_total": sum(counts),
        "liquidations_per_block": counts,
        "margin_calls_total": sum(flags.values()),
        "block_gas_used_after_first": [gas[n] for n in range(first, last + 1)] if first else [],
        "block_gas_limit": gas_limit,
        "mean_bounty_first_block_usdc": round(sum(first_bounties) / len(first_bounties) / 1e18, 2)
        if first_bounties
        else None,
        "mean_bounty_later_usdc": round(sum(later) / len(later) / 1e18, 2) if later else None,
        "keeper_blocks_processed": len(secs),
        "keeper_block_ms_p50": round(1000 * _pct(secs, 50), 1),
        "keeper_block_ms_max": round(1000 * max(secs, default=float("nan")), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--crash", type=float, default=0.3, help="fraction both prices fall")
    ap.add_argument("--after", type=int, default=10, help="blocks watched after the crash")
    ap.add_argument("--block-time", type=int, default=1, help="seconds (anvil takes whole ones)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = run(a.accounts, a.crash, a.after, a.block_time)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:<36} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
