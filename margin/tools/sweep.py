"""Whole-book margin sweeps over a :class:`margin.tools.book.Book`.

With a historical scenario set (ES, docs/margin-model.md) the float pass bounds the grid part
only: it then proves "liquidatable" alone, and every other account goes to the exact engine,
which is the engine's own full check (the packed rows hold the grid's scenarios).

* :func:`classify` — every account's state, provably right: a float64 pass whose every
  quantity carries a proven absolute error bound (docs/sweep.md derives each one); an account
  is classified by floats only when its distance to the MM and IM thresholds exceeds the
  bound. The rest, and (by default) every account the floats call unhealthy — the decisions a
  keeper acts on — go through the exact engine (:func:`exact_account`, equal to
  ``ScenarioTable.full_check`` to the wei, witness included).
* :func:`exact_sweep` — every scenario loss of every account to the wei, on both cores.
* :class:`Sweep` keeps the per-(account, underlying) float results, so after one underlying's
  price moves only that underlying's segments are recomputed (:meth:`Sweep.remargin`).

The exact engine packs each instrument's scenario row into one Python integer, one 256-bit
field per scenario (``Σ_j D_j · 2^(256 j)``, D_j = V_j − V0): an account's exact scenario
accumulator for an underlying is then one big-integer multiply-add per leg, and the fields are
read back after adding a bias of 2^255 per field (|acc_j| < 1e64 < 2^255: no field borrows).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from margin.tools.book import Book
from margin.errors import MarginError
from margin.params import WAD
from margin.portfolio import Market, Position
from margin.portfolio_margin import HEALTHY, LIQUIDATABLE, MARGIN_CALL, MarginResult, ScenarioTable

U = 2.0**-53  # unit roundoff of float64
#: Relative-error allowance of a short chain of float operations (a handful of roundings of u
#: each, plus the conversion of exact integers): 32u covers up to ~30 such operations.
R = 32 * U
UNDECIDED = -2
ERROR = -1
#: The exact engine's fields are sized per underlying and market state (``field_layout``):
#: every scenario sum A of the book satisfies |A| <= max Σ|q| · max |D| < W·2^k, and a field
#: holds A + W·2^k (non-negative, below 2·W·2^k), so floor(field / W) = floor(A / W) + 2^k.
_W = float(WAD)
_W2 = _W * _W


@dataclass
class UnderlyingPrep:
    """One underlying's rows in one market state: exact and float."""

    spot: int
    d: np.ndarray  # (rows, scenarios) float64 of D_j = V_j − V0
    d_max: np.ndarray  # (rows,) float64 of max_j |D_j|
    v0: np.ndarray  # (rows,) float64 marks
    vega_base: np.ndarray  # (rows,) float64
    bad: np.ndarray  # (rows,) bool: the row holds a pricing error
    bad_rows: frozenset[int]
    weight: np.ndarray  # (scenarios,) float64: w/1e18 for extended scenarios, else 1
    packed: list[int]  # exact rows, one 256-bit field per scenario
    v0_exact: list[int]
    vega_exact: list[int]
    ext: list[tuple[int, int]]  # (scenario index, weight) of the extended scenarios
    bias: int  # W·2^k in every field
    quotient_bias: int  # 2^k
    field_bytes: int
    n_bytes: int
    regular_bytes: int  # the regular scenarios' fields (the extended ones follow them)
    charges: tuple[int, int, int]  # short option, calendar, vega


