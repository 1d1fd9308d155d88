"""`keeper check --config FILE`: every start-up check of the keeper, and nothing else.

Order (cheapest and local first): the configuration file (``ConfigError``), the deployment
file (``DeploymentError``), the signer (``KeystoreError``: a wrong password, a missing
variable), then the node: chain id, code and ABI hashes of every contract (keeper.chain's
``WrongChain``, ``NoCodeAtAddress``, ``CodeHashMismatch``, ``AbiMismatch``, ``RpcUnavailable``
...). The first failure is printed as one line, ``error: <Name>: <message>``, scrubbed of every
registered secret, and the exit status is 1 (70 for a bug). Nothing is written: the store is
not opened (opening it creates the schema), no transaction is signed or sent.

The keeper's long-running command should run ``preflight`` before it opens anything.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keeper.config import ConfigError, KeeperConfig, load_config
from keeper.secrets import redact_url, scrub

if TYPE_CHECKING:
    from keeper.deployment import Deployment

#: A deployment file is a few kB; refuse anything absurdly larger before parsing it.
MAX_DEPLOYMENT_BYTES = 1 << 20


def input_errors() -> tuple[type[Exception], ...]:
    """Errors that are the input's fault: one line, exit status 1. (Imported late: web3 and
    eth-account take a second to import, and a config error needs neither.)"""
    from keeper.chain import ChainError
    from keeper.deployment import DeploymentError
    from keeper.signer import KeystoreError

    return (ConfigError, DeploymentError, KeystoreError, ChainError)


@dataclass(frozen=True)
class Preflight:
    config: KeeperConfig
    deployment: Deployment
    chain_id: int
    head: int
    contracts: int
    signer: str | None
    #: The signer's native balance (wei) at ``head``: what pays the keeper's gas.
    signer_balance_wei: int | None = None

    def as_dict(self) -> dict[str, Any]:
        balance = self.signer_balance_wei
        return {
            "rpc": redact_url(self.config.rpc.url),
            "chain_id": self.chain_id,
            "head": self.head,
            "contracts_verified": self.contracts,
            "signer": self.signer,
            "signer_balance_wei": None if balance is None else str(balance),
            "signer_balance_ether": None if balance is None else _ether(balance),
        }


def _ether(wei: int) -> str:
    from decimal import Decimal

    text = f"{Decimal(wei).scaleb(-18):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def read_deployment(path: Path) -> Deployment:
    """``load_deployment`` with a size cap and a check of the shape the keeper relies on."""
    from keeper.deployment import DeploymentError, load_deployment

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DeploymentError(f"cannot read deployment file {path}: {exc.strerror}") from None
    if size > MAX_DEPLOYMENT_BYTES:
        raise DeploymentError(f"deployment file {path} is larger than {MAX_DEPLOYMENT_BYTES} B")
    try:
        deployment = load_deployment(path)
    except DeploymentError:
        raise DeploymentError(f"deployment file {path} is not a deployment JSON file") from None
    contracts = deployment.contracts
    if not isinstance(deployment.chain_id, int) or not isinstance(contracts, dict):
        raise DeploymentError(f"deployment file {path}: chain_id or contracts malformed")
    for name, entry in contracts.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise DeploymentError(f"deployment file {path}: contract entry malformed")
        if len(entry["address"]) != 42 or not entry["address"].startswith("0x"):
            raise DeploymentError(f"deployment file {path}: {name[:60]} has no valid address")
    return deployment


def preflight(config_path: Path) -> Preflight:
    return check_config(load_config(config_path))


def check_config(config: KeeperConfig, *, need_signer: bool = True) -> Preflight:
    """Every start-up check of an already-loaded configuration: deployment file, signer (when
    configured and ``need_signer``), then the node. Writes nothing, opens no store."""
    from keeper.chain import Chain
    from keeper.signer import load_signer

    deployment = read_deployment(config.deployment.file)
    signer = load_signer(config.signer) if config.signer is not None and need_signer else None
    chain = Chain.from_config(config.rpc, deployment)
    balance = None
    try:
        head = chain.head()
        if signer is not None:
            from eth_utils import to_checksum_address

            address = to_checksum_address(signer.address)
            balance = int(chain.w3.eth.get_balance(address, head.number))
    finally:
        chain.close()
    return Preflight(
        config,
        deployment,
        deployment.chain_id,
        head.number,
        len(deployment.contracts),
        signer.address if signer is not None else None,
        balance,
    )


def run(config_path: Path) -> int:
    """The command: 0 and a JSON summary on stdout, or one error line on stderr."""
    try:
        result = preflight(config_path)
    except ConfigError as exc:
        return _fail(type(exc).__name__, str(exc), 1)
    except Exception as exc:
        if isinstance(exc, input_errors()):
            return _fail(type(exc).__name__, str(exc), 1)
        # A bug: still one scrubbed line, no traceback.
        return _fail("InternalError", f"{type(exc).__name__}: {exc} (please report this bug)", 70)
    sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    return 0


def _fail(name: str, message: str, status: int) -> int:
    text = scrub(message)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)[:500]
    sys.stderr.write(f"error: {name}: {text}\n")
    return status
