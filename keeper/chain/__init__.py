"""Chain access of the keeper: verified connection, block-pinned batched reads, revert decoding.

See keeper/chain/view.py for the read model and keeper/chain/multicall.py for why reads go
through Multicall3 inside JSON-RPC batches.

Each public name is imported from its module on first use (PEP 562): importing one submodule
(``keeper.chain.errors``, the base of the oracle's errors) loads neither the view nor web3, so
the keeper's pure stage (keeper/pipeline/assess.py) stays free of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keeper.chain.errors import (
        AbiMismatch,
        BatchReadError,
        BlockNotAvailable,
        BlockStateMismatch,
        ChainError,
        CodeHashMismatch,
        DeploymentMismatch,
        HeadBehind,
        MissingCodeHash,
        MissingContract,
        NoCodeAtAddress,
        RpcError,
        RpcMalformedReply,
        RpcRateLimited,
        RpcTimeout,
        RpcUnavailable,
        WrongChain,
    )
    from keeper.chain.revert import DecodedRevert, decode_revert, revert_data_of
    from keeper.chain.rpc import BlockRef, Rpc, make_web3, verify_deployment
    from keeper.chain.transport import RetryingHTTPProvider, RetryPolicy
    from keeper.chain.view import (
        AccountInputs,
        AccountSnapshot,
        Chain,
        ChainView,
        FeedRound,
        OracleError,
        ProtocolSnapshot,
    )
    from keeper.secrets import redact_url

#: Public name -> the module that defines it.
_HOME = {
    "AbiMismatch": "keeper.chain.errors",
    "AccountInputs": "keeper.chain.view",
    "AccountSnapshot": "keeper.chain.view",
    "BatchReadError": "keeper.chain.errors",
    "BlockNotAvailable": "keeper.chain.errors",
    "BlockRef": "keeper.chain.rpc",
    "BlockStateMismatch": "keeper.chain.errors",
    "Chain": "keeper.chain.view",
    "ChainError": "keeper.chain.errors",
    "ChainView": "keeper.chain.view",
    "CodeHashMismatch": "keeper.chain.errors",
    "DecodedRevert": "keeper.chain.revert",
    "DeploymentMismatch": "keeper.chain.errors",
    "FeedRound": "keeper.chain.view",
    "HeadBehind": "keeper.chain.errors",
    "MissingCodeHash": "keeper.chain.errors",
    "MissingContract": "keeper.chain.errors",
    "NoCodeAtAddress": "keeper.chain.errors",
    "OracleError": "keeper.chain.view",
    "ProtocolSnapshot": "keeper.chain.view",
    "RetryPolicy": "keeper.chain.transport",
    "RetryingHTTPProvider": "keeper.chain.transport",
    "Rpc": "keeper.chain.rpc",
    "RpcError": "keeper.chain.errors",
    "RpcMalformedReply": "keeper.chain.errors",
    "RpcRateLimited": "keeper.chain.errors",
    "RpcTimeout": "keeper.chain.errors",
    "RpcUnavailable": "keeper.chain.errors",
    "WrongChain": "keeper.chain.errors",
    "decode_revert": "keeper.chain.revert",
    "make_web3": "keeper.chain.rpc",
    "redact_url": "keeper.secrets",
    "revert_data_of": "keeper.chain.revert",
    "verify_deployment": "keeper.chain.rpc",
}

__all__ = [
    "AbiMismatch",
    "AccountInputs",
    "AccountSnapshot",
    "BatchReadError",
    "BlockNotAvailable",
    "BlockRef",
    "BlockStateMismatch",
    "Chain",
    "ChainError",
    "ChainView",
    "CodeHashMismatch",
    "DecodedRevert",
    "DeploymentMismatch",
    "FeedRound",
    "HeadBehind",
    "MissingCodeHash",
    "MissingContract",
    "NoCodeAtAddress",
    "OracleError",
    "ProtocolSnapshot",
    "RetryPolicy",
    "RetryingHTTPProvider",
    "Rpc",
    "RpcError",
    "RpcMalformedReply",
    "RpcRateLimited",
    "RpcTimeout",
    "RpcUnavailable",
    "WrongChain",
    "decode_revert",
    "make_web3",
    "redact_url",
    "revert_data_of",
    "verify_deployment",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
