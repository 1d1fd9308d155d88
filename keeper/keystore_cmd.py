"""`keeper keystore new|import`: an encrypted keystore (eth-account's Web3 Secret Storage JSON,
scrypt) for the keeper's signer.

The password comes from a file (``--password-file``, one trailing newline dropped, as the keeper
reads it) or an environment variable (``--password-env``), never from the command line, and is
never printed or logged. ``import`` reads the private key the same way (``--key-file`` or
``--key-env``). The keystore is written with mode 0600 and never over an existing file; the
command prints the address and the ``[signer]`` section that uses the keystore, nothing secret.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from keeper.margin_cmd import printable
from keeper.secrets import Secret, register_secret, scrub

#: A password shorter than this is refused: the keystore is the key's only protection at rest.
MIN_PASSWORD_LENGTH = 8


class KeystoreCommandError(RuntimeError):
    """Bad input to `keeper keystore` (named in one line; nothing is written)."""


def _password(
    password_file: Path | None, password_env: str | None, environ: Mapping[str, str]
) -> Secret[str]:
    from keeper.config import SignerConfig
    from keeper.signer import read_password

    if (password_file is None) == (password_env is None):
        raise KeystoreCommandError("give exactly one of --password-file or --password-env")
    cfg = SignerConfig(
        keystore=Path("unused"), password_file=password_file, password_env=password_env
    )
    password = read_password(cfg, environ)
    register_secret(password)
    if len(password.reveal()) < MIN_PASSWORD_LENGTH:
        raise KeystoreCommandError(f"the password is shorter than {MIN_PASSWORD_LENGTH} characters")
    return password


def _key(key_file: Path | None, key_env: str | None, environ: Mapping[str, str]) -> Secret[bytes]:
    if (key_file is None) == (key_env is None):
        raise KeystoreCommandError("give exactly one of --key-file or --key-env")
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise KeystoreCommandError(f"cannot read key file {key_file}") from None
        source = f"key file {key_file}"
    else:
        assert key_env is not None
        text = environ.get(key_env, "").strip()
        if not text:
            raise KeystoreCommandError(f"environment variable {key_env} is not set")
        source = f"environment variable {key_env}"
    register_secret(text)
    try:
        raw = bytes.fromhex(text.removeprefix("0x").removeprefix("0X"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeystoreCommandError(f"{source} does not hold a 32-byte hex private key")
    return Secret(raw)


def _write(out: Path, key: Secret[bytes], password: Secret[str]) -> str:
    from eth_account import Account

    from keeper.signer import Signer

    address = Signer(key).address  # validates the key and registers it as a secret
    blob = Account.encrypt(key.reveal(), password.reveal())  # scrypt, as geth writes them
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreCommandError(f"{out} exists: a keystore is never overwritten") from None
    except OSError as exc:
        raise KeystoreCommandError(f"cannot create {out}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        json.dump(blob, fh)
        fh.write("\n")
    return address


def run(
    action: str,
    *,
    out: Path,
    password_file: Path | None,
    password_env: str | None,
    key_file: Path | None = None,
    key_env: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    from keeper.signer import KeystoreError

    env = os.environ if environ is None else environ
    try:
        if out.exists():
            raise KeystoreCommandError(f"{out} exists: a keystore is never overwritten")
        password = _password(password_file, password_env, env)
        key = Secret(os.urandom(32)) if action == "new" else _key(key_file, key_env, env)
        address = _write(out, key, password)
    except (KeystoreCommandError, KeystoreError) as exc:
        sys.stderr.write(f"error: {type(exc).__name__}: {printable(scrub(str(exc)))}\n")
        return 1
    source = (
        f'password_file = "{password_file.resolve()}"'
        if password_file is not None
        else f'password_env = "{password_env}"'
    )
    sys.stdout.write(
        f"address {address}\n"
        f"wrote {out} (mode 0600). In the keeper's configuration:\n\n"
        f'[signer]\nkeystore = "{out.resolve()}"\n{source}\n'
    )
    return 0
