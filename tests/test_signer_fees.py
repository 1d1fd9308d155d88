"""keeper.signer (keystores, env keys, EIP-1559 signing) and keeper.fees (caps and bumps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rlp
from eth_account import Account
from eth_utils import keccak

from keeper.config import FeesConfig, SignerConfig
from keeper.fees import FeePolicy, Fees, is_valid_replacement
from keeper.secrets import Secret, clear_registry, scrub
from keeper.signer import KeystoreError, Signer, load_signer

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
ADDRESS = Account.from_key(KEY).address
PASSWORD = "correct horse battery staple"
GWEI = 10**9


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    # A light scrypt (n = 2^10) keeps the test fast; real keystores use 2^18.
    blob = Account.encrypt(KEY, PASSWORD, kdf="scrypt", iterations=2**10)
    path = tmp_path / "keystore.json"
    path.write_text(json.dumps(blob))
    return path


def test_keystore_with_password_file_and_env(keystore: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    s1 = load_signer(SignerConfig(keystore=keystore, password_file=pw), environ={})
    s2 = load_signer(SignerConfig(keystore=keystore, password_env="PW"), environ={"PW": PASSWORD})
    assert s1.address == s2.address == ADDRESS
    assert KEY[2:] not in repr(s1) and ADDRESS in repr(s1)
    # The key is registered: any later text holding it is scrubbed.
    assert KEY[2:] not in scrub(f"oops {KEY}")
    clear_registry()


def test_wrong_password_leaks_nothing(keystore: Path) -> None:
    wrong = "wrong-password-1234"
    with pytest.raises(KeystoreError) as info:
        Signer.from_keystore(keystore, Secret(wrong))
    text = str(info.value)
    assert "wrong password" in text and str(keystore) in text
    assert wrong not in text and KEY[2:] not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
    clear_registry()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "not a keystore"), ('{"a": 1}', "not a keystore"), ("[]", "not a keystore")],
)
def test_bad_keystore_files(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(KeystoreError, match=fragment):
        Signer.from_keystore(path, Secret(PASSWORD))
    with pytest.raises(KeystoreError, match="cannot read"):
        Signer.from_keystore(tmp_path / "absent.json", Secret(PASSWORD))


def test_key_from_env() -> None:
    assert Signer.from_env("K", {"K": KEY}).address == ADDRESS
    assert Signer.from_env("K", {"K": KEY[2:] + "\n"}).address == ADDRESS
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "not set"),
        ({"K": "zz" * 32}, "not a hex"),
        ({"K": "ab" * 31}, "32-byte"),
        ({"K": "00" * 32}, "not a valid"),
    ]
    for bad, fragment in cases:
        with pytest.raises(KeystoreError, match=fragment) as info:
            Signer.from_env("K", bad)
        assert "zz" * 32 not in str(info.value)
    clear_registry()


def test_missing_password_sources(keystore: Path, tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="PW is not set"):
        load_signer(SignerConfig(keystore=keystore, password_env="PW"), environ={})
    with pytest.raises(KeystoreError, match="cannot read password file"):
        load_signer(SignerConfig(keystore=keystore, password_file=tmp_path / "nope"), environ={})


def test_signs_eip1559_recoverably() -> None:
    signer = Signer.from_env("K", {"K": KEY})
    tx = {
        "chainId": 31337,
        "nonce": 7,
        "to": ADDRESS,
        "value": 1,
        "data": "0x1234",
        "gas": 50_000,
        "maxFeePerGas": 3 * GWEI,
        "maxPriorityFeePerGas": GWEI,
    }
    signed = signer.sign(tx)
    assert signed.raw[0] == 2  # typed envelope, EIP-1559
    assert signed.hash == "0x" + keccak(signed.raw).hex()
    assert Account.recover_transaction(signed.raw) == ADDRESS
    fields = rlp.decode(signed.raw[1:])
    assert int.from_bytes(fields[1], "big") == 7  # nonce
    with pytest.raises(ValueError, match="gas"):
        signer.sign({k: v for k, v in tx.items() if k != "gas"})
    with pytest.raises(ValueError, match="type 2"):
        signer.sign({**tx, "type": 0})
    clear_registry()


# --- fees ------------------------------------------------------------------------------------


def policy(**over: object) -> FeePolicy:
    return FeePolicy(
        FeesConfig(
            **{"max_fee_per_gas": 100 * GWEI, "priority_fee": 2 * GWEI, "bump_percent": 10, **over}
        )
    )


def test_initial_fees() -> None:
    p = policy()
    assert p.initial(10 * GWEI) == Fees(22 * GWEI, 2 * GWEI)  # 2 x base + tip
    assert p.initial(80 * GWEI) == Fees(100 * GWEI, 2 * GWEI)  # capped
    tight = policy(max_fee_per_gas=GWEI, priority_fee=GWEI)
    assert tight.initial(50 * GWEI) == Fees(GWEI, GWEI)  # cap below base: waits at the cap


def test_bumps_are_valid_replacements_until_the_cap() -> None:
    p = policy()
    fees = p.initial(10 * GWEI)
    seen = [fees]
    while (nxt := p.bump(fees, 10 * GWEI)) is not None:
        assert is_valid_replacement(fees, nxt)
        assert nxt.max_fee_per_gas <= 100 * GWEI
        fees = nxt
        seen.append(fees)
    assert 5 < len(seen) < 40
    assert seen[-1].max_fee_per_gas <= 100 * GWEI
    # Exactly +10 % rounds up: 11 -> 13 (ceil 12.1), never a rejected 12.
    assert p.bump(Fees(11, 11), 0) == Fees(13, 13)
    # A zero tip still rises.
    assert p.bump(Fees(GWEI, 0), 0).max_priority_fee_per_gas == 1  # type: ignore[union-attr]
    # Rising base fee: the bump follows it.
    assert p.bump(Fees(22 * GWEI, 2 * GWEI), 40 * GWEI).max_fee_per_gas >= 80 * GWEI  # type: ignore[union-attr]


def test_fees_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        Fees(1, 2)
