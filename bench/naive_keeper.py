"""Engine vs the naive keeper on the same on-chain accounts (a fresh anvil, the real protocol).

Deploys the protocol (keeper.deployment.deploy_protocol), opens N accounts holding six
positions each on both underlyings (perp, call, put per underlying; random sizes and strikes),
then, at one block:

* naive keeper: one ``eth_call`` of ``ClearingHouse.marginOf`` per account (the on-chain full
  check), N round trips;
* engine: one batched snapshot read (keeper.chain, reported apart), then the exact margin of
  every account from it: the shared pricing table, and per account either
  ``ScenarioTable.full_check`` or the packed exact engine of margin/tools/sweep.py.

Every engine result is compared to the chain's to the wei before a figure is reported.
Seeding sends its transactions in JSON-RPC batches (anvil mines each on arrival).
"""

from __future__ import annotations

import gc
import json
import random
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from web3 import Web3

from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import model_marks
from keeper.orders import dev_matcher
from margin.portfolio_margin import ScenarioTable
from margin.tools.book import Book
from margin.tools.sweep import MarketPrep, Sweep, exact_account

WAD = 10**18


@dataclass
class NaiveKeeperResult:
    accounts: int
    eth_call_s: float
    snapshot_s: float
    full_check_s: float  # shared table + ScenarioTable.full_check per account
    packed_s: float  # book + market prep + packed exact engine per account
    classify_s: float  # book + market prep + bounded float states, exact for unhealthy ones
    table_s: float
    seed_s: float


def _batch(url: str, calls: list[dict[str, Any]]) -> list[Any]:
    body = [
        {"jsonrpc": "2.0", "id": i, "method": c["method"], "params": c["params"]}
        for i, c in enumerate(calls)
    ]
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        out = json.loads(resp.read())
    errors = [r["error"] for r in out if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} failed sends, first: {errors[0]}")
    return [r["result"] for r in sorted(out, key=lambda r: r["id"])]


def _tx(frm: str, to: str, data: str, nonce: int, gas: int = 6_000_000) -> dict[str, Any]:
    tx = {"from": frm, "to": to, "data": data, "gas": hex(gas), "nonce": hex(nonce)}
    return {"method": "eth_sendTransaction", "params": [tx]}


