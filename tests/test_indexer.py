"""keeper.indexer on a real anvil with the deployed protocol, on SQLite and PostgreSQL.

One anvil per module (reorgs must not disturb the session's shared node): the protocol's
deployment plus a few hundred blocks of deposits, trades, transfers and withdrawals with empty
blocks in between. Every test indexes into a fresh store and compares with the chain itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlmodel import col, delete, select
from web3 import Web3

from keeper.chain import Chain, RpcUnavailable
from keeper.chain.errors import RpcError
from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.activity import Activity, build_history, send
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.indexer import STREAM, ChainMoved, Indexer, ReorgTooDeep, is_range_refusal
from keeper.indexer.core import bloom_has
from keeper.indexer.decode import UNKNOWN, decode_log
from keeper.orders import dev_matcher
from keeper.pipeline.read import find_settlement_round
from keeper.store import (
    Account,
    EventLog,
    Store,
    index_store,
)

WAD = 10**18


@dataclass
class Net:
    node: Anvil
    w3: Web3
    d: Deployment
    act: Activity


@pytest.fixture(scope="module")
def net(contracts_built: None) -> Iterator[Net]:
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3)
        act = build_history(w3, d, traders=4, rounds=6, gap_blocks=40)
        yield Net(node, w3, d, act)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as st:
        yield st


@pytest.fixture
def chain(net: Net) -> Chain:
    return Chain.connect(net.node.url, net.d)


def chain_logs(net: Net, to_block: int) -> list[tuple[int, int, str]]:
    """Every ClearingHouse log up to ``to_block`` in ONE eth_getLogs (anvil has no cap)."""
    flt = {
        "address": net.d.address("ClearingHouse"),
        "fromBlock": hex(net.d.start_block),
        "toBlock": hex(to_block),
    }
    raw = net.node.rpc("eth_getLogs", [flt])
    assert isinstance(raw, list)
    return sorted((int(r["blockNumber"], 16), int(r["logIndex"], 16), r["blockHash"]) for r in raw)


def stored_logs(store: Store) -> list[tuple[int, int, str]]:
    return [(e.block_number, e.log_index, e.block_hash) for e in index_store.events(store)]


def test_backfill_across_chunks_matches_one_big_getlogs(
    net: Net, chain: Chain, store: Store
) -> None:
    head = chain.head()
    assert head.number - net.d.start_block > 300  # a few hundred blocks
    ix = Indexer(chain, store, confirmations=5, chunk_blocks=37)
    res = ix.sync(head)
    expected = chain_logs(net, head.number)
    assert stored_logs(store) == expected
    assert (res.from_block, res.to_block, res.logs) == (
        net.d.start_block,
        head.number,
        len(expected),
    )
    assert res.reorg_from is None and res.market_changed
    assert res.listed_instruments == set(range(1, 25)) and not res.settled_instruments
    every = {*net.act.accounts, *net.act.subs, net.d.backstop_account}
    assert res.touched_accounts == every
    assert set(ix.known_accounts()) == every
    # Decoded exactly: a Trade's ints, an account row's owner/sub and its nonce from the chain.
    trade = index_store.events(store, "Trade")[0]
    assert trade.args["quantity"] == WAD // 10 and trade.args["buyer"] in every
    ch = bind(net.w3, net.d, "ClearingHouse")
    sub = index_store.account(store, net.act.subs[0])
    assert sub is not None and sub.sub == 1
    assert sub.owner == net.w3.eth.accounts[2].lower()
    assert (
        sub.nonce
        == ch.functions.accountState(net.act.subs[0]).call(block_identifier=head.number)[0]
    )
    # Only the unconfirmed window (and the cursor block) keeps its hashes.
    numbers = [b.number for b in index_store.indexed_blocks(store)]
    assert numbers == list(range(head.number, head.number - 6, -1))
    report = ix.check_consistency(chain.view(head))
    assert report.ok and report.accounts_checked == len(every)
    assert report.trade_count == (len(index_store.events(store, "Trade")),) * 2
    # Nothing new: an empty range at the cursor.
    again = ix.sync(head)
    assert (again.from_block, again.to_block, again.logs) == (head.number + 1, head.number, 0)
    assert not again.touched_accounts and not again.market_changed


def test_cursor_resumes_after_reopen(net: Net, chain: Chain, store_url: str) -> None:
    head = chain.head()
    mid = chain.rpc.block(net.d.start_block + 150)
    with Store.open(store_url) as st:
        first = Indexer(chain, st, confirmations=5, chunk_blocks=64).sync(mid)
        assert first.to_block == mid.number
        assert st.cursor(STREAM).block_number == mid.number  # type: ignore[union-attr]
    with Store.open(store_url) as st:
        second = Indexer(chain, st, confirmations=5, chunk_blocks=64).sync(head)
        assert (second.from_block, second.to_block) == (mid.number + 1, head.number)
        assert stored_logs(st) == chain_logs(net, head.number)  # no duplicate, no gap
        assert first.logs + second.logs == len(chain_logs(net, head.number))


def test_chunk_halves_on_range_refusal(net: Net, store: Store) -> None:
    with CountingProxy(net.node.url, max_log_range=7) as proxy:
        chain = Chain.connect(proxy.url, net.d)
        head = chain.head()
        ix = Indexer(chain, store, confirmations=5, chunk_blocks=100)
        ix.sync(head)
        assert proxy.refused_log_ranges[0] == (net.d.start_block, net.d.start_block + 99)
        assert ix.chunk_blocks == 6  # 100 -> 50 -> 25 -> 12 -> 6
        assert all(hi - lo + 1 <= 7 for lo, hi in proxy.log_ranges)
        # Contiguous, without overlap, from the start block to the head.
        assert (
            proxy.log_ranges[0][0] == net.d.start_block and proxy.log_ranges[-1][1] == head.number
        )
        assert all(
            b[0] == a[1] + 1 for a, b in zip(proxy.log_ranges, proxy.log_ranges[1:], strict=False)
        )
    assert stored_logs(store) == chain_logs(net, head.number)


def test_one_block_refused_is_a_named_error(net: Net, store: Store) -> None:
    from keeper.indexer import LogRangeRefused

    with CountingProxy(net.node.url, max_log_range=0) as proxy:
        chain = Chain.connect(proxy.url, net.d)
        with pytest.raises(LogRangeRefused):
            Indexer(chain, store, confirmations=5, chunk_blocks=4).sync()
    assert store.cursor(STREAM) is None and not index_store.events(store)


def test_rpc_outage_stores_no_partial_chunk(net: Net, store: Store) -> None:
    with CountingProxy(net.node.url, outage_after_logs=3) as proxy:
        chain = Chain.connect(proxy.url, net.d)
        head = chain.head()
        ix = Indexer(chain, store, confirmations=5, chunk_blocks=40)
        with pytest.raises(RpcUnavailable):
            ix.sync(head)
        # Chunks 1 and 2 are stored; chunk 3's logs were fetched but its headers were not.
        cursor = store.cursor(STREAM)
        assert cursor is not None and cursor.block_number == net.d.start_block + 79
        assert stored_logs(store) == chain_logs(net, cursor.block_number)
        proxy.outage, proxy.outage_after_logs = False, None
        res = ix.sync(head)
        assert res.from_block == cursor.block_number + 1
    assert stored_logs(store) == chain_logs(net, head.number)


def test_log_from_a_reorged_block_is_not_stored(net: Net, store: Store) -> None:
    """A lagging node answers eth_getLogs with a log whose blockHash is not the block's: the
    chunk is refused (ChainMoved), the sync starts over and stores the canonical answer."""
    stale = "0x" + "ee" * 32
    lies = {"left": 1}

    def lagging(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        late = [r for r in logs if int(r["blockNumber"], 16) > 200]
        if late and lies["left"]:
            lies["left"] -= 1
            late[0]["blockHash"] = stale
        return logs

    with CountingProxy(net.node.url) as proxy:
        chain = Chain.connect(proxy.url, net.d)
        head = chain.head()
        proxy.logs_hook = lagging
        ix = Indexer(chain, store, confirmations=5, chunk_blocks=100)
        res = ix.sync(head)
        assert lies["left"] == 0 and res.to_block == head.number
        assert stored_logs(store) == chain_logs(net, head.number)
        # The chunks stored before the refused one count in the result too.
        assert (res.from_block, res.logs) == (net.d.start_block, len(stored_logs(store)))
        assert net.d.backstop_account in res.touched_accounts  # named in the first chunk
        # A node that keeps lying: the sync gives up with the named error, nothing stored.
        lies["left"] = 10**6
        fresh = Indexer(chain, store, confirmations=5, chunk_blocks=1000)
        index_store.rollback_index_after(store, STREAM, net.d.start_block - 1)
        with pytest.raises(ChainMoved):
            fresh.sync(head)
        assert not stored_logs(store) and store.cursor(STREAM).block_number < net.d.start_block  # type: ignore[union-attr]


def test_logs_omitted_in_the_window_are_caught(net: Net, store: Store) -> None:
    """A node answers the range query without the head block's logs (its bloom names the
    clearing house): the chunk is refused and re-fetched, nothing is lost."""
    block = _trade(net)
    dropped = {"left": 1}

    def omitting(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if dropped["left"] and any(int(r["blockNumber"], 16) == block for r in logs):
            dropped["left"] -= 1
            return [r for r in logs if int(r["blockNumber"], 16) != block]
        return logs

    with CountingProxy(net.node.url) as proxy:
        chain = Chain.connect(proxy.url, net.d)
        head = chain.head()
        assert head.number == block
        proxy.logs_hook = omitting
        Indexer(chain, store, confirmations=5, chunk_blocks=1000).sync(head)
        assert dropped["left"] == 0
    assert stored_logs(store) == chain_logs(net, block)
    assert block in {b for b, _, _ in stored_logs(store)}


def test_bloom_membership_on_real_headers(net: Net, chain: Chain) -> None:
    block = _trade(net)
    raw = net.node.rpc("eth_getBlockByNumber", [hex(block), False])
    assert isinstance(raw, dict)
    bloom = bytes.fromhex(raw["logsBloom"][2:])
    assert bloom_has(bloom, bytes.fromhex(net.d.address("ClearingHouse")[2:]))
    assert not bloom_has(bloom, bytes.fromhex(net.d.address("MockERC20:WETH")[2:]))
    net.node.rpc("anvil_mine", ["0x1"])
    empty = net.node.rpc("eth_getBlockByNumber", ["latest", False])
    assert isinstance(empty, dict)
    address = bytes.fromhex(net.d.address("ClearingHouse")[2:])
    assert not bloom_has(bytes.fromhex(empty["logsBloom"][2:]), address)


def _trade(net: Net) -> int:
    ch = bind(net.w3, net.d, "ClearingHouse")
    a, b = net.act.accounts[0], net.act.accounts[1]
    receipt = send(
        net.w3,
        dev_matcher(net.w3, ch).trade(a, b, net.act.perp, WAD // 10, 3000 * WAD),
        net.d.roles["matcher"],
    )
    return int(receipt["blockNumber"])


def test_reorg_rolls_back_and_reindexes(net: Net, chain: Chain, store: Store) -> None:
    ix = Indexer(chain, store, confirmations=5, chunk_blocks=500)
    ix.sync()
    a, b = net.act.accounts[0], net.act.accounts[1]
    before = index_store.account(store, a).nonce  # type: ignore[union-attr]
    block = _trade(net)
    res = ix.sync()
    assert {a, b} <= res.touched_accounts
    assert index_store.account(store, a).nonce == before + 1  # type: ignore[union-attr]
    # The trade's block is replaced by an empty one (plus one more block on top).
    net.node.rpc("anvil_reorg", [1, []])
    net.node.rpc("anvil_mine", ["0x1"])
    res = ix.sync()
    assert res.reorg_from == block
    assert {a, b} <= res.touched_accounts
    assert res.from_block == block and res.to_block == block + 1
    assert index_store.account(store, a).nonce == before  # type: ignore[union-attr]
    assert stored_logs(store) == chain_logs(net, block + 1)
    assert ix.check_consistency(chain.view()).ok


def test_shorter_chain_after_rollback_and_too_deep(net: Net, chain: Chain, store: Store) -> None:
    ix = Indexer(chain, store, confirmations=3, chunk_blocks=500)
    block = _trade(net)
    ix.sync()
    net.node.rpc("anvil_rollback", [1])  # the head is now below the cursor
    res = ix.sync()
    assert res.reorg_from == block and res.to_block == block - 1 and res.logs == 0
    assert stored_logs(store) == chain_logs(net, block - 1)
    assert ix.check_consistency(chain.view()).ok
    # A reorg below every stored block: refused, nothing changed.
    net.node.rpc("anvil_mine", ["0x6"])
    ix.sync()
    kept = stored_logs(store)
    cursor = store.cursor(STREAM)
    # A transfer in the first replaced block: every block above it gets a new hash.
    who = net.w3.eth.accounts[9]
    net.node.rpc("anvil_reorg", [8, [[{"from": who, "to": who, "value": "0x1"}, 0]]])
    with pytest.raises(ReorgTooDeep):
        ix.sync()
    assert stored_logs(store) == kept and store.cursor(STREAM) == cursor


def test_consistency_detects_lost_row_and_wrong_nonce(net: Net, chain: Chain, store: Store) -> None:
    ix = Indexer(chain, store, confirmations=5)
    head = chain.head()
    ix.sync(head)
    view = chain.view(head)
    assert ix.check_consistency(view).ok
    lost, wrong = net.act.accounts[2], net.act.subs[3]
    real = {
        a: bind(net.w3, net.d, "ClearingHouse").functions.accountState(a).call()[0]
        for a in (lost, wrong)
    }
    with store.session() as s:
        s.exec(delete(Account).where(Account.id == lost))  # type: ignore[call-overload]
        s.get(Account, wrong).nonce = 999  # type: ignore[union-attr]
    before = view.round_trips
    report = ix.check_consistency(view)
    assert view.round_trips - before == 1  # one batched read for every account
    assert not report.ok
    got = {m.account: (m.indexed_nonce, m.chain_nonce) for m in report.mismatched}
    assert got == {lost: (None, real[lost]), wrong: (999, real[wrong])}
    # A lost Trade log (as if a chunk had been skipped) shows in the counts.
    with store.session() as s:
        last = s.exec(
            select(EventLog)
            .where(EventLog.name == "Trade")
            .order_by(col(EventLog.block_number).desc())
        ).first()
        assert last is not None
        s.delete(last)
    report = ix.check_consistency(view)
    assert report.trade_count[0] == report.trade_count[1] - 1 and report.missing_events
    assert set(report.mismatched_accounts) == {lost, wrong} and report.mismatched
    # The remedy: rewind and re-index; everything agrees again.
    ix.rewind()
    assert store.cursor(STREAM).block_number == net.d.start_block - 1  # type: ignore[union-attr]
    assert not index_store.events(store) and not ix.known_accounts()
    ix.sync(head)
    assert ix.check_consistency(view).ok


def test_touched_accounts_and_market_changes(net: Net, chain: Chain, store: Store) -> None:
    ix = Indexer(chain, store, confirmations=5)
    ix.sync()
    ch = bind(net.w3, net.d, "ClearingHouse")
    usdc = bind(net.w3, net.d, "MockERC20:USDC")
    who = net.w3.eth.accounts[7]
    acct = account_id(who, 5)
    send(net.w3, usdc.functions.mint(who, 10**6), who)
    send(net.w3, usdc.functions.approve(ch.address, 10**6), who)
    send(net.w3, ch.functions.deposit(acct, 0, 10**6), who)
    res = ix.sync()
    assert res.touched_accounts == {acct} and not res.market_changed
    assert acct in ix.known_accounts()
    send(net.w3, ch.functions.setRate(3 * 10**16), net.d.deployer)
    send(net.w3, ch.functions.setRiskParams(ch.functions.riskParams().call()), net.d.deployer)
    res = ix.sync()
    assert res.market_changed and not res.touched_accounts
    names = [e.name for e in index_store.events(store)[-res.logs :]]
    assert names == ["RateSet", "RiskParamsSet"]
    send(net.w3, ch.functions.setOperator(acct, net.w3.eth.accounts[8], True), who)
    res = ix.sync()
    assert res.touched_accounts == {acct} and not res.market_changed


_SUBS = iter(range(10, 1000))


def _set_prices(net: Net, eth_usd: int) -> None:
    for key in net.d.contracts:
        if key.startswith("MockAggregator:"):
            feed = bind(net.w3, net.d, key)
            answer = eth_usd if key == "MockAggregator:ETH/USD" else feed.functions.answer().call()
            send(net.w3, feed.functions.setAnswer(answer), net.d.deployer)


def test_liquidation_bumps_the_unnamed_backstop(net: Net, chain: Chain, store: Store) -> None:
    """liquidate bumps the backstop's nonce without an event carrying it: the index applies
    the bump, so the consistency check still agrees with accountState for every account."""
    ix = Indexer(chain, store, confirmations=5)
    ix.sync()
    ch = bind(net.w3, net.d, "ClearingHouse")
    usdc = bind(net.w3, net.d, "MockERC20:USDC")
    who, liquidator = net.w3.eth.accounts[6], net.w3.eth.accounts[5]
    victim, bob, bk = account_id(who, next(_SUBS)), net.act.accounts[1], net.d.backstop_account
    _set_prices(net, 3000 * 10**8)
    send(net.w3, usdc.functions.mint(who, 600 * 10**6), who)
    send(net.w3, usdc.functions.approve(ch.address, 600 * 10**6), who)
    send(net.w3, ch.functions.deposit(victim, 0, 600 * 10**6), who)
    send(
        net.w3,
        dev_matcher(net.w3, ch).trade(victim, bob, net.act.perp, WAD, 3000 * WAD),
        net.d.roles["matcher"],
    )
    _set_prices(net, 2700 * 10**8)
    try:
        result = ch.functions.marginOf(victim).call()
        assert result[5] == 2
        nonce = ch.functions.accountState(victim).call()[0]
        send(net.w3, ch.functions.liquidate(victim, nonce, result[7], WAD), liquidator)
    finally:
        _set_prices(net, 3000 * 10**8)
    res = ix.sync()
    assert {victim, bob, bk} <= res.touched_accounts
    names = {e.name for e in index_store.events(store) if e.block_number >= res.from_block}
    assert {"Liquidation", "BountyCredited"} <= names
    report = ix.check_consistency(chain.view())
    assert report.ok, report.mismatched
    assert index_store.account(store, bk).nonce == ch.functions.accountState(bk).call()[0]  # type: ignore[union-attr]


def test_progress_bar_only_when_asked(
    net: Net, chain: Chain, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    head = chain.rpc.block(net.d.start_block + 99)
    Indexer(chain, store, confirmations=5, chunk_blocks=50).sync(head)
    assert capsys.readouterr() == ("", "")
    Indexer(chain, store, confirmations=5, chunk_blocks=50, progress=True).sync()
    out, err = capsys.readouterr()
    assert out == "" and "blocks" in err and "logs" in err


def test_settlement_after_expiry(net: Net, chain: Chain, store: Store) -> None:
    """Last of the chain tests: it moves time past the instruments' expiry."""
    ix = Indexer(chain, store, confirmations=5)
    ix.sync()
    expiry = max(i["expiry"] for i in net.d.instruments)
    now = int(net.w3.eth.get_block("latest")["timestamp"])
    if now <= expiry:
        net.node.rpc("evm_increaseTime", [expiry - now + 60])
        net.node.rpc("evm_mine")
    _set_prices(net, 3000 * 10**8)  # a price published after expiry
    ch = bind(net.w3, net.d, "ClearingHouse")
    iid = next(
        i["id"]
        for i in net.d.instruments
        if i["expiry"] and i["underlying"] == 0 and not ch.functions.instruments(i["id"]).call()[3]
    )
    view = chain.view()
    snap = view.snapshot([])
    rid = find_settlement_round(view, snap, snap.instruments[iid]).round_id
    send(net.w3, ch.functions.settleInstrument(iid, rid), net.d.deployer)
    res = ix.sync()
    assert res.settled_instruments == {iid} and res.market_changed and not res.listed_instruments
    settled = index_store.events(store, "InstrumentSettled")[-1]
    assert settled.args == {"instrument": iid, "price": 3000 * WAD}


