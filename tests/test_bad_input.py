"""Bad input to the real `keeper` command, in subprocesses, against a real anvil: each case is
one line ``error: <Name>: ...`` on stderr, exit status 1, no traceback, no secret in the output,
and nothing changed (no file created or modified, no transaction, no store).

`keeper check --config` runs every start-up check of the keeper (keeper/preflight.py);
`keeper margin FILE` reads a portfolio file. Config parsing and portfolio parsing are tested
case by case in process (tests/test_config.py, tests/test_cli_margin.py); this module proves
the same rejections hold for the installed command, plus the checks that need a node.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from keeper.deployment import Deployment, deploy_protocol
from keeper.devnet import Anvil
from tests.test_cli_margin import BAD_FILES

KEEPER = Path(sys.executable).parent / "keeper"
PASSWORD = "correct-horse-battery-staple-9"
URL_SECRET = "Sup3rSecretRpcKey0042"
TYPO_SECRET = "TypoedSecretValue7781"
Account.enable_unaudited_hdwallet_features()
KEY = Account.from_mnemonic(
    "test test test test test test test test test test test junk",
    account_path="m/44'/60'/0'/0/9",
).key
SECRETS = (PASSWORD, URL_SECRET, TYPO_SECRET, bytes(KEY).hex())


@dataclasses.dataclass
class Case:
    args: list[str]
    expect: str  # the error name; "" for success
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def _config(rpc: str, chain_id: int, deployment: str = "deployment.json", extra: str = "") -> str:
    return f"""
