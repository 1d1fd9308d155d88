"""deploy/: the Prometheus alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`), the alerts an operator needs are all there, every metric the rules and
the Grafana dashboard query is one the keeper exports (keeper/metrics.py), and the systemd unit
runs `keeper run` under supervision.

promtool comes from Debian's prometheus package (scripts/bootstrap.sh installs it). Without it
these tests are skipped (shown by ``-ra``), unless CI is set, where they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from keeper.metrics import KeeperMetrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "keeper-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "keeper-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "keeper-dashboard.json"
UNIT = DEPLOY / "systemd" / "keeper.service"

REQUIRED_ALERTS = {
    "KeeperDown",
    "KeeperLagging",
    "KeeperNoBlocksProcessed",
    "KeeperSendsFailing",
    "KeeperTransactionsReverting",
    "KeeperOracleRejections",
    "KeeperRpcErrors",
    "KeeperRpcEndpointUnhealthy",
    "KeeperLowBalance",
    "KeeperBountyUnclaimed",
}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found: run scripts/bootstrap.sh (Debian package prometheus)")
        pytest.skip("promtool not found (scripts/bootstrap.sh installs it)")
    return found


def _exported() -> set[str]:
    """Every series name the keeper's registry can export."""
    names = set()
    metrics = KeeperMetrics()
    metrics.watch_endpoints(list)  # the per-endpoint families ([rpc] fallback_urls)
    for family in metrics.registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum", "_created")}
        else:
            names.add(family.name)
    return names


def _metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\bkeeper_[a-z0-9_]+\b", expr))


def test_promtool_check_rules() -> None:
    proc = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(REQUIRED_ALERTS)} rules found" in proc.stdout


def test_promtool_check_config() -> None:
    """The example scrape configuration loads, with the rules next to it."""
    config = DEPLOY / "prometheus" / "prometheus.yml"
    proc = subprocess.run(
        [_promtool(), "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _rules() -> dict[str, str]:
    """Alert name -> its block of the rules file (the file's own layout: ``- alert: Name``)."""
    text = RULES.read_text()
    blocks = re.split(r"^\s*- alert: ", text, flags=re.M)[1:]
    return {b.split("\n", 1)[0].strip(): b for b in blocks}


def test_every_alert_is_there_and_unit_tested() -> None:
    alerts = _rules()
    assert set(alerts) == REQUIRED_ALERTS
    cases = re.findall(r"alertname: (\w+)\n\s*exp_alerts:(.*)", RULE_TESTS.read_text())
    fired = {name for name, rest in cases if rest.strip() != "[]"}
    quiet = {name for name, rest in cases if rest.strip() == "[]"}
    assert fired == REQUIRED_ALERTS, "every alert has a case where it fires"
    assert quiet == REQUIRED_ALERTS, "every alert has a case where it stays quiet"
    for name, block in alerts.items():
        assert re.search(r"severity: (critical|warning|info)\n", block), name
        assert "summary: " in block and "description: " in block, name


def test_rules_and_dashboard_query_only_exported_metrics() -> None:
    exported = _exported()
    used = _metrics_in(RULES.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    on_dashboard = set().union(*(_metrics_in(e) for e in exprs))
    used |= on_dashboard
    assert used <= exported, f"not exported by keeper/metrics.py: {sorted(used - exported)}"

    # The dashboard shows every metric family the keeper exports.
    def family(n: str) -> str:
        return re.sub(r"_(total|bucket|count|sum|created)$", "", n)

    # keeper_lag_blocks moves only when a block is picked up or done: the dashboard and the
    # rules use head - indexed, which follows the head continuously.
    missing = {family(n) for n in exported} - {family(n) for n in on_dashboard}
    missing -= {"keeper_lag_blocks"}
    assert not missing, f"not on the dashboard: {sorted(missing)}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_systemd_unit_supervises_keeper_run() -> None:
    text = UNIT.read_text()
    service = text.split("[Service]", 1)[1].split("[Install]", 1)[0]
    entries = dict(
        line.split("=", 1) for line in service.splitlines() if "=" in line and line[0] != "#"
    )
    assert " run --config " in entries["ExecStart"] and "--no-progress" in entries["ExecStart"]
    assert entries["Restart"] == "on-failure"
    assert entries["KillSignal"] == "SIGTERM"
    assert "password" not in entries["ExecStart"].lower(), "no secret on the command line"
    assert "WantedBy=multi-user.target" in text


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (with the repository's own paths in place of
    /opt/clearing-keeper, which must exist for the check)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    if not (ROOT / ".venv" / "bin" / "keeper").exists():
        pytest.skip("no .venv/bin/keeper: run scripts/bootstrap.sh")
    unit = tmp_path / "keeper.service"
    unit.write_text(UNIT.read_text().replace("/opt/clearing-keeper", str(ROOT)))
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
