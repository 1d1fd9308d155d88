"""Signed orders (keeper/orders.py) against the standard and against the contract.

The digest is checked three ways: eth-account's EIP-712 encoder (``eth_signTypedData_v4``), the
contract's ``hashOrder`` and ``DOMAIN_SEPARATOR`` on anvil, and the contract accepting the
signature in a trade. Then every way an order can fail is tried on-chain, each with its named
error: a signer that is neither owner nor operator, an overfill, a cancelled nonce, a passed
deadline, a price beyond the limit, a replay of the same orders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from keeper.chain import decode_revert, revert_data_of
from keeper.deployment import Deployment, account_id, bind, deploy_protocol
from keeper.devnet import Anvil
from keeper.orders import (
    MAX_DEADLINE,
    Domain,
    Keyring,
    Order,
    OrderError,
    OrderMatcher,
    UnknownSigner,
    dev_keys,
    dev_matcher,
    devnet_owner_key,
)

WAD = 10**18
USDC = 10**6
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

uint256 = st.integers(0, 2**256 - 1)
int256 = st.integers(-(2**255), 2**255 - 1).filter(lambda q: q != 0)
orders = st.builds(
    Order,
    account=uint256,
    instrument=uint256,
    quantity=int256,
    limit_price=st.integers(-(2**255), 2**255 - 1),
    nonce=uint256,
    deadline=st.integers(0, MAX_DEADLINE),
)
DOMAIN = Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")


@settings(max_examples=200, deadline=None)
@given(order=orders, chain_id=st.integers(1, 2**64))
def test_digest_is_eth_sign_typed_data_v4(order: Order, chain_id: int) -> None:
    """The hand-encoded digest equals eth-account's EIP-712 encoding of the same typed data."""
    domain = dataclasses.replace(DOMAIN, chain_id=chain_id)
    msg = encode_typed_data(full_message=order.typed_data(domain))
    assert keccak(b"\x19" + msg.version + msg.header + msg.body) == order.digest(domain)


@settings(max_examples=50, deadline=None)
@given(order=orders, key=st.integers(1, 2**255))
def test_signature_is_the_one_form_the_contract_accepts(order: Order, key: int) -> None:
    """65 bytes r||s||v, s in the lower half (no malleable twin), v 27 or 28, recovering the
    signer; identical to what a wallet returns for eth_signTypedData_v4."""
    pk = key.to_bytes(32, "big")
    owner = Account.from_key(pk).address
    order = dataclasses.replace(order, account=(int(owner, 16) << 96) | (order.account % 2**96))
    sig = Keyring([pk]).sign(order, DOMAIN)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert int.from_bytes(sig[32:64], "big") <= SECP256K1_HALF_N
    wallet = Account.sign_typed_data(pk, full_message=order.typed_data(DOMAIN))
    assert bytes(wallet.signature) == sig
    assert Account._recover_hash(order.digest(DOMAIN), signature=sig) == owner


def test_order_refuses_what_the_contract_cannot_encode() -> None:
    with pytest.raises(OrderError, match="quantity"):
        Order(1, 1, 0, 1, 1)
    with pytest.raises(OrderError, match="deadline"):
        Order(1, 1, 1, 1, 1, deadline=2**64)
    with pytest.raises(OrderError, match="nonce"):
        Order(1, 1, 1, 1, -1)
    with pytest.raises(OrderError, match="quantity"):
        Order(1, 1, 2**255, 1, 1)


def test_keyring_never_shows_a_key() -> None:
    key = devnet_owner_key(3, 4)
    ring = Keyring([key])
    (address,) = ring.addresses
    assert key.hex() not in repr(ring) and repr(ring) == "Keyring(1 keys)"
    stranger = Order(account_id("0x" + "11" * 20), 1, 1, 1, 1)
    with pytest.raises(UnknownSigner) as exc:
        ring.sign(stranger, DOMAIN)
    assert key.hex() not in str(exc.value) and address not in str(exc.value)


