"""The chain layer and the transaction manager behind a faulty RPC (keeper.devnet.fault_proxy
between the keeper and a real anvil with the real protocol).

Reads: every fault kind, once, gives the snapshot a fault-free read gives at the same block;
a fault that does not stop is a named ``RpcUnavailable`` subclass with a scrubbed message,
never a raw exception and never a partial snapshot; a lagging head is refused on request.
Transactions: through a flaky RPC each decision is sent once (one nonce, one on-chain effect)
and every attempt is recorded; anvil stopped and restarted from its ``--state`` mid-run loses
nothing; a transaction priced out by a base-fee jump is replaced with bumped fees.

Already covered in tests/test_transactions.py (not repeated): stuck transactions with mining
paused (``test_stuck_transaction_is_replaced_and_every_hash_kept``), a nonce taken by another
sender with the same key (``test_nonce_taken_by_another_sender``,
``test_pending_transaction_displaced_is_dropped``), restarts without gaps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from keeper.chain import (
    BlockStateMismatch,
    Chain,
    ChainError,
    HeadBehind,
    ProtocolSnapshot,
    RetryPolicy,
    RpcMalformedReply,
    RpcRateLimited,
    RpcTimeout,
    RpcUnavailable,
    make_web3,
)
from keeper.chain.rpc import SyncWebSocketProvider
from keeper.chain.transport import RetryingHTTPProvider
from keeper.config import FeesConfig
from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.fault_proxy import FaultProxy
from keeper.fees import FeePolicy
from keeper.orders import dev_matcher
from keeper.secrets import clear_registry
from keeper.signer import Signer
from keeper.store import Store, TxStatus
from keeper.store.types import utcnow
from keeper.transactions import TxManager
from tests.conftest import LOG_DIR
from tests.test_chain import _instrument, _send
from tests.test_transactions import GWEI, decision, dev_key

WAD = 10**18
USDC = 10**6
FAST = {"base_delay": 0.01, "max_delay": 0.05}
#: Client timeout below the proxy's hang: a "timeout" fault is a real client timeout.
TIMEOUT, HANG = 0.4, 0.8

#: The named error each fault becomes when it does not stop.
NAMED = {
    "rpc_error": RpcRateLimited,  # -32005 "limit exceeded"
    "http_500": RpcUnavailable,
    "http_429": RpcRateLimited,
    "timeout": RpcTimeout,
    "drop": RpcUnavailable,
    "drop_after": RpcUnavailable,
    "truncate": RpcMalformedReply,
    "malformed": RpcMalformedReply,
    "short_batch": RpcMalformedReply,
}


@dataclasses.dataclass
class Net:
    node: Anvil
    d: Deployment
    accounts: list[int]


@pytest.fixture(scope="module")
def net(contracts_built: None) -> Iterator[Net]:
    """Own anvil (these tests mine and pause mining) with the protocol and three books."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with Anvil(log_path=LOG_DIR / f"anvil-faults-{worker}.log") as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 30}))
        d = deploy_protocol(w3)
        ch, usdc = bind(w3, d, "ClearingHouse"), bind(w3, d, "MockERC20:USDC")
        matcher, bob, alice, carol = list(w3.eth.accounts)[:4]
        for who in (bob, alice, carol):
            _send(w3, usdc.functions.mint(who, 10**8 * USDC), who)
            _send(w3, usdc.functions.approve(ch.address, 10**8 * USDC), who)
        b, a, c = account_id(bob), account_id(alice), account_id(carol)
        _send(w3, ch.functions.deposit(b, 0, 1_000_000 * USDC), bob)
        _send(w3, ch.functions.deposit(a, 0, 5_000 * USDC), alice)
        _send(w3, ch.functions.deposit(c, 0, 9_000 * USDC), carol)
        call = _instrument(d, 0, "call", 3500)
        orders = dev_matcher(w3, ch)
        _send(w3, orders.trade(b, a, call, WAD, 40 * WAD), matcher)
        _send(
            w3,
            orders.trade(c, b, _instrument(d, 1, "future"), WAD // 10, 60_000 * WAD),
            matcher,
        )
        yield Net(node, d, [a, b, c, account_id(carol, 5)])
    clear_registry()


@pytest.fixture
def proxy(net: Net) -> Iterator[FaultProxy]:
    # KEEPER_FAULT_SEED replays (or varies) the random fault runs.
    with FaultProxy(net.node.url, seed=int(os.environ.get("KEEPER_FAULT_SEED", "1234"))) as p:
        yield p


def faulty_chain(url: str, d: Deployment, retries: int = 3, **policy: Any) -> Chain:
    retry = RetryPolicy(max_retries=retries, seed=1, **{**FAST, **policy})
    return Chain.connect(url, d, timeout=TIMEOUT, retry=retry)


def provider(chain: Chain) -> RetryingHTTPProvider:
    p = chain.w3.provider
    assert isinstance(p, RetryingHTTPProvider)
    return p


def fields(s: ProtocolSnapshot) -> dict[str, Any]:
    """Everything a snapshot says about the chain (not how many round trips it took)."""
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name[0] != "_"} | {
        "round_trips": None
    }


