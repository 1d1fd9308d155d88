"""`keeper bounty`: the liquidation bounty accrued to the keeper's address, and its claim.

Showing reads ``bounties(address)`` from the clearing house (asset-0 WAD) on a node verified
against the deployment file; it never opens the store. ``--claim`` simulates ``claimBounty()``
first (a named error, nothing sent, when there is nothing to claim), then sends it through the
keeper's own signer and transaction manager (keeper/transactions.py): the transaction is
recorded in the keeper's store with its nonce, hashes and receipt like every other, replaced
with higher fees when stuck, and followed until final (``decisions.confirmations``).

``claimBounty`` pays whole token units of the settlement asset (asset 0): the sub-unit rest
stays accrued.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from keeper.config import ConfigError, KeeperConfig, load_config
from keeper.margin_cmd import printable
from keeper.secrets import scrub

WAD = 10**18

log = logging.getLogger("keeper.bounty")


class NothingToClaim(RuntimeError):
    """Less than one whole token unit of bounty is accrued: a claim would revert."""


class ClaimFailed(RuntimeError):
    """The claim transaction reverted, was dropped, or did not become final in time."""


@dataclass
class BountyStatus:
    address: str
    asset: str
    accrued_wad: int
    #: Whole token units a claim pays now (the sub-unit rest stays accrued).
    claimable_units: int
    decimals: int

    @property
    def accrued(self) -> Decimal:
        return Decimal(self.accrued_wad) / WAD

    @property
    def claimable(self) -> Decimal:
        return Decimal(self.claimable_units).scaleb(-self.decimals)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accrued"] = _plain(self.accrued)
        out["claimable"] = _plain(self.claimable)
        return out


def _plain(x: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 3.402, 0, 10.63125."""
    text = f"{x:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def read_bounty(ch: Any, address: str, asset: dict[str, Any]) -> BountyStatus:
    """The accrued bounty of ``address`` (ClearingHouse ``bounties``) and what a claim pays."""
    accrued = int(ch.functions.bounties(address).call())
    decimals = int(asset.get("decimals", 18))
    scale = 10 ** (18 - decimals)
    return BountyStatus(
        address=address,
        asset=str(asset.get("symbol", "asset 0")),
        accrued_wad=accrued,
        claimable_units=max(accrued, 0) // scale,
        decimals=decimals,
    )


def _address(cfg: KeeperConfig, given: str | None) -> str:
    from web3 import Web3

    from keeper.signer import load_signer

    if given is not None:
        if not Web3.is_address(given):
            raise ConfigError("--address: not an Ethereum address")
        return Web3.to_checksum_address(given)
    if cfg.signer is None:
        raise ConfigError("no [signer] configured: give --address to show another address")
    return load_signer(cfg.signer).address


def run(
    config_path: Path,
    *,
    claim: bool,
    address: str | None,
    as_json: bool,
    wait_seconds: float,
) -> int:
    from keeper.chain import Chain
    from keeper.deployment import bind
    from keeper.preflight import input_errors, read_deployment

    chain = None
    try:
        cfg = load_config(config_path)
        if claim and address is not None:
            raise ConfigError("--claim pays the keeper's own signer: drop --address")
        deployment = read_deployment(cfg.deployment.file)
        who = _address(cfg, address)
        chain = Chain.from_config(cfg.rpc, deployment)
        ch = bind(chain.w3, deployment, "ClearingHouse")
        asset = deployment.assets[0] if deployment.assets else {}
        status = read_bounty(ch, who, asset)
        if not claim:
            _show(status, as_json)
            return 0
        return _claim(cfg, chain, ch, status, as_json, wait_seconds)
    except (NothingToClaim, ClaimFailed) as exc:
        return _fail(type(exc).__name__, str(exc))
    except Exception as exc:
        if isinstance(exc, input_errors()):
            return _fail(type(exc).__name__, str(exc))
        return _fail("InternalError", f"{type(exc).__name__}: {exc} (please report this bug)", 70)
    finally:
        if chain is not None:
            chain.close()


def _show(status: BountyStatus, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(status.as_dict()) + "\n")
        return
    sys.stdout.write(
        f"address    {status.address}\n"
        f"accrued    {_plain(status.accrued)} {status.asset}\n"
        f"claimable  {_plain(status.claimable)} {status.asset} (whole token units; the rest "
        "stays)\n"
    )


