"""The venue-sized devnet's fast seeding path (keeper.devnet.venue) on a real anvil.

A venue of 200 accounts seeded through the devnet seeder must be, for the contract, the
market seed_market would have made: for every account the clearing house's own reads
(``portfolioOf``, ``balanceOf``, ``accountState``, ``marginOf``) equal what the seeder intended
(marginOf to the wei against the exact engine), the tokens held equal the credited balances,
every instrument's open interest sums to zero, the keeper's indexer finds every account with
nonces that replay to the chain's, and ordinary signed-order trades (one closing a leg, which
swaps a slot, then one on the moved leg), a deposit, a withdrawal and a liquidation work on the
seeded accounts afterwards. The seeder's storage layout is the clearing house's (as the compiler
lays them out, read from the build artifacts).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3
from web3.logs import DISCARD

from keeper.artifacts import artifact_path
from keeper.chain import Chain
from keeper.deployment import Deployment, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import KIND, SeededMarket, model_marks
from keeper.devnet.venue import fund, seed_venue
from keeper.indexer import Indexer
from keeper.orders import OrderMatcher
from keeper.store import Store
from margin.portfolio import Portfolio, Position

pytestmark = pytest.mark.anvil

WAD = 10**18
N = 200


class Venue:
    def __init__(self, anvil: Anvil) -> None:
        self.w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
        self.d: Deployment = deploy_protocol(self.w3)
        self.chain = Chain.connect(anvil.url, self.d)
        self.admin_code = self.w3.eth.get_code(self.d.address("ClearingHouseAdmin"))
        self.market: SeededMarket = seed_venue(self.w3, self.d, self.chain, N, seed=3, batch=64)
        self.ch = bind(self.w3, self.d, "ClearingHouse")
        self.usdc = bind(self.w3, self.d, "MockERC20:USDC")
        self.weth = bind(self.w3, self.d, "MockERC20:WETH")
        self.instruments = {int(i["id"]): i for i in self.d.instruments}

    def position(self, iid: int, q: int) -> Position:
        i = self.instruments[iid]
        return Position(
            int(i["underlying"]), KIND[i["kind"]], int(i["strike"]), int(i["expiry"]), q, 0
        )

    def send(self, fn: Any, sender: str) -> Any:
        h = fn.transact({"from": sender, "gas": 12_000_000})
        r = self.w3.eth.wait_for_transaction_receipt(h, timeout=60)
        assert r["status"] == 1, f"reverted: {fn.fn_name}"
        return r

    def conservation(self, accounts: list[int]) -> None:
        """Tokens held == credited balances + insurance fund + unclaimed bounties (asset 0);
        == credited balances (asset 1); every instrument's open interest sums to zero."""
        everyone = [*accounts, self.market.maker, self.d.backstop_account]
        ch = self.ch.functions
        held0 = self.usdc.functions.balanceOf(self.ch.address).call() * 10**12
        credited0 = sum(ch.balanceOf(a, 0).call() for a in everyone)
        credited0 += ch.insuranceFund().call() + ch.totalBounties().call()
        assert held0 == credited0
        held1 = self.weth.functions.balanceOf(self.ch.address).call()
        assert held1 == sum(ch.balanceOf(a, 1).call() for a in everyone)
        oi: dict[int, int] = defaultdict(int)
        for a in everyone:
            ids, qs = ch.positionsOf(a).call()
            for iid, q in zip(ids, qs, strict=True):
                oi[int(iid)] += int(q)
        assert oi and all(v == 0 for v in oi.values()), dict(oi)


@pytest.fixture(scope="module")
def venue(contracts_built: None) -> Iterator[Venue]:
    with Anvil() as anvil:
        v = Venue(anvil)
        yield v
        v.chain.close()


def test_seeder_layout_is_the_clearing_house_layout(contracts_built: None) -> None:
    def layout(name: str) -> list[tuple[str, str, int, str]]:
        # The compiler's layout, from the build artifact (foundry.toml: extra_output).
        data = json.loads(artifact_path(name).read_text())["storageLayout"]
        types = data["types"]
        return [
            (s["label"], s["slot"], s["offset"], types[s["type"]]["label"]) for s in data["storage"]
        ]

    house = layout("ClearingHouse")
    assert house == layout("VenueSeeder")
    assert house == layout("ClearingHouseAdmin")
    assert house == layout("ClearingHouseRecalibration")
    assert {"balanceOf", "_positions", "_positionIndex", "accountState"} <= {s[0] for s in house}


