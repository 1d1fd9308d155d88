"""Named errors of chain access, and URL redaction (RPC credentials never reach a message).

Start-up verification raises exactly one of these per mismatch, and nothing else is done
after it: a keeper pointed at the wrong chain or at redeployed contracts must not act.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from keeper.secrets import scrub as registry_scrub


class ChainError(RuntimeError):
    """Base of every error of keeper.chain."""


class DeploymentMismatch(ChainError):
    """The node does not serve the deployment the keeper was configured with."""


class WrongChain(DeploymentMismatch):
    def __init__(self, expected: int, actual: int, source: str = "the node") -> None:
        super().__init__(f"{source} says chain id {actual}, the deployment file says {expected}")
        self.expected, self.actual, self.source = expected, actual, source


class NoCodeAtAddress(DeploymentMismatch):
    def __init__(self, name: str, address: str) -> None:
        super().__init__(f"no contract code at {address} ({name}) on this node")
        self.name, self.address = name, address


class CodeHashMismatch(DeploymentMismatch):
    def __init__(self, name: str, address: str, expected: str, actual: str) -> None:
        super().__init__(
            f"code at {address} ({name}) hashes to {actual}, the deployment file says {expected}"
        )
        self.name, self.address, self.expected, self.actual = name, address, expected, actual


class AbiMismatch(DeploymentMismatch):
    def __init__(self, name: str, abi: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{name} was deployed with ABI {abi} sha256 {expected}, the keeper's abi/{abi}.json "
            f"has sha256 {actual}"
        )
        self.name, self.abi, self.expected, self.actual = name, abi, expected, actual


class MissingContract(DeploymentMismatch):
    def __init__(self, name: str) -> None:
        super().__init__(f"the deployment file records no {name}")
        self.name = name


class MissingCodeHash(DeploymentMismatch):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"the deployment file records no code hash for {name} (written by an older "
            "deployer: re-record it)"
        )
        self.name = name


class RpcUnavailable(ChainError):
    """The node did not answer (connection refused, timeout, HTTP error)."""


class RpcTimeout(RpcUnavailable):
    """The node did not answer within the configured timeout (every retry)."""


class RpcRateLimited(RpcUnavailable):
    """The node kept answering HTTP 429; ``retry_after`` is its last Retry-After (seconds)."""

    retry_after: float | None = None


class RpcMalformedReply(RpcUnavailable):
    """The node's answer was cut short, not JSON, or a batch answer with elements missing."""


class RpcError(ChainError):
    """The node answered a JSON-RPC error."""

    def __init__(self, method: str, error: object) -> None:
        super().__init__(f"{method} failed: {error}")
        self.method, self.error = method, error


class BlockNotAvailable(ChainError):
    """The pinned block is unknown to the node or no longer canonical (a reorg)."""

    def __init__(self, number: int, block_hash: str, detail: object = "") -> None:
        super().__init__(f"block {number} {block_hash} is not available on the node: {detail}")
        self.number, self.block_hash = number, block_hash


class HeadBehind(ChainError):
    """The node's head is below a block the keeper has already seen (a lagging RPC)."""

    def __init__(self, head: int, seen: int) -> None:
        super().__init__(f"the node's head {head} is behind block {seen}, already seen")
        self.head, self.seen = head, seen


class BatchReadError(ChainError):
    """A read the keeper cannot do without (a protocol view) reverted or did not decode."""


class BlockStateMismatch(BatchReadError):
    """The node ran a call pinned to block ``pinned`` on the state of block ``ran``.

    Seen on anvil: an eth_call pinned (by hash) to the head block while the next block is
    being mined can run on the new block's state. Every aggregate3 read carries the block
    number it ran at, so a read is never silently taken from another block."""

    def __init__(self, pinned: int, ran: int) -> None:
        super().__init__(f"eth_call ran at block {ran}, pinned {pinned}")
        self.pinned = pinned
        self.ran = ran


_USERINFO = re.compile(r"//[^/@\s]*@")


def secret_fragments(url: str) -> list[str]:
    """Parts of a URL that may carry credentials (to scrub from foreign messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    out = [url]
    for piece in (parts.username, parts.password, parts.query, parts.path):
        if piece and piece not in ("/",):
            out.append(piece)
    return sorted({p for p in out if len(p) >= 3}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with every credential-bearing fragment of ``url`` replaced by ``***``, and
    every secret of the keeper's registry (keeper.secrets) masked too."""
    for piece in secret_fragments(url):
        text = text.replace(piece, "***")
    return registry_scrub(_USERINFO.sub("//***@", text))
