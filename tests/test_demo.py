"""`keeper demo` end to end, as the user runs it (a subprocess), at a reduced size, and
`keeper replay` on what it leaves behind.

One module-scoped demo run (12 accounts, 12 s of scripted market on 1-second blocks) is shared:
its summary is checked against its database and against the chain it left (the state dump,
loaded into a fresh anvil), and its counts add up; the replay of the run is clean; a copy of its
database with one decision altered replays to exactly that mismatch. A second run with the same
seed plays the same market block by block. Another short run is interrupted with SIGINT (Ctrl-C)
mid-play: it stops cleanly, summary and state dump written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlmodel import select
from web3 import Web3

from keeper.config import load_config
from keeper.demo import ANVIL_KEY_1
from keeper.deployment import Deployment, bind, load_deployment
from keeper.devnet import Anvil
from keeper.devnet.market_script import PHASES, phase_plan
from keeper.replay.cli import run as run_replay
from keeper.replay.compare import not_about_an_account
from keeper.replay.report import read_report
from keeper.store import Decision, DecisionOutcome, Store, Transaction
from tests.conftest import LOG_DIR

pytestmark = pytest.mark.anvil

REPO = Path(__file__).resolve().parents[1]
WAD = 10**18
KEEPER = Account.from_key(ANVIL_KEY_1).address
DURATION = 12  # seconds of scripted market: every phase, the crash and the expiry included
#: What a run leaves for replay: file -> its key in summary.json's "files".
OUTPUTS = {
    "state.json": "state_dump",
    "keeper.db": "database",
    "deployment.json": "deployment",
    "keeper.toml": "config",
    "keeper.log": "log",
}


def _child_sigint_default() -> None:
    # A worker process may ignore SIGINT (it is then inherited across exec): the demo must
    # see Ctrl-C as a terminal delivers it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def keeper_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "keeper", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}


@dataclass
class DemoRun:
    out: Path
    status: int
    stdout: str
    stderr: str
    summary: dict[str, Any]
    deployment: Deployment
    decisions: list[Decision]
    txs: list[Transaction]

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.out / 'keeper.db'}"


def run_demo(out: Path, *extra: str) -> DemoRun:
    """`keeper demo` at the module's size, output piped (not a terminal), as a user runs it."""
    cmd = keeper_cmd(
        "demo", "--accounts", "12", "--duration", str(DURATION), "--out", str(out), *extra
    )
    proc = subprocess.run(
        cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    with Store.open(f"sqlite:///{out / 'keeper.db'}") as store, store.session() as s:
        decisions = list(s.exec(select(Decision).order_by(Decision.id)).all())
        txs = list(s.exec(select(Transaction).order_by(Transaction.id)).all())
    return DemoRun(
        out,
        proc.returncode,
        proc.stdout,
        proc.stderr,
        summary,
        load_deployment(out / "deployment.json"),
        decisions,
        txs,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, contracts_built: None) -> DemoRun:
    return run_demo(tmp_path_factory.mktemp("demo") / "out")


def load_dump(demo: DemoRun, name: str) -> Anvil:
    """A fresh anvil on the state dump a demo run left (history included)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    log = LOG_DIR / f"anvil-demo-{name}-{worker}.log"
    return Anvil(log_path=log, extra_args=["--load-state", str(demo.out / "state.json")])


@pytest.fixture(scope="module")
def node(demo: DemoRun) -> Iterator[Anvil]:
    """The demo's chain, loaded from the state dump it left (history included)."""
    with load_dump(demo, "load") as n:
        yield n


def test_demo_exits_clean_and_leaves_its_files(demo: DemoRun) -> None:
    s = demo.summary
    assert "Traceback" not in demo.stdout + demo.stderr
    assert "keeper demo — summary" in demo.stdout
    assert "replay it: .venv/bin/keeper replay --state-dump" in demo.stdout
    for name, key in OUTPUTS.items():
        path = demo.out / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert s["files"][key] == str(path)
    # The configuration left behind is a valid keeper.toml pointing at the run's files.
    cfg = load_config(demo.out / "keeper.toml", environ={})
    assert cfg.store.url == demo.db_url
    assert Path(cfg.deployment.file) == demo.out / "deployment.json"
    assert ANVIL_KEY_1.removeprefix("0x") not in (demo.out / "keeper.log").read_text()
    assert s["accounts"] == 12 and sum(s["books"].values()) == 12
    assert s["phases"] == ["drift", "vol spike", "crash", "recovery", "expiry"]
    assert s["keeper_exit_status"] == 0 and s["interrupted"] is False
    # One block a second, not one block per transaction (anvil's interval mining is on): no
    # more blocks than seconds went by.
    assert DURATION - 2 <= s["blocks"] <= s["seconds"] + 1


def test_summary_agrees_with_database_and_chain(demo: DemoRun, node: Anvil) -> None:
    s = demo.summary
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 60}))
    ch = bind(w3, demo.deployment, "ClearingHouse")
    by_id = {d.id: d for d in demo.decisions}
    # What the scripted market guarantees: the crash liquidates, the expiry settles.
    assert s["liquidations"] > 0 and s["accounts_liquidated"] > 0
    assert s["instruments_settled"] > 0 and s["positions_settled"] > 0
    assert s["never_distressed"] > 0
    # Every transaction the keeper sent succeeded and is final; none refused at broadcast.
    assert demo.txs and s["transactions"] == {"final": len(demo.txs)}
    assert all(t.final and t.status == "final" for t in demo.txs)
    assert not [d for d in demo.decisions if d.outcome == DecisionOutcome.SEND_FAILED]
    for t in demo.txs:
        receipt = w3.eth.get_transaction_receipt(t.mined_hash)  # type: ignore[arg-type]
        assert receipt["status"] == 1 and receipt["blockNumber"] == t.block_number
    # No action sent twice: one transaction per decision, per action key, per instrument.
    sent = [by_id[t.decision_id] for t in demo.txs]
    assert len({d.id for d in sent}) == len(sent)
    assert len({d.action_key for d in sent}) == len(sent)
    settled = Counter(d.instrument for d in sent if d.action == "settle_instrument")
    assert settled and max(settled.values()) == 1
    # A simulation that reverted may only be the keeper racing its own settlement.
    for d in demo.decisions:
        if d.outcome == DecisionOutcome.SIMULATION_REVERTED:
            assert "InstrumentAlreadySettled" in (d.outcome_detail or "")
            assert settled[d.instrument] == 1
    # Every dated instrument expired and was settled by the keeper.
    dated = [i["id"] for i in demo.deployment.instruments if i["expiry"]]
    assert sorted(settled) == sorted(dated)
    assert all(ch.functions.instruments(i).call()[3] for i in dated)  # settled
    # The counts are the keeper's own transactions (it is the only flagger and liquidator).
    actions = Counter(d.action for d in sent)
    assert s["flags"] == actions["flag"]
    assert s["liquidations"] == actions["liquidate"]
    assert {k: v["decided"] for k, v in s["actions"].items()} == dict(
        Counter(d.action for d in demo.decisions)
    )
    # The bounty the keeper recorded is the credit the chain holds for it, to the wei.
    onchain = int(ch.functions.bounties(KEEPER).call())
    recorded = sum(t.bounty or 0 for t in demo.txs)
    assert onchain == recorded > 0
    assert s["bounty_earned"] == s["bounty_onchain"] == f"{onchain / WAD:.6f}"
    assert s["gas_used"] == sum(t.gas_used or 0 for t in demo.txs) > 0


