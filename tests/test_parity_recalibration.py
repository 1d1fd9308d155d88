"""The recalibration limits, both sides: margin/risk/recalibration.py ``check_underlying``
against ClearingHouseAdmin's check on anvil (``queueRecalibration`` by eth_call from the risk
operator), on random grids around the current one, before and after an execution the same
UTC day (so the step and the daily reference differ). Same acceptance, same error, same
arguments. With a historical set in the parameters the FHS scales go through the same check
(random ones and the step bounds at one wei either side), and the canonical bytes are the
contract's: Python's encoding is accepted, the same bytes with a trailing word are refused on
both sides."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractCustomError

from keeper.chain.revert import decode_revert, revert_data_of
from keeper.deployment import bind, decode_risk_params, deploy_protocol, encode_risk_params
from keeper.devnet import Anvil
from keeper.protocol.recalibration import Source, chain_state, latest_round
from margin.params import HistoricalSet
from margin.risk.ewma import CalibrationError
from margin.risk.recalibration import (
    Proposal,
    RecalibrationLimitError,
    UnderlyingProposal,
    canonical_encoding,
    check_underlying,
    decode_proposal,
    limit_window,
)

pytestmark = pytest.mark.anvil

CASES = 80


def _tick_feeds(w3: Web3, d: Any) -> None:
    """A new round on both price feeds (a later asOf for the next proposals)."""
    for sym in ("ETH", "BTC"):
        feed = bind(w3, d, f"MockAggregator:{sym}/USD")
        h = feed.functions.setAnswer(feed.functions.answer().call()).transact({"from": d.deployer})
        w3.eth.wait_for_transaction_receipt(h)


@pytest.fixture(scope="module")
def net(contracts_built: None) -> Iterator[Any]:
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3, recalibration_delay=10)
        _tick_feeds(w3, d)
        yield node, w3, d, bind(w3, d, "ClearingHouse")


@pytest.fixture(scope="module")
def net_set(contracts_built: None) -> Iterator[Any]:
    """The same with a historical set of three joint scenarios (FHS scales 1 and 0.8)."""
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3, recalibration_delay=10)
        ch = bind(w3, d, "ClearingHouse")
        p = decode_risk_params(bytes(ch.functions.riskParams().call()))
        hist = HistoricalSet((-10**17, -5 * 10**16, 2 * 10**17, 10**17, 0, 0), (), 0,
                             (10**18, 8 * 10**17), 1)  # fmt: skip
        p = type(p)(p.underlyings, p.assets, p.correlation_credit, p.im_factor, hist)
        h = ch.functions.setRiskParams(encode_risk_params(p)).transact({"from": d.deployer})
        w3.eth.wait_for_transaction_receipt(h)
        _tick_feeds(w3, d)
        yield node, w3, d, ch


def _proposal(
    w3: Web3, ch: Any, grid: list[tuple[int, int]], block: int, fhs: tuple[int, ...] = ()
) -> bytes:
    state = chain_state(w3, ch, block)
    sources = tuple(Source(f, latest_round(w3, f, block) - 1, latest_round(w3, f, block))
                    for f in state.feeds)  # fmt: skip
    ends = [
        int(bind_feed(w3, s.feed).functions.getRoundData(s.last_round).call()[3]) for s in sources
    ]
    unders = tuple(UnderlyingProposal(0, r, v, r, v) for r, v in grid)
    refs = tuple(45 * 10**16 for _ in fhs)
    p = Proposal(min(ends), 94 * 10**16, unders, (0,), sources, 60, ref_vols=refs, fhs_scales=fhs)
    return canonical_encoding(p)


def bind_feed(w3: Web3, address: str) -> Any:
    from keeper.protocol.recalibration import feed_contract

    return feed_contract(w3, address)


def _outcomes(
    w3: Web3, ch: Any, d: Any, grid: list[tuple[int, int]], fhs: tuple[int, ...] = ()
) -> tuple[Any, Any, bytes]:
    """(python's verdict, the contract's, the bytes) of one proposal at the latest block."""
    block = w3.eth.block_number
    state = chain_state(w3, ch, block)
    data = _proposal(w3, ch, grid, block, fhs)
    try:
        for u, (r, s) in enumerate(grid):
            # (a shape mismatch is the contract's alone: only its verdict is compared then)
            shaped = len(fhs) == len(state.scales) > 0
            f, lim = (fhs[u], state.scales[u]) if shaped else (None, None)
            check_underlying(u, r, s, state.ranges[u], state.shifts[u], f, lim)
        py: Any = "ok"
    except RecalibrationLimitError as e:
        py = (type(e).__name__, e.args_tuple)
    return py, _contract(ch, d, data), data


def _contract(ch: Any, d: Any, data: bytes) -> Any:
    try:
        ch.functions.queueRecalibration(data).call({"from": d.deployer})
        return "ok"
    except ContractCustomError as e:
        dec = decode_revert(revert_data_of(e))
        return (dec.name, tuple(dec.args))


def _both(w3: Web3, ch: Any, d: Any, rng: random.Random) -> tuple[Any, Any, bytes]:
    state = chain_state(w3, ch, w3.eth.block_number)
    grid = []
    for lim_r, lim_s in zip(state.ranges, state.shifts, strict=True):
        r = lim_r.current + rng.randint(-lim_r.current // 2, lim_r.current // 2)
        s = lim_s.current + rng.randint(-lim_s.current // 2, lim_s.current // 2)
        grid.append((r, s))
    fhs = tuple(lim.current + rng.randint(-lim.current // 2, lim.current // 2)
                for lim in state.scales)  # fmt: skip
    return _outcomes(w3, ch, d, grid, fhs)


@pytest.mark.parametrize("with_set", [False, True], ids=["no-set", "historical-set"])
def test_limits_agree_with_the_contract(with_set: bool, request: pytest.FixtureRequest) -> None:
    node, w3, d, ch = request.getfixturevalue("net_set" if with_set else "net")
    rng = random.Random(6)
    outcomes: dict[str, int] = {}
    executed = False
    for i in range(CASES):
        py, sol, data = _both(w3, ch, d, rng)
        assert py == sol, (i, py, sol)
        kind = py if py == "ok" else py[0]
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if py == "ok" and not executed:
            # Execute one the same UTC day: from here the step and daily references differ.
            w3.eth.wait_for_transaction_receipt(
                ch.functions.queueRecalibration(data).transact({"from": d.deployer})
            )
            node.rpc("evm_increaseTime", [11])
            node.rpc("evm_mine", [])
            rid = ch.functions.recalibrationCount().call()
            w3.eth.wait_for_transaction_receipt(
                ch.functions.executeRecalibration(rid, data).transact({"from": d.deployer})
            )
            _tick_feeds(w3, d)
            # Step = daily from here: a move beyond the day's budget but within a step of
            # the new current value is reachable.
            w3.eth.wait_for_transaction_receipt(
                ch.functions.setRecalibrationConfig(10, 3 * 10**17, 3 * 10**17).transact(
                    {"from": d.deployer}
                )
            )
            executed = True
    # Every branch was taken: accepted, out of bounds, step, daily.
    assert executed and set(outcomes) == {
        "ok",
        "RecalibrationOutOfBounds",
        "RecalibrationStepTooLarge",
        "RecalibrationDailyLimit",
    }, outcomes


def test_scale_limits_at_one_wei(net_set: Any) -> None:
    """Each scale at the ends of the window the step and daily limits leave (whichever binds:
    the module's other test may have executed a recalibration today) and one wei outside:
    both sides agree; outside, the binding limit's error on field 2 with that end."""
    _, w3, d, ch = net_set
    state = chain_state(w3, ch, w3.eth.block_number)
    grid = [(r.current, s.current) for r, s in zip(state.ranges, state.shifts, strict=True)]
    cur = tuple(lim.current for lim in state.scales)
    for u, lim in enumerate(state.scales):
        lo, hi = limit_window(lim)
        for f, end in ((lo, None), (lo - 1, 3), (hi, None), (hi + 1, 4)):
            fhs = tuple(f if k == u else c for k, c in enumerate(cur))
            py, sol, _ = _outcomes(w3, ch, d, grid, fhs)
            assert py == sol, (u, f, py, sol)
            if end is None:
                assert py == "ok", (u, f, py)
            else:
                assert py[0] in ("RecalibrationStepTooLarge", "RecalibrationDailyLimit"), py
                assert py[1][:3] == (u, 2, f) and py[1][end] == (lo if end == 3 else hi), py


def test_shape_and_canonical_bytes(net_set: Any, net: Any) -> None:
    """Python's bytes are the contract's canonical encoding (accepted); a trailing word makes
    them non-canonical on both sides; scales on a deployment without a set, or none on one
    with a set, are refused with the shape error (5: reference vols)."""
    _, w3, d, ch = net_set
    state = chain_state(w3, ch, w3.eth.block_number)
    grid = [(r.current, s.current) for r, s in zip(state.ranges, state.shifts, strict=True)]
    fhs = tuple(lim.current for lim in state.scales)
    py, sol, data = _outcomes(w3, ch, d, grid, fhs)
    assert py == sol == "ok"
    assert decode_proposal(data).fhs_scales == fhs
    longer = data + bytes(32)
    with pytest.raises(CalibrationError):
        decode_proposal(longer)
    assert _contract(ch, d, longer) == ("RecalibrationNotCanonical", ())
    assert _outcomes(w3, ch, d, grid)[1] == ("RecalibrationShape", (5, 2, 0))
    _, w3n, dn, chn = net
    state_n = chain_state(w3n, chn, w3n.eth.block_number)
    assert state_n.scales == ()
    grid_n = [(r.current, s.current) for r, s in zip(state_n.ranges, state_n.shifts, strict=True)]
    assert _outcomes(w3n, chn, dn, grid_n, (10**18, 10**18))[1] == ("RecalibrationShape", (5, 0, 2))
