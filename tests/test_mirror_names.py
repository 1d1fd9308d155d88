"""Mirrors that read as mirrors: each Solidity file of contracts/src/math and contracts/src/margin
has one Python module whose public functions carry the same names (modulo case) in the same
order, except where docs/mirror.md says why a name differs or has no partner.

Public names: Solidity ``function`` names and Python ``def`` names (module functions and methods
of classes that are not dataclasses) not starting with ``_``; a name defined twice in Python (a
ScenarioTable method and its one-account module function) counts once, at its first place."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "mirror.md"
SOL_DIRS = ("contracts/src/math", "contracts/src/margin")

_PAIR_ROW = re.compile(r"^\|\s*`(contracts/src/[^`]+\.sol)`\s*\|\s*`(margin/[^`]+\.py)`\s*\|")
_HEADING = re.compile(r"^###\s+(\w+\.sol)\s+⇔\s+(\w+\.py)\s*$")
_SOL_FUNCTION = re.compile(r"^\s*function\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)
NONE = "—"


@dataclass(frozen=True)
class Table:
    """The documented differences of one pair: renamed (sol -> py), and names of one side only."""

    renamed: dict[str, str]
    sol_only: frozenset[str]
    py_only: frozenset[str]


def doc_pairs(doc: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for line in doc.splitlines() if (m := _PAIR_ROW.match(line))]


def doc_table(doc: str, sol_file: str, py_file: str) -> Table:
    """The rows under the heading ``### <sol_file> ⇔ <py_file>`` (none: an empty table)."""
    renamed: dict[str, str] = {}
    sol_only: set[str] = set()
    py_only: set[str] = set()
    inside = False
    for line in doc.splitlines():
        if line.startswith("#"):
            m = _HEADING.match(line)
            inside = m is not None and (m[1], m[2]) == (sol_file, py_file)
            continue
        if not inside or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("Solidity", "") or set(cells[0]) <= {"-"}:
            continue
        sol, py = (c.strip("`") if c != NONE else None for c in cells[:2])
        if sol and py:
            renamed[sol] = py
        elif sol:
            sol_only.add(sol)
        elif py:
            py_only.add(py)
    return Table(renamed, frozenset(sol_only), frozenset(py_only))


def solidity_names(source: str) -> list[str]:
    """Public (non-underscore) function names in source order; Yul helpers start with ``_``."""
    return [n for n in _SOL_FUNCTION.findall(source) if not n.startswith("_")]


def _is_dataclass(cls: ast.ClassDef) -> bool:
    for d in cls.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Name) and target.id == "dataclass":
            return True
    return False


def python_names(source: str) -> list[str]:
    names: list[str] = []
    for node in ast.parse(source).body:
        defs: list[ast.stmt] = [node]
        if isinstance(node, ast.ClassDef) and not _is_dataclass(node):
            defs = node.body
        for d in defs:
            if not isinstance(d, ast.FunctionDef) or d.name.startswith("_"):
                continue
            if d.name not in names:
                names.append(d.name)
    return names


def _key(name: str) -> str:
    """Equal modulo case: mulDivDown, mul_div_down -> muldivdown."""
    return name.replace("_", "").lower()


def mismatches(sol_source: str, py_source: str, table: Table) -> list[str]:
    """Every way the pair fails to read as a mirror (empty: it does)."""
    sol = solidity_names(sol_source)
    py = python_names(py_source)
    problems = [f"the table names Solidity {n!r}, which is not there" for n in
                sorted((set(table.renamed) | table.sol_only) - set(sol))]  # fmt: skip
    problems += [f"the table names Python {n!r}, which is not there" for n in
                 sorted((set(table.renamed.values()) | table.py_only) - set(py))]  # fmt: skip
    expected = [table.renamed.get(n, n) for n in sol if n not in table.sol_only]
    actual = [n for n in py if n not in table.py_only]
    want = {_key(n): n for n in expected}
    have = {_key(n): n for n in actual}
    problems += [f"Solidity {n!r} has no Python partner" for k, n in want.items() if k not in have]
    problems += [f"Python {n!r} has no Solidity partner" for k, n in have.items() if k not in want]
    if not problems and [_key(n) for n in expected] != [_key(n) for n in actual]:
        problems.append(f"out of order: Solidity order {expected}, Python order {actual}")
    return problems


DOC_TEXT = DOC.read_text()
PAIRS = doc_pairs(DOC_TEXT)


