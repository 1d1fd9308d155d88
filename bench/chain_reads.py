"""RPC round trips (and wall time) of one block snapshot for N accounts, on a fresh anvil.

Deploys the protocol, opens max(N) accounts holding three positions each (ETH perp, call,
put), then for each N takes ``Chain.view().snapshot(N accounts)`` through a counting HTTP proxy
and prints the HTTP round trips (header fetch included), the eth_calls inside them, the time,
and the time of the Python full checks of those accounts from the snapshot.

    .venv/bin/python -m bench.chain_reads [N ...]      (default: 10 200)
"""

from __future__ import annotations

import sys
import time

from web3 import Web3

from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.deployment import account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.orders import dev_matcher

WAD = 10**18


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 200]
    ensure_built()
    with Anvil() as node, CountingProxy(node.url) as proxy:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3)
        ch, usdc = bind(w3, d, "ClearingHouse"), bind(w3, d, "MockERC20:USDC")
        matcher, owner, bob = list(w3.eth.accounts)[:3]
        for who in (owner, bob):
            usdc.functions.mint(who, 10**15).transact({"from": who})
            usdc.functions.approve(ch.address, 10**15).transact({"from": who})
        b = account_id(bob)
        ch.functions.deposit(b, 0, 10**14).transact({"from": bob})
        eth = [i for i in d.instruments if i["underlying"] == 0]
        perp = next(i["id"] for i in eth if i["expiry"] == 0)
        call = next(i["id"] for i in eth if i["kind"] == "call" and i["strike"] == 3250 * WAD)
        put = next(i["id"] for i in eth if i["kind"] == "put" and i["strike"] == 2750 * WAD)
        accounts = [account_id(owner, s) for s in range(1, max(sizes) + 1)]
        orders = dev_matcher(w3, ch)
        t0 = time.perf_counter()
        for a in accounts:
            ch.functions.deposit(a, 0, 5000 * 10**6).transact({"from": owner, "gas": 300_000})
            for iid, price in ((perp, 3000), (call, 100), (put, 60)):
                orders.trade(a, b, iid, WAD // 10, price * WAD).transact(
                    {"from": matcher, "gas": 5_000_000}
                )
        print(f"seeded {len(accounts)} accounts x 3 positions in {time.perf_counter() - t0:.1f} s")
        chain = Chain.connect(proxy.url, d)
        chain.view().snapshot(accounts[:1])  # warm: the layout guess comes from the chain now
        print("N accounts | HTTP round trips | JSON-RPC calls | snapshot s | python full checks s")
        for n in sizes:
            proxy.reset()
            t = time.perf_counter()
            snap = chain.view().snapshot(accounts[:n])
            dt = time.perf_counter() - t
            rt, calls = proxy.requests, proxy.calls
            # Transactions were sent with explicit gas (no estimate, so no exception on a
            # revert): check that every account really holds its three positions.
            assert all(len(snap.accounts[a].positions) == 3 for a in accounts[:n])
            t = time.perf_counter()
            for a in accounts[:n]:
                snap.full_check(a)
            dc = time.perf_counter() - t
            print(f"{n:10d} | {rt:16d} | {calls:14d} | {dt:10.3f} | {dc:.3f}")


if __name__ == "__main__":
    main()
