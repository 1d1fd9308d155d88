"""settleAccount sent by one keeper while another settles an instrument of the same account in
the same block (cluster mode: instrument settlement is the leader's, accounts are every
keeper's). The account's settleAccount then pays a position more than its simulation saw: its
gas limit must leave room for every position in an expired, not yet settled instrument.

Found by the cluster soak (``bench/soak.py --cluster 3``): ``settle_account`` transactions
reverted right after a leader change and each succeeded when retried; the receipts had used
their whole gas limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keeper.protocol import settlement as protocol_settlement
from keeper.store import TxStatus
from tests.test_core import World, keeper, set_eth, settle
from tests.test_core import fresh as fresh  # the fixtures of tests/test_core.py
from tests.test_core import world as world

pytestmark = pytest.mark.anvil

GWEI = 10**9


@pytest.fixture
def race(fresh: World) -> Iterator[tuple[World, int, int, int]]:
    """Past expiry with an ETH round, the dated ETH future and the ETH call (the LP holds
    both) not settled yet. Returns the world, the future, the call and the round."""
    w = fresh
    expiry = max(i["expiry"] for i in w.dep.instruments)
    ins = w.dep.instruments
    fut = next(
        i["id"] for i in ins if i["underlying"] == 0 and i["expiry"] and i["kind"] == "future"
    )
    call = next(i["id"] for i in ins if i["underlying"] == 0 and i["kind"] == "call")
    w.node.rpc("evm_setNextBlockTimestamp", [expiry + 60])
    set_eth(w, 3100)
    round_id = w.eth_feed.functions.latestRoundData().call()[0]
    yield w, fut, call, round_id


def _race(w: World, fut: int, call: int, round_id: int, url: str) -> tuple[str, str | None]:
    """The leader settles the future; a keeper that is not the leader then settles the
    future's holders while, in the same block, the leader's settleInstrument of the call is
    ordered first. Returns the LP's settle_account transaction's status and recorded revert
    reason."""
    core, txm, store, chain = keeper(w, url)
    core.leads = lambda: False  # cluster mode, not the leader: no instrument settlement
    lp = w.accounts["lp"]
    core.on_block(chain.view(), set(), w.accounts.values(), market_changed=False)
    leader = w.w3.eth.accounts[0]
    h = w.ch.functions.settleInstrument(fut, round_id).transact({"from": leader})
    assert w.w3.eth.wait_for_transaction_receipt(h)["status"] == 1
    w.node.rpc("evm_setAutomine", [False])
    try:
        w.ch.functions.settleInstrument(call, round_id).transact(
            {"from": leader, "maxFeePerGas": 400 * GWEI,
             "maxPriorityFeePerGas": 50 * GWEI}
        )  # fmt: skip
        report = core.settle_expired(chain.view())
        assert any(k.startswith(f"settle_account:{lp}:") for k in report.actions_sent)
        w.node.rpc("evm_mine")
    finally:
        w.node.rpc("evm_setAutomine", [True])
    settle(w, txm, store)
    (row,) = [d for d in store.decisions_for(str(lp)) if d.action == "settle_account"]
    tx = store.transaction_for_decision(row.id or 0)
    assert tx is not None and tx.final
    store.close()
    return str(tx.status), tx.revert_reason


def test_settle_account_has_room_for_an_instrument_settled_before_it(
    race: tuple[World, int, int, int], tmp_path: Path
) -> None:
    w, fut, call, round_id = race
    status, reason = _race(w, fut, call, round_id, f"sqlite:///{tmp_path / 'k.db'}")
    assert (status, reason) == (TxStatus.FINAL, None)
    ids, _ = w.ch.functions.positionsOf(w.accounts["lp"]).call()
    assert not {fut, call} & set(ids)  # both paid by the one settleAccount


def test_without_the_room_it_runs_out_of_gas_and_says_so(
    race: tuple[World, int, int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race with the limit the simulation alone gives: the transaction runs out of
    gas, and the recorded reason says so (a replay would not: it succeeds on the parent
    block's state and runs out of gas on the block's without revert data)."""
    monkeypatch.setattr(protocol_settlement, "SETTLE_POSITION_GAS", 0)
    monkeypatch.setattr(protocol_settlement, "FUNDING_POSITION_GAS", 0)
    w, fut, call, round_id = race
    status, reason = _race(w, fut, call, round_id, f"sqlite:///{tmp_path / 'k.db'}")
    assert status == TxStatus.REVERTED
    assert reason is not None and reason.startswith("out of gas"), reason
