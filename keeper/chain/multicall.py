"""ABI encoding of the reads, and Multicall3.aggregate3 batching pinned to one block.

Why Multicall3 *and* JSON-RPC batches: one ``aggregate3`` eth_call runs many view calls in one
EVM execution, so they necessarily see one state; the node's per-call gas cap (geth 50M by
default) bounds how many fit, so a large account list is split into several aggregate3 calls,
and those go to the node as ONE JSON-RPC batch (one HTTP round trip), each pinned to the same
block by hash (EIP-1898, ``requireCanonical``). Round trips per block therefore stay constant
in the number of accounts, and per-call gas stays bounded. Hosted RPCs that count each batch
element as a request are charged ceil(calls / calls_per_multicall) requests, not one per read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi import decode, encode
from eth_utils import function_signature_to_4byte_selector
from eth_utils.abi import collapse_if_tuple

from keeper.abi import ABI_DIR
from keeper.chain.abi_words import (
    decode_aggregate3_results,
    decode_static,
    encode_aggregate3,
    encode_static,
)
from keeper.chain.errors import BatchReadError, BlockNotAvailable, BlockStateMismatch, RpcError
from keeper.chain.revert import decode_revert
from keeper.chain.rpc import BlockRef, Rpc

log = logging.getLogger(__name__)

#: View calls per aggregate3 eth_call: 400 reads of at most ~90k gas (positionsOf of 40
#: cold slots) stays far below geth's default 50M eth_call gas cap.
CALLS_PER_MULTICALL = 400
#: aggregate3 eth_calls per JSON-RPC batch (one HTTP request).
MULTICALLS_PER_BATCH = 100

AGGREGATE3 = function_signature_to_4byte_selector("aggregate3((address,bool,bytes)[])")
#: Multicall3.getBlockNumber(): the first call of every aggregate3, so each read proves the
#: block whose state it ran on.
GET_BLOCK_NUMBER = function_signature_to_4byte_selector("getBlockNumber()")
#: Reads again after a node answered for another block than the pinned one (the race is
#: transient: once the pinned block is no longer the head, its state is the stored one).
BLOCK_MISMATCH_ATTEMPTS = 3


@dataclass(frozen=True)
class AbiFn:
    name: str
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def encode(self, *args: Any) -> bytes:
        fast = encode_static(self.inputs, args)
        return self.selector + (fast if fast is not None else encode(list(self.inputs), args))

    def decode(self, data: bytes) -> tuple[Any, ...]:
        fast = decode_static(self.outputs, data)
        return fast if fast is not None else tuple(decode(list(self.outputs), data))


@cache
def abi_functions(*abi_names: str) -> dict[str, AbiFn]:
    """Functions of the named abi/ files by name (first file wins on a clash)."""
    out: dict[str, AbiFn] = {}
    for name in abi_names:
        for e in json.loads((ABI_DIR / f"{name}.json").read_text()):
            if e.get("type") != "function" or e["name"] in out:
                continue
            ins = tuple(collapse_if_tuple(p) for p in e.get("inputs", []))
            outs = tuple(collapse_if_tuple(p) for p in e.get("outputs", []))
            sel = function_signature_to_4byte_selector(f"{e['name']}({','.join(ins)})")
            out[e["name"]] = AbiFn(e["name"], sel, ins, outs)
    return out


@dataclass(frozen=True)
class Call:
    target: str
    fn: AbiFn
    args: tuple[Any, ...] = ()
    required: bool = True  # a failure is a BatchReadError (else it is returned)


@dataclass(frozen=True)
class CallResult:
    call: Call
    ok: bool
    value: tuple[Any, ...] | None  # decoded outputs
    revert: bytes  # revert data when not ok

    def one(self) -> Any:
        assert self.value is not None
        return self.value[0] if len(self.value) == 1 else self.value


def _is_block_error(error: Any) -> bool:
    """Node wordings for an unknown or non-canonical pinned block: anvil "Resource not found",
    geth "header for hash not found" / "... is not currently canonical", erigon "block not
    found". (aggregate3 with allowFailure never reverts, so "not found" is about the block.)"""
    text = str(error).lower()
    return any(s in text for s in ("not found", "canonical", "unknown block"))


