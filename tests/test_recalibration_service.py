"""The running keeper's scheduled recalibration on anvil, with a historical set in the
parameters: KeeperService with ``[service] recalibrate_interval_seconds`` (its real scheduler,
in a thread) and a 10 s timelock, the keeper's signer holding RISK_OPERATOR. The job queues a
proposal carrying the next FHS scales, executes it once the timelock has passed, the store
records both transactions, and ``keeper replay`` recomputes the proposal byte for byte (and
flags one queued directly with scales one wei off).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from web3 import Web3

from keeper.config import load_config_data
from keeper.deployment import decode_risk_params, encode_risk_params
from keeper.protocol.recalibration import committed_ref_vols
from keeper.replay.run import ReplayOptions, replay
from keeper.service import KeeperService
from keeper.store import Store
from keeper.store.models import Transaction
from margin.fixed_point import div_up
from margin.params import WAD
from margin.risk.historical import DATA_FILE_NAME, historical_set
from margin.risk.recalibration import canonical_encoding, decode_proposal
from tests.test_recalibration import ANVIL_KEY_1, _send, recalibration_chain

pytestmark = pytest.mark.anvil

KEY_ENV = "KEEPER_RECAL_SERVICE_KEY"
DELAY = 10
SET_FILE = Path(__file__).resolve().parent.parent / "margin" / "risk" / "data" / DATA_FILE_NAME


def _wait(what: str, cond: Callable[[], bool], limit: float = 120.0) -> None:
    """Polls ``cond`` until it holds (the scheduler runs on its own clock); fails after
    ``limit`` seconds naming what never happened."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"the keeper never {what}")
        time.sleep(0.25)


def _transactions(db: Path) -> list[Transaction]:
    with Store.open(f"sqlite:///{db}") as store, store.session() as s:
        return list(s.exec(select(Transaction)).all())


def _install_committed_set(w3: Web3, d: Any, ch: Any) -> None:
    """The committed historical set, for the deployment's underlyings in its order."""
    params = decode_risk_params(bytes(ch.functions.riskParams().call()))
    hist = historical_set(SET_FILE.read_text(), [u["symbol"] for u in d.underlyings])
    params = type(params)(
        params.underlyings, params.assets, params.correlation_credit, params.im_factor, hist
    )
    _send(w3, ch.functions.setRiskParams(encode_risk_params(params)), d.deployer)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, contracts_built: None) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("recal-service")
    with recalibration_chain(tmp, _install_committed_set) as (node, w3, d, ch):
        yield tmp, node, w3, d, ch, [u["symbol"] for u in d.underlyings]


def test_scheduled_job_queues_executes_and_replays_clean(
    net: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, node, w3, d, ch, names = net
    monkeypatch.setenv(KEY_ENV, ANVIL_KEY_1)
    db = tmp / "keeper.db"
    cfg = load_config_data(
        {
            "rpc": {"url": node.url, "chain_id": node.chain_id},
            "deployment": {"file": str(tmp / "deployment.json")},
            "store": {"url": f"sqlite:///{db}"},
            "signer": {"key_env": KEY_ENV},
            "fees": {"max_fee_per_gas": "500 gwei", "priority_fee": "1 gwei"},
            "decisions": {"confirmations": 0, "block_poll_interval_seconds": 0.2},
            "metrics": {"bind": "127.0.0.1:9"},
            "service": {"watchdog_seconds": 120, "recalibrate_interval_seconds": 1},
            "recalibration": {"rounds": 50, "sample_seconds": 60, "min_change": 0},
        }
    )
    before = decode_risk_params(bytes(ch.functions.riskParams().call()))
    assert before.historical.fhs_scale == (WAD, WAD)
    service = KeeperService(cfg)
    runner = threading.Thread(target=service.run, kwargs={"install_signals": False})
    runner.start()
    try:
        # 1. The scheduled job queues a proposal as the risk operator.
        _wait("queued a recalibration", lambda: ch.functions.recalibrationCount().call() >= 1)
        # A risk operator queueing other scales than its named rounds give (one wei less):
        # replay must find it out.
        honest = ch.events.RecalibrationQueued().get_logs(from_block=0)[0]["args"]["proposal"]
        h = decode_proposal(bytes(honest))
        bent = replace(h, fhs_scales=tuple(f - 1 for f in h.fhs_scales))
        _send(w3, ch.functions.queueRecalibration(canonical_encoding(bent)), d.deployer)
        # 2. After the timelock (chain time), a later run executes it.
        node.rpc("evm_increaseTime", [DELAY + 1])
        node.rpc("evm_mine", [])
        _wait("executed it", lambda: ch.functions.queuedRecalibration(1).call()[2] == 2)
        _wait(
            "recorded both transactions as final",
            lambda: sum(1 for t in _transactions(db) if t.final and t.mined_hash) >= 2,
        )
    finally:
        service.stop()
        runner.join(60)
    assert not runner.is_alive()

    logs = ch.events.RecalibrationQueued().get_logs(from_block=0)
    assert len(logs) == 2 and int(logs[0]["args"]["id"]) == 1
    assert logs[0]["args"]["operator"] == w3.eth.accounts[1]
    proposal = decode_proposal(bytes(logs[0]["args"]["proposal"]))
    # The scales: ceil(vol / reference vol) where the set has a reference (BTC), the current
    # scale where it has none (ETH: its historical moves are 0), within the step limits.
    refs = committed_ref_vols(names)
    assert proposal.ref_vols == refs and refs[names.index("BTC")] > 0
    assert refs[names.index("ETH")] == 0 and proposal.fhs_scales[names.index("ETH")] == WAD
    btc = names.index("BTC")
    target = div_up(proposal.underlyings[btc].vol, refs[btc])
    _, step, _ = ch.functions.recalibrationConfig().call()
    lo, hi = WAD - step, WAD + step
    assert proposal.fhs_scales[btc] == max(lo, min(hi, target))
    assert proposal.fhs_scales[btc] != WAD, "the test's history must move the scale"
    after = decode_risk_params(bytes(ch.functions.riskParams().call()))
    assert after.historical.fhs_scale == proposal.fhs_scales
    assert after.historical.moves == before.historical.moves
    for p, c in zip(proposal.underlyings, after.underlyings, strict=True):
        assert (c.price_range, c.vol_shift_base) == (p.price_range, p.vol_shift_base)

    # The store holds the queue and the execute transaction, both mined.
    sel = {
        ch.encode_abi("queueRecalibration", args=[b""])[:10]: "queue",
        ch.encode_abi("executeRecalibration", args=[0, b""])[:10]: "execute",
    }
    kinds = [sel.get(t.data[:10]) for t in _transactions(db) if t.final and t.mined_hash]
    assert kinds.count("queue") == 1 and kinds.count("execute") == 1, kinds

    # keeper replay recomputes the keeper's proposal (scales included) byte for byte; the
    # bent one is flagged on its scales alone.
    res = replay(ReplayOptions(deployment=tmp / "deployment.json", rpc_url=node.url))
    assert res.recalibrations == 2
    found = [m for m in res.mismatches if m.kind == "recalibration"]
    assert len(found) == 1 and "recalibration 2" in found[0].message, [m.line() for m in found]
    assert [f.field for f in found[0].fields] == ["fhs_scales"]
    assert found[0].fields[0].expected == proposal.fhs_scales