def test_every_account_reads_back_as_intended(venue: Venue) -> None:
    m, ch = venue.market, venue.ch.functions
    assert len(m.accounts) == N and len({a.account for a in m.accounts}) == N
    assert venue.w3.eth.get_code(venue.d.address("ClearingHouseAdmin")) == venue.admin_code
    # Every book kind, sized by the engine: each sits at its leverage over its IM (>= 1.01).
    assert {a.book for a in m.accounts} == {
        "call_spread", "covered_call", "naked_short_call", "naked_short_put",
        "future_protective_put", "levered_perp", "calendar", "isolated_perp",
        "weth_collateral_short",
    }  # fmt: skip
    snap = venue.chain.view().snapshot([])
    trades = 0
    maker_q: dict[int, int] = defaultdict(int)
    for a in m.accounts:
        cash = sum(q * p // WAD for (_, q), p in zip(a.positions, a.prices, strict=True))
        expected = Portfolio(
            tuple(venue.position(iid, q) for iid, q in a.positions),
            (a.usdc * 10**12 - cash, a.weth),
        )
        pf = ch.portfolioOf(a.account).call()
        assert [tuple(p) for p in pf[0]] == [
            (p.underlying, p.kind, p.strike, p.expiry, p.quantity, 0) for p in expected.positions
        ]
        assert tuple(pf[1]) == expected.collateral
        assert ch.balanceOf(a.account, 0).call() == expected.collateral[0]
        assert ch.balanceOf(a.account, 1).call() == a.weth
        nonce = 1 + (a.weth > 0) + len(a.positions)
        assert tuple(ch.accountState(a.account).call()) == (nonce, 0)
        ids, qs = ch.positionsOf(a.account).call()
        assert list(zip(ids, qs, strict=True)) == a.positions
        # marginOf, to the wei, is the exact engine's full check of the intended book.
        r = ch.marginOf(a.account).call()
        want = snap.table(snap.market(expected)).full_check(expected)
        assert (r[0], r[1], r[2], r[5]) == (
            want.equity,
            want.requirement,
            want.initial_margin,
            0,
        )
        assert want.equity >= want.initial_margin
        trades += len(a.positions)
        for iid, q in a.positions:
            maker_q[iid] -= q
    assert ch.tradeCount().call() == trades == m.trades
    ids, qs = ch.positionsOf(m.maker).call()
    assert dict(zip(ids, qs, strict=True)) == {k: v for k, v in maker_q.items() if v}
    assert ch.marginOf(m.maker).call()[5] == 0  # the maker is healthy too
    venue.conservation([a.account for a in m.accounts])


def test_the_indexer_finds_every_account_and_replays_its_nonce(
    venue: Venue, tmp_path: Path
) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'keeper.db'}") as store:
        ix = Indexer(venue.chain, store, confirmations=1)
        ix.sync()
        known = set(ix.known_accounts())
        assert {a.account for a in venue.market.accounts} | {venue.market.maker} <= known
        report = ix.check_consistency(venue.chain.view())
        assert report.ok and report.accounts_checked >= N + 1
        assert report.trade_count[0] == report.trade_count[1]


def test_trades_deposit_withdrawal_and_liquidation_work_afterwards(venue: Venue) -> None:
    m, ch, w3 = venue.market, venue.ch.functions, venue.w3
    deployer = venue.d.deployer
    matcher = OrderMatcher(venue.ch, m.keyring, int(w3.eth.chain_id))
    marks = model_marks(venue.chain, venue.d)

    # A two-leg book: close its first leg (the contract swaps the last slot into its place and
    # re-points its index), then trade the moved leg (found through that index).
    a = next(x for x in m.accounts if x.book == "future_protective_put")
    (perp, q_perp), (put, q_put) = a.positions
    nonce = ch.accountState(a.account).call()[0]
    venue.send(matcher.trade(m.maker, a.account, perp, q_perp, marks[perp]), deployer)
    assert ch.positionsOf(a.account).call() == [[put], [q_put]]
    half = q_put // 2 // 10**8 * 10**8
    venue.send(matcher.trade(m.maker, a.account, put, half, marks[put]), deployer)
    assert ch.positionsOf(a.account).call() == [[put], [q_put - half]]
    assert ch.accountState(a.account).call()[0] == nonce + 2

    # A deposit and a withdrawal by a seeded owner (its own transactions).
    b = next(x for x in m.accounts if x.book == "naked_short_put")
    fund(w3, [b.owner])
    w3.provider.make_request("anvil_impersonateAccount", [b.owner])
    before = ch.balanceOf(b.account, 0).call()
    venue.send(venue.usdc.functions.mint(b.owner, 500 * 10**6), b.owner)
    venue.send(venue.usdc.functions.approve(venue.ch.address, 500 * 10**6), b.owner)
    venue.send(ch.deposit(b.account, 0, 500 * 10**6), b.owner)
    venue.send(ch.withdraw(b.account, 0, 200 * 10**6), b.owner)
    assert ch.balanceOf(b.account, 0).call() == before + 300 * WAD
    assert venue.usdc.functions.balanceOf(b.owner).call() == 200 * 10**6
    assert ch.accountState(b.account).call()[0] == 1 + len(b.positions) + 2

    # A liquidation: ETH and BTC fall 40%; a levered long perp is taken over by the backstop.
    for u in venue.d.underlyings:
        price = bind(w3, venue.d, f"MockAggregator:{u['symbol']}/USD")
        vol = bind(w3, venue.d, f"MockAggregator:{u['symbol']}/IV")
        venue.send(price.functions.setAnswer(price.functions.answer().call() * 6 // 10), deployer)
        venue.send(vol.functions.setAnswer(vol.functions.answer().call()), deployer)
    c = next(
        x
        for x in m.accounts
        if x.book == "levered_perp"
        and x.positions[0][1] > 0
        and ch.marginOf(x.account).call()[5] == 2
    )
    r = ch.marginOf(c.account).call()
    nonce = ch.accountState(c.account).call()[0]
    receipt = venue.send(ch.liquidate(c.account, nonce, r[7], WAD), w3.eth.accounts[1])
    assert venue.ch.events.Liquidation().process_receipt(receipt, errors=DISCARD)
    assert ch.positionsOf(c.account).call() == [[], []]
    assert ch.accountState(c.account).call()[0] == nonce + 1
    venue.conservation([x.account for x in m.accounts])