def multicall(
    rpc: Rpc,
    multicall_address: str,
    block: BlockRef,
    calls: Sequence[Call],
    *,
    calls_per_multicall: int = CALLS_PER_MULTICALL,
    multicalls_per_batch: int = MULTICALLS_PER_BATCH,
) -> list[CallResult]:
    """Run every call at ``block``: ceil(len/calls_per_multicall) aggregate3 eth_calls, sent
    in ceil(that/multicalls_per_batch) JSON-RPC batches (round trips).

    Each aggregate3 also returns the block number it ran at; an answer from another block's
    state is read again (at most ``BLOCK_MISMATCH_ATTEMPTS`` times in all), then refused with
    BlockStateMismatch -- never mixed into the result."""
    chunks = [
        list(calls[i : i + calls_per_multicall]) for i in range(0, len(calls), calls_per_multicall)
    ]
    for attempt in range(1, BLOCK_MISMATCH_ATTEMPTS + 1):
        try:
            return _multicall_once(rpc, multicall_address, block, chunks, multicalls_per_batch)
        except BlockStateMismatch as exc:
            if attempt == BLOCK_MISMATCH_ATTEMPTS:
                raise
            log.info("read again: %s", exc)
    raise AssertionError("unreachable")


def _multicall_once(
    rpc: Rpc,
    multicall_address: str,
    block: BlockRef,
    chunks: list[list[Call]],
    multicalls_per_batch: int,
) -> list[CallResult]:
    requests = []
    for chunk in chunks:
        args = [(multicall_address, False, GET_BLOCK_NUMBER)]
        args += [(c.target, True, c.fn.encode(*c.args)) for c in chunk]
        data = AGGREGATE3 + encode_aggregate3(args)
        tx = {"to": multicall_address, "data": "0x" + data.hex()}
        requests.append(("eth_call", [tx, block.rpc_param()]))
    replies: list[dict[str, Any]] = []
    for i in range(0, len(requests), multicalls_per_batch):
        replies += rpc.batch(requests[i : i + multicalls_per_batch])
    out: list[CallResult] = []
    for chunk, reply in zip(chunks, replies, strict=True):
        if "error" in reply:
            if _is_block_error(reply["error"]):
                raise BlockNotAvailable(block.number, block.hash, reply["error"])
            raise RpcError("eth_call(aggregate3)", reply["error"])
        raw = bytes.fromhex(reply["result"][2:])
        results = decode_aggregate3_results(raw)
        if results is None:  # malformed: let the generic decoder name the fault
            (results,) = decode(["(bool,bytes)[]"], raw)
        if len(results) != len(chunk) + 1:
            raise BatchReadError(f"aggregate3 returned {len(results)} results for {len(chunk) + 1}")
        (ran,) = decode(["uint256"], bytes(results[0][1]))
        if ran != block.number:
            raise BlockStateMismatch(block.number, ran)
        for call, (ok, ret) in zip(chunk, results[1:], strict=True):
            if not ok:
                if call.required:
                    raise BatchReadError(
                        f"{call.fn.name}{call.args} at {call.target} reverted "
                        f"{decode_revert(ret)} at block {block.number}"
                    )
                out.append(CallResult(call, False, None, bytes(ret)))
                continue
            try:
                value = call.fn.decode(bytes(ret))
            except Exception as exc:
                if call.required:
                    raise BatchReadError(
                        f"{call.fn.name}{call.args} at {call.target}: undecodable return "
                        f"0x{bytes(ret).hex()} ({exc})"
                    ) from None
                out.append(CallResult(call, False, None, bytes(ret)))
                continue
            out.append(CallResult(call, True, value, b""))
    return out
