"""abi/ must equal what contracts/ builds (the keeper reads abi/, the chain runs contracts/).

The test writes nothing to abi/: it compares. contracts/out is brought up to date by the
``contracts_built`` fixture (a no-op when it is fresh). Fix a failure with
``python scripts/export_abi.py`` and commit abi/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from keeper.abi import ABI_DIR, KEEPER_CONTRACTS, check_drift, render_abi, write_abis
from keeper.artifacts import OUT_DIR


def test_abi_dir_matches_the_build(contracts_built: None) -> None:
    problems = check_drift()
    assert not problems, "abi/ drifted from contracts/ (run scripts/export_abi.py):\n" + "\n".join(
        problems
    )


def test_every_listed_contract_has_a_committed_abi() -> None:
    for name in KEEPER_CONTRACTS:
        assert (ABI_DIR / f"{name}.json").is_file(), name


def test_drift_is_detected(contracts_built: None, tmp_path: Path) -> None:
    abi_dir = tmp_path / "abi"
    shutil.copytree(ABI_DIR, abi_dir)
    assert check_drift(abi_dir=abi_dir) == []

    # A function removed from the checked-in file: reported with its signature.
    path = abi_dir / "MathHarness.json"
    entries = [e for e in json.loads(path.read_text()) if e.get("name") != "expWad"]
    path.write_text(render_abi(entries))
    (problem,) = check_drift(abi_dir=abi_dir)
    assert "built but not in abi/: function expWad(int256)" in problem

    # A stray file, a missing file, and a listed contract that the build does not have.
    (abi_dir / "Stray.json").write_text("[]\n")
    path.unlink()
    problems = check_drift(names=(*KEEPER_CONTRACTS, "NoSuchContract"), abi_dir=abi_dir)
    assert any("MathHarness.json is missing" in p for p in problems)
    assert any(p.startswith("Stray:") and "not in keeper.abi" in p for p in problems)
    assert any(p.startswith("NoSuchContract:") and "forge build" in p for p in problems)

    # Rewriting brings it back.
    (abi_dir / "Stray.json").unlink()
    write_abis(abi_dir=abi_dir)
    assert check_drift(abi_dir=abi_dir) == []


def test_rendering_is_canonical(contracts_built: None) -> None:
    from keeper.artifacts import load_artifact

    abi = load_artifact("MathHarness", OUT_DIR).abi
    assert render_abi(abi) == render_abi(list(reversed(abi)))
