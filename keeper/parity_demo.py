"""`keeper parity-demo`: start a devnet, deploy the math harness, and show each primitive
computed by the Python engine and by the contract side by side. Exit status 1 on any difference.

(The main demo, `keeper demo`, runs the whole keeper: keeper/demo.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from web3 import Web3

from keeper.artifacts import ArtifactError, deploy, ensure_built
from keeper.batchcall import Outcome, batch_call, python_outcome, revert_name
from keeper.devnet import Anvil, AnvilError
from margin import fixed_point as fp
from margin.normal_dist import cdf_wad

WAD = fp.WAD

#: (contract function, Python mirror, arguments): rounding, limits and each failure.
SAMPLES: list[tuple[str, Callable[..., int], tuple[int, ...]]] = [
    ("mulDown", fp.mul_down, (3 * WAD // 2, -(7 * WAD // 3))),
    ("mulUp", fp.mul_up, (3 * WAD // 2, -(7 * WAD // 3))),
    ("divDown", fp.div_down, (WAD, 3 * WAD)),
    ("divUp", fp.div_up, (WAD, 3 * WAD)),
    ("divDown", fp.div_down, (WAD, 0)),
    ("mulDivDown", fp.mul_div_down, (-7, 11, 3)),
    ("mulDivUp", fp.mul_div_up, (-7, 11, 3)),
    ("mulDown", fp.mul_down, (2**200, 2**200)),
    ("expWad", fp.exp_wad, (WAD,)),
    ("expWad", fp.exp_wad, (-42 * WAD,)),
    ("expWad", fp.exp_wad, (136 * WAD,)),
    ("lnWad", fp.ln_wad, (2 * WAD,)),
    ("lnWad", fp.ln_wad, (0,)),
    ("sqrtDown", fp.sqrt_down, (2 * WAD,)),
    ("sqrtUp", fp.sqrt_up, (2 * WAD,)),
    ("sqrtDown", fp.sqrt_down, (-1,)),
    ("cdf", cdf_wad, (0,)),
    ("cdf", cdf_wad, (1_959_963_984_540_054_000,)),
    ("cdf", cdf_wad, (-9 * WAD,)),
]


def format_wad(v: int) -> str:
    """Exact decimal reading of a WAD integer: -3500000000000000001 -> "-3.500000000000000001"."""
    sign = "-" if v < 0 else ""
    whole, frac = divmod(abs(v), WAD)
    return f"{sign}{whole}.{frac:018d}"


def _fmt_arg(v: int) -> str:
    if abs(v) >= 2**100 and (abs(v) & (abs(v) - 1)) == 0:  # a power of two: say so
        return f"{'-' if v < 0 else ''}2**{abs(v).bit_length() - 1} wei"
    return format_wad(v) if abs(v) >= 10**9 else f"{v} wei"


def _fmt_outcome(o: Outcome) -> str:
    if o.foreign is not None:
        return f"[red]{o.foreign}[/red]"
    if o.ok:
        return format_wad(o.value)
    return f"[yellow]revert {revert_name(o.revert)}[/yellow]"


def run_demo(console: Console | None = None) -> int:
    console = console or Console()
    try:
        ensure_built()
        with Anvil() as node:
            w3 = Web3(Web3.HTTPProvider(node.url))
            harness = deploy(w3, "MathHarness")
            console.print(
                f"anvil {node.url} (chain {node.chain_id}); MathHarness at {harness.address}"
            )
            rows = _compare(harness)
    except (AnvilError, ArtifactError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 2
    table = Table(title="Fixed-point primitives: Python engine vs Solidity, in WAD (exact)")
    for col in ("primitive", "inputs", "python (margin/)", "solidity (contracts/)", "equal"):
        table.add_column(col, overflow="fold")  # fold, never truncate: every wei is shown
    differences = 0
    for name, args, py, sol in rows:
        equal = py == sol
        differences += not equal
        table.add_row(
            name,
            ", ".join(_fmt_arg(a) for a in args),
            _fmt_outcome(py),
            _fmt_outcome(sol),
            "[green]yes[/green]" if equal else "[bold red]NO[/bold red]",
        )
    console.print(table)
    if differences:
        console.print(f"[bold red]{differences} of {len(rows)} differ[/bold red]")
        return 1
    console.print(f"[green]all {len(rows)} equal to the wei (values and reverts)[/green]")
    return 0


def _compare(harness: Any) -> list[tuple[str, tuple[int, ...], Outcome, Outcome]]:
    rows = []
    # Group by function so each group is one batched eth_call, then restore the sample order.
    by_fn: dict[str, list[int]] = {}
    for i, (name, _, _) in enumerate(SAMPLES):
        by_fn.setdefault(name, []).append(i)
    chain: dict[int, Outcome] = {}
    for name, idx in by_fn.items():
        outs = batch_call(harness, name, [SAMPLES[i][2] for i in idx])
        chain.update(zip(idx, outs, strict=True))
    for i, (name, fn, args) in enumerate(SAMPLES):
        rows.append((name, args, python_outcome(fn, *args), chain[i]))
    return rows
