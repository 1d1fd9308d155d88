"""The `keeper` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Decentralized clearing keeper")


@app.callback()
def _root() -> None:
    """Decentralized clearing keeper."""
    # A callback keeps `keeper` a command group: with a single command, typer would otherwise
    # run it directly and reject `keeper demo`.


@app.command()
def demo() -> None:
    """Start anvil, deploy the math harness and print primitives computed both ways."""
    from keeper.demo import run_demo

    raise SystemExit(run_demo())


@app.command()
def margin(
    portfolio: Annotated[Path, typer.Argument(help="Portfolio file (docs/portfolio-format.md)")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON")] = False,
) -> None:
    """Explain the margin of a portfolio file: scenario losses, requirement, witness, Greeks."""
    from keeper.margin_cmd import run

    raise SystemExit(run(portfolio, as_json))


def main() -> None:
    app()
