"""`keeper backtest --prices FILE [--book FILE]`: coverage of the grid requirement over history.

Exit status: 0 when the report is written (whatever the tests say: they are figures for a
reader, not a gate), 1 on a rejected input (one named error line on stderr), 70 on a bug.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from keeper.backtest.engine import BacktestError, run_backtest
from keeper.backtest.prices import PriceFileError, read_prices
from keeper.backtest.report import render_html, summarize
from keeper.margin_cmd import InputError, parse_portfolio, printable, read_portfolio_file
from margin.errors import MarginError
from margin.risk.coverage_tests import CoverageInputError
from margin.tools.loader import PortfolioFile, PortfolioFormatError, load_portfolio

#: The book used without --book: short one perpetual future of the price file's asset,
#: SPAN-like grid (R = 15%), no collateral (equity only moves with the future's P&L).
DEFAULT_BOOK: dict[str, Any] = {
    "version": 1,
    "comment": "Default backtest book: short 1 perpetual, SPAN-like grid",
    "market": {
        "timestamp": 0,
        "rate": "0",
        "underlyings": [{"name": "BTC", "spot": "1", "vol": "0.5"}],
    },
    "risk": {
        "underlyings": {"BTC": {"preset": "span"}},
        "assets": [{"name": "USDC", "haircut": "0"}],
        "im_factor": "1.25",
    },
    "portfolio": {
        "positions": [{"underlying": "BTC", "kind": "future", "quantity": "-1"}],
        "collateral": {"USDC": "0"},
    },
}


def _columns(pfile: PortfolioFile, available: set[str]) -> tuple[str, ...]:
    """A column per underlying: its own name, else ``close`` for a one-underlying book."""
    names = pfile.underlying_names
    if all(n in available for n in names):
        return names
    if len(names) == 1 and "close" in available:
        return ("close",)
    missing = [n for n in names if n not in available]
    raise BacktestError(
        f"the price file has no column for {', '.join(missing)} "
        f"(columns: {', '.join(sorted(available))})"
    )


@dataclass(frozen=True)
class BacktestOptions:
    prices: Path
    book: Path | None
    out: Path
    horizon_days: int = 1
    expected_rate: float = 0.01
    against: str = "maintenance"
    first: date | None = None
    last: date | None = None


def run(opts: BacktestOptions) -> int:
    try:
        return _run(opts)
    except Exception as e:  # a bug: still one line, no traceback
        return _fail("InternalError", f"{type(e).__name__}: {e} (please report this bug)", 70)


def _run(opts: BacktestOptions) -> int:
    prices_path, book_path, out_dir = opts.prices, opts.book, opts.out
    horizon_days, expected_rate, against = opts.horizon_days, opts.expected_rate, opts.against
    try:
        if not 0.0 < expected_rate < 1.0:
            raise CoverageInputError(f"expected rate must be in (0, 1), got {expected_rate}")
        if book_path is None:
            pfile = load_portfolio(DEFAULT_BOOK)
            book_bytes = json.dumps(DEFAULT_BOOK, sort_keys=True).encode()
        else:
            book_bytes = read_portfolio_file(book_path)
            pfile = parse_portfolio(book_bytes)
        history = read_prices(prices_path).between(opts.first, opts.last)
        columns = _columns(pfile, set(history.columns))
        days = run_backtest(pfile, history, columns, horizon_days, against)
        meta = {
            "book": str(book_path) if book_path else "default: short 1 perpetual (span)",
            "book_sha256": hashlib.sha256(book_bytes).hexdigest(),
            "prices": str(prices_path),
            "prices_sha256": hashlib.sha256(prices_path.read_bytes()).hexdigest(),
            "price_columns": list(columns),
            "horizon_days": horizon_days,
            "against": against,
        }
        summary = summarize(days, expected_rate, meta)
    except InputError as e:
        return _fail(e.name, e.message)
    except (
        PortfolioFormatError,
        PriceFileError,
        BacktestError,
        CoverageInputError,
        MarginError,
    ) as e:
        return _fail(type(e).__name__, str(e))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "backtest.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out_dir / "backtest.html").write_text(render_html(summary, days))
    except OSError as e:
        return _fail("ReportNotWritten", f"{out_dir}: {e.strerror or e}")
    kup, ind = summary["kupiec_pof"], summary["christoffersen_independence"]
    sys.stdout.write(
        f"{summary['first_day']}..{summary['last_day']}: {summary['observations']} days, "
        f"{summary['exceedances']} exceedances "
        f"(rate {summary['exceedance_rate']:.4%}, expected {expected_rate:.4%})\n"
        f"Kupiec POF: LR={kup['lr']:.4f} p={kup['p_value']:.4g}\n"
        f"Christoffersen independence: LR={ind['lr']:.4f} p={ind['p_value']:.4g}\n"
        f"Conditional coverage: LR={summary['conditional_coverage']['lr']:.4f} "
        f"p={summary['conditional_coverage']['p_value']:.4g}\n"
        f"report: {out_dir / 'backtest.html'}, summary: {out_dir / 'backtest.json'}\n"
    )
    return 0


def _fail(name: str, message: str, status: int = 1) -> int:
    sys.stderr.write(f"error: {printable(name)}: {printable(message)}\n")
    return status
