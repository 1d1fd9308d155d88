"""A venue-sized devnet: 100,000 seeded accounts in minutes (``seed_venue``).

``keeper.devnet.market.seed_market`` books every account the way a user would: mint, approve,
deposit, then one signed-order ``trade`` per leg, each trade running the full margin check
on-chain (0.5-1.5 M gas) and two EIP-712 signatures off-chain. That is the right path for
the demo and the end-to-end tests (it exercises the protocol) and the wrong one for 100,000
accounts (see BENCHMARKS.md, "Venue-sized devnet", for where its time goes).

``seed_venue`` books the same accounts -- the same book kinds, drawn by the same random
sequence (``plan_books``) and sized by the same exact margin engine (``size_book``) -- through
a devnet-only batch path:

* ``contracts/src/devnet/VenueSeeder.sol`` inherits ``ClearingHouseBase``, so its storage
  layout is the compiler's layout of the clearing house (compared in the build artifacts by
  tests/test_venue.py). It is never deployed: for the time of the seeding its runtime code is
  put at the ``ClearingHouseAdmin`` address (``anvil_setCode``), so ``seedVenue`` calls reach it
  through the clearing house's own fallback (DELEGATECALL): it writes the clearing house's
  storage and its logs come from the clearing house's address. The admin module's code is put
  back afterwards (checked by code hash), whatever happened.
* Per account ``seedVenue`` does what ``deposit`` and ``trade`` do to storage and logs, in the
  same order: balances credited, state nonce bumped (``Deposit``), each leg moved between the
  account and the market maker with the clearing house's position bookkeeping (slot push,
  index + 1, swap-and-pop), cash moved, ``tradeCount`` and both nonces bumped (``Trade``). So the
  keeper's indexer discovers every seeded account from the logs and its nonce replay matches
  ``accountState`` exactly, and later deposits, withdrawals, trades and liquidations work on
  the seeded accounts as on any other.
* The tokens behind the credited balances are minted to the clearing house (one ``mint`` per
  asset), and the market maker (the deployer's sub-account 2) takes the other side of every
  leg: the clearing house's token balances equal the credited balances (insurance fund,
  backstop and maker included) and every instrument's open interest sums to zero.
* The maker's deposit is sized by the exact engine on its final book (``maker_margin`` times
  its initial margin, at least ``maker_usdc``): at 100,000 accounts its net book is large.

Limits (what the fast path does not do): no signatures and no ``OrderFilled`` logs (no order is
signed: ``SeededMarket.keyring`` still holds every owner's key for later signed trades), no
per-trade price-band or margin check on-chain (the books are sized off-chain by the engine the
verifier mirrors to the wei, at the snapshot's prices), the owners' token transfers are not
replayed (tokens are minted to the clearing house, not to the owners, and the owners get no
ether unless ``fund_owners``), and the seeding needs anvil (``anvil_setCode``): it refuses any
other node. Never point it at a chain whose state matters.

Sizing is the exact engine per account (``size_book``: one ScenarioTable per market, shared by
every account; full checks of each prefix of the book): BENCHMARKS.md has its share of the time.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak
from web3 import Web3
from web3.types import RPCEndpoint

from keeper.artifacts import OUT_DIR, ArtifactError, artifact_path
from keeper.chain import Chain
from keeper.deployment import Deployment, account_id, bind
from keeper.devnet.market import (
    WAD,
    SeededAccount,
    SeededMarket,
    SeedError,
    plan_books,
    size_book,
)
from keeper.orders import Keyring, dev_keys
from margin.portfolio import Portfolio, Position

SEEDER = "VenueSeeder"
SEED_SELECTOR = keccak(text="seedVenue(uint256,uint256[])")[:4]
#: Gas limit per account of a seeding transaction: fresh slots cost 22,100 each (balances,
#: nonce, position slot, length and index), logs and warm maker updates on top.
GAS_PER_DEPOSIT = 80_000
GAS_PER_LEG = 160_000
GAS_BASE = 200_000
MASK = 2**256 - 1


def seeder_runtime(out_dir: Any = OUT_DIR) -> str:
    """The runtime code of the devnet seeder (forge output), 0x-prefixed."""
    path = artifact_path(SEEDER, out_dir)
    data = json.loads(path.read_text())
    code = data.get("deployedBytecode", {}).get("object", "")
    if not code or code == "0x":
        raise ArtifactError(f"{path} has no runtime code")
    return str(code) if code.startswith("0x") else "0x" + str(code)


def _rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    reply = w3.provider.make_request(RPCEndpoint(method), params)
    if "error" in reply:
        raise SeedError(f"{method} refused: {reply['error']}")
    return reply.get("result")


def encode_accounts(
    rows: Sequence[tuple[int, int, int, Sequence[tuple[int, int, int]]]],
) -> list[int]:
    """seedVenue's flat word list: per account (id, asset-0 units, asset-1 units, legs) with
    legs (instrument, quantity as the account holds it, price)."""
    words: list[int] = []
    for acct, usdc_units, weth_units, legs in rows:
        words += (acct, usdc_units, weth_units, len(legs))
        for iid, q, price in legs:
            words += (iid, q & MASK, price)
    return words


def seed_calldata(maker: int, words: Sequence[int]) -> str:
    head = SEED_SELECTOR + maker.to_bytes(32, "big") + (64).to_bytes(32, "big")
    body = len(words).to_bytes(32, "big") + b"".join(w.to_bytes(32, "big") for w in words)
    return "0x" + (head + body).hex()


def _simulate_positions(
    held: list[tuple[int, int]], deltas: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The clearing house's position bookkeeping (push a new instrument, update in place,
    swap-and-pop at zero) applied to ``held`` in storage order: the storage order after."""
    slots = list(held)
    index = {iid: k for k, (iid, _) in enumerate(slots)}
    for iid, d in deltas:
        k = index.get(iid)
        if k is None:
            index[iid] = len(slots)
            slots.append((iid, d))
            continue
        q = slots[k][1] + d
        if q != 0:
            slots[k] = (iid, q)
            continue
        last = len(slots) - 1
        if k != last:
            slots[k] = slots[last]
            index[slots[k][0]] = k
        slots.pop()
        del index[iid]
    return slots


