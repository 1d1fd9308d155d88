"""`keeper explain --account ID --block N` as the user runs it (a subprocess) on a real anvil
with the deployed protocol and a seeded market: the printed eth_call, executed at the printed
block, returns exactly what the certificate says; bad input is a named one-line error."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode
from web3 import Web3

from keeper.abi import CLEARING_HOUSE_ABIS
from keeper.chain import Chain
from keeper.chain.multicall import abi_functions
from keeper.deployment import bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.market import seed_market
from tests.keeper_cli import run_keeper

pytestmark = pytest.mark.anvil

LOG_DIR = Path(__file__).resolve().parents[1] / "var" / "test-logs"


@dataclass
class Net:
    node: Anvil
    w3: Web3
    deployment: Path
    accounts: list[int]
    block: int  # a block after the crash: some books are under water


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, contracts_built: None) -> Iterator[Net]:
    d = tmp_path_factory.mktemp("explain")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with Anvil(log_path=LOG_DIR / f"anvil-explain-{worker}.log") as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        dep = deploy_protocol(w3)
        dep.write(d / "deployment.json")
        chain = Chain.connect(node.url, dep)
        market = seed_market(w3, dep, chain, 8, seed=11)
        chain.close()
        for u in dep.underlyings:  # a crash: some books fall below their margins
            feed = bind(w3, dep, f"MockAggregator:{u['symbol']}/USD")
            price = int(feed.functions.answer().call())
            w3.eth.wait_for_transaction_receipt(
                feed.functions.setAnswer(price * 7 // 10).transact({"from": w3.eth.accounts[0]})
            )
        yield Net(node, w3, d / "deployment.json", [a.account for a in market.accounts],
                  w3.eth.block_number)  # fmt: skip


def explain(net: Net, tmp: Path, *args: str) -> Any:
    return run_keeper(
        tmp, "explain", "--rpc", net.node.url, "--deployment", str(net.deployment), *args
    )


def _result(raw: bytes, fn_name: str, abi: str) -> tuple[Any, ...]:
    fn = (
        abi_functions(abi)[fn_name]
        if abi == "MarginVerifier"
        else abi_functions(*CLEARING_HOUSE_ABIS)[fn_name]
    )
    return tuple(decode(list(fn.outputs), raw)[0])


def test_certificate_matches_the_contract(net: Net, tmp_path: Path) -> None:
    states = set()
    for account in net.accounts:
        res = explain(
            net, tmp_path, "--account", hex(account), "--block", str(net.block), "--format", "json"
        )
        assert res.returncode == 0, res.stderr
        cert = json.loads(res.stdout)
        assert cert["block"]["number"] == net.block and cert["account"] == str(account)
        r = cert["result"]
        states.add(r["state"])
        # The inputs name their sources: contract, function, block; oracle round ids.
        assert "accountState(account) @ block" in cert["inputs"]["account_state"]["source"]
        assert all(
            f["source"].endswith(f"@ block {net.block} ({cert['block']['hash']})")
            and int(f["round_id"]) > 0
            for f in cert["inputs"]["feeds"]
        )
        fc, mo = cert["recheck"]
        for check, abi, fn in ((fc, "MarginVerifier", "fullCheck"), (mo, "ClearingHouse",
                                                                       "marginOf")):  # fmt: skip
            raw = net.w3.eth.call(
                {"to": check["to"], "data": check["data"]}, block_identifier=check["block"]
            )
            onchain = _result(bytes(raw), fn, abi)
            expected = check["expected"]
            assert [str(x) if not isinstance(x, list | tuple) else [str(y) for y in x]
                    for x in onchain] == expected  # fmt: skip
        # The certificate's figures are the ones the chain returned.
        # (The report's money figures are exact decimal strings in units of 1e18 wei.)
        assert int(fc["expected"][0]) == int(Decimal(r["equity"]).scaleb(18))
        assert int(fc["expected"][1]) == int(Decimal(r["requirement"]).scaleb(18))
        assert fc["expected"][7] == r["witness"]
    assert len(states) > 1, states  # the crash left some books below their margins


def test_text_and_html_print_the_eth_call(net: Net, tmp_path: Path) -> None:
    account = hex(net.accounts[0])
    text = explain(net, tmp_path, "--account", account, "--block", str(net.block))
    assert text.returncode == 0, text.stderr
    assert "re-check on chain (eth_call at the block):" in text.stdout
    assert f"--block {net.block}" in text.stdout and "<- witness" in text.stdout
    page = explain(net, tmp_path, "--account", account, "--block", str(net.block), "--format",
                   "html")  # fmt: skip
    assert page.returncode == 0 and page.stdout.startswith("<!DOCTYPE html>")
    assert "cast call" in page.stdout and "<script" not in page.stdout


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--account", "12345", "--block", "{block}"], "UnknownAccount"),
        (["--account", "{acct}", "--block", "{future}"], "BlockNotMined"),
        (["--account", "alice", "--block", "{block}"], "ReplayInputError"),
        (["--account", "{acct}", "--block", "{block}", "--format", "pdf"], "BadFormat"),
        (
            ["--account", "{acct}", "--block", "{block}", "--rpc", "http://127.0.0.1:9"],
            "NodeUnavailable",
        ),
    ],
    ids=["unknown-account", "future-block", "bad-account", "bad-format", "no-chain"],
)
def test_bad_input_is_a_named_error(net: Net, tmp_path: Path, args: list[str], name: str) -> None:
    fill = {"block": str(net.block), "future": str(net.block + 1000), "acct": hex(net.accounts[0])}
    args = [a.format(**fill) for a in args]
    if "--rpc" in args:  # the unreachable node replaces the devnet's
        i = args.index("--rpc")
        url = args[i + 1]
        del args[i : i + 2]
        res = run_keeper(
            tmp_path, "explain", "--rpc", url, "--deployment", str(net.deployment), *args
        )
    else:
        res = explain(net, tmp_path, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith(f"error: {name}: ") and res.stderr.count("\n") == 1, res.stderr
    assert res.stdout == "" and "Traceback" not in res.stderr
