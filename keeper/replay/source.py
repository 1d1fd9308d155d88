"""Where the replay reads the chain: a node by RPC URL, or anvil started from a state dump.

A state dump serves history only if it carries anvil's *historical states*: anvil 1.7 writes
them only in the dump it makes **on exit** (``--dump-state FILE`` or ``--state FILE``) when it
was started with ``--preserve-historical-states``. ``anvil_dumpState`` (the RPC) never includes
them, and a dump without them answers only for its last block ("BlockOutOfRangeError" before
it). The dump is loaded with ``--load-state`` (never ``--state``, which would overwrite the
auditor's file on exit); blocks, hashes, receipts and logs survive the round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from keeper.chain import Chain, ChainError, DeploymentMismatch, RpcUnavailable
from keeper.deployment import Deployment, DeploymentError, load_deployment
from keeper.devnet.anvil import Anvil, AnvilError, AnvilStartError
from keeper.replay.errors import (
    ChainMismatch,
    DeploymentFileNotFound,
    DeploymentFileUnusable,
    NodeUnavailable,
    SourceRequired,
    StateDumpNotFound,
    StateDumpUnusable,
    StateDumpWithoutHistory,
)
from keeper.secrets import redact_url


@dataclass(frozen=True)
class Source:
    chain: Chain
    description: str  # redacted: safe for reports and logs
    #: Oldest block with state (a dump without history serves its last block only).
    oldest_state: int = 0


def read_deployment(path: Path) -> Deployment:
    if not path.is_file():
        raise DeploymentFileNotFound(f"no such file: {path}")
    try:
        return load_deployment(path)
    except DeploymentError as exc:
        raise DeploymentFileUnusable(str(exc)) from None


@dataclass(frozen=True)
class DumpInfo:
    oldest_state: int  # 0 with historical states, else the dump's best block
    chain_id: int | None  # from its signed transactions (None: no transaction carries one)


#: Bytes read at a time when scanning a dump (it may be hundreds of MB: never parsed whole).
DUMP_CHUNK = 1 << 20
_NUMBER = rb'"?(0x[0-9a-fA-F]+|\d+)(?![0-9a-fA-Fx])'
_BEST = re.compile(rb'"best_block_number"\s*:\s*' + _NUMBER)
_HISTORY = re.compile(rb'"historical_states"\s*:\s*([n\[{])\s*([\]}]?)')
_CHAIN_ID = re.compile(rb'"chainId"\s*:\s*' + _NUMBER)


def read_dump(path: Path) -> DumpInfo:
    """What the dump says about itself. anvil started with ``--chain-id X --load-state`` serves
    the dump under chain id X whatever chain it came from, so the chain id is taken from the
    dump's own signed transactions (EIP-155 / typed transactions carry it). The file is
    scanned in chunks for its top-level ``best_block_number`` and ``historical_states`` and
    the first ``chainId``: a dump with history is large, and parsing it whole would cost the
    replay several times its size in memory."""
    if not path.is_file():
        raise StateDumpNotFound(f"no such file: {path}")
    best: int | None = None
    history: bool | None = None
    chain_id: int | None = None
    overlap = 128  # a key split across two chunks is found in the next one
    try:
        with path.open("rb") as f:
            head = f.read(1).lstrip()
            if head != b"{":
                raise ValueError("not a JSON object")
            tail = b""
            while chunk := f.read(DUMP_CHUNK):
                buf = tail + chunk

                def find(rx: re.Pattern[bytes], buf: bytes = buf) -> re.Match[bytes] | None:
                    # A match running into the chunk's end may be cut: the next one has it.
                    m = rx.search(buf)
                    return m if m is not None and m.end() < len(buf) else None

                if best is None and (m := find(_BEST)):
                    best = int(m.group(1).decode(), 0)
                if history is None and (m := find(_HISTORY)):
                    history = m.group(1) != b"n" and not m.group(2)  # null, [] or {}: none
                if chain_id is None and (m := find(_CHAIN_ID)):
                    chain_id = int(m.group(1).decode(), 0)
                tail = buf[-overlap:]
    except (OSError, ValueError) as exc:
        raise StateDumpUnusable(f"{path}: not an anvil state dump ({exc})") from None
    if best is None:
        raise StateDumpUnusable(f"{path}: not an anvil state dump (no best_block_number)")
    return DumpInfo(0 if history else best, chain_id)


def _connect(url: str, deployment: Deployment) -> Chain:
    try:
        return Chain.connect(url, deployment)
    except DeploymentMismatch as exc:
        raise ChainMismatch(str(exc)) from None
    except RpcUnavailable as exc:
        raise NodeUnavailable(str(exc)) from None
    except ChainError as exc:
        raise NodeUnavailable(f"{redact_url(url)}: {exc}") from None


@contextmanager
def open_source(
    deployment: Deployment, *, rpc_url: str | None = None, state_dump: Path | None = None
) -> Iterator[Source]:
    """A verified chain (chain id, code and ABI hashes of the deployment) to replay."""
    if (rpc_url is None) == (state_dump is None):
        raise SourceRequired("give exactly one of --rpc URL or --state-dump FILE")
    if rpc_url is not None:
        chain = _connect(rpc_url, deployment)
        try:
            yield Source(chain, redact_url(rpc_url))
        finally:
            chain.close()
        return
    assert state_dump is not None
    info = read_dump(state_dump)
    if info.chain_id is not None and info.chain_id != deployment.chain_id:
        raise ChainMismatch(
            f"{state_dump} holds chain {info.chain_id}, the deployment file is for chain "
            f"{deployment.chain_id}"
        )
    node = Anvil(chain_id=deployment.chain_id, extra_args=["--load-state", str(state_dump)])
    try:
        node.start()
    except AnvilStartError as exc:
        if "chain id" in str(exc):
            raise ChainMismatch(f"{state_dump}: {str(exc).splitlines()[0]}") from None
        raise StateDumpUnusable(f"{state_dump}: anvil could not load it") from None
    except AnvilError as exc:
        raise NodeUnavailable(str(exc)) from None
    try:
        chain = _connect(node.url, deployment)
        yield Source(chain, f"anvil --load-state {state_dump}", info.oldest_state)
    finally:
        node.stop()


__all__ = ["Source", "StateDumpWithoutHistory", "open_source", "read_deployment"]
