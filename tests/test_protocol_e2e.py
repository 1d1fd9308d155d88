"""End to end on a real anvil: deploy the protocol, deposit, trade, move the price, liquidate.

Everything goes through the deployed contracts (real compiled bytecode, real transactions);
the witness comes from the chain's own full check (ClearingHouse.marginOf).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from keeper.artifacts import REPO_ROOT
from keeper.deployment import (
    Deployment,
    abi_sha256,
    account_id,
    bind,
    deploy_protocol,
    encode_risk_params,
    load_deployment,
)
from keeper.devnet import Anvil
from keeper.orders import dev_matcher
from margin.params import STABLE, AssetParams, RiskParams, span_like
from margin.portfolio_margin import LIQUIDATABLE

WAD = 10**18


@pytest.fixture(scope="module")
def deployment(w3: Web3, contracts_built: None) -> Deployment:
    return deploy_protocol(w3)


def _send(w3: Web3, fn, sender: str) -> dict:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


def _refresh(w3: Web3, feed: Contract, answer: int | None = None) -> None:
    value = feed.functions.answer().call() if answer is None else answer
    _send(w3, feed.functions.setAnswer(value), w3.eth.accounts[0])


def test_deployment_file(deployment: Deployment, w3: Web3, tmp_path: Path) -> None:
    assert deployment.chain_id == w3.eth.chain_id
    assert deployment.start_block <= w3.eth.block_number
    for entry in deployment.contracts.values():
        assert w3.eth.get_code(entry["address"]) != b""
        assert entry["abi_sha256"] == abi_sha256(entry["abi"])
    kinds = [i["kind"] for i in deployment.instruments]
    assert kinds.count("future") == 4 and kinds.count("call") == 10 and kinds.count("put") == 10
    path = tmp_path / "deployment.json"
    deployment.write(path)
    assert load_deployment(path) == deployment
    ch = bind(w3, deployment, "ClearingHouse")
    assert ch.functions.backstop().call() == deployment.backstop_account
    assert ch.functions.insuranceFund().call() == 100_000 * WAD
    # The stored parameters are exactly what the Python model encodes.
    params = RiskParams(
        underlyings=(span_like(), span_like()),
        assets=(AssetParams(0, STABLE), AssetParams(10**17, 0)),
        correlation_credit=3 * 10**17,
        im_factor=125 * 10**16,
    )
    assert ch.functions.riskParams().call() == encode_risk_params(params)


def test_deposit_trade_price_move_liquidation(deployment: Deployment, w3: Web3) -> None:
    ch = bind(w3, deployment, "ClearingHouse")
    usdc = bind(w3, deployment, "MockERC20:USDC")
    eth_feed = bind(w3, deployment, "MockAggregator:ETH/USD")
    eth_vol = bind(w3, deployment, "MockAggregator:ETH/IV")
    matcher, alice, bob, liquidator = w3.eth.accounts[0], *w3.eth.accounts[2:5]
    perp = next(
        i["id"] for i in deployment.instruments if i["underlying"] == 0 and i["expiry"] == 0
    )
    _refresh(w3, eth_feed, 3000 * 10**8)
    _refresh(w3, eth_vol)

    # Deposits (6-decimal token units in, WAD balances out).
    a, b = account_id(alice), account_id(bob)
    for who, acct, amount in ((alice, a, 600 * 10**6), (bob, b, 100_000 * 10**6)):
        _send(w3, usdc.functions.mint(who, amount), who)
        _send(w3, usdc.functions.approve(ch.address, amount), who)
        _send(w3, ch.functions.deposit(acct, 0, amount), who)
    assert ch.functions.balanceOf(a, 0).call() == 600 * WAD

    # Alice buys 1 ETH perp at 3000: IM = 1.25 * 15.75% * 3000 = 590.625 <= 600.
    orders = dev_matcher(w3, ch)
    receipt = _send(w3, orders.trade(a, b, perp, WAD, 3000 * WAD), matcher)
    (trade,) = ch.events.Trade().process_receipt(receipt, errors=DISCARD)
    assert trade["args"]["quantity"] == WAD and trade["args"]["buyer"] == a
    # A second lot would break IM: the named error comes back.
    with pytest.raises(ContractCustomError):
        orders.trade(a, b, perp, WAD, 3000 * WAD).call({"from": matcher})

    # ETH -10%: equity 300 < MM 425.25, liquidatable; the chain's full check gives the witness.
    _refresh(w3, eth_feed, 2700 * 10**8)
    _refresh(w3, eth_vol)
    result = ch.functions.marginOf(a).call()
    equity, requirement, state, witness = result[0], result[1], result[5], result[7]
    assert state == LIQUIDATABLE and equity < requirement
    nonce = ch.functions.accountState(a).call()[0]
    token_before = usdc.functions.balanceOf(ch.address).call()
    receipt = _send(w3, ch.functions.liquidate(a, nonce, witness, WAD), liquidator)
    (liq,) = ch.events.Liquidation().process_receipt(receipt, errors=DISCARD)
    penalty, bounty = liq["args"]["penalty"], liq["args"]["bounty"]
    assert 0 < bounty <= penalty
    assert ch.functions.bounties(liquidator).call() == bounty
    # The positions handed over, packed (instrument << 128) | uint128(quantity): all of it.
    (word,) = liq["args"]["taken"]
    assert word >> 128 == perp and word & (2**128 - 1) == WAD
    assert list(liq["args"]["prices"]) == [2700 * WAD]
    assert ch.functions.positionsOf(a).call() == [[], []]
    # A replay with the old nonce reverts cleanly.
    with pytest.raises(ContractCustomError):
        ch.functions.liquidate(a, nonce, witness, WAD).call({"from": liquidator})

    # Conservation: tokens held (WAD) == balances + insurance + unclaimed bounties.
    _send(w3, ch.functions.claimBounty(), liquidator)
    held = usdc.functions.balanceOf(ch.address).call() * 10**12
    assert held == token_before * 10**12 - (bounty // 10**12) * 10**12
    total = sum(ch.functions.balanceOf(x, 0).call() for x in (a, b, deployment.backstop_account))
    total += ch.functions.insuranceFund().call() + ch.functions.totalBounties().call()
    assert held == total


def test_deploy_script_against_its_own_anvil(tmp_path: Path, contracts_built: None) -> None:
    out = tmp_path / "deployment.json"
    with Anvil(log_path=tmp_path / "anvil.log") as node:
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "scripts" / "deploy.py"),
                "--rpc",
                node.url,
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        data = json.loads(out.read_text())
        assert data["chain_id"] == node.chain_id
        w3 = Web3(Web3.HTTPProvider(node.url))
        assert w3.eth.get_code(data["contracts"]["ClearingHouse"]["address"]) != b""


def test_deploy_script_without_node(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "deploy.py"),
            "--rpc",
            "http://127.0.0.1:9",
            "--out",
            str(tmp_path / "d.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no JSON-RPC node" in proc.stderr
