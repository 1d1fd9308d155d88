"""Day-by-day backtest of the grid requirement (margin's full check) against realised P&L.

For every day t with a day t + h in the history:

1. the book is *re-anchored* at t so it keeps its shape through the years: option strikes scale
   with the underlying (``strike · S_t / S_file``, floored) and expiries keep their time to
   expiry (``expiry + ts_t - ts_file``); quantities and collateral stay as in the file;
2. ``requirement_t`` = the full check of that book in the market of day t (spot = the day's
   close, the file's vols and rate): maintenance margin, or initial margin with
   ``against="initial"``;
3. ``loss_t`` = equity at t minus equity of the *same* positions in the market of day t + h
   (both from the full check, so options are repriced by margin's own pricing);
4. an exceedance is ``loss_t > requirement_t``.

Only margin's public full check computes values; this module moves dates and prices.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from keeper.backtest.prices import PriceHistory
from margin.errors import MarginError
from margin.portfolio import FUTURE, Market, Portfolio
from margin.portfolio_margin import full_check
from margin.tools.loader import PortfolioFile

AGAINST = ("maintenance", "initial")


class BacktestError(Exception):
    """The backtest cannot run on this input (named on stderr by the command)."""


class HistoryTooShort(BacktestError):
    pass


class BacktestDayRejected(BacktestError):
    """margin rejected the book on a day (e.g. a scaled strike out of range)."""


@dataclass(frozen=True)
class Day:
    date: dt.date
    horizon_date: dt.date
    spots: tuple[int, ...]
    requirement: int
    loss: int  # equity(t) - equity(t + h), WAD; positive = a loss

    @property
    def exceeded(self) -> bool:
        return self.loss > self.requirement


def anchored_book(pfile: PortfolioFile, spots: tuple[int, ...], timestamp: int) -> Portfolio:
    """The file's book moved to a day with these spots and this timestamp (see the module)."""
    s0 = pfile.market.spots
    shift = timestamp - pfile.market.timestamp
    positions = []
    for p in pfile.portfolio.positions:
        u = p.underlying
        strike = p.strike if p.kind == FUTURE else max(1, p.strike * spots[u] // s0[u])
        expiry = 0 if p.expiry == 0 else max(0, p.expiry + shift)
        positions.append(replace(p, strike=strike, expiry=expiry))
    return Portfolio(tuple(positions), pfile.portfolio.collateral)


def run_backtest(
    pfile: PortfolioFile,
    prices: PriceHistory,
    price_columns: tuple[str, ...],
    horizon_days: int = 1,
    against: str = "maintenance",
) -> list[Day]:
    """One :class:`Day` per start day (the last ``horizon_days`` rows only close horizons)."""
    if against not in AGAINST:
        raise BacktestError(f"against must be one of {AGAINST}, got {against!r}")
    if horizon_days < 1:
        raise BacktestError(f"horizon must be at least 1 day, got {horizon_days}")
    if len(price_columns) != len(pfile.underlying_names):
        raise BacktestError("one price column per underlying of the book")
    series = [prices.column(c) for c in price_columns]
    n = len(prices.dates)
    if n <= horizon_days:
        raise HistoryTooShort(
            f"{n} days of prices: fewer than the horizon + 1 ({horizon_days + 1})"
        )
    m0 = pfile.market
    days: list[Day] = []
    for t in range(n - horizon_days):
        h = t + horizon_days
        spots_t = tuple(s[t] for s in series)
        spots_h = tuple(s[h] for s in series)
        ts_t = prices.timestamp(t)
        book = anchored_book(pfile, spots_t, ts_t)
        market_t = Market(ts_t, m0.rate, spots_t, m0.vols)
        market_h = Market(prices.timestamp(h), m0.rate, spots_h, m0.vols)
        try:
            now = full_check(book, market_t, pfile.params)
            later = full_check(book, market_h, pfile.params)
        except MarginError as e:  # the engine's revert, with the day that caused it
            raise BacktestDayRejected(f"{prices.dates[t]}: {type(e).__name__}: {e}") from None
        req = now.requirement if against == "maintenance" else now.initial_margin
        days.append(Day(prices.dates[t], prices.dates[h], spots_t, req, now.equity - later.equity))
    return days
