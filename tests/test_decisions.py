"""keeper.decisions on hand-built snapshots (pure: no node). The same rules on a real chain,
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
    UnderlyingConfig,
)
from keeper.decisions import (
    WAD,
    DecisionPolicy,
    after_liquidation,
    assess,
    assess_account,
    expired_unsettled,
    liquidation_payout,
    policy_from_config,
)
from keeper.deployment import encode_risk_params
from margin.params import STABLE, AssetParams, RiskParams, span_like
from margin.requirement import LIQUIDATABLE

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
        pen, _ = liquidation_payout(wres.requirement, wres.equity, f, LIQ, snap.insurance_fund)
        post = after_liquidation(table, inp.portfolio, f, pen)
        assert post is not None
        return table.full_check(post).state

    f = a.action.fraction or 0
    assert post_state(f) < LIQUIDATABLE
    assert post_state(f - WAD // 100) == LIQUIDATABLE  # one grid step less is not enough
    # Expected bounty: the contract's rule at that fraction.
    assert (
        a.action.expected_bounty
        == liquidation_payout(wres.requirement, wres.equity, f, LIQ, snap.insurance_fund)[1]
    )


def test_under_water_book_is_closed_whole() -> None:
    a = assess_account(snapshot({3: book(600)}, spot=2000), 3, DecisionPolicy())
    assert a.result is not None and a.result.equity < 0
    assert a.action is not None and a.action.fraction == WAD
    assert a.action.expected_bounty == WAD  # minBounty, topped up from the insurance fund


def test_liquidation_payout_rules() -> None:
    # Normal: penalty = ceil(ceil(MM*f)*rate), bounty = penalty*share clamped to [min, max].
    pen, bounty = liquidation_payout(1000 * WAD, 2000 * WAD, WAD // 2, LIQ, 0)
    assert pen == 25 * WAD and bounty == 125 * WAD // 10
    # Below minBounty: min(minBounty, penalty); capped at positive equity.
    assert liquidation_payout(10 * WAD, WAD // 10, WAD // 2, LIQ, 0) == (WAD // 10, WAD // 10)
    # Full close of a book that cannot pay: topped up to minBounty while the fund holds.
    assert liquidation_payout(10 * WAD, -5 * WAD, WAD, LIQ, 10 * WAD) == (0, WAD)
    assert liquidation_payout(10 * WAD, -5 * WAD, WAD, LIQ, WAD // 4) == (0, WAD // 4)
    # ... but never for a partial close.
    assert liquidation_payout(10 * WAD, -5 * WAD, WAD // 2, LIQ, 10 * WAD) == (0, 0)
    # maxBounty caps.
    assert liquidation_payout(10**7 * WAD, 10**8 * WAD, WAD, LIQ, 0)[1] == 1000 * WAD


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
    # Expired and unsettled with a post-expiry round: settle the instrument (key has the round).
    unsettled = snapshot({}, settled=False)
    (act,) = expired_unsettled(unsettled)
    assert act.kind == "settle_instrument" and act.instrument == 2
    assert act.key == "settle_instrument:2:5"
    before = snapshot({}, updated=EXPIRY - 1)
    assert expired_unsettled(before) == []  # PriceBeforeExpiry otherwise


def test_debt_against_collateral_is_a_loan_until_below_maintenance() -> None:
    snap = snapshot({10: ((), (-100 * WAD, WAD), 0), 11: ((), (-5000 * WAD, WAD), 0)})
    loan = assess_account(snap, 10, DecisionPolicy())
    assert loan.state == "healthy" and loan.action is None
    debt = assess_account(snap, 11, DecisionPolicy())
    assert debt.state == "bad_debt" and debt.action is not None
    assert debt.action.kind == "resolve_bad_debt" and debt.result is not None


def test_clear_flag_is_opt_in() -> None:
    snap = snapshot({1: book(5000, flagged=NOW - 10)})
    assert assess_account(snap, 1, DecisionPolicy()).action is None
    act = assess_account(snap, 1, DecisionPolicy(clear_flags=True)).action
    assert act is not None and act.kind == "clear_flag"


def test_policy_from_config() -> None:
    from keeper.config import DecisionsConfig

    p = policy_from_config(DecisionsConfig(min_profit=5, clear_flags=True))
    assert p == replace(DecisionPolicy(), min_profit=5, clear_flags=True)
    assert DecisionPolicy.from_config(DecisionsConfig(min_profit=5, clear_flags=True)) == p


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
