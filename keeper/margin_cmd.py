"""`keeper margin PORTFOLIO.json`: read a portfolio file, explain it as JSON or as tables.

The file I/O and the guards against hostile input live here; the explanation itself is
:func:`margin.tools.explain.explain` (pure). Every rejection is one named error on stderr and exit
status 1 (2 is typer's usage error; 70 an internal error, i.e. a bug), never a traceback:

* the file: ``PortfolioFileNotFound``, ``PortfolioFileUnreadable``, ``PortfolioFileTooLarge``;
* its syntax and shape: the loader's ``PortfolioFormatError`` subclasses (``InvalidJSONError``,
  ``MissingFieldError``, ...), each naming the JSON path of the offending field;
* the model's bounds: the engine's ``MarginError`` (the verifier's revert, e.g.
  ``InvalidRiskParameter(0, 1)``), with the index and field code spelled out.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from margin import params as P
from margin.errors import (
    CollateralOutOfRange,
    EntryPriceOutOfRange,
    InvalidAssetParameter,
    InvalidGlobalParameter,
    InvalidInstrumentKind,
    InvalidOptionStrike,
    InvalidRiskParameter,
    MarginError,
    MarketSpotOutOfRange,
    MarketVolOutOfRange,
    QuantityOutOfRange,
    UnknownUnderlying,
)
from margin.tools.explain import explain
from margin.tools.loader import (
    InvalidJSONError,
    InvalidNumberError,
    PortfolioFile,
    PortfolioFormatError,
    load_portfolio,
)

#: A portfolio file is a few KiB (at most 40 positions); refuse anything absurdly larger.
MAX_FILE_BYTES = 1 << 20
#: The format nests 5 levels deep; a deeper document is not a portfolio file.
MAX_DEPTH = 16
#: Largest |decimal exponent| accepted in a number string. Every legal value of the format is
#: within 1e-18..1e16; the guard keeps hostile numbers ("1e999999") from reaching the loader,
#: whose exact conversion to an integer would take minutes and gigabytes.
MAX_EXPONENT = 40
#: Longest error text echoed back (hostile files can carry megabyte-long keys).
MAX_MESSAGE = 300


class InputError(Exception):
    """A rejection of the input, printed as ``error: <name>: <message>``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def printable(s: str, limit: int = MAX_MESSAGE) -> str:
    """Text from a hostile file made safe for a terminal: control characters escaped (no ANSI
    sequences reach the terminal), length capped."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def read_portfolio_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError("PortfolioFileNotFound", f"no such file: {path}") from None
    except OSError as e:  # a directory, no permission, an I/O error
        raise InputError("PortfolioFileUnreadable", f"{path}: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError("PortfolioFileTooLarge", f"{path}: larger than {MAX_FILE_BYTES} bytes")
    return data


def _guard(doc: Any) -> None:
    """Reject nesting deeper than the format's and number strings of absurd magnitude, before
    the loader sees them (iterative: a hostile document must not exhaust the stack here)."""
    stack: list[tuple[Any, str, str, int]] = [(doc, "", "", 0)]
    while stack:
        node, path, key, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidJSONError(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for k, v in node.items():
                stack.append((v, f"{path}.{k}" if path else k, k, depth + 1))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                stack.append((v, f"{path}[{i}]", key, depth + 1))
        elif key in _NAME_KEYS:
            continue
        elif isinstance(node, str) and len(node) < 200:
            try:
                d = Decimal(node.strip())
            except (InvalidOperation, ValueError):
                continue  # not a number: a name, left to the loader
            if d.is_finite() and d != 0 and abs(d.adjusted()) > MAX_EXPONENT:
                raise InvalidNumberError(path, f"number out of range: {node!r}")
        elif isinstance(node, str) and node.lstrip()[:1] in _NUMBER_STARTS:
            raise InvalidNumberError(path, "number string longer than 200 characters")


def _too_deep(text: str) -> bool:
    """Whether arrays/objects nest deeper than MAX_DEPTH, by a linear scan *before* parsing:
    the C JSON parser recurses once per level, and on a thread with a small stack a deep
    document can crash the process before Python's recursion limit triggers."""
    depth = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif c in "]}":
            depth -= 1
    return False


