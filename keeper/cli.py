"""The `keeper` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Keeper TOML configuration")]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Decentralized clearing keeper")


@app.callback()
def _root() -> None:
    """Decentralized clearing keeper."""
    # A callback keeps `keeper` a command group: with a single command, typer would otherwise
    # run it directly and reject `keeper demo`.


@app.command()
def demo(
    accounts: Annotated[int, typer.Option(help="Accounts to seed", min=1, max=5000)] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the books and of the market path")] = 7,
    duration: Annotated[
        float, typer.Option(help="Seconds of scripted market (1-second blocks)", min=5)
    ] = 120.0,
    out: Annotated[Path, typer.Option(help="Folder for the state dump, database, summary")] = Path(
        "var/demo"
    ),
    live: Annotated[bool, typer.Option(help="Live terminal view")] = True,
) -> None:
    """The keeper on a local devnet: deploy, seed a market, play drift / vol spike / crash /
    recovery / expiry, and watch the keeper flag, liquidate and settle."""
    from keeper.demo import DemoOptions, run_demo

    opts = DemoOptions(accounts=accounts, seed=seed, duration=duration, out=out, live=live)
    try:
        status = run_demo(opts)
    except KeyboardInterrupt:  # during set-up (or a second Ctrl-C while stopping)
        sys.stderr.write(f"interrupted: stopped without a summary ({out} holds a partial run)\n")
        status = 130
    raise SystemExit(status)


@app.command("parity-demo")
def parity_demo() -> None:
    """Start anvil, deploy the math harness and print primitives computed both ways."""
    from keeper.parity_demo import run_demo

    raise SystemExit(run_demo())


@app.command()
def margin(
    portfolio: Annotated[
        Path | None, typer.Argument(help="Portfolio file (docs/portfolio-format.md)")
    ] = None,
    account: Annotated[
        str | None, typer.Option("--account", help="On-chain account id (decimal or 0x-hex)")
    ] = None,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Keeper TOML configuration (with --account)")
    ] = Path("keeper.toml"),
    block: Annotated[str, typer.Option("--block", help="Block number or tag")] = "latest",
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON")] = False,
) -> None:
    """Explain the margin of a portfolio file, or of an on-chain account (--account) checked
    against the on-chain verifier at the same block."""
    if (portfolio is None) == (account is None):
        sys.stderr.write("error: UsageError: give a portfolio file or --account, not both\n")
        raise SystemExit(2)
    if account is not None:
        from keeper.margin_account import run as run_account

        raise SystemExit(run_account(config, account, block, as_json))
    from keeper.margin_cmd import run

    assert portfolio is not None
    raise SystemExit(run(portfolio, as_json))


@app.command()
def backtest(
    prices: Annotated[Path, typer.Option("--prices", help="Daily price CSV (date + columns)")],
    book: Annotated[
        Path | None, typer.Option("--book", help="Portfolio file (default: short 1 perpetual)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the report")] = Path(
        "var/backtest"
    ),
    horizon: Annotated[int, typer.Option("--horizon", help="P&L horizon in days", min=1)] = 1,
    expected_rate: Annotated[
        float, typer.Option("--expected-rate", help="Exceedance rate the model claims")
    ] = 0.01,
    against: Annotated[
        str, typer.Option("--against", help="maintenance or initial margin")
    ] = "maintenance",
    first: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD)")] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last day (YYYY-MM-DD)")] = None,
) -> None:
    """Backtest the grid requirement of a book over a price history: exceedances, Kupiec and
    Christoffersen tests, an HTML report and a JSON summary."""
    from datetime import date

    from keeper.backtest.cmd import BacktestOptions
    from keeper.backtest.cmd import run as run_backtest

    try:
        d0 = date.fromisoformat(first) if first else None
        d1 = date.fromisoformat(last) if last else None
    except ValueError as e:
        sys.stderr.write(f"error: UsageError: --from/--to: {e}\n")
        raise SystemExit(2) from None
    opts = BacktestOptions(prices, book, out, horizon, expected_rate, against, d0, d1)
    raise SystemExit(run_backtest(opts))


@app.command()
def calibrate(
    prices: Annotated[
        Path | None, typer.Option("--prices", help="Price CSV (date + columns); dry run only")
    ] = None,
    config: ConfigOption = Path("keeper.toml"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the proposal, submit nothing")
    ] = False,
    book: Annotated[
        Path | None, typer.Option("--book", help="Portfolio file with the current parameters")
    ] = None,
    lam: Annotated[str, typer.Option("--lambda", help="EWMA decay, in [0.5, 0.9999]")] = "0.94",
    first: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD)")] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last day (YYYY-MM-DD)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """EWMA volatility and correlation of a price history (a CSV, or the chain's oracle rounds)
    and the next grid's price range and vol shift, with the hash of the proposal's canonical
    encoding. From the chain without --dry-run: one pass of the recalibration job (execute
    matured updates, queue a new one) as the risk operator."""
    from datetime import date

    from keeper.calibrate_cmd import CalibrateOptions, run_chain
    from keeper.calibrate_cmd import run as run_calibrate

    if prices is None:
        raise SystemExit(run_chain(config, dry_run=dry_run, as_json=as_json))
    if not dry_run:
        sys.stderr.write("error: UsageError: --prices is for --dry-run (no round ids to submit)\n")
        raise SystemExit(2)
    try:
        d0 = date.fromisoformat(first) if first else None
        d1 = date.fromisoformat(last) if last else None
    except ValueError as e:
        sys.stderr.write(f"error: UsageError: --from/--to: {e}\n")
        raise SystemExit(2) from None
    raise SystemExit(run_calibrate(CalibrateOptions(prices, book, lam, d0, d1, as_json)))


@app.command()
def run(
    config: ConfigOption = Path("keeper.toml"),
    progress: Annotated[bool, typer.Option(help="Progress bar during the backfill")] = True,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run the keeper: index, margin, decide and submit until SIGTERM/SIGINT."""
    from keeper.run_cmd import run_keeper

    raise SystemExit(run_keeper(config, progress=progress, log_level=log_level))


@app.command()
def status(
    config: ConfigOption = Path("keeper.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """What the keeper sees: accounts by health, open transactions, lag, bounty and gas."""
    from keeper.run_cmd import show_status

    raise SystemExit(show_status(config, as_json=as_json))


cluster_app = typer.Typer(no_args_is_help=True, help="Cluster mode (docs/cluster.md)")
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("drain")
def cluster_drain(
    keeper_id: Annotated[str, typer.Option("--keeper", help="The keeper's cluster.keeper_id")],
    config: ConfigOption = Path("keeper.toml"),
) -> None:
    """Ask one keeper to give its leases back (before stopping it for maintenance)."""
    from keeper.run_cmd import drain_keeper

    raise SystemExit(drain_keeper(config, keeper_id))


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
    keeper: Annotated[
        list[str] | None,
        typer.Option("--keeper", help="Keeper address whose transactions must be recorded"),
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
            keepers=keeper or [],
        )
    )


@app.command()
def explain(
    deployment: Annotated[Path, typer.Option("--deployment", help="Deployment file (JSON)")],
    account: Annotated[str, typer.Option("--account", help="Account id (decimal or 0x-hex)")],
    block: Annotated[int, typer.Option("--block", help="Block number")],
    rpc: Annotated[str | None, typer.Option("--rpc", help="RPC URL of the chain")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, json or html")] = "text",
) -> None:
    """Decision certificate of one account at one block: on-chain inputs and their sources,
    scenario losses, witness, requirement, and the eth_call that re-checks it (docs/explain.md)."""
    from keeper.explain_cmd import run

    raise SystemExit(run(deployment=deployment, rpc=rpc, account=account, block=block, fmt=fmt))


@app.command()
def bounty(
    config: ConfigOption = Path("keeper.toml"),
    claim: Annotated[
        bool, typer.Option("--claim", help="Claim it (whole token units) with the keeper's signer")
    ] = False,
    address: Annotated[
        str | None, typer.Option("--address", help="Show this address instead of the signer's")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the claim to become final", min=0)
    ] = 300.0,
) -> None:
    """The liquidation bounty accrued to the keeper's address; --claim pays it out through the
    keeper's signer and transaction manager (recorded in the store). Exit 1 with one named
    error when there is nothing to claim or the claim fails."""
    from keeper.bounty import run as run_bounty

    raise SystemExit(
        run_bounty(config, claim=claim, address=address, as_json=as_json, wait_seconds=wait)
    )


@app.command()
def check(config: ConfigOption = Path("keeper.toml")) -> None:
    """Run every start-up check (config, deployment file, signer, chain id, code and ABI
    hashes) and exit: 0 when the keeper could start, 1 with one named error otherwise."""
    from keeper.preflight import run as run_check

    raise SystemExit(run_check(config))


keystore_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Encrypted keystore of the keeper's signer"
)
app.add_typer(keystore_app, name="keystore")
PasswordFile = Annotated[
    Path | None,
    typer.Option("--password-file", help="File holding the keystore password (one line)"),
]
PasswordEnv = Annotated[
    str | None,
    typer.Option("--password-env", help="Environment variable holding the keystore password"),
]
KeystoreOut = Annotated[Path, typer.Option("--out", help="Keystore file to create (mode 0600)")]


@keystore_app.command("new")
def keystore_new(
    out: KeystoreOut,
    password_file: PasswordFile = None,
    password_env: PasswordEnv = None,
) -> None:
    """A new random key, encrypted with the password (from a file or a variable, never from
    the command line). Prints the address and the [signer] section, nothing secret."""
    from keeper.keystore_cmd import run as run_keystore

    raise SystemExit(
        run_keystore("new", out=out, password_file=password_file, password_env=password_env)
    )


@keystore_app.command("import")
def keystore_import(
    out: KeystoreOut,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="File holding the hex private key")
    ] = None,
    key_env: Annotated[
        str | None,
        typer.Option("--key-env", help="Environment variable holding the hex private key"),
    ] = None,
    password_file: PasswordFile = None,
    password_env: PasswordEnv = None,
) -> None:
    """An existing private key (from a file or a variable) into an encrypted keystore."""
    from keeper.keystore_cmd import run as run_keystore

    raise SystemExit(
        run_keystore(
            "import",
            out=out,
            password_file=password_file,
            password_env=password_env,
            key_file=key_file,
            key_env=key_env,
        )
    )


deployment_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="The deployment file the keeper starts from"
)
app.add_typer(deployment_app, name="deployment")


@deployment_app.command("import")
def deployment_import(
    rpc: Annotated[str, typer.Option("--rpc", help="RPC URL of the chain")],
    clearing_house: Annotated[
        str, typer.Option("--clearing-house", help="Address of the deployed ClearingHouse")
    ],
    out: Annotated[Path, typer.Option("--out", help="Deployment file to write")],
    chain_id: Annotated[
        int | None, typer.Option("--chain-id", help="Expected chain id (checked)")
    ] = None,
    multicall: Annotated[
        str | None,
        typer.Option("--multicall", help="Multicall3 address (default: the canonical one)"),
    ] = None,
    start_block: Annotated[
        int | None,
        typer.Option("--start-block", help="First block to index (default: the creation block)"),
    ] = None,
    code_hash: Annotated[
        list[str] | None,
        typer.Option("--code-hash", help="NAME=0xHASH: pin a contract's code hash (repeatable)"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file")] = False,
) -> None:
    """Write the deployment file of an existing deployment, read from the chain: the code at
    every address is verified against the contracts this keeper was built with."""
    from keeper.deployment_import import run as run_import

    raise SystemExit(
        run_import(
            rpc=rpc,
            clearing_house=clearing_house,
            out=out,
            chain_id=chain_id,
            multicall=multicall,
            start_block=start_block,
            code_hashes=code_hash or [],
            force=force,
        )
    )


def main() -> None:
    app()
