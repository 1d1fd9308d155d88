"""The service's per-block states equal the verifier's, for every account, on a randomised devnet.

A fresh anvil with the protocol (price feeds of 18 decimals, so a spot can be set to the wei),
a randomised seeded market (keeper.devnet.market.seed_market: option spreads, naked shorts,
perps, calendars, WETH collateral), and two adversarial accounts, one long perpetual each on ETH
and BTC. The keeper runs as ``keeper run`` does (``KeeperService``, read-only: nothing is sent,
so the books stay as seeded) and processes one block per price move. Before each move the
exact engine sizes the move: the new spots put the adversarial accounts at exactly MM or IM,
or 1 wei either side (checked against ``marginOf`` on chain). After each block every account's
state in the service equals ``ClearingHouse.marginOf``'s, and the whole-book float pass must
have settled some accounts (the path under test).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract

from keeper.chain import Chain
from keeper.chain.view import ProtocolSnapshot
from keeper.config import load_config_data
from keeper.deployment import MarketConfig, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import SeededMarket, seed_market
from keeper.orders import dev_matcher
from keeper.service import KeeperService
from tests.conftest import LOG_DIR

WAD = 10**18
MARKETS = (
    MarketConfig("ETH", 3000, 60, (2500, 2750, 3000, 3250, 3500), feed_decimals=18),
    MarketConfig("BTC", 60_000, 50, (50_000, 55_000, 60_000, 65_000, 70_000), feed_decimals=18),
)
#: marginOf's state from the keeper's (no account is flagged: the keeper sends nothing).
VERIFIER_STATE = {
    "healthy": 0,
    "empty": 0,
    "margin_call": 1,
    "liquidatable": 2,
    "bad_debt": 2,
}
#: (threshold, offset in wei) of equity per price move, for the ETH and the BTC account.
EDGES = [("mm", -1), ("im", 0), ("mm", 1), ("im", -1), ("mm", 0), ("im", 1)]


@dataclass
class Devnet:
    node: Anvil
    w3: Web3
    chain: Chain
    ch: Contract
    market: SeededMarket
    edge: dict[int, int]  # underlying -> adversarial account (one long perpetual)
    spot_feeds: list[Contract]
    vol_feeds: list[Contract]
    workdir: Path


def _send(w3: Web3, fn, sender: str) -> None:  # type: ignore[no-untyped-def]
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1


@pytest.fixture(scope="module")
def devnet(contracts_built: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    workdir = tmp_path_factory.mktemp("differential")
    with Anvil(log_path=LOG_DIR / f"anvil-differential-{worker}.log") as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3, markets=MARKETS)
        d.write(workdir / "deployment.json")
        chain = Chain.connect(node.url, d)
        market = seed_market(w3, d, chain, 40, seed=random.randrange(2**32))
        ch = bind(w3, d, "ClearingHouse")
        usdc = bind(w3, d, "MockERC20:USDC")
        owner = w3.eth.accounts[5]
        _send(w3, usdc.functions.mint(owner, 10**12), owner)
        _send(w3, usdc.functions.approve(ch.address, 2**255), owner)
        matcher = dev_matcher(w3, ch)
        sender = d.roles.get("matcher", d.deployer)
        edge = {}
        for u, (sub, usd) in enumerate(((1, 1_000), (2, 15_000))):
            a = account_id(owner, sub)
            _send(w3, ch.functions.deposit(a, 0, usd * 10**6), owner)
            perp = next(
                int(i["id"])
                for i in d.instruments
                if i["underlying"] == u and i["kind"] == "future" and int(i["expiry"]) == 0
            )
            spot = MARKETS[u].spot * WAD
            _send(w3, matcher.trade(a, market.maker, perp, WAD, spot), sender)
            edge[u] = a
        feeds = [bind(w3, d, f"MockAggregator:{m.symbol}/USD") for m in MARKETS]
        vols = [bind(w3, d, f"MockAggregator:{m.symbol}/IV") for m in MARKETS]
        yield Devnet(node, w3, chain, ch, market, edge, feeds, vols, workdir)


def _with_spot(snap: ProtocolSnapshot, u: int, spot: int) -> ProtocolSnapshot:
    """The snapshot with underlying ``u``'s price feed answering ``spot`` (18 decimals)."""
    feed = snap.underlyings[u].price_feed
    feeds = dict(snap.feeds)
    feeds[feed] = replace(feeds[feed], answer=spot)
    return replace(snap, feeds=feeds, _tables={})


