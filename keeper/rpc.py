"""Connecting to the configured node: HTTP provider with the configured timeout, and the chain id
checked before anything else happens (a keeper signing for the wrong chain must stop at once).

Every error from here quotes the endpoint redacted (``redact_url``) and passes through
``redacting_errors``: a node URL usually carries an API key.
"""

from __future__ import annotations

from web3 import Web3

from keeper.config import RpcConfig
from keeper.secrets import RedactedError, redact_url, redacting_errors, register_url


class WrongChain(RuntimeError):
    """The node serves another chain than the configuration names."""

    def __init__(self, url: str, expected: int, found: int) -> None:
        super().__init__(f"node {redact_url(url)} serves chain id {found}, expected {expected}")
        self.expected = expected
        self.found = found


class NodeUnreachable(RuntimeError):
    """The node did not answer (connection refused, timeout, HTTP error)."""


def connect(rpc: RpcConfig) -> Web3:
    """A Web3 over HTTP to ``rpc.url`` whose chain id has been checked."""
    register_url(rpc.url)
    w3 = Web3(Web3.HTTPProvider(rpc.url, request_kwargs={"timeout": rpc.timeout_seconds}))
    try:
        with redacting_errors():
            found = w3.eth.chain_id
    except RedactedError as exc:
        raise NodeUnreachable(f"node {redact_url(rpc.url)} did not answer: {exc}") from None
    if found != rpc.chain_id:
        raise WrongChain(rpc.url, rpc.chain_id, found)
    return w3