class MarketPrep:
    """The book's rows priced in one market state (shared by every sweep of that state)."""

    def __init__(self, book: Book, table: ScenarioTable) -> None:
        self.book = book
        self.table = table
        self.units = [self._underlying(book, table, u) for u in range(len(book.row_keys))]

    @staticmethod
    def _underlying(book: Book, table: ScenarioTable, u: int) -> UnderlyingPrep:
        up = table.params.underlyings[u]
        spot = table.market.spots[u]
        shocked = table.shocked[u]
        scs = table.scenarios[u]
        n_s = len(scs)
        keys = book.row_keys[u]
        rows_d: list[list[int]] = [[s - spot for s in shocked]]
        v0s = [spot]
        vegas = [0]
        bad = [False]
        for key in keys[1:]:
            assert key is not None
            r = table.row(Position(key[0], key[1], key[2], key[3], 0))
            v0 = r.v0
            prices = [p for p in r.prices if not isinstance(p, MarginError)]
            shift_failed = isinstance(r.shift, MarginError)
            if isinstance(v0, MarginError) or shift_failed or len(prices) != len(r.prices):
                rows_d.append([0] * n_s)
                v0s.append(0)
                bad.append(True)
            else:
                rows_d.append([p - v0 for p in prices])
                v0s.append(v0)
                bad.append(False)
            vegas.append(r.vega_base)
        d_abs_max = max(max(abs(x) for x in row) for row in rows_d)
        k, field_bytes = field_layout(book.max_qsum[u] * d_abs_max)
        field = 8 * field_bytes
        packed = [sum(dj << (field * j) for j, dj in enumerate(row)) for row in rows_d]
        ext = [(j, sc.weight) for j, sc in enumerate(scs) if sc.extended]
        weight = np.ones(n_s)
        for j, w in ext:
            weight[j] = w / _W
        d = np.array(rows_d, dtype=np.float64).reshape(len(rows_d), n_s)
        return UnderlyingPrep(
            spot=spot,
            d=d,
            d_max=np.array([float(max(abs(x) for x in row)) for row in rows_d]),
            v0=np.array([float(x) for x in v0s]),
            vega_base=np.array([float(x) for x in vegas]),
            bad=np.array(bad, dtype=bool),
            bad_rows=frozenset(r for r, b in enumerate(bad) if b),
            weight=weight,
            packed=packed,
            v0_exact=v0s,
            vega_exact=vegas,
            ext=ext,
            bias=sum((WAD << k) << (field * j) for j in range(n_s)),
            quotient_bias=1 << k,
            field_bytes=field_bytes,
            n_bytes=field_bytes * n_s,
            regular_bytes=field_bytes * up.regular_count,
            charges=(up.short_option_charge, up.calendar_charge, up.vega_charge),
        )


def field_layout(bound: int) -> tuple[int, int]:
    """(k, bytes per field) for scenario sums |A| <= bound: W·2^k > bound + W, and the field
    holds values up to 2·W·2^k."""
    k = max(1, (bound + WAD).bit_length() - WAD.bit_length() + 1)
    return k, ((WAD << (k + 1)).bit_length() + 7) // 8


def reprice_table(old: ScenarioTable, market: Market) -> ScenarioTable:
    """A table for `market` that keeps the already priced rows of every underlying whose
    pricing inputs (its spot and vol, the rate, the time) did not change: a row is a pure
    function of those, so the kept rows are the integers a fresh table would compute."""
    new = ScenarioTable(market, old.params)
    if market.rate != old.market.rate or market.timestamp != old.market.timestamp:
        return new
    same = [
        s == s0 and v == v0
        for s, s0, v, v0 in zip(
            market.spots, old.market.spots, market.vols, old.market.vols, strict=True
        )
    ]
    for key, r in old._rows.items():  # the table's own cache (same package)
        if same[key[0]]:
            new._rows[key] = r
    return new


# --- exact engine --------------------------------------------------------------------------


