"""Private submission through a relay, on a real anvil, a real store and a local relay process.

The relay (keeper.devnet.relay, started as its own process) holds what it receives and releases
it to anvil after k blocks, never, or refuses it. The keeper's node connection goes through a
counting proxy, so "no public broadcast" is what the node was asked, not what the keeper says.
Blocks are mined by the test (``evm_mine``), so every deadline is a block count, not a time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from keeper.config import ConfigError, FeesConfig, RelayConfig, load_config_data
from keeper.devnet import Anvil
from keeper.devnet.rpc_proxy import CountingProxy
from keeper.fees import FeePolicy
from keeper.relay import Relay, RelayError
from keeper.secrets import clear_registry
from keeper.signer import Signer
from keeper.store import Decision, Route, Store, TxStatus
from keeper.transactions import TxManager
from tests.conftest import LOG_DIR
from tests.test_transactions import GWEI, dev_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "relayS3cretApiKey0123456789"


@pytest.fixture(scope="module")
def chain() -> Iterator[Anvil]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with Anvil(log_path=LOG_DIR / f"anvil-relay-{worker}.log") as node:
        yield node


@pytest.fixture
def proxy(chain: Anvil) -> Iterator[CountingProxy]:
    with CountingProxy(chain.url) as p:
        yield p


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    clear_registry()


@contextmanager
def relay_process(upstream: str, *mode: str) -> Iterator[str]:
    """``python -m keeper.devnet.relay`` in front of ``upstream``; yields its URL with fake
    credentials in it (the relay ignores userinfo and path; the keeper must hide them)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "keeper.devnet.relay", "--upstream", upstream, *mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        assert base.startswith("http://"), "the relay did not print its URL"
        yield base.replace("http://", f"http://keeper:{SECRET}@") + f"/{SECRET}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def relay_status(url: str) -> list[dict[str, Any]]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "relay_status", "params": []})
    plain = url.replace(f"keeper:{SECRET}@", "")
    req = urllib.request.Request(
        plain, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: list[dict[str, Any]] = json.loads(resp.read())["result"]
    return result


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def manager(
    store: Store, url: str, key: str, relay_url: str, fallback: int, events: list[str]
) -> TxManager:
    fees = FeePolicy(FeesConfig(max_fee_per_gas=50 * GWEI, priority_fee=GWEI, bump_percent=12))
    relay = Relay(RelayConfig(url=relay_url, fallback_after_blocks=fallback, timeout_seconds=5))
    return TxManager(
        store,
        Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30})),
        Signer.from_env("K", {"K": key}),
        fees,
        chain_id=31337,
        confirmations=1,
        stuck_after_seconds=30,
        relay=relay,
        on_relay=events.append,
    )


def liquidation(store: Store, action: str = "liquidate") -> int:
    d = store.add_decision(
        Decision(
            block_number=1,
            block_hash="0x" + "00" * 32,
            account="0x" + "22" * 20,
            inputs_digest="0x" + "00" * 32,
            loss_matrix=[],
            requirement=0,
            initial_margin=0,
            equity=0,
            state="liquidatable",
            action=action,
        )
    )
    assert d.id is not None
    return d.id


