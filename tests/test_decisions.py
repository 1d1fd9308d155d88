"""keeper.pipeline.assess on hand-built snapshots (pure: no node). The same rules on a real chain,
against the contracts, are in tests/test_core.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from keeper.chain.rpc import BlockRef
from keeper.chain.view import (
    NO_UNDERLYING,
    AccountSnapshot,
    AssetConfig,
    FeedRound,
    Instrument,
    ProtocolSnapshot,
    RoundData,
    UnderlyingConfig,
)
from keeper.deployment import encode_risk_params
from keeper.pipeline.assess import assess, assess_account, settle_instrument_action
from keeper.pipeline.types import DecisionPolicy, policy_from_config
from keeper.protocol.bounty import liquidation_payout
from keeper.protocol.liquidation import WAD, after_liquidation
from keeper.protocol.settlement import expired_unsettled, settlement_round
from margin.params import STABLE, AssetParams, RiskParams, span_like
from margin.portfolio_margin import LIQUIDATABLE

NOW = 1_800_000_000
PRICE, VOL = "0x" + "11" * 20, "0x" + "22" * 20
LIQ = (5 * 10**16, 5 * 10**17, 3600, WAD, 1000 * WAD)  # the devnet's liquidation config
BACKSTOP = 99
EXPIRY = NOW - 100


def feed(addr: str, answer: int, updated: int = NOW, rid: int = 5) -> FeedRound:
    return FeedRound(addr, rid, answer * 10**8, updated, rid, 8)


def snapshot(
    accounts: dict[int, tuple[tuple[tuple[int, int], ...], tuple[int, int], int]],
    *,
    spot: int = 2800,
    updated: int = NOW,
    settled: bool = False,
    insurance: int = 100_000 * WAD,
) -> ProtocolSnapshot:
    """One underlying (ETH), USDC + WETH, a perpetual (1) and an expired future (2)."""
    params = RiskParams(
        underlyings=(span_like(),),
        assets=(AssetParams(0, STABLE), AssetParams(10**17, 0)),
        correlation_credit=3 * 10**17,
        im_factor=125 * 10**16,
    )
    return ProtocolSnapshot(
        block=BlockRef(100, "0x" + "ab" * 32, NOW, "0x" + "cd" * 32),
        timestamp=NOW,
        rate=0,
        backstop=BACKSTOP,
        paused=False,
        insurance_fund=insurance,
        liquidation_config=LIQ,
        risk_params_bytes=encode_risk_params(params),
        risk_params=params,
        underlyings=(UnderlyingConfig(0, PRICE, 3600, 86400, VOL),),
        assets=(
            AssetConfig(0, "0x" + "33" * 20, 6, NO_UNDERLYING, 0, 10**12),
            AssetConfig(1, "0x" + "44" * 20, 18, 0, 10**17, 1),
        ),
        instruments={
            1: Instrument(1, 0, 0, True, False, 0, 0),
            2: Instrument(2, 0, 0, True, settled, EXPIRY, 0),
        },
        settlement_prices={2: 3000 * WAD} if settled else {},
        feeds={PRICE: feed(PRICE, spot, updated), VOL: FeedRound(VOL, 5, 6 * 10**7, updated, 5, 8)},
        accounts={
            a: AccountSnapshot(a, 7, flagged, positions, balances)
            for a, (positions, balances, flagged) in accounts.items()
        },
    )


LONG1 = ((1, WAD),)  # one ETH perpetual, bought at 3000 (cash already paid)


def book(usdc: int, positions: tuple[tuple[int, int], ...] = LONG1, flagged: int = 0):  # type: ignore[no-untyped-def]
    return (positions, ((usdc - 3000) * WAD if positions else usdc * WAD, 0), flagged)


def test_states_and_actions() -> None:
    snap = snapshot(
        {
            1: book(5000),  # healthy
            2: book(700),  # below IM: margin call -> flag
            3: book(600),  # below MM -> liquidate
            4: book(700, flagged=NOW - 10),  # flagged, grace running
            5: book(700, flagged=NOW - 3600),  # grace over -> liquidate (target IM)
            6: ((), (-5 * WAD, 0), 0),  # bad debt
            7: ((), (0, 0), 0),  # empty
            BACKSTOP: book(600),  # never assessed
        }
    )
    out = {a.account: a for a in assess(snap, [1, 2, 3, 4, 5, 6, 7, BACKSTOP], DecisionPolicy())}
    assert BACKSTOP not in out
    states = {a: x.state for a, x in out.items()}
    assert states == {
        1: "healthy",
        2: "margin_call",
        3: "liquidatable",
        4: "flagged_grace",
        5: "liquidatable",
        6: "bad_debt",
        7: "empty",
    }
    kinds = {a: x.action.kind if x.action else None for a, x in out.items()}
    assert kinds == {
        1: None,
        2: "flag",
        3: "liquidate",
        4: None,
        5: "liquidate",
        6: "resolve_bad_debt",
        7: None,
    }
    flag = out[2].action
    assert (
        flag is not None and flag.key == "flag:2:7" and flag.witness == tuple(out[2].result.witness)
    )  # type: ignore[union-attr]
    liq = out[3].action
    assert liq is not None and liq.key == "liquidate:3:7" and 0 < (liq.fraction or 0) < WAD
    assert out[5].action and (out[5].action.fraction or 0) > 0
    # The digest is of the verifier's inputs: equal books (2, 4, 5; flags aside) share it.
    assert out[2].inputs_digest == out[4].inputs_digest == out[5].inputs_digest
    assert len({x.inputs_digest for x in out.values()}) == len(out) - 2


def test_chosen_fraction_is_the_smallest_that_restores_maintenance() -> None:
    snap = snapshot({3: book(600)})
    a = assess_account(snap, 3, DecisionPolicy(fraction_steps=100))
    assert a.action is not None and a.result is not None
    inp = snap.inputs(3, lenient=True)
    table = snap.table(inp.market)
    wres = table.witness_check(inp.portfolio, list(a.result.witness))

    def post_state(f: int) -> int:
        pen, _ = liquidation_payout(wres.requirement, wres.equity, f, LIQ)
        post = after_liquidation(table, inp.portfolio, f, pen)
        assert post is not None
        return table.full_check(post).state

    f = a.action.fraction or 0
    assert post_state(f) < LIQUIDATABLE
    assert post_state(f - WAD // 100) == LIQUIDATABLE  # one grid step less is not enough
    # Expected bounty: the contract's rule at that fraction.
    assert a.action.expected_bounty == liquidation_payout(wres.requirement, wres.equity, f, LIQ)[1]


def test_under_water_book_is_closed_whole() -> None:
    a = assess_account(snapshot({3: book(600)}, spot=2000), 3, DecisionPolicy())
    assert a.result is not None and a.result.equity < 0
    assert a.action is not None and a.action.fraction == WAD
    # No penalty can be paid, so no bounty (the insurance fund pays none): sent as maintenance.
    assert a.action.expected_bounty == 0 and a.action.maintenance
    off = assess_account(
        snapshot({3: book(600)}, spot=2000), 3, DecisionPolicy(liquidate_insolvent=False)
    )
    assert off.action is not None and not off.action.maintenance
    # A book still above water pays its bounty: never maintenance.
    paying = assess_account(snapshot({3: book(600)}), 3, DecisionPolicy())
    assert paying.action is not None and paying.action.expected_bounty > 0
    assert not paying.action.maintenance


def test_liquidation_payout_rules() -> None:
    # Normal: penalty = ceil(ceil(MM*f)*rate), bounty = penalty*share clamped to [min, max].
    pen, bounty = liquidation_payout(1000 * WAD, 2000 * WAD, WAD // 2, LIQ)
    assert pen == 25 * WAD and bounty == 125 * WAD // 10
    # Below minBounty: min(minBounty, penalty); capped at positive equity.
    assert liquidation_payout(10 * WAD, WAD // 10, WAD // 2, LIQ) == (WAD // 10, WAD // 10)
    # A book that cannot pay: no penalty, no bounty, whatever the fraction (no top-up).
    assert liquidation_payout(10 * WAD, -5 * WAD, WAD, LIQ) == (0, 0)
    assert liquidation_payout(10 * WAD, 0, WAD, LIQ) == (0, 0)
    assert liquidation_payout(10 * WAD, -5 * WAD, WAD // 2, LIQ) == (0, 0)
    # maxBounty caps.
    assert liquidation_payout(10**7 * WAD, 10**8 * WAD, WAD, LIQ)[1] == 1000 * WAD


def test_lenient_and_no_price() -> None:
    stale = snapshot({3: book(600)}, updated=NOW - 7200)  # beyond maxAge, within liq age
    a = assess_account(stale, 3, DecisionPolicy())
    assert a.lenient and a.state == "liquidatable" and a.action is not None
    dead = snapshot({3: book(600)}, updated=NOW - 2 * 86400)
    b = assess_account(dead, 3, DecisionPolicy())
    assert b.state == "no_price" and b.action is None and b.result is None
    assert b.note is not None and "StalePrice" in b.note


def test_settlement_and_policy_switches() -> None:
    snap = snapshot({8: (((2, WAD),), (-2900 * WAD, 0), 0), 2: book(700)}, settled=True)
    a = assess_account(snap, 8, DecisionPolicy())
    assert a.state == "settleable" and a.action is not None and a.action.key == "settle_account:8:7"
    off = DecisionPolicy(allow_settlement=False, allow_flags=False)
    assert assess_account(snap, 8, off).action is None
    assert assess_account(snap, 2, off).action is None
    # Expired and unsettled with a post-expiry round: a candidate (its round chosen below).
    unsettled = snapshot({}, settled=False)
    (ins,) = expired_unsettled(unsettled)
    assert ins.id == 2
    act = settle_instrument_action(ins.id, 4)
    assert act.kind == "settle_instrument" and act.key == "settle_instrument:2:4"
    assert act.call() == ("settleInstrument", (2, 4))
    before = snapshot({}, updated=EXPIRY - 1)
    assert expired_unsettled(before) == []  # no round at or after expiry yet


def test_debt_is_a_loan_while_equity_covers_it() -> None:
    """Bad debt is resolveBadDebt's rule: no live position and model equity < 0. A negative
    cash balance the account's equity covers is a loan, left alone even below maintenance
    (1 WETH at 2800 counts 2520 after its 10% haircut)."""
    snap = snapshot(
        {
            10: ((), (-100 * WAD, WAD), 0),  # loan, healthy
            11: ((), (-5000 * WAD, WAD), 0),  # equity 2520 - 5000 < 0: bad debt
            12: ((), (-2500 * WAD, WAD), 0),  # equity 20 > 0 but far below MM: still a loan
            13: ((), (-2520 * WAD, WAD), 0),  # equity exactly 0: not below zero
            14: ((), (-5 * WAD, 0), 0),  # cash debt, nothing else: bad debt
        }
    )
    loan = assess_account(snap, 10, DecisionPolicy())
    assert loan.state == "healthy" and loan.action is None
    debt = assess_account(snap, 11, DecisionPolicy())
    assert debt.state == "bad_debt" and debt.action is not None
    assert debt.action.kind == "resolve_bad_debt" and debt.result is not None
    assert debt.result.equity < 0
    deep = assess_account(snap, 12, DecisionPolicy())
    assert deep.result is not None and deep.result.equity > 0
    assert deep.result.state == LIQUIDATABLE and deep.action is None
    assert deep.note is not None and deep.note.startswith("loan")
    zero = assess_account(snap, 13, DecisionPolicy())
    assert zero.result is not None and zero.result.equity == 0 and zero.action is None
    cash = assess_account(snap, 14, DecisionPolicy())
    assert cash.state == "bad_debt" and cash.action is not None
    assert assess_account(snap, 14, DecisionPolicy(allow_bad_debt=False)).action is None


def test_cured_flag_is_cleared_unless_switched_off() -> None:
    snap = snapshot({1: book(5000, flagged=NOW - 10), 2: book(700, flagged=NOW - 10)})
    act = assess_account(snap, 1, DecisionPolicy()).action
    assert act is not None and act.kind == "clear_flag"
    assert act.key == f"clear_flag:1:7:{NOW - 10}" and act.call() == ("clearFlag", (1,))
    assert assess_account(snap, 1, DecisionPolicy(clear_cured_flags=False)).action is None
    # Still below IM: the flag stands (clearFlag would revert InsufficientMargin).
    assert assess_account(snap, 2, DecisionPolicy()).action is None
    # Not flagged: nothing to clear.
    assert assess_account(snapshot({1: book(5000)}), 1, DecisionPolicy()).action is None
    # Healthy only under lenient ages: clearFlag runs the strict check, so not sent.
    stale = snapshot({1: book(5000, flagged=NOW - 10)}, updated=NOW - 7200)
    lenient = assess_account(stale, 1, DecisionPolicy())
    assert lenient.lenient and lenient.state == "healthy" and lenient.action is None
    # A flagged account without positions, cash only: cured too.
    flat = snapshot({3: ((), (10 * WAD, 0), NOW - 10)})
    assert (assess_account(flat, 3, DecisionPolicy()).action or act).kind == "clear_flag"


def test_settled_positions_are_margined_as_cash() -> None:
    """The assessment margins the folded book (settled positions as cash, as the contract's
    checks do): a long settled future at 3000 with cash -2900 is 100 of cash."""
    live = ((1, WAD), (2, WAD))
    snap = snapshot(
        {
            8: (((2, WAD),), (-2900 * WAD, 0), 0),  # settled only, equity 100: settle it
            9: (((2, WAD),), (-3100 * WAD, 0), 0),  # settled only, equity -100: bad debt
            20: (live, (-5500 * WAD, 0), 0),  # settled + live perp, liquidatable
        },
        settled=True,
    )
    pf = snap.portfolio(20)
    assert [p.quantity for p in pf.positions] == [WAD] and pf.collateral[0] == -2500 * WAD
    assert snap.raw_portfolio(20).positions[1].expiry == EXPIRY
    a = assess_account(snap, 8, DecisionPolicy())
    assert a.state == "settleable" and a.action is not None and a.action.kind == "settle_account"
    assert snap.portfolio(8).collateral[0] == 100 * WAD and a.result is None  # cash only
    # resolveBadDebt realises settled positions itself: bad debt first.
    b = assess_account(snap, 9, DecisionPolicy())
    assert b.state == "bad_debt" and b.action is not None and b.action.kind == "resolve_bad_debt"
    # A liquidation is more urgent than a settlement (its checks see the folded book).
    c = assess_account(snap, 20, DecisionPolicy())
    assert c.state == "liquidatable" and c.action is not None and c.action.kind == "liquidate"
    # Expired but not settled: still a position (intrinsic value, full scenario risk).
    unsettled = snapshot({20: (live, (-5500 * WAD, 0), 0)})
    assert len(unsettled.portfolio(20).positions) == 2


def test_policy_from_config() -> None:
    from keeper.config import DecisionsConfig

    assert DecisionsConfig().clear_cured_flags and DecisionsConfig().liquidate_insolvent
    p = policy_from_config(DecisionsConfig(min_profit=5, clear_cured_flags=False))
    assert p == replace(DecisionPolicy(), min_profit=5, clear_cured_flags=False)
    assert DecisionPolicy.from_config(DecisionsConfig(min_profit=5, clear_cured_flags=False)) == p


# --- the settlement round ------------------------------------------------------------------


def rd(rid: int, updated: int, answer: int = 3000 * 10**8, air: int | None = None) -> RoundData:
    return RoundData(rid, answer, updated, updated, rid if air is None else air)


def rounds_of(*rs: RoundData) -> dict[int, RoundData | None]:
    return {r.round_id: r for r in rs}


def test_settlement_round_is_the_first_at_or_after_expiry() -> None:
    e = EXPIRY
    feed = rounds_of(rd(1, e - 300), rd(2, e - 1), rd(3, e + 5), rd(4, e + 60), rd(5, e + 90))
    assert settlement_round(e, feed[5], feed).round_id == 3  # type: ignore[arg-type]
    # A round published exactly at expiry is the one (updatedAt >= expiry).
    at = rounds_of(rd(1, e - 300), rd(2, e), rd(3, e + 60))
    assert settlement_round(e, at[3], at).round_id == 2  # type: ignore[arg-type]
    # The latest round itself, when its predecessor is before expiry.
    assert settlement_round(e, feed[3], feed).round_id == 3  # type: ignore[arg-type]
    # No round at or after expiry yet.
    assert settlement_round(e, feed[2], feed).round_id is None  # type: ignore[arg-type]
    # A time gap: no round for a day around expiry; the first one after it is named.
    gap = rounds_of(rd(7, e - 86_400), rd(8, e + 86_400), rd(9, e + 86_500))
    assert settlement_round(e, gap[9], gap).round_id == 8  # type: ignore[arg-type]


def test_settlement_round_asks_for_the_rounds_it_needs() -> None:
    e = EXPIRY
    latest = rd(50, e + 500)
    first = settlement_round(e, latest, {})
    assert first.round_id is None and first.need == 49
    feed: dict[int, RoundData | None] = {r: rd(r, e + r) for r in range(40, 50)}
    assert settlement_round(e, latest, feed).need == 39
    feed[39] = rd(39, e - 1)
    assert settlement_round(e, latest, feed).round_id == 40


def test_settlement_round_gaps_in_round_ids() -> None:
    e = EXPIRY
    # A missing id above the answer is skipped (rounds 6 and 7 are the first two after expiry).
    above = {**rounds_of(rd(5, e - 10), rd(6, e + 10), rd(8, e + 30)), 7: None}
    assert settlement_round(e, above[8], above).round_id == 6  # type: ignore[arg-type]
    # A missing id right after the last pre-expiry round: the first post-expiry round has no
    # predecessor inside its phase, so no round can be named (the contract would revert).
    below = {**rounds_of(rd(5, e - 10), rd(7, e + 10), rd(8, e + 30)), 6: None}
    choice = settlement_round(e, below[8], below)  # type: ignore[arg-type]
    assert choice.round_id is None and "6" in choice.reason
    # A round that answers zeros counts as missing too.
    zeros = {**below, 6: RoundData(6, 0, 0, 0, 0)}
    assert settlement_round(e, zeros[8], zeros).round_id is None  # type: ignore[arg-type]
    # The first round of a phase has no predecessor: accepted.
    phase = 2 << 64
    ph = rounds_of(rd(phase | 1, e + 10), rd(phase | 2, e + 20))
    assert settlement_round(e, ph[phase | 2], ph).round_id == phase | 1  # type: ignore[arg-type]
    # ... but not a later round of a phase whose predecessor is missing at the phase start.
    ph2 = {**rounds_of(rd(phase | 2, e + 10), rd(phase | 3, e + 20)), phase | 1: None}
    assert settlement_round(e, ph2[phase | 3], ph2).round_id is None  # type: ignore[arg-type]


def test_settlement_round_must_be_a_valid_price() -> None:
    e = EXPIRY
    bad = rounds_of(rd(1, e - 10), rd(2, e + 10, answer=0), rd(3, e + 20))
    assert settlement_round(e, bad[3], bad).round_id is None  # type: ignore[arg-type]
    incomplete = rounds_of(rd(1, e - 10), rd(2, e + 10, air=1), rd(3, e + 20))
    assert settlement_round(e, incomplete[3], incomplete).round_id is None  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [WAD // 3, WAD // 2, WAD - 1])
def test_partial_close_rounds_down_to_lot(fraction: int) -> None:
    snap = snapshot({3: (((1, 3 * WAD + 10**8),), (0, 0), 0)})
    inp = snap.inputs(3)
    post = after_liquidation(snap.table(inp.market), inp.portfolio, fraction, 0)
    assert post is not None
    q = post.positions[0].quantity
    closed = 3 * WAD + 10**8 - q
    assert closed % 10**8 == 0 and closed <= (3 * WAD + 10**8) * fraction // WAD


def test_change_digest_follows_the_book_not_the_market() -> None:
    a = assess_account(snapshot({1: book(5000)}), 1, DecisionPolicy())
    later = replace(snapshot({1: book(5000)}), timestamp=NOW + 12)
    b = assess_account(later, 1, DecisionPolicy())
    assert a.inputs_digest != b.inputs_digest and a.change_digest == b.change_digest
    moved = assess_account(snapshot({1: book(5000)}, spot=2900), 1, DecisionPolicy())
    assert moved.inputs_digest != a.inputs_digest and moved.change_digest == a.change_digest
    deposit = assess_account(snapshot({1: book(5100)}), 1, DecisionPolicy())
    assert deposit.change_digest != a.change_digest
    bigger = assess_account(snapshot({1: book(5000, ((1, 2 * WAD),))}), 1, DecisionPolicy())
    assert bigger.change_digest != a.change_digest
