"""keeper.secrets + keeper.logs: secrets never reach log lines or exception text."""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections.abc import Iterator

import pytest
from web3 import Web3

from keeper.logs import configure_logging
from keeper.secrets import (
    RedactedError,
    Secret,
    clear_registry,
    redact_url,
    redacting_errors,
    register_secret,
    register_url,
    scrub,
    url_secret_parts,
)

KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
PASSWORD = 'pa"ss\\wörd-42'
API_KEY = "9aa3d95b3bc440fa88ea12eaa4456161"
RPC_URL = f"https://alice:s3cr3t-pw@mainnet.example.io/v3/{API_KEY}?apikey=QWERTY123456&chain=1"
# Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
DEAD_URL = f"http://127.0.0.1:9/v2/{API_KEY}"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("DEBUG", stream)
    yield stream
    logging.getLogger().removeHandler(handler)
    clear_registry()


def test_secret_wrapper_never_prints() -> None:
    s = Secret(KEY)
    assert KEY not in repr(s) and KEY not in str(s) and KEY not in f"{s} {s!r} {s:>80}"
    assert s.reveal() == KEY
    assert s == Secret(KEY) and s != Secret("other")
    assert KEY not in repr({"k": s, "l": [s]})
    with pytest.raises(TypeError):
        pickle.dumps(s)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (RPC_URL, "https://***@mainnet.example.io/***?***"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        (
            "https://eth-mainnet.g.alchemy.com/v2/abcDEF123ghiJKL456mno",
            "https://eth-mainnet.g.alchemy.com/***",
        ),
        ("wss://tok3nonlyxxxxxx@node.example/ws", "wss://***@node.example/***"),
        ("postgresql://keeper:pw@db:5432/keeper", "postgresql://***@db:5432/***"),
        ("https://rpc.example/path?token=abc&x=y", "https://rpc.example/***?***"),
        ("http://[::1]:8545/***", "http://[::1]:8545/***"),
        ("http://host:notaport/x", "***"),
        ("not a url", "***"),
        ("wss://eth.example.org/", "wss://eth.example.org/"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_url_secret_parts() -> None:
    assert set(url_secret_parts(RPC_URL)) == {"alice", "s3cr3t-pw", API_KEY, "QWERTY123456"}
    assert url_secret_parts("http://127.0.0.1:8545/rpc?chain=1") == []


def test_scrub_variants() -> None:
    register_secret(Secret(bytes.fromhex(KEY[2:])))
    register_secret(PASSWORD)
    text = f"k={KEY.upper()} k2={KEY[2:]} p={PASSWORD} j={json.dumps(PASSWORD)}"
    out = scrub(text)
    assert KEY[2:].lower() not in out.lower() and "ss\\wörd" not in out and "wörd" not in out
    register_secret("abc")  # shorter than MIN_SCRUB_LENGTH: not registered
    assert scrub("abc") == "abc"
    clear_registry()
    assert scrub(KEY) == KEY


def test_logs_and_errors_never_hold_secrets(captured: io.StringIO) -> None:
    key = Secret(KEY)
    password = Secret(PASSWORD)
    register_secret(key)
    register_secret(password)
    register_url(RPC_URL)
    register_url(DEAD_URL)
    log = logging.getLogger("keeper.test")

    # Every way a careless caller could log a secret.
    log.info("connecting to %s", RPC_URL)
    log.info(f"key is {KEY} and password {PASSWORD}")
    log.warning("wrapper %s %r", key, password)
    log.info(
        "extra fields",
        extra={"rpc": RPC_URL, "nested": {"pw": PASSWORD, "k": [KEY]}, "wad": 10**30},
    )
    try:
        raise ValueError(f"bad key {KEY} for {RPC_URL}")
    except ValueError:
        log.exception("failure while signing")

    # A real third-party error that quotes the URL (requests' connection error names the path).
    w3 = Web3(Web3.HTTPProvider(DEAD_URL, request_kwargs={"timeout": 2}))
    with pytest.raises(RedactedError) as info, redacting_errors():
        w3.eth.block_number  # noqa: B018
    text = str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "127.0.0.1" in text  # still a useful message
    log.error("rpc failed: %s", text)
    try:
        with redacting_errors():
            w3.eth.block_number  # noqa: B018
    except RedactedError:
        log.exception("rpc failed again")

    output = captured.getvalue()
    every = [json.loads(line) for line in output.splitlines()]
    # web3 itself logs the endpoint URL (with its key) at DEBUG: those lines are scrubbed too.
    assert any(e["logger"].startswith("web3") and "/v2/***" in e["msg"] for e in every)
    lines = [e for e in every if e["logger"] == "keeper.test"]
    assert len(lines) == 7
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    assert lines[3]["wad"] == str(10**30)  # exact, as a string
    assert "exc" in lines[4] and "ValueError" in lines[4]["exc"]
    for needle in (KEY, KEY[2:], PASSWORD, "wörd", API_KEY, "s3cr3t-pw", "QWERTY123456"):
        assert needle.lower() not in output.lower(), needle
        assert needle not in text
    assert "***" in lines[0]["msg"]


def test_our_own_errors_pass_through() -> None:
    class Mine(Exception):
        pass

    with pytest.raises(Mine), redacting_errors(Mine):
        raise Mine("kept as is")
