"""`keeper demo` end to end: real anvil, real MathHarness, exit status 0 only when all agree."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from keeper import parity_demo as demo
from keeper.cli import app
from margin import fixed_point as fp

pytestmark = pytest.mark.anvil


def test_demo_table_agrees(contracts_built: None) -> None:
    out = io.StringIO()
    status = demo.run_demo(Console(file=out, width=200))
    text = out.getvalue()
    assert status == 0, text
    assert f"all {len(demo.SAMPLES)} equal to the wei" in text
    assert "-3.499999999999999999" in text and "-3.500000000000000000" in text  # up vs down
    assert "revert ExpOverflow" in text and "revert DivisionByZero" in text


def test_demo_fails_on_a_difference(contracts_built: None, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = [(n, fp.mul_down if n == "mulUp" else f, a) for n, f, a in demo.SAMPLES]
    monkeypatch.setattr(demo, "SAMPLES", wrong)
    out = io.StringIO()
    assert demo.run_demo(Console(file=out, width=200)) == 1
    assert "1 of" in out.getvalue() and "differ" in out.getvalue()


def test_cli_runs_the_demo(contracts_built: None) -> None:
    result = CliRunner().invoke(app, ["parity-demo"])
    assert result.exit_code == 0, result.output
    assert "equal to the wei" in result.output
