"""Local signing: a key from an encrypted keystore (password in a file or an environment
variable) or from an environment variable. Transactions are signed here and only the signed
bytes ever leave the process, so a hosted RPC never sees (or needs) the key.

Every error names the *source* (path, variable name), never the content: a wrong password, a
malformed key or a corrupt keystore all raise ``KeystoreError`` with the cause chain cut, so no
traceback can print the password or key material that a library put into its own message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from keeper.config import SignerConfig
from keeper.secrets import Secret, register_secret

#: A keystore is ~500 bytes of JSON; anything far bigger is not one.
MAX_KEYSTORE_BYTES = 64 * 1024


class KeystoreError(RuntimeError):
    """The signing key could not be loaded (wrong password, bad file, missing variable)."""


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    hash: str  # 0x-prefixed lower-case hex
    nonce: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


class Signer:
    """An address and the means to sign for it. Its repr shows the address only."""

    def __init__(self, key: Secret[bytes]) -> None:
        raw = key.reveal()
        if len(raw) != 32:
            raise KeystoreError("a private key must be 32 bytes")
        register_secret(key)  # masked from here on in every log line, error and stored text
        try:
            self._account: LocalAccount = Account.from_key(raw)
        except Exception:
            raise KeystoreError("not a valid secp256k1 private key") from None
        self.address: str = self._account.address

    def __repr__(self) -> str:
        return f"Signer({self.address})"

    def sign(self, tx: Mapping[str, Any]) -> SignedTx:
        """Sign an EIP-1559 (type 2) transaction dict (web3 field names)."""
        fields = dict(tx)
        fields.setdefault("type", 2)
        if fields["type"] != 2:
            raise ValueError("only EIP-1559 (type 2) transactions are signed here")
        for name in ("nonce", "chainId", "gas", "maxFeePerGas", "maxPriorityFeePerGas"):
            if name not in fields:
                raise ValueError(f"transaction field {name} is required")
        signed = self._account.sign_transaction(fields)
        return SignedTx(
            raw=bytes(signed.raw_transaction),
            hash="0x" + bytes(signed.hash).hex(),
            nonce=int(fields["nonce"]),
            max_fee_per_gas=int(fields["maxFeePerGas"]),
            max_priority_fee_per_gas=int(fields["maxPriorityFeePerGas"]),
        )

    # --- loading -----------------------------------------------------------------------------

    @classmethod
    def from_keystore(cls, path: Path, password: Secret[str]) -> Signer:
        register_secret(password)
        try:
            with path.open("rb") as fh:
                blob = fh.read(MAX_KEYSTORE_BYTES + 1)
        except OSError as exc:
            raise KeystoreError(f"cannot read keystore {path}: {exc.strerror or exc}") from None
        if len(blob) > MAX_KEYSTORE_BYTES:
            raise KeystoreError(f"keystore {path} is too large to be a keystore")
        try:
            keyfile = json.loads(blob)
            if not isinstance(keyfile, dict) or "crypto" not in {k.lower() for k in keyfile}:
                raise ValueError
        except ValueError:
            raise KeystoreError(f"keystore {path} is not a keystore JSON file") from None
        try:
            key = Account.decrypt(keyfile, password.reveal())
        except ValueError:
            # eth-keyfile says "MAC mismatch" for a wrong password: no content, but cut the
            # chain anyway, a future version might quote more.
            raise KeystoreError(
                f"cannot decrypt keystore {path}: wrong password or corrupted file"
            ) from None
        except Exception:
            raise KeystoreError(f"keystore {path} is malformed or uses an unknown cipher") from None
        return cls(Secret(bytes(key)))

    @classmethod
    def from_env(cls, var: str, environ: Mapping[str, str] | None = None) -> Signer:
        env = os.environ if environ is None else environ
        value = env.get(var)
        if not value:
            raise KeystoreError(f"environment variable {var} holding the private key is not set")
        register_secret(value.strip())
        text = value.strip().removeprefix("0x").removeprefix("0X")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise KeystoreError(f"environment variable {var} is not a hex private key") from None
        if len(raw) != 32:
            raise KeystoreError(f"environment variable {var} is not a 32-byte hex private key")
        return cls(Secret(raw))


def read_password(config: SignerConfig, environ: Mapping[str, str] | None = None) -> Secret[str]:
    """The keystore password from its file (one trailing newline dropped) or variable."""
    env = os.environ if environ is None else environ
    if config.password_file is not None:
        try:
            text = config.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise KeystoreError(
                f"cannot read password file {config.password_file}: {reason}"
            ) from None
        return Secret(text.removesuffix("\n").removesuffix("\r"))
    if config.password_env is not None:
        value = env.get(config.password_env)
        if value is None:
            raise KeystoreError(f"environment variable {config.password_env} is not set")
        return Secret(value)
    raise KeystoreError("no keystore password source configured")


def load_signer(config: SignerConfig, environ: Mapping[str, str] | None = None) -> Signer:
    """The signer the configuration names (a keystore or a key variable)."""
    if config.key_env is not None:
        return Signer.from_env(config.key_env, environ)
    assert config.keystore is not None  # SignerConfig guarantees one source
    return Signer.from_keystore(config.keystore, read_password(config, environ))