def parse_portfolio(data: bytes) -> PortfolioFile:
    try:
        text = data.decode(json.detect_encoding(data))
    except UnicodeDecodeError as e:
        raise InvalidJSONError("", f"not valid JSON: {e}") from None
    if _too_deep(text):
        raise InvalidJSONError("", f"nested deeper than {MAX_DEPTH} levels")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidJSONError("", f"not valid JSON: {e}") from None
    except RecursionError:  # unreachable after _too_deep; kept as the last line of defence
        raise InvalidJSONError("", "nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
        raise InvalidJSONError("", f"not valid JSON: {e}") from None
    _guard(doc)
    return load_portfolio(doc)


def describe_margin_error(e: MarginError, pfile: PortfolioFile) -> str:
    """The verifier's error with its indices and field codes in words (the JSON path)."""
    text = str(e)
    args = e.args_
    if isinstance(e, InvalidGlobalParameter):
        return f"{text}: risk.{_GLOBAL_FIELDS.get(args[0], '?')} out of bounds"
    if isinstance(e, InvalidRiskParameter):
        name = pfile.underlying_names[args[0]]
        return f"{text}: risk.underlyings.{name}.{_RISK_FIELDS.get(args[1], '?')} out of bounds"
    if isinstance(e, InvalidAssetParameter):
        return f"{text}: risk.assets[{args[0]}].{_ASSET_FIELDS.get(args[1], '?')} out of bounds"
    if isinstance(e, _POSITION_ERRORS):
        return f"{text}: at portfolio.positions[{args[0]}]"
    if isinstance(e, MarketSpotOutOfRange | MarketVolOutOfRange):
        return f"{text}: at market.underlyings[{args[0]}]"
    if isinstance(e, CollateralOutOfRange):
        return f"{text}: at portfolio.collateral.{pfile.asset_names[args[0]]}"
    return text


def _field_names(*names: str) -> dict[int, str]:
    return {getattr(P, n): n[2:].lower() for n in names}


_GLOBAL_FIELDS = _field_names(
    "F_CORRELATION_CREDIT",
    "F_IM_FACTOR",
    "F_HISTORICAL_MOVES",
    "F_HISTORICAL_VOL_MOVES",
    "F_STRESS_COUNT",
    "F_FHS_LENGTH",
    "F_ES_COUNT",
)
_ASSET_FIELDS = _field_names("F_HAIRCUT", "F_ASSET_UNDERLYING")
#: (InvalidHistoricalScenario's own codes, F_HISTORICAL_PRICE_MOVE / _VOL_MOVE, are not these.)
_RISK_FIELDS = _field_names(
    *(
        n
        for n in vars(P)
        if n.startswith("F_")
        and n not in ("F_HISTORICAL_PRICE_MOVE", "F_HISTORICAL_VOL_MOVE")
        and n[2:].lower() not in {*_GLOBAL_FIELDS.values(), *_ASSET_FIELDS.values()}
    )
)
_POSITION_ERRORS = (
    UnknownUnderlying,
    InvalidInstrumentKind,
    InvalidOptionStrike,
    QuantityOutOfRange,
    EntryPriceOutOfRange,
)
_NUMBER_STARTS = set("0123456789+-.")
#: String fields that hold names, not numbers: the number guard leaves them to the loader.
_NAME_KEYS = {"name", "underlying", "kind", "preset", "comment"}


def run(path: Path, as_json: bool) -> int:
    """The command: 0 on success, 1 on a rejected input (after one line on stderr)."""
    try:
        return _run(path, as_json)
    except Exception as e:  # a bug, not an input error: still one line, no traceback
        return _fail("InternalError", f"{type(e).__name__}: {e} (please report this bug)", 70)


def _run(path: Path, as_json: bool) -> int:
    try:
        data = read_portfolio_file(path)
        pfile = parse_portfolio(data)
    except InputError as e:
        return _fail(e.name, e.message)
    except PortfolioFormatError as e:
        return _fail(type(e).__name__, str(e))
    try:
        report = explain(pfile)
    except MarginError as e:
        why = describe_margin_error(e, pfile)
        return _fail("MarginError", f"rejected by the margin engine: {why}")
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render(report, path)
    return 0


def _fail(name: str, message: str, status: int = 1) -> int:
    sys.stderr.write(f"error: {printable(name)}: {printable(message)}\n")
    return status


# --- tables -------------------------------------------------------------------------------


def _num(s: str | None, places: int = 2) -> str:
    """A WAD decimal string rounded for reading (the JSON keeps the exact value)."""
    if s is None:
        return "-"
    return f"{Decimal(s):,.{places}f}"


def _plain(s: str) -> str:
    """A strike as written: all its digits, thousands separated ("3,300", "0.0125")."""
    d = Decimal(s)
    return f"{d:,}" if d == d.to_integral_value() else f"{d:,f}"


def _pct(s: str) -> str:
    return f"{Decimal(s) * 100:+.1f}%"


def _greek(x: float | None, places: int = 4) -> str:
    if x is None:
        return "n/a"
    if x != 0 and abs(x) < 10**-places:
        return f"{x:.2e}"
    return f"{x:,.{places}f}"


def _when(ts: int) -> str:
    if ts == 0:
        return "perpetual"
    try:
        when = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return when.strftime("%Y-%m-%d" if when.hour == when.minute == 0 else "%Y-%m-%d %H:%M")


STATE_STYLE = {"healthy": "bold green", "margin_call": "bold yellow", "liquidatable": "bold red"}


def render(r: dict[str, Any], path: Path) -> None:
    probe = Console()
    # Not a terminal (a pipe, a test): rich would assume 80 columns and squeeze the tables.
    console = Console(highlight=False, width=probe.width if probe.is_terminal else 140)

    head = Table(title=Text(f"Portfolio margin: {printable(str(path))}"), show_header=False)
    head.add_column(justify="left")
    head.add_column(justify="right")
    head.add_row("market time", _when(r["timestamp"]) + f" (rate {_pct(r['rate'])})")
    head.add_row("state", Text(r["state"], style=STATE_STYLE[r["state"]]))
    head.add_row("equity", _num(r["equity"]))
    head.add_row("sum of underlying losses", _num(r["sum_of_losses"]))
    head.add_row("− correlation credit", _num(r["correlation_credit"]))
    head.add_row("+ contingency charges", _num(r["contingencies"]))
    head.add_row("maintenance margin (requirement)", _num(r["maintenance_margin"]))
    head.add_row("initial margin", _num(r["initial_margin"]))
    head.add_row("equity − initial margin", _num(r["excess_over_initial"]))
    console.print(head)

    under = Table(title="Per underlying (loss = worst weighted scenario loss)")
    for col in ("underlying", "spot", "vol", "loss", "witness scenario"):
        left = col in ("underlying", "witness scenario")
        under.add_column(col, justify="left" if left else "right", no_wrap=True)
    for col in ("delta", "gamma", "vega /vol pt", "theta /day"):
        under.add_column(col, justify="right", no_wrap=True)
    for u in r["underlyings"]:
        w = u["witness"]
        g = u["greeks"]
        under.add_row(
            Text(printable(u["name"], 40)),
            _num(u["spot"]),
            _pct(u["vol"]).lstrip("+"),
            _num(u["loss"]),
            f"#{w['index']}: {_scenario_label(w)}",
            _greek(g["delta"]),
            _greek(g["gamma"], 6),
            _greek(g["vega"]),
            _greek(g["theta"]),
        )
    console.print(under)

    for u in r["underlyings"]:
        console.print(_loss_grid(u))

    pos = Table(title="Positions (isolated = requirement of the position alone)")
    cols: tuple[str, ...] = ("#", "underlying", "instrument", "expiry", "qty", "mark", "value")
    cols += ("funding", "isolated")
    for col in cols:
        left = col in ("underlying", "instrument", "expiry")
        pos.add_column(col, justify="left" if left else "right", no_wrap=True)
    for col in ("delta", "gamma", "vega", "theta"):
        pos.add_column(col, justify="right", no_wrap=True)
    for p in r["positions"]:
        g = p["greeks"]
        inst = p["kind"] if p["strike"] is None else f"{p['kind']} {_plain(p['strike'])}"
        pos.add_row(
            str(p["index"]),
            Text(printable(p["underlying"], 40)),
            inst,
            _when(p["expiry"]),
            _num(p["quantity"], 4),
            _num(p["mark"]),
            _num(p["value"]),
            _num(p["funding"]),
            _num(p["isolated_requirement"]),
            _greek(g["delta"]),
            _greek(g["gamma"], 6),
            _greek(g["vega"]),
            _greek(g["theta"]),
        )
    console.print(pos)

    if r["collateral"]:
        coll = Table(title="Collateral (value after haircut)")
        for col in ("asset", "balance", "haircut", "moves with", "value"):
            coll.add_column(col, justify="left" if col in ("asset", "moves with") else "right")
        for c in r["collateral"]:
            coll.add_row(
                Text(printable(c["asset"], 40)),
                _num(c["balance"], 4),
                _pct(c["haircut"]).lstrip("+"),
                Text(printable(c["underlying"], 40)) if c["underlying"] else "stable",
                _num(c["value"]),
            )
        console.print(coll)

    iso = r["isolated"]
    saved = Table(title="Capital saved by portfolio margin", show_header=False)
    saved.add_column(justify="left")
    saved.add_column(justify="right")
    saved.add_row("Σ requirement of each position alone", _num(_sum(iso["positions"])))
    if Decimal(iso["collateral"]) != 0:
        saved.add_row("+ requirement of the collateral alone", _num(iso["collateral"]))
    saved.add_row("portfolio requirement", _num(iso["portfolio"]))
    frac = iso["saved_fraction"]
    tail = f" ({frac:.1%})" if frac is not None else ""
    saved.add_row(
        Text("capital saved", style="bold"),
        Text(_num(iso["capital_saved"]) + tail, style="bold"),
    )
    console.print(saved)
    console.print(Text("Greeks: " + r["greeks_method"], style="dim"))


def _sum(xs: list[str]) -> str:
    return str(sum((Decimal(x) for x in xs), Decimal(0)))


def _scenario_label(s: dict[str, Any]) -> str:
    label = f"{_pct(s['move'])}, vol {s['vol_state']}"
    if s["extended"]:
        label += f", ×{_pct(s['weight']).lstrip('+')}"
    return label


def _loss_grid(u: dict[str, Any]) -> Table:
    """Regular scenarios as a (price move × vol state) grid, then the extended moves; the
    witness (the worst scenario) is highlighted."""
    t = Table(title=Text(f"Scenario losses: {printable(u['name'], 40)} (+ = loss, − = gain)"))
    t.add_column("price move", justify="right")
    for state in ("down", "unchanged", "up"):
        t.add_column(f"vol {state}", justify="right")
    t.add_column("weight", justify="right")
    witness = u["witness"]["index"]
    regular = [s for s in u["scenarios"] if not s["extended"]]

    def cell(s: dict[str, Any]) -> Text:
        style = "bold red reverse" if s["index"] == witness else ""
        return Text(f"{_num(s['loss'])}{' #' + str(s['index']) if style else ''}", style=style)

    for k in range(0, len(regular), 3):
        row = regular[k : k + 3]
        t.add_row(_pct(row[0]["move"]), *(cell(s) for s in row), "100%")
    for s in u["scenarios"]:
        if s["extended"]:
            cells = [
                cell(s) if s["vol_state"] == v else Text("") for v in ("down", "unchanged", "up")
            ]
            t.add_row(_pct(s["move"]) + " (ext)", *cells, _pct(s["weight"]).lstrip("+"))
    return t