@dataclass
class VenuePlan:
    """What seed_venue books: sized accounts, their legs at their prices, the maker's deposit
    and the maker's book after (storage order)."""

    accounts: list[SeededAccount]
    prices: list[list[int]]
    maker_deposit: int  # USDC token units
    maker_positions: list[tuple[int, int]]
    maker_cash: int  # WAD, what the maker's asset-0 balance gains from the legs' cash
    timings: dict[str, float] = field(default_factory=dict)


def plan_venue(
    chain: Chain,
    deployment: Deployment,
    n: int,
    keyring: Keyring,
    *,
    seed: int = 7,
    kinds: Sequence[str] | None = None,
    maker: int,
    maker_usdc: int = 200_000_000,
    maker_margin: float = 1.5,
    progress: Callable[[str], None] | None = None,
) -> VenuePlan:
    """Draw and size ``n`` books (as seed_market would with the same ``seed``), and size the
    maker's deposit on its final book. Pure computation on one snapshot; nothing is sent."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    plans = list(plan_books(rng, deployment, n, kinds, keyring, fast_keys=True))
    t1 = time.perf_counter()
    snap = chain.view().snapshot([maker])
    instruments = {int(i["id"]): i for i in deployment.instruments}
    accounts: list[SeededAccount] = []
    prices: list[list[int]] = []
    deltas: list[tuple[int, int]] = []
    maker_cash = 0
    for k, plan in enumerate(plans):
        usdc_units, legs_prices = size_book(snap, instruments, plan.pos, plan.weth, plan.lev)
        acct = account_id(plan.owner, plan.sub)
        accounts.append(
            SeededAccount(
                acct,
                plan.owner,
                plan.kind,
                round(plan.lev, 3),
                list(plan.pos),
                usdc_units,
                plan.weth,
                legs_prices,
            )
        )
        prices.append(legs_prices)
        for (iid, q), price in zip(plan.pos, legs_prices, strict=True):
            deltas.append((iid, -q))
            maker_cash += (q * price) // WAD  # exact: LOT * TICK == 1e18
        if progress and (k + 1) % 10_000 == 0:
            progress(f"sized {k + 1}/{n} books ({time.perf_counter() - t1:.1f} s)")
    t2 = time.perf_counter()
    m = snap.accounts[maker]
    maker_positions = _simulate_positions(list(m.positions), deltas)
    positions = []
    for iid, q in maker_positions:
        ins = snap.instruments[iid]
        positions.append(Position(ins.underlying, ins.kind, ins.strike, ins.expiry, q, 0))
    balances = list(m.balances)
    balances[0] += maker_cash
    pf = Portfolio(tuple(positions), tuple(balances))
    r = snap.table(snap.market(pf)).full_check(pf)
    need = max(0, int(r.initial_margin * maker_margin) - r.equity)
    maker_deposit = max(maker_usdc * 10**6, -(-need // 10**12))
    t3 = time.perf_counter()
    return VenuePlan(
        accounts,
        prices,
        maker_deposit,
        maker_positions,
        maker_cash,
        {"plan_s": t1 - t0, "size_s": t2 - t1, "maker_s": t3 - t2},
    )


def _require_anvil(w3: Web3) -> None:
    version = str(w3.provider.make_request(RPCEndpoint("web3_clientVersion"), []).get("result", ""))
    if not version.lower().startswith("anvil"):
        raise SeedError(f"seed_venue runs on anvil only (anvil_setCode), not on {version!r}")


def seed_venue(
    w3: Web3,
    deployment: Deployment,
    chain: Chain,
    n: int,
    *,
    seed: int = 7,
    kinds: Sequence[str] | None = None,
    maker_usdc: int = 200_000_000,
    maker_margin: float = 1.5,
    batch: int = 1000,
    fund_owners: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SeededMarket:
    """Seed ``n`` accounts through the devnet batch path (see the module docstring) against
    one market maker, the deployer's sub-account 2. ``batch``: accounts per seeding
    transaction (fewer if the block gas limit says so). ``fund_owners``: give every owner 10
    ether for gas (one anvil_setBalance each). Leaves automine as it found it."""
    _require_anvil(w3)
    t_start = time.perf_counter()
    deployer = deployment.deployer
    keyring = Keyring(dev_keys())
    if deployer not in keyring:
        raise SeedError(f"the deployer {deployer} is not one of anvil's dev accounts")
    maker = account_id(deployer, 2)
    ch = bind(w3, deployment, "ClearingHouse")
    usdc = bind(w3, deployment, "MockERC20:USDC")
    weth = bind(w3, deployment, "MockERC20:WETH")
    admin = deployment.address("ClearingHouseAdmin")
    runtime = seeder_runtime()
    plan = plan_venue(
        chain,
        deployment,
        n,
        keyring,
        seed=seed,
        kinds=kinds,
        maker=maker,
        maker_usdc=maker_usdc,
        maker_margin=maker_margin,
        progress=progress,
    )
    timings = dict(plan.timings)
    if progress:
        progress(f"planned and sized {n} books: {timings}")
    first = w3.eth.block_number + 1
    automine = bool(_rpc(w3, "anvil_getAutomine", []))
    gas_limit = int(w3.eth.get_block("latest")["gasLimit"])
    admin_code = _rpc(w3, "eth_getCode", [admin, "latest"])
    _rpc(w3, "evm_setAutomine", [False])
    t_send = time.perf_counter()
    sent: list[tuple[str, str]] = []

    def send(what: str, tx: dict[str, Any]) -> None:
        sent.append((what, _rpc(w3, "eth_sendTransaction", [tx])))

    def mine() -> None:
        _rpc(w3, "evm_mine", [])
        failed = []
        for what, h in sent:
            r = _rpc(w3, "eth_getTransactionReceipt", [h])
            if r is None or int(r["status"], 16) != 1:
                failed.append(what)
        sent.clear()
        if failed:
            raise SeedError(f"{len(failed)} seeding transaction(s) failed: {failed[:5]}")

    def call_tx(fn: Any, gas: int = 500_000) -> dict[str, Any]:
        return {
            "from": deployer,
            "to": fn.address,
            "data": fn._encode_transaction_data(),
            "gas": hex(gas),
        }

    try:
        total_usdc = sum(a.usdc for a in plan.accounts)
        total_weth = sum(a.weth for a in plan.accounts)
        # The maker's deposit, as a user's: mint, approve, deposit (real transactions).
        send("maker mint", call_tx(usdc.functions.mint(deployer, plan.maker_deposit)))
        send("maker approve", call_tx(usdc.functions.approve(ch.address, 2**255)))
        send(
            "maker deposit", call_tx(ch.functions.deposit(maker, 0, plan.maker_deposit), 1_000_000)
        )
        # The tokens behind the seeded balances go straight to the clearing house.
        if total_usdc:
            send("usdc to the clearing house", call_tx(usdc.functions.mint(ch.address, total_usdc)))
        if total_weth:
            send("weth to the clearing house", call_tx(weth.functions.mint(ch.address, total_weth)))
        mine()
        _rpc(w3, "anvil_setCode", [admin, runtime])
        try:
            per_tx = max(
                1, min(batch, (gas_limit - GAS_BASE) // (2 * GAS_PER_DEPOSIT + 3 * GAS_PER_LEG))
            )
            in_block = 0
            for start in range(0, n, per_tx):
                chunk = range(start, min(n, start + per_tx))
                rows = []
                gas = GAS_BASE
                for k in chunk:
                    a = plan.accounts[k]
                    legs = [
                        (iid, q, p) for (iid, q), p in zip(a.positions, plan.prices[k], strict=True)
                    ]
                    rows.append((a.account, a.usdc, a.weth, legs))
                    gas += GAS_PER_DEPOSIT * (1 + (a.weth > 0)) + GAS_PER_LEG * len(legs)
                gas = min(gas, gas_limit)
                if in_block + gas > gas_limit:
                    mine()
                    in_block = 0
                data = seed_calldata(maker, encode_accounts(rows))
                send(f"seed accounts {chunk.start}-{chunk.stop - 1}", {
                    "from": deployer, "to": ch.address, "data": data, "gas": hex(gas)
                })  # fmt: skip
                in_block += gas
                if progress and chunk.stop % 10_000 < per_tx:
                    progress(f"sent {chunk.stop}/{n} ({time.perf_counter() - t_send:.1f} s)")
            mine()
        finally:
            _rpc(w3, "anvil_setCode", [admin, admin_code])
            if _rpc(w3, "eth_getCode", [admin, "latest"]) != admin_code:
                raise SeedError("the admin module's code could not be put back")
        timings["send_mine_s"] = time.perf_counter() - t_send
        if fund_owners:
            t = time.perf_counter()
            fund(w3, [a.owner for a in plan.accounts])
            timings["fund_s"] = time.perf_counter() - t
    finally:
        _rpc(w3, "evm_setAutomine", [automine])
    timings["total_s"] = time.perf_counter() - t_start
    trades = sum(len(a.positions) for a in plan.accounts)
    return SeededMarket(
        maker, plan.accounts, trades, (first, w3.eth.block_number), keyring, timings
    )


def fund(w3: Web3, owners: Sequence[str], wei: int = 10 * WAD) -> None:
    """Gives each owner ``wei`` of ether (anvil_setBalance) for the gas of its own transactions."""
    for owner in owners:
        _rpc(w3, "anvil_setBalance", [owner, hex(wei)])


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """python -m keeper.devnet.venue N: fresh anvil, protocol deployed, N accounts seeded
    through seed_venue; prints the time of each part and anvil's RSS, then optionally plays
    the scripted market (keeper.devnet.market_script) on the seeded venue."""
    from keeper.artifacts import ensure_built
    from keeper.deployment import deploy_protocol
    from keeper.devnet import Anvil
    from keeper.devnet.market_script import ScriptedFeeds, apply_phase, phase_plan

    ap = argparse.ArgumentParser(prog="python -m keeper.devnet.venue", description=main.__doc__)
    ap.add_argument("accounts", type=int)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1000, help="accounts per seeding transaction")
    ap.add_argument(
        "--script-blocks",
        type=int,
        default=0,
        help="then play the scripted market (market_script) for this many blocks",
    )
    ap.add_argument(
        "--prune-history",
        type=int,
        default=8,
        help="anvil keeps this many past states in memory (0: anvil's default, every state up "
        "to its limit: each is a copy of the whole state, ~150 MiB at 100,000 accounts)",
    )
    args = ap.parse_args(argv)
    ensure_built()
    extra = ["--prune-history", str(args.prune_history)] if args.prune_history else []
    with Anvil(extra_args=extra) as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 3600}))
        d = deploy_protocol(w3)
        chain = Chain.connect(anvil.url, d)
        assert anvil._proc is not None
        pid = anvil._proc.pid
        rss0 = _rss_kib(pid)
        t = time.perf_counter()
        market = seed_venue(
            w3, d, chain, args.accounts, seed=args.seed, batch=args.batch, progress=print
        )
        took = time.perf_counter() - t
        blocks = market.blocks
        print(
            f"seed_venue: {args.accounts} accounts, {market.trades} legs in {took:.1f} s "
            f"(blocks {blocks[0]}-{blocks[1]}); parts: "
            + ", ".join(f"{k} {v:.1f}" for k, v in market.timings.items())
        )
        print(
            f"anvil RSS: {rss0 / 1024:.0f} MiB before seeding, {_rss_kib(pid) / 1024:.0f} MiB after"
        )
        r = bind(w3, d, "ClearingHouse").functions.marginOf(market.maker).call()
        print(f"maker: equity {r[0] / WAD:,.0f}, IM {r[2] / WAD:,.0f}, state {r[5]} (0 healthy)")
        if args.script_blocks:
            feeds = ScriptedFeeds(w3, d, d.deployer)
            rng = random.Random(args.seed)
            expiry = max(int(i["expiry"]) for i in d.instruments)
            plan = phase_plan(args.script_blocks)
            t = time.perf_counter()
            last = None
            mined = []
            for phase in plan:
                apply_phase(phase, phase != last, feeds, rng, crash=0.3, expiry=expiry)
                t_mine = time.perf_counter()
                _rpc(w3, "evm_mine", [])
                mined.append(time.perf_counter() - t_mine)
                last = phase
            mined.sort()
            print(
                f"market script: {len(plan)} blocks in {time.perf_counter() - t:.1f} s "
                f"at {args.accounts} accounts (anvil's evm_mine: median "
                f"{mined[len(mined) // 2]:.2f} s, max {mined[-1]:.2f} s); "
                f"anvil RSS {_rss_kib(pid) / 1024:.0f} MiB"
            )
        chain.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
