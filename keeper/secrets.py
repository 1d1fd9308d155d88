"""Secrets that must never reach a log line, an exception message or the store.

Three layers, because any single one can be bypassed by accident:

1. ``Secret``: a wrapper whose ``repr``/``str``/``format`` print ``***``; the value comes out only
   through ``reveal()``, so a secret that ends up in an f-string, a dataclass repr or a pydantic
   model dump shows as ``***``.
2. ``redact_url``: RPC and database URLs carry credentials in the userinfo, in API-key path
   segments (``/v3/<key>``) and in query parameters (``?apikey=``); this helper prints a URL with
   all three masked.
3. A process-wide registry of secret *values* (``register_secret``) and ``scrub(text)``, which
   masks every registered value wherever it appears: the logging filter, the JSON formatter,
   ``redacting_errors`` and the store's free-text columns all pass through it. This catches the
   value when it leaks through a third-party message we do not control (a requests error quoting
   the URL, a web3 error quoting the endpoint).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Generic, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

T = TypeVar("T")

MASK = "***"

#: Registered values shorter than this are not scrubbed from free text: masking every "abc"
#: in every log line would destroy the logs while protecting nothing worth a secret.
MIN_SCRUB_LENGTH = 4

#: Query parameter names whose value is a credential (compared lower-case, without - and _).
_SECRET_QUERY_KEYS = frozenset(
    {
        "key",
        "apikey",
        "apitoken",
        "token",
        "accesstoken",
        "secret",
        "password",
        "pass",
        "auth",
        "authorization",
        "sig",
        "signature",
        "projectid",
        "projectsecret",
        "clientsecret",
    }
)

#: A path segment that looks like an API key: 16+ URL-safe characters with both letters and
#: digits (Infura ``/v3/<32 hex>``, Alchemy ``/v2/<key>``, QuickNode ``/<token>/``). Ordinary
#: path words ("v3", "mainnet", "rpc", "ext/bor") never match.
_KEYLIKE_SEGMENT = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9_\-]{16,}$")


class Secret(Generic[T]):
    """A value that prints as ``***``. ``reveal()`` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> NoReturn:
        # Pickling would write the value out (to a cache, a queue, a core file): refuse.
        raise TypeError("a Secret cannot be pickled")


# --- URLs ------------------------------------------------------------------------------------


def _is_secret_query_key(name: str) -> bool:
    return name.lower().replace("-", "").replace("_", "") in _SECRET_QUERY_KEYS


def url_secret_parts(url: str) -> list[str]:
    """The credential parts of ``url``: userinfo password (and user, when a password is given),
    key-like path segments and the values of credential query parameters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if parts.password:
        found.append(parts.password)
        if parts.username:
            found.append(parts.username)
    elif parts.username:
        # "https://<token>@host": a bare userinfo is a token (e.g. a basic-auth API key).
        found.append(parts.username)
    found += [seg for seg in parts.path.split("/") if _KEYLIKE_SEGMENT.match(seg)]
    found += [
        v
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if v and (_is_secret_query_key(k) or _KEYLIKE_SEGMENT.match(v))
    ]
    return found


def redact_url(url: str) -> str:
    """``url`` with userinfo, the whole path and the query string masked.

    Hosted RPCs put API keys in any of the three (``user:pass@``, ``/v3/<key>``, ``?apikey=``)
    and no pattern recognises every key, so nothing of them is shown: scheme, host and port are
    what an operator needs to tell endpoints apart. Unparseable input is masked whole.
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return MASK
    host = parts.hostname or ""
    if not parts.scheme or not host:
        return MASK
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    path = f"/{MASK}" if parts.path not in ("", "/") else parts.path
    query = MASK if parts.query else ""
    return urlunsplit((parts.scheme, netloc, path, query, ""))


# --- the registry ----------------------------------------------------------------------------


class _Registry:
    """Secret values to mask in free text, compiled into one case-insensitive pattern.

    Case-insensitive because hex secrets (private keys) are printed in either case, and a key is
    registered both with and without its 0x prefix by the signer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if len(value) < MIN_SCRUB_LENGTH:
            return
        with self._lock:
            if value in self._values:
                return
            self._values.add(value)
            # Longest first, so a secret containing another is masked whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None

    def scrub(self, text: str) -> str:
        pattern = self._pattern  # one read: a concurrent add() swaps in a complete pattern
        return pattern.sub(MASK, text) if pattern is not None else text


_REGISTRY = _Registry()


def register_secret(value: str | bytes | Secret[str] | Secret[bytes]) -> None:
    """Mask ``value`` in everything that passes through ``scrub`` from now on.

    Bytes are registered as hex (with and without ``0x``) and, when they decode, as text.
    """
    raw = value.reveal() if isinstance(value, Secret) else value
    if isinstance(raw, bytes):
        _REGISTRY.add(raw.hex())
        _REGISTRY.add("0x" + raw.hex())
        with suppress(UnicodeDecodeError):
            _REGISTRY.add(raw.decode())
        return
    _REGISTRY.add(raw)
    if raw.startswith(("0x", "0X")):
        _REGISTRY.add(raw[2:])
    # A password with characters that JSON or URLs escape could leak in its escaped form.
    from urllib.parse import quote

    escaped = (
        quote(raw, safe=""),
        raw.encode("unicode_escape").decode("ascii"),
        json.dumps(raw)[1:-1],
        json.dumps(raw, ensure_ascii=False)[1:-1],
    )
    for variant in escaped:
        if variant != raw:
            _REGISTRY.add(variant)


def register_url(url: str) -> None:
    """Register the credential parts of a URL (see ``url_secret_parts``)."""
    for part in url_secret_parts(url):
        register_secret(part)


def register_many(values: Iterable[str]) -> None:
    for value in values:
        register_secret(value)


def clear_registry() -> None:
    """Forget every registered value (tests only: in a service secrets stay registered)."""
    _REGISTRY.clear()


def scrub(text: str) -> str:
    """``text`` with every registered secret value masked."""
    return _REGISTRY.scrub(text)


# --- exceptions ------------------------------------------------------------------------------


class RedactedError(RuntimeError):
    """An error from a third party, re-raised with its message scrubbed and its chain cut.

    ``type_name`` keeps the original exception's class name, which carries no secret.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


@contextmanager
def redacting_errors(*passthrough: type[BaseException]) -> Iterator[None]:
    """Re-raise any exception from the block as ``RedactedError`` with a scrubbed message.

    ``raise ... from None`` drops ``__cause__``/``__context__``: a traceback printer would
    otherwise print the original, unscrubbed message of the chained exception. Exceptions of the
    ``passthrough`` types (our own, whose messages are built without secrets) pass unchanged.
    """
    try:
        yield
    except passthrough:
        raise
    except Exception as exc:
        raise RedactedError(type(exc).__name__, scrub(str(exc))) from None
