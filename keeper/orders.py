"""Signed orders: the EIP-712 typed orders the clearing house settles, signed with eth-account.

A trade on the clearing house is a match of two orders, each signed by its account's owner
(or an operator the owner named): ``Order(account, instrument, quantity, limitPrice, nonce,
deadline)`` with a signed quantity (> 0 buys, < 0 sells). The matcher can fill an order only at
a price no worse than its limit and only up to its signed magnitude; the domain names the chain
and the clearing house, so a signature is good on one deployment only.

Here: the digest exactly as the contract computes it (``ClearingHouseBase._hashOrder``, checked
against ``hashOrder`` on anvil and against eth-account's ``eth_signTypedData`` encoding in
tests/test_orders.py), a keyring that signs for the owners it holds keys of, and a matcher that
turns "A buys q of X from B at p" into the contract call. The devnet market, the demo, the
benchmarks and the tests trade only through it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import coincurve
from eth_account import Account
from eth_utils import keccak, to_checksum_address

#: The order's EIP-712 type string, byte for byte the contract's ``_ORDER_TYPEHASH`` preimage.
ORDER_TYPE = (
    "Order(uint256 account,uint256 instrument,int256 quantity,int256 limitPrice,"
    "uint256 nonce,uint64 deadline)"
)
ORDER_TYPEHASH = keccak(text=ORDER_TYPE)
DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
DOMAIN_NAME = "ClearingHouse"
DOMAIN_VERSION = "1"
#: Latest deadline an order can carry (uint64): "good till cancelled".
MAX_DEADLINE = 2**64 - 1
#: Anvil's default dev-account mnemonic (anvil prints it at start): its keys are public.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"


class OrderError(ValueError):
    """An order that the contract would refuse whatever the signature (form, side, bounds)."""


class UnknownSigner(LookupError):
    """The keyring holds no key for the order account's owner."""


def _word(value: int, *, signed: bool = False) -> bytes:
    return value.to_bytes(32, "big", signed=signed)


@dataclass(frozen=True)
class Domain:
    """Where a signature is valid: one chain id, one clearing house."""

    chain_id: int
    house: str

    @property
    def separator(self) -> bytes:
        return keccak(
            DOMAIN_TYPEHASH
            + keccak(text=DOMAIN_NAME)
            + keccak(text=DOMAIN_VERSION)
            + _word(self.chain_id)
            + bytes(12)
            + bytes.fromhex(self.house.removeprefix("0x"))
        )


@dataclass(frozen=True)
class Order:
    """One side of a trade as its owner signs it (quantity > 0 buys, < 0 sells; WAD units)."""

    account: int
    instrument: int
    quantity: int
    limit_price: int
    nonce: int
    deadline: int = MAX_DEADLINE

    def __post_init__(self) -> None:
        if self.quantity == 0:
            raise OrderError("an order's quantity must not be zero")
        if not 0 <= self.deadline <= MAX_DEADLINE:
            raise OrderError(f"deadline {self.deadline} is not a uint64")
        for name in ("account", "instrument", "nonce"):
            if not 0 <= getattr(self, name) < 2**256:
                raise OrderError(f"{name} {getattr(self, name)} is not a uint256")
        for name in ("quantity", "limit_price"):
            if not -(2**255) <= getattr(self, name) < 2**255:
                raise OrderError(f"{name} {getattr(self, name)} is not an int256")

    @property
    def owner(self) -> str:
        """The account id's top 160 bits (``ClearingHouse.accountOwner``)."""
        return to_checksum_address((self.account >> 96).to_bytes(20, "big"))

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        """The ABI tuple of ``ClearingHouseBase.Order``."""
        return (
            self.account,
            self.instrument,
            self.quantity,
            self.limit_price,
            self.nonce,
            self.deadline,
        )

    def struct_hash(self) -> bytes:
        # Every member is a static 32-byte word: abi.encode is their concatenation.
        return keccak(
            ORDER_TYPEHASH
            + _word(self.account)
            + _word(self.instrument)
            + _word(self.quantity, signed=True)
            + _word(self.limit_price, signed=True)
            + _word(self.nonce)
            + _word(self.deadline)
        )

    def digest(self, domain: Domain) -> bytes:
        """What the owner signs: ``keccak256(0x1901 ‖ domainSeparator ‖ structHash)``."""
        return keccak(b"\x19\x01" + domain.separator + self.struct_hash())

    def typed_data(self, domain: Domain) -> dict[str, Any]:
        """The order as ``eth_signTypedData_v4`` JSON, for a wallet to sign."""
        return {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Order": [
                    {"name": "account", "type": "uint256"},
                    {"name": "instrument", "type": "uint256"},
                    {"name": "quantity", "type": "int256"},
                    {"name": "limitPrice", "type": "int256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint64"},
                ],
            },
            "primaryType": "Order",
            "domain": {
                "name": DOMAIN_NAME,
                "version": DOMAIN_VERSION,
                "chainId": domain.chain_id,
                "verifyingContract": to_checksum_address(domain.house),
            },
            "message": {
                "account": self.account,
                "instrument": self.instrument,
                "quantity": self.quantity,
                "limitPrice": self.limit_price,
                "nonce": self.nonce,
                "deadline": self.deadline,
            },
        }


