"""`keeper calibrate --dry-run --prices FILE`: EWMA volatilities and correlations of the price
history and the next grid they imply (margin/risk/ewma.py, margin/risk/recalibration.py),
printed with the keccak256 of the proposal's canonical encoding.

The rounds come from a CSV (``date`` + one column per underlying, or ``close`` for a
one-underlying book): the keeper's store indexes ClearingHouse events only and keeps no
oracle rounds. Submitting a proposal on-chain is not implemented; ``--dry-run`` is required.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from keeper.backtest.prices import (
    PriceFileError,
    PriceFormatError,
    PriceHistory,
    decimal_to_wad,
    read_prices,
)
from keeper.margin_cmd import InputError, parse_portfolio, printable, read_portfolio_file
from margin.errors import MarginError
from margin.params import RiskParams, span_like
from margin.risk.ewma import (
    CalibrationError,
    InvalidLambda,
    OracleRound,
    ewma_correlation_down,
    ewma_vol_down,
)
from margin.risk.recalibration import (
    Proposal,
    RecalibrationRule,
    apply_proposal,
    canonical_encoding,
    proposal_hash,
    propose_underlying,
)
from margin.tools.loader import PortfolioFormatError, wad_to_decimal


@dataclass(frozen=True)
class CalibrateOptions:
    prices: Path
    book: Path | None = None
    lam: str = "0.94"
    first: date | None = None
    last: date | None = None
    as_json: bool = False


def _params_and_columns(
    opts: CalibrateOptions, history: PriceHistory
) -> tuple[RiskParams, tuple[str, ...], tuple[str, ...]]:
    """The current parameters, the price column of each underlying and the names shown."""
    if opts.book is not None:
        pfile = parse_portfolio(read_portfolio_file(opts.book))
        names = pfile.underlying_names
        if all(n in history.columns for n in names):
            return pfile.params, names, names
        if len(names) == 1 and "close" in history.columns:
            return pfile.params, ("close",), names
        raise CalibrationError(f"the price file has no column for each of {', '.join(names)}")
    cols = ("close",) if "close" in history.columns else tuple(history.columns)
    return RiskParams(tuple(span_like() for _ in cols), (), 0, 12 * 10**17), cols, cols


def build_proposal(opts: CalibrateOptions) -> tuple[Proposal, RiskParams, tuple[str, ...]]:
    try:
        lam = decimal_to_wad(opts.lam, "--lambda")
    except PriceFormatError as e:
        raise InvalidLambda(str(e)) from None
    history = read_prices(opts.prices).between(opts.first, opts.last)
    params, cols, names = _params_and_columns(opts, history)
    ts = [history.timestamp(i) for i in range(len(history.dates))]
    series = [[OracleRound(t, p) for t, p in zip(ts, history.column(c), strict=True)] for c in cols]
    rule = RecalibrationRule()
    unders = tuple(
        propose_underlying(ewma_vol_down(s, lam), u, rule)
        for s, u in zip(series, params.underlyings, strict=True)
    )
    corr = tuple(
        ewma_correlation_down(series[i], series[j], lam)
        for i in range(len(series))
        for j in range(i + 1, len(series))
    )
    proposal = Proposal(ts[-1], lam, unders, corr)
    return proposal, apply_proposal(params, proposal), names


def summary(proposal: Proposal, names: tuple[str, ...]) -> dict[str, Any]:
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return {
        "as_of": proposal.as_of,
        "lambda": wad_to_decimal(proposal.lam),
        "underlyings": {
            n: {
                "ewma_vol": wad_to_decimal(u.vol),
                "price_range": wad_to_decimal(u.price_range),
                "price_range_target": wad_to_decimal(u.price_range_target),
                "vol_shift_base": wad_to_decimal(u.vol_shift_base),
                "vol_shift_target": wad_to_decimal(u.vol_shift_target),
            }
            for n, u in zip(names, proposal.underlyings, strict=True)
        },
        "correlations": {
            f"{a}/{b}": wad_to_decimal(c)
            for (a, b), c in zip(pairs, proposal.correlations, strict=True)
        },
        "encoding": "0x" + canonical_encoding(proposal).hex(),
        "hash": "0x" + proposal_hash(proposal).hex(),
    }


def run(opts: CalibrateOptions) -> int:
    try:
        proposal, _, names = build_proposal(opts)
    except InputError as e:
        return _fail(e.name, e.message)
    except (PriceFileError, PortfolioFormatError, CalibrationError, MarginError) as e:
        return _fail(type(e).__name__, str(e))
    except Exception as e:  # a bug: one line, no traceback
        return _fail("InternalError", f"{type(e).__name__}: {e} (please report this bug)", 70)
    out = summary(proposal, names)
    if opts.as_json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    lines = [f"as of {out['as_of']} (lambda {out['lambda']})"]
    for n, u in out["underlyings"].items():
        lines.append(
            f"{n}: EWMA vol {u['ewma_vol']} -> price range {u['price_range']} "
            f"(target {u['price_range_target']}), vol shift base {u['vol_shift_base']} "
            f"(target {u['vol_shift_target']})"
        )
    lines += [f"correlation {k}: {v}" for k, v in out["correlations"].items()]
    lines.append(f"proposal hash: {out['hash']} (dry run: nothing submitted)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _fail(name: str, message: str, status: int = 1) -> int:
    sys.stderr.write(f"error: {printable(name)}: {printable(message)}\n")
    return status