# --- without a chain ---------------------------------------------------------------------


def test_unknown_and_malformed_logs_are_kept_raw() -> None:
    base = {
        "blockNumber": "0x5",
        "logIndex": "0x0",
        "blockHash": "0x" + "ab" * 32,
        "transactionHash": "0x" + "cd" * 32,
    }
    unknown = decode_log({**base, "topics": ["0x" + "11" * 32], "data": "0x1234"}, None)
    assert unknown.name == UNKNOWN and unknown.args == {
        "topics": ["0x" + "11" * 32],
        "data": "0x1234",
    }
    assert unknown.effects == []
    # A known topic whose data does not decode (truncated): raw too, never an exception.
    trade_topic = next(
        t
        for t, e in __import__("keeper.indexer.decode", fromlist=["x"]).event_table().items()
        if e.name == "Trade"
    )
    bad = decode_log({**base, "topics": [trade_topic, "0x" + "00" * 32], "data": "0x00"}, None)
    assert bad.name == UNKNOWN
    assert decode_log({**base, "topics": [], "data": "0x"}, None).name == UNKNOWN


@pytest.mark.parametrize(
    ("error", "refusal"),
    [
        ({"code": -32005, "message": "query returned more than 10000 results"}, True),
        (
            {
                "code": -32602,
                "message": "Log response size exceeded. You can make eth_getLogs requests "
                "with up to a 2K block range",
            },
            True,
        ),
        ({"code": -32000, "message": "exceed maximum block range: 5000"}, True),
        ({"code": -32614, "message": "eth_getLogs is limited to a 10,000 range"}, True),
        ({"code": -32600, "message": "block range is too wide"}, True),
        ({"code": -32005, "message": "rate"}, True),
        ({"code": -32000, "message": "header not found"}, False),
        ({"code": -32602, "message": "invalid argument 0: hex string without 0x prefix"}, False),
    ],
)
def test_range_refusal_wordings(error: dict[str, object], refusal: bool) -> None:
    assert is_range_refusal(RpcError("eth_getLogs", str(error))) is refusal
