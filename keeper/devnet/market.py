"""A seeded devnet market: accounts with realistic books against a market maker.

Used by the demo, the end-to-end tests, benchmarks and the soak run. Every book is sized with
the margin engine itself: the collateral is the book's initial margin (computed exactly at the
current chain state) times a leverage factor, so some books start comfortably healthy and
others sit just above their requirement, where a crash makes them margin calls or
liquidatable. Trades are matched at the engine's mark rounded to the protocol's tick, so an
account's equity starts equal to its collateral.

Owners hold devnet keys derived from the seed (``keeper.orders.devnet_owner_key``): they sign
the orders the matcher settles; their deposits go out through anvil's auto-impersonation.
Transactions go out in bulk with explicit gas and are mined together, then every receipt is
checked (a reverted setup transaction is an error, never silently dropped).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from web3 import Web3
from web3.types import RPCEndpoint

from keeper.chain import Chain
from keeper.deployment import DAY, Deployment, account_id, bind
from keeper.orders import Keyring, OrderMatcher, dev_keys, devnet_owner_key
from margin.portfolio import CALL, FUTURE, PUT, Portfolio, Position

WAD = 10**18
LOT = 10**8
TICK = 10**10
KIND = {"future": FUTURE, "call": CALL, "put": PUT}

#: Book kinds and how often each appears (weights), with the leverage range: collateral =
#: initial margin × leverage (< 1.3 sits close to the maintenance line under a crash).
BOOKS: dict[str, tuple[int, tuple[float, float]]] = {
    "call_spread": (3, (1.2, 3.0)),
    "covered_call": (2, (1.05, 2.0)),
    "naked_short_call": (3, (1.02, 1.6)),
    "naked_short_put": (3, (1.02, 1.6)),
    "future_protective_put": (2, (1.05, 2.5)),
    "levered_perp": (3, (1.01, 1.5)),
    "calendar": (1, (1.1, 2.0)),
    "isolated_perp": (2, (1.01, 1.4)),
    "weth_collateral_short": (1, (1.05, 1.8)),
}


class SeedError(RuntimeError):
    """A setup transaction reverted or a book could not be priced."""


@dataclass
class SeededAccount:
    account: int
    owner: str
    book: str
    leverage: float
    positions: list[tuple[int, int]] = field(default_factory=list)  # (instrument id, qty)
    usdc: int = 0  # token units (6 decimals)
    weth: int = 0  # wei
    prices: list[int] = field(default_factory=list)  # each leg's trade price (WAD)


@dataclass
class SeededMarket:
    maker: int
    accounts: list[SeededAccount]
    trades: int
    blocks: tuple[int, int]
    #: Signs for every seeded owner and anvil's dev accounts (the maker's owner among them).
    keyring: Keyring = field(default_factory=Keyring, repr=False)
    #: Seconds per part of the seeding (seed_venue fills it in).
    timings: dict[str, float] = field(default_factory=dict)


def owner_address(seed: int, i: int) -> str:
    """The address of the devnet key of owner ``i`` of a market seeded with ``seed``."""
    return str(Account.from_key(devnet_owner_key(seed, i)).address)


def _instruments(deployment: Deployment) -> dict[tuple[int, str, int, int], int]:
    return {
        (i["underlying"], i["kind"], int(i["strike"]), int(i["expiry"])): int(i["id"])
        for i in deployment.instruments
    }


def _books_for(
    rng: random.Random, deployment: Deployment, kind: str
) -> tuple[list[tuple[int, int]], int]:
    """Positions (instrument id, quantity in WAD) and WETH collateral (wei) of one book."""
    by = _instruments(deployment)
    u = rng.randrange(len(deployment.underlyings))
    und = deployment.underlyings[u]
    options = sorted(
        {int(i["strike"]) for i in deployment.instruments if i["underlying"] == u and i["strike"]}
    )
    expiry = max(int(i["expiry"]) for i in deployment.instruments if i["underlying"] == u)
    perp = by[(u, "future", 0, 0)]
    dated = by[(u, "future", 0, expiry)]
    # 0.1-8 ETH or 0.01-0.4 BTC per leg (quantities are WAD; LOT is only the granularity)
    size = rng.randint(1, 80) * (10**17 if und["symbol"] == "ETH" else 10**16)
    lo, mid, hi = options[0], options[len(options) // 2], options[-1]
    otm_call = options[min(len(options) - 1, len(options) // 2 + rng.randint(0, 2))]
    otm_put = options[max(0, len(options) // 2 - rng.randint(0, 2))]
    weth = 0
    if kind == "call_spread":
        pos = [(by[(u, "call", mid, expiry)], size), (by[(u, "call", hi, expiry)], -size)]
    elif kind == "covered_call":
        eth = next(i for i, x in enumerate(deployment.underlyings) if x["symbol"] == "ETH")
        u = eth
        options = sorted(
            {
                int(i["strike"])
                for i in deployment.instruments
                if i["underlying"] == u and i["strike"]
            }
        )
        expiry = max(int(i["expiry"]) for i in deployment.instruments if i["underlying"] == u)
        size = rng.randint(1, 80) * 10**17
        pos = [(by[(u, "call", options[-2], expiry)], -size)]
        weth = size  # one WETH per call sold
    elif kind == "naked_short_call":
        pos = [(by[(u, "call", otm_call, expiry)], -size)]
    elif kind == "naked_short_put":
        pos = [(by[(u, "put", otm_put, expiry)], -size)]
    elif kind == "future_protective_put":
        pos = [(perp, size), (by[(u, "put", lo, expiry)], size)]
    elif kind in ("levered_perp", "isolated_perp"):
        pos = [(perp, size if rng.random() < 0.7 else -size)]
    elif kind == "calendar":
        pos = [(dated, size), (perp, -size)]
    elif kind == "weth_collateral_short":
        eth = next(i for i, x in enumerate(deployment.underlyings) if x["symbol"] == "ETH")
        eth_perp = by[(eth, "future", 0, 0)]
        size = rng.randint(1, 80) * 10**17
        pos = [(eth_perp, -(size // (2 * LOT)) * LOT)]
        weth = size
    else:  # pragma: no cover - BOOKS and this function list the same kinds
        raise SeedError(f"unknown book kind {kind}")
    return pos, weth


@dataclass
class BookPlan:
    """One account to seed, before sizing: its owner, book kind, sub-account, positions
    (instrument id, quantity as the account holds it), WETH collateral (wei), leverage."""

    kind: str
    owner: str
    sub: int
    pos: list[tuple[int, int]]
    weth: int
    lev: float


def plan_books(
    rng: random.Random,
    deployment: Deployment,
    n: int,
    kinds: Sequence[str] | None,
    keyring: Keyring,
    *,
    fast_keys: bool = False,
) -> Iterator[BookPlan]:
    """The books of ``n`` accounts, drawn from ``rng`` (the first of each kind in order, then
    by weight); each owner's key goes into ``keyring`` (``fast_keys``: Keyring.add_fast)."""
    names = list(kinds) if kinds else list(BOOKS)
    weights = [BOOKS[k][0] for k in names]
    add = keyring.add_fast if fast_keys else keyring.add
    for i in range(n):
        kind = names[i % len(names)] if i < len(names) else rng.choices(names, weights)[0]
        owner = add(devnet_owner_key(rng.randrange(2**32), i))
        sub = 1 if kind == "isolated_perp" else 0
        pos, weth_wei = _books_for(rng, deployment, kind)
        lev = rng.uniform(*BOOKS[kind][1])
        yield BookPlan(kind, owner, sub, pos, weth_wei, lev)