def test_piped_output_is_progress_lines_then_the_summary(demo: DemoRun) -> None:
    """Not a terminal: no live frames, a line per phase and progress lines in between, and
    the summary as tables of plain words and numbers (no Python reprs)."""
    lines = demo.stdout.splitlines()
    phases = [ln.removeprefix("phase: ") for ln in lines if ln.startswith("phase: ")]
    assert phases == demo.summary["phases"]
    progress = [ln for ln in lines if ln.startswith("  block ")]
    assert len(progress) >= 3 and all(" accounts " in ln for ln in progress)
    assert "keeper demo — phase" not in demo.stdout  # the live frame's title
    title = next(i for i, ln in enumerate(lines) if "keeper demo — summary" in ln)
    assert lines[title].startswith("keeper demo — summary")  # its own line, not glued
    summary = "\n".join(lines[title:])
    assert not re.search(r"[{}]|\['|': ", summary), summary
    for heading in ("seeded accounts by final state", "keeper actions", "results"):
        assert heading in summary


def test_summary_counts_add_up(demo: DemoRun) -> None:
    """Every count of the summary is a sum of something the database or the chain holds,
    and the parts add up to the wholes."""
    s = demo.summary
    seeded = s["accounts"]
    assert sum(s["books"].values()) == seeded == sum(s["account_states"].values()) == 12
    # The one account with a book that was not seeded: the maker, on the other side of every
    # trade; the instruments' settlement decisions are not accounts.
    assessed = {d.account for d in demo.decisions if not d.account.startswith("instrument:")}
    assert s["protocol_accounts"].keys() == {"market maker"}
    assert len(assessed) == seeded + len(s["protocol_accounts"])
    latest = {d.account: d.state for d in demo.decisions}
    assert s["protocol_accounts"]["market maker"] == latest[next(iter(assessed - _seeded(demo)))]
    assert Counter(latest[a] for a in _seeded(demo)) == Counter(s["account_states"])
    # Actions: decided = decision rows, sent = transaction rows, per action and in total.
    by_id = {d.id: d for d in demo.decisions}
    acts = s["actions"]
    assert sum(a["decided"] for a in acts.values()) == len(demo.decisions)
    assert sum(a["sent"] for a in acts.values()) == len(demo.txs)
    sent = Counter(by_id[t.decision_id].action for t in demo.txs)
    final = Counter(by_id[t.decision_id].action for t in demo.txs if t.status == "final")
    for action, a in acts.items():
        assert a["sent"] == sent[action] and a["final"] == final[action], action
        assert a["on_chain"] == a["final"], action  # each final transaction did what it says
    assert acts["none"]["sent"] == 0
    # On-chain counts in one unit each, matching the keeper's transactions.
    assert s["flags"] == acts["flag"]["on_chain"]
    assert s["liquidations"] == acts["liquidate"]["on_chain"]
    assert s["instruments_settled"] == acts["settle_instrument"]["on_chain"]
    assert s["instruments_settled"] == s["instruments_expired"]
    assert s["accounts_settled"] >= acts["settle_account"]["on_chain"]
    assert s["positions_settled"] >= s["accounts_settled"]
    # Funding: the keeper's pokes are the pokes on chain, and the funding paid is received.
    assert s["funding_pokes"] == acts["poke_funding"]["on_chain"] > 0
    assert s["funding_paid"] == s["funding_received"]
    # The table shows the same numbers: the total row of each table.
    total = [ln for ln in demo.stdout.splitlines() if "total" in ln]
    assert any(re.search(rf"total \(seeded\)\s*│\s*{seeded}\s*│", ln) for ln in total)
    n_dec, n_tx = len(demo.decisions), len(demo.txs)
    assert any(re.search(rf"total\s*│\s*{n_dec}\s*│\s*{n_tx}\s*│", ln) for ln in total)