class Keyring:
    """Private keys by address; signs orders for the owners it holds keys of, or for accounts
    whose orders an operator it holds signs (``delegate``).

    Keys never leave it: ``repr`` and errors name addresses only.
    """

    def __init__(self, keys: Iterable[bytes | str] = ()) -> None:
        self._keys: dict[str, Any] = {}
        self._operators: dict[int, str] = {}
        for key in keys:
            self.add(key)

    def add(self, key: bytes | str) -> str:
        """Adds a private key; returns its (checksummed) address."""
        acct = Account.from_key(key)
        self._keys[acct.address] = acct
        return str(acct.address)

    def add_fast(self, key: bytes) -> str:
        """``add`` for many keys (a venue-sized devnet): the address comes from coincurve
        (about a third of ``Account.from_key``'s cost), the signing account is built on first
        use. Returns the checksummed address."""
        pub = coincurve.PublicKey.from_secret(key).format(compressed=False)[1:]
        address = str(to_checksum_address(keccak(pub)[-20:]))
        if address not in self._keys:
            self._keys[address] = bytes(key)
        return address

    def _account(self, address: str) -> Any:
        acct = self._keys.get(address)
        if isinstance(acct, bytes):  # added by add_fast: built now
            acct = self._keys[address] = Account.from_key(acct)
        return acct

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and to_checksum_address(address) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keyring({len(self._keys)} keys)"

    @property
    def addresses(self) -> list[str]:
        return list(self._keys)

    def delegate(self, account: int, operator: str) -> None:
        """Orders of ``account`` are signed by ``operator`` (the owner must have named it with
        ``setOperator`` for the contract to accept them)."""
        self._operators[account] = to_checksum_address(operator)

    def signer_of(self, order: Order) -> str:
        return self._operators.get(order.account, order.owner)

    def sign(self, order: Order, domain: Domain) -> bytes:
        """65 bytes ``r ‖ s ‖ v`` (low s, v 27/28): the only form the contract accepts."""
        signer = self.signer_of(order)
        acct = self._account(signer)
        if acct is None:
            raise UnknownSigner(f"no key for {signer}, the signer of account {order.account}")
        sig = acct.unsafe_sign_hash(order.digest(domain))
        return _word(sig.r) + _word(sig.s) + bytes([sig.v])


def dev_keys(n: int = 10, mnemonic: str = ANVIL_MNEMONIC) -> list[bytes]:
    """The private keys of anvil's first ``n`` dev accounts (its default mnemonic)."""
    Account.enable_unaudited_hdwallet_features()
    return [
        bytes(Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}").key)
        for i in range(n)
    ]


def devnet_owner_key(seed: int, index: int) -> bytes:
    """Devnet-only owner key derived from a public string: anyone can recompute it (a seeded
    market is reproducible and its books can be traded from another process)."""
    return keccak(text=f"keeper-demo:{seed}:{index}")


class OrderMatcher:
    """The MATCHER's side of a trade: two fresh orders at the trade's price, each signed by its
    owner's key, and the ``trade`` call that settles them.

    Every order gets a fresh nonce (a random 128-bit base per matcher, then a counter), so two
    matches with the same terms are two orders, never an overfill of one.
    """

    def __init__(
        self,
        contract: Any,
        keyring: Keyring,
        chain_id: int,
        *,
        deadline: int = MAX_DEADLINE,
        nonce_base: int | None = None,
    ) -> None:
        self.contract = contract
        self.keyring = keyring
        self.domain = Domain(chain_id, contract.address)
        self.deadline = deadline
        self._nonce = (secrets.randbits(128) << 64) if nonce_base is None else nonce_base

    def next_nonce(self) -> int:
        self._nonce += 1
        return self._nonce

    def orders(
        self, buyer: int, seller: int, instrument: int, quantity: int, price: int
    ) -> tuple[Order, Order]:
        """Orders for ``buyer`` buying ``quantity`` (> 0) from ``seller`` at ``price``, each
        limited at that price."""
        if quantity <= 0:
            raise OrderError(f"a match's quantity must be positive, got {quantity}")
        buy = Order(buyer, instrument, quantity, price, self.next_nonce(), self.deadline)
        sell = Order(seller, instrument, -quantity, price, self.next_nonce(), self.deadline)
        return buy, sell

    def args(self, buy: Order, sell: Order, quantity: int, price: int) -> list[Any]:
        """The arguments of ``trade`` for two (already built) orders, signed here."""
        return [
            buy.as_tuple(),
            self.keyring.sign(buy, self.domain),
            sell.as_tuple(),
            self.keyring.sign(sell, self.domain),
            quantity,
            price,
        ]

    def settle(self, buy: Order, sell: Order, quantity: int, price: int) -> Any:
        """The ``trade`` call for two (already built) orders, signed here."""
        return self.contract.functions.trade(*self.args(buy, sell, quantity, price))

    def trade(self, buyer: int, seller: int, instrument: int, quantity: int, price: int) -> Any:
        """``buyer`` buys ``quantity`` of ``instrument`` from ``seller`` at ``price``: the
        contract function to send from the MATCHER."""
        buy, sell = self.orders(buyer, seller, instrument, quantity, price)
        return self.settle(buy, sell, quantity, price)


def dev_matcher(
    w3: Any, contract: Any, *, accounts: int = 10, extra: Iterable[bytes | str] = ()
) -> OrderMatcher:
    """A matcher for a devnet: signs for anvil's first ``accounts`` dev accounts and for the
    ``extra`` keys (a seeded market's owners)."""
    return OrderMatcher(contract, Keyring([*dev_keys(accounts), *extra]), int(w3.eth.chain_id))
