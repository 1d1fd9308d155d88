"""The differential-test plumbing itself (Batchable.sol + tests/parity.py), on BatchProbe.

Every way a call can end must cross ``batch`` unchanged: values, custom errors, panics,
Error(string) and bare reverts, in order, across chunk boundaries. And a wrong mirror must fail
``assert_parity`` with a readable message.
"""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak
from web3.contract import Contract

from margin.errors import ArithmeticOverflow, ExpOverflow, PanicDivisionByZero
from tests.parity import (
    Outcome,
    assert_parity,
    batch_call,
    check_parity,
    describe_revert,
    python_outcome,
)

INT_MIN = -(2**255)
INT_MAX = 2**255 - 1

pytestmark = pytest.mark.anvil


def checked_mul(a: int, b: int) -> int:
    """Python mirror of Solidity's checked int256 `a * b`."""
    r = a * b
    if not INT_MIN <= r <= INT_MAX:
        raise ArithmeticOverflow()
    return r


def checked_div(a: int, b: int) -> int:
    """Python mirror of Solidity's checked int256 `a / b` (truncates toward zero)."""
    if b == 0:
        raise PanicDivisionByZero()
    if a == INT_MIN and b == -1:
        raise ArithmeticOverflow()
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def test_values_come_back_in_order_across_chunks(batch_probe: Contract) -> None:
    xs = [i * 7919 - 10_000 for i in range(2_345)] + [INT_MIN, INT_MAX, 0]
    got = batch_call(batch_probe, "echo", xs, chunk=1000)  # 3 eth_calls
    assert got == [Outcome(True, x) for x in xs]


def test_custom_error_data_is_passed_through(batch_probe: Contract) -> None:
    sel = keccak(text="ProbeError(int256)")[:4]
    got = batch_call(batch_probe, "fail", [-1, 0, INT_MAX])
    assert got == [Outcome(False, revert=sel + encode(["int256"], [x])) for x in (-1, 0, INT_MAX)]
    assert describe_revert(got[0].revert).startswith("unknown error 0x" + sel.hex())


def test_panics_match_python_panic_classes(batch_probe: Contract) -> None:
    big = 2**128
    mul_cases = [(2, 3), (-2, 3), (big, big), (-big, big), (INT_MIN, -1), (INT_MAX, 1)]
    mul_cases.append((0, INT_MIN))
    tally = check_parity(batch_probe, "checkedMul", checked_mul, mul_cases)
    assert tally == {"ok": 4, "Panic(0x11)": 3}
    div_cases = [(7, 2), (-7, 2), (7, -2), (1, 0), (INT_MIN, -1), (INT_MIN, 1), (0, 0)]
    tally = check_parity(batch_probe, "checkedDiv", checked_div, div_cases)
    assert tally == {"ok": 4, "Panic(0x12)": 2, "Panic(0x11)": 1}
    assert python_outcome(checked_div, 1, 0).revert == PanicDivisionByZero().revert_data()


def test_error_string_bare_revert_and_tuples(batch_probe: Contract) -> None:
    (msg,) = batch_call(batch_probe, "message", [1])
    assert not msg.ok and describe_revert(msg.revert) == "Error('probe message')"
    assert batch_call(batch_probe, "bareRevert", [5]) == [Outcome(False, revert=b"")]
    assert batch_call(batch_probe, "pair", [(1, -2)]) == [Outcome(True, (-2, 1))]


def test_a_wrong_mirror_fails_with_a_readable_report(batch_probe: Contract) -> None:
    def floor_div(a: int, b: int) -> int:  # the classic bug: Python // floors, sdiv truncates
        if b == 0:
            raise PanicDivisionByZero()
        return a // b

    cases = [(7, 2), (-7, 2), (1, 0), (-9, 4)]
    with pytest.raises(AssertionError) as info:
        check_parity(batch_probe, "checkedDiv", floor_div, cases)
    report = str(info.value)
    assert "2 of 4 outcomes differ" in report
    assert "checkedDiv(-7, 2)" in report
    assert "solidity: returned -3" in report and "python:   returned -4" in report
    assert "python - solidity = -1 wei" in report


def test_mirror_exceptions_are_reported_not_raised(batch_probe: Contract) -> None:
    def broken(a: int, b: int) -> int:
        raise ZeroDivisionError("integer division or modulo by zero")

    with pytest.raises(AssertionError, match="python raised ZeroDivisionError"):
        check_parity(batch_probe, "checkedDiv", broken, [(1, 1)])


def test_named_errors_and_panics_are_decoded() -> None:
    assert describe_revert(ExpOverflow(136 * 10**18).revert_data()).startswith("ExpOverflow(")
    assert describe_revert(ArithmeticOverflow().revert_data()) == "Panic(0x11) [ArithmeticOverflow]"
    outcomes = [Outcome(True, 1)]
    with pytest.raises(AssertionError, match="length mismatch"):
        assert_parity("f", [1, 2], outcomes, outcomes)


def test_a_thousand_calls_fit_in_one_eth_call(math_harness: Contract) -> None:
    # The heaviest primitives (~3,000 gas each): 1,000 of them are one request, no chunking.
    from margin.fixed_point import ln_wad
    from margin.normal_dist import cdf_wad

    xs = [10**18 + i * 10**15 for i in range(1000)]
    assert check_parity(math_harness, "lnWad", ln_wad, xs, chunk=1000) == {"ok": 1000}
    zs = [i * 10**16 - 5 * 10**18 for i in range(1000)]
    assert check_parity(math_harness, "cdf", cdf_wad, zs, chunk=1000) == {"ok": 1000}
