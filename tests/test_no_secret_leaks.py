"""End to end: a keeper configured with real secrets (RPC credentials in the URL, a keystore
password, the private key) logs, fails, reverts and records on a real anvil and a real store;
no secret may appear in the captured JSON logs, in any exception text or in any database row.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pytest
from eth_account import Account
from sqlalchemy import inspect, text
from web3 import Web3

from keeper.artifacts import deploy
from keeper.config import load_config
from keeper.devnet import Anvil
from keeper.fees import FeePolicy
from keeper.logs import configure_logging
from keeper.secrets import RedactedError, clear_registry, redacting_errors
from keeper.signer import KeystoreError, load_signer
from keeper.store import Decision, Store, TxStatus
from keeper.transactions import SendError, TxManager

Account.enable_unaudited_hdwallet_features()
KEY = Account.from_mnemonic(
    "test test test test test test test test test test test junk",
    account_path="m/44'/60'/0'/0/7",
).key
KEY_HEX = bytes(KEY).hex()
PASSWORD = "Tr0ub4dor&3-keystore-pass"
URL_PASSWORD = "rpc-basic-auth-pw-77"
API_KEY = "QWERTY123456apikey"
TOKEN = "0123456789abcdef0123456789abcdef"
SECRETS = [KEY_HEX, PASSWORD, URL_PASSWORD, API_KEY, TOKEN]


@pytest.mark.anvil
def test_secrets_never_leak(anvil: Anvil, contracts_built: None, tmp_path: Path) -> None:
    keystore = tmp_path / "keystore.json"
    keystore.write_text(json.dumps(Account.encrypt(KEY, PASSWORD, kdf="scrypt", iterations=2**10)))
    rpc = f"http://keeper:{URL_PASSWORD}@127.0.0.1:{anvil.port}/?apikey={API_KEY}&token={TOKEN}"
    (tmp_path / "keeper.toml").write_text(
        f"""
[rpc]
url = "{rpc}"
chain_id = {anvil.chain_id}
[deployment]
file = "deployment.json"
[store]
url = "sqlite:///keeper.db"
[signer]
keystore = "keystore.json"
password_env = "KEEPER_TEST_PW"
[fees]
stuck_after_seconds = 1
[decisions]
confirmations = 1
"""
    )
    stream = io.StringIO()
    handler = configure_logging("DEBUG", stream)  # DEBUG: web3 logs every request's URL
    errors: list[str] = []
    log = logging.getLogger("keeper.leaktest")
    try:
        config = load_config(tmp_path / "keeper.toml", environ={"KEEPER_TEST_PW": PASSWORD})
        log.info("config loaded: %r", config)
        assert config.signer is not None
        try:
            load_signer(config.signer, environ={"KEEPER_TEST_PW": PASSWORD + "x"})
        except KeystoreError as exc:
            errors.append(str(exc))
            log.exception("wrong password")
        signer = load_signer(config.signer, environ={"KEEPER_TEST_PW": PASSWORD})
        log.info("signer %s with key %s (password %s)", signer, KEY_HEX, PASSWORD)

        w3 = Web3(Web3.HTTPProvider(config.rpc.url))
        harness = deploy(w3, "MathHarness")
        with Store.open(config.store.url) as store:
            m = TxManager(store, w3, signer, FeePolicy(config.fees), chain_id=config.rpc.chain_id,
                          confirmations=1, stuck_after_seconds=1)  # fmt: skip
            m.start()
            ok = m.submit(to=signer.address, gas_limit=21_000)
            # A transaction that reverts on chain: divDown(1, 0) -> DivisionByZero().
            data = harness.encode_abi("divDown", args=[1, 0])
            d = store.add_decision(
                Decision(block_number=1, block_hash="0x" + "00" * 32, account=signer.address,
                         inputs_digest="0x" + "00" * 32, loss_matrix={"ETH": [1, -2]},
                         requirement=1, initial_margin=1, equity=0, state="liquidatable",
                         action="liquidate", outcome="simulation_reverted",
                         outcome_detail=f"simulated with key {KEY_HEX} via {rpc}")
            )  # fmt: skip
            bad = m.submit(to=harness.address, data=data, gas_limit=100_000, decision_id=d.id)
            # A transaction the node refuses (gas below intrinsic): the error is recorded.
            try:
                m.submit(to=signer.address, gas_limit=1_000)
            except SendError as exc:
                errors.append(str(exc))
                log.exception("send failed")
            for _ in range(200):  # automine mines asynchronously: poll until settled
                if not store.open_transactions(signer.address):
                    break
                m.poll()
                time.sleep(0.05)
            assert store.transaction(ok.id).status == TxStatus.FINAL  # type: ignore[arg-type,union-attr]
            reverted = store.transaction(bad.id)  # type: ignore[arg-type]
            assert reverted is not None and reverted.status == TxStatus.REVERTED
            assert reverted.revert_reason == "DivisionByZero() (replayed)"
            # A third-party error quoting the full URL (requests' 404 message does).
            w3_bad = Web3(Web3.HTTPProvider(rpc.replace("/?", f"/v3/{TOKEN}?")))
            try:
                with redacting_errors():
                    w3_bad.eth.block_number  # noqa: B018
            except RedactedError as exc:
                errors.append(str(exc))
                log.exception("rpc failed")
            with store.engine.connect() as conn:
                rows = {
                    t: [tuple(r) for r in conn.execute(text(f'SELECT * FROM "{t}"'))]
                    for t in inspect(store.engine).get_table_names()
                }
    finally:
        logging.getLogger().removeHandler(handler)
        clear_registry()

    output = stream.getvalue()
    dump = repr(rows)
    assert len(errors) == 3 and "404" in errors[2]
    assert rows["tx_attempt"] and rows["decision"]
    assert any("intrinsic gas too low" in str(r) for r in rows["tx_attempt"])
    assert "127.0.0.1" in output  # the logs are still useful
    for secret in SECRETS:
        for where, blob in (("logs", output), ("errors", "\n".join(errors)), ("store", dump)):
            assert secret.lower() not in blob.lower(), f"{secret[:4]}... leaked into {where}"
