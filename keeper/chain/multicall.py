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
#: Calldata (hex characters) per JSON-RPC batch: a node caps a request's body (anvil's HTTP
#: server at 2 MiB: a larger batch is refused, or the connection closed while it is sent, as
#: the first read of a 100,000-account book found), so a batch also ends before this many.
BATCH_HEX_CHARS = 1 << 20

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


def _batches(requests: list[tuple[str, list[Any]]], most: int) -> list[list[Any]]:
    """The requests in order, cut into batches of at most ``most`` requests and (but for a
    single larger request) ``BATCH_HEX_CHARS`` of calldata."""
    out: list[list[Any]] = []
    size = 0
    for req in requests:
        n = len(req[1][0]["data"])
        if not out or len(out[-1]) >= most or size + n > BATCH_HEX_CHARS:
            out.append([])
            size = 0
        out[-1].append(req)
        size += n
    return out


def multicall(
    rpc: Rpc,
    multicall_address: str,
    block: BlockRef,
    calls: Sequence[Call],
    *,
    calls_per_multicall: int = CALLS_PER_MULTICALL,
    multicalls_per_batch: int = MULTICALLS_PER_BATCH,
    trips: list[int] | None = None,
) -> list[CallResult]:
    """Run every call at ``block``: ceil(len/calls_per_multicall) aggregate3 eth_calls, sent
    in ceil(that/multicalls_per_batch) JSON-RPC batches (round trips), more when their
    calldata would exceed ``BATCH_HEX_CHARS`` in one batch.

    Each aggregate3 also returns the block number it ran at; an answer from another block's
    state is read again (at most ``BLOCK_MISMATCH_ATTEMPTS`` times in all), then refused with
    BlockStateMismatch -- never mixed into the result. ``trips``: the number of JSON-RPC
    batches of each attempt is appended to it."""
    chunks = [
        list(calls[i : i + calls_per_multicall]) for i in range(0, len(calls), calls_per_multicall)
    ]
    for attempt in range(1, BLOCK_MISMATCH_ATTEMPTS + 1):
        try:
            return _multicall_once(
                rpc, multicall_address, block, chunks, multicalls_per_batch, trips
            )
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
    trips: list[int] | None,
) -> list[CallResult]:
    requests = []
    for chunk in chunks:
        args = [(multicall_address, False, GET_BLOCK_NUMBER)]
        args += [(c.target, True, c.fn.encode(*c.args)) for c in chunk]
        data = AGGREGATE3 + encode_aggregate3(args)
        tx = {"to": multicall_address, "data": "0x" + data.hex()}
        requests.append(("eth_call", [tx, block.rpc_param()]))
    replies: list[dict[str, Any]] = []
    groups = _batches(requests, multicalls_per_batch)
    if trips is not None:
        trips.append(len(groups))
    for group in groups:
        replies += rpc.batch(group)
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
