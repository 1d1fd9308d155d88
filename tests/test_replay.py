"""Audit replay (keeper/replay) on a real anvil with the deployed protocol.

One module-scoped run: accounts trade, the oracle moves, an account is flagged and then
liquidated (by the test, as a liquidator would), and the feeds go stale (lenient decisions);
a keeper-like helper records a decision per account after each step into rows written to a
real SQLite store. The run's anvil is started with ``--preserve-historical-states`` and dumps
its state on exit; the RPC tests replay against an anvil loaded from that dump (hashes,
receipts and history survive: that is tested too), the state-dump test lets replay start its
own.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner
from web3 import Web3

from keeper.chain import Chain, OracleError, ProtocolSnapshot
from keeper.cli import app
from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.digest import inputs_digest
from keeper.orders import dev_matcher
from keeper.protocol.bounty import liquidation_payout
from keeper.replay.cli import run as run_cli
from keeper.replay.derive import derive
from keeper.replay.report import read_report
from keeper.replay.verify import verify_block
from keeper.store import Decision, Store
from margin.portfolio import Market
from margin.portfolio_margin import STATE_NAMES

WAD = 10**18
USDC = 10**6
LOG_DIR = Path(__file__).resolve().parents[1] / "var" / "test-logs"


def _send(w3: Web3, fn: Any, sender: str) -> int:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1
    return int(receipt["blockNumber"])


def keeper_decision(snap: ProtocolSnapshot, account: int, action: str = "none") -> dict[str, Any]:
    """A decision row as the keeper records it: the full check at the snapshot's block (strict
    ages; lenient when the strict market raises an oracle error) and its inputs digest. An
    account with no position and only stable, non-negative cash is recorded without a result
    (no market read: zeros and the digest of the book alone), as keeper/pipeline/assess.py does."""
    acc = snap.accounts[account]
    volatile = any(b != 0 and snap.assets[k].underlying != 255 for k, b in enumerate(acc.balances))
    if not acc.positions and not volatile and acc.balances[0] >= 0:
        book = Market(0, snap.rate, (), ())
        return {
            "block_number": snap.block.number,
            "block_hash": snap.block.hash,
            "account": str(account),
            "inputs_digest": inputs_digest(
                snap.portfolio(account), book, snap.risk_params_bytes, lenient=True
            ),
            "loss_matrix": [],
            "requirement": 0,
            "initial_margin": 0,
            "equity": 0,
            "witness": None,
            "state": "healthy" if any(acc.balances) else "empty",
            "action": action,
        }
    lenient = False
    try:
        inp = snap.inputs(account)
    except OracleError:
        lenient = True
        inp = snap.inputs(account, lenient=True)
    res = snap.table(inp.market).full_check(inp.portfolio)
    state = STATE_NAMES[res.state]
    if state == "margin_call" and acc.flagged_at:  # the keeper's refinement of a flagged book
        grace_over = snap.timestamp >= acc.flagged_at + snap.liquidation_config[2]
        state = "liquidatable" if grace_over else "flagged_grace"
    return {
        "block_number": snap.block.number,
        "block_hash": snap.block.hash,
        "account": str(account),
        "inputs_digest": inputs_digest(
            inp.portfolio, inp.market, snap.risk_params_bytes, lenient=lenient
        ),
        "loss_matrix": res.scenario_losses,
        "requirement": res.requirement,
        "initial_margin": res.initial_margin,
        "equity": res.equity,
        "witness": list(res.witness),
        "state": state,
        "action": action,
        "account_nonce": acc.nonce,
        **_action_fields(snap, account, action, list(res.witness)),
    }


def _action_fields(
    snap: ProtocolSnapshot, account: int, action: str, witness: list[int]
) -> dict[str, Any]:
    """fraction and expected_bounty as the keeper records them: the penalty split of the
    lenient witness check (keeper/pipeline/assess.py), the test's liquidations taking half."""
    if action == "none":
        return {}
    if action != "liquidate":
        return {"expected_bounty": 0}
    lin = snap.inputs(account, lenient=True)
    w = snap.table(lin.market).witness_check(lin.portfolio, witness)
    _, bounty = liquidation_payout(w.requirement, w.equity, WAD // 2, snap.liquidation_config)
    return {"fraction": WAD // 2, "expected_bounty": bounty}


@dataclasses.dataclass
class Run:
    dir: Path
    deployment: Deployment
    deployment_path: Path
    dump: Path
    records: list[dict[str, Any]]
    accounts: dict[str, int]
    flag_block: int
    liquidation_block: int
    last: int


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, contracts_built: None) -> Run:
    d = tmp_path_factory.mktemp("replay")
    dump = d / "state.json"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    args = ["--preserve-historical-states", "--dump-state", str(dump)]
    with Anvil(log_path=LOG_DIR / f"anvil-replay-{worker}.log", extra_args=args) as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        dep = deploy_protocol(w3)
        dep.write(d / "deployment.json")
        chain = Chain.connect(node.url, dep)
        ch = bind(w3, dep, "ClearingHouse")
        usdc, weth = bind(w3, dep, "MockERC20:USDC"), bind(w3, dep, "MockERC20:WETH")
        eth, eth_iv = (
            bind(w3, dep, "MockAggregator:ETH/USD"),
            bind(w3, dep, "MockAggregator:ETH/IV"),
        )
        matcher, alice, bob, carol, liquidator = w3.eth.accounts[0], *w3.eth.accounts[2:6]
        dave = w3.eth.accounts[6]
        a, b, c, dv = account_id(alice), account_id(bob), account_id(carol, 1), account_id(dave)
        accts = {"alice": a, "bob": b, "carol": c, "dave": dv}
        perp = next(i["id"] for i in dep.instruments if i["underlying"] == 0 and i["expiry"] == 0)
        call = next(
            i["id"] for i in dep.instruments if i["kind"] == "call" and i["strike"] == 3000 * WAD
        )
        records: list[dict[str, Any]] = []

        def record(**actions: str) -> ProtocolSnapshot:
            snap = chain.view(chain.head()).snapshot(accts.values())
            for name, acct in accts.items():
                records.append(keeper_decision(snap, acct, actions.get(name, "none")))
            return snap

        deposits = ((alice, a, 600), (bob, b, 100_000), (carol, c, 5_000), (dave, dv, 1_000))
        for who, acct, amount in deposits:
            _send(w3, usdc.functions.mint(who, amount * USDC), who)
            _send(w3, usdc.functions.approve(ch.address, amount * USDC), who)
            _send(w3, ch.functions.deposit(acct, 0, amount * USDC), who)
        _send(w3, weth.functions.mint(carol, 3 * WAD), carol)
        _send(w3, weth.functions.approve(ch.address, 3 * WAD), carol)
        _send(w3, ch.functions.deposit(c, 1, 2 * WAD), carol)  # volatile collateral
        record()
        orders = dev_matcher(w3, ch)
        _send(w3, orders.trade(a, b, perp, WAD, 3000 * WAD), matcher)
        record()
        _send(w3, orders.trade(c, b, call, WAD, 250 * WAD), matcher)
        record()
        btc = bind(w3, dep, "MockAggregator:BTC/USD")
        _send(w3, btc.functions.setAnswer(61_000 * 10**8), matcher)  # nobody uses BTC
        record()
        _send(w3, eth.functions.setAnswer(2950 * 10**8), matcher)  # alice: below IM
        snap = record(alice="flag")
        witness = records[-4]["witness"]
        assert records[-4]["state"] == "margin_call"
        nonce = snap.accounts[a].nonce
        flag_block = _send(w3, ch.functions.flag(a, nonce, witness), liquidator)
        record()
        _send(w3, eth.functions.setAnswer(2700 * 10**8), matcher)  # alice: below MM
        _send(w3, eth_iv.functions.setAnswer(eth_iv.functions.answer().call()), matcher)
        snap = record(alice="liquidate")
        assert records[-4]["state"] == "liquidatable"
        witness = records[-4]["witness"]
        nonce = snap.accounts[a].nonce
        liq_block = _send(w3, ch.functions.liquidate(a, nonce, witness, WAD // 2), liquidator)
        record()
        # Two hours later every feed is stale for maxAge (1 h), fine for liquidationMaxAge.
        node.rpc("evm_increaseTime", [7200])
        _send(w3, ch.functions.deposit(c, 1, WAD // 10), carol)
        record()
        assert records[-2]["state"] == "healthy"
        # An instrument-level row (the keeper's expiry settlement): not an account decision.
        records.append({**records[-1], "account": "instrument:3", "state": "expired",
                        "inputs_digest": "", "action": "settle_instrument"})  # fmt: skip
        last = w3.eth.block_number
    assert dump.stat().st_size > 0
    return Run(d, dep, d / "deployment.json", dump, records, accts, flag_block, liq_block, last)


@pytest.fixture(scope="module")
def node(run: Run) -> Iterator[Anvil]:
    """The run's chain, loaded from its dump (history included)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    log = LOG_DIR / f"anvil-replay-load-{worker}.log"
    with Anvil(log_path=log, extra_args=["--load-state", str(run.dump)]) as n:
        yield n


def write_store(run: Run, path: Path, tamper: dict[str, Any] | None = None, index: int = 0) -> str:
    url = f"sqlite:///{path}"
    with Store.open(url) as store:
        for i, row in enumerate(run.records):
            fields = dict(row)
            if tamper is not None and i == index:
                fields.update(tamper)
            store.add_decision(Decision(**fields))
    return url


def replay(
    run: Run, *extra: str, capsys: pytest.CaptureFixture[str], **kw: Any
) -> tuple[int, str, str]:
    opts: dict[str, Any] = {
        "deployment": run.deployment_path,
        "rpc": None,
        "state_dump": None,
        "first": None,
        "last": None,
        "db": None,
        "json_out": None,
        "html_out": None,
        "accounts": [],
        "progress": False,
    }
    opts.update(kw)
    status = run_cli(**opts)
    out, err = capsys.readouterr()
    return status, out, err


def test_dump_keeps_history_and_hashes(run: Run, node: Anvil) -> None:
    w3 = Web3(Web3.HTTPProvider(node.url))
    assert w3.eth.block_number == run.last
    rec = run.records[0]
    assert (
        "0x" + w3.eth.get_block(rec["block_number"])["hash"].hex().removeprefix("0x")
        == rec["block_hash"]
    )
    ch = bind(w3, run.deployment, "ClearingHouse")
    a = run.accounts["alice"]
    before = ch.functions.positionsOf(a).call(block_identifier=run.liquidation_block - 1)
    after = ch.functions.positionsOf(a).call(block_identifier=run.liquidation_block)
    assert before[1] == [WAD] and after[1] == [WAD // 2]


def test_replay_of_the_run_is_clean(run: Run, node: Anvil, tmp_path: Path, capsys) -> None:
    db = write_store(run, tmp_path / "keeper.db")
    out_json, out_html = tmp_path / "r.ndjson", tmp_path / "html"
    status, out, err = replay(
        run, capsys=capsys, rpc=node.url, db=db, json_out=out_json, html_out=out_html
    )
    assert status == 0, out + err
    assert out.strip().endswith("0 mismatches -- CLEAN")
    lines = out_json.read_text().splitlines()
    assert [json.loads(x)["type"] for x in lines[:2]] == ["replay", "block"]
    assert json.loads(lines[-1])["type"] == "summary"  # one object per line, summary last
    report = read_report(out_json)
    summary = report["summary"]
    assert summary["verdict"] == "clean" and report["mismatches"] == []
    assert summary["decisions"] == len(report["decisions"])
    assert summary["decisions_compared"] == len(run.records) - 1
    assert summary["records_skipped"] == [len(run.records)]  # the instrument-level row
    assert any(r["state"] == "flagged_grace" for r in run.records)
    decisions = report["decisions"]
    assert {d["fullCheck"] for d in decisions} == {"agrees"}
    assert {d["marginOf"] for d in decisions} == {"agrees", "reverts as expected"}
    lenient = [d for d in decisions if d.get("lenient")]
    assert lenient and all(d["strict_error"].startswith("StalePrice") for d in lenient)
    assert all(d["marginOf"] == "reverts as expected" for d in lenient)
    # Every recorded decision was matched with a re-derivation.
    ids = sorted(i for d in decisions for i in d.get("decision_ids", []))
    assert ids == list(range(1, len(run.records)))
    # A feed round is a decision point only for the accounts that use its underlying.
    assert not any("round of BTC/USD" in d["reasons"] for d in decisions)
    dave = [d for d in decisions if d["account"] == str(run.accounts["dave"])]
    assert dave and all(d["vols"] == ["0", "0"] for d in dave)
    # The full risk matrix for the decisions that are not plain healthy ones, named by grid.
    assert all("risk_matrix" in d for d in decisions if d["state"] != "healthy")
    (grid,) = report["grids"]
    assert all(d["grid"] == grid["grid"] for d in decisions if "risk_matrix" in d)
    (liq,) = report["liquidations"]
    assert liq["block"] == run.liquidation_block and liq["proven"]
    assert liq["witness_source"] == "calldata"  # what the liquidator sent
    assert liq["state_under_witness"] == "liquidatable"
    assert liq["rederived"]["bounty"] == liq["event"]["bounty"]
    assert liq["rederived"]["penalty"] == liq["event"]["penalty"]
    assert liq["positions_taken_over"][0]["quantity"] == str(WAD // 2)
    assert int(liq["bounty_credited"]) > 0
    (flag,) = report["margin_calls"]
    assert flag["block"] == run.flag_block and flag["proven"]
    # Decision points come from chain data alone: the oracle moves re-derive alice.
    alice = [d for d in decisions if d["account"] == str(run.accounts["alice"])]
    assert any("round of ETH/USD" in d["reasons"] for d in alice)
    index = (out_html / "index.html").read_text()
    # The verdict first, then the mismatches, the liquidations, the account index.
    assert index.index('class="verdict ok"') < index.index("id=mismatches")
    assert index.index("id=mismatches") < index.index("id=claims") < index.index("id=accounts")
    pages = sorted((out_html / "accounts").glob("*.html"))
    assert len(pages) == summary["accounts"] >= 3
    for page in pages:
        assert f"href='accounts/{page.name}'" in index
    html = "".join(p.read_text() for p in pages)
    assert html.count("<svg") == len(pages)
    assert "class=w" in html and "vol unchanged" in html  # risk matrices, witness marked
    assert "<script" not in html + index and "https://" not in html + index


@pytest.mark.parametrize(
    ("who", "tamper"),
    [
        ("liquidate", {"equity": 1}),
        ("liquidate", {"inputs_digest": "0x" + "ab" * 32}),
        ("liquidate", {"block_hash": "0x" + "00" * 32}),
        ("dave", {"equity": 5}),
        ("dave", {"inputs_digest": "0x" + "cd" * 32}),
    ],
    ids=["equity", "inputs_digest", "block_hash", "resultless_equity", "resultless_digest"],
)
def test_tampered_record_is_exactly_one_mismatch(
    run: Run, node: Anvil, tmp_path: Path, capsys, who: str, tamper: dict[str, Any]
) -> None:
    if who == "liquidate":
        index = next(i for i, r in enumerate(run.records) if r["action"] == "liquidate")
    else:
        dave = str(run.accounts["dave"])
        index = [i for i, r in enumerate(run.records) if r["account"] == dave][-1]
    db = write_store(run, tmp_path / "keeper.db", tamper, index)
    out_json = tmp_path / "r.json"
    status, out, _ = replay(run, capsys=capsys, rpc=node.url, db=db, json_out=out_json)
    assert status == 1
    (m,) = read_report(out_json)["mismatches"]
    assert m["kind"] == "decision" and m["decision_id"] == index + 1
    assert [f["field"] for f in m["fields"]] == list(tamper)
    assert m["fields"][0]["found"] == str(next(iter(tamper.values())))
    assert f"MISMATCH decision: decision {index + 1} " in out
    assert "1 mismatches -- MISMATCH" in out


def test_replay_from_state_dump(run: Run, tmp_path: Path, capsys) -> None:
    first = run.flag_block - 2
    status, out, err = replay(
        run, capsys=capsys, state_dump=run.dump, first=first, json_out=tmp_path / "r.json"
    )
    assert status == 0, out + err
    report = read_report(tmp_path / "r.json")
    assert report["summary"]["range"] == {"from": first, "to": run.last}
    (liq,) = report["liquidations"]
    assert liq["proven"] and liq["witness_source"] == "calldata"  # no records needed
    assert "anvil --load-state" in report["summary"]["source"]


def test_account_filter(run: Run, node: Anvil, tmp_path: Path, capsys) -> None:
    carol = run.accounts["carol"]
    status, _, _ = replay(
        run, capsys=capsys, rpc=node.url, accounts=[hex(carol)], json_out=tmp_path / "r.json"
    )
    assert status == 0
    report = read_report(tmp_path / "r.json")
    assert {d["account"] for d in report["decisions"]} == {str(carol)}
    assert report["summary"]["accounts"] == 1 and report["liquidations"] == []


def test_bad_input(run: Run, node: Anvil, tmp_path: Path, capsys) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rpc": node.url, "deployment": tmp_path / "nope.json"}, "DeploymentFileNotFound"),
        ({"rpc": node.url, "state_dump": run.dump}, "SourceRequired"),
        ({}, "SourceRequired"),
        ({"rpc": node.url, "first": 10, "last": 5}, "BadBlockRange"),
        ({"rpc": node.url, "last": run.last + 100}, "BadBlockRange"),
        ({"rpc": node.url, "first": 0}, "BadBlockRange"),
        ({"state_dump": tmp_path / "missing.json"}, "StateDumpNotFound"),
        ({"rpc": node.url, "accounts": ["alice"]}, "ReplayInputError"),
        ({"rpc": node.url, "db": f"sqlite:///{tmp_path / 'none.db'}"}, "StoreUnavailable"),
    ]
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    cases.append(({"state_dump": garbage}, "StateDumpUnusable"))
    no_history = tmp_path / "no-history.json"
    data = json.loads(run.dump.read_text())
    data["historical_states"] = None  # what anvil_dumpState (the RPC) writes
    no_history.write_text(json.dumps(data))
    cases.append(({"state_dump": no_history}, "StateDumpWithoutHistory"))
    wrong = dataclasses.replace(run.deployment, chain_id=run.deployment.chain_id + 1)
    wrong.write(tmp_path / "wrong.json")
    cases.append(({"rpc": node.url, "deployment": tmp_path / "wrong.json"}, "ChainMismatch"))
    cases.append(({"state_dump": run.dump, "deployment": tmp_path / "wrong.json"}, "ChainMismatch"))
    secret = "http://auditor:hunter2secret@127.0.0.1:9/v3/abcdef0123456789abcdef"
    cases.append(({"rpc": secret}, "NodeUnavailable"))
    for kw, name in cases:
        json_out = tmp_path / f"{name}.json"
        status, out, err = replay(run, capsys=capsys, json_out=json_out, **kw)
        assert status == 2, (kw, out, err)
        assert err.startswith(f"error: {name}: "), (kw, err)
        assert not json_out.exists() and not (tmp_path / "none.db").exists()
        assert not list(tmp_path.glob("*.partial"))  # nothing left behind
        assert "hunter2secret" not in out + err and "abcdef0123456789abcdef" not in out + err


def test_cli_wiring(run: Run, node: Anvil, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "replay",
            "--rpc",
            node.url,
            "--deployment",
            str(run.deployment_path),
            "--from",
            "5",
            "--to",
            "4",
        ],
    )
    assert res.exit_code == 2
    assert "BadBlockRange" in res.output


def test_verifier_disagreement_is_reported(run: Run, node: Anvil) -> None:
    """The on-chain re-check can fail: a result that is not the chain's is a mismatch for
    both the verifier (same inputs) and marginOf (the protocol's own inputs)."""
    chain = Chain.connect(node.url, run.deployment)
    a = run.accounts["alice"]
    snap = chain.view(run.liquidation_block - 1).snapshot([a])
    good = derive(snap, a)
    bad = derive(snap, a)
    assert bad.result is not None
    bad.result = dataclasses.replace(bad.result, requirement=bad.result.requirement + 1)
    ok, wrong = verify_block(chain, snap.block, [good, bad])
    assert (ok.full_check, ok.margin_of, ok.mismatches) == ("agrees", "agrees", [])
    assert (wrong.full_check, wrong.margin_of) == ("disagrees", "disagrees")
    assert [m.kind for m in wrong.mismatches] == ["verifier", "marginOf"]
    assert all([f.field for f in m.fields] == ["requirement"] for m in wrong.mismatches)


def test_unwritable_report_is_a_named_error(run: Run, node: Anvil, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    status, out, err = replay(run, capsys=capsys, rpc=node.url, json_out=blocker / "r.json")
    assert status == 2 and err.startswith("error: ReportNotWritable: ")
    assert out == ""  # refused before the replay ran


def test_rpc_credentials_never_in_output(run: Run, node: Anvil, tmp_path: Path, capsys) -> None:
    url = node.url.replace("http://", "http://auditor:hunter2secret@") + "/?apikey=zzzzsecret"
    out_json, out_html = tmp_path / "r.json", tmp_path / "html"
    status, out, err = replay(
        run, capsys=capsys, rpc=url, first=run.liquidation_block, json_out=out_json,
        html_out=out_html,
    )  # fmt: skip
    assert status == 0, out + err
    assert "http://***@127.0.0.1" in out
    pages = [p.read_text() for p in out_html.rglob("*.html")]
    for text in (out, err, out_json.read_text(), *pages):
        assert "hunter2secret" not in text and "zzzzsecret" not in text


def test_liquidation_witness_from_a_record_before_the_range(
    run: Run, node: Anvil, tmp_path: Path, capsys
) -> None:
    db = write_store(run, tmp_path / "keeper.db")
    out_json = tmp_path / "r.json"
    first = run.liquidation_block  # the liquidate decision is one block earlier
    status, out, err = replay(
        run, capsys=capsys, rpc=node.url, db=db, first=first, json_out=out_json
    )
    assert status == 0, out + err
    (liq,) = read_report(out_json)["liquidations"]
    liquidate = next(r for r in run.records if r["action"] == "liquidate")
    # The witness is the one the liquidator sent (its calldata), the recorded decision's.
    assert liq["witness_source"] == "calldata" and liq["proven"]
    assert liq["witness"] == liquidate["witness"]


def test_dump_is_scanned_not_parsed(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dump is read in chunks (it can be hundreds of MB): the same facts whatever the chunk
    size, keys cut at a chunk's end included."""
    from keeper.replay import source

    whole = source.read_dump(run.dump)
    assert whole.oldest_state == 0 and whole.chain_id == run.deployment.chain_id
    for size in (7, 13, 29, 64, 1000):
        monkeypatch.setattr(source, "DUMP_CHUNK", size)
        assert source.read_dump(run.dump) == whole
