"""A columnar book: many accounts' positions as arrays, for whole-book margin sweeps.

The book is the market-independent half of the work. Each account's positions and volatile
collateral become *legs* grouped per (account, underlying) *segment*:

* a position leg: its quantity, entry price and a row of the underlying's scenario matrix
  (row 0 is the underlying's spot move, shared by every future of that underlying; each
  option instrument has its own row);
* a collateral leg: a volatile asset moves with its underlying's price scenarios exactly like
  a future with quantity ``e`` (the haircut balance) and entry 0, and its value
  ``mul_down(e, S)`` equals a future's ``mul_down(q, S − 0)``: so it is a leg on row 0.

Exact integers are kept (Python ints, for the exact engine) next to float64 copies (for the
bounded float pass of margin/tools/sweep.py). The contingency inputs that do not depend on the
market are netted once here, exactly: per segment the sum of the net short option groups (and
their count) and the futures' calendar offset.  Everything that does depend on the market
(prices, marks, the vega proxy's √T) lives in :class:`margin.tools.sweep.MarketPrep`.

A changed account whose legs keep their rows (a deposit, a resized position) is written into
the columns in place (:meth:`Book.patch`); any other change needs a new Book.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from margin.params import STABLE, WAD, RiskParams
from margin.portfolio import FUTURE, Portfolio
from margin.portfolio_margin import validate_portfolio

InstrumentKey = tuple[int, int, int, int]  # (underlying, kind, strike, expiry)


@dataclass
class UnderlyingLegs:
    """Every leg of one underlying, sorted by account (one contiguous run per segment)."""

    underlying: int
    row_keys: list[InstrumentKey | None]  # row 0: spot move (None); then one option per row
    seg_account: np.ndarray  # (segments,) int64 account index, increasing
    seg_start: np.ndarray  # (segments,) int64 first leg of each segment (for reduceat)
    seg_terms: int  # most legs in one segment (the n of the summation error bound)
    leg_row: np.ndarray  # (legs,) int64
    leg_q: np.ndarray  # (legs,) float64 quantity (or haircut balance)
    leg_entry: np.ndarray  # (legs,) float64 entry price (0 for collateral)
    leg_seg: np.ndarray  # (legs,) int64 segment of each leg
    # Option legs only, for the vega proxy netted per (segment, expiry):
    opt_leg: np.ndarray  # (option legs,) int64 index into the legs above
    opt_group: np.ndarray  # (option legs,) int64 (segment, expiry) group id
    group_seg: np.ndarray  # (groups,) int64 segment of each group
    # Market-independent contingency inputs per segment (float64 of exact integers):
    short_net: np.ndarray  # Σ −n over (kind, strike) groups with net n < 0
    short_groups: np.ndarray  # how many such groups (each rounds up by < 2 wei)
    calendar_offset: np.ndarray  # min(Σ long futures, Σ short futures) after netting by expiry
    seg_legs_exact: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    seg_qsum: list[int]  # Σ|q| of each segment (exact): max_qsum is their maximum
    # Segments grouped by leg count c: (segment ids, (segments, c) leg indices). The float
    # pass sums a bucket's legs column by column: whole-array operations, no per-segment loop.
    buckets: list[tuple[np.ndarray, np.ndarray]]


@dataclass
class AccountLegs:
    """One account's exact legs per underlying, for the exact engine."""

    # (underlying, rows, quantities, entries, option (row, expiry, quantity) triples,
    #  negative short-group nets, calendar offset)
    segments: list[
        tuple[
            int,
            tuple[int, ...],
            tuple[int, ...],
            tuple[int, ...],
            tuple[tuple[int, int, int], ...],
            tuple[int, ...],
            int,
        ]
    ]
    stable: int  # Σ stable collateral after haircut (exact)


