"""keeper.chain on a real anvil with the real deployed protocol.

Start-up verification (one named error per mismatch), credentials never in messages or logs,
block-pinned reads (a view at block N keeps answering for N; a reorged block is refused),
round trips constant in the number of accounts (counted by an HTTP proxy), the engine's inputs
built from the reads equal the clearing house's own full check to the wei, and revert decoding.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractCustomError

from keeper.chain import (
    AbiMismatch,
    BlockNotAvailable,
    Chain,
    CodeHashMismatch,
    MissingCodeHash,
    NoCodeAtAddress,
    RpcUnavailable,
    WrongChain,
    decode_revert,
    redact_url,
    revert_data_of,
)
from keeper.chain import multicall as multicall_module
from keeper.chain.errors import BatchReadError
from keeper.chain.multicall import Call, abi_functions
from keeper.chain.view import LAYOUT_READS, ChainView, Layout, StalePrice
from keeper.config import RpcConfig
from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import model_marks
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.orders import dev_matcher
from keeper.pipeline.read import find_settlement_round
from margin.errors import MarketLengthMismatch
from margin.fixed_point import mul_down, mul_up
from margin.portfolio_margin import HEALTHY, LIQUIDATABLE

WAD = 10**18
USDC = 10**6
TICK = 10**10


def _send(w3: Web3, fn: Any, sender: str) -> None:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1


def _instrument(d: Deployment, u: int, kind: str, strike: int = 0, dated: bool = True) -> int:
    for i in d.instruments:
        if (
            i["underlying"] == u
            and i["kind"] == kind
            and i["strike"] == strike * WAD
            and (i["expiry"] != 0) == dated
        ):
            return int(i["id"])
    raise LookupError((u, kind, strike, dated))


@dataclasses.dataclass
class Seeded:
    d: Deployment
    accounts: dict[str, int]


@pytest.fixture(scope="module")
def seeded(w3: Web3, contracts_built: None) -> Seeded:
    """Accounts of every shape: hedged, naked short options on two underlyings, an isolated
    sub-account, volatile (WETH) collateral with borrowed cash, cash only, the counterparty."""
    d = deploy_protocol(w3)
    ch = bind(w3, d, "ClearingHouse")
    usdc, weth = bind(w3, d, "MockERC20:USDC"), bind(w3, d, "MockERC20:WETH")
    matcher = w3.eth.accounts[0]
    bob, hedged, naked, iso, vol, flat = list(w3.eth.accounts)[2:8]
    for who in (bob, hedged, naked, iso, vol, flat):
        _send(w3, usdc.functions.mint(who, 10**9 * USDC), who)
        _send(w3, usdc.functions.approve(ch.address, 10**9 * USDC), who)
    _send(w3, weth.functions.mint(vol, 10 * WAD), vol)
    _send(w3, weth.functions.approve(ch.address, 10 * WAD), vol)
    b = account_id(bob)
    _send(w3, ch.functions.deposit(b, 0, 5_000_000 * USDC), bob)

    orders = dev_matcher(w3, ch)

    def trade(buyer: int, seller: int, iid: int, q: int, p: int) -> None:
        _send(w3, orders.trade(buyer, seller, iid, q, p), matcher)

    a_h = account_id(hedged)
    _send(w3, ch.functions.deposit(a_h, 0, 2_000 * USDC), hedged)
    trade(a_h, b, _instrument(d, 0, "future", dated=False), WAD, 3000 * WAD)
    trade(a_h, b, _instrument(d, 0, "put", 3000), WAD, 150 * WAD)
    trade(a_h, b, _instrument(d, 0, "call", 3500), WAD, 40 * WAD)
    # Closing the first position swaps the last one into its slot: storage order is now
    # [call 3500, put 3000, future], and the engine must see that order (portfolioOf checks).
    trade(b, a_h, _instrument(d, 0, "future", dated=False), WAD, 3000 * WAD)
    trade(a_h, b, _instrument(d, 0, "future"), WAD, 3000 * WAD)

    a_n = account_id(naked)
    _send(w3, ch.functions.deposit(a_n, 0, 6_000 * USDC), naked)
    trade(b, a_n, _instrument(d, 0, "call", 3250), 2 * WAD, 100 * WAD)
    trade(b, a_n, _instrument(d, 1, "put", 55_000), WAD // 10, 800 * WAD)

    a_i0, a_i3 = account_id(iso), account_id(iso, 3)
    _send(w3, ch.functions.deposit(a_i0, 0, 10_000 * USDC), iso)
    _send(w3, ch.functions.transferCollateral(a_i0, a_i3, 0, 7_000 * WAD), iso)
    trade(a_i3, b, _instrument(d, 1, "future"), WAD // 2, 60_000 * WAD)

    a_v = account_id(vol)
    _send(w3, ch.functions.deposit(a_v, 1, 2 * WAD), vol)
    trade(a_v, b, _instrument(d, 0, "call", 3000), WAD, 200 * WAD)  # cash goes to -200

    a_f = account_id(flat)
    _send(w3, ch.functions.deposit(a_f, 0, 100 * USDC), flat)
    accounts = {
        "bob": b,
        "hedged": a_h,
        "naked": a_n,
        "iso_main": a_i0,
        "iso_sub": a_i3,
        "volatile": a_v,
        "flat": a_f,
        "backstop": d.backstop_account,
        "empty": account_id(flat, 7),
    }
    return Seeded(d, accounts)


@pytest.fixture(scope="module")
def proxy(anvil: Anvil) -> Iterator[CountingProxy]:
    with CountingProxy(anvil.url) as p:
        yield p


@pytest.fixture()
def chain(seeded: Seeded, proxy: CountingProxy) -> Chain:
    return Chain.connect(proxy.url, seeded.d)


@pytest.fixture()
def evm_snapshot(anvil: Anvil) -> Iterator[None]:
    """Tests that move time or mine blocks they later discard leave the chain as they found it."""
    snap = anvil.rpc("evm_snapshot")
    yield
    anvil.rpc("evm_revert", [snap])


def _refresh_feeds(w3: Web3, d: Deployment, moves: dict[str, int] | None = None) -> None:
    """A new round on every feed (answer optionally replaced), so prices are fresh."""
    for key in d.contracts:
        if key.startswith("MockAggregator:"):
            feed = bind(w3, d, key)
            value = (moves or {}).get(key, feed.functions.answer().call())
            _send(w3, feed.functions.setAnswer(value), w3.eth.accounts[0])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


# --- start-up verification --------------------------------------------------------------


def test_connect_verifies_and_records_code_hashes(chain: Chain, seeded: Seeded) -> None:
    assert chain.multicall_address == Web3.to_checksum_address(seeded.d.address("Multicall3"))
    for entry in seeded.d.contracts.values():
        assert entry["code_hash"].startswith("0x") and len(entry["code_hash"]) == 66


def _altered(d: Deployment, name: str, **changes: str) -> Deployment:
    contracts = {k: dict(v) for k, v in d.contracts.items()}
    contracts[name].update(changes)
    return dataclasses.replace(d, contracts=contracts)


def test_each_mismatch_has_its_named_error(seeded: Seeded, anvil: Anvil) -> None:
    d = seeded.d
    with pytest.raises(WrongChain) as e:
        Chain.connect(anvil.url, dataclasses.replace(d, chain_id=1))
    assert (e.value.expected, e.value.actual) == (1, anvil.chain_id)

    nowhere = "0x000000000000000000000000000000000000dEaD"
    with pytest.raises(NoCodeAtAddress) as e2:
        Chain.connect(anvil.url, _altered(d, "MockERC20:WETH", address=nowhere))
    assert e2.value.name == "MockERC20:WETH"

    # Another contract's code at the recorded address: same ABI name, wrong code.
    other = d.address("MockERC20:USDC")
    with pytest.raises(CodeHashMismatch) as e3:
        Chain.connect(anvil.url, _altered(d, "MockERC20:WETH", address=other))
    assert e3.value.name == "MockERC20:WETH"

    with pytest.raises(AbiMismatch) as e4:
        Chain.connect(anvil.url, _altered(d, "ClearingHouse", abi_sha256="00" * 32))
    assert e4.value.abi == "ClearingHouse"

    no_hash = _altered(d, "MarginVerifier")
    del no_hash.contracts["MarginVerifier"]["code_hash"]
    with pytest.raises(MissingCodeHash):
        Chain.connect(anvil.url, no_hash)


def test_from_config(seeded: Seeded, proxy: CountingProxy, anvil: Anvil) -> None:
    ws = anvil.url.replace("http://", "ws://")
    rpc = RpcConfig(url=proxy.url, ws_url=ws, chain_id=anvil.chain_id)
    chain = Chain.from_config(rpc, seeded.d)
    assert chain.rpc.url == proxy.url
    over_ws = Chain.from_config(rpc, seeded.d, websocket=True)
    assert over_ws.head().number == chain.head().number
    over_ws.close()
    with pytest.raises(WrongChain) as e:
        Chain.from_config(rpc.model_copy(update={"chain_id": 5}), seeded.d)
    assert e.value.source == "the [rpc] configuration" and e.value.actual == 5


# --- credentials ------------------------------------------------------------------------


def test_redact_url() -> None:
    assert redact_url("https://u:pw@rpc.example.com:8545/v3/KEY?apikey=S") == (
        "https://***@rpc.example.com:8545/***?***"
    )
    assert redact_url("wss://eth.example.org/") == "wss://eth.example.org/"
    assert redact_url("not a url") == "***"


def test_credentials_never_in_errors_or_logs(
    seeded: Seeded, proxy: CountingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = ("hunter2", "SEKRETKEY", "alice")
    dead = "http://alice:hunter2@127.0.0.1:9/v3/SEKRETKEY?apikey=SEKRETKEY"
    with pytest.raises(RpcUnavailable) as e:
        Chain.connect(dead, seeded.d, timeout=2)
    text = str(e.value)
    assert "127.0.0.1:9" in text and not any(s in text for s in secrets)
    assert e.value.__cause__ is None and e.value.__suppress_context__

    # A working endpoint with credentials in the URL (the proxy ignores them): web3's debug
    # logs name the endpoint; the records that reach handlers are scrubbed.
    host = proxy.url.removeprefix("http://")
    url = f"http://alice:hunter2@{host}/v3/SEKRETKEY?apikey=SEKRETKEY"
    with caplog.at_level(logging.DEBUG):
        chain = Chain.connect(url, seeded.d)
        chain.view().snapshot([seeded.accounts["hedged"]])
    assert proxy.paths and "SEKRETKEY" in proxy.paths[-1]  # the credential did reach the node
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Making" in logged  # web3 did log its requests...
    leaked = [
        r.name + ": " + r.getMessage()
        for r in caplog.records
        if any(s in r.getMessage() for s in secrets)
    ]
    assert not leaked  # ...without the credentials


# --- consistent, batched reads ----------------------------------------------------------


def test_full_check_from_chain_reads_equals_margin_of_to_the_wei(
    seeded: Seeded, chain: Chain, w3: Web3, evm_snapshot: None
) -> None:
    d = seeded.d
    accounts = list(seeded.accounts.values())
    for moves in (
        None,
        {
            "MockAggregator:ETH/USD": 2760 * 10**8,
            "MockAggregator:ETH/IV": 85 * 10**6,
            "MockAggregator:BTC/USD": 51_000 * 10**8,
        },
    ):
        _refresh_feeds(w3, d, moves)
        view = chain.view()
        snap = view.snapshot(accounts)
        onchain = view.call_many([view.ch_call("marginOf", a) for a in accounts])
        states = set()
        for (name, a), r in zip(seeded.accounts.items(), onchain, strict=True):
            mine = snap.full_check(a)
            assert _as_tuple(mine.to_abi()) == _as_tuple(r.one()), name
            states.add(mine.state)
        # The same portfolio/market the contract builds (portfolioOf, marketOf).
        for a in accounts:
            pf, mk = view.call_many([view.ch_call("portfolioOf", a), view.ch_call("marketOf", a)])
            inp = snap.inputs(a)
            assert _as_tuple(inp.portfolio.to_abi()) == _as_tuple(pf.one())
            assert _as_tuple(inp.market.to_abi()) == _as_tuple(mk.one())
    assert 2 in states, "after the move some account must be liquidatable"


def test_stale_feed_raises_oracle_libs_error(
    seeded: Seeded, chain: Chain, anvil: Anvil, w3: Web3, evm_snapshot: None
) -> None:
    _refresh_feeds(w3, seeded.d)
    anvil.rpc("evm_increaseTime", [3601])
    anvil.rpc("evm_mine")
    view = chain.view()
    a = seeded.accounts["naked"]
    snap = view.snapshot([a])
    (r,) = view.call_many([view.ch_call("marginOf", a, required=False)])
    assert not r.ok
    with pytest.raises(StalePrice) as e:
        snap.inputs(a)
    assert e.value.revert_data() == r.revert
    assert decode_revert(r.revert).name == "StalePrice"
    # The liquidation age still accepts the price (flag/liquidate use it).
    lenient = snap.inputs(a, lenient=True).market
    assert lenient.spots[0] == 3000 * WAD
    # Cash-only accounts read no oracle at all, as on chain.
    f = seeded.accounts["flat"]
    assert view.snapshot([f]).full_check(f).state == HEALTHY


def test_view_stays_pinned_to_its_block(seeded: Seeded, chain: Chain, w3: Web3) -> None:
    d = seeded.d
    a = seeded.accounts["hedged"]
    view = chain.view()
    before = view.snapshot([a])
    ch = bind(w3, d, "ClearingHouse")
    _send(
        w3,
        dev_matcher(w3, ch).trade(
            a, seeded.accounts["bob"], _instrument(d, 0, "future", dated=False), WAD, 3000 * WAD
        ),
        w3.eth.accounts[0],
    )
    _refresh_feeds(w3, d, {"MockAggregator:ETH/USD": 3100 * 10**8})
    again = view.snapshot([a])  # the same view: block N, whatever was mined since
    assert again.block == before.block
    assert again.accounts == before.accounts and again.feeds == before.feeds
    now = chain.view().snapshot([a])
    assert now.block.number > before.block.number
    assert now.accounts[a].nonce == before.accounts[a].nonce + 1
    assert now.accounts[a].positions != before.accounts[a].positions


def test_reorged_block_is_refused(seeded: Seeded, chain: Chain, anvil: Anvil, w3: Web3) -> None:
    snap_id = anvil.rpc("evm_snapshot")
    anvil.rpc("evm_mine")
    view = chain.view()  # pinned to the block just mined
    anvil.rpc("evm_revert", [snap_id])
    anvil.rpc("evm_mine", [{"timestamp": view.block.timestamp + 7}])  # same height, new hash
    assert chain.head().number == view.block.number and chain.head().hash != view.block.hash
    with pytest.raises(BlockNotAvailable):
        view.snapshot([seeded.accounts["hedged"]])


def test_round_trips_constant_in_number_of_accounts(
    seeded: Seeded, chain: Chain, proxy: CountingProxy, w3: Web3, evm_snapshot: None
) -> None:
    d = seeded.d
    ch, usdc = bind(w3, d, "ClearingHouse"), bind(w3, d, "MockERC20:USDC")
    dev = list(w3.eth.accounts)
    owner, matcher = dev[8], dev[0]
    usdc.functions.mint(owner, 10**12).transact({"from": owner})
    usdc.functions.approve(ch.address, 10**12).transact({"from": owner})
    perp = _instrument(d, 0, "future", dated=False)
    many = [account_id(owner, s) for s in range(1, 201)]
    orders = dev_matcher(w3, ch)
    for a in many:  # automine: each transaction is mined before the call returns
        ch.functions.deposit(a, 0, 1000 * USDC).transact({"from": owner, "gas": 300_000})
        orders.trade(a, seeded.accounts["bob"], perp, WAD // 10, 3000 * WAD).transact(
            {"from": matcher, "gas": 3_000_000}
        )
    _refresh_feeds(w3, d)
    chain.view().snapshot(many[:1])  # learn the layout once
    counts = {}
    for n in (10, 200):
        proxy.reset()
        view = chain.view()
        snap = view.snapshot(many[:n])
        counts[n] = proxy.requests
        assert len(snap.accounts) == n
        assert all(s.positions == ((perp, WAD // 10),) for s in snap.accounts.values())
        assert snap.round_trips == proxy.requests - 1  # the header fetch, then the reads
    assert counts[10] == counts[200] == 2


def test_layout_change_costs_round_trips_not_correctness(
    seeded: Seeded, chain: Chain, proxy: CountingProxy, w3: Web3, evm_snapshot: None
) -> None:
    """A newly listed instrument (unknown to the layout guess): one layout read and one
    re-read, and the snapshot has it."""
    ch = bind(w3, seeded.d, "ClearingHouse")
    expiry = seeded.d.instruments[-1]["expiry"]
    _send(w3, ch.functions.listInstrument(0, 1, 4000 * WAD, expiry), w3.eth.accounts[0])
    view = chain.view()
    snap = view.snapshot([seeded.accounts["naked"]])
    assert len(snap.instruments) == len(seeded.d.instruments) + 1
    assert snap.round_trips == 4  # guess, counts, configs, re-read
    assert chain.view().snapshot([]).round_trips == 1
    # A guess larger than the chain (an asset and an underlying that do not exist) is a wrong
    # guess too, not a failed read.
    chain.layout = dataclasses.replace(
        chain.layout,
        assets=chain.layout.assets + 1,
        feeds=(*chain.layout.feeds, ("0x" + "11" * 20,) * 2),
    )
    again = chain.view().snapshot([seeded.accounts["naked"]])
    assert again.round_trips == 4 and again.accounts == snap.accounts


def test_a_layout_read_from_another_state_is_read_again(seeded: Seeded, chain: Chain) -> None:
    """A node that answers the layout read from the next block's state while mining it (anvil
    on automine): the snapshot reads the layout again, a moment later, rather than failing the
    block; a layout that never agrees is a named error."""

    class Racing(ChainView):
        wrong = 0

        def _read_layout(self) -> Layout:
            real = super()._read_layout()
            if self.wrong == 0:
                return real
            self.wrong -= 1  # one instrument more: what the next block lists
            return dataclasses.replace(real, instruments=real.instruments + 1)

    accounts = [seeded.accounts["naked"]]
    head = chain.head()
    expected = chain.view(head).snapshot(accounts)
    for wrong in (1, 2):
        chain.layout = dataclasses.replace(chain.layout, instruments=0)  # a wrong guess
        view = Racing(chain, head)
        view.wrong = wrong
        snap = view.snapshot(accounts)
        assert (snap.accounts, snap.instruments) == (expected.accounts, expected.instruments)
    chain.layout = dataclasses.replace(chain.layout, instruments=0)
    never = Racing(chain, head)
    never.wrong = LAYOUT_READS
    with pytest.raises(BatchReadError, match="layout unstable"):
        never.snapshot(accounts)


def test_websocket_connection_reads_the_same(seeded: Seeded, anvil: Anvil, chain: Chain) -> None:
    ws = Chain.connect(anvil.url.replace("http://", "ws://"), seeded.d)
    block = chain.head()
    accounts = list(seeded.accounts.values())
    try:
        over_ws = ws.view(block).snapshot(accounts)
    finally:
        ws.close()
    over_http = chain.view(block).snapshot(accounts)
    assert over_ws.accounts == over_http.accounts and over_ws.feeds == over_http.feeds


# --- revert decoding --------------------------------------------------------------------


def test_decode_protocol_reverts(seeded: Seeded, chain: Chain, w3: Web3) -> None:
    d = seeded.d
    ch = bind(w3, d, "ClearingHouse")
    a = seeded.accounts["hedged"]
    nonce = chain.view().snapshot([a]).accounts[a].nonce
    with pytest.raises(ContractCustomError) as reverted:  # it carries the revert data
        ch.functions.liquidate(a, nonce + 5, [0, 0], WAD).call()
    dec = decode_revert(revert_data_of(reverted.value))
    assert dec.name == "StaleAccountNonce"
    assert dec.args == (a, nonce + 5, nonce)
    assert dec.as_dict()["args"] == {"account": a, "expected": nonce + 5, "actual": nonce}
    assert str(dec) == f"StaleAccountNonce(account={a}, expected={nonce + 5}, actual={nonce})"

    # The verifier's own errors map to margin.errors' classes, revert data identical.
    verifier = bind(w3, d, "MarginVerifier")
    params = ch.functions.riskParams().call()
    view = chain.view()
    full_check = abi_functions("MarginVerifier")["fullCheck"]
    bad_market = (0, 0, [WAD], [0])  # one underlying where the parameters have two
    call = Call(verifier.address, full_check, (([], [0, 0]), bad_market, params), required=False)
    (r,) = view.call_many([call])
    dec = decode_revert(r.revert)
    assert dec.name == "MarketLengthMismatch"
    err = dec.margin_error()
    assert isinstance(err, MarketLengthMismatch) and err.revert_data() == r.revert

    assert str(decode_revert(bytes.fromhex("4e487b71" + "11".rjust(64, "0")))) == (
        "Panic(code=17) [arithmetic overflow]"
    )
    assert decode_revert(b"").name == "<empty>"
    assert decode_revert("0xdeadbeef").name == "<unknown>"
    assert decode_revert(bytes.fromhex("08c379a0") + b"\x00" * 3).name == "<unknown>"


def test_lenient_market_matches_flag_and_liquidate_on_stale_prices(
    seeded: Seeded, chain: Chain, anvil: Anvil, w3: Web3, evm_snapshot: None
) -> None:
    """Past maxAge but within liquidationMaxAge the strict check reverts and the liquidation
    path still runs: the lenient inputs give the bounty `liquidate` returns, to the wei; past
    liquidationMaxAge both sides fail with the same StalePrice."""
    d = seeded.d
    _refresh_feeds(w3, d, {"MockAggregator:BTC/USD": 51_000 * 10**8})
    anvil.rpc("evm_increaseTime", [3601])
    anvil.rpc("evm_mine")
    a = seeded.accounts["iso_sub"]
    ch = bind(w3, d, "ClearingHouse")
    liquidator = list(w3.eth.accounts)[9]

    view = chain.view()
    snap = view.snapshot([a])
    with pytest.raises(StalePrice):
        snap.inputs(a)
    inp = snap.inputs(a, lenient=True)
    table = snap.table(inp.market)
    witness = table.full_check(inp.portfolio).witness
    r = table.witness_check(inp.portfolio, witness)
    assert r.state == LIQUIDATABLE
    penalty_rate, bounty_share, _, min_bounty, max_bounty = snap.liquidation_config
    full_penalty = mul_up(mul_up(r.requirement, WAD), penalty_rate)
    penalty = min(full_penalty, max(r.equity, 0))
    bounty = min(max(mul_down(penalty, bounty_share), min_bounty), max_bounty, penalty)
    if full_penalty > r.equity:  # a full close of a book that cannot pay: the fund tops up
        fund = ch.functions.insuranceFund().call(block_identifier=view.block.number)
        bounty += max(0, min(min_bounty - bounty, fund))
    nonce = snap.accounts[a].nonce
    onchain = ch.functions.liquidate(a, nonce, witness, WAD).call(
        {"from": liquidator}, block_identifier=view.block.number
    )
    assert onchain == bounty > 0

    anvil.rpc("evm_increaseTime", [86_400])
    anvil.rpc("evm_mine")
    view = chain.view()
    snap = view.snapshot([a])
    with pytest.raises(StalePrice) as e:
        snap.inputs(a, lenient=True)
    with pytest.raises(ContractCustomError) as reverted:
        ch.functions.flag(a, nonce, witness).call(block_identifier=view.block.number)
    assert revert_data_of(reverted.value) == e.value.revert_data()


def test_node_without_batch_support_still_reads_per_chunk(seeded: Seeded, anvil: Anvil) -> None:
    with CountingProxy(anvil.url, reject_batches=True) as refusing:
        chain = Chain.connect(refusing.url, seeded.d, calls_per_multicall=10)
        block = chain.head()
        accounts = list(seeded.accounts.values())
        snap = chain.view(block).snapshot(accounts)
        # 11 globals + 2 + 2 + 3 x 24 instruments + 8 feed reads + 9 accounts x 5 = 140 calls.
        assert snap.round_trips == 1 + 14  # the refused batch, then one per aggregate3 chunk
        assert not chain.rpc.batching
    with CountingProxy(anvil.url) as ok:
        reference = Chain.connect(ok.url, seeded.d).view(block).snapshot(accounts)
    assert snap.accounts == reference.accounts and snap.feeds == reference.feeds


def test_node_capping_batch_size_gets_smaller_batches(seeded: Seeded, anvil: Anvil) -> None:
    """A node refusing batches above a size ("Invalid request", as anvil does for very large
    ones) gets the same reads in batches it accepts: halved until accepted, still batched."""
    with CountingProxy(anvil.url, max_batch=3) as capped:
        chain = Chain.connect(capped.url, seeded.d, calls_per_multicall=10)
        block = chain.head()
        accounts = list(seeded.accounts.values())
        snap = chain.view(block).snapshot(accounts)
        assert chain.rpc.batching and chain.rpc.max_batch is not None
        assert chain.rpc.max_batch <= 3
        assert capped.refused_batches >= 1
        refused = capped.refused_batches
        chain.view(block).snapshot(accounts)
        assert capped.refused_batches == refused  # the size it learned is kept
    with CountingProxy(anvil.url) as ok:
        reference = Chain.connect(ok.url, seeded.d).view(block).snapshot(accounts)
    assert snap.accounts == reference.accounts and snap.feeds == reference.feeds


def test_batches_end_before_the_body_cap(
    seeded: Seeded, anvil: Anvil, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node caps a request's body (anvil: 2 MiB): a read of more calldata than
    BATCH_HEX_CHARS goes in several batches, each at most that (or one aggregate3), with the
    same result; the view counts each batch as a round trip."""
    monkeypatch.setattr(multicall_module, "BATCH_HEX_CHARS", 12_000)
    with CountingProxy(anvil.url) as proxy:
        chain = Chain.connect(proxy.url, seeded.d, calls_per_multicall=10)
        block = chain.head()
        accounts = list(seeded.accounts.values())
        chain.view(block).snapshot(accounts)  # learn the layout
        proxy.reset()
        snap = chain.view(block).snapshot(accounts)
        assert 1 < snap.round_trips == proxy.requests
        assert snap.round_trips < 14  # 140 calls: still batched, not one per aggregate3
    with CountingProxy(anvil.url) as ok:
        reference = Chain.connect(ok.url, seeded.d).view(block).snapshot(accounts)
    assert snap.accounts == reference.accounts and snap.feeds == reference.feeds


