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


@app.command()
def replay(
    deployment: Annotated[Path, typer.Option("--deployment", help="Deployment file (JSON)")],
    rpc: Annotated[str | None, typer.Option("--rpc", help="RPC URL of the chain")] = None,
    state_dump: Annotated[
        Path | None,
        typer.Option("--state-dump", help="anvil state dump with historical states"),
    ] = None,
    first: Annotated[
        int | None, typer.Option("--from", help="First block (default: start)")
    ] = None,
    last: Annotated[int | None, typer.Option("--to", help="Last block (default: head)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Keeper store URL to compare")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the HTML report")] = None,
    account: Annotated[
        list[str] | None, typer.Option("--account", help="Only this account id (repeatable)")
    ] = None,
) -> None:
    """Audit replay: re-derive every margin decision of a block range from chain data, check
    each against the on-chain verifier at its block, compare with the keeper's records.
    Exit status 0 clean, 1 on any mismatch, 2 on bad input (docs/replay.md)."""
    from keeper.replay.cli import run

    raise SystemExit(
        run(
            deployment=deployment,
            rpc=rpc,
            state_dump=state_dump,
            first=first,
            last=last,
            db=db,
            json_out=json_out,
            html_out=html_out,
            accounts=account or [],
        )
    )


def main() -> None:
    app()
