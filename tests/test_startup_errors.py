"""Start-up failures and read-only commands, as an operator meets them: `python -m keeper ...`
run in a temporary directory. Every failure is one named line on stderr (no traceback), the exit
status is non-zero, and nothing is written: no database appears next to the configuration.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from keeper.deployment import Deployment, deploy_protocol
from keeper.devnet import Anvil
from keeper.store import Store
from tests.keeper_cli import run_keeper

ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
KEY_ENV = "KEEPER_STARTUP_TEST_KEY"

#: A deployment file that parses (the node is never reached in the tests that use it).
FAKE_DEPLOYMENT = {
    "version": 1,
    "chain_id": 31337,
    "start_block": 1,
    "deployer": "0x" + "11" * 20,
    "contracts": {
        "ClearingHouse": {
            "address": "0x" + "22" * 20,
            "abi": "ClearingHouse",
            "abi_sha256": "00",
            "code_hash": "0x00",
        }
    },
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(data: dict[str, Any]) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _config(tmp: Path, *, rpc: str | None = None, **sections: dict[str, Any]) -> Path:
    data: dict[str, Any] = {
        "rpc": {
            "url": rpc or f"http://127.0.0.1:{_closed_port()}",
            "chain_id": 31337,
            "timeout_seconds": 2,
            "max_retries": 0,
        },
        "deployment": {"file": "deployment.json"},
        "store": {"url": "sqlite:///var/keeper.db"},
        "metrics": {"bind": f"127.0.0.1:{_closed_port()}"},
        **sections,
    }
    if not (tmp / "deployment.json").exists():
        (tmp / "deployment.json").write_text(json.dumps(FAKE_DEPLOYMENT))
    path = tmp / "keeper.toml"
    path.write_text(_toml(data))
    return path


def _keeper(
    tmp: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_keeper(tmp, *args, env=env, timeout=120)


def _one_error(proc: subprocess.CompletedProcess, name: str) -> str:
    """The single ``error: <name>: ...`` line of stderr (JSON log lines aside)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: {name}: "), proc.stderr
    others = [x for x in proc.stderr.splitlines() if not x.startswith(("error:", "{"))]
    assert not others, proc.stderr
    return errors[0]


def _no_database(tmp: Path) -> None:
    assert not (tmp / "var").exists(), sorted(p.name for p in tmp.rglob("*"))


# --- without a node ----------------------------------------------------------------------------


def _keystore(tmp: Path, password: str = "correct horse") -> Path:
    blob = Account.encrypt(bytes.fromhex(ANVIL_KEY_1[2:]), password, kdf="pbkdf2", iterations=2)
    path = tmp / "keystore.json"
    path.write_text(json.dumps(blob))
    return path


def test_run_missing_password_env_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    _keystore(tmp_path)
    cfg = _config(tmp_path, signer={"keystore": "keystore.json", "password_env": "KEEPER_TEST_PW"})
    proc = _keeper(tmp_path, "run", "--config", str(cfg), "--no-progress")
    assert proc.returncode == 1
    line = _one_error(proc, "KeystoreError")
    assert "KEEPER_TEST_PW is not set" in line
    _no_database(tmp_path)


def test_run_missing_password_file_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    _keystore(tmp_path)
    cfg = _config(tmp_path, signer={"keystore": "keystore.json", "password_file": "pw.txt"})
    proc = _keeper(tmp_path, "run", "--config", str(cfg), "--no-progress")
    assert proc.returncode == 1
    assert "pw.txt" in _one_error(proc, "KeystoreError")
    _no_database(tmp_path)


def test_run_wrong_password_writes_nothing_and_never_echoes_it(tmp_path: Path) -> None:
    _keystore(tmp_path)
    cfg = _config(tmp_path, signer={"keystore": "keystore.json", "password_env": "KEEPER_TEST_PW"})
    proc = _keeper(
        tmp_path, "run", "--config", str(cfg), env={"KEEPER_TEST_PW": "wrong battery staple"}
    )
    assert proc.returncode == 1
    assert "wrong password" in _one_error(proc, "KeystoreError")
    assert "wrong battery staple" not in proc.stderr + proc.stdout
    _no_database(tmp_path)


def test_run_unreachable_node_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path, signer={"key_env": KEY_ENV})
    proc = _keeper(tmp_path, "run", "--config", str(cfg), env={KEY_ENV: ANVIL_KEY_1})
    assert proc.returncode == 1
    _one_error(proc, "RpcUnavailable")
    _no_database(tmp_path)


def test_check_unreachable_node_exits_1_without_database(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc = _keeper(tmp_path, "check", "--config", str(cfg))
    assert proc.returncode == 1
    _one_error(proc, "RpcUnavailable")
    _no_database(tmp_path)


def test_margin_account_unreachable_node_exits_1_without_database(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc = _keeper(tmp_path, "margin", "--account", "1", "--config", str(cfg))
    assert proc.returncode == 1
    _one_error(proc, "RpcUnavailable")
    _no_database(tmp_path)


def test_bounty_unreachable_node_exits_1_without_database(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc = _keeper(tmp_path, "bounty", "--address", "0x" + "33" * 20, "--config", str(cfg))
    assert proc.returncode == 1
    _one_error(proc, "RpcUnavailable")
    _no_database(tmp_path)


def test_status_never_creates_a_database(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    proc = _keeper(tmp_path, "status", "--config", str(cfg))
    assert proc.returncode == 1
    assert "no keeper database" in _one_error(proc, "NoDatabase")
    _no_database(tmp_path)
    proc = _keeper(tmp_path, "status", "--json", "--config", str(cfg))
    assert proc.returncode == 1 and proc.stdout == ""
    _no_database(tmp_path)


def test_status_with_the_chain_unreachable_prints_the_store_and_exits_1(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    Store.open(f"sqlite:///{tmp_path / 'var' / 'keeper.db'}").close()
    proc = _keeper(tmp_path, "status", "--json", "--config", str(cfg))
    assert proc.returncode == 1
    shown = json.loads(proc.stdout)
    assert shown["head"] is None and shown["rpc_error"].startswith("RpcUnavailable")
    assert "chain unreachable" in _one_error(proc, "RpcUnavailable")


# --- with a node -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, contracts_built: None) -> Iterator[Any]:
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        deployment: Deployment = deploy_protocol(w3)
        yield node, deployment


def _real_config(tmp: Path, deployed: Any, **sections: dict[str, Any]) -> Path:
    node, deployment = deployed
    deployment.write(tmp / "deployment.json")
    return _config(tmp, rpc=node.url, **sections)


@pytest.mark.anvil
def test_run_metrics_port_in_use_is_one_line_and_writes_nothing(
    tmp_path: Path, deployed: Any
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _real_config(
            tmp_path, deployed, signer={"key_env": KEY_ENV}, metrics={"bind": f"127.0.0.1:{port}"}
        )
        proc = _keeper(
            tmp_path, "run", "--config", str(cfg), "--no-progress", env={KEY_ENV: ANVIL_KEY_1}
        )
    assert proc.returncode == 1
    line = _one_error(proc, "MetricsPortInUse")
    assert f"127.0.0.1:{port}" in line and "already in use" in line
    _no_database(tmp_path)


@pytest.mark.anvil
def test_status_and_check_answer_with_the_chain_up(tmp_path: Path, deployed: Any) -> None:
    cfg = _real_config(tmp_path, deployed)
    proc = _keeper(tmp_path, "check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    _no_database(tmp_path)
    Store.open(f"sqlite:///{tmp_path / 'var' / 'keeper.db'}").close()
    proc = _keeper(tmp_path, "status", "--json", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["head"] >= 1
