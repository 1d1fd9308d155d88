"""The scheduled recalibration (``service.recalibrate_interval_seconds``): each run, at the
latest block,

1. executes the first queued recalibration (in id order) whose timelock has passed and that
   the contract accepts now (one it would refuse — cancelled, stale, out of the limits now —
   is skipped with the contract's reason in the log): one per run, since an execution
   changes what the next one is checked against;
2. when none is still waiting, computes a proposal from the oracle rounds
   (keeper/protocol/recalibration.py) and queues it, unless no price range or vol shift base
   moves by more than ``[recalibration] min_change`` of its current value.

Both go through the keeper's transaction manager: stored, signed, followed and recorded as
every keeper transaction. A transaction of the job still open skips the run (no duplicate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, ContractLogicError

from keeper.chain.revert import decode_revert, revert_data_of
from keeper.chain.rpc import Rpc
from keeper.config import RecalibrationSettings
from keeper.protocol.recalibration import (
    QUEUED,
    Queued,
    RecalibrationUnavailable,
    Settings,
    chain_state,
    execute,
    grid_unchanged,
    propose,
    queue,
    queued_recalibrations,
)
from margin.params import WAD
from margin.risk.ewma import CalibrationError
from margin.risk.recalibration import RecalibrationRule

log = logging.getLogger(__name__)

GRACE = 2 * 86_400  # ClearingHouseAdmin.RECALIBRATION_GRACE


def settings_of(cfg: RecalibrationSettings) -> Settings:
    def wad(x: Decimal) -> int:
        return int(x * WAD)

    rule = RecalibrationRule(
        k_sigma=wad(cfg.k_sigma),
        horizon=cfg.horizon_seconds,
        vol_shift_per_vol=wad(cfg.vol_shift_per_vol),
    )
    return Settings(cfg.rounds, cfg.sample_seconds, wad(cfg.lam), rule, wad(cfg.min_change))


@dataclass
class JobReport:
    block: int
    executed: list[int] = field(default_factory=list)
    queued: str | None = None  # the proposal hash
    skipped: str | None = None


@dataclass
class RecalibrationJob:
    w3: Web3
    rpc: Rpc
    ch: Contract
    txm: Any
    sender: str
    settings: Settings
    start_block: int
    gas_margin_percent: int = 20
    _seen: dict[int, Queued] = field(default_factory=dict)
    _scanned: int = -1

    def _refresh(self, block: int) -> list[Queued]:
        lo = max(self.start_block, self._scanned + 1)
        if lo <= block:
            for q in queued_recalibrations(self.w3, self.ch, lo, block):
                self._seen[q.id] = q
            self._scanned = block
        out = []
        for rid, q in sorted(self._seen.items()):
            h, eta, st = self.ch.functions.queuedRecalibration(rid).call(block_identifier=block)
            out.append(Queued(rid, bytes(h), int(eta), int(st), q.data, q.block, q.tx_hash))
        return out

    def _ours_open(self) -> bool:
        to = self.ch.address.lower()
        sel = {
            self.ch.encode_abi("queueRecalibration", args=[b""])[:10],
            self.ch.encode_abi("executeRecalibration", args=[0, b""])[:10],
        }
        return any(
            t.to == to and t.data[:10] in sel for t in self.txm.store.open_transactions(self.sender)
        )

    def run(self) -> JobReport:
        block = int(self.w3.eth.block_number)
        report = JobReport(block)
        if self._ours_open():
            report.skipped = "a recalibration transaction is still open"
            return report
        now = int(self.w3.eth.get_block(block)["timestamp"])
        waiting = False
        for q in self._refresh(block):
            if q.state != QUEUED or now > q.eta + GRACE:
                continue
            if now < q.eta:
                waiting = True
                continue
            try:
                execute(self.txm, self.ch, q, self.sender, self.gas_margin_percent)
                report.executed.append(q.id)
                break
            except (ContractCustomError, ContractLogicError) as e:
                log.warning(
                    "recalibration not executable",
                    extra={"recalibration": q.id, "reason": _reason(e)},
                )
        if waiting or report.executed:
            report.skipped = report.skipped or "a queued recalibration is waiting"
            return report
        try:
            proposal = propose(self.w3, self.rpc, self.ch, self.settings, block)
            state = chain_state(self.w3, self.ch, block)
            if grid_unchanged(proposal, state, self.settings.min_change):
                report.skipped = "the grid would move less than min_change"
                return report
            tx = queue(self.txm, self.ch, proposal, self.sender, self.gas_margin_percent)
            report.queued = str(tx.id)
        except (RecalibrationUnavailable, CalibrationError) as e:
            report.skipped = f"{type(e).__name__}: {e}"
        except (ContractCustomError, ContractLogicError) as e:
            report.skipped = f"refused: {_reason(e)}"
        return report


def _reason(e: Exception) -> str:
    data = revert_data_of(e)
    if not data:
        return str(e)
    d = decode_revert(data)
    return f"{d.name}{d.args}"


def recalibration_job(config: Any, chain: Any, sender: Any) -> RecalibrationJob:
    """The job of a running keeper (its chain connection and transaction manager)."""
    from keeper.deployment import clearing_house_abi

    w3 = chain.rpc.w3
    ch = w3.eth.contract(address=chain.clearing_house, abi=clearing_house_abi())
    return RecalibrationJob(
        w3,
        chain.rpc,
        ch,
        sender.txm,
        sender.address,
        settings_of(config.recalibration),
        chain.deployment.start_block,
        config.decisions.gas_margin_percent,
    )
