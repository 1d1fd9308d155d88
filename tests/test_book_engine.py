"""keeper.book_engine on hand-built snapshots (pure: no node): the whole-book engine's
assessments equal the exact per-account ones (state, action, change digest, note) for every
account, across price moves and book changes, and the float pass does settle the quiet books.
The same on a real chain, through the service, is tests/test_engine_differential.py."""

from __future__ import annotations

import random
from dataclasses import replace

from keeper.book_engine import BookEngine
from keeper.chain.view import AccountSnapshot, FeedRound, ProtocolSnapshot
from keeper.pipeline.assess import assess_account
from keeper.pipeline.types import Assessment, DecisionPolicy
from keeper.protocol.liquidation import WAD
from tests.test_decisions import BACKSTOP, PRICE, VOL, feed, snapshot

POLICY = DecisionPolicy()


def _book(rng: random.Random) -> tuple[tuple[tuple[int, int], ...], tuple[int, int], int]:
    q = rng.choice((1, -1)) * rng.randint(1, 40) * WAD // 10
    usdc = rng.randint(-2000, 60_000) * WAD
    if q < 0:
        usdc += 3000 * WAD * abs(q) // WAD  # the short sold at 3000
    positions = ((1, q),) if rng.random() < 0.9 else ()
    weth = rng.choice((0, 0, WAD))
    flagged = rng.choice((0,) * 9 + (1_799_990_000,))
    return positions, (usdc - (3000 * q // WAD if positions and q > 0 else 0), weth), flagged


def _edge_books(snap: ProtocolSnapshot) -> dict[int, tuple]:
    """Books at MM and IM exactly, and 1 wei either side (sized with the exact engine)."""
    out: dict[int, tuple] = {}
    base = snap.accounts[1000]
    res = snap.full_check(1000)
    for k, target in enumerate((res.requirement, res.initial_margin)):
        for j, delta in enumerate((-1, 0, 1)):
            cash = base.balances[0] + (target - res.equity) + delta
            out[2000 + 3 * k + j] = (base.positions, (cash, 0), 0)
    return out


def _snapshot(books: dict[int, tuple], spot: int, nonce_of: dict[int, int]) -> ProtocolSnapshot:
    snap = snapshot(books, spot=spot)
    snap.accounts = {
        a: replace(acc, nonce=nonce_of.get(a, acc.nonce)) for a, acc in snap.accounts.items()
    }
    return snap


def _same(a: Assessment, b: Assessment) -> None:
    assert (a.account, a.state, a.action, a.change_digest, a.note, a.lenient) == (
        b.account, b.state, b.action, b.change_digest, b.note, b.lenient,
    )  # fmt: skip


def test_engine_equals_the_exact_path_across_moves_and_changes() -> None:
    rng = random.Random(5)
    books = {a: _book(rng) for a in range(1, 301)}
    books[1000] = (((1, 2 * WAD),), (-5000 * WAD, 0), 0)
    books.update(_edge_books(snapshot(books)))
    books[BACKSTOP] = ((), (WAD, 0), 0)
    nonces: dict[int, int] = {}
    engine = BookEngine(rebuild_after=20, rebuild_fraction=0.0)
    bounded_total = 0
    for step, spot in enumerate((2800, 2800, 2795, 2810, 2500, 2800, 3100, 2800)):
        if step >= 3:  # some books change: their nonce moves (the columns must not be used)
            for a in rng.sample(sorted(k for k in books if k != BACKSTOP), 15):
                positions, (usdc, weth), flagged = books[a]
                books[a] = (positions, (usdc + rng.randint(-500, 500) * WAD, weth), flagged)
                nonces[a] = nonces.get(a, 7) + 1
        snap = _snapshot(books, spot, nonces)
        got = engine.assess(snap, sorted(snap.accounts), POLICY)
        assert BACKSTOP not in {x.account for x in got}
        want = {a: assess_account(snap, a, POLICY) for a in snap.accounts if a != BACKSTOP}
        assert len(got) == len(want)
        for x in got:
            _same(x, want[x.account])
            if x.bounded:
                assert x.state == "healthy" and x.action is None
        bounded_total += engine.stats.bounded
        if step == 1:  # the second block: every quiet book is settled by the float pass
            assert engine.stats.bounded > 100
    assert bounded_total > 500


def test_stale_feed_sends_every_account_to_the_exact_path() -> None:
    books = {a: (((1, WAD),), (50_000 * WAD, 0), 0) for a in range(1, 40)}
    engine = BookEngine()
    engine.assess(snapshot(books), sorted(books), POLICY)
    engine.assess(snapshot(books), sorted(books), POLICY)
    assert engine.stats.bounded == len(books)
    stale = snapshot(books)
    stale.feeds = {PRICE: feed(PRICE, 2800, updated=stale.timestamp - 7200), VOL: stale.feeds[VOL]}
    got = engine.assess(stale, sorted(books), POLICY)
    assert engine.stats.bounded == 0
    for x in got:
        _same(x, assess_account(stale, x.account, POLICY))
        assert x.lenient


def test_a_book_changed_under_the_same_columns_is_assessed_exactly() -> None:
    books = {a: (((1, WAD),), (50_000 * WAD, 0), 0) for a in range(1, 40)}
    engine = BookEngine(rebuild_after=1000)
    engine.assess(snapshot(books), sorted(books), POLICY)
    engine.assess(snapshot(books), sorted(books), POLICY)
    # Account 5 loses its cash (its nonce moves): it is now liquidatable. The float pass
    # still holds the old, healthy book: the engine must not use it.
    snap = snapshot(books)
    acc = snap.accounts[5]
    snap.accounts[5] = AccountSnapshot(5, acc.nonce + 1, 0, acc.positions, (-2990 * WAD, 0))
    got = {x.account: x for x in engine.assess(snap, sorted(books), POLICY)}
    assert engine.stats.stale == 0  # same shape: its new book is written into the columns
    assert not got[5].bounded and got[5].state == "liquidatable"
    _same(got[5], assess_account(snap, 5, POLICY))
    # Its position closed: a new shape, which only a rebuild holds (stale until then).
    snap = snapshot(books)
    snap.accounts[5] = AccountSnapshot(5, acc.nonce + 2, 0, (), (10 * WAD, 0))
    got = {x.account: x for x in engine.assess(snap, sorted(books), POLICY)}
    assert engine.stats.stale == 1 and not got[5].bounded
    _same(got[5], assess_account(snap, 5, POLICY))


def test_a_patched_book_is_settled_from_its_new_columns() -> None:
    books = {a: (((1, WAD),), (50_000 * WAD, 0), 0) for a in range(1, 40)}
    engine = BookEngine(rebuild_after=1000)
    engine.assess(snapshot(books), sorted(books), POLICY)
    nonce = snapshot(books).accounts[5].nonce
    for step, cash in enumerate((80_000, 2_000, 60_000, 60_000)):
        snap = snapshot(books)
        acc = snap.accounts[5]
        nonce += step < 3  # a deposit or withdrawal in each of the first three blocks
        snap.accounts[5] = AccountSnapshot(5, nonce, 0, acc.positions, (cash * WAD, 0))
        for _ in range(2):  # the block that changed it, then one more on the same books
            got = {x.account: x for x in engine.assess(snap, sorted(books), POLICY)}
            assert engine.stats.stale == 0 and not engine.stats.rebuilt
            for x in got.values():
                _same(x, assess_account(snap, x.account, POLICY))
        # The columns hold the new book (as a rebuild would), and settle it when healthy.
        book = engine._book
        assert book is not None
        assert book.portfolios[engine._slot[5]] == snap.portfolio(5)
        assert got[5].bounded == (got[5].state == "healthy")


def test_vol_feed_round_feeds_the_market_of_the_whole_book() -> None:
    books = {a: (((1, WAD),), (50_000 * WAD, 0), 0) for a in range(1, 40)}
    engine = BookEngine()
    for vol in (6 * 10**7, 6 * 10**7, 9 * 10**7):
        snap = snapshot(books)
        snap.feeds[VOL] = FeedRound(VOL, 6, vol, snap.timestamp, 6, 8)
        for x in engine.assess(snap, sorted(books), POLICY):
            _same(x, assess_account(snap, x.account, POLICY))


def test_a_funding_poke_rebuilds_the_book_and_counts_in_equity() -> None:
    """A poke moves a perpetual's funding index without touching any account's nonce: the
    engine must not settle the holders from its old columns (the accrued funding is in their
    equity now), and its assessments equal the exact path's."""
    books = {a: (((1, WAD),), (50_000 * WAD, 0), 0) for a in range(1, 40)}
    engine = BookEngine()
    engine.assess(snapshot(books), sorted(books), POLICY)
    engine.assess(snapshot(books), sorted(books), POLICY)
    assert engine.stats.bounded == len(books)
    snap = snapshot(books)
    snap.funding_indices = {1: 52_700 * WAD}  # every long of 1 pays 52,700: below IM
    assert snap.accrued_funding(1) == -52_700 * WAD
    got = engine.assess(snap, sorted(books), POLICY)
    assert engine.stats.rebuilt and engine.stats.bounded == 0
    for x in got:
        _same(x, assess_account(snap, x.account, POLICY))
        assert x.state != "healthy"


def test_a_bounded_assessment_is_the_dataclass_with_every_field() -> None:
    """The engine builds its bounded assessments without Assessment's __init__ (speed): the
    same object as the dataclass's own construction, field for field."""
    books = {a: (((1, WAD),), (50_000 * WAD, 0), 0) for a in range(1, 40)}
    engine = BookEngine()
    engine.assess(snapshot(books), sorted(books), POLICY)
    snap = snapshot(books)
    got = engine.assess(snap, sorted(books), POLICY)
    assert engine.stats.bounded == len(books)
    for x in got:
        acc = snap.accounts[x.account]
        want = Assessment(
            x.account, snap.block, acc.nonce, x.state, None, False, x.digest_source, None,
            acc.flagged_at, None, x.change_digest, bounded=True,
        )  # fmt: skip
        assert vars(x) == vars(want) and x == want
        assert x.inputs_digest == assess_account(snap, x.account, POLICY).inputs_digest
