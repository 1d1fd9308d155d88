"""Nonce manager and transaction manager on a real anvil chain and a real store.

Each test uses its own dev account, so the tests share one anvil (module scope) without sharing
nonces. Automine is switched off only inside the tests that need a mempool, and back on after.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from eth_account import Account
from web3 import Web3

from keeper.config import FeesConfig
from keeper.devnet import Anvil
from keeper.fees import FeePolicy
from keeper.secrets import RedactedError, clear_registry, register_url
from keeper.signer import Signer
from keeper.store import (
    AttemptStatus,
    Decision,
    DuplicateSubmission,
    Store,
    Transaction,
    TxStatus,
)
from keeper.store.types import utcnow
from keeper.transactions import SendError, TxManager
from tests.conftest import LOG_DIR

MNEMONIC = "test test test test test test test test test test test junk"
GWEI = 10**9
Account.enable_unaudited_hdwallet_features()


def dev_key(index: int) -> str:
    acct = Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(acct.key).hex()


@pytest.fixture(scope="module")
def chain() -> Iterator[Anvil]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with Anvil(log_path=LOG_DIR / f"anvil-tx-{worker}.log") as node:
        yield node


@pytest.fixture(scope="module")
def w3(chain: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 30}))


@pytest.fixture
def manual_mining(chain: Anvil) -> Iterator[None]:
    chain.rpc("evm_setAutomine", [False])
    try:
        yield
    finally:
        chain.rpc("evm_setAutomine", [True])
        clear_registry()


def manager(store: Store, w3: Web3, key: str, *, confirmations: int = 1) -> TxManager:
    fees = FeePolicy(FeesConfig(max_fee_per_gas=50 * GWEI, priority_fee=GWEI, bump_percent=12))
    return TxManager(
        store,
        w3,
        Signer.from_env("K", {"K": key}),
        fees,
        chain_id=31337,
        confirmations=confirmations,
        stuck_after_seconds=30,
    )


def settle(m: TxManager, timeout: float = 20.0) -> None:
    """Poll until no transaction of the signer is open (automine mines asynchronously, so one
    poll right after a send may not see the last receipt yet)."""
    deadline = time.monotonic() + timeout
    while m.store.open_transactions(m.signer.address):
        assert time.monotonic() < deadline, "transactions did not settle"
        m.poll()
        time.sleep(0.05)


def decision(store: Store, n: int) -> int:
    d = store.add_decision(
        Decision(
            block_number=n,
            block_hash="0x" + "00" * 32,
            account="0x" + "11" * 20,
            inputs_digest="0x" + "00" * 32,
            loss_matrix=[],
            requirement=0,
            initial_margin=0,
            equity=0,
            state="healthy",
            action="none",
        )
    )
    assert d.id is not None
    return d.id


def test_send_restart_continue_without_gaps(store_url: str, w3: Web3) -> None:
    key = dev_key(1)
    me = Account.from_key(key).address
    base = w3.eth.get_transaction_count(me)
    with Store.open(store_url) as store:
        m = manager(store, w3, key)
        m.start()
        ids = [decision(store, i) for i in range(4)]
        for d in ids[:3]:
            m.submit(to=me, gas_limit=21_000, decision_id=d)
        # A crash between taking the nonce and signing: the row exists, no hash was ever sent.
        store.insert_transaction(
            Transaction(
                decision_id=ids[3], sender=me, to=me.lower(), gas_limit=21_000, chain_id=31337
            )
        )
    with Store.open(store_url) as store:  # restart: new store, new manager, same database
        m = manager(store, w3, key)
        with pytest.raises(DuplicateSubmission):
            m.submit(to=me, gas_limit=21_000, decision_id=ids[0])
        m.start()  # reconciles, and sends the transaction the crash left unsent
        for _ in range(2):
            m.submit(to=me, gas_limit=21_000)
        settle(m)
        txs = store.transactions(me)
        assert [t.nonce for t in txs] == list(range(base, base + 6))
        assert [(t.status, t.final) for t in txs] == [(TxStatus.FINAL, True)] * 6
        assert all(t.gas_used == 21_000 and t.effective_gas_price for t in txs)
        assert w3.eth.get_transaction_count(me) == base + 6
        assert store.next_nonce(me) == base + 6
        # Every transaction mined exactly one of its hashes, and that hash is on chain.
        for t in txs:
            assert w3.eth.get_transaction(t.mined_hash)["nonce"] == t.nonce  # type: ignore[arg-type]
    clear_registry()


def test_nonce_taken_by_another_sender(w3: Web3, tmp_path: object) -> None:
    key = dev_key(2)
    other = Account.from_key(key)  # the same key, used by something that is not this keeper
    me = other.address
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = manager(store, w3, key)
        m.start()
        first = m.submit(to=me, gas_limit=21_000)

        def foreign(nonce: int) -> None:
            raw = other.sign_transaction(
                dict(
                    type=2,
                    chainId=31337,
                    nonce=nonce,
                    to=me,
                    value=0,
                    gas=21_000,
                    maxFeePerGas=5 * GWEI,
                    maxPriorityFeePerGas=GWEI,
                )
            ).raw_transaction
            # Mined (not just pooled) before the keeper looks: the scenario is a nonce already
            # used on chain, and anvil's automine can lag the send by a moment.
            w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))

        # 1. While the keeper runs: its next nonce is taken behind its back.
        foreign(first.nonce + 1)
        moved = m.submit(to=me, gas_limit=21_000)
        assert moved.nonce == first.nonce + 2
        attempts = store.attempts(moved.id)  # type: ignore[arg-type]
        assert [a.status for a in attempts] == [AttemptStatus.FAILED, AttemptStatus.SENT]
        assert "nonce too low" in (attempts[0].error or "")
        # 2. While the keeper is down: reconcile at start-up moves the next nonce past it.
        foreign(first.nonce + 3)
        rec = m.nonces.reconcile()
        assert rec.next_nonce == first.nonce + 4 == rec.chain_latest
        settle(m)
        assert [t.status for t in store.transactions(me)] == [TxStatus.FINAL, TxStatus.FINAL]
        assert w3.eth.get_transaction_count(me) == first.nonce + 4
    clear_registry()


def test_pending_transaction_displaced_is_dropped(
    w3: Web3, chain: Anvil, manual_mining: None, tmp_path: object
) -> None:
    key = dev_key(3)
    other = Account.from_key(key)
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = manager(store, w3, key)
        m.start()
        tx = m.submit(to=other.address, gas_limit=21_000)
        # Someone with the same key replaces our pending transaction in the mempool.
        raw = other.sign_transaction(
            dict(
                type=2,
                chainId=31337,
                nonce=tx.nonce,
                to=other.address,
                value=1,
                gas=21_000,
                maxFeePerGas=80 * GWEI,
                maxPriorityFeePerGas=20 * GWEI,
            )
        ).raw_transaction
        w3.eth.send_raw_transaction(raw)
        chain.rpc("evm_mine")
        (after,) = m.poll()
        assert after.status == TxStatus.DROPPED and after.final
        assert m.nonces.reconcile().next_nonce == tx.nonce + 1


def test_stuck_transaction_is_replaced_and_every_hash_kept(
    w3: Web3, chain: Anvil, manual_mining: None, tmp_path: object
) -> None:
    key = dev_key(4)
    me = Account.from_key(key).address
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = manager(store, w3, key, confirmations=2)
        m.start()
        tx = m.submit(to=me, gas_limit=21_000)
        assert tx.id is not None
        m.poll()  # not stuck yet: nothing happens
        assert len(store.attempts(tx.id)) == 1
        later = utcnow() + timedelta(seconds=31)
        m.poll(now=later)  # stuck: replaced with bumped fees
        m.poll(now=later + timedelta(seconds=31))  # still stuck: bumped again
        attempts = store.attempts(tx.id)
        assert len(attempts) == 3 and len({a.hash for a in attempts}) == 3
        for old, new in itertools.pairwise(attempts):
            assert new.max_fee_per_gas >= old.max_fee_per_gas * 112 // 100
            assert new.max_priority_fee_per_gas >= old.max_priority_fee_per_gas * 112 // 100
        assert all(a.max_fee_per_gas <= 50 * GWEI for a in attempts)
        assert (
            w3.eth.get_transaction(attempts[-1].hash)["maxFeePerGas"]
            == attempts[-1].max_fee_per_gas
        )  # type: ignore[arg-type]
        chain.rpc("evm_mine")
        (mined,) = m.poll(now=later)
        assert (mined.status, mined.final, mined.mined_hash) == ("mined", False, attempts[-1].hash)
        # Until final, no hash is written off: the others stay "sent".
        assert [a.status for a in store.attempts(tx.id)] == ["sent", "sent", "sent"]
        chain.rpc("evm_mine")
        (final,) = m.poll(now=later)
        assert final.status == TxStatus.FINAL and final.final
        assert [a.status for a in store.attempts(tx.id)] == ["replaced", "replaced", "mined"]


def test_replaced_original_that_mines_is_recognised(
    w3: Web3, chain: Anvil, manual_mining: None, tmp_path: object
) -> None:
    key = dev_key(5)
    me = Account.from_key(key).address
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = manager(store, w3, key)
        m.start()
        tx = m.submit(to=me, gas_limit=21_000)
        assert tx.id is not None
        m.poll(now=utcnow() + timedelta(seconds=31))
        original, replacement = store.attempts(tx.id)
        # The network ends up mining the original (e.g. a builder saw it first): drop the
        # replacement from anvil's pool and put the original back.
        chain.rpc("anvil_dropTransaction", [replacement.hash])
        w3.eth.send_raw_transaction(original.raw)
        chain.rpc("evm_mine")
        (done,) = m.poll()
        assert done.status == TxStatus.FINAL and done.mined_hash == original.hash
        assert [a.status for a in store.attempts(tx.id)] == ["mined", "replaced"]


def test_refused_transaction_releases_its_nonce_and_gaps_are_filled(
    w3: Web3, tmp_path: object
) -> None:
    key = dev_key(6)
    me = Account.from_key(key).address
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = manager(store, w3, key)
        m.start()
        base = w3.eth.get_transaction_count(me)
        # Refused by the node (gas below the intrinsic 21,000): FAILED, and its nonce reused.
        with pytest.raises(SendError, match="intrinsic gas too low"):
            m.submit(to=me, gas_limit=1_000)
        (failed,) = store.transactions(me)
        assert (failed.status, failed.final, failed.nonce) == (TxStatus.FAILED, True, base)
        ok = m.submit(to=me, gas_limit=21_000)
        assert ok.nonce == base
        # A gap: three nonces handed out, the middle one refused after the later was taken.
        rows = [
            store.insert_transaction(
                Transaction(sender=me, to=me.lower(), gas_limit=21_000, chain_id=31337)
            )
            for _ in range(3)
        ]
        store.update_transaction(rows[1].id, status=TxStatus.FAILED, final=True)  # type: ignore[arg-type]
        m.start()  # sends rows 0 and 2; row 2 waits behind the hole
        settle(m)  # the first poll fills the hole with a 0-value self-transfer
        assert w3.eth.get_transaction_count(me) == base + 4
        txs = [t for t in store.transactions(me) if t.status != TxStatus.FAILED]
        assert sorted(t.nonce for t in txs) == list(range(base, base + 4))
        assert all(t.status == TxStatus.FINAL for t in txs)
    clear_registry()


def test_transport_failure_is_redacted(tmp_path: object) -> None:
    token = "a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6"
    url = f"http://127.0.0.1:9/v3/{token}"  # nothing listens on port 9: connection refused
    register_url(url)
    dead = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 2}))
    with Store.open(f"sqlite:///{tmp_path}/k.db") as store:
        m = manager(store, dead, dev_key(8))
        with pytest.raises(RedactedError) as info:
            m.start()
        assert "ConnectionError" in str(info.value) and token not in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__
    clear_registry()


def test_restart_after_an_unpolled_mine_sends_nothing_twice(w3: Web3, tmp_path: object) -> None:
    key = dev_key(9)
    me = Account.from_key(key).address
    url = f"sqlite:///{tmp_path}/k.db"
    with Store.open(url) as store:
        m = manager(store, w3, key)
        m.start()
        tx = m.submit(to=me, gas_limit=21_000)
    deadline = time.monotonic() + 20
    while w3.eth.get_transaction_count(me) <= tx.nonce:  # mined, but the keeper never polled
        assert time.monotonic() < deadline
        time.sleep(0.05)
    count = w3.eth.get_transaction_count(me)
    with Store.open(url) as store:  # restart: the re-broadcast is refused ("nonce too low")
        m = manager(store, w3, key)
        m.start()
        settle(m)
        (again,) = store.transactions(me)
        assert again.status == TxStatus.FINAL and again.nonce == tx.nonce
        assert [a.status for a in store.attempts(again.id)] == ["mined"]  # type: ignore[arg-type]
        assert w3.eth.get_transaction_count(me) == count  # nothing was sent twice
    clear_registry()
