"""Funding against the compiled clearing house on anvil, to the wei.

A ledger kept by margin.funding alone (the funding clock and index of each perpetual, each
account's positions, the index each settled at, its settlement balance) follows random books
of perpetual trades on both underlyings, random index jumps (feed moves of up to 10%), pokes
after one to four intervals (and refused early ones), cap changes, withdrawals that realise
funding, and many intervals without a trade. After every round the chain must agree with the
ledger exactly: fundingState, every balance, accruedFunding; and the keeper's snapshot
(keeper.chain.view) must give portfolioOf and marginOf to the wei, funding included. Funding is
zero-sum: balances plus accrued funding over the accounts do not move with a poke.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractCustomError

from keeper.chain import Chain
from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.orders import dev_matcher
from margin.funding import FUNDING_INTERVAL, TICK, FundingClock, accrued_funding, poke

WAD = 10**18
USDC = 10**6


def _send(w3: Web3, fn: Any, sender: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


@dataclass
class Ledger:
    """The funding state as margin.funding computes it, independently of the chain."""

    index: dict[int, int] = field(default_factory=dict)
    clock: dict[int, FundingClock] = field(default_factory=dict)
    balance: dict[int, int] = field(default_factory=dict)
    positions: dict[int, dict[int, int]] = field(default_factory=dict)
    settled_at: dict[int, dict[int, int]] = field(default_factory=dict)

    def accrued(self, a: int) -> int:
        return sum(
            accrued_funding(q, self.index[i], self.settled_at[a][i])
            for i, q in self.positions[a].items()
        )

    def realise(self, a: int) -> None:
        self.balance[a] += self.accrued(a)
        for i in self.positions[a]:
            self.settled_at[a][i] = self.index[i]

    def trade(self, buyer: int, seller: int, iid: int, q: int, price: int, ts: int) -> None:
        self.clock[iid] = self.clock[iid].after_trade(price, ts)
        for a, d in ((buyer, q), (seller, -q)):
            self.realise(a)
            self.settled_at[a].setdefault(iid, self.index[iid])
            if iid not in self.positions[a]:
                self.settled_at[a][iid] = self.index[iid]
            nq = self.positions[a].get(iid, 0) + d
            if nq:
                self.positions[a][iid] = nq
            else:
                del self.positions[a][iid]
            self.balance[a] -= d * price // WAD  # exact on the LOT/TICK grid


@dataclass
class Venue:
    d: Deployment
    ch: Any
    perps: dict[int, int]  # perp id -> underlying
    feeds: dict[int, Any]  # underlying -> price feed contract
    accounts: list[int]
    owners: dict[int, str]


@pytest.fixture(scope="module")
def venue(w3: Web3, anvil: Anvil, contracts_built: None) -> Iterator[Venue]:
    snap = anvil.rpc("evm_snapshot")
    d = deploy_protocol(w3, funding_cap=10**16)
    ch = bind(w3, d, "ClearingHouse")
    usdc = bind(w3, d, "MockERC20:USDC")
    perps = {int(i["id"]): int(i["underlying"]) for i in d.instruments if i["expiry"] == 0}
    feeds = {u["index"]: bind(w3, d, f"MockAggregator:{u['symbol']}/USD") for u in d.underlyings}
    owners = {}
    for who in list(w3.eth.accounts)[2:7]:
        _send(w3, usdc.functions.mint(who, 10**9 * USDC), who)
        _send(w3, usdc.functions.approve(ch.address, 10**9 * USDC), who)
        a = account_id(who)
        _send(w3, ch.functions.deposit(a, 0, 5_000_000 * USDC), who)
        owners[a] = who
    yield Venue(d, ch, perps, feeds, list(owners), owners)
    anvil.rpc("evm_revert", [snap])


def _refresh(w3: Web3, v: Venue, rng: random.Random, jump: bool) -> None:
    """A new round on every feed (fresh prices); with ``jump``, the price feeds move by up to
    +-10% (the index the premium is measured against)."""
    for key in v.d.contracts:
        if not key.startswith("MockAggregator:"):
            continue
        feed = bind(w3, v.d, key)
        value = feed.functions.answer().call()
        if jump and key.endswith("/USD"):
            value = value * (1000 + rng.randrange(-100, 101)) // 1000
        _send(w3, feed.functions.setAnswer(value), w3.eth.accounts[0])


def _spot(v: Venue, u: int) -> int:
    feed = v.feeds[u]
    return feed.functions.answer().call() * 10 ** (18 - feed.functions.decimals().call())


def _block_ts(w3: Web3, receipt: Any) -> int:
    return int(w3.eth.get_block(receipt["blockNumber"])["timestamp"])


def test_random_books_pokes_and_jumps_match_the_mirror_to_the_wei(
    venue: Venue, w3: Web3, anvil: Anvil
) -> None:
    v, rng = venue, random.Random(4242)
    ch, deployer, matcher = v.ch, v.d.deployer, w3.eth.accounts[0]
    orders = dev_matcher(w3, ch)
    chain = Chain.connect(anvil.url, v.d)
    ledger = Ledger()
    for iid in v.perps:
        index, last_poke, last_trade, last_price, _ = ch.functions.fundingState(iid).call()
        assert (index, last_price) == (0, 0) and last_poke == last_trade  # listed: no funding yet
        ledger.index[iid] = 0
        ledger.clock[iid] = FundingClock.listed(last_poke)
    for a in v.accounts:
        ledger.balance[a] = ch.functions.balanceOf(a, 0).call()
        ledger.positions[a] = {}
        ledger.settled_at[a] = {}
    cap = ch.functions.fundingCap().call()
    total0 = sum(ledger.balance.values())
    pokes = clamped = early = negative = realised = accrued_seen = 0
    for rnd in range(14):
        # Trades (none in some rounds: accrual across intervals without a trade).
        for _ in range(rng.choice((0, 0, 3, 6, 10))):
            iid = rng.choice(list(v.perps))
            spot = _spot(v, v.perps[iid])
            price = max(TICK, (spot * (1000 + rng.randrange(-40, 41)) // 1000) // TICK * TICK)
            buyer, seller = rng.sample(v.accounts, 2)
            q = rng.randrange(1, 400) * WAD // 100
            rc = _send(w3, orders.trade(buyer, seller, iid, q, price), matcher)
            ledger.trade(buyer, seller, iid, q, price, _block_ts(w3, rc))
        # A withdrawal realises the account's funding.
        if rng.random() < 0.5:
            a = rng.choice(v.accounts)
            rc = _send(w3, ch.functions.withdraw(a, 0, 1 * USDC), v.owners[a])
            ledger.realise(a)
            ledger.balance[a] -= USDC * 10**12
            total0 -= USDC * 10**12
            realised += 1
        if rnd % 5 == 4:
            cap = rng.choice((0, 10**15, rng.randrange(0, 10**16 + 1)))
            _send(w3, ch.functions.setFundingCap(cap), deployer)
        # Time passes: one to four intervals (sometimes too little), the index jumps.
        wait = rng.choice((FUNDING_INTERVAL - 600, FUNDING_INTERVAL, 2 * FUNDING_INTERVAL, 14_400))
        anvil.rpc("evm_increaseTime", [wait])
        _refresh(w3, v, rng, jump=True)
        for iid, u in v.perps.items():
            fn = ch.functions.pokeFunding(iid)
            clock = ledger.clock[iid]
            head_ts = int(w3.eth.get_block("latest")["timestamp"])
            if head_ts + 1 < clock.last_poke + FUNDING_INTERVAL:
                with pytest.raises(ContractCustomError):
                    fn.call({"from": deployer}, block_identifier="latest")
                early += 1
                continue
            rc = _send(w3, fn, deployer)
            ts = _block_ts(w3, rc)
            delta, new_index = poke(ledger.index[iid], clock, _spot(v, u), cap, ts)
            (event,) = ch.events.FundingPoked().process_receipt(rc)
            assert event["args"]["mark"] == clock.mark(ts)
            assert event["args"]["delta"] == delta and event["args"]["index"] == new_index
            ledger.index[iid] = new_index
            ledger.clock[iid] = clock.after_poke(ts)
            pokes += 1
            negative += delta < 0
            spot = _spot(v, u)
            clamped += abs(delta) == spot * cap // WAD // TICK * TICK and delta != 0
        # The chain equals the ledger, and the keeper's reads equal the contract's views.
        for iid in v.perps:
            index, last_poke, last_trade, last_price, _ = ch.functions.fundingState(iid).call()
            c = ledger.clock[iid]
            assert (index, last_poke, last_trade) == (ledger.index[iid], c.last_poke, c.last_trade)
            assert last_price == c.last_price_ticks * TICK
        view = chain.view()
        snap = view.snapshot(v.accounts)
        reads = view.call_many(
            [
                c
                for a in v.accounts
                for c in (
                    view.ch_call("balanceOf", a, 0),
                    view.ch_call("accruedFunding", a),
                    view.ch_call("portfolioOf", a),
                    view.ch_call("marginOf", a),
                )
            ]
        )
        total = 0
        for k, a in enumerate(v.accounts):
            bal, accrued, pf, margin = (r.one() for r in reads[4 * k : 4 * k + 4])
            assert bal == ledger.balance[a], (rnd, a)
            assert accrued == ledger.accrued(a) == snap.accrued_funding(a), (rnd, a)
            assert _as_tuple(snap.portfolio(a).to_abi()) == _as_tuple(pf), (rnd, a)
            assert _as_tuple(snap.full_check(a).to_abi()) == _as_tuple(margin), (rnd, a)
            total += bal + accrued
            accrued_seen += accrued != 0
        assert total == total0, "funding is zero-sum to the wei"
    # The rounds reached what they are meant to.
    assert pokes >= 12 and early >= 1 and clamped >= 2 and negative >= 2 and realised >= 3
    assert accrued_seen >= 20  # (account, round) pairs with funding accrued and not realised