def test_settled_instrument_and_its_price_are_read(
    seeded: Seeded, chain: Chain, anvil: Anvil, w3: Web3, evm_snapshot: None
) -> None:
    d = seeded.d
    iid = _instrument(d, 0, "call", 3000)
    expiry = next(i["expiry"] for i in d.instruments if i["id"] == iid)
    anvil.rpc("evm_setNextBlockTimestamp", [expiry + 60])
    anvil.rpc("evm_mine")
    _refresh_feeds(w3, d, {"MockAggregator:ETH/USD": 3123_45678901})
    view = chain.view()
    ins = view.snapshot([]).instruments[iid]
    choice = find_settlement_round(view, view.snapshot([]), ins)
    assert choice.round_id == _latest_round(w3, d, "MockAggregator:ETH/USD")
    ch = bind(w3, d, "ClearingHouse")
    _send(w3, ch.functions.settleInstrument(iid, choice.round_id), w3.eth.accounts[0])
    snap = chain.view().snapshot([seeded.accounts["volatile"]])
    assert snap.instruments[iid].settled
    assert snap.settlement_prices == {iid: 3123_45678901 * 10**10}  # 8 decimals -> WAD


def _latest_round(w3: Web3, d: Deployment, key: str) -> int:
    return int(bind(w3, d, key).functions.latestRoundData().call()[0])


