"""`keeper bounty` on anvil: a liquidation from the keeper's address earns a bounty; the command
shows it (without creating a database), claims it through the keeper's signer and transaction
manager (the claim is a recorded, final transaction; the tokens arrive), and a second claim is
a named error with nothing sent.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from web3 import Web3

from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.orders import dev_matcher
from keeper.store import Store
from keeper.store.models import Transaction
from tests.keeper_cli import run_keeper

pytestmark = pytest.mark.anvil

WAD = 10**18
KEY_ENV = "KEEPER_BOUNTY_TEST_KEY"
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def _send(w3: Web3, fn: Any, sender: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


def _earn_bounty(w3: Web3, d: Deployment, keeper: str, pair: tuple[int, int] = (2, 3)) -> int:
    """Alice's 1-ETH perp at 3000 breaks MM at 2700; ``keeper`` liquidates it (as in
    tests/test_protocol_e2e.py). ``pair``: the dev accounts of Alice and her counterparty.
    Returns the keeper's accrued bounty."""
    ch = bind(w3, d, "ClearingHouse")
    usdc = bind(w3, d, "MockERC20:USDC")
    feed = bind(w3, d, "MockAggregator:ETH/USD")
    vol = bind(w3, d, "MockAggregator:ETH/IV")
    matcher, alice, bob = w3.eth.accounts[0], w3.eth.accounts[pair[0]], w3.eth.accounts[pair[1]]
    perp = next(i["id"] for i in d.instruments if i["underlying"] == 0 and i["expiry"] == 0)
    _send(w3, feed.functions.setAnswer(3000 * 10**8), matcher)
    _send(w3, vol.functions.setAnswer(vol.functions.answer().call()), matcher)
    a, b = account_id(alice), account_id(bob)
    for who, acct, amount in ((alice, a, 600 * 10**6), (bob, b, 100_000 * 10**6)):
        _send(w3, usdc.functions.mint(who, amount), who)
        _send(w3, usdc.functions.approve(ch.address, amount), who)
        _send(w3, ch.functions.deposit(acct, 0, amount), who)
    _send(w3, dev_matcher(w3, ch).trade(a, b, perp, WAD, 3000 * WAD), matcher)
    _send(w3, feed.functions.setAnswer(2700 * 10**8), matcher)
    _send(w3, vol.functions.setAnswer(vol.functions.answer().call()), matcher)
    result = ch.functions.marginOf(a).call()
    assert result[5] == 2, "the account must be liquidatable"
    nonce = ch.functions.accountState(a).call()[0]
    _send(w3, ch.functions.liquidate(a, nonce, result[7], WAD), keeper)
    return int(ch.functions.bounties(keeper).call())


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, contracts_built: None) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("bounty")
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        deployment = deploy_protocol(w3)
        deployment.write(tmp / "deployment.json")
        (tmp / "keeper.toml").write_text(
            f'[rpc]\nurl = "{node.url}"\nchain_id = {node.chain_id}\n'
            '[deployment]\nfile = "deployment.json"\n'
            '[store]\nurl = "sqlite:///var/keeper.db"\n'
            f'[signer]\nkey_env = "{KEY_ENV}"\n'
            "[decisions]\nconfirmations = 1\nmin_profit_usdc = 0.5\n"
        )
        yield tmp, w3, deployment


