"""The `keeper` command line."""

from __future__ import annotations

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


def main() -> None:
    app()