def _seeded(demo: DemoRun) -> set[str]:
    """The seeded accounts: every account with a book but the maker (the deployer's
    sub-account 2)."""
    from keeper.deployment import account_id

    maker = str(account_id(demo.deployment.deployer, 2))
    return {
        d.account
        for d in demo.decisions
        if not d.account.startswith("instrument:") and d.account != maker
    }


def _market(node: Anvil, demo: DemoRun, last: int) -> list[Any]:
    """What the market is, block by block up to ``last``: each block's timestamp and every
    oracle feed's answer, and the seeding's deposits and trades (logs)."""
    w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 60}))
    d = demo.deployment
    feeds = [
        bind(w3, d, f"MockAggregator:{u['symbol']}/{kind}")
        for u in d.underlyings
        for kind in ("USD", "IV")
    ]
    first = demo.summary["first_block"]  # the feeds exist from the deployment on
    blocks = [
        (
            n,
            int(w3.eth.get_block(n)["timestamp"]),
            [int(f.functions.latestRoundData().call(block_identifier=n)[1]) for f in feeds]
            if n >= first
            else [],
        )
        for n in range(1, last + 1)
    ]
    ch = bind(w3, d, "ClearingHouse")
    seeding = [
        (e["blockNumber"], e["event"], dict(e["args"]))
        for name in ("Deposit", "Trade")
        for e in getattr(ch.events, name)().get_logs(
            from_block=0, to_block=demo.summary["first_block"]
        )
    ]
    return [blocks, seeding]


