"""Every third-party module the keeper and the engine import comes from a distribution that
pyproject.toml declares: an import that works only because another dependency happens to pull
its distribution in breaks when that dependency changes."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"keeper", "margin"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_top_level(*packages: str) -> dict[str, str]:
    """Top-level module -> one file importing it, over the packages' sources."""
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    dists = packages_distributions()
    undeclared = []
    for module, where in imported_top_level("keeper", "margin").items():
        if module in FIRST_PARTY or module in sys.stdlib_module_names or module == "__future__":
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        if not names & declared:
            undeclared.append(f"{module} ({where}; distribution {sorted(names) or '?'})")
    assert undeclared == [], "declare in pyproject.toml [project] dependencies: " + ", ".join(
        undeclared
    )