def test_every_solidity_file_has_one_python_module() -> None:
    sol_files = sorted(str(p.relative_to(ROOT)) for d in SOL_DIRS for p in (ROOT / d).glob("*.sol"))
    assert sorted(s for s, _ in PAIRS) == sol_files
    assert len({py for _, py in PAIRS}) == len(PAIRS)
    assert all((ROOT / py).is_file() for _, py in PAIRS)


@pytest.mark.parametrize(("sol", "py"), PAIRS, ids=[Path(s).stem for s, _ in PAIRS])
def test_pair_reads_as_a_mirror(sol: str, py: str) -> None:
    table = doc_table(DOC_TEXT, Path(sol).name, Path(py).name)
    problems = mismatches((ROOT / sol).read_text(), (ROOT / py).read_text(), table)
    assert not problems, f"{sol} vs {py} (docs/mirror.md):\n" + "\n".join(problems)


def test_a_rename_on_one_side_only_fails() -> None:
    # The checker on the real pair, with one name changed on one side, then with two Python
    # functions swapped: each must be reported.
    sol = (ROOT / "contracts/src/math/FixedPoint.sol").read_text()
    py = (ROOT / "margin/fixed_point.py").read_text()
    table = doc_table(DOC_TEXT, "FixedPoint.sol", "fixed_point.py")
    assert mismatches(sol, py, table) == []
    renamed_sol = sol.replace("function sqrtUp(", "function sqrtCeil(")
    assert mismatches(renamed_sol, py, table) == [
        "Solidity 'sqrtCeil' has no Python partner",
        "Python 'sqrt_up' has no Solidity partner",
    ]
    renamed_py = py.replace("def mul_div_up(", "def mul_div_ceil(")
    assert len(mismatches(sol, renamed_py, table)) == 2
    i, j = py.index("def div_down("), py.index("def exp_wad(")
    k = py.index("def div_up(")
    swapped = py[:i] + py[k:j] + py[i:k] + py[j:]
    assert [p for p in mismatches(sol, swapped, table) if p.startswith("out of order")]
    stale = doc_table(DOC_TEXT.replace("`sdiv`", "`sdiv_old`"), "FixedPoint.sol", "fixed_point.py")
    assert "the table names Python 'sdiv_old', which is not there" in mismatches(sol, py, stale)


def _yul_lines(source: str, start: str, first: str, last: str) -> list[str]:
    """The code lines (comments left out) from the one starting with ``first`` to the one
    starting with ``last``, after ``start``."""
    lines = [ln.split("//")[0].strip() for ln in source[source.index(start) :].splitlines()]
    code = [ln for ln in lines if ln]
    i = next(k for k, ln in enumerate(code) if ln.startswith(first))
    j = next(k for k, ln in enumerate(code) if k > i and ln.startswith(last))
    return code[i : j + 1]


def test_one_log2_and_one_integer_sqrt() -> None:
    # FixedPoint.isqrtFloor is the engine's integer square root (sqrtDown and OptionPricing call
    # it). PortfolioMargin's contingencies run in one assembly block, where Yul cannot call a
    # Solidity function: its _isqrtFloor must be the same lines. lnWad keeps the same log2
    # inline (a call would cost more gas than the lines).
    fixed = (ROOT / "contracts/src/math/FixedPoint.sol").read_text()
    margin = (ROOT / "contracts/src/margin/PortfolioMargin.sol").read_text()
    pricing = (ROOT / "contracts/src/margin/OptionPricing.sol").read_text()

    def named(lines: list[str], **names: str) -> list[str]:
        for old, new in names.items():
            lines = [re.sub(rf"\b{old}\b", new, ln) for ln in lines]
        return lines

    isqrt = _yul_lines(fixed, "function isqrtFloor(", "let b :=", "y := sub(")
    assert len(isqrt) == 16
    copy = _yul_lines(margin, "function _isqrtFloor(", "let b :=", "y := sub(")
    assert named(copy, x="n") == isqrt  # (n is taken in that block)
    log2 = _yul_lines(fixed, "function lnWad(", "let k :=", "k := add(")
    assert named(log2, k="b", x="n") == isqrt[:7]
    assert "FixedPoint.isqrtFloor(" in pricing
    assert len(re.findall(r"function _?isqrt", fixed + margin + pricing, re.IGNORECASE)) == 2