def reference(net: Net, number: int | None = None) -> ProtocolSnapshot:
    chain = Chain.connect(net.node.url, net.d)
    view = chain.view(number if number is not None else "latest")
    return view.snapshot(net.accounts)


# --- reads ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(NAMED))
def test_one_fault_of_each_kind_gives_the_fault_free_snapshot(
    net: Net, proxy: FaultProxy, kind: str
) -> None:
    chain = faulty_chain(proxy.url, net.d)
    want = reference(net)
    opts = {"hang_seconds": HANG, "retry_after": 0}
    # Once on the header, once on the batched eth_calls, once on a log query.
    if kind != "short_batch":
        proxy.add(kind, methods=["eth_getBlockByNumber"], times=1, **opts)
        proxy.add(kind, methods=["eth_getLogs"], times=1, **opts)
    proxy.add(kind, methods=["eth_call"], times=1, **opts)
    head = chain.head()
    got = chain.view(head).snapshot(net.accounts)
    assert fields(got) == fields(want)
    assert set(got.accounts) == set(net.accounts)
    flt = {"fromBlock": "0x0", "toBlock": hex(head.number), "address": chain.clearing_house}
    logs = chain.rpc.request("eth_getLogs", [flt])
    assert logs == Chain.connect(net.node.url, net.d).rpc.request("eth_getLogs", [flt])
    expected = 1 if kind == "short_batch" else 3
    assert proxy.counts[kind] == expected
    assert provider(chain).stats.retries == expected and provider(chain).stats.gave_up == 0


