"""The docs cite only what exists: every test a doc names (``File.t.sol::test_x``,
``tests/test_x.py::test_x``, or ``::test_x`` after either, meaning the same file) is a function
of that file, and every repository path a doc names in backticks is there.

A safety claim in SECURITY.md stands only with the test it names; a renamed or deleted test
must fail here, not leave the claim standing on nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("README.md", "SECURITY.md", "BENCHMARKS.md", "RELIABILITY.md")
DOCS = sorted([*(ROOT / name for name in TOP), *(ROOT / "docs").glob("*.md")])
DOCS = [d for d in DOCS if d.exists()]
#: Top-level folders whose paths a doc may name.
TREES = ("keeper/", "margin/", "tests/", "contracts/", "scripts/", "bench/", "docs/", "abi/")
#: The citation convention's own examples, not citations.
PLACEHOLDERS = ("File.t.sol", "tests/test_x.py", "::test_name")
TICKED = re.compile(r"`([^`\n]+)`")
CITED = re.compile(r"^(?:(?P<file>[\w/.-]+\.(?:t\.sol|py))|)::(?P<name>\w+)")


def _function_names(path: Path) -> set[str]:
    text = path.read_text()
    if path.suffix == ".sol":
        return set(re.findall(r"\bfunction\s+(\w+)\s*\(", text))
    return set(re.findall(r"^\s*(?:async\s+)?def\s+(\w+)\s*\(", text, re.M))


def _test_file(cited: str) -> Path:
    if cited.endswith(".t.sol") and "/" not in cited:
        return ROOT / "contracts" / "test" / cited
    return ROOT / cited


def _citations(doc: Path) -> list[tuple[str, str]]:
    """(file, function) pairs in the order the doc names them; a bare ``::name`` takes the
    file named last."""
    out: list[tuple[str, str]] = []
    last: str | None = None
    for token in TICKED.findall(doc.read_text()):
        token = token.strip()
        for part in re.split(r"[,\s]+", token):
            m = CITED.match(part)
            if not m or "<" in part or part.startswith(PLACEHOLDERS):
                continue
            if m.group("file"):
                last = m.group("file")
            if last is None:
                raise AssertionError(f"{doc.name}: `{part}` names no file before it")
            out.append((last, m.group("name")))
    return out


def _paths(doc: Path) -> list[str]:
    out = []
    for token in TICKED.findall(doc.read_text()):
        token = token.split("::")[0].strip()
        if " " in token or any(c in token for c in "<>*{}$|"):
            continue
        if token.startswith(TREES) and not token.startswith(("tests/test_x", "docs/x")):
            out.append(token.rstrip(".,:;"))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_cited_tests_exist(doc: Path) -> None:
    missing = []
    for cited, name in _citations(doc):
        path = _test_file(cited)
        if not path.exists():
            missing.append(f"{cited} (no such file)")
        elif name not in _function_names(path):
            missing.append(f"{cited}::{name}")
    assert not missing, f"{doc.name} cites what does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_named_paths_exist(doc: Path) -> None:
    # A contract file may be named relative to contracts/src, as the contract docs do.
    missing = sorted(
        {
            p
            for p in _paths(doc)
            if not any((r / p).exists() for r in (ROOT, ROOT / "contracts/src"))
        }
    )
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_security_claims_cite_tests() -> None:
    """SECURITY.md backs its claims with tests: dozens of citations, every one resolved."""
    cited = _citations(ROOT / "SECURITY.md")
    assert len(cited) >= 60
    assert any(f.endswith(".t.sol") for f, _ in cited)
    assert any(f.endswith(".py") for f, _ in cited)


HISTORY = re.compile(
    r"\bissues? #?\d+\b|\(in progress\)|\bwork in progress\b|\baim not met\b|\bbranch `\w+`", re.I
)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_docs_carry_no_tracker_history(doc: Path) -> None:
    """Docs describe the product as it is: no issue numbers or progress notes."""
    hits = [m.group(0) for m in HISTORY.finditer(doc.read_text())]
    assert not hits, f"{doc.name}: {hits}"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _local_links(doc: Path) -> list[str]:
    """Markdown link targets that are not web addresses (anchors dropped)."""
    out = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_links_stay_inside_the_repository(doc: Path) -> None:
    """A reader of a clone follows every link: none may point outside the repository (such as
    a sibling folder of the checkout) or to a file that is not there."""
    outside, missing = [], []
    for target in _local_links(doc):
        path = (doc.parent / target).resolve()
        if target.startswith("/") or not path.is_relative_to(ROOT):
            outside.append(target)
        elif not path.exists():
            missing.append(target)
    assert not outside, f"{doc.name} links outside the repository: {outside}"
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


def test_link_check_catches_a_link_outside(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "overview.md"
    assert _local_links(doc)  # the overview links to the guides: the check has work to do
    fake = tmp_path / "x.md"
    fake.write_text("[spec](../shared/SPEC.md) [site](https://example.org) [top](#a)\n")
    assert _local_links(fake) == ["../shared/SPEC.md"]
    assert not (fake.parent / "../shared/SPEC.md").resolve().is_relative_to(ROOT)