def _claim(
    cfg: KeeperConfig,
    chain: Any,
    ch: Any,
    status: BountyStatus,
    as_json: bool,
    wait_seconds: float,
) -> int:
    from web3.exceptions import ContractCustomError, ContractLogicError
    from web3.logs import DISCARD

    from keeper.signer import load_signer
    from keeper.store import Store, TxStatus
    from keeper.transactions import tx_manager_from_config

    assert cfg.signer is not None
    if status.claimable_units == 0:
        raise NothingToClaim(
            f"{status.address} has {status.accrued} {status.asset} accrued: less than one "
            "whole token unit, which is what claimBounty pays"
        )
    fn = ch.functions.claimBounty()
    try:
        estimate = int(fn.estimate_gas({"from": status.address}))
    except (ContractCustomError, ContractLogicError) as exc:
        raise ClaimFailed(f"claimBounty would revert: {scrub(str(exc))}") from None
    signer = load_signer(cfg.signer)
    store = Store.open(cfg.store.url)
    try:
        txm = tx_manager_from_config(cfg, store, chain.w3, signer)
        if store.next_nonce(signer.address) is None:
            # First transaction of this address in this store (a running keeper sharing the
            # store has already reconciled it: its nonce row is left alone).
            txm.nonces.reconcile()
        gas = estimate * (100 + cfg.decisions.gas_margin_percent) // 100
        tx = txm.submit(to=ch.address, data=ch.encode_abi("claimBounty", args=[]), gas_limit=gas)
        assert tx.id is not None
        deadline = time.monotonic() + wait_seconds
        while not tx.final and time.monotonic() < deadline:
            time.sleep(1.0)
            txm.poll()
            tx = store.transaction(tx.id) or tx
        paid = 0
        if tx.mined_hash is not None and tx.status in (TxStatus.MINED, TxStatus.FINAL):
            receipt = chain.w3.eth.get_transaction_receipt(tx.mined_hash)
            for ev in ch.events.BountyClaimed().process_receipt(receipt, errors=DISCARD):
                paid += int(ev["args"]["amount"])
    finally:
        store.close()
    result = {
        "address": status.address,
        "tx_id": tx.id,
        "nonce": tx.nonce,
        "hash": tx.mined_hash,
        "status": str(tx.status),
        "final": bool(tx.final),
        "claimed_wad": paid,
        "gas_used": tx.gas_used,
        "claimed": _plain(Decimal(paid) / WAD),
        "asset": status.asset,
    }
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(
            f"claimed    {result['claimed']} {status.asset} to {status.address}\n"
            f"tx         {tx.mined_hash} (id {tx.id}, nonce {tx.nonce}, {tx.status}, "
            f"gas used {tx.gas_used})\n"
        )
    if tx.status in (TxStatus.REVERTED, TxStatus.DROPPED, TxStatus.FAILED):
        raise ClaimFailed(f"claim transaction {tx.id} ended {tx.status}: {tx.revert_reason or ''}")
    if not tx.final:
        raise ClaimFailed(
            f"claim transaction {tx.id} not final after {wait_seconds:.0f} s (status "
            f"{tx.status}); a running keeper on the same store keeps following it"
        )
    return 0


def auto_claim(
    txm: Any,
    ch: Any,
    address: str,
    unclaimed_wad: int,
    threshold_wad: int,
    gas_margin_percent: int,
) -> Any:
    """The running keeper's scheduled claim (``service.claim_bounty_above_usdc``): sends
    ``claimBounty`` through its transaction manager when ``unclaimed_wad`` reaches the threshold
    and no claim of its own is still open. Returns the transaction, or None when none is sent."""
    from web3.exceptions import ContractCustomError, ContractLogicError

    if unclaimed_wad <= 0 or unclaimed_wad < threshold_wad:
        return None
    data = ch.encode_abi("claimBounty", args=[])
    to = ch.address.lower()
    if any(t.to == to and t.data == data for t in txm.store.open_transactions(address)):
        return None  # the previous claim is still on its way
    try:
        estimate = int(ch.functions.claimBounty().estimate_gas({"from": address}))
    except (ContractCustomError, ContractLogicError):
        return None  # NothingToClaim: less than one whole token unit
    tx = txm.submit(
        to=ch.address, data=data, gas_limit=estimate * (100 + gas_margin_percent) // 100
    )
    log.info("bounty claim sent", extra={"tx_id": tx.id, "unclaimed_wad": str(unclaimed_wad)})
    return tx


def _fail(name: str, message: str, status: int = 1) -> int:
    sys.stderr.write(f"error: {name}: {printable(scrub(message))[:500]}\n")
    return status