def test_settlement_round_scan_against_the_contract(
    seeded: Seeded, chain: Chain, anvil: Anvil, w3: Web3, evm_snapshot: None
) -> None:
    """Feeds with holes in their round ids (MockAggregator.setRound; getRoundData reverts for a
    round never written) and many rounds after expiry: the keeper names the round the contract
    accepts, and finds none where the contract accepts none."""
    d = seeded.d
    ch = bind(w3, d, "ClearingHouse")
    dev0 = w3.eth.accounts[0]
    eth_call = _instrument(d, 0, "call", 3000)
    btc_fut = _instrument(d, 1, "future")
    expiry = next(i["expiry"] for i in d.instruments if i["id"] == eth_call)
    anvil.rpc("evm_setNextBlockTimestamp", [expiry + 5000])
    anvil.rpc("evm_mine")

    def write(key: str, rid: int, answer: int, updated: int) -> None:
        _send(w3, bind(w3, d, key).functions.setRound(rid, answer, updated, updated, rid), dev0)

    # ETH: last pre-expiry round r+1, then a hole (r+2), then rounds after expiry.
    r = _latest_round(w3, d, "MockAggregator:ETH/USD")
    write("MockAggregator:ETH/USD", r + 1, 3000 * 10**8, expiry - 10)
    for k in (3, 4):
        write("MockAggregator:ETH/USD", r + k, 3100 * 10**8, expiry + 10 * k)
    # BTC: the first round after expiry r+1, a hole above it, then 40 more rounds.
    b = _latest_round(w3, d, "MockAggregator:BTC/USD")
    write("MockAggregator:BTC/USD", b + 1, 61_234_56789012, expiry + 1)
    for k in range(3, 43):
        write("MockAggregator:BTC/USD", b + k, 62_000 * 10**8, expiry + 100 + k)
    view = chain.view()
    snap = view.snapshot([])
    eth = find_settlement_round(view, snap, snap.instruments[eth_call])
    assert eth.round_id is None and str(r + 2) in eth.reason
    for rid, error in ((r + 3, "PreviousRoundMissing"), (r + 1, "PriceBeforeExpiry")):
        with pytest.raises(ContractCustomError) as exc:
            ch.functions.settleInstrument(eth_call, rid).call()
        assert decode_revert(revert_data_of(exc.value) or b"").name == error
    start = view.round_trips
    btc = find_settlement_round(view, snap, snap.instruments[btc_fut])
    assert btc.round_id == b + 1
    assert view.round_trips - start == 2  # 16 rounds in the first read, 32 in the second
    with pytest.raises(ContractCustomError) as exc:
        ch.functions.settleInstrument(btc_fut, b + 3).call()  # above the hole: refused
    assert decode_revert(revert_data_of(exc.value) or b"").name == "PreviousRoundMissing"
    _send(w3, ch.functions.settleInstrument(btc_fut, btc.round_id), dev0)
    assert ch.functions.settlementPrice(btc_fut).call() == 61_234_56789012 * 10**10