def test_matcher_nonces_never_repeat() -> None:
    """Two matches with the same terms are two orders (distinct digests), never one order
    filled twice."""
    m = OrderMatcher(type("C", (), {"address": DOMAIN.house})(), Keyring(), 31337)
    (b1, s1), (b2, s2) = m.orders(1, 2, 3, WAD, WAD), m.orders(1, 2, 3, WAD, WAD)
    digests = {o.digest(m.domain) for o in (b1, s1, b2, s2)}
    assert len(digests) == 4
    assert b1.quantity == WAD and s1.quantity == -WAD
    assert b1.limit_price == s1.limit_price == WAD
    with pytest.raises(OrderError):
        m.orders(1, 2, 3, 0, WAD)


# ------------------------------------------------------------------------------- on anvil


@dataclasses.dataclass
class Venue:
    w3: Web3
    d: Deployment
    ch: Any
    matcher: str  # the MATCHER role's address
    alice: int
    bob: int
    perp: int


@pytest.fixture(scope="module")
def venue(anvil: Anvil, w3: Web3, contracts_built: None) -> Venue:
    d = deploy_protocol(w3)
    ch, usdc = bind(w3, d, "ClearingHouse"), bind(w3, d, "MockERC20:USDC")
    alice, bob = w3.eth.accounts[2], w3.eth.accounts[3]
    for who in (alice, bob):
        _send(w3, usdc.functions.mint(who, 10**6 * USDC), who)
        _send(w3, usdc.functions.approve(ch.address, 10**6 * USDC), who)
        _send(w3, ch.functions.deposit(account_id(who), 0, 100_000 * USDC), who)
    perp = next(i["id"] for i in d.instruments if i["underlying"] == 0 and i["expiry"] == 0)
    return Venue(w3, d, ch, d.roles["matcher"], account_id(alice), account_id(bob), perp)


@pytest.fixture
def fresh(venue: Venue, anvil: Anvil) -> Iterator[Venue]:
    snap = anvil.rpc("evm_snapshot")
    yield venue
    anvil.rpc("evm_revert", [snap])


