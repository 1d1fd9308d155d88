"""keeper.simulation on a real anvil with the deployed protocol: eth_simulateV1 gives the same
verdicts and return data as eth_call, the gas it reports is the gas the mined transaction
uses, the limit it returns is enough when the transaction is really sent, and a node without
eth_simulateV1 (played by the fault proxy) gets eth_call and eth_estimateGas instead."""

from __future__ import annotations

from pathlib import Path

from keeper.chain import Chain
from keeper.devnet.fault_proxy import FaultProxy
from keeper.simulation import Simulator, gas_limit_bound, with_margin
from tests import test_core
from tests.test_core import LIQUIDATOR_INDEX, WAD, World, dev_key, keeper, set_eth, settle

# The seeded chain of tests/test_core.py (its own anvil in this module).
world = test_core.world
fresh = test_core.fresh


def test_gas_limit_bound_covers_the_refund_cap_and_two_call_levels() -> None:
    for net in (1, 21_000, 133_684, 429_783, 29_999_999):
        bound = gas_limit_bound(net)
        # consumed <= 5/4 net (EIP-3529), times (64/63)^2 (EIP-150, two call levels), rounded up
        assert bound * 4 * 63 * 63 >= net * 5 * 64 * 64
        assert (bound - 1) * 4 * 63 * 63 < net * 5 * 64 * 64
    assert with_margin(100_000, 20) == 120_000


def _calls(w: World, sender: str) -> dict[str, dict[str, str]]:
    """After a crash to 2800: the thin book's flag, the naked book's liquidation (it clears a
    position slot: a refund), and a liquidation at a stale nonce (reverts)."""
    ch = w.ch
    out = {}
    for name, fn, extra in (
        ("flag", "flag", []),
        ("liquidate", "liquidate", [WAD]),
        ("stale", "liquidate", [WAD]),
    ):
        account = w.accounts["thin" if name == "flag" else "naked"]
        nonce = ch.functions.accountState(account).call()[0] + (1 if name == "stale" else 0)
        witness = list(ch.functions.marginOf(account).call()[7])  # MarginResult.witness
        data = ch.encode_abi(fn, [account, nonce, witness, *extra])
        out[name] = {"from": sender, "to": ch.address, "data": data}
    return out


def test_simulate_v1_agrees_with_eth_call_and_its_limits_hold_on_chain(fresh: World) -> None:
    w = fresh
    set_eth(w, 2800)
    chain = Chain.connect(w.node.url, w.dep)
    sender = w.w3.eth.account.from_key(dev_key(LIQUIDATOR_INDEX)).address
    calls = _calls(w, sender)
    txs = list(calls.values())
    # No margin at all: on this state, the limit alone must carry the refund and the 63/64 rule.
    bare = Simulator(chain.rpc, gas_margin_percent=0).run(txs)
    bare_slow_sim = Simulator(chain.rpc, gas_margin_percent=0)
    bare_slow_sim.simulate_v1 = False
    bare_slow = bare_slow_sim.run(txs)
    for a, b in zip(bare.verdicts, bare_slow.verdicts, strict=True):
        assert a.gas_limit >= b.gas_limit  # anvil's own estimate: the least that succeeds
    # The keeper's default margin: it also covers a later block (the time to expiry, hence the
    # pricing math's gas, moves with the timestamp).
    fast = Simulator(chain.rpc, gas_margin_percent=20).run(txs)
    assert fast.method == "eth_simulateV1" and fast.round_trips == 2
    slow_sim = Simulator(chain.rpc, gas_margin_percent=20)
    slow_sim.simulate_v1 = False
    slow = slow_sim.run(txs)
    assert slow.method == "eth_estimateGas"
    for name, a, b in zip(calls, fast.verdicts, slow.verdicts, strict=True):
        assert (a.error is None) == (b.error is None), name
        if a.error is None:
            assert a.returned == b.returned, name
    flag, liq, stale = fast.verdicts
    assert flag.error is None and liq.error is None
    assert stale.error is not None and stale.error["data"] == slow.verdicts[2].error["data"]  # type: ignore[index]
    # The liquidation's refund makes net gas smaller than what the execution needs: anvil's
    # own estimate is above the net figure; the limit returned must cover it.
    assert slow.verdicts[1].gas_used > liq.gas_used
    assert liq.gas_limit >= slow.verdicts[1].gas_used

    key = dev_key(LIQUIDATOR_INDEX)
    for name, verdict in (("flag", flag), ("liquidate", liq)):
        snap = w.node.rpc("evm_snapshot")
        tx = dict(calls[name])
        signed = w.w3.eth.account.sign_transaction(
            {
                **tx,
                "gas": verdict.gas_limit,
                "nonce": w.w3.eth.get_transaction_count(sender),
                "chainId": w.node.chain_id,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 1,
            },
            key,
        )
        w.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w.w3.eth.wait_for_transaction_receipt(signed.hash)
        assert receipt["status"] == 1, name
        # What the simulation said the call uses is what the receipt says, up to the pricing
        # math's gas at another timestamp (the time to expiry moves the ln/exp iterations).
        assert abs(receipt["gasUsed"] - verdict.gas_used) * 100 <= verdict.gas_used, name
        assert w.node.rpc("evm_revert", [snap]) is True


