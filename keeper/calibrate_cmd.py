"""`keeper calibrate`: EWMA volatilities and correlations of a price history and the next grid
they imply (margin/risk/ewma.py, margin/risk/recalibration.py), with the keccak256 of the
proposal's canonical encoding.

Two sources of prices:

* ``--prices FILE`` (a CSV: ``date`` + one column per underlying, or ``close`` for a
  one-underlying book), dry run only: there are no round ids to name on-chain;
* the chain (``--config``): the configured feeds' rounds, sampled as ``[recalibration]`` says
  (keeper/protocol/recalibration.py). ``--dry-run`` prints the proposal; without it the keeper
  runs one pass of its recalibration job as the risk operator: executes the queued
  recalibrations whose timelock has passed, and queues a new proposal when none is waiting
  (keeper/recalibration_job.py), every transaction recorded in the store.
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
    prices: Path | None
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
    assert opts.prices is not None
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
        "sources": [
            {"feed": s.feed, "first_round": s.first_round, "last_round": s.last_round}
            for s in proposal.sources
        ],
        "interval": proposal.interval,
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
        # The historical set's FHS scales and reference vols (none without a set).
        "fhs_scales": {
            n: {"scale": wad_to_decimal(f), "reference_vol": wad_to_decimal(r)}
            for n, f, r in zip(names, proposal.fhs_scales, proposal.ref_vols, strict=False)
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
    _print(summary(proposal, names), opts.as_json, "(dry run: nothing submitted)")
    return 0


def _print(out: dict[str, Any], as_json: bool, tail: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    lines = [f"as of {out['as_of']} (lambda {out['lambda']})"]
    for n, u in out["underlyings"].items():
        lines.append(
            f"{n}: EWMA vol {u['ewma_vol']} -> price range {u['price_range']} "
            f"(target {u['price_range_target']}), vol shift base {u['vol_shift_base']} "
            f"(target {u['vol_shift_target']})"
        )
    lines += [f"correlation {k}: {v}" for k, v in out["correlations"].items()]
    lines.append(f"proposal hash: {out['hash']} {tail}")
    if "job" in out:
        lines.append(f"job: {json.dumps(out['job'])}")
    sys.stdout.write("\n".join(lines) + "\n")


def run_chain(config_path: Path, *, dry_run: bool, as_json: bool) -> int:
    """The proposal from the chain's rounds (``--dry-run``), or one pass of the job."""
    from keeper.chain import Chain
    from keeper.config import load_config
    from keeper.deployment import bind
    from keeper.preflight import input_errors, read_deployment
    from keeper.protocol.recalibration import propose
    from keeper.recalibration_job import recalibration_job, settings_of

    chain = None
    try:
        cfg = load_config(config_path)
        deployment = read_deployment(cfg.deployment.file)
        chain = Chain.from_config(cfg.rpc, deployment)
        ch = bind(chain.w3, deployment, "ClearingHouse")
        names = tuple(
            str(u["symbol"]) for u in sorted(deployment.underlyings, key=lambda u: u["index"])
        )
        block = int(chain.w3.eth.block_number)
        proposal = propose(chain.w3, chain.rpc, ch, settings_of(cfg.recalibration), block)
        out = summary(proposal, names)
        out["block"] = block
        if dry_run:
            _print(out, as_json, "(dry run: nothing submitted)")
            return 0
        if cfg.signer is None:
            return _fail("ConfigError", "submitting needs a [signer] (or use --dry-run)")
        from keeper.service import Sender
        from keeper.signer import load_signer
        from keeper.store import Store
        from keeper.transactions import tx_manager_from_config

        signer = load_signer(cfg.signer)
        store = Store.open(cfg.store.url)
        try:
            txm = tx_manager_from_config(cfg, store, chain.w3, signer)
            if store.next_nonce(signer.address) is None:
                txm.nonces.reconcile()
            txm.poll()  # what a previous pass sent: mined, final, or still open
            report = recalibration_job(cfg, chain, Sender(txm, signer.address)).run()
            _follow(txm, wait_seconds=60.0)
        finally:
            store.close()
        out["job"] = {
            "block": report.block,
            "executed": report.executed,
            "queued_tx": report.queued,
            "skipped": report.skipped,
        }
        _print(out, as_json, "(submitted as the job says)")
        return 0
    except (CalibrationError, MarginError) as e:
        return _fail(type(e).__name__, str(e))
    except Exception as e:
        if isinstance(e, input_errors()):
            return _fail(type(e).__name__, str(e))
        return _fail("InternalError", f"{type(e).__name__}: {e} (please report this bug)", 70)
    finally:
        if chain is not None:
            chain.close()


def _follow(txm: Any, wait_seconds: float) -> None:
    """Polls the signer's open transactions until none is left or ``wait_seconds`` passed
    (a running keeper on the same store keeps following what is left)."""
    import time

    deadline = time.monotonic() + wait_seconds
    while txm.store.open_transactions(txm.signer.address) and time.monotonic() < deadline:
        txm.poll()
        time.sleep(0.5)


def _fail(name: str, message: str, status: int = 1) -> int:
    sys.stderr.write(f"error: {printable(name)}: {printable(message)}\n")
    return status