def exact_account(prep: MarketPrep, a: int, want_matrix: bool = False) -> MarginResult:
    """ScenarioTable.full_check of account a, to the wei (same witness), from packed rows.

    Raises the verifier's error when a held instrument's row holds one (via full_check).
    """
    book = prep.book
    if prep.table.n_hist:
        # The historical set's joint losses (every underlying together) and ES: the engine's
        # own full check (the packed rows cover the grid only).
        res = prep.table.full_check(book.portfolios[a])
        if not want_matrix:
            res.scenario_losses, res.historical_losses = [], []
        return res
    legs = book.accounts[a]
    units = prep.units
    n_u = len(units)
    losses = [0] * n_u
    witness = [0] * n_u
    matrix = [[0] * p.d.shape[1] for p in units] if want_matrix else []
    equity = legs.stable
    cont = 0
    from_bytes = int.from_bytes
    for u, rows, qs, entries, opts, neg, offset in legs.segments:
        p = units[u]
        if p.bad_rows and not p.bad_rows.isdisjoint(rows):
            return prep.table.full_check(book.portfolios[a])  # raises the verifier's error
        packed = p.packed
        v0 = p.v0_exact
        x = 0
        for r, q, en in zip(rows, qs, entries, strict=True):
            x += q * packed[r]
            equity += (q * (v0[r] - en)) // WAD
        fb = p.field_bytes
        qbias = p.quotient_bias
        if want_matrix:
            b = (x + p.bias).to_bytes(p.n_bytes, "little")
            row = [
                qbias - from_bytes(b[i : i + fb], "little") // WAD for i in range(0, p.n_bytes, fb)
            ]
            for j, w in p.ext:
                row[j] = -((-row[j] * w) // WAD)
            worst = max(row)
            losses[u] = worst
            witness[u] = row.index(worst)  # the lowest index of the worst loss
            matrix[u] = row
        else:
            # Only the worst loss and its lowest index: the regular losses 2^195 − F_j // W
            # are non-increasing in F_j, so the worst is that of min F, and its lowest index
            # the first F_j below the next multiple of W. Big-endian fields of equal length
            # compare as bytes like the numbers they encode: no conversion per scenario.
            # Extended scenarios (all after the regular ones) are weighted one by one; a tie
            # keeps the lower index.
            b = (x + p.bias).to_bytes(p.n_bytes, "big")
            top = p.n_bytes
            fields = [b[top - i - fb : top - i] for i in range(0, p.regular_bytes, fb)]
            quotient = from_bytes(min(fields), "big") // WAD
            worst = qbias - quotient
            limit = ((quotient + 1) * WAD).to_bytes(fb, "big")
            best = next(j for j, f in enumerate(fields) if f < limit)
            for j, w in p.ext:
                f = from_bytes(b[top - fb * (j + 1) : top - fb * j], "big")
                loss = -((-(qbias - f // WAD) * w) // WAD)
                if loss > worst:
                    worst, best = loss, j
            losses[u] = worst
            witness[u] = best
        spot = p.spot
        c_short, c_cal, c_vega = p.charges
        for n in neg:  # += mul_up(mul_up(n, S), c), inlined: mul_up(a, b) = −((−a·b) // W)
            cont -= (((-n * spot) // WAD) * c_short) // WAD
        if offset > 0:
            cont += _mul_up(_mul_up(offset, spot), c_cal)
        if opts:
            vb = p.vega_exact
            nets: dict[int, int] = {}
            for r, expiry, q in opts:
                nets[expiry] = nets.get(expiry, 0) + (q * vb[r]) // WAD
            v_long = sum(v for v in nets.values() if v > 0)
            v_short = -sum(v for v in nets.values() if v < 0)
            off = min(v_long, v_short)
            if off > 0:
                cont += _mul_up(_mul_up(off, spot), c_vega)
    params = book.params
    total = sum(losses)
    credit = ((total - max(losses)) * params.correlation_credit) // WAD
    mm = total - credit + cont
    im = _mul_up(mm, params.im_factor)
    state = LIQUIDATABLE if equity < mm else MARGIN_CALL if equity < im else HEALTHY
    res = MarginResult(equity, mm, im, cont, credit, state, losses, witness)
    if want_matrix:
        res.scenario_losses = matrix
    return res


def _mul_up(a: int, b: int) -> int:
    return -((-a * b) // WAD)


# --- float pass with proven bounds -----------------------------------------------------------

_CHUNK_SEGS = 1 << 14  # segments per block: a few MiB of scenario sums at a time


@dataclass
class SegmentFloats:
    """Per segment of one underlying: estimates and absolute error bounds (wei)."""

    loss: np.ndarray
    loss_eps: np.ndarray
    equity: np.ndarray
    equity_eps: np.ndarray
    equity_mag: np.ndarray
    cont: np.ndarray
    cont_eps: np.ndarray
    bad: np.ndarray


def segment_floats(book: Book, prep: MarketPrep, u: int, bounds: bool = True) -> SegmentFloats:
    """The float pass of one underlying (docs/sweep.md, §2-§4, gives each bound)."""
    lg = book.legs[u]
    p = prep.units[u]
    n_seg = len(lg.seg_start)
    n_legs = len(lg.leg_row)
    starts = lg.seg_start
    q = lg.leg_q
    if n_seg == 0:
        z = np.zeros(0)
        return SegmentFloats(z, z, z, z, z, z, z, np.zeros(0, dtype=bool))
    # Scenario losses: A = Σ q·D per segment (its legs summed in order, bucket by bucket),
    # L = −A/1e18 (× w/1e18 when extended).
    loss = np.empty(n_seg)
    factor = p.weight * (-1.0 / _W)
    for segs, legs in lg.buckets:
        for lo in range(0, len(segs), _CHUNK_SEGS):
            cols = legs[lo : lo + _CHUNK_SEGS]
            first = cols[:, 0]
            acc = p.d[lg.leg_row[first]]
            acc *= q[first, None]
            for k in range(1, cols.shape[1]):
                leg = cols[:, k]
                term = p.d[lg.leg_row[leg]]
                term *= q[leg, None]
                acc += term
            acc *= factor
            loss[segs[lo : lo + _CHUNK_SEGS]] = acc.max(axis=1)
    equity = np.add.reduceat(q * (p.v0[lg.leg_row] - lg.leg_entry), starts) / _W
    spot = float(p.spot)
    c_s, c_c, c_v = (float(c) * spot / _W2 for c in p.charges)
    short = lg.short_net * c_s + lg.short_groups
    cal_x = lg.calendar_offset * c_c
    cal = np.where(lg.calendar_offset > 0, cal_x + 1.0, 0.0)
    # Vega proxy: v = q·√T per option leg, netted per (segment, expiry), offset per segment.
    opt = lg.opt_leg
    v = q[opt] * p.vega_base[lg.leg_row[opt]] / _W
    net = np.bincount(lg.opt_group, weights=v, minlength=len(lg.group_seg))
    v_long = np.bincount(lg.group_seg, weights=np.maximum(net, 0.0), minlength=n_seg)
    v_short = np.bincount(lg.group_seg, weights=np.maximum(-net, 0.0), minlength=n_seg)
    vega_x = np.minimum(v_long, v_short) * c_v
    cont = short + cal + vega_x + 1.0
    bad = np.bincount(lg.leg_seg, weights=p.bad[lg.leg_row], minlength=n_seg) > 0
    if not bounds:
        z = np.zeros(0)
        return SegmentFloats(loss, z, equity, z, z, cont, z, bad)
    # --- error bounds (docs/sweep.md) ---
    c_n = 2.0 * (lg.seg_terms + 2) + 16.0
    absq = np.abs(q)
    g = np.add.reduceat(absq * p.d_max[lg.leg_row], starts)
    loss_eps = c_n * U * g / _W + 2.0
    n_per_seg = np.diff(np.append(starts, n_legs)).astype(np.float64)
    mag = np.add.reduceat(absq * (np.abs(p.v0[lg.leg_row]) + np.abs(lg.leg_entry)), starts) / _W
    equity_eps = n_per_seg + c_n * U * mag
    n_opt = np.bincount(lg.leg_seg[opt], minlength=n_seg).astype(np.float64)
    v_mag = np.bincount(lg.leg_seg[opt], weights=np.abs(v), minlength=n_seg)
    off_eps = n_opt + c_n * U * v_mag
    cont_eps = (
        lg.short_groups
        + R * lg.short_net * c_s
        + 1.0
        + R * cal_x
        + 1.0
        + off_eps * c_v * (1 + R)
        + R * vega_x
    )
    return SegmentFloats(loss, loss_eps, equity, equity_eps, mag, cont, cont_eps, bad)


class IncrementalMismatch(ValueError):
    """remargin was given a market that differs from the swept one beyond the moved
    underlyings (another book, parameters, rate, time, or an unlisted spot or vol)."""

    def __init__(self, moved: list[int]) -> None:
        super().__init__(f"market changed beyond the moved underlyings {moved}: sweep afresh")


class Sweep:
    """Per-account float state of a book in one market state; classification; incremental."""

    def __init__(self, book: Book, prep: MarketPrep, threads: int = 1) -> None:
        self.book = book
        self.prep = prep
        n_a = book.n_accounts
        n_u = len(book.legs)
        shape = (n_a, n_u)
        self.loss = np.zeros(shape)
        self.loss_eps = np.zeros(shape)
        self.equity = np.zeros(shape)
        self.equity_eps = np.zeros(shape)
        self.equity_mag = np.zeros(shape)
        self.cont = np.zeros(shape)
        self.cont_eps = np.zeros(shape)
        self.bad = np.zeros(shape, dtype=bool)
        self.stable = book.stable
        self.held = [lg.seg_account for lg in book.legs]
        p = book.params
        self.rho = float(p.correlation_credit) / _W
        self.im_factor = float(p.im_factor) / _W
        self.threads = threads
        self._compute(list(range(n_u)))
        self.states = np.full(n_a, UNDECIDED, dtype=np.int8)
        self.exact: dict[int, MarginResult] = {}
        self.errors: dict[int, MarginError] = {}

    def _compute(self, unders: list[int]) -> None:
        """The float pass of these underlyings; numpy releases the GIL in its array loops, so
        threads run underlyings on several cores (largest first, for balance)."""
        unders = sorted(unders, key=lambda u: -len(self.book.legs[u].leg_row))
        if self.threads > 1 and len(unders) > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                done = list(pool.map(lambda u: segment_floats(self.book, self.prep, u), unders))
        else:
            done = [segment_floats(self.book, self.prep, u) for u in unders]
        for u, s in zip(unders, done, strict=True):
            self._store(u, s)

    def _store(self, u: int, s: SegmentFloats) -> None:
        idx = self.held[u]
        self.loss[idx, u] = s.loss
        self.loss_eps[idx, u] = s.loss_eps
        self.equity[idx, u] = s.equity
        self.equity_eps[idx, u] = s.equity_eps
        self.equity_mag[idx, u] = s.equity_mag
        self.cont[idx, u] = s.cont
        self.cont_eps[idx, u] = s.cont_eps
        self.bad[idx, u] = s.bad

    def _decide(self, idx: np.ndarray | slice) -> np.ndarray:
        """Float states (0/1/2) of the accounts idx, UNDECIDED where the bound cannot tell."""
        loss = self.loss[idx]
        tot = loss.sum(axis=1)
        mx = loss.max(axis=1)
        e_loss = self.loss_eps[idx]
        e_tot = e_loss.sum(axis=1) + R * tot
        e_mx = e_loss.max(axis=1)
        credit = (tot - mx) * self.rho - 0.5  # floor(x) lies in (x − 1, x]
        e_credit = 0.5 + self.rho * (e_tot + e_mx) + R * tot
        cont_u = self.cont[idx]
        cont = cont_u.sum(axis=1)
        e_cont = self.cont_eps[idx].sum(axis=1) + R * cont
        mm = tot - credit + cont
        e_mm = e_tot + e_credit + e_cont + R * (tot + cont)
        im = mm * self.im_factor + 0.5  # ceil(x) lies in [x, x + 1)
        e_im = self.im_factor * e_mm + 0.5 + R * im
        stable = self.stable[idx]
        eq = self.equity[idx].sum(axis=1) + stable
        e_eq = self.equity_eps[idx].sum(axis=1) + R * (
            self.equity_mag[idx].sum(axis=1) + np.abs(stable)
        )
        mag = np.abs(eq)
        d_mm = eq - mm
        b_mm = (e_eq + e_mm + R * (mag + mm)) * (1 + R)
        d_im = eq - im
        b_im = (e_eq + e_im + R * (mag + im)) * (1 + R)
        state = np.full(len(tot), UNDECIDED, dtype=np.int8)
        safe_mm = d_mm > b_mm
        state[safe_mm & (d_im < -b_im)] = MARGIN_CALL
        state[safe_mm & (d_im > b_im)] = HEALTHY
        state[d_mm < -b_mm] = LIQUIDATABLE
        state[self.bad[idx].any(axis=1)] = UNDECIDED
        if self.prep.table.n_hist:
            # MM = max(grid, ES) + contingencies >= the grid's MM bounded here: only "below the
            # grid's MM" (liquidatable) stays proven; the rest goes to the exact engine.
            state[state != LIQUIDATABLE] = UNDECIDED
        return state

    def bounded_states(self) -> np.ndarray:
        """Every account's state by the bounded float pass alone: HEALTHY, MARGIN_CALL or
        LIQUIDATABLE where the proven bound decides, UNDECIDED elsewhere (the exact engine is
        not run: the caller runs it where it needs the exact result)."""
        return self._decide(slice(None))

    def classify(self, exact_unhealthy: bool = True) -> np.ndarray:
        """States of every account (ERROR where the verifier would revert)."""
        self.states = self._decide(slice(None))
        self._settle(np.arange(self.book.n_accounts), exact_unhealthy)
        return self.states

    def _settle(self, idx: np.ndarray, exact_unhealthy: bool) -> None:
        st = self.states[idx]
        need = idx[(st == UNDECIDED) | ((st > HEALTHY) if exact_unhealthy else False)]
        affected = np.zeros(self.book.n_accounts, dtype=bool)
        affected[idx] = True
        for cache in (self.exact, self.errors):  # results of the old market state
            for a in [a for a in cache if affected[a]]:
                del cache[a]
        for a in need.tolist():
            try:
                res = exact_account(self.prep, a)
            except MarginError as e:
                self.errors[a] = e
                self.states[a] = ERROR
                continue
            floats = self.states[a]
            if floats != UNDECIDED and floats != res.state:
                raise AssertionError(f"float bound violated for account {a}")  # a proof bug
            self.states[a] = res.state
            self.exact[a] = res
        self.decided_by_float = int(len(idx) - int(np.count_nonzero(st == UNDECIDED)))

    def remargin(
        self, prep: MarketPrep, moved: list[int], exact_unhealthy: bool = True
    ) -> np.ndarray:
        """New states after the underlyings `moved` changed price (every other input equal):
        recompute only their segments and re-decide only the accounts holding them."""
        old, new = self.prep.table, prep.table
        same = (
            prep.book is self.book
            and new.params == old.params
            and new.market.rate == old.market.rate
            and new.market.timestamp == old.market.timestamp
            and all(
                u in moved
                or (
                    new.market.spots[u] == old.market.spots[u]
                    and new.market.vols[u] == old.market.vols[u]
                )
                for u in range(len(old.market.spots))
            )
        )
        if not same:
            raise IncrementalMismatch(moved)
        self.prep = prep
        self._compute(list(moved))
        if len(moved) == 1:
            idx = self.held[moved[0]]
        else:
            idx = np.unique(np.concatenate([self.held[u] for u in moved]))
        self.states[idx] = self._decide(idx)
        self._settle(idx, exact_unhealthy)
        return self.states


def float_baseline(book: Book, prep: MarketPrep) -> np.ndarray:
    """Plain float64 evaluation of the same loss matrix and requirement, no bounds, no exact
    fallback: the speed limit the classification is measured against."""
    n_a = book.n_accounts
    n_u = len(book.legs)
    loss = np.zeros((n_a, n_u))
    eq = np.zeros((n_a, n_u))
    cont = np.zeros((n_a, n_u))
    for u in range(n_u):
        s = segment_floats(book, prep, u, bounds=False)
        idx = book.legs[u].seg_account
        loss[idx, u] = s.loss
        eq[idx, u] = s.equity
        cont[idx, u] = s.cont
    p = book.params
    tot = loss.sum(axis=1)
    mm = tot - (tot - loss.max(axis=1)) * (p.correlation_credit / _W) + cont.sum(axis=1)
    im = mm * (p.im_factor / _W)
    e = eq.sum(axis=1) + book.stable
    return np.where(e < mm, LIQUIDATABLE, np.where(e < im, MARGIN_CALL, HEALTHY))


# --- exact sweep on every core ----------------------------------------------------------------

_SHARED: MarketPrep | None = None


#: Per account: (account, equity, MM, IM, state, witness) or (account, MarginError).
ExactRow = tuple[int, int, int, int, int, list[int]] | tuple[int, MarginError]


def _exact_range(bounds: tuple[int, int]) -> list[ExactRow]:
    prep = _SHARED
    assert prep is not None
    out: list[ExactRow] = []
    for a in range(*bounds):
        try:
            r = exact_account(prep, a, want_matrix=True)
        except MarginError as e:
            out.append((a, e))
            continue
        out.append((a, r.equity, r.requirement, r.initial_margin, r.state, r.witness))
    return out


def exact_sweep(prep: MarketPrep, workers: int | None = None, chunk: int = 2000) -> list[ExactRow]:
    """Every account's exact result (every scenario loss computed to the wei), forked across
    `workers` processes (default: every core). Returns per account
    (account, equity, MM, IM, state, witness) or (account, MarginError)."""
    global _SHARED
    n = prep.book.n_accounts
    workers = workers or os.cpu_count() or 1
    ranges = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    if workers <= 1:
        _SHARED = prep
        try:
            return [x for r in ranges for x in _exact_range(r)]
        finally:
            _SHARED = None
    _SHARED = prep  # inherited by the forked workers, never pickled
    # The workers run without the cyclic collector: they allocate no cycles, and a full
    # collection would walk (and copy the pages of) millions of inherited book objects.
    # (Callers holding a big book should gc.freeze() it once, as bench/run_all.py does.)
    try:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers, initializer=gc.disable) as pool:
            parts = pool.map(_exact_range, ranges, chunksize=1)
    finally:
        _SHARED = None
    return [x for part in parts for x in part]


__all__ = [
    "ERROR",
    "UNDECIDED",
    "IncrementalMismatch",
    "MarketPrep",
    "Sweep",
    "exact_account",
    "exact_sweep",
    "float_baseline",
    "reprice_table",
    "segment_floats",
]
