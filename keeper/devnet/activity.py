"""Protocol activity on a devnet, for the indexer's tests and benchmark: funded accounts that
deposit, trade a perpetual in a ring, move collateral to a sub-account and withdraw, with empty
blocks mined in between (every call waits for its receipt)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3 import Web3
from web3.types import RPCEndpoint, TxParams

from keeper.deployment import Deployment, account_id, bind
from keeper.orders import dev_matcher

WAD = 10**18
USDC = 10**6
GAS = 5_000_000


@dataclass
class Activity:
    accounts: list[int]  # sub-account 0 of each trader
    subs: list[int]  # sub-account 1 of each trader (receives transfers)
    perp: int  # instrument traded


def send(w3: Web3, fn: Any, sender: str) -> Any:
    tx_hash = fn.transact({"from": sender, "gas": GAS})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1:
        raise RuntimeError(f"{fn.fn_name} reverted")
    return receipt


def send_all(w3: Web3, calls: list[tuple[Any, str]]) -> None:
    """Send every call, then wait for every receipt (one block each under automine)."""
    # An explicit gas limit: an estimate made while earlier calls are still pending can be
    # short when they change the state (a first position slot costs a fresh SSTORE).
    hashes = [fn.transact({"from": who, "gas": GAS}) for fn, who in calls]
    for (fn, who), h in zip(calls, hashes, strict=True):
        receipt = w3.eth.wait_for_transaction_receipt(h, timeout=60)
        if receipt["status"] != 1:
            raise RuntimeError(f"{fn.fn_name}{fn.args} from {who} reverted: {_reason(w3, h)}")


def _reason(w3: Web3, tx_hash: Any) -> str:
    """The decoded revert of a mined transaction (replayed at its block's parent state)."""
    from keeper.chain.revert import decode_revert, revert_data_of

    tx = w3.eth.get_transaction(tx_hash)
    call: TxParams = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
    try:
        w3.eth.call(call, tx["blockNumber"] - 1)
    except Exception as exc:
        return str(decode_revert(revert_data_of(exc) or b""))
    return "no revert when replayed"


def fund(w3: Web3, d: Deployment, traders: list[str], usdc_each: int = 100_000) -> Activity:
    ch = bind(w3, d, "ClearingHouse")
    usdc = bind(w3, d, "MockERC20:USDC")
    amount = usdc_each * USDC
    send_all(w3, [(usdc.functions.mint(t, amount), t) for t in traders])
    send_all(w3, [(usdc.functions.approve(ch.address, amount), t) for t in traders])
    send_all(w3, [(ch.functions.deposit(account_id(t), 0, amount), t) for t in traders])
    perp = next(i["id"] for i in d.instruments if i["underlying"] == 0 and i["expiry"] == 0)
    return Activity([account_id(t) for t in traders], [account_id(t, 1) for t in traders], perp)


def refresh_feeds(w3: Web3, d: Deployment) -> None:
    calls = []
    for key in d.contracts:
        if key.startswith("MockAggregator:"):
            feed = bind(w3, d, key)
            calls.append((feed.functions.setAnswer(feed.functions.answer().call()), d.deployer))
    send_all(w3, calls)


def trade_round(w3: Web3, d: Deployment, act: Activity, traders: list[str], n: int) -> None:
    """One trade per trader (ring), a transfer to its sub-account, a withdrawal every other."""
    ch = bind(w3, d, "ClearingHouse")
    matcher = dev_matcher(w3, ch, accounts=len(w3.eth.accounts))
    k = len(act.accounts)
    calls: list[tuple[Any, str]] = []
    for i in range(k):
        buyer, seller = (i, (i + 1) % k) if n % 2 == 0 else ((i + 1) % k, i)
        price = 3000 * WAD + (n % 7) * 10**16
        calls.append(
            (
                matcher.trade(
                    act.accounts[buyer], act.accounts[seller], act.perp, WAD // 10, price
                ),
                d.roles["matcher"],
            )
        )
        calls.append(
            (ch.functions.transferCollateral(act.accounts[i], act.subs[i], 0, WAD), traders[i])
        )
        if n % 2:
            calls.append((ch.functions.withdraw(act.accounts[i], 0, USDC), traders[i]))
    send_all(w3, calls)


def mine(w3: Web3, blocks: int) -> None:
    if blocks > 0:
        w3.provider.make_request(RPCEndpoint("anvil_mine"), [hex(blocks)])


def build_history(
    w3: Web3, d: Deployment, *, traders: int = 4, rounds: int = 10, gap_blocks: int = 0
) -> Activity:
    """``rounds`` rounds of trading by ``traders`` funded dev accounts, ``gap_blocks`` empty
    blocks after each (feeds refreshed each round, so prices stay fresh)."""
    who = [str(a) for a in w3.eth.accounts[2 : 2 + traders]]
    act = fund(w3, d, who)
    for n in range(rounds):
        refresh_feeds(w3, d)
        trade_round(w3, d, act, who, n)
        mine(w3, gap_blocks)
    return act
