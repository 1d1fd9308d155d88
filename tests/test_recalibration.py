"""Recalibration end to end on anvil with the compiled contracts: `keeper calibrate` reads the
feeds' rounds, gives the same bytes twice, queues the proposal as the risk operator (a recorded
transaction), executes it after the timelock; `keeper replay` recomputes the honest proposal
byte for byte and flags one queued directly with other numbers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from eth_utils.crypto import keccak
from sqlmodel import select
from web3 import Web3

from keeper.deployment import Deployment, bind, decode_risk_params, deploy_protocol
from keeper.devnet import Anvil
from keeper.replay.run import ReplayOptions, replay
from keeper.store import Store
from keeper.store.models import Transaction
from margin.risk.recalibration import (
    FieldLimits,
    canonical_encoding,
    check_limit,
    decode_proposal,
)
from tests.keeper_cli import run_keeper

pytestmark = pytest.mark.anvil

KEY_ENV = "KEEPER_RECAL_TEST_KEY"
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
DELAY = 10


def _send(w3: Web3, fn: Any, sender: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


def _history(node: Anvil, w3: Web3, d: Deployment, rounds: int = 60) -> None:
    """``rounds`` new rounds of both price feeds, one minute apart: ETH moves ~0.1% a minute,
    BTC partly with it (so the correlation is an estimate, not a constant)."""
    rng = random.Random(15)
    eth = bind(w3, d, "MockAggregator:ETH/USD")
    btc = bind(w3, d, "MockAggregator:BTC/USD")
    me = w3.eth.accounts[0]
    pe, pb = eth.functions.answer().call(), btc.functions.answer().call()
    for _ in range(rounds):
        node.rpc("evm_increaseTime", [60])
        z = rng.gauss(0, 0.001)
        pe = round(pe * (1 + z))
        pb = round(pb * (1 + 0.6 * z + rng.gauss(0, 0.0006)))
        _send(w3, eth.functions.setAnswer(pe), me)
        _send(w3, btc.functions.setAnswer(pb), me)
    for sym in ("ETH", "BTC"):  # the vol feeds stay fresh too
        vol = bind(w3, d, f"MockAggregator:{sym}/IV")
        _send(w3, vol.functions.setAnswer(vol.functions.answer().call()), me)


@contextmanager
def recalibration_chain(
    tmp: Path, prepare: Callable[[Web3, Deployment, Any], None] | None = None
) -> Iterator[tuple[Anvil, Web3, Deployment, Any]]:
    """Anvil with the protocol (timelock DELAY, written to tmp/deployment.json), ``prepare``
    run by the owner, accounts[1] holding RISK_OPERATOR, and the feeds' history."""
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3, recalibration_delay=DELAY)
        d.write(tmp / "deployment.json")
        ch = bind(w3, d, "ClearingHouse")
        if prepare is not None:
            prepare(w3, d, ch)
        keeper = w3.eth.accounts[1]
        _send(
            w3, ch.functions.setRole(ch.functions.RISK_OPERATOR().call(), keeper, True), d.deployer
        )
        _history(node, w3, d)
        yield node, w3, d, ch


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, contracts_built: None) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("recal")
    with recalibration_chain(tmp) as (node, w3, d, ch):
        (tmp / "keeper.toml").write_text(
            f'[rpc]\nurl = "{node.url}"\nchain_id = {node.chain_id}\n'
            '[deployment]\nfile = "deployment.json"\n'
            '[store]\nurl = "sqlite:///keeper.db"\n'
            f'[signer]\nkey_env = "{KEY_ENV}"\n'
            "[decisions]\nconfirmations = 0\n"
            "[recalibration]\nrounds = 50\nsample_seconds = 60\n"
        )
        yield tmp, node, w3, d, ch


