"""The operator's commands for a real chain, as subprocesses: `keeper keystore new|import`
(an encrypted keystore; the password and the key are never printed), `keeper deployment import`
(the deployment file of an existing deployment, read from the chain and verified against the
code this keeper was built with) and the keeper's balance in `keeper check`.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from keeper.deployment import PROTOCOL_CONTRACTS, Deployment, deploy_protocol, load_deployment
from keeper.devnet import Anvil
from tests.keeper_cli import run_keeper

PASSWORD = "operator's long passphrase"
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
ANVIL_ADDRESS_1 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def _keeper(
    tmp: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_keeper(tmp, *args, env=env)


def _error(proc: subprocess.CompletedProcess, name: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {name}: "), proc.stderr
    return lines[0]


# --- keystores ---------------------------------------------------------------------------------


def test_keystore_new_with_password_env(tmp_path: Path) -> None:
    env = {"KEEPER_PW": PASSWORD}
    proc = _keeper(
        tmp_path, "keystore", "new", "--out", "ks.json", "--password-env", "KEEPER_PW", env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert PASSWORD not in out
    path = tmp_path / "ks.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    address = Web3.to_checksum_address("0x" + json.loads(path.read_text())["address"])
    assert f"address {address}" in proc.stdout
    assert 'password_env = "KEEPER_PW"' in proc.stdout and str(path) in proc.stdout
    key = Account.decrypt(json.loads(path.read_text()), PASSWORD)
    assert Account.from_key(key).address == address
    assert key.hex() not in out
    # Never over an existing keystore: the file is unchanged.
    before = path.read_bytes()
    again = _keeper(
        tmp_path, "keystore", "new", "--out", "ks.json", "--password-env", "KEEPER_PW", env=env
    )
    assert "never overwritten" in _error(again, "KeystoreCommandError")
    assert path.read_bytes() == before


def test_keystore_import_from_key_env_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    proc = _keeper(
        tmp_path, "keystore", "import", "--out", "ks.json", "--key-env", "KEEPER_KEY",
        "--password-file", "pw", env={"KEEPER_KEY": ANVIL_KEY_1},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"address {ANVIL_ADDRESS_1}" in proc.stdout
    assert ANVIL_KEY_1[2:] not in proc.stdout + proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    # The password file is read as the keeper reads it (trailing newline dropped).
    key = Account.decrypt(json.loads((tmp_path / "ks.json").read_text()), PASSWORD)
    assert "0x" + key.hex() == ANVIL_KEY_1


def test_keystore_bad_input_is_one_named_line_and_writes_nothing(tmp_path: Path) -> None:
    new = ("keystore", "new", "--out", "ks.json")
    _error(_keeper(tmp_path, *new), "KeystoreCommandError")  # no password source
    assert "KEEPER_PW is not set" in _error(
        _keeper(tmp_path, *new, "--password-env", "KEEPER_PW"), "KeystoreError"
    )
    assert "shorter than" in _error(
        _keeper(tmp_path, *new, "--password-env", "KEEPER_PW", env={"KEEPER_PW": "pw12345"}),
        "KeystoreCommandError",
    )
    bad_key = "0x1234deadbeef"
    line = _error(
        _keeper(
            tmp_path,
            "keystore",
            "import",
            "--out",
            "ks.json",
            "--key-env",
            "KEEPER_KEY",
            "--password-env",
            "KEEPER_PW",
            env={"KEEPER_PW": PASSWORD, "KEEPER_KEY": bad_key},
        ),
        "KeystoreCommandError",
    )
    assert "KEEPER_KEY does not hold" in line and "1234deadbeef" not in line
    assert not (tmp_path / "ks.json").exists()


# --- deployment import -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(contracts_built: None) -> Iterator[tuple[Anvil, Deployment]]:
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        yield node, deploy_protocol(w3)


@pytest.mark.anvil
def test_deployment_import_reads_and_verifies_an_existing_deployment(
    tmp_path: Path, chain: tuple[Anvil, Deployment]
) -> None:
    node, deployed = chain
    w3 = Web3(Web3.HTTPProvider(node.url))
    ch = deployed.address("ClearingHouse")
    mc = deployed.address("Multicall3")
    proc = _keeper(
        tmp_path, "deployment", "import", "--rpc", node.url, "--clearing-house", ch,
        "--multicall", mc, "--chain-id", str(node.chain_id), "--out", "deployment.json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["instruments"] == len(deployed.instruments)
    got = load_deployment(tmp_path / "deployment.json")
    assert got.chain_id == deployed.chain_id
    for name in (*PROTOCOL_CONTRACTS, "Multicall3"):
        assert got.contracts[name]["address"] == deployed.contracts[name]["address"]
        assert got.contracts[name]["code_hash"] == deployed.contracts[name]["code_hash"]
        assert got.contracts[name]["abi_sha256"] == deployed.contracts[name]["abi_sha256"]
    assert got.underlyings == deployed.underlyings
    assert got.assets == deployed.assets
    assert got.instruments == deployed.instruments
    assert got.backstop_account == deployed.backstop_account
    # The first block to index is the one that created the clearing house.
    assert w3.eth.get_code(ch, got.start_block) and not w3.eth.get_code(ch, got.start_block - 1)
    assert got.start_block >= deployed.start_block

    # The keeper starts from it: `keeper check` passes and shows the signer's balance.
    (tmp_path / "keeper.toml").write_text(
        f'[rpc]\nurl = "{node.url}"\nchain_id = {node.chain_id}\n'
        '[deployment]\nfile = "deployment.json"\n[signer]\nkey_env = "KEEPER_KEY"\n'
    )
    proc = _keeper(tmp_path, "check", "--config", "keeper.toml", env={"KEEPER_KEY": ANVIL_KEY_1})
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["signer"] == ANVIL_ADDRESS_1
    assert int(shown["signer_balance_wei"]) == w3.eth.get_balance(ANVIL_ADDRESS_1)
    assert not (tmp_path / "var").exists()


@pytest.mark.anvil
def test_deployment_import_refuses_what_it_cannot_verify(
    tmp_path: Path, chain: tuple[Anvil, Deployment]
) -> None:
    node, deployed = chain
    ch = deployed.address("ClearingHouse")
    mc = deployed.address("Multicall3")
    base = ("deployment", "import", "--rpc", node.url, "--out", "d.json", "--multicall", mc)

    def run(*extra: str) -> subprocess.CompletedProcess:
        return _keeper(tmp_path, *base, *extra)

    token = deployed.address("MockERC20:USDC")
    assert "not the ClearingHouse" in _error(run("--clearing-house", token), "CodeMismatch")
    _error(run("--clearing-house", "0x" + "42" * 20), "NoCodeAtAddress")
    _error(run("--clearing-house", ch, "--chain-id", "1"), "WrongChain")
    wrong = "0x" + "00" * 32
    _error(run("--clearing-house", ch, "--code-hash", f"ClearingHouse={wrong}"), "CodeHashMismatch")
    _error(
        _keeper(
            tmp_path,
            "deployment",
            "import",
            "--rpc",
            node.url,
            "--out",
            "d.json",
            "--clearing-house",
            ch,
        ),
        "NoMulticall3",
    )  # no Multicall3 at the canonical address on anvil
    assert not (tmp_path / "d.json").exists()
    pinned = deployed.contracts["ClearingHouse"]["code_hash"]
    ok = run("--clearing-house", ch, "--code-hash", f"ClearingHouse={pinned}")
    assert ok.returncode == 0, ok.stderr
    _error(run("--clearing-house", ch), "OutputExists")
    assert run("--clearing-house", ch, "--force").returncode == 0