@pytest.mark.parametrize("kind", sorted(NAMED))
def test_a_fault_that_does_not_stop_is_a_named_scrubbed_error(
    net: Net, proxy: FaultProxy, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    host = proxy.url.removeprefix("http://")
    secrets = ("alice", "hunter2", "SEKRETKEY")
    chain = faulty_chain(f"http://alice:hunter2@{host}/v3/SEKRETKEY?key=SEKRETKEY", net.d, 1)
    head = chain.head()
    proxy.add(kind, methods=["eth_call"], hang_seconds=HANG, retry_after=0)
    with caplog.at_level(logging.DEBUG), pytest.raises(RpcUnavailable) as info:
        chain.view(head).snapshot(net.accounts)
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "retrying" in logged and not any(s in logged for s in secrets)
    assert type(info.value) is NAMED[kind]
    text = str(info.value)
    assert host in text and not any(s in text for s in secrets)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert proxy.counts[kind] == 2  # the request and its one retry
    proxy.clear()
    assert fields(chain.view(head).snapshot(net.accounts)) == fields(reference(net, head.number))


def test_a_batch_that_times_out_is_halved_until_the_node_answers(
    net: Net, proxy: FaultProxy
) -> None:
    """A node that cannot answer a large batch within the timeout (on every retry) answers
    halves of it: the keeper moves on with smaller batches instead of failing every block."""
    chain = faulty_chain(proxy.url, net.d, 1)
    rule = proxy.add("timeout", min_batch=9, hang_seconds=HANG)
    calls = [("eth_getBalance", [chain.clearing_house, hex(n)]) for n in range(1, 21)]
    expected = [r["result"] for r in Chain.connect(net.node.url, net.d).rpc.batch(calls)]
    got = chain.rpc.batch(calls)
    assert [r["result"] for r in got] == expected
    assert chain.rpc.max_batch == 5  # each batch is tried twice (one retry)
    assert rule.fired == 4  # the 20, then the first 10: the second 10 goes as two 5s
    fired = rule.fired
    assert [r["result"] for r in chain.rpc.batch(calls)] == expected  # 5 at a time now
    assert rule.fired == fired
    # A broadcast is never split: the node may have taken its transactions.
    sends = [("eth_sendRawTransaction", ["0x00"])] * 10
    with pytest.raises(RpcTimeout):
        faulty_chain(proxy.url, net.d, 0).rpc.batch(sends)


def test_rate_limit_waits_for_retry_after(net: Net, proxy: FaultProxy) -> None:
    waits: list[float] = []
    chain = faulty_chain(proxy.url, net.d, sleep=waits.append)
    proxy.add("http_429", times=1, retry_after=3)
    chain.head()
    assert waits == [3.0]  # at least Retry-After, however short the back-off
    # A Retry-After beyond what a read may block is not waited out: raised at once.
    proxy.add("http_429", times=1, retry_after=120)
    with pytest.raises(RpcRateLimited) as info:
        chain.head()
    assert info.value.retry_after == 120 and waits == [3.0]
    # The back-off between plain retries doubles, bounded by max_delay.
    policy = RetryPolicy(base_delay=1, max_delay=3, seed=0)
    assert [0.5 <= policy.delay(k) / min(3, 2 ** (k - 1)) <= 1 for k in range(1, 6)] == [True] * 5


def test_random_faults_never_give_a_wrong_snapshot(net: Net, proxy: FaultProxy) -> None:
    """A seeded storm of every fault kind: each read is right, or a named error."""
    chain = faulty_chain(proxy.url, net.d, retries=2)
    want = reference(net)
    for kind in NAMED:
        proxy.add(kind, rate=0.05, hang_seconds=HANG, retry_after=0)
    ok = failed = 0
    for _ in range(25):
        try:
            got = chain.view(want.block).snapshot(net.accounts)
        except RpcUnavailable:
            failed += 1
            continue
        assert fields(got) == fields(want)
        ok += 1
    assert ok > 0 and proxy.injected > 5
    stats = provider(chain).stats
    assert stats.gave_up == failed and stats.retries + stats.gave_up == proxy.injected


def test_websocket_reconnects_after_a_dropped_connection(net: Net) -> None:
    ws = net.node.url.replace("http://", "ws://")
    chain = Chain.connect(ws, net.d, retry=RetryPolicy(max_retries=2, **FAST))
    want = reference(net)
    provider = chain.w3.provider
    assert isinstance(provider, SyncWebSocketProvider)
    provider._socket().close()  # the connection drops (node restart, idle timeout, proxy)
    assert fields(chain.view(want.block).snapshot(net.accounts)) == fields(want)
    assert provider.retries == 1
    chain.close()


def test_lagging_head_is_consistent_and_refused_on_request(net: Net, proxy: FaultProxy) -> None:
    net.node.rpc("anvil_mine", ["0x4"])
    chain = faulty_chain(proxy.url, net.d)
    real = chain.head()
    proxy.lag_blocks = 3
    lagging = chain.head()
    assert lagging.number == real.number - 3
    # Reads at the lagging head are that block's state, whole: never a mix with the real head.
    got = chain.view(lagging).snapshot(net.accounts)
    assert fields(got) == fields(reference(net, lagging.number))
    with pytest.raises(HeadBehind) as info:
        chain.head(not_before=real.number)
    assert (info.value.head, info.value.seen) == (real.number - 3, real.number)


def test_a_read_answered_from_another_block_is_read_again_never_mixed(
    net: Net, proxy: FaultProxy
) -> None:
    """A node that runs a pinned eth_call on a later block's state (anvil does, for a call
    pinned to the head while the next block is mined): the read is taken again, and a node that
    keeps doing it is a named error, never a snapshot mixing two blocks."""
    chain = faulty_chain(proxy.url, net.d)
    pinned = chain.head()
    want = reference(net, pinned.number)
    w3 = Web3(Web3.HTTPProvider(net.node.url))
    ch = bind(w3, net.d, "ClearingHouse")
    expiry = w3.eth.get_block("latest")["timestamp"] + 40 * 86400
    # The next block lists an instrument: its state differs from the pinned one in the layout.
    _send(w3, ch.functions.listInstrument(1, 1, 2345 * WAD, expiry), w3.eth.accounts[0])
    proxy.add("wrong_block", methods=["eth_call"], times=1)
    got = chain.view(pinned).snapshot(net.accounts)
    assert proxy.counts["wrong_block"] == 1
    assert fields(got) == fields(want)
    assert len(got.instruments) == len(want.instruments)

    proxy.add("wrong_block", methods=["eth_call"])
    with pytest.raises(BlockStateMismatch) as info:
        chain.view(pinned).snapshot(net.accounts)
    assert (info.value.pinned, info.value.ran) == (pinned.number, pinned.number + 1)
    assert proxy.counts["wrong_block"] == 1 + 3  # the read and its two repeats
    proxy.clear()
    assert fields(chain.view(pinned).snapshot(net.accounts)) == fields(want)


# --- transactions -----------------------------------------------------------------------


def tx_manager(store: Store, w3: Web3, key: str, **fees: Any) -> TxManager:
    config = FeesConfig(max_fee_per_gas=200 * GWEI, priority_fee=GWEI, bump_percent=12, **fees)
    return TxManager(
        store,
        w3,
        Signer.from_env("K", {"K": key}),
        FeePolicy(config),
        chain_id=31337,
        confirmations=1,
        stuck_after_seconds=30,
    )


def settle_through_faults(m: TxManager, rounds: int = 200) -> None:
    """Poll until nothing is open, as the keeper's loop does: a named error ends one pass,
    the next pass carries on. Later passes count as 'stuck' (a lost send is replaced)."""
    for i in range(rounds):
        if not m.store.open_transactions(m.signer.address):
            return
        with contextlib.suppress(ChainError):  # one failed pass; the next one carries on
            m.poll(now=utcnow() + timedelta(seconds=31) if i % 10 == 9 else None)
        time.sleep(0.02)
    raise AssertionError("transactions did not settle")


def test_flaky_rpc_sends_each_decision_once(net: Net, proxy: FaultProxy, tmp_path: Path) -> None:
    key = dev_key(6)
    me = Account.from_key(key).address
    sink = Account.create().address  # each decision pays it a distinct amount, once
    w3 = make_web3(proxy.url, timeout=TIMEOUT, retry=RetryPolicy(max_retries=1, **FAST))
    direct = Web3(Web3.HTTPProvider(net.node.url))
    base = direct.eth.get_transaction_count(me)
    for kind in NAMED:
        if kind != "short_batch":
            proxy.add(kind, rate=0.03, hang_seconds=HANG, retry_after=0)
    n = 6
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = tx_manager(store, w3, key)
        while True:
            try:
                m.start()
                break
            except ChainError:
                continue
        ids = [decision(store, i) for i in range(n)]
        for i, d in enumerate(ids):
            # A named error here: the transaction was recorded before the send, and the next
            # poll (re)sends it.
            with contextlib.suppress(ChainError):
                m.submit(to=sink, value=10**i, gas_limit=21_000, decision_id=d)
        settle_through_faults(m)
        proxy.clear()
        txs = store.transactions(me)
        assert sorted(t.decision_id for t in txs) == sorted(ids)  # one transaction each
        assert sorted(t.nonce for t in txs) == list(range(base, base + n))
        assert all(t.status == TxStatus.FINAL for t in txs)
        for t in txs:
            hashes = [a.hash for a in store.attempts(t.id)]  # type: ignore[arg-type]
            assert t.mined_hash in hashes
            assert direct.eth.get_transaction(t.mined_hash)["nonce"] == t.nonce  # type: ignore[arg-type]
    assert direct.eth.get_transaction_count(me) == base + n  # no nonce used twice
    assert direct.eth.get_balance(sink) == sum(10**i for i in range(n))  # each paid once
    assert proxy.injected > 0
    clear_registry()


def test_anvil_restart_from_state_mid_run(contracts_built: None, tmp_path: Path) -> None:
    key = dev_key(1)
    me = Account.from_key(key).address
    state = tmp_path / "anvil-state.json"
    url = f"sqlite:///{tmp_path}/k.db"
    with Anvil(state=state, log_path=tmp_path / "anvil.log") as node, FaultProxy(node.url) as p:
        w3 = make_web3(p.url, timeout=5, retry=RetryPolicy(max_retries=2, **FAST))
        with Store.open(url) as store:
            m = tx_manager(store, w3, key)
            m.start()
            first = m.submit(to=me, gas_limit=21_000)
            settle_through_faults(m)
            node.rpc("evm_setAutomine", [False])
            second = m.submit(to=me, value=7, gas_limit=21_000)  # pending in the mempool
            node.stop()  # SIGTERM: anvil dumps its state; the mempool is lost
            rows = [t.model_dump() for t in store.transactions(me)]
            with pytest.raises(RpcUnavailable):  # down: a named error (HTTP 502 from the proxy)
                m.poll()
            assert [t.model_dump() for t in store.transactions(me)] == rows  # nothing changed
        node.start()  # same flags, same --state: the chain continues
        p.upstream = node.url
        assert w3.eth.get_transaction_count(me) == first.nonce + 1  # the mined one survived
        assert w3.eth.get_transaction_receipt(store_hash(url, first.id))["status"] == 1
        with Store.open(url) as store:  # the keeper restarts too
            m = tx_manager(store, w3, key)
            m.start()  # re-broadcasts the transaction the node lost
            settle_through_faults(m)
            txs = store.transactions(me)
            assert [(t.id, t.nonce, t.status) for t in txs] == [
                (first.id, first.nonce, TxStatus.FINAL),
                (second.id, second.nonce, TxStatus.FINAL),
            ]
            assert len(store.attempts(second.id)) == 1  # type: ignore[arg-type]
        assert w3.eth.get_transaction_count(me) == first.nonce + 2
    clear_registry()


def store_hash(url: str, tx_id: int | None) -> Any:
    with Store.open(url) as store:
        (attempt,) = store.attempts(tx_id)  # type: ignore[arg-type]
        return attempt.hash


def test_priced_out_transaction_is_replaced_as_the_base_fee_rises(net: Net, tmp_path: Path) -> None:
    """Blocks keep coming but the base fee jumped above the transaction's max fee."""
    key = dev_key(7)
    me = Account.from_key(key).address
    node = net.node
    w3 = make_web3(node.url)
    node.rpc("evm_setAutomine", [False])
    try:
        with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
            m = tx_manager(store, w3, key, base_fee_multiplier_percent=100)
            m.start()
            tx = m.submit(to=me, gas_limit=21_000)
            (original,) = store.attempts(tx.id)  # type: ignore[arg-type]
            node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(original.max_fee_per_gas * 4)])
            node.rpc("evm_mine")
            assert w3.eth.get_transaction_count(me) == tx.nonce  # priced out: not included
            m.poll(now=utcnow() + timedelta(seconds=31))  # stuck: bumped past the base fee
            replacement = store.attempts(tx.id)[-1]  # type: ignore[arg-type]
            base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
            assert replacement.max_fee_per_gas >= base_fee > original.max_fee_per_gas
            node.rpc("evm_mine")
            (done,) = m.poll()
            assert done.status == TxStatus.FINAL and done.mined_hash == replacement.hash
            statuses = [a.status for a in store.attempts(tx.id)]  # type: ignore[arg-type]
            assert statuses == ["replaced", "mined"]
    finally:
        node.rpc("evm_setAutomine", [True])
        clear_registry()


def test_gap_filling_ignores_a_nonce_that_mined_during_the_pass(net: Net, tmp_path: Path) -> None:
    """Found by the flaky-RPC run: the chain's count is read at the start of a poll; a
    transaction that mines and goes final during the pass left a 'gap' below the next open one,
    and a filler was sent for a nonce our own transaction had just used."""
    key = dev_key(8)
    me = Account.from_key(key).address
    w3 = make_web3(net.node.url)
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = tx_manager(store, w3, key)
        m.start()
        stale_count = w3.eth.get_transaction_count(me)
        for _ in range(2):
            m.submit(to=me, gas_limit=21_000)
        settle_through_faults(m)  # both final
        net.node.rpc("evm_setAutomine", [False])
        try:
            m.submit(to=me, gas_limit=21_000)  # open, above the two final ones
            assert m._fill_gaps(stale_count) == []
            assert [t.decision_id for t in store.transactions(me)] == [None] * 3
        finally:
            net.node.rpc("evm_setAutomine", [True])
        settle_through_faults(m)
        assert w3.eth.get_transaction_count(me) == stale_count + 3
    clear_registry()