def seed_accounts(
    node: Anvil, w3: Web3, d: Deployment, n_accounts: int, seed: int = 1
) -> list[int]:
    """``n_accounts`` sub-accounts of one owner, 20,000 USDC each and six positions (perp, call,
    put on both underlyings) against one counterparty; sent in JSON-RPC batches with automine
    off, every receipt checked. Returns the account ids (automine is back on)."""
    rng = random.Random(seed)
    ch, usdc = bind(w3, d, "ClearingHouse"), bind(w3, d, "MockERC20:USDC")
    matcher, owner, bob = list(w3.eth.accounts)[:3]
    for who in (owner, bob):
        w3.eth.wait_for_transaction_receipt(
            usdc.functions.mint(who, 10**17).transact({"from": who})
        )
        w3.eth.wait_for_transaction_receipt(
            usdc.functions.approve(ch.address, 10**17).transact({"from": who})
        )
    b = account_id(bob)
    w3.eth.wait_for_transaction_receipt(ch.functions.deposit(b, 0, 10**16).transact({"from": bob}))
    by_u: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for ins in d.instruments:
        by_u.setdefault(ins["underlying"], {}).setdefault(ins["kind"], []).append(ins)
    marks = model_marks(Chain.connect(node.url, d), d)
    orders = dev_matcher(w3, ch)
    accounts = [account_id(owner, s) for s in range(1, n_accounts + 1)]
    addr = ch.address
    nonces: dict[str, int] = {
        x: w3.eth.get_transaction_count(Web3.to_checksum_address(x), "pending")
        for x in (owner, matcher)
    }

    def tx(frm: str, data: str) -> dict[str, Any]:
        nonce = nonces[frm]
        nonces[frm] += 1
        return _tx(frm, addr, data, nonce)

    deposits = [tx(owner, ch.encode_abi("deposit", [a, 0, 20_000 * 10**6])) for a in accounts]
    trades: list[dict[str, Any]] = []
    for a in accounts:
        for u, lot in ((0, WAD // 10), (1, WAD // 200)):
            legs = [rng.choice(by_u[u][kind]) for kind in ("future", "call", "put")]
            for ins in legs:
                q, price = lot * rng.randint(1, 5), marks[ins["id"]]  # at the model mark
                buyer, seller = (a, b) if rng.random() < 0.5 else (b, a)
                buy, sell = orders.orders(buyer, seller, ins["id"], q, price)
                data = ch.encode_abi("trade", orders.args(buy, sell, q, price))
                trades.append(tx(matcher, data))
    # Automine off: queue everything, then mine until the pool is empty (a block holds
    # thousands of these: the devnet's block gas limit is 1e10). Deposits land first.
    node.rpc("evm_setAutomine", [False])
    for sends in (deposits, trades):
        hashes: list[str] = []
        for i in range(0, len(sends), 250):
            hashes += _batch(node.url, sends[i : i + 250])
        while True:
            node.rpc("evm_mine", [], timeout=600)
            pool = node.rpc("txpool_status", [])
            assert isinstance(pool, dict)
            if int(pool["pending"], 16) == 0 and int(pool["queued"], 16) == 0:
                break
        for i in range(0, len(hashes), 500):
            chunk = hashes[i : i + 500]
            calls = [{"method": "eth_getTransactionReceipt", "params": [h]} for h in chunk]
            receipts = _batch(node.url, calls)
            assert all(r is not None and r["status"] == "0x1" for r in receipts)
    node.rpc("evm_setAutomine", [True])
    return accounts


def run(n_accounts: int = 1000, seed: int = 1) -> NaiveKeeperResult:
    ensure_built()
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 600}))
        d = deploy_protocol(w3)
        ch = bind(w3, d, "ClearingHouse")
        t0 = time.perf_counter()
        accounts = seed_accounts(node, w3, d, n_accounts, seed)
        seed_s = time.perf_counter() - t0

        chain = Chain.connect(node.url, d)
        view = chain.view()
        block = view.block.number
        t = time.perf_counter()
        snap = view.snapshot(accounts)
        snapshot_s = time.perf_counter() - t
        for a in accounts:  # every send landed: 6 positions each
            assert len(snap.accounts[a].positions) == 6, a

        # Naive keeper: one eth_call of the on-chain full check per account.
        fn = ch.functions.marginOf
        t = time.perf_counter()
        chain_results = [fn(a).call(block_identifier=block) for a in accounts]
        eth_call_s = time.perf_counter() - t

        # A keeper is a long-running process: its collector does not walk what it loaded.
        gc.collect()
        gc.freeze()
        # Engine 1: the existing engine, one shared table for the block.
        t = time.perf_counter()
        inputs = [snap.inputs(a) for a in accounts]
        market = inputs[0].market
        assert all(i.market == market for i in inputs)
        table = snap.table(market)
        for ins in snap.instruments.values():
            table.row(_position(ins))
        table_s = time.perf_counter() - t
        results = [table.full_check(i.portfolio) for i in inputs]
        full_check_s = time.perf_counter() - t

        # Engine 2: packed exact engine (the book built from the same snapshot; a fresh
        # table, priced here, as a new block needs).
        t = time.perf_counter()
        book = Book(table.params, [i.portfolio for i in inputs], columns=False)
        prep = MarketPrep(book, ScenarioTable(market, table.params))
        packed = [exact_account(prep, k) for k in range(len(accounts))]
        packed_s = time.perf_counter() - t

        # Engine 3: provably exact states (floats with bounds; exact engine where undecided and
        # for every unhealthy account), from a fresh table as a new block would need.
        t = time.perf_counter()
        book = Book(table.params, [i.portfolio for i in inputs])
        sweep = Sweep(book, MarketPrep(book, ScenarioTable(market, table.params)))
        states = sweep.classify()
        classify_s = time.perf_counter() - t
        assert states.tolist() == [r.state for r in results]

        for got, alt, want in zip(results, packed, chain_results, strict=True):
            assert list(got.to_abi()) == _plain(want), (got.to_abi(), want)
            assert alt.to_abi() == got.to_abi()
        return NaiveKeeperResult(
            n_accounts,
            eth_call_s,
            snapshot_s,
            full_check_s,
            packed_s,
            classify_s,
            table_s,
            seed_s,
        )


def _position(ins: Any) -> Any:
    from margin.portfolio import Position

    return Position(ins.underlying, ins.kind, ins.strike, ins.expiry, 0)


def _plain(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


if __name__ == "__main__":
    import sys

    r = run(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    print(r)
