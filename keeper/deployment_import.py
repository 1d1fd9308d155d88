"""`keeper deployment import`: the deployment file of an existing deployment, read from the chain.

Given the clearing house's address, everything else is read from it at one block: the verifier
and admin module it was built with (``verifier()``, ``admin()``), the underlyings and their
price and vol feeds, the collateral assets, the instruments, the backstop account and the owner.

**Verified, not trusted.** The runtime code at each of the three protocol addresses must be the
code this keeper was built with: the forge artifact's deployed bytecode, with the constructor's
immutables (addresses baked into the code) masked, the rest equal byte for byte; otherwise
``CodeMismatch`` and no file is written. ``--code-hash NAME=0x...`` additionally pins the
EXTCODEHASH of a contract to a value published by the deployer. The file records each
contract's EXTCODEHASH and the SHA-256 of the keeper's ABI file, so every later start-up
(``keeper check``, ``keeper run``) fails with ``CodeHashMismatch`` if the code at an address
changes.

The first block to index is the block that created the clearing house (found by bisection over
``eth_getCode`` at past blocks, which needs a node that keeps old state) or ``--start-block``.
Multicall3 is the canonical deployment unless ``--multicall`` names another.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from keeper.margin_cmd import printable
from keeper.secrets import redact_url, register_url, scrub

#: What the protocol's contracts are recorded as (name in the file = artifact = ABI name).
PROTOCOL = ("ClearingHouse", "ClearingHouseAdmin", "ClearingHouseRecalibration", "MarginVerifier")

_ERC20_SYMBOL = [
    {
        "type": "function",
        "name": "symbol",
        "inputs": [],
        "outputs": [{"name": "", "type": "string"}],
        "stateMutability": "view",
    }
]
_FEED = [
    {
        "type": "function",
        "name": "description",
        "inputs": [],
        "outputs": [{"name": "", "type": "string"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "decimals",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint8"}],
        "stateMutability": "view",
    },
]


class DeploymentImportError(RuntimeError):
    """Base of the errors of `keeper deployment import` (named by their subclass)."""


class CodeMismatch(DeploymentImportError):
    """The code at an address is not the contract this keeper was built with."""


class StartBlockUnknown(DeploymentImportError):
    """The creation block could not be found (a node without old state): give --start-block."""


class NoMulticall3(DeploymentImportError):
    """No Multicall3 at the canonical address, and none named with --multicall."""


class OutputExists(DeploymentImportError):
    """The output file exists: the import never overwrites one unless told (--force)."""


def _masked(code: bytes, refs: dict[str, list[dict[str, int]]]) -> bytes:
    out = bytearray(code)
    for ranges in refs.values():
        for r in ranges:
            start, length = int(r["start"]), int(r["length"])
            out[start : start + length] = b"\0" * length
    return bytes(out)


def expected_runtime(name: str) -> tuple[bytes, dict[str, list[dict[str, int]]]]:
    """The built runtime code of ``name`` and its immutable references (forge artifact)."""
    from keeper.artifacts import artifact_path

    data = json.loads(artifact_path(name).read_text())
    deployed = data["deployedBytecode"]
    obj = deployed["object"]
    return bytes.fromhex(obj.removeprefix("0x")), deployed.get("immutableReferences", {})


def verify_code(name: str, address: str, code: bytes) -> None:
    """Raise ``CodeMismatch`` unless ``code`` is the built ``name`` up to its immutables."""
    from keeper.chain.errors import NoCodeAtAddress

    if not code:
        raise NoCodeAtAddress(name, address)
    built, refs = expected_runtime(name)
    if len(code) != len(built) or _masked(code, refs) != _masked(built, refs):
        raise CodeMismatch(
            f"the code at {address} is not the {name} this keeper was built with "
            f"({len(code)} bytes on chain, {len(built)} built): wrong address, or a deployment "
            "of other sources or compiler settings"
        )


def _creation_block(w3: Any, address: str, head: int) -> int:
    """The first block at which ``address`` has code (bisection over eth_getCode)."""
    lo, hi = 0, head
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            if len(w3.eth.get_code(address, block_identifier=mid)) > 0:
                hi = mid
            else:
                lo = mid + 1
    except Exception as exc:
        raise StartBlockUnknown(
            "cannot read code at past blocks on this node "
            f"({type(exc).__name__}): give --start-block (the block that created the "
            "clearing house, or any block before its first event)"
        ) from None
    return lo


def _symbol(w3: Any, token: str, fallback: str) -> str:
    try:
        text = str(w3.eth.contract(address=token, abi=_ERC20_SYMBOL).functions.symbol().call())
    except Exception:
        return fallback
    return text if text.isprintable() and 0 < len(text) <= 32 else fallback


def _feed_info(w3: Any, feed: str, fallback: str) -> tuple[str, int | None]:
    c = w3.eth.contract(address=feed, abi=_FEED)
    try:
        description = str(c.functions.description().call())
        symbol = description.split("/")[0].strip() or fallback
    except Exception:
        symbol = fallback
    try:
        decimals: int | None = int(c.functions.decimals().call())
    except Exception:
        decimals = None
    return (symbol if symbol.isprintable() and len(symbol) <= 32 else fallback), decimals


def build_deployment(
    w3: Any,
    clearing_house: str,
    *,
    chain_id: int | None = None,
    multicall: str | None = None,
    start_block: int | None = None,
    code_hashes: dict[str, str] | None = None,
) -> Any:
    """Read and verify an existing deployment; returns a ``Deployment`` (not yet written)."""
    from web3 import Web3

    from keeper.artifacts import ensure_built
    from keeper.chain.errors import CodeHashMismatch, NoCodeAtAddress, WrongChain
    from keeper.chain.rpc import CANONICAL_MULTICALL3, abi_file_sha256
    from keeper.deployment import KINDS, Deployment, clearing_house_abi, code_hash

    actual_chain = int(w3.eth.chain_id)
    if chain_id is not None and chain_id != actual_chain:
        raise WrongChain(chain_id, actual_chain)
    head = int(w3.eth.block_number)
    # The chain's own checks first: they take a second, the build below takes minutes.
    multicall_entry = None
    mc = Web3.to_checksum_address(multicall) if multicall else None
    if mc is not None:
        mc_code = bytes(w3.eth.get_code(mc, block_identifier=head))
        if not mc_code:
            raise NoCodeAtAddress("Multicall3", mc)
        multicall_entry = {
            "address": mc,
            "abi": "Multicall3",
            "abi_sha256": abi_file_sha256("Multicall3"),
            "code_hash": code_hash(mc_code),
        }
    elif not w3.eth.get_code(CANONICAL_MULTICALL3, block_identifier=head):
        raise NoMulticall3(
            f"no Multicall3 at the canonical address {CANONICAL_MULTICALL3} on this chain: "
            "give the address of one with --multicall"
        )
    ch_address = Web3.to_checksum_address(clearing_house)
    code_at = {"ClearingHouse": bytes(w3.eth.get_code(ch_address, block_identifier=head))}
    if code_at["ClearingHouse"]:
        ensure_built()  # the artifacts the code is compared with
    verify_code("ClearingHouse", ch_address, code_at["ClearingHouse"])
    ch = w3.eth.contract(address=ch_address, abi=clearing_house_abi())
    fns = ch.functions
    addresses = {
        "ClearingHouse": ch_address,
        "ClearingHouseAdmin": Web3.to_checksum_address(fns.admin().call(block_identifier=head)),
        # The admin module's immutable, read through the clearing house.
        "ClearingHouseRecalibration": Web3.to_checksum_address(
            fns.recalibration().call(block_identifier=head)
        ),
        "MarginVerifier": Web3.to_checksum_address(fns.verifier().call(block_identifier=head)),
    }
    for name in PROTOCOL[1:]:
        code_at[name] = bytes(w3.eth.get_code(addresses[name], block_identifier=head))
        verify_code(name, addresses[name], code_at[name])

    contracts: dict[str, dict[str, str]] = {}
    for name in PROTOCOL:
        contracts[name] = {
            "address": addresses[name],
            "abi": name,
            "abi_sha256": abi_file_sha256(name),
            "code_hash": code_hash(code_at[name]),
        }
    if multicall_entry is not None:
        contracts["Multicall3"] = multicall_entry
    for name, pinned in (code_hashes or {}).items():
        if name not in contracts:
            raise DeploymentImportError(
                f"--code-hash names {name[:40]}, which is not one of {', '.join(contracts)}"
            )
        entry = contracts[name]
        if entry["code_hash"].lower() != pinned.lower():
            raise CodeHashMismatch(name, entry["address"], pinned, entry["code_hash"])

    underlyings = []
    for i in range(int(fns.underlyingCount().call(block_identifier=head))):
        price, max_age, liq_age, vol = fns.underlyingConfig(i).call(block_identifier=head)
        symbol, decimals = _feed_info(w3, price, f"U{i}")
        underlyings.append(
            {
                "index": i,
                "symbol": symbol,
                "price_feed": Web3.to_checksum_address(price),
                "vol_feed": Web3.to_checksum_address(vol),
                "feed_decimals": decimals,
                "max_age": int(max_age),
                "liquidation_max_age": int(liq_age),
            }
        )
    assets = []
    for k in range(int(fns.assetCount().call(block_identifier=head))):
        token, decimals, *_ = fns.assetConfig(k).call(block_identifier=head)
        assets.append(
            {
                "index": k,
                "symbol": _symbol(w3, token, f"A{k}"),
                "token": Web3.to_checksum_address(token),
                "decimals": int(decimals),
            }
        )
    instruments = []
    for n in range(1, int(fns.instrumentCount().call(block_identifier=head)) + 1):
        underlying, kind, _listed, _settled, expiry, strike = fns.instruments(n).call(
            block_identifier=head
        )
        instruments.append(
            {
                "id": n,
                "underlying": int(underlying),
                "kind": KINDS.get(int(kind), str(kind)),
                "strike": int(strike),
                "expiry": int(expiry),
            }
        )
    if start_block is None:
        start_block = _creation_block(w3, ch_address, head)
    return Deployment(
        chain_id=actual_chain,
        start_block=int(start_block),
        deployer=Web3.to_checksum_address(fns.owner().call(block_identifier=head)),
        contracts=contracts,
        underlyings=underlyings,
        assets=assets,
        instruments=instruments,
        backstop_account=int(fns.backstop().call(block_identifier=head)),
        roles={},
    )


def run(
    *,
    rpc: str,
    clearing_house: str,
    out: Path,
    chain_id: int | None,
    multicall: str | None,
    start_block: int | None,
    code_hashes: list[str],
    force: bool,
) -> int:
    from keeper.artifacts import ArtifactError
    from keeper.chain import Chain
    from keeper.chain.rpc import make_web3
    from keeper.preflight import input_errors

    register_url(rpc)
    try:
        pins: dict[str, str] = {}
        for item in code_hashes:
            name, sep, value = item.partition("=")
            if not sep or not value.startswith("0x") or len(value) != 66:
                raise DeploymentImportError("--code-hash must be NAME=0x<64 hex digits>")
            pins[name.strip()] = value
        if out.exists() and not force:
            raise OutputExists(f"{out} exists: give --force to replace it")
        w3 = make_web3(rpc, timeout=30.0)
        deployment = build_deployment(
            w3,
            clearing_house,
            chain_id=chain_id,
            multicall=multicall,
            start_block=start_block,
            code_hashes=pins,
        )
        # The keeper's own start-up check must accept what was read, before anything is written.
        Chain.connect(rpc, deployment).close()
        deployment.write(out)
    except Exception as exc:
        if isinstance(exc, (*input_errors(), DeploymentImportError, ArtifactError)):
            return _fail(type(exc).__name__, str(exc))
        return _fail("InternalError", f"{type(exc).__name__}: {exc} (please report this bug)", 70)
    summary = {
        "out": str(out),
        "rpc": redact_url(rpc),
        "chain_id": deployment.chain_id,
        "start_block": deployment.start_block,
        "contracts": {k: v["address"] for k, v in deployment.contracts.items()},
        "underlyings": [u["symbol"] for u in deployment.underlyings],
        "assets": [a["symbol"] for a in deployment.assets],
        "instruments": len(deployment.instruments),
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _fail(name: str, message: str, status: int = 1) -> int:
    sys.stderr.write(f"error: {name}: {printable(scrub(message))[:500]}\n")
    return status
