"""keeper.chain.revert: revert data decoded by selector (pure; protocol errors come from abi/)."""

from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak

from keeper.chain.revert import decode_revert
from margin.errors import DivisionByZero, ExpOverflow


def test_decodes_standard_and_margin_errors() -> None:
    err = keccak(text="Error(string)")[:4] + encode(["string"], ["too late"])
    assert str(decode_revert(err)) == "Error(message=too late)"
    assert str(decode_revert(DivisionByZero().revert_data())) == "DivisionByZero()"
    dec = decode_revert(ExpOverflow(-5).revert_data())
    assert (dec.name, dec.args) == ("ExpOverflow", (-5,))
    assert isinstance(dec.margin_error(), ExpOverflow)
    assert decode_revert(None).name == decode_revert(b"").name == "<empty>"
    assert decode_revert(b"\x12\x34\x56\x78\x00").name == "<unknown>"
    # A known selector with a malformed body is not mis-decoded.
    assert decode_revert(ExpOverflow.selector() + b"\x01").name == "<unknown>"


def test_decodes_protocol_errors_from_abi() -> None:
    data = keccak(text="StaleAccountNonce(uint256,uint64,uint64)")[:4] + encode(
        ["uint256", "uint64", "uint64"], [7, 3, 4]
    )
    dec = decode_revert(data)
    assert dec.name == "StaleAccountNonce" and dec.args == (7, 3, 4)