def _calibrate(tmp: Path, *args: str) -> dict[str, Any]:
    r = run_keeper(tmp, "calibrate", "--json", *args, env={KEY_ENV: ANVIL_KEY_1})
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_calibrate_queue_execute_and_replay(net: Any) -> None:
    tmp, node, w3, d, ch = net
    # 1. Dry run from the chain: the same bytes twice, naming the configured feeds' rounds.
    a = _calibrate(tmp, "--dry-run")
    b = _calibrate(tmp, "--dry-run")
    assert a["encoding"] == b["encoding"] and a["hash"] == b["hash"]
    data = bytes.fromhex(a["encoding"][2:])
    assert "0x" + keccak(data).hex() == a["hash"]
    proposal = decode_proposal(data)
    feeds = [u["price_feed"].lower() for u in d.underlyings]
    assert [s.feed for s in proposal.sources] == feeds
    for s, u in zip(proposal.sources, d.underlyings, strict=True):  # the last 50 rounds
        last = bind(w3, d, f"MockAggregator:{u['symbol']}/USD").functions.roundId().call()
        assert (s.first_round, s.last_round) == (last - 49, last)
    assert proposal.interval == 60 and len(proposal.correlations) == 1
    assert 0 < proposal.correlations[0] < 10**18  # partly correlated, estimated
    # Inside the contract's limits (the python mirror of its check).
    params = decode_risk_params(bytes(ch.functions.riskParams().call()))
    _, step, daily = ch.functions.recalibrationConfig().call()
    for u, p in enumerate(proposal.underlyings):
        lo_r, hi_r, lo_s, hi_s = ch.functions.riskBounds(u).call()
        cur = params.underlyings[u]
        check_limit(
            u,
            0,
            p.price_range,
            FieldLimits(lo_r, hi_r, cur.price_range, cur.price_range, step, daily),
        )
        check_limit(
            u,
            1,
            p.vol_shift_base,
            FieldLimits(lo_s, hi_s, cur.vol_shift_base, cur.vol_shift_base, step, daily),
        )
    assert any(
        (p.price_range, p.vol_shift_base) != (c.price_range, c.vol_shift_base)
        for p, c in zip(proposal.underlyings, params.underlyings, strict=True)
    ), "the test's history must move the grid"

    # 2. Submit: one pass of the job queues it as the risk operator, recorded in the store.
    out = _calibrate(tmp)
    assert out["job"]["queued_tx"] is not None and out["job"]["executed"] == []
    assert out["hash"] == a["hash"]
    h, _eta, state = ch.functions.queuedRecalibration(1).call()
    assert "0x" + bytes(h).hex() == a["hash"] and state == 1
    store = Store.open(f"sqlite:///{tmp / 'keeper.db'}")
    try:
        with store.session() as s:
            rows = s.exec(select(Transaction)).all()
        assert len(rows) == 1 and rows[0].final and rows[0].mined_hash
        assert rows[0].data.startswith(ch.encode_abi("queueRecalibration", args=[b""])[:10])
    finally:
        store.close()
    # A second pass before eta: waits (nothing sent).
    assert _calibrate(tmp)["job"]["skipped"] == "a queued recalibration is waiting"

    # 3. A tampered proposal: the same sources, another price range, queued directly.
    tampered = decode_proposal(data)
    u0 = tampered.underlyings[0]
    bent = type(u0)(u0.vol, u0.price_range - 10**15, u0.vol_shift_base, 0, 0)
    tampered = type(tampered)(
        **{**tampered.__dict__, "underlyings": (bent, *tampered.underlyings[1:])}
    )
    _send(w3, ch.functions.queueRecalibration(canonical_encoding(tampered)), d.deployer)

    # 4. Replay: the honest proposal recomputes byte for byte, the tampered one is flagged.
    res = replay(ReplayOptions(deployment=tmp / "deployment.json", rpc_url=node.url))
    assert res.recalibrations == 2
    found = [m for m in res.mismatches if m.kind == "recalibration"]
    assert len(found) == 1 and "recalibration 2" in found[0].message, [m.line() for m in found]
    assert [f.field for f in found[0].fields] == ["price_range[0]"]
    assert found[0].fields[0].expected == u0.price_range

    # 5. After the timelock, the next pass executes the honest one; the grid is the proposal's.
    node.rpc("evm_increaseTime", [DELAY + 1])
    node.rpc("evm_mine", [])
    out = _calibrate(tmp)
    assert out["job"]["executed"] == [1]
    assert ch.functions.queuedRecalibration(1).call()[2] == 2
    after = decode_risk_params(bytes(ch.functions.riskParams().call()))
    for p, c in zip(proposal.underlyings, after.underlyings, strict=True):
        assert (c.price_range, c.vol_shift_base) == (p.price_range, p.vol_shift_base)
    # The tampered one (same asOf) can no longer execute: the next pass skips it.
    out = _calibrate(tmp)
    assert out["job"]["executed"] == []
    assert ch.functions.queuedRecalibration(2).call()[2] == 1