def size_book(
    snap: Any,
    instruments: dict[int, dict[str, Any]],
    pos: Sequence[tuple[int, int]],
    weth_wei: int,
    lev: float,
) -> tuple[int, list[int]]:
    """(USDC deposit in token units, trade price of each leg) of one book, by the exact engine
    at ``snap`` (a ProtocolSnapshot): trades land one leg at a time and each intermediate book
    must pass its own IM check, so the deposit covers the most demanding prefix, times the
    leverage factor (at least 100 USDC); each leg trades at its mark rounded down to the tick."""
    positions = tuple(
        Position(
            int(instruments[iid]["underlying"]),
            KIND[instruments[iid]["kind"]],
            int(instruments[iid]["strike"]),
            int(instruments[iid]["expiry"]),
            q,
            0,
        )
        for iid, q in pos
    )
    weth_bal = weth_wei  # WAD balance = wei for an 18-decimal token
    table = snap.table(snap.market(Portfolio(positions, (0, weth_bal))))
    im = max(
        table.full_check(Portfolio(positions[:k], (0, weth_bal))).initial_margin
        for k in range(1, len(positions) + 1)
    )
    value_of_weth = table.full_check(Portfolio((), (0, weth_bal))).equity
    need = max(0, im - value_of_weth)
    usdc_wad = int(max(need * lev, 100 * WAD))  # at least 100 USDC
    prices = []
    for p in positions:
        v0 = table.row(p).v0
        assert isinstance(v0, int)
        prices.append(max(TICK, v0 // TICK * TICK))
    return -(-usdc_wad // 10**12), prices


def model_marks(chain: Chain, deployment: Deployment) -> dict[int, int]:
    """Every live instrument's model mark at the chain's head (what the contract's price band
    is centred on), rounded down to the tick and at least one tick: a price that any band
    around the mark admits. Expired instruments are left out (they no longer trade)."""
    snap = chain.view().snapshot([])
    now = snap.timestamp
    marks: dict[int, int] = {}
    for u in {int(i["underlying"]) for i in deployment.instruments}:
        live = [
            i
            for i in deployment.instruments
            if int(i["underlying"]) == u and (int(i["expiry"]) == 0 or int(i["expiry"]) > now)
        ]
        positions = [
            Position(u, KIND[i["kind"]], int(i["strike"]), int(i["expiry"]), WAD, 0) for i in live
        ]
        table = snap.table(snap.market(Portfolio(tuple(positions), (0, 0))))
        for i, p in zip(live, positions, strict=True):
            v0 = table.row(p).v0
            assert isinstance(v0, int)
            marks[int(i["id"])] = max(TICK, v0 // TICK * TICK)
    return marks


class _Sender:
    """Bulk sender: explicit gas (no estimation against a state that is not mined yet)."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        self.hashes: list[tuple[str, Any]] = []

    def send(self, what: str, fn: Any, sender: str, gas: int = 6_000_000) -> None:
        self.hashes.append((what, fn.transact({"from": sender, "gas": gas})))

    def mine(self) -> None:
        self.w3.provider.make_request(RPCEndpoint("evm_mine"), [])
        failed = []
        for what, h in self.hashes:
            r = self.w3.eth.wait_for_transaction_receipt(h, timeout=120)
            if r["status"] != 1:
                failed.append(what)
        self.hashes.clear()
        if failed:
            raise SeedError(f"{len(failed)} setup transaction(s) reverted: {failed[:5]}")


def seed_market(
    w3: Web3,
    deployment: Deployment,
    chain: Chain,
    n: int,
    *,
    seed: int = 7,
    maker_usdc: int = 200_000_000,
    kinds: Sequence[str] | None = None,
) -> SeededMarket:
    """Create ``n`` accounts with books sized by the engine, against one market maker (the
    deployer's sub-account 2). Leaves automine as it found it."""
    rng = random.Random(seed)
    first = w3.eth.block_number + 1
    deployer = deployment.deployer
    ch = bind(w3, deployment, "ClearingHouse")
    usdc = bind(w3, deployment, "MockERC20:USDC")
    weth = bind(w3, deployment, "MockERC20:WETH")
    w3.provider.make_request(RPCEndpoint("anvil_autoImpersonateAccount"), [True])
    automine = bool(
        w3.provider.make_request(RPCEndpoint("anvil_getAutomine"), []).get("result", True)
    )
    w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [False])
    try:
        return _seed(
            w3, deployment, chain, n, rng, first, deployer, ch, usdc, weth, maker_usdc, kinds
        )
    finally:
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [automine])


def _seed(
    w3: Web3,
    deployment: Deployment,
    chain: Chain,
    n: int,
    rng: random.Random,
    first: int,
    deployer: str,
    ch: Any,
    usdc: Any,
    weth: Any,
    maker_usdc: int,
    kinds: Sequence[str] | None,
) -> SeededMarket:
    s = _Sender(w3)
    keyring = Keyring(dev_keys())
    if deployer not in keyring:
        raise SeedError(f"the deployer {deployer} is not one of anvil's dev accounts")
    matcher = OrderMatcher(ch, keyring, int(w3.eth.chain_id))
    maker = account_id(deployer, 2)
    amount = maker_usdc * 10**6
    s.send("maker mint", usdc.functions.mint(deployer, amount), deployer)
    s.send("maker approve", usdc.functions.approve(ch.address, 2**255), deployer)
    s.send("maker deposit", ch.functions.deposit(maker, 0, amount), deployer)
    s.mine()

    view = chain.view()
    snap = view.snapshot([])
    instruments = {int(i["id"]): i for i in deployment.instruments}
    accounts: list[SeededAccount] = []
    trade_prices: dict[int, list[int]] = {}  # per account, the price of each leg
    for plan in plan_books(rng, deployment, n, kinds, keyring):
        owner = plan.owner
        usdc_units, prices = size_book(snap, instruments, plan.pos, plan.weth, plan.lev)
        acct = account_id(owner, plan.sub)
        accounts.append(
            SeededAccount(
                acct,
                owner,
                plan.kind,
                round(plan.lev, 3),
                list(plan.pos),
                usdc_units,
                plan.weth,
                prices,
            )
        )
        w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [owner, hex(10 * WAD)])
        s.send("mint", usdc.functions.mint(owner, usdc_units), owner)
        s.send("approve", usdc.functions.approve(ch.address, 2**255), owner)
        s.send("deposit", ch.functions.deposit(acct, 0, usdc_units), owner)
        if plan.weth:
            s.send("mint weth", weth.functions.mint(owner, plan.weth), owner)
            s.send("approve weth", weth.functions.approve(ch.address, 2**255), owner)
            s.send("deposit weth", ch.functions.deposit(acct, 1, plan.weth), owner)
        trade_prices[acct] = prices
    s.mine()
    trades = 0
    for a in accounts:
        for (iid, q), price in zip(a.positions, trade_prices[a.account], strict=True):
            buyer, seller = (a.account, maker) if q > 0 else (maker, a.account)
            s.send(
                f"trade {a.book}",
                matcher.trade(buyer, seller, iid, abs(q), price),
                deployment.roles.get("matcher", deployer),
                12_000_000,
            )
            trades += 1
        if len(s.hashes) >= 50:
            s.mine()
    s.mine()
    return SeededMarket(maker, accounts, trades, (first, w3.eth.block_number), keyring)


def list_next_expiry(w3: Web3, deployment: Deployment, *, days: int = 30) -> Deployment:
    """List a new dated strip (a future and the same calls and puts per underlying) expiring
    ``days`` after the current block, so a market that went through an expiry can be seeded
    again; returns the deployment with them added (the perpetuals stay). Waits for every
    receipt: the instrument ids are read back, never guessed."""
    ch = bind(w3, deployment, "ClearingHouse")
    now = int(w3.eth.get_block("latest")["timestamp"])
    expiry = (now // DAY + days) * DAY + 8 * 3600  # 08:00 UTC, as deploy_protocol does
    listed: list[dict[str, Any]] = []
    for u in deployment.underlyings:
        strikes = sorted(
            {int(i["strike"]) for i in deployment.instruments if i["underlying"] == u["index"]}
            - {0}
        )
        legs = [("future", 0)] + [(k, s) for s in strikes for k in ("call", "put")]
        for kind, strike in legs:
            h = ch.functions.listInstrument(u["index"], KIND[kind], strike, expiry).transact(
                {"from": deployment.deployer}
            )
            receipt = w3.eth.wait_for_transaction_receipt(h, timeout=120)
            if receipt["status"] != 1:
                raise SeedError(f"listInstrument({u['symbol']} {kind} {strike}) reverted")
            (event,) = ch.events.InstrumentListed().process_receipt(receipt)
            listed.append(
                {
                    "id": int(event["args"]["instrument"]),
                    "underlying": u["index"],
                    "kind": kind,
                    "strike": strike,
                    "expiry": expiry,
                }
            )
    return dataclasses.replace(deployment, instruments=[*deployment.instruments, *listed])
