"""keeper.reverts: revert data decoded by selector."""

from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak

from keeper.reverts import decode_revert, errors_from_abi
from margin.errors import DivisionByZero, ExpOverflow


def test_decodes_standard_and_margin_errors() -> None:
    err = keccak(text="Error(string)")[:4] + encode(["string"], ["too late"])
    assert decode_revert(err) == "Error('too late')"
    panic = keccak(text="Panic(uint256)")[:4] + encode(["uint256"], [0x11])
    assert decode_revert("0x" + panic.hex()) == "Panic(0x11)"
    assert decode_revert(DivisionByZero().revert_data()) == "DivisionByZero()"
    assert decode_revert(ExpOverflow(-5).revert_data()) == "ExpOverflow(-5)"
    assert decode_revert(b"") == decode_revert(None) == "reverted without data"
    assert decode_revert(b"\x12\x34\x56\x78\x00") == "unknown error 0x1234567800"
    # A known selector with a malformed body is shown raw, not mis-decoded.
    assert decode_revert(ExpOverflow.selector() + b"\x01").startswith("unknown error 0x")


def test_errors_from_abi() -> None:
    abi = [
        {"type": "error", "name": "StaleNonce", "inputs": [{"type": "uint64"}, {"type": "uint64"}]},
        {"type": "function", "name": "f", "inputs": []},
    ]
    extra = errors_from_abi(abi)
    data = keccak(text="StaleNonce(uint64,uint64)")[:4] + encode(["uint64", "uint64"], [3, 4])
    assert decode_revert(data, extra) == "StaleNonce(3, 4)"
    assert decode_revert(data).startswith("unknown error")