class Book:
    """Validated portfolios of one set of risk parameters, as columns per underlying."""

    def __init__(
        self, params: RiskParams, portfolios: list[Portfolio], columns: bool = True
    ) -> None:
        """columns=False keeps only what the exact engine needs (no float columns: a Sweep
        cannot run on such a book)."""
        self.params = params
        self.portfolios = portfolios
        n_u = len(params.underlyings)
        rows: list[dict[InstrumentKey | None, int]] = [{None: 0} for _ in range(n_u)]
        # Per underlying, per leg: account, row, q, entry (exact), seg key.
        legs: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n_u)]
        #: Per underlying, the largest Σ|q| of a segment (exact): with the largest |D| of a
        #: market state it bounds every scenario sum, which sizes the exact engine's fields.
        self.max_qsum = [0] * n_u
        self.accounts: list[AccountLegs] = []
        for a, pf in enumerate(portfolios):
            validate_portfolio(pf, params)
            acc = self._account(a, pf, rows, legs)
            self.accounts.append(acc)
            for u, _r, qs, _e, _o, _n, _c in acc.segments:
                self.max_qsum[u] = max(self.max_qsum[u], sum(abs(q) for q in qs))
        self._rows = rows
        self.n_accounts = len(portfolios)
        #: Stable collateral after haircuts per account, float64 of the exact integer.
        self.stable = np.array([float(acc.stable) for acc in self.accounts])
        #: Per underlying, the instrument of each scenario-matrix row (row 0: spot, None).
        self.row_keys: list[list[InstrumentKey | None]] = []
        for index in rows:
            keys: list[InstrumentKey | None] = [None] * len(index)
            for key, r in index.items():
                keys[r] = key
            self.row_keys.append(keys)
        self.legs = (
            [self._columns(u, self.row_keys[u], legs[u]) for u in range(n_u)] if columns else []
        )

    # --- construction --------------------------------------------------------------------

    def _account(
        self,
        a: int,
        pf: Portfolio,
        rows: list[dict[InstrumentKey | None, int]],
        legs: list[list[tuple[int, int, int, int]]],
    ) -> AccountLegs:
        # u -> [(row, q, entry, kind, strike, expiry)]
        per_u: dict[int, list[tuple[int, int, int, int, int, int]]] = {}
        for p in pf.positions:
            u = p.underlying
            r = 0 if p.kind == FUTURE else rows[u].setdefault(p.instrument, len(rows[u]))
            per_u.setdefault(u, []).append(
                (r, p.quantity, p.entry_price, p.kind, p.strike, p.expiry)
            )
        stable = 0
        coll: dict[int, list[int]] = {}
        for asset, balance in zip(self.params.assets, pf.collateral, strict=True):
            e = (balance * (WAD - asset.haircut)) // WAD if balance > 0 else balance
            if asset.underlying == STABLE:
                stable += e
            elif e != 0:
                coll.setdefault(asset.underlying, []).append(e)
        segments = []
        for u in sorted(set(per_u) | set(coll)):
            ps = per_u.get(u, [])
            r_list = [x[0] for x in ps]
            q_list = [x[1] for x in ps]
            e_list = [x[2] for x in ps]
            for e in coll.get(u, ()):
                # One leg per asset: the value floors each mul_down(e, S) separately.
                r_list.append(0)
                q_list.append(e)
                e_list.append(0)
            # The verifier's groups: short options per (kind, strike) across expiries,
            # futures per expiry, options' vega proxy per expiry.
            by_strike: dict[tuple[int, int], int] = {}
            fut: dict[int, int] = {}
            opts = []
            for r, q, _entry, kind, strike, expiry in ps:
                if kind == FUTURE:
                    fut[expiry] = fut.get(expiry, 0) + q
                else:
                    by_strike[(kind, strike)] = by_strike.get((kind, strike), 0) + q
                    opts.append((r, expiry, q))
            neg = tuple(-n for n in by_strike.values() if n < 0)
            f_long = sum(x for x in fut.values() if x > 0)
            f_short = -sum(x for x in fut.values() if x < 0)
            offset = min(f_long, f_short)
            for r, q, en in zip(r_list, q_list, e_list, strict=True):
                legs[u].append((a, r, q, en))
            segments.append(
                (u, tuple(r_list), tuple(q_list), tuple(e_list), tuple(opts), neg, offset)
            )
        return AccountLegs(segments, stable)

    def _columns(
        self,
        u: int,
        row_keys: list[InstrumentKey | None],
        legs: list[tuple[int, int, int, int]],
    ) -> UnderlyingLegs:
        n = len(legs)
        acct = np.fromiter((x[0] for x in legs), np.int64, n)
        leg_row = np.fromiter((x[1] for x in legs), np.int64, n)
        leg_q = np.fromiter((float(x[2]) for x in legs), np.float64, n)
        leg_entry = np.fromiter((float(x[3]) for x in legs), np.float64, n)
        # Legs were appended account by account: acct is already non-decreasing.
        if n:
            change = np.flatnonzero(np.diff(acct)) + 1
            seg_start = np.concatenate(([0], change)).astype(np.int64)
        else:
            seg_start = np.zeros(0, np.int64)
        seg_account = acct[seg_start] if n else np.zeros(0, np.int64)
        seg_len = np.diff(np.append(seg_start, n))
        leg_seg = np.repeat(np.arange(len(seg_start), dtype=np.int64), seg_len)
        # Contingency inputs, in segment order (accounts ascending, as legs were appended).
        segs = [s for acc in self.accounts for s in acc.segments if s[0] == u]
        short_net = np.fromiter((float(sum(s[5])) for s in segs), np.float64, len(segs))
        short_groups = np.fromiter((len(s[5]) for s in segs), np.float64, len(segs))
        calendar = np.fromiter((float(s[6]) for s in segs), np.float64, len(segs))
        # Option legs grouped by (segment, expiry) for the vega proxy.
        is_opt = leg_row > 0
        opt_leg = np.flatnonzero(is_opt)
        expiries = np.array(
            [key[3] if key is not None else 0 for key in row_keys],  # row 0 (spot): no expiry
            dtype=np.int64,
        )
        if len(opt_leg):
            pair = np.stack([leg_seg[opt_leg], expiries[leg_row[opt_leg]]], axis=1)
            uniq, opt_group = np.unique(pair, axis=0, return_inverse=True)
            opt_group = opt_group.reshape(-1).astype(np.int64)
            group_seg = uniq[:, 0].astype(np.int64)
        else:
            opt_group = np.zeros(0, np.int64)
            group_seg = np.zeros(0, np.int64)
        buckets = []
        for c in np.unique(seg_len):
            ids = np.flatnonzero(seg_len == c)
            buckets.append((ids, seg_start[ids][:, None] + np.arange(c)[None, :]))
        return UnderlyingLegs(
            underlying=u,
            row_keys=row_keys,
            seg_account=seg_account,
            seg_start=seg_start,
            seg_terms=int(seg_len.max()) if n else 0,
            leg_row=leg_row,
            leg_q=leg_q,
            leg_entry=leg_entry,
            leg_seg=leg_seg,
            opt_leg=opt_leg,
            opt_group=opt_group,
            group_seg=group_seg,
            short_net=short_net,
            short_groups=short_groups,
            calendar_offset=calendar,
            seg_legs_exact=[(s[1], s[2], s[3]) for s in segs],
            seg_qsum=[sum(abs(q) for q in s[2]) for s in segs],
            buckets=buckets,
        )

    # --- changes in place ---------------------------------------------------------------

    def patch(self, books: Mapping[int, Portfolio]) -> list[int]:
        """Replace the portfolios of these accounts (index -> portfolio) in place, where each
        keeps its shape: per underlying the same legs on the same rows in the same order (a
        deposit into a held asset, a trade that resizes held positions). The columns then equal
        those of a new Book of the same portfolios, row for row. Returns the accounts left
        as they were because their shape changed (a new instrument or underlying, a position
        or a volatile balance opened or closed): only a new Book holds those.

        Raises the verifier's MarginError for an invalid portfolio (nothing is changed then).
        A book built without columns cannot be patched (ValueError)."""
        if len(self.legs) != len(self.row_keys):
            raise ValueError("a book without columns cannot be patched")
        for pf in books.values():
            validate_portfolio(pf, self.params)
        unpatched = []
        touched: set[int] = set()
        scratch: list[list[tuple[int, int, int, int]]] = [[] for _ in self.row_keys]
        for a, pf in books.items():
            old = self.accounts[a]
            if not all(p.kind == FUTURE or p.instrument in self._rows[p.underlying]
                       for p in pf.positions):  # fmt: skip
                unpatched.append(a)
                continue
            new = self._account(a, pf, self._rows, scratch)
            if not _same_shape(old, new):
                unpatched.append(a)
                continue
            for u, rows, qs, entries, _opts, neg, offset in new.segments:
                lg = self.legs[u]
                seg = int(np.searchsorted(lg.seg_account, a))
                start = int(lg.seg_start[seg])
                end = start + len(rows)
                lg.leg_q[start:end] = [float(q) for q in qs]
                lg.leg_entry[start:end] = [float(e) for e in entries]
                lg.short_net[seg] = float(sum(neg))
                lg.short_groups[seg] = len(neg)
                lg.calendar_offset[seg] = float(offset)
                lg.seg_legs_exact[seg] = (rows, qs, entries)
                lg.seg_qsum[seg] = sum(abs(q) for q in qs)
                touched.add(u)
            self.stable[a] = float(new.stable)
            self.accounts[a] = new
            self.portfolios[a] = pf
        for u in touched:
            self.max_qsum[u] = max(self.legs[u].seg_qsum)
        return unpatched

    def instruments(self) -> list[InstrumentKey]:
        """Every option instrument of the book (futures price as the spot row)."""
        return [k for keys in self.row_keys for k in keys if k is not None]


def _same_shape(old: AccountLegs, new: AccountLegs) -> bool:
    """Same underlyings, and per underlying the same rows (legs) and option (row, expiry)
    pairs in the same order: the columns' layout (segments, buckets, groups) is unchanged."""
    if len(old.segments) != len(new.segments):
        return False
    for o, n in zip(old.segments, new.segments, strict=True):
        if o[0] != n[0] or o[1] != n[1]:
            return False
        if [(r, e) for r, e, _q in o[4]] != [(r, e) for r, e, _q in n[4]]:
            return False
    return True