def _keeper(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_keeper(tmp, "bounty", "--config", "keeper.toml", *args, env={KEY_ENV: ANVIL_KEY_1})


def test_show_and_claim_a_bounty_earned_by_a_liquidation(net: Any) -> None:
    tmp, w3, deployment = net
    keeper = w3.eth.accounts[1]
    ch = bind(w3, deployment, "ClearingHouse")
    usdc = bind(w3, deployment, "MockERC20:USDC")

    proc = _keeper(tmp, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accrued_wad"] == 0
    proc = _keeper(tmp, "--claim")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: NothingToClaim: "), proc.stderr
    assert not (tmp / "var").exists(), "showing (or refusing to claim) creates no database"

    earned = _earn_bounty(w3, deployment, keeper)
    assert earned > WAD  # at least minBounty: 1 USDC
    proc = _keeper(tmp)
    assert proc.returncode == 0, proc.stderr
    assert keeper in proc.stdout and "USDC" in proc.stdout
    shown = json.loads(_keeper(tmp, "--json").stdout)
    assert shown["address"] == keeper and shown["accrued_wad"] == earned
    assert shown["claimable_units"] == earned // 10**12
    assert not (tmp / "var").exists()

    tokens_before = usdc.functions.balanceOf(keeper).call()
    proc = _keeper(tmp, "--claim", "--json")
    assert proc.returncode == 0, proc.stderr
    claim = json.loads(proc.stdout)
    assert claim["status"] == "final" and claim["final"] is True
    assert 0 < claim["gas_used"] < 100_000
    assert claim["claimed_wad"] == (earned // 10**12) * 10**12
    assert usdc.functions.balanceOf(keeper).call() - tokens_before == earned // 10**12
    assert ch.functions.bounties(keeper).call() == earned % 10**12
    # Recorded by the transaction manager like every keeper transaction.
    store = Store.open(f"sqlite:///{tmp / 'var' / 'keeper.db'}")
    try:
        with store.session() as s:
            (row,) = s.exec(select(Transaction)).all()
    finally:
        store.close()
    assert row.sender == keeper.lower() and row.to == ch.address.lower()
    assert row.status == "final" and row.mined_hash == claim["hash"]
    assert row.data == ch.encode_abi("claimBounty", args=[])

    # The sub-unit rest cannot be claimed: a named error, nothing sent.
    proc = _keeper(tmp, "--claim")
    assert proc.returncode == 1 and proc.stderr.startswith("error: NothingToClaim: ")
    assert w3.eth.get_transaction_count(keeper) == row.nonce + 1


def test_show_another_address_without_a_signer(net: Any) -> None:
    tmp, w3, _ = net
    proc = _keeper(tmp, "--json", "--address", w3.eth.accounts[5])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accrued_wad"] == 0
    proc = _keeper(tmp, "--address", "0x1234")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ConfigError: ")


def test_running_keeper_exports_balance_and_unclaimed_bounty(
    net: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gauges behind the low-balance and unclaimed-bounty alerts (deploy/prometheus)."""
    from keeper.config import load_config_data
    from keeper.service import KeeperService

    tmp, w3, deployment = net
    keeper = w3.eth.accounts[1]
    monkeypatch.setenv(KEY_ENV, ANVIL_KEY_1)
    cfg = load_config_data(
        {
            "rpc": {"url": w3.provider.endpoint_uri, "chain_id": deployment.chain_id},
            "deployment": {"file": str(tmp / "deployment.json")},
            "store": {"url": f"sqlite:///{tmp_path / 'k.db'}"},
            "signer": {"key_env": KEY_ENV},
            "decisions": {"confirmations": 1},
            "metrics": {"enabled": False},
        }
    )
    service = KeeperService(cfg)
    service.open()
    try:
        service.wallet()
        sample = service.metrics.registry.get_sample_value
        assert sample("keeper_signer_balance_wei") == float(w3.eth.get_balance(keeper))
        bounty = bind(w3, deployment, "ClearingHouse").functions.bounties(keeper).call()
        assert sample("keeper_bounty_unclaimed_wad") == float(bounty)
    finally:
        service.close()


def test_running_keeper_claims_above_its_threshold(
    net: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``service.claim_bounty_above_usdc``: the keeper's wallet job claims through its own
    transaction manager once the accrued bounty reaches the threshold, and only once."""
    from keeper.bounty import auto_claim
    from keeper.config import load_config_data
    from keeper.service import KeeperService

    tmp, w3, deployment = net
    keeper = w3.eth.accounts[1]
    ch = bind(w3, deployment, "ClearingHouse")
    usdc = bind(w3, deployment, "MockERC20:USDC")
    earned = _earn_bounty(w3, deployment, keeper, pair=(6, 7))
    assert earned > 5 * WAD
    monkeypatch.setenv(KEY_ENV, ANVIL_KEY_1)
    cfg = load_config_data(
        {
            "rpc": {"url": w3.provider.endpoint_uri, "chain_id": deployment.chain_id},
            "deployment": {"file": str(tmp / "deployment.json")},
            "store": {"url": f"sqlite:///{tmp_path / 'k.db'}"},
            "signer": {"key_env": KEY_ENV},
            "decisions": {"confirmations": 1},
            "metrics": {"enabled": False},
            "service": {"claim_bounty_above_usdc": 5},
        }
    )
    service = KeeperService(cfg)
    service.open()
    try:
        assert service.txm is not None
        # Below the threshold nothing is sent.
        assert auto_claim(service.txm, ch, keeper, earned, earned + 1, 20) is None
        assert service.store is not None and not service.store.transactions(keeper)
        tokens_before = usdc.functions.balanceOf(keeper).call()
        service.wallet()
        (claim,) = service.store.transactions(keeper)
        assert claim.data == ch.encode_abi("claimBounty", args=[])
        service.wallet()  # the claim is open (or done): never a second one
        for _ in range(10):
            service.txm.poll()
            if service.store.transactions(keeper)[0].final:
                break
        (claim,) = service.store.transactions(keeper)
        assert claim.status == "final"
        assert usdc.functions.balanceOf(keeper).call() - tokens_before == earned // 10**12
        assert ch.functions.bounties(keeper).call() == earned % 10**12
        service.wallet()  # less than one token unit left: nothing to claim, nothing sent
        assert len(service.store.transactions(keeper)) == 1
    finally:
        service.close()