def _gap(snap: ProtocolSnapshot, account: int, edge: str) -> int:
    r = snap.full_check(account)
    return r.equity - (r.requirement if edge == "mm" else r.initial_margin)


def _spot_at(snap: ProtocolSnapshot, u: int, account: int, edge: str, offset: int) -> int:
    """A spot (wei) at which the long-perpetual ``account`` has equity exactly ``offset`` wei
    from its MM or IM, found with the exact engine (equity minus margin grows with the spot,
    by at most 1 wei per wei for one contract)."""
    lo, hi = 1, 10**6 * WAD  # gap(lo) < offset <= gap(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _gap(_with_spot(snap, u, mid), account, edge) < offset:
            lo = mid
        else:
            hi = mid
    assert _gap(_with_spot(snap, u, hi), account, edge) == offset
    return hi


def _service(net: Devnet) -> KeeperService:
    cfg = load_config_data(
        {
            "rpc": {"url": net.node.url, "chain_id": net.node.chain_id},
            "deployment": {"file": str(net.workdir / "deployment.json")},
            "store": {"url": f"sqlite:///{net.workdir / 'keeper.db'}"},
            "decisions": {"confirmations": 1, "sweep_interval_seconds": 3600},
            "metrics": {"enabled": False},
            "service": {"dry_run": True, "settle_interval_seconds": 3600},
        }
    )
    return KeeperService(cfg)


def test_service_states_equal_the_verifier_at_every_block(devnet: Devnet) -> None:
    net = devnet
    w3, ch = net.w3, net.ch
    admin = w3.eth.accounts[0]
    service = _service(net)
    service.open()
    try:
        accounts = sorted(
            {a.account for a in net.market.accounts} | set(net.edge.values()) | {net.market.maker}
        )
        bounded = 0
        for step in range(len(EDGES)):
            # The spots of the next block, sized by the exact engine at a time one second on.
            snap = net.chain.view().snapshot(list(net.edge.values()))
            snap = replace(snap, timestamp=snap.timestamp + 1)
            spots = {}
            for u, a in net.edge.items():
                edge, offset = EDGES[(step + 3 * u) % len(EDGES)]
                spots[u] = _spot_at(snap, u, a, edge, offset)
                snap = _with_spot(snap, u, spots[u])
            net.node.rpc("evm_setAutomine", [False])
            for u, spot in spots.items():
                net.spot_feeds[u].functions.setAnswer(spot).transact({"from": admin})
                vol = net.vol_feeds[u].functions.answer().call()
                net.vol_feeds[u].functions.setAnswer(vol).transact({"from": admin})
            net.node.rpc("evm_mine", [snap.timestamp])
            net.node.rpc("evm_setAutomine", [True])
            block = w3.eth.block_number
            report = service.tick()
            assert report is not None and report.processed and report.head == block
            for u, a in net.edge.items():  # the adversarial books are where they were meant
                edge, offset = EDGES[(step + 3 * u) % len(EDGES)]
                m = ch.functions.marginOf(a).call(block_identifier=block)
                assert m[0] - (m[1] if edge == "mm" else m[2]) == offset
            for a in accounts:
                state = ch.functions.marginOf(a).call(block_identifier=block)[5]
                assert VERIFIER_STATE[service.states[a]] == state, (step, a, service.states[a])
            bounded += report.bounded
        assert bounded > 0  # the whole-book float pass did settle accounts
    finally:
        service.close()
