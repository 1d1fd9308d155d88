"""The ABI files in abi/: generated from contracts/out, checked in, and checked for drift.

KEEPER_CONTRACTS is the one list of contracts the keeper talks to; scripts/export_abi.py writes
``abi/<Contract>.json`` for each, and tests/test_abi_drift.py fails when abi/ differs from what
contracts/ builds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keeper.artifacts import OUT_DIR, REPO_ROOT, ArtifactError, load_artifact

ABI_DIR = REPO_ROOT / "abi"

#: Every contract whose ABI the keeper (or its demo) uses. Add the protocol contracts here.
KEEPER_CONTRACTS: tuple[str, ...] = (
    "MathHarness",
    "ClearingHouse",
    "ClearingHouseAdmin",
    "ClearingHouseRecalibration",
    "MarginVerifier",
    "MockAggregator",
    "MockERC20",
    "Multicall3",
)

#: The ABIs callable at the clearing house's address: its own, then its modules' (reached
#: through its fallback: ClearingHouse -> ClearingHouseAdmin -> ClearingHouseRecalibration).
CLEARING_HOUSE_ABIS: tuple[str, ...] = (
    "ClearingHouse",
    "ClearingHouseAdmin",
    "ClearingHouseRecalibration",
)

_TYPE_ORDER = {"constructor": 0, "function": 1, "event": 2, "error": 3, "fallback": 4, "receive": 5}


def _entry_key(entry: dict[str, Any]) -> tuple[int, str, str]:
    inputs = ",".join(str(p.get("type")) for p in entry.get("inputs", []))
    return (_TYPE_ORDER.get(entry.get("type", ""), 9), entry.get("name", ""), inputs)


def render_abi(abi: list[dict[str, Any]]) -> str:
    """Canonical text: entries sorted by (kind, name, input types), keys sorted, 2-space indent.

    Parameter lists keep their order (it is the ABI); only object keys and entries are sorted,
    so the file changes exactly when the interface does.
    """
    return json.dumps(sorted(abi, key=_entry_key), indent=2, sort_keys=True) + "\n"


def expected_abis(
    names: tuple[str, ...] = KEEPER_CONTRACTS, out_dir: Path = OUT_DIR
) -> tuple[dict[str, str], list[str]]:
    """The rendered ABI of each contract from the build, and the problems (missing artifacts)."""
    rendered: dict[str, str] = {}
    problems: list[str] = []
    for name in names:
        try:
            rendered[name] = render_abi(load_artifact(name, out_dir).abi)
        except ArtifactError as exc:
            problems.append(f"{name}: {exc}")
    return rendered, problems


def check_drift(
    names: tuple[str, ...] = KEEPER_CONTRACTS, out_dir: Path = OUT_DIR, abi_dir: Path = ABI_DIR
) -> list[str]:
    """Every way abi/ differs from the build; empty when they agree."""
    rendered, problems = expected_abis(names, out_dir)
    for name, text in rendered.items():
        path = abi_dir / f"{name}.json"
        if not path.is_file():
            problems.append(f"{name}: {path} is missing")
        elif path.read_text() != text:
            problems.append(f"{name}: {path} differs from the build ({_diff_summary(path, text)})")
    for path in sorted(abi_dir.glob("*.json")) if abi_dir.is_dir() else []:
        if path.stem not in names:
            problems.append(f"{path.stem}: {path} is not in keeper.abi.KEEPER_CONTRACTS")
    return problems


def write_abis(
    names: tuple[str, ...] = KEEPER_CONTRACTS, out_dir: Path = OUT_DIR, abi_dir: Path = ABI_DIR
) -> list[Path]:
    """Write abi/<Contract>.json for each contract; raise ArtifactError if one is not built."""
    rendered, problems = expected_abis(names, out_dir)
    if problems:
        raise ArtifactError("; ".join(problems))
    abi_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered.items():
        path = abi_dir / f"{name}.json"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def _diff_summary(path: Path, text: str) -> str:
    try:
        have = {_sig(e) for e in json.loads(path.read_text())}
    except ValueError:
        return "not valid JSON"
    want = {_sig(e) for e in json.loads(text)}
    added, removed = sorted(want - have), sorted(have - want)
    parts = []
    if added:
        parts.append("built but not in abi/: " + ", ".join(added))
    if removed:
        parts.append("in abi/ but not built: " + ", ".join(removed))
    return "; ".join(parts) or "same entries, different details or formatting"


def _sig(entry: dict[str, Any]) -> str:
    inputs = ",".join(str(p.get("type")) for p in entry.get("inputs", []))
    return f"{entry.get('type')} {entry.get('name', '')}({inputs})"
