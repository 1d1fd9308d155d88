"""Where things live: benchmarks under bench/ (run with ``python -m bench.<name>``), scripts/
holding only bootstrap, test, demo, deploy, export, fitting and data-building scripts, and no
module editing ``sys.path`` to find the project (the package is installed; benchmarks run from
the root)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "bootstrap.sh",
    "test.sh",
    "demo.sh",
    "deploy.py",
    "export_abi.py",
    "fit_normal_cdf.py",
    "build_historical_set.py",
}
SYS_PATH_EDIT = re.compile(r"sys\.path\.(insert|append)\(")


def test_scripts_holds_only_its_kinds_of_script() -> None:
    found = {p.name for p in (ROOT / "scripts").iterdir() if p.is_file()}
    assert found <= SCRIPTS, f"move benchmarks to bench/: {sorted(found - SCRIPTS)}"


def test_no_module_edits_sys_path() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for d in ("bench", "scripts", "keeper", "margin", "tests")
        for p in (ROOT / d).rglob("*.py")
        if p.name != "test_layout.py" and SYS_PATH_EDIT.search(p.read_text())
    ]
    assert offenders == []
