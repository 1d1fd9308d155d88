"""Accuracy and shape of margin.normal_dist.cdf_wad against exact mathematics (mpmath, 50 digits).

The documented bound (margin/normal_dist.py, NormalDist.sol) is |cdf_wad(x) − Φ(x)·1e18| ≤ 0.501 wei
on the whole int256 domain: 0.5 from rounding to nearest, < 0.001 wei of approximation. Each
accuracy test prints the largest error it saw (``pytest -s`` shows it).

The Solidity library is the same integer program: its constants are compared with the Python
table here, and Python-vs-Solidity parity on anvil is tested with the other primitives.
"""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path

import mpmath as mp
import pytest

from margin.normal_dist import _PIECES, CUT_WAD, INT256_MAX, INT256_MIN, WAD, cdf_wad

mp.mp.dps = 50
ROOT = Path(__file__).resolve().parent.parent
BOUND_WAD = mp.mpf("0.501")  # documented max |error| in wei
EDGES = [0, 2 * WAD, 4 * WAD, 6 * WAD, 8 * WAD, CUT_WAD]


def exact_wad(x: int) -> mp.mpf:
    return mp.ncdf(mp.mpf(x) / WAD) * WAD


def max_error(xs: list[int]) -> tuple[mp.mpf, int]:
    worst, at = mp.mpf(0), 0
    for x in xs:
        err = abs(cdf_wad(x) - exact_wad(x))
        if err > worst:
            worst, at = err, x
    return worst, at


def check(label: str, xs: list[int]) -> None:
    worst, at = max_error(xs)
    print(f"\n{label}: {len(xs)} points, max |error| = {mp.nstr(worst, 6)} wei at x = {at}")
    assert worst <= BOUND_WAD, f"{label}: error {worst} wei at x = {at}"