def test_settled_and_expired_books_match_portfolio_of(
    seeded: Seeded, chain: Chain, anvil: Anvil, w3: Web3, evm_snapshot: None
) -> None:
    """Random books over every instrument, then past expiry: about half of ETH's dated
    instruments settled (on the round published exactly at expiry, which the keeper names),
    the others and BTC's expired but unsettled. For every book, at two price levels, the
    keeper's portfolio equals portfolioOf (settled positions folded into cash, expired ones
    still positions) and the engine's full check equals marginOf, to the wei."""
    rng = random.Random(1313)
    d = seeded.d
    ch, usdc = bind(w3, d, "ClearingHouse"), bind(w3, d, "MockERC20:USDC")
    dev = list(w3.eth.accounts)
    owner, matcher, b = dev[9], dev[0], seeded.accounts["bob"]
    _send(w3, usdc.functions.mint(owner, 10**10 * USDC), owner)
    _send(w3, usdc.functions.approve(ch.address, 10**10 * USDC), owner)
    books = [account_id(owner, s) for s in range(40, 64)]
    dated = [i for i in d.instruments if i["expiry"]]
    marks = {0: 3000, 1: 60_000}
    mark, orders = model_marks(chain, d), dev_matcher(w3, ch)
    for a in books:
        _send(w3, ch.functions.deposit(a, 0, 300_000 * USDC), owner)
        for ins in rng.sample(dated, 4) + rng.sample(d.instruments, 2):
            q = rng.randrange(1, 30) * WAD // 10
            spot = marks[ins["underlying"]]
            # The model mark, off by up to 0.3% of spot: inside the protocol's price band.
            price = max(0, mark[ins["id"]] + rng.randrange(-3, 4) * spot * WAD // 1000)
            price = price or (TICK if ins["kind"] == "future" else 0)
            buyer, seller = (a, b) if rng.random() < 0.5 else (b, a)
            _send(w3, orders.trade(buyer, seller, ins["id"], q, price), matcher)
    expiry = dated[0]["expiry"]
    assert all(i["expiry"] == expiry for i in dated)
    # Rounds before, exactly at, and after expiry; the settlement names the one at expiry.
    eth = bind(w3, d, "MockAggregator:ETH/USD")
    _send(w3, eth.functions.setAnswer(2990_00000000), dev[0])
    anvil.rpc("evm_setNextBlockTimestamp", [expiry])
    _send(w3, eth.functions.setAnswer(3012_34567891), dev[0])  # updatedAt == expiry
    at_expiry = _latest_round(w3, d, "MockAggregator:ETH/USD")
    _send(w3, eth.functions.setAnswer(3050_00000000), dev[0])
    _refresh_feeds(w3, d)
    view = chain.view()
    snap = view.snapshot([])
    eth_dated = [i["id"] for i in dated if i["underlying"] == 0]
    to_settle = sorted(rng.sample(eth_dated, len(eth_dated) // 2))
    for iid in to_settle:
        choice = find_settlement_round(view, snap, snap.instruments[iid])
        assert choice.round_id == at_expiry
        _send(w3, ch.functions.settleInstrument(iid, choice.round_id), dev[0])
        assert ch.functions.settlementPrice(iid).call() == 3012_34567891 * 10**10
    accounts = books + list(seeded.accounts.values())
    compared = folded = 0
    for moves in (None, {"MockAggregator:ETH/USD": 2700 * 10**8}):
        _refresh_feeds(w3, d, moves)
        view = chain.view()
        snap = view.snapshot(accounts)
        assert set(snap.settlement_prices) == set(to_settle)
        reads = view.call_many(
            [
                c
                for a in accounts
                for c in (view.ch_call("portfolioOf", a), view.ch_call("marginOf", a))
            ]
        )
        for k, a in enumerate(accounts):
            pf, margin = reads[2 * k].one(), reads[2 * k + 1].one()
            assert _as_tuple(snap.portfolio(a).to_abi()) == _as_tuple(pf), a
            if a == seeded.accounts["backstop"]:
                continue
            assert _as_tuple(snap.full_check(a).to_abi()) == _as_tuple(margin), a
            compared += 1
            folded += bool(snap.settled_positions(a))
        # positionsOf still lists the settled positions (raw storage).
        assert any(snap.settled_positions(a) and snap.live_positions(a) for a in books)
    assert compared >= 60 and folded >= 20


def test_random_books_match_margin_of(
    seeded: Seeded, chain: Chain, w3: Web3, evm_snapshot: None
) -> None:
    """Deterministic random books over every listed instrument (both underlyings, futures and
    options, long and short, partial closes): the full check from the snapshot equals
    marginOf for each, to the wei."""
    rng = random.Random(2024)
    d = seeded.d
    ch, usdc = bind(w3, d, "ClearingHouse"), bind(w3, d, "MockERC20:USDC")
    dev = list(w3.eth.accounts)
    owner, matcher, b = dev[9], dev[0], seeded.accounts["bob"]
    _send(w3, usdc.functions.mint(owner, 10**9 * USDC), owner)
    _send(w3, usdc.functions.approve(ch.address, 10**9 * USDC), owner)
    books = [account_id(owner, s) for s in range(10, 16)]
    marks = {0: 3000, 1: 60_000}
    mark, orders = model_marks(chain, d), dev_matcher(w3, ch)
    for a in books:
        _send(w3, ch.functions.deposit(a, 0, 200_000 * USDC), owner)
        for _ in range(6):
            ins = rng.choice(d.instruments)
            q = rng.randrange(1, 30) * WAD // 10
            spot = marks[ins["underlying"]]
            # The model mark, off by up to 0.3% of spot: inside the protocol's price band.
            price = max(0, mark[ins["id"]] + rng.randrange(-3, 4) * spot * WAD // 1000)
            price = price or (TICK if ins["kind"] == "future" else 0)
            if rng.random() < 0.5:
                buyer, seller = a, b
            else:
                buyer, seller = b, a
            # _send waits for the receipt: the two pinned reads below must not straddle anvil
            # mining the last trade.
            _send(w3, orders.trade(buyer, seller, ins["id"], q, price), matcher)
    view = chain.view()
    snap = view.snapshot(books)
    onchain = view.call_many([view.ch_call("marginOf", a) for a in books])
    assert sum(len(s.positions) for s in snap.accounts.values()) >= 20
    for a, r in zip(books, onchain, strict=True):
        assert _as_tuple(snap.full_check(a).to_abi()) == _as_tuple(r.one())


def test_backstop_book_reads_match_portfolio_of(
    seeded: Seeded, chain: Chain, w3: Web3, evm_snapshot: None
) -> None:
    """The backstop's quantities live in the instruments' storage words (its book, keyed by
    instrument), not in position slots: after the backstop buys three instruments and sells
    one back in full (its entry leaves the list), positionsOf reports the book, and the
    keeper's snapshot of the backstop equals portfolioOf and its full check marginOf, to the
    wei."""
    d = seeded.d
    ch = bind(w3, d, "ClearingHouse")
    matcher, b, bk = w3.eth.accounts[0], seeded.accounts["bob"], d.backstop_account
    mark, orders = model_marks(chain, d), dev_matcher(w3, ch)
    perp = _instrument(d, 0, "future", dated=False)
    call, put = _instrument(d, 0, "call", 3500), _instrument(d, 0, "put", 3000)
    before = dict(zip(*chain.view().call("positionsOf", bk), strict=True))
    for iid in (perp, call, put):
        _send(w3, orders.trade(bk, b, iid, WAD, mark[iid]), matcher)
    _send(w3, orders.trade(b, bk, perp, WAD, mark[perp]), matcher)
    expected = dict(before)
    for iid in (call, put):
        expected[iid] = expected.get(iid, 0) + WAD
    expected = {i: q for i, q in expected.items() if q}
    view = chain.view()
    snap = view.snapshot([bk])
    ids, qs = view.call("positionsOf", bk)
    assert dict(zip(ids, qs, strict=True)) == expected
    assert (perp in ids) == (before.get(perp, 0) != 0)  # a book back at zero has no entry
    pf, margin = (
        r.one()
        for r in view.call_many([view.ch_call("portfolioOf", bk), view.ch_call("marginOf", bk)])
    )
    assert _as_tuple(snap.portfolio(bk).to_abi()) == _as_tuple(pf)
    assert _as_tuple(snap.full_check(bk).to_abi()) == _as_tuple(margin)


def test_snapshot_reuses_books_whose_nonce_did_not_move(
    seeded: Seeded, chain: Chain, w3: Web3, evm_snapshot: None
) -> None:
    """A later snapshot given the earlier account data reads only nonce and flag of the books
    that did not change, reads in full the one a deposit changed, and equals a fresh read."""
    accounts = sorted(seeded.accounts.values())
    before = chain.view().snapshot(accounts)
    ch, usdc = bind(w3, seeded.d, "ClearingHouse"), bind(w3, seeded.d, "MockERC20:USDC")
    flat = seeded.accounts["flat"]
    owner = ch.functions.accountOwner(flat).call()
    _send(w3, usdc.functions.approve(ch.address, 10**9 * USDC), owner)
    _send(w3, ch.functions.deposit(flat, 0, 7 * USDC), owner)
    view = chain.view()
    reused = view.snapshot(accounts, reuse=before.accounts)
    fresh = view.snapshot(accounts)
    assert reused.accounts == fresh.accounts
    assert reused.accounts[flat].balances[0] == before.accounts[flat].balances[0] + 7 * WAD
    assert reused.reused_accounts == len(accounts) - 1
    assert fresh.reused_accounts == 0
