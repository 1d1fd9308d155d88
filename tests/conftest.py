"""Shared fixtures: one anvil per pytest-xdist worker (session scope), web3, deployed harnesses.

``pytest`` alone works after bootstrap: if contracts/out is missing or older than
contracts/src, the first fixture that needs artifacts runs ``forge build --offline`` once,
under a file lock shared by all xdist workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract

from keeper.artifacts import deploy, ensure_built
from keeper.devnet import Anvil

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