def _send(w3: Web3, fn: Any, sender: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


def _revert_name(fn: Any, sender: str) -> str:
    with pytest.raises(ContractCustomError) as exc:
        fn.call({"from": sender})
    return decode_revert(revert_data_of(exc.value) or b"").name


def test_digest_and_domain_are_the_contracts(venue: Venue) -> None:
    m = dev_matcher(venue.w3, venue.ch)
    assert venue.ch.functions.DOMAIN_SEPARATOR().call() == m.domain.separator
    assert venue.ch.functions.ORDER_TYPEHASH().call() == keccak(
        text="Order(uint256 account,uint256 instrument,int256 quantity,int256 limitPrice,"
        "uint256 nonce,uint64 deadline)"
    )
    for order in (
        Order(venue.alice, venue.perp, WAD, 3000 * WAD, 1, 1),
        Order(venue.bob, 2**256 - 1, -(2**255), -(2**255), 2**256 - 1, MAX_DEADLINE),
        Order(0, 0, 1, 0, 0, 0),
    ):
        assert venue.ch.functions.hashOrder(order.as_tuple()).call() == order.digest(m.domain)


def test_signed_match_settles_and_books_both_orders(fresh: Venue) -> None:
    v = fresh
    m = dev_matcher(v.w3, v.ch)
    buy, sell = m.orders(v.alice, v.bob, v.perp, WAD, 3000 * WAD)
    receipt = _send(v.w3, m.settle(buy, sell, WAD, 3000 * WAD), v.matcher)
    (trade,) = v.ch.events.Trade().process_receipt(receipt, errors=DISCARD)
    assert (trade["args"]["buyer"], trade["args"]["seller"]) == (v.alice, v.bob)
    fills = {
        e["args"]["account"]: e["args"]
        for e in v.ch.events.OrderFilled().process_receipt(receipt, errors=DISCARD)
    }
    assert fills[v.alice]["digest"] == buy.digest(m.domain) and fills[v.alice]["quantity"] == WAD
    assert fills[v.bob]["digest"] == sell.digest(m.domain) and fills[v.bob]["quantity"] == -WAD
    assert v.ch.functions.positionsOf(v.alice).call() == [[v.perp], [WAD]]
    # The same two orders again: the first one is already filled in full.
    assert _revert_name(m.settle(buy, sell, WAD, 3000 * WAD), v.matcher) == "OrderOverfilled"


def test_partial_fills_stop_at_the_signed_quantity(fresh: Venue) -> None:
    v = fresh
    m = dev_matcher(v.w3, v.ch)
    buy = Order(v.alice, v.perp, 3 * WAD, 3000 * WAD, m.next_nonce())
    for _ in range(3):
        (_, sell) = m.orders(v.alice, v.bob, v.perp, WAD, 3000 * WAD)
        _send(v.w3, m.settle(buy, sell, WAD, 3000 * WAD), v.matcher)
    (_, sell) = m.orders(v.alice, v.bob, v.perp, WAD, 3000 * WAD)
    assert _revert_name(m.settle(buy, sell, WAD, 3000 * WAD), v.matcher) == "OrderOverfilled"
    assert v.ch.functions.positionsOf(v.alice).call() == [[v.perp], [3 * WAD]]


def test_each_order_failure_is_named(fresh: Venue) -> None:
    v = fresh
    w3 = v.w3
    m = dev_matcher(w3, v.ch)
    # Alice's order signed by a key that is neither her own nor an operator's.
    eve = Keyring([dev_keys(6)[5]])
    eve.delegate(v.alice, eve.addresses[0])
    buy, sell = m.orders(v.alice, v.bob, v.perp, WAD, 3000 * WAD)
    forged = m.args(buy, sell, WAD, 3000 * WAD)
    forged[1] = eve.sign(buy, m.domain)
    assert _revert_name(v.ch.functions.trade(*forged), v.matcher) == "UnauthorizedSigner"
    # A price above the buyer's limit (and below the seller's).
    buy, sell = m.orders(v.alice, v.bob, v.perp, WAD, 3000 * WAD)
    assert _revert_name(m.settle(buy, sell, WAD, 3001 * WAD), v.matcher) == "LimitPriceViolated"
    # A passed deadline.
    late = OrderMatcher(v.ch, m.keyring, w3.eth.chain_id, deadline=1)
    assert _revert_name(late.trade(v.alice, v.bob, v.perp, WAD, 3000 * WAD), v.matcher) == (
        "OrderExpired"
    )
    # A cancelled nonce: every order of the account signed with it is dead.
    buy, sell = m.orders(v.alice, v.bob, v.perp, WAD, 3000 * WAD)
    _send(w3, v.ch.functions.cancelOrder(v.alice, buy.nonce), w3.eth.accounts[2])
    assert _revert_name(m.settle(buy, sell, WAD, 3000 * WAD), v.matcher) == "OrderIsCancelled"
    # The matcher role is required even with two valid signatures.
    buy, sell = m.orders(v.alice, v.bob, v.perp, WAD, 3000 * WAD)
    with pytest.raises(ContractCustomError):
        m.settle(buy, sell, WAD, 3000 * WAD).call({"from": w3.eth.accounts[5]})
    # Signed for another chain: the recovered signer is someone else.
    other = OrderMatcher(v.ch, m.keyring, w3.eth.chain_id + 1)
    assert _revert_name(other.trade(v.alice, v.bob, v.perp, WAD, 3000 * WAD), v.matcher) == (
        "UnauthorizedSigner"
    )


def test_an_operator_signs_for_the_account(fresh: Venue) -> None:
    v = fresh
    w3 = v.w3
    ring = Keyring([dev_keys(8)[7]])  # the operator's key only: none of the owners'
    (operator,) = ring.addresses
    ring.delegate(v.alice, operator)
    ring.delegate(v.bob, operator)
    m = OrderMatcher(v.ch, ring, w3.eth.chain_id)
    # Signed by the operator's key: refused until each owner names it.
    assert _revert_name(m.trade(v.alice, v.bob, v.perp, WAD, 3000 * WAD), v.matcher) == (
        "UnauthorizedSigner"
    )
    _send(w3, v.ch.functions.setOperator(v.alice, operator, True), w3.eth.accounts[2])
    _send(w3, v.ch.functions.setOperator(v.bob, operator, True), w3.eth.accounts[3])
    _send(w3, m.trade(v.alice, v.bob, v.perp, WAD, 3000 * WAD), v.matcher)
    assert v.ch.functions.positionsOf(v.alice).call() == [[v.perp], [WAD]]
