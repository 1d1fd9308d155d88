"""The assess stage is pure: its imports show it. keeper/pipeline/assess.py and the engine it
runs (keeper/book_engine.py) reach no module that does I/O -- no web3, no store, no database
driver, no HTTP client, no chain view or RPC module, and neither of the other two stages.

Two checks: the static import graph (``import`` statements read with ``ast``, the ones under
``if TYPE_CHECKING:`` left out, each package's ``__init__`` counted: importing a submodule runs
it), which names the path to an offending module; and a fresh interpreter that imports the
stage and lists ``sys.modules``, which catches what the static graph cannot see."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The assess stage: the pure decisions and the engine over the whole book.
STAGE = ("keeper.pipeline.assess", "keeper.book_engine")
#: Modules (and their submodules) that do I/O, or hold the stages that do.
FORBIDDEN = (
    "web3",
    "requests",
    "aiohttp",
    "httpx",
    "urllib3",
    "websockets",
    "sqlalchemy",
    "sqlmodel",
    "psycopg",
    "psycopg2",
    "http.client",
    "urllib.request",
    "keeper.store",
    "keeper.chain.view",
    "keeper.chain.rpc",
    "keeper.chain.transport",
    "keeper.chain.multicall",
    "keeper.config",
    "keeper.transactions",
    "keeper.simulation",
    "keeper.pipeline.read",
    "keeper.pipeline.execute",
)
OURS = ("keeper", "margin")


def forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def runtime_imports(source: str, module: str, is_package: bool) -> list[str]:
    """The modules ``source`` imports when it runs (``if TYPE_CHECKING:`` blocks left out):
    ``import a.b`` gives a.b, ``from a import b`` gives a and a.b (b may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not _type_checking(node):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, *(h.body for h in node.handlers), node.finalbody):
                    visit(part)
            elif isinstance(node, ast.Import):
                out.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    up = parts[: len(parts) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base != "__future__":
                    out.append(base)
                    out.extend(f"{base}.{a.name}" for a in node.names)

    visit(ast.parse(source).body)
    return out


def _source(module: str) -> tuple[str, bool] | None:
    """The repository's source of ``module`` and whether it is a package (None: not ours)."""
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return (path / "__init__.py").read_text(), True
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py").read_text(), False
    return None


def reached(
    roots: tuple[str, ...], source: Callable[[str], tuple[str, bool] | None] = _source
) -> dict[str, list[str]]:
    """Every module the roots import when they run, with the import path to it."""
    paths: dict[str, list[str]] = {}
    todo = [(r, [r]) for r in roots]
    while todo:
        module, path = todo.pop()
        parts = module.split(".")
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        for k in range(1, len(parts) + 1):
            name = ".".join(parts[:k])
            if name in paths:
                continue
            found = source(name)
            if name.split(".")[0] in OURS and found is None:
                continue  # ``from pkg import name``: a name, not a submodule
            paths[name] = path if name == module else [*path[:-1], name]
            if found is not None:
                text, is_package = found
                for dep in runtime_imports(text, name, is_package):
                    if dep not in paths:
                        todo.append((dep, [*paths[name], dep]))
    return paths


def offences(paths: dict[str, list[str]]) -> list[str]:
    return sorted(" -> ".join(p) for m, p in paths.items() if forbidden(m))


def loaded_by(modules: tuple[str, ...]) -> list[str]:
    """The modules in ``sys.modules`` once a fresh interpreter imported ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def test_assess_imports_nothing_that_does_io() -> None:
    paths = reached(STAGE)
    assert "keeper.pipeline.types" in paths and "keeper.protocol.oracle" in paths
    assert offences(paths) == []


def test_a_fresh_interpreter_importing_assess_loads_no_io_module() -> None:
    loaded = loaded_by(STAGE)
    assert "keeper.pipeline.assess" in loaded and "margin.portfolio_margin" in loaded
    assert [m for m in loaded if forbidden(m)] == []


def test_the_checks_see_io() -> None:
    # The static walk on a made-up graph: a runtime import of web3 two modules down is found,
    # with its path; the same import under TYPE_CHECKING, or a name imported from a package,
    # is not.
    fake = {
        "keeper": ("", True),
        "keeper.pipeline": ("", True),
        "keeper.pipeline.assess": (
            "from typing import TYPE_CHECKING\n"
            "from keeper.pipeline import helper\n"
            "if TYPE_CHECKING:\n    from keeper.store import Store\n",
            False,
        ),
        "keeper.pipeline.helper": ("from .deep import x\n", False),
        "keeper.pipeline.deep": ("x = 1\nif x:\n    import web3.eth\n", False),
    }
    paths = reached(("keeper.pipeline.assess",), fake.get)
    assert offences(paths) == [
        "keeper.pipeline.assess -> keeper.pipeline.helper -> keeper.pipeline.deep -> web3",
        "keeper.pipeline.assess -> keeper.pipeline.helper -> keeper.pipeline.deep -> web3.eth",
    ]
    assert "keeper.store" not in paths
    # The real modules of the other stages fail both checks.
    assert any(o.endswith("-> web3") for o in offences(reached(("keeper.pipeline.execute",))))
    loaded = loaded_by(("keeper.pipeline.read",))
    assert "web3" in loaded and "keeper.chain.view" in loaded