[rpc]
url = "{rpc}"
chain_id = {chain_id}
max_retries = 0
timeout_seconds = 5
[deployment]
file = "{deployment}"
[store]
url = "sqlite:///keeper.db"
[signer]
keystore = "keystore.json"
password_env = "KEEPER_TEST_PW"
{extra}
"""


def _altered(d: Deployment, name: str, **changes: Any) -> str:
    contracts = {k: dict(v) for k, v in d.contracts.items()}
    contracts[name].update(changes)
    return dataclasses.replace(d, contracts=contracts).to_json()


def _build_cases(root: Path, anvil: Anvil, d: Deployment) -> dict[str, Case]:
    """One directory per case: config, deployment file, keystore (written before the runs)."""
    keystore = json.dumps(Account.encrypt(KEY, PASSWORD, kdf="scrypt", iterations=2**10))
    rpc = f"http://keeper:{URL_SECRET}@127.0.0.1:{anvil.port}/?apikey={URL_SECRET}"
    good = _config(rpc, anvil.chain_id)
    pw = {"KEEPER_TEST_PW": PASSWORD}
    files: dict[str, dict[str, str | bytes]] = {
        "ok": {"keeper.toml": good},
        "toml_syntax": {"keeper.toml": "[rpc\nurl = 1"},
        "toml_nesting_bomb": {"keeper.toml": "x = " + "[" * 100_000 + "]" * 100_000},
        "toml_unknown_key": {
            "keeper.toml": good.replace("max_retries = 0", f'max_retrys = "{TYPO_SECRET}"')
        },
        "config_chain_id": {"keeper.toml": _config(rpc, 5)},
        "node_chain_id": {
            "keeper.toml": _config(rpc, 5),
            "deployment.json": dataclasses.replace(d, chain_id=5).to_json(),
        },
        "no_code": {
            "deployment.json": _altered(
                d, "ClearingHouse", address="0x000000000000000000000000000000000000dEaD"
            )
        },
        "other_code": {
            "deployment.json": _altered(d, "ClearingHouse", address=d.address("MarginVerifier"))
        },
        "abi_hash": {"deployment.json": _altered(d, "ClearingHouse", abi_sha256="00" * 32)},
        "deployment_not_json": {"deployment.json": "{not json"},
        "deployment_shape": {
            "deployment.json": json.dumps({**json.loads(d.to_json()), "contracts": []})
        },
        "keystore_password": {},
        "keystore_no_password": {},
        "rpc_down": {
            "keeper.toml": _config(f"http://keeper:{URL_SECRET}@127.0.0.1:9/", anvil.chain_id)
        },
    }
    expect = {
        "ok": "",
        "toml_syntax": "ConfigError",
        "toml_nesting_bomb": "ConfigError",
        "toml_unknown_key": "ConfigError",
        "config_chain_id": "WrongChain",
        "node_chain_id": "WrongChain",
        "no_code": "NoCodeAtAddress",
        "other_code": "CodeHashMismatch",
        "abi_hash": "AbiMismatch",
        "deployment_not_json": "DeploymentError",
        "deployment_shape": "DeploymentError",
        "keystore_password": "KeystoreError",
        "keystore_no_password": "KeystoreError",
        "rpc_down": "RpcUnavailable",
    }
    envs = {"keystore_password": {"KEEPER_TEST_PW": PASSWORD[::-1]}, "keystore_no_password": {}}
    cases: dict[str, Case] = {}
    for name, overrides in files.items():
        where = root / name
        where.mkdir()
        contents: dict[str, str | bytes] = {
            "keeper.toml": good,
            "deployment.json": d.to_json(),
            "keystore.json": keystore,
            **overrides,
        }
        for fname, content in contents.items():
            path = where / fname
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        cases[name] = Case(
            ["check", "--config", str(where / "keeper.toml")], expect[name], envs.get(name, pw)
        )
    for name in ("deep", "huge_exponent", "huge_int_literal"):
        content, error = BAD_FILES[name]
        where = root / f"portfolio_{name}"
        where.mkdir()
        path = where / "p.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        cases[f"portfolio_{name}"] = Case(["margin", "--json", str(path)], error)
    return cases


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@dataclasses.dataclass
class Results:
    cases: dict[str, Case]
    runs: dict[str, subprocess.CompletedProcess[str]]
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]
    chain_before: tuple[int, int]
    chain_after: tuple[int, int]


@pytest.fixture(scope="module")
def results(
    anvil: Anvil, w3: Web3, contracts_built: None, tmp_path_factory: pytest.TempPathFactory
) -> Results:
    d = deploy_protocol(w3)
    root = tmp_path_factory.mktemp("bad-input")
    cases = _build_cases(root, anvil, d)
    me = Account.from_key(KEY).address

    def state() -> tuple[int, int]:
        return w3.eth.block_number, w3.eth.get_transaction_count(me)

    base_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KEEPER")}

    def run(case: Case) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KEEPER), *case.args],
            capture_output=True,
            text=True,
            env={**base_env, **case.env},
            cwd=root,
            timeout=120,
        )

    before, chain_before = _tree(root), state()
    with ThreadPoolExecutor(max_workers=4) as pool:  # ~1 s of imports per process
        runs = dict(zip(cases, pool.map(run, cases.values()), strict=True))
    return Results(cases, runs, before, _tree(root), chain_before, state())


CASE_NAMES = [
    "ok",
    "toml_syntax",
    "toml_nesting_bomb",
    "toml_unknown_key",
    "config_chain_id",
    "node_chain_id",
    "no_code",
    "other_code",
    "abi_hash",
    "deployment_not_json",
    "deployment_shape",
    "keystore_password",
    "keystore_no_password",
    "rpc_down",
    "portfolio_deep",
    "portfolio_huge_exponent",
    "portfolio_huge_int_literal",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_named_error_and_exit_status(results: Results, name: str) -> None:
    case, run = results.cases[name], results.runs[name]
    output = run.stdout + run.stderr
    assert not any(s in output for s in SECRETS), output
    assert "Traceback" not in output
    if not case.expect:
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)
        assert summary["signer"] == Account.from_key(KEY).address
        assert summary["contracts_verified"] > 3 and "***" in summary["rpc"]
        return
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert run.stdout == ""
    assert run.stderr.startswith(f"error: {case.expect}: "), run.stderr
    assert run.stderr.count("\n") == 1


def test_every_case_is_checked() -> None:
    assert sorted(CASE_NAMES) == sorted(set(CASE_NAMES))


def test_nothing_was_written_and_nothing_sent(results: Results) -> None:
    assert set(results.cases) == set(CASE_NAMES)
    assert results.after == results.before  # no store, no file created or touched
    assert not any(name.endswith(".db") for name in results.after)
    assert results.chain_after == results.chain_before  # no block, no transaction
