"""Wall time and RPC round trips of ``keeper replay`` over a range with N accounts and K
oracle rounds, on a fresh anvil (every round is a decision point for every account).

Deploys the protocol, opens N accounts holding three ETH positions each (perp, call, put),
moves the ETH price K times, then replays the whole range through a counting HTTP proxy and
prints blocks, decisions re-derived, HTTP round trips, JSON-RPC calls and seconds.

    .venv/bin/python -m bench.replay [N] [K]      (default: 50 20)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from web3 import Web3

from keeper.artifacts import ensure_built
from keeper.deployment import account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.orders import dev_matcher
from keeper.replay import ReplayOptions, replay

WAD = 10**18


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    ensure_built()
    with Anvil() as node, CountingProxy(node.url) as proxy, tempfile.TemporaryDirectory() as tmp:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3)
        path = Path(tmp) / "deployment.json"
        d.write(path)
        ch, usdc = bind(w3, d, "ClearingHouse"), bind(w3, d, "MockERC20:USDC")
        feed = bind(w3, d, "MockAggregator:ETH/USD")
        matcher, owner, bob = list(w3.eth.accounts)[:3]

        def send(fn: object, sender: str, gas: int = 5_000_000) -> None:
            tx = fn.transact({"from": sender, "gas": gas})  # type: ignore[attr-defined]  # a bound contract function, typed loosely here
            w3.eth.wait_for_transaction_receipt(tx)

        for who in (owner, bob):
            send(usdc.functions.mint(who, 10**15), who)
            send(usdc.functions.approve(ch.address, 10**15), who)
        b = account_id(bob)
        send(ch.functions.deposit(b, 0, 10**14), bob)
        eth = [i for i in d.instruments if i["underlying"] == 0]
        perp = next(i["id"] for i in eth if i["expiry"] == 0)
        call = next(i["id"] for i in eth if i["kind"] == "call" and i["strike"] == 3250 * WAD)
        put = next(i["id"] for i in eth if i["kind"] == "put" and i["strike"] == 2750 * WAD)
        orders = dev_matcher(w3, ch)
        for a in (account_id(owner, s) for s in range(2, n + 2)):
            send(ch.functions.deposit(a, 0, 5000 * 10**6), owner)
            for iid, price in ((perp, 3000), (call, 100), (put, 60)):
                send(orders.trade(a, b, iid, WAD // 10, price * WAD), matcher)
        for i in range(k):
            send(feed.functions.setAnswer((3000 + 5 * (i % 7)) * 10**8), matcher)
        proxy.reset()
        t = time.perf_counter()
        result = replay(ReplayOptions(path, rpc_url=proxy.url))
        dt = time.perf_counter() - t
        print(result.verdict_line())
        print(
            f"{n} accounts, {k} oracle rounds: blocks {result.first}..{result.last}, "
            f"{result.decisions} decisions re-derived and verified in {dt:.2f} s "
            f"({result.decisions / dt:.0f} decisions/s), {proxy.requests} HTTP round trips, "
            f"{proxy.calls} JSON-RPC calls"
        )


if __name__ == "__main__":
    main()
