"""Hypothesis strategies for signed WAD inputs that reach every region of a primitive's domain:
tiny wei values, WAD-scale values, huge magnitudes up to int256's limits, and the boundaries
where a primitive starts to fail (overflowing products, exp/sqrt limits, zero divisors)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from web3.contract import Contract

from margin.fixed_point import EXP_MAX_WAD, EXP_MIN_WAD, SQRT_MAX_WAD, WAD
from tests.parity import check_parity

INT_MIN = -(2**255)
INT_MAX = 2**255 - 1

#: Hand-picked values where behaviour changes; every edge test starts from these.
EDGE_VALUES: list[int] = sorted(
    {
        *(s * v for s in (1, -1) for v in (0, 1, 2, 3, 999_999_999_999_999_999)),
        *(s * (WAD + d) for s in (1, -1) for d in (-1, 0, 1)),
        *(s * v for s in (1, -1) for v in (2 * WAD, WAD // 2, 10**9, 10**27, 10**36, 10**59)),
        *(s * (2**b + d) for s in (1, -1) for b in (127, 128, 196) for d in (-1, 0, 1)),
        INT_MIN, INT_MIN + 1, INT_MAX, INT_MAX - 1, INT_MIN // WAD, INT_MAX // WAD,
        SQRT_MAX_WAD, SQRT_MAX_WAD + 1,
    }
)  # fmt: skip


def clamp(x: int) -> int:
    return max(INT_MIN, min(INT_MAX, x))


def log_uniform(max_bits: int = 255, signed: bool = True) -> st.SearchStrategy[int]:
    """|x| < 2**bits with bits uniform in [0, max_bits]: every magnitude equally likely."""
    magnitude = st.integers(0, max_bits).flatmap(lambda b: st.integers(0, 2**b - 1 if b else 0))
    if not signed:
        return magnitude
    # Negative side reaches INT_MIN: -(m + 1) for m in [0, 2**255 - 1].
    return st.tuples(magnitude, st.booleans()).map(lambda t: -t[0] - 1 if t[1] else t[0])


def int256_mixed() -> st.SearchStrategy[int]:
    """The whole int256 range, weighted toward the magnitudes that matter."""
    return st.one_of(
        st.integers(-(10**6), 10**6),  # a few wei
        st.integers(-1000 * WAD, 1000 * WAD),  # WAD scale
        log_uniform(),  # every magnitude
        st.integers(INT_MIN, INT_MAX),  # uniform: nearly always huge
        st.sampled_from(EDGE_VALUES),
    )


def _near_overflow_pair(a: int, delta: int, neg: bool) -> tuple[int, int]:
    """(a, b) with |a·b| within |a|·|delta| of the int256 limit: on both sides of it."""
    a = a or 1
    limit = INT_MIN if neg else INT_MAX
    b = clamp(abs(limit) // abs(a) + delta)
    if (limit < 0) != (a < 0):
        b = -b
    return a, clamp(b)


def mul_pairs() -> st.SearchStrategy[tuple[int, int]]:
    return st.one_of(
        st.tuples(int256_mixed(), int256_mixed()),
        st.builds(_near_overflow_pair, log_uniform(), st.integers(-2, 2), st.booleans()),
    )


def div_pairs() -> st.SearchStrategy[tuple[int, int]]:
    """(a, b) for a·1e18/b: a near INT_MAX/1e18 (the a·1e18 overflow), b sometimes 0."""
    a = st.one_of(
        int256_mixed(),
        st.integers(-3, 3).map(lambda d: INT_MAX // WAD + d),
        st.integers(-3, 3).map(lambda d: INT_MIN // WAD + d),
    )
    b = st.one_of(int256_mixed(), st.sampled_from([0, 1, -1, WAD, -WAD]))
    return st.tuples(a, b)


def mul_div_triples() -> st.SearchStrategy[tuple[int, int, int]]:
    """(a, b, c): random, near-overflow products, zero divisors, and MIN / -1 quotients."""
    c = st.one_of(int256_mixed(), st.sampled_from([0, 1, -1, 2, -2, WAD, -WAD]))
    near = st.builds(_near_overflow_pair, log_uniform(), st.integers(-2, 2), st.booleans())
    return st.one_of(
        st.tuples(int256_mixed(), int256_mixed(), c),
        st.tuples(near, c).map(lambda t: (*t[0], t[1])),
        # a·b = INT_MIN exactly: with c = -1 the quotient 2**255 leaves int256.
        st.tuples(st.integers(1, 254), c).map(lambda t: (-(2 ** t[0]), 2 ** (255 - t[0]), t[1])),
    )


def exp_inputs() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(EXP_MIN_WAD - WAD, EXP_MAX_WAD + WAD),  # the working domain and just beyond
        st.integers(-1000, 1000).map(lambda d: EXP_MAX_WAD + d),
        st.integers(-1000, 1000).map(lambda d: EXP_MIN_WAD + d),
        st.integers(-10 * WAD, 10 * WAD),
        int256_mixed(),
    )


def _sqrt2_boundary(k: int, d: int) -> int:
    """x whose normalized mantissa sits at round(sqrt2·2**96) ± d: ln's centre (s = 0, where s
    changes sign)."""
    m = 112_045_541_949_572_279_837_463_876_455 + d
    return m >> (96 - k) if k < 96 else m << (k - 96)


def ln_inputs() -> st.SearchStrategy[int]:
    return st.one_of(
        log_uniform(max_bits=255, signed=False).map(lambda x: x or 1),
        st.integers(WAD - 10**6, WAD + 10**6),  # ln near 0
        st.integers(1, 10**4),
        st.integers(-(10**6), 0),  # non-positive: LnOfNonPositive
        st.builds(_sqrt2_boundary, st.integers(97, 254), st.integers(-2, 2)),
        int256_mixed(),
    )


def _perfect_square_neighbour(k: int, sign: int, d: int) -> int:
    """x with x·1e18 ± 1 a perfect square: n = k·1e18 ± 1 gives n² − 1 = x·1e18."""
    n = k * WAD + sign
    return clamp(((n * n - 1) // WAD) + d)


def sqrt_inputs() -> st.SearchStrategy[int]:
    return st.one_of(
        log_uniform(max_bits=255, signed=False),
        st.integers(0, 10**12).map(lambda m: m * m),  # x·1e18 a perfect square
        st.builds(
            _perfect_square_neighbour,
            st.integers(1, 10**20),
            st.sampled_from([1, -1]),
            st.integers(-1, 1),
        ),
        st.integers(-3, 3).map(lambda d: SQRT_MAX_WAD + d),
        st.integers(-(10**6), -1),
        int256_mixed(),
    )


#: Where NormalDist changes polynomial piece, and its cut-off (margin/normal_dist.py).
CDF_EDGES: list[int] = [0, 2 * WAD, 4 * WAD, 6 * WAD, 8 * WAD, 8_900_000_000_000_000_000]


def cdf_inputs() -> st.SearchStrategy[int]:
    edge_near = st.tuples(st.sampled_from(CDF_EDGES), st.integers(-1000, 1000), st.booleans())
    return st.one_of(
        st.integers(-10 * WAD, 10 * WAD),  # every piece, both signs, and just past the cut-off
        st.integers(-3 * WAD, 3 * WAD),  # where the CDF is steep
        edge_near.map(lambda t: -(t[0] + t[1]) if t[2] else t[0] + t[1]),  # piece edges ± wei
        int256_mixed(),  # far tails and int256 extremes
    )


# --- batched Hypothesis runs: one example = one list of inputs = one eth_call ------------

BATCH = 500
RANDOM = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,  # the same inputs on every run and every machine
    # One example is a whole batch of 500 inputs: large by design.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    database=None,
    # No shrinking: a failure already lists the first mismatching inputs, and shrinking a list
    # of 500 inputs through eth_calls would take minutes.
    phases=[Phase.explicit, Phase.generate],
)


def batch_of(strategy: st.SearchStrategy, size: int = BATCH) -> st.SearchStrategy[list]:
    # unique: a batch spends its calls on distinct inputs (Hypothesis likes to repeat values).
    return st.lists(strategy, min_size=size, max_size=size, unique=True)


def check_batch(contract: Contract, name: str, fn: Callable[..., int], inputs: list) -> None:
    tally = check_parity(contract, name, fn, inputs)
    # `pytest --hypothesis-show-statistics` shows which regions the random batches reached.
    for kind in tally:
        event(f"batch reached: {kind}")
    event(f"distinct inputs per batch: {len(set(inputs)) // 100 * 100}+")
