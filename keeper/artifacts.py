"""Forge build artifacts (contracts/out) and deployment onto a devnet.

An artifact is ``contracts/out/<File>.sol/<Contract>.json`` with ``abi`` and ``bytecode``.
By default ``<File>`` is the contract name (one contract per file, the project's rule); a
contract living elsewhere is found by searching ``out/*/<Contract>.json``.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = REPO_ROOT / "contracts"
OUT_DIR = CONTRACTS_DIR / "out"

BUILD_HINT = "run `cd contracts && forge build --offline` (or `bash scripts/bootstrap.sh` first)"


class ArtifactError(RuntimeError):
    """A forge artifact is missing or unusable."""


@dataclass(frozen=True)
class Artifact:
    name: str
    path: Path
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation code; "0x" for abstract contracts and interfaces

    @property
    def deployable(self) -> bool:
        return len(self.bytecode) > 2


def artifact_path(name: str, out_dir: Path = OUT_DIR) -> Path:
    """The artifact file of contract ``name``; raises ArtifactError if absent or ambiguous."""
    if not out_dir.is_dir():
        raise ArtifactError(f"no forge output at {out_dir}: {BUILD_HINT}")
    direct = out_dir / f"{name}.sol" / f"{name}.json"
    if direct.is_file():
        return direct
    found = sorted(out_dir.glob(f"*/{name}.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ArtifactError(f"no artifact for contract {name!r} in {out_dir}: {BUILD_HINT}")
    raise ArtifactError(
        f"contract name {name!r} is ambiguous in {out_dir}: "
        + ", ".join(str(p.relative_to(out_dir)) for p in found)
    )


def load_artifact(name: str, out_dir: Path = OUT_DIR) -> Artifact:
    path = artifact_path(name, out_dir)
    try:
        data = json.loads(path.read_text())
        abi = data["abi"]
        bytecode = data["bytecode"]["object"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"unreadable forge artifact {path}: {exc!r}; {BUILD_HINT}") from exc
    if not bytecode.startswith("0x"):
        bytecode = "0x" + bytecode
    return Artifact(name=name, path=path, abi=abi, bytecode=bytecode)


def deploy(
    w3: Web3, name: str, *args: Any, out_dir: Path = OUT_DIR, gas: int | None = None
) -> Contract:
    """Deploy contract ``name`` from anvil's first dev account; return it bound to its address.

    Raises ArtifactError for an abstract contract/interface, and RuntimeError if the creation
    transaction reverts.
    """
    art = load_artifact(name, out_dir)
    if not art.deployable:
        raise ArtifactError(f"{name} has no creation code (abstract contract or interface?)")
    if "__$" in art.bytecode:
        raise ArtifactError(f"{name} needs external libraries linked; not supported here")
    factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    sender = w3.eth.accounts[0]
    tx: dict[str, Any] = {"from": sender}
    if gas is not None:
        tx["gas"] = gas
    tx_hash = factory.constructor(*args).transact(tx)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise RuntimeError(f"deployment of {name} reverted (tx {tx_hash.hex()})")
    address = receipt["contractAddress"]
    assert address is not None  # checked above
    return w3.eth.contract(address=address, abi=art.abi)


# --- building ----------------------------------------------------------------------------

DEFAULT_FORGE = REPO_ROOT / "tools" / "node_modules" / ".bin" / "forge"
_BUILD_STAMP = OUT_DIR / ".build-stamp"
_BUILD_LOCK = CONTRACTS_DIR / "cache" / ".build.lock"


def _newest_source_mtime() -> float:
    inputs = [CONTRACTS_DIR / "foundry.toml", *CONTRACTS_DIR.glob("src/**/*.sol")]
    return max((p.stat().st_mtime for p in inputs if p.is_file()), default=0.0)


def build_is_stale() -> bool:
    """True when contracts/out is missing or older than any contracts/src source."""
    try:
        stamp = _BUILD_STAMP.stat().st_mtime
    except FileNotFoundError:
        return True
    return _newest_source_mtime() > stamp


def ensure_built(*, force: bool = False, timeout: float = 600.0) -> bool:
    """Run ``forge build --offline`` if contracts/out is stale; returns whether it built.

    Safe to call from parallel processes (pytest-xdist workers): an exclusive file lock makes
    one build and lets the others find it fresh. FORGE_BIN overrides the pinned forge.
    """
    if not force and not build_is_stale():
        return False
    _BUILD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(_BUILD_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not force and not build_is_stale():  # another process built while we waited
            return False
        forge = Path(os.environ.get("FORGE_BIN") or DEFAULT_FORGE)
        if not forge.is_file():
            raise ArtifactError(f"forge not found at {forge}; run `bash scripts/bootstrap.sh`")
        started = _newest_source_mtime()
        # forge reaches solcjs through tools/bin/solc (foundry.toml), which runs `node`.
        proc = subprocess.run(
            [str(forge), "build", "--offline"],
            cwd=CONTRACTS_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise ArtifactError(f"forge build --offline failed (status {proc.returncode}):\n{tail}")
        OUT_DIR.mkdir(exist_ok=True)
        _BUILD_STAMP.touch()
        # A source edited during the build leaves the stamp older than it: the next call rebuilds.
        os.utime(_BUILD_STAMP, (started, started))
        return True
