"""Shared fixtures: one anvil per pytest-xdist worker (session scope), web3, deployed harnesses.

``pytest`` alone works after bootstrap: if contracts/out is missing or older than
contracts/src, the first fixture that needs artifacts runs ``forge build --offline`` once,
under a file lock shared by all xdist workers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract

from keeper.artifacts import deploy, ensure_built
from keeper.devnet import Anvil
from tests.pg_private import PrivatePostgres, private_postgres

LOG_DIR = Path(__file__).resolve().parents[1] / "var" / "test-logs"


@pytest.fixture(scope="session")
def contracts_built() -> None:
    """contracts/out is current (built here if stale)."""
    ensure_built()


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with Anvil(log_path=LOG_DIR / f"anvil-{worker}.log") as node:
        yield node


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Web3:
    web3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
    assert web3.eth.chain_id == anvil.chain_id
    return web3


@pytest.fixture(scope="session")
def math_harness(w3: Web3, contracts_built: None) -> Contract:
    return deploy(w3, "MathHarness")


@pytest.fixture(scope="session")
def batch_probe(w3: Web3, contracts_built: None) -> Contract:
    return deploy(w3, "BatchProbe")


#: The PostgreSQL server of the test machines (trust auth); override with KEEPER_TEST_PG_URL.
PG_URL = os.environ.get("KEEPER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty store: a fresh SQLite file, or a fresh PostgreSQL schema (dropped after).

    Without a reachable server the PostgreSQL case is skipped (shown by ``-ra``), unless
    KEEPER_TEST_REQUIRE_PG=1, which makes it fail instead.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keeper.db'}"
        return
    import psycopg

    schema = f"keeper_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("KEEPER_TEST_REQUIRE_PG") == "1":
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            # search_path confines every table of this test to its own schema.
            yield f"{PG_URL}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test alone, which it may stop and restart
    (tests/pg_private.py); skipped without the binaries unless KEEPER_TEST_REQUIRE_PG=1."""
    with private_postgres() as pg:
        yield pg