def test_dense_grid_over_pm38() -> None:
    # Step 0.001 over [-10, 10] (every piece, both signs), 0.01 over the rest of [-38, 38].
    core = list(range(-10 * WAD, 10 * WAD + 1, WAD // 1000))
    outer = [x for x in range(-38 * WAD, 38 * WAD + 1, WAD // 100) if abs(x) > 10 * WAD]
    check("grid", core + outer)


def test_random_points() -> None:
    rng = random.Random(20261125)
    xs = [rng.randint(-38 * WAD, 38 * WAD) for _ in range(10_000)]
    xs += [rng.randint(-9 * WAD, 9 * WAD) for _ in range(30_000)]
    check("random", xs)


def test_fine_grids_at_zero_edges_and_tail() -> None:
    xs: list[int] = []
    rng = random.Random(7)
    for e in EDGES:
        for s in (1, -1):
            centre = s * e
            xs += [centre + d for d in range(-50, 51)]  # adjacent wei
            xs += [centre + d * 10**12 for d in range(-500, 501)]  # 1e-6 steps
            xs += [centre + rng.randint(-(10**16), 10**16) for _ in range(500)]
    # The far tail where Φ is a handful of wei: every 1e-4 between 7.5 and 9.5, both sides.
    xs += [s * x for x in range(75 * WAD // 10, 95 * WAD // 10, WAD // 10_000) for s in (1, -1)]
    check("edges/zero/tail", xs)


def test_exact_zero_and_one_beyond_cutoffs() -> None:
    rng = random.Random(3)
    beyond = [CUT_WAD, CUT_WAD + 1, 9 * WAD, 38 * WAD, 10**30, INT256_MAX]
    beyond += [rng.randint(CUT_WAD, INT256_MAX) for _ in range(2000)]
    beyond += [rng.randint(CUT_WAD, 40 * WAD) for _ in range(2000)]
    for x in beyond:
        assert cdf_wad(x) == WAD, x
        assert cdf_wad(-x) == 0, x
    assert cdf_wad(INT256_MIN) == 0
    # The exact value already rounds to 0 / 1e18 at the cut-off (Q(8.9) ≈ 0.28 wei).
    assert exact_wad(-CUT_WAD) < mp.mpf("0.5")


def test_known_values() -> None:
    assert cdf_wad(0) == 5 * 10**17
    assert cdf_wad(WAD) == 841_344_746_068_542_949  # Φ(1) = 0.841344746068542948585…
    assert cdf_wad(-2 * WAD) == 22_750_131_948_179_207  # Φ(−2) = 0.022750131948179207200…
    assert cdf_wad(-8 * WAD) == 622
    assert cdf_wad(-87 * WAD // 10) == 2  # 1.66 wei


def test_symmetry_and_range() -> None:
    rng = random.Random(11)
    xs = [rng.randint(-10 * WAD, 10 * WAD) for _ in range(20_000)]
    xs += [rng.randint(INT256_MIN + 1, INT256_MAX) for _ in range(2_000)]
    xs += [e + d for e in EDGES for d in range(-5, 6)]
    for x in xs:
        p = cdf_wad(x)
        assert 0 <= p <= WAD
        assert cdf_wad(-x) + p == WAD, x
        assert (p <= WAD // 2) if x < 0 else (p >= WAD // 2)


def test_monotone_adjacent_and_random_pairs() -> None:
    rng = random.Random(5)
    # Adjacent wei: random points, and every piece edge (the only places two polynomials meet).
    starts = [rng.randint(-10 * WAD, 10 * WAD) for _ in range(20_000)]
    starts += [s * e + d for e in EDGES for s in (1, -1) for d in range(-20, 20)]
    starts += [rng.randint(INT256_MIN, INT256_MAX - 1) for _ in range(1_000)]
    for x in starts:
        assert cdf_wad(x) <= cdf_wad(x + 1), x
    for _ in range(20_000):
        a, b = sorted(rng.randint(-10 * WAD, 10 * WAD) for _ in range(2))
        assert cdf_wad(a) <= cdf_wad(b), (a, b)
    # A sorted sweep through the whole core with small random steps.
    x, prev = -10 * WAD, 0
    while x < 10 * WAD:
        p = cdf_wad(x)
        assert p >= prev, x
        prev, x = p, x + rng.randint(1, 2 * 10**15)


def test_not_an_int256() -> None:
    with pytest.raises(ValueError):
        cdf_wad(INT256_MAX + 1)
    with pytest.raises(ValueError):
        cdf_wad(INT256_MIN - 1)


def test_solidity_constants_match_python_table() -> None:
    """NormalDist.sol and margin/normal_dist.py hold the same pieces, centres and coefficients."""
    sol = (ROOT / "contracts" / "src" / "math" / "NormalDist.sol").read_text()
    block = sol.split("BEGIN GENERATED", 1)[1].split("END GENERATED", 1)[0]
    chunks = re.split(r"let t := sub\(zq, (0x[0-9a-f]+)\)", block)[1:]
    pieces = []
    for centre_hex, body in zip(chunks[0::2], chunks[1::2], strict=True):
        # acc := op_0(|c_0|, sar(96, mul(t, op_1(|c_1|, ... |c_n|))...)); op_k is add when c_k
        # and c_(k+1) have the same sign, sub otherwise, and c_0 > 0: recover the signs.
        steps = re.findall(r"(add|sub)\((0x[0-9a-f]+), sar\(96, mul\(t,", body)
        top = re.search(r"mul\(t,\s*(0x[0-9a-f]+)\s*\)", body)
        assert top is not None
        mags = [int(v, 16) for _, v in steps] + [int(top.group(1), 16)]
        signs = [1]
        for op, _ in steps:
            signs.append(signs[-1] if op == "add" else -signs[-1])
        coeffs = tuple(sg * m for sg, m in zip(signs, mags, strict=True))
        pieces.append((int(centre_hex, 16), coeffs))
    edges = [int(v) for v in re.findall(r"switch lt\(z, (\d+)\)", block)]
    assert sorted(edges) == [hi for hi, _, _ in _PIECES[:-1]]
    assert pieces == [(centre, coeffs) for _, centre, coeffs in _PIECES]
    assert f"CUT_WAD = {CUT_WAD:_}" in sol


def test_fit_script_reproduces_the_committed_table() -> None:
    spec = importlib.util.spec_from_file_location("fit", ROOT / "scripts" / "fit_normal_cdf.py")
    assert spec is not None and spec.loader is not None
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    pieces = fit.fit()
    assert [(hi, centre, tuple(c)) for _, hi, centre, c in pieces] == list(_PIECES)
    assert fit.CUT_WAD == CUT_WAD