def test_same_seed_same_market(demo: DemoRun, node: Anvil, tmp_path: Path) -> None:
    """A second run with the seed of the first plays the same market: the same deployment,
    the same seeded books, and block by block the same timestamps and oracle answers. (The
    keeper's decisions may land a block apart: docs/demo.md.)"""
    again = run_demo(tmp_path / "again")
    assert again.deployment == demo.deployment
    s, t = demo.summary, again.summary
    for key in ("accounts", "books", "phases", "first_block", "instruments_expired"):
        assert s[key] == t[key], key
    steps = len(phase_plan(max(len(PHASES), DURATION)))
    last = s["first_block"] + steps  # the scripted blocks (later ones wait for the keeper)
    assert min(s["last_block"], t["last_block"]) >= last
    with load_dump(again, "again") as other:
        mine, theirs = _market(node, demo, last), _market(other, again, last)
    assert mine[1] and len(mine[0]) == last
    assert mine == theirs
    # The prices moved (the comparison is not between two frozen feeds).
    assert len({tuple(answers) for _, _, answers in mine[0]}) > steps // 2


def test_replay_of_the_demo_is_clean(demo: DemoRun, tmp_path: Path) -> None:
    """The replay command the demo prints, run as printed (plus the report files)."""
    out_json, out_html = tmp_path / "replay.ndjson", tmp_path / "replay-html"
    (printed,) = [ln for ln in demo.stdout.splitlines() if ln.startswith("replay it: ")]
    cmd = shlex.split(printed.removeprefix("replay it: "))
    assert cmd[1:] == [
        "replay",
        "--state-dump", str(demo.out / "state.json"),
        "--deployment", str(demo.out / "deployment.json"),
        "--db", demo.db_url,
    ]  # fmt: skip
    cmd += ["--json", str(out_json), "--html", str(out_html)]
    proc = subprocess.run(
        cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("0 mismatches -- CLEAN")
    assert "MISMATCH" not in proc.stdout and proc.stderr == ""
    report = read_report(out_json)
    summary = report["summary"]
    assert summary["verdict"] == "clean" and report["mismatches"] == []
    account_rows = [d for d in demo.decisions if not not_about_an_account(d)]
    assert summary["decisions_compared"] == len(account_rows)
    assert len(summary["records_skipped"]) == len(demo.decisions) - len(account_rows)
    # Every transaction the keeper sent is recorded and matches the chain.
    assert summary["record"]["keeper_transactions"] == len(demo.txs) > 0
    # Every recorded account decision was matched with a re-derivation at its block.
    matched = sorted(i for d in report["decisions"] for i in d.get("decision_ids", []))
    assert matched == sorted(d.id for d in account_rows)
    assert {d["fullCheck"] for d in report["decisions"]} <= {"agrees", "not run"}
    assert "disagrees" not in {d["marginOf"] for d in report["decisions"]}
    # Each liquidation and margin call of the run re-checked and proven, on the keeper's witness.
    assert len(report["liquidations"]) == demo.summary["liquidations"]
    assert len(report["margin_calls"]) == demo.summary["flags"]
    for liq in report["liquidations"]:
        assert liq["proven"] and liq["witness_source"] == "calldata"
        assert liq["rederived"]["bounty"] == liq["event"]["bounty"]
        assert liq["rederived"]["penalty"] == liq["event"]["penalty"]
    assert all(f["proven"] for f in report["margin_calls"])
    credited = sum(int(liq["bounty_credited"]) for liq in report["liquidations"])
    assert credited <= sum(t.bounty or 0 for t in demo.txs)
    # The HTML a person reads: the verdict, the claims, a plot and the decisions per account,
    # risk matrices with the witness scenario marked.
    index = (out_html / "index.html").read_text()
    assert 'class="verdict ok"' in index and "0 mismatches -- CLEAN" in index
    assert "id=claims>Liquidations and margin calls" in index
    assert "id=mismatches>Mismatches (0)" in index
    pages = list((out_html / "accounts").glob("*.html"))
    assert len(pages) == summary["accounts"] > 0
    html = "".join(p.read_text() for p in pages)
    assert html.count("<svg") == len(pages)
    for kind, key in (("liquidation", "liquidations"), ("margin_call", "margin_calls")):
        rows = re.findall(rf"<tr><td>(\d+)</td><td class=l>{kind}</td>", index)
        assert sorted(map(int, rows)) == sorted(c["block"] for c in report[key])
    assert "(calldata)" in index and "bounty " in index and "credited " in index
    assert "class=w" in html and "<th>maintenance" in html
    assert "<script" not in html + index and "https://" not in html + index


def _pick(demo: DemoRun, which: str) -> Decision:
    if which == "liquidation":  # the decision whose witness a liquidation was sent with
        return next(d for d in demo.decisions if d.action == "liquidate")
    # A plain decision about an account with a margin result (positions held).
    return next(
        d for d in demo.decisions if d.action == "none" and d.loss_matrix and d.state == "healthy"
    )


@pytest.mark.parametrize(
    ("which", "field", "value"),
    [
        ("liquidation", "equity", lambda d: d.equity + 1),
        ("plain", "inputs_digest", lambda d: "0x" + "ab" * 32),
    ],
    ids=["liquidation_equity", "plain_inputs_digest"],
)
def test_tampered_decision_is_exactly_one_mismatch(
    demo: DemoRun, node: Anvil, tmp_path: Path, capsys, which: str, field: str, value: Any
) -> None:
    target = _pick(demo, which)
    assert target.id is not None
    db = tmp_path / "keeper.db"
    shutil.copyfile(demo.out / "keeper.db", db)
    url = f"sqlite:///{db}"
    with Store.open(url) as store:
        store.update_decision(target.id, **{field: value(target)})
    out_json = tmp_path / "replay.ndjson"
    status = run_replay(
        deployment=demo.out / "deployment.json",
        rpc=node.url,
        state_dump=None,
        first=None,
        last=None,
        db=url,
        json_out=out_json,
        html_out=tmp_path / "replay-html",
        accounts=[],
        progress=False,
    )
    out, _ = capsys.readouterr()
    assert status == 1, out
    (m,) = read_report(out_json)["mismatches"]
    assert m["kind"] == "decision" and m["decision_id"] == target.id
    assert m["block"] == target.block_number and m["account"] == target.account
    assert [f["field"] for f in m["fields"]] == [field]
    assert m["fields"][0]["found"] == str(value(target))
    assert m["fields"][0]["expected"] == str(getattr(target, field))
    assert f"MISMATCH decision: decision {target.id} " in out
    assert out.strip().endswith("1 mismatches -- MISMATCH")
    html = (tmp_path / "replay-html" / "index.html").read_text()
    assert "id=mismatches>Mismatches (1)" in html and 'class="verdict bad"' in html


def interrupt_demo(out: Path, accounts: int, at: str) -> tuple[int, str, str]:
    """Run `keeper demo` and send SIGINT (Ctrl-C) once its output shows a line starting with
    ``at``; (exit status, stdout, stderr)."""
    out.mkdir()
    (out / "summary.json").write_text('{"stale": true}')  # a previous run's
    cmd = keeper_cmd(
        "demo", "--accounts", str(accounts), "--duration", "60", "--no-live", "--out", str(out)
    )
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_child_sigint_default,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(at):
                break
        else:
            pytest.fail(f"no {at!r} line: " + "".join(seen) + proc.stderr.read())
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen) + rest, err


def test_ctrl_c_mid_run_stops_cleanly(tmp_path: Path, contracts_built: None) -> None:
    out = tmp_path / "out"
    status, text, err = interrupt_demo(out, 3, "phase: drift")  # the keeper runs, market plays
    assert status == 130, text + err
    assert "interrupted: stopping the keeper cleanly" in text
    assert "Traceback" not in text + err and err == ""
    assert "keeper demo — summary" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["keeper_exit_status"] == 0
    assert summary["phases"] and summary["phases"][0] == "drift"
    assert "expiry" not in summary["phases"]
    for name in OUTPUTS:
        assert (out / name).is_file(), name


def test_ctrl_c_during_setup_says_so(tmp_path: Path, contracts_built: None) -> None:
    out = tmp_path / "out"
    # While anvil starts: long before the keeper does.
    status, text, err = interrupt_demo(out, 12, "keeper demo: building contracts")
    assert status == 130, text + err
    assert "Traceback" not in text + err
    assert err.strip() == f"interrupted: stopped without a summary ({out} holds a partial run)"
    assert "summary" not in text
    assert not (out / "summary.json").exists()  # not the previous run's either
