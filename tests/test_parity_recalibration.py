"""The recalibration limits, both sides: margin/risk/recalibration.py ``check_underlying``
against ClearingHouseAdmin's check on anvil (``queueRecalibration`` by eth_call from the risk
operator), on random grids around the current one, before and after an execution the same
UTC day (so the step and the daily reference differ). Same acceptance, same error, same
arguments."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractCustomError

from keeper.chain.revert import decode_revert, revert_data_of
from keeper.deployment import bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.protocol.recalibration import Source, chain_state, latest_round
from margin.risk.recalibration import (
    Proposal,
    RecalibrationLimitError,
    UnderlyingProposal,
    canonical_encoding,
    check_underlying,
)

pytestmark = pytest.mark.anvil

CASES = 80


@pytest.fixture(scope="module")
def net(contracts_built: None) -> Iterator[Any]:
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        d = deploy_protocol(w3, recalibration_delay=10)
        for sym in ("ETH", "BTC"):
            feed = bind(w3, d, f"MockAggregator:{sym}/USD")
            h = feed.functions.setAnswer(feed.functions.answer().call()).transact(
                {"from": d.deployer}
            )
            w3.eth.wait_for_transaction_receipt(h)
        yield node, w3, d, bind(w3, d, "ClearingHouse")


def _proposal(w3: Web3, ch: Any, grid: list[tuple[int, int]], block: int) -> bytes:
    state = chain_state(w3, ch, block)
    sources = tuple(Source(f, latest_round(w3, f, block) - 1, latest_round(w3, f, block))
                    for f in state.feeds)  # fmt: skip
    ends = [
        int(bind_feed(w3, s.feed).functions.getRoundData(s.last_round).call()[3]) for s in sources
    ]
    unders = tuple(UnderlyingProposal(0, r, v, r, v) for r, v in grid)
    return canonical_encoding(Proposal(min(ends), 94 * 10**16, unders, (0,), sources, 60))


def bind_feed(w3: Web3, address: str) -> Any:
    from keeper.protocol.recalibration import feed_contract

    return feed_contract(w3, address)


def _both(w3: Web3, ch: Any, d: Any, rng: random.Random) -> tuple[Any, Any]:
    block = w3.eth.block_number
    state = chain_state(w3, ch, block)
    grid = []
    for lim_r, lim_s in zip(state.ranges, state.shifts, strict=True):
        r = lim_r.current + rng.randint(-lim_r.current // 2, lim_r.current // 2)
        s = lim_s.current + rng.randint(-lim_s.current // 2, lim_s.current // 2)
        grid.append((r, s))
    data = _proposal(w3, ch, grid, block)
    try:
        for u, (r, s) in enumerate(grid):
            check_underlying(u, r, s, state.ranges[u], state.shifts[u])
        py: Any = "ok"
    except RecalibrationLimitError as e:
        py = (type(e).__name__, e.args_tuple)
    try:
        ch.functions.queueRecalibration(data).call({"from": d.deployer})
        sol: Any = "ok"
    except ContractCustomError as e:
        dec = decode_revert(revert_data_of(e))
        sol = (dec.name, tuple(dec.args))
    return py, sol, data


def test_limits_agree_with_the_contract(net: Any) -> None:
    node, w3, d, ch = net
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
            for sym in ("ETH", "BTC"):  # a later asOf for the next proposals
                feed = bind(w3, d, f"MockAggregator:{sym}/USD")
                w3.eth.wait_for_transaction_receipt(
                    feed.functions.setAnswer(feed.functions.answer().call()).transact(
                        {"from": d.deployer}
                    )
                )
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