def test_a_node_without_simulate_v1_gets_call_and_estimate(fresh: World) -> None:
    w = fresh
    set_eth(w, 2800)
    with FaultProxy(w.node.url) as proxy:
        proxy.add(
            "rpc_error",
            methods={"eth_simulateV1"},
            error_code=-32601,
            error_message="the method eth_simulateV1 does not exist/is not available",
        )
        chain = Chain.connect(proxy.url, w.dep)
        sender = w.w3.eth.account.from_key(dev_key(LIQUIDATOR_INDEX)).address
        sim = Simulator(chain.rpc, gas_margin_percent=20)
        txs = list(_calls(w, sender).values())
        first = sim.run(txs)
        assert sim.simulate_v1 is False and first.method == "eth_estimateGas"
        assert [v.error is None for v in first.verdicts] == [True, True, False]
        proxy.reset_counts()
        second = sim.run(txs)
        assert second.method == "eth_estimateGas"
        assert "eth_simulateV1" not in proxy.methods  # asked once, not every chunk
        assert [v.gas_limit for v in second.verdicts] == [v.gas_limit for v in first.verdicts]


def test_keeper_acts_through_a_node_without_simulate_v1(fresh: World, tmp_path: Path) -> None:
    w = fresh
    with FaultProxy(w.node.url) as proxy:
        proxy.add("rpc_error", methods={"eth_simulateV1"}, error_code=-32601, error_message="x")
        core, txm, store, _ = keeper(w, f"sqlite:///{tmp_path / 'k.db'}")
        chain = Chain.connect(proxy.url, w.dep)
        core.executor.chain = chain
        sim = Simulator(chain.rpc, gas_margin_percent=core.policy.gas_margin_percent)
        core.executor.simulator = sim
        set_eth(w, 2800)
        report = core.on_block(chain.view(), set(), w.accounts.values(), market_changed=False)
        assert len(report.actions_sent) == 2 and sim.simulate_v1 is False
        settle(w, txm, store)
        for d in (store.decision_by_key(k) for k in report.actions_sent):
            assert d is not None and d.id is not None
            tx = store.transaction_for_decision(d.id)
            assert tx is not None and tx.status == "final"


def test_funding_realisation_headroom_for_actions_on_books_with_perpetuals(fresh: World) -> None:
    """A poke mined between a liquidation's simulation and the liquidation makes its funding
    realisation write settled indices from zero: a liquidation of a book holding perpetuals gets
    that much more gas limit (the account's books and the backstop's)."""
    from keeper.pipeline.types import Action, ActionKind
    from keeper.protocol.funding import (
        REALISATION_GAS_PER_ACCOUNT,
        REALISATION_GAS_PER_PERPETUAL,
        realisation_headroom,
    )

    w = fresh
    chain = Chain.connect(w.node.url, w.dep)
    naked, hedged = w.accounts["naked"], w.accounts["hedged"]  # 1 perp; 1 perp + 1 future
    snap = chain.view().snapshot([naked, hedged])

    def action(kind: ActionKind, account: int) -> Action:
        return Action(kind, account, None, 0, None, None, 0, f"{kind}:{account}")

    per_side = REALISATION_GAS_PER_PERPETUAL + REALISATION_GAS_PER_ACCOUNT
    assert realisation_headroom(snap, action(ActionKind.LIQUIDATE, naked)) == 2 * per_side
    assert realisation_headroom(snap, action(ActionKind.LIQUIDATE, hedged)) == 2 * per_side
    assert realisation_headroom(snap, action(ActionKind.SETTLE_ACCOUNT, hedged)) == 0
    assert realisation_headroom(snap, action(ActionKind.FLAG, naked)) == 0  # realises nothing
