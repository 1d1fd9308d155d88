"""Chain access of the keeper: verified connection, block-pinned batched reads, revert decoding.

See keeper/chain/view.py for the read model and keeper/chain/multicall.py for why reads go
through Multicall3 inside JSON-RPC batches.
"""

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