def settle(m: TxManager, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while m.store.open_transactions(m.signer.address):
        assert time.monotonic() < deadline, "transactions did not settle"
        m.poll()
        time.sleep(0.05)


def public_sends(proxy: CountingProxy) -> int:
    return proxy.methods.count("eth_sendRawTransaction")


def test_released_in_time_mines_once_without_public_broadcast(
    chain: Anvil, proxy: CountingProxy, tmp_path: object
) -> None:
    key = dev_key(5)
    me = Account.from_key(key).address
    events: list[str] = []
    with (
        relay_process(chain.url, "--release-after", "2") as relay_url,
        Store.open(f"sqlite:///{tmp_path}/k.db") as store,
    ):
        m = manager(store, proxy.url, key, relay_url, 10, events)
        m.start()
        base = m.w3.eth.get_transaction_count(me)
        head = m.w3.eth.block_number
        tx = m.submit(to=me, gas_limit=21_000, decision_id=liquidation(store))
        assert tx.id is not None
        [attempt] = store.attempts(tx.id)
        assert (attempt.route, attempt.relay_until_block) == (Route.RELAY, head + 10)
        assert events == ["submitted"]
        [held] = relay_status(relay_url)
        assert held["hash"] == attempt.hash and held["max_block"] == head + 10
        m.poll()  # held by the relay, before its deadline: nothing to do
        assert m.w3.eth.get_transaction_count(me) == base
        for _ in range(2):
            chain.rpc("evm_mine")
        wait_for(lambda: relay_status(relay_url)[0]["released"], "the relay's release")
        assert relay_status(relay_url)[0]["error"] is None
        settle(m)
        [done] = store.transactions(me)
        assert (done.status, done.mined_hash) == (TxStatus.FINAL, attempt.hash)
        [attempt] = store.attempts(tx.id)
        assert attempt.route == Route.RELAY
        assert public_sends(proxy) == 0
        assert events == ["submitted", "included"]
        assert m.w3.eth.get_transaction_count(me) == base + 1


def test_never_released_falls_back_after_n_blocks_same_nonce(
    chain: Anvil, proxy: CountingProxy, tmp_path: object
) -> None:
    key = dev_key(6)
    me = Account.from_key(key).address
    events: list[str] = []
    with (
        relay_process(chain.url, "--never") as relay_url,
        Store.open(f"sqlite:///{tmp_path}/k.db") as store,
    ):
        m = manager(store, proxy.url, key, relay_url, 3, events)
        m.start()
        base = m.w3.eth.get_transaction_count(me)
        tx = m.submit(to=me, gas_limit=21_000, decision_id=liquidation(store))
        assert tx.id is not None and tx.nonce == base
        for _ in range(2):
            chain.rpc("evm_mine")
            m.poll()
        assert public_sends(proxy) == 0  # two blocks of three: still the relay's
        chain.rpc("evm_mine")
        m.poll()  # the deadline block: the same bytes to the public node
        assert public_sends(proxy) == 1
        settle(m)
        [attempt] = store.attempts(tx.id)
        [done] = store.transactions(me)
        assert attempt.route == Route.RELAY_FALLBACK
        assert (done.status, done.mined_hash, done.nonce) == (TxStatus.FINAL, attempt.hash, base)
        assert events == ["submitted", "fallback"]
        # The nonce stream goes on without a gap: the next transaction takes the next nonce.
        nxt = m.submit(to=me, gas_limit=21_000)
        settle(m)
        assert nxt.nonce == base + 1
        assert [t.status for t in store.transactions(me)] == [TxStatus.FINAL] * 2
        assert m.w3.eth.get_transaction_count(me) == base + 2
        assert public_sends(proxy) == 2


@pytest.mark.parametrize("how", ["unreachable", "refuses"])
def test_relay_down_or_refusing_falls_back_at_once(
    how: str, chain: Anvil, proxy: CountingProxy, tmp_path: object, caplog: Any
) -> None:
    key = dev_key(7 if how == "unreachable" else 8)
    me = Account.from_key(key).address
    events: list[str] = []
    caplog.set_level(logging.INFO)
    if how == "unreachable":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx: Any = contextmanager(
            lambda: iter([f"http://keeper:{SECRET}@127.0.0.1:{port}/{SECRET}"])
        )()
    else:
        ctx = relay_process(chain.url, "--reject")
    with ctx as relay_url, Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = manager(store, proxy.url, key, relay_url, 50, events)
        m.start()
        base = m.w3.eth.get_transaction_count(me)
        tx = m.submit(to=me, gas_limit=21_000, decision_id=liquidation(store))
        assert tx.id is not None
        assert events == ["refused", "fallback"]
        assert public_sends(proxy) == 1  # at once, not after 50 blocks
        settle(m)
        [attempt] = store.attempts(tx.id)
        assert attempt.route == Route.RELAY_FALLBACK
        assert store.transactions(me)[0].status == TxStatus.FINAL
        assert m.w3.eth.get_transaction_count(me) == base + 1
    reasons = [
        r.__dict__.get("reason", "")
        for r in caplog.records
        if r.getMessage() == "private relay: broadcasting to the public node"
    ]
    assert len(reasons) == 1
    assert ("unreachable" if how == "unreachable" else "refuses the transaction") in reasons[0]
    assert SECRET not in caplog.text and SECRET not in reasons[0]


def test_released_late_after_the_fallback_has_no_second_effect(
    chain: Anvil, proxy: CountingProxy, tmp_path: object
) -> None:
    key = dev_key(9)
    me = Account.from_key(key).address
    events: list[str] = []
    with (
        relay_process(chain.url, "--release-after", "4") as relay_url,
        Store.open(f"sqlite:///{tmp_path}/k.db") as store,
    ):
        m = manager(store, proxy.url, key, relay_url, 2, events)
        m.start()
        base = m.w3.eth.get_transaction_count(me)
        tx = m.submit(to=me, gas_limit=21_000, decision_id=liquidation(store))
        assert tx.id is not None
        for _ in range(2):
            chain.rpc("evm_mine")
        settle(m)  # fell back to the public node and mined there
        assert events == ["submitted", "fallback"]
        for _ in range(3):
            chain.rpc("evm_mine")
        wait_for(lambda: relay_status(relay_url)[0]["released"], "the relay's late release")
        [held] = relay_status(relay_url)
        assert held["error"] is not None and "nonce" in held["error"].lower()
        m.poll()
        [attempt] = store.attempts(tx.id)
        [done] = store.transactions(me)
        assert (done.status, done.mined_hash, done.nonce) == (TxStatus.FINAL, attempt.hash, base)
        assert m.w3.eth.get_transaction_count(me) == base + 1
        assert public_sends(proxy) == 1


def test_only_the_configured_actions_go_private(
    chain: Anvil, proxy: CountingProxy, tmp_path: object
) -> None:
    key = dev_key(4)
    me = Account.from_key(key).address
    events: list[str] = []
    with (
        relay_process(chain.url, "--never") as relay_url,
        Store.open(f"sqlite:///{tmp_path}/k.db") as store,
    ):
        m = manager(store, proxy.url, key, relay_url, 5, events)
        m.start()
        flag = m.submit(to=me, gas_limit=21_000, decision_id=liquidation(store, "flag"))
        assert flag.id is not None
        assert [a.route for a in store.attempts(flag.id)] == [Route.PUBLIC]
        assert events == [] and relay_status(relay_url) == []
        settle(m)


def test_relay_config_and_its_secret(tmp_path: object) -> None:
    base = {"rpc": {"url": "http://127.0.0.1:8545", "chain_id": 31337},
            "deployment": {"file": "d.json"}}  # fmt: skip
    cfg = load_config_data(
        {**base, "relay": {"url": f"https://relay.example/{SECRET}", "method":
                           "eth_sendRawTransaction", "actions": ["liquidate", "resolve_bad_debt"]}},
        environ={},
    )  # fmt: skip
    assert cfg.relay is not None and cfg.relay.fallback_after_blocks == 25
    assert SECRET not in repr(cfg)
    relay = Relay(cfg.relay)
    assert relay.takes("resolve_bad_debt") and not relay.takes("flag")
    assert relay.params("0xab", 7) == ["0xab"]
    private = Relay(RelayConfig(url="http://127.0.0.1:1"))
    assert private.params("0xab", 7) == [
        {"tx": "0xab", "maxBlockNumber": "0x7", "preferences": {"fast": True}}
    ]
    down = RelayConfig(url=f"http://keeper:{SECRET}@127.0.0.1:1/{SECRET}?key={SECRET}")
    with pytest.raises(RelayError) as err:
        Relay(down).send("0xab", 1)
    assert SECRET not in str(err.value)
    for bad in ({"method": "eth_sendBundle"}, {"actions": ["steal"]}, {"url": "ftp://x"},
                {"fallback_after_blocks": 0}):  # fmt: skip
        with pytest.raises(ConfigError) as cerr:
            load_config_data({**base, "relay": {"url": "http://127.0.0.1:1", **bad}}, environ={})
        assert str(cerr.value).startswith("relay.")
