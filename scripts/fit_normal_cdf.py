#!/usr/bin/env python3
"""Fit the piecewise polynomial behind the standard normal CDF (margin/normal_dist.py,
NormalDist.sol).

Reproducible: no randomness, mpmath only. Run from the repository root:

    .venv/bin/python scripts/fit_normal_cdf.py            # fit, verify, print tables and figures
    .venv/bin/python scripts/fit_normal_cdf.py --write    # also rewrite the generated blocks

Method (written for this project):
- The upper tail Q(z) = 1 - Φ(z) = erfc(z/√2)/2 is approximated for z = |x| in [0, CUT) by one
  polynomial per piece [0,2), [2,4), [4,6), [6,8), [8,CUT). Each piece is a truncated Chebyshev
  series of Q (near-minimax), truncated at the lowest degree whose dropped tail sums below
  TARGET (absolute, in units of 1), then rewritten in the monomial basis of t = z - centre.
- Fixed point: t is Q96 (t·2^96, from the WAD input, floor), the coefficients and the
  accumulator are in units of 2^-80 wei (Q(z)·1e18·2^80); Horner step
  `acc = |c| ± (acc·t >> 96)` where acc carries sign(c_k)·v_k (see solidity_block).
- Output q = round-half-up(acc / 2^80) wei; Φ(x) = q for x < 0 and 1e18 - q for x >= 0,
  so Φ(-x) + Φ(x) == 1e18 exactly for every x but 0... and for x = 0 as well (q(0) = 5e17).

The script then checks what the code relies on, and fails (exit 1) if any check fails:
1. accuracy: the exact integer pipeline against mpmath on a dense grid of WAD inputs;
2. monotonicity inside a piece: P'(z) < 0 on a dense grid, with margin |P' + φ| < φ/2;
   together with the tiny Horner rounding noise (< N_STEPS·2^-80 wei, far below the smallest
   change of Q between two adjacent wei inputs) this makes the output non-increasing in z;
3. monotonicity across piece edges and at the cut-off (the only pairs not covered by 2.);
4. bounds: every Horner intermediate |acc·t| < 2^255 (no wrap in the EVM), P > 0.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from pathlib import Path

import mpmath as mp

DPS = 90  # working precision of the fit (set locally: importing this module changes nothing)

WAD = 10**18
T_BITS = 96  # t = (z - centre) in Q96
ACC_BITS = 80  # accumulator unit: 2^-80 wei
# Q(8.9) ≈ 2.8e-19 < 0.5 wei: beyond the cut-off the exact answer rounds to 0 as well.
CUT_WAD = 8_900_000_000_000_000_000
EDGES_WAD = [0, 2 * WAD, 4 * WAD, 6 * WAD, 8 * WAD, CUT_WAD]
TARGET = mp.mpf("1e-21")  # truncation error target per piece, absolute (0.001 wei)
FIT_DEGREE = 50

ROOT = Path(__file__).resolve().parent.parent
PY_FILE = ROOT / "margin" / "normal_dist.py"
SOL_FILE = ROOT / "contracts" / "src" / "math" / "NormalDist.sol"


def q_exact(z: mp.mpf) -> mp.mpf:
    return mp.erfc(z / mp.sqrt(2)) / 2


def phi_exact(z: mp.mpf) -> mp.mpf:
    return mp.exp(-z * z / 2) / mp.sqrt(2 * mp.pi)


def cheb_series(a: mp.mpf, b: mp.mpf, n: int) -> list[mp.mpf]:
    """Chebyshev interpolant of Q on [a, b] at n+1 Chebyshev-Gauss nodes (coefficients c_j)."""
    m = n + 1
    nodes = [mp.cos(mp.pi * (k + mp.mpf(1) / 2) / m) for k in range(m)]
    vals = [q_exact((b - a) / 2 * u + (a + b) / 2) for u in nodes]
    coeffs = []
    for j in range(m):
        s = mp.fsum(vals[k] * mp.cos(mp.pi * j * (k + mp.mpf(1) / 2) / m) for k in range(m))
        coeffs.append(2 * s / m)
    coeffs[0] /= 2
    return coeffs


def cheb_to_monomial(c: list[mp.mpf]) -> list[mp.mpf]:
    """sum c_j T_j(u)  ->  sum m_k u^k."""
    n = len(c)
    t_prev, t_cur = [mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]
    out = [mp.mpf(0)] * n
    out[0] += c[0]
    for j in range(1, n):
        if j > 1:
            nxt = [mp.mpf(0)] * (j + 1)
            for k, v in enumerate(t_cur):
                nxt[k + 1] += 2 * v
            for k, v in enumerate(t_prev):
                nxt[k] -= v
            t_prev, t_cur = t_cur, nxt
        for k, v in enumerate(t_cur):
            out[k] += c[j] * v
    return out


def fit_piece(a_wad: int, b_wad: int) -> tuple[int, list[int]]:
    """Integer centre (Q96) and integer coefficients (unit 2^-80 wei, c_0 first) of one piece."""
    a, b = mp.mpf(a_wad) / WAD, mp.mpf(b_wad) / WAD
    full = cheb_series(a, b, FIT_DEGREE)
    n = next(d for d in range(2, FIT_DEGREE) if mp.fsum(abs(x) for x in full[d + 1 :]) < TARGET)
    # Refit at the chosen degree: interpolation at n+1 nodes is as good as truncation and exact.
    centre_q96 = ((a_wad + b_wad) * 2**T_BITS) // (2 * WAD)
    centre = mp.mpf(centre_q96) / 2**T_BITS
    h = (b - a) / 2
    mono_u = cheb_to_monomial(cheb_series(a, b, n))  # in u = (z - (a+b)/2)/h
    # Shift from the exact midpoint to the dyadic centre: z - mid = t + (centre - mid).
    shift = (centre - (a + b) / 2) / h
    mono_t = []
    for k in range(n + 1):
        # coefficient of u'^k where u = u' + shift, u' = t/h
        s = mp.fsum(mono_u[j] * mp.binomial(j, k) * shift ** (j - k) for j in range(k, n + 1))
        mono_t.append(s / h**k)
    scale = WAD * mp.mpf(2) ** ACC_BITS
    coeffs = [int(mp.nint(v * scale)) for v in mono_t]
    return centre_q96, coeffs


def tail_wad(z: int, pieces: list[tuple[int, int, int, list[int]]]) -> int:
    """Integer pipeline, identical to margin/normal_dist.py and NormalDist.sol (z >= 0)."""
    if z >= CUT_WAD:
        return 0
    zq = (z << T_BITS) // WAD
    for lo, hi, centre, coeffs in pieces:
        if lo <= z < hi:
            t = zq - centre
            # acc holds sign(c_k)·v_k (see solidity_block): every literal is |c_k|.
            acc, neg_prev = abs(coeffs[-1]), coeffs[-1] < 0
            for c in reversed(coeffs[:-1]):
                s = (acc * t) >> T_BITS
                acc = abs(c) + s if (c < 0) == neg_prev else abs(c) - s
                neg_prev = c < 0
            return (acc + (1 << (ACC_BITS - 1))) >> ACC_BITS
    raise AssertionError("unreachable")


def poly_real(coeffs: list[int], centre: int, z: mp.mpf, deriv: bool = False) -> mp.mpf:
    t = z - mp.mpf(centre) / 2**T_BITS
    scale = WAD * mp.mpf(2) ** ACC_BITS
    if deriv:
        return mp.fsum(k * c * t ** (k - 1) for k, c in enumerate(coeffs) if k) / scale
    return mp.fsum(c * t**k for k, c in enumerate(coeffs)) / scale


def verify(pieces: list[tuple[int, int, int, list[int]]]) -> bool:
    ok = True
    # 4. bounds of Horner intermediates (worst case over |t| <= tmax, plus floor noise)
    max_bits = 0
    for lo, hi, centre, coeffs in pieces:
        zq_lo, zq_hi = (lo << T_BITS) // WAD, ((hi - 1) << T_BITS) // WAD
        tmax = max(abs(zq_lo - centre), abs(zq_hi - centre))
        bound = abs(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            prod = bound * tmax
            max_bits = max(max_bits, prod.bit_length())
            bound = abs(c) + (prod >> T_BITS) + 1
    print(f"bounds: largest |acc*t| < 2^{max_bits} (must be <= 2^254)")
    ok &= max_bits <= 254

    # 1. accuracy of the integer pipeline on a dense deterministic grid (plus edges)
    worst, worst_z, n_pts = mp.mpf(0), 0, 0
    zs: set[int] = set()
    step = CUT_WAD // 6000
    zs.update(range(0, CUT_WAD + WAD, step))
    zs.update(range(0, CUT_WAD + WAD, 7_777_777_777_777_777))
    for e in EDGES_WAD:
        zs.update(e + d for d in (-3, -2, -1, 0, 1, 2, 3) if e + d >= 0)
    for z in sorted(zs):
        got = tail_wad(z, pieces)
        err = abs(got - q_exact(mp.mpf(z) / WAD) * WAD)
        n_pts += 1
        if err > worst:
            worst, worst_z = err, z
    print(f"accuracy: max |error| = {mp.nstr(worst, 6)} wei at z = {worst_z} ({n_pts} points)")
    ok &= worst < mp.mpf("0.501")  # the documented bound

    # 2. monotonicity inside pieces: P' close to -φ (dense grid of each piece)
    worst_ratio = mp.mpf(0)
    for lo, hi, centre, coeffs in pieces:
        a, b = mp.mpf(lo) / WAD, mp.mpf(hi) / WAD
        for i in range(2001):
            z = a + (b - a) * i / 2000
            ph = phi_exact(z)
            ratio = abs(poly_real(coeffs, centre, z, deriv=True) + ph) / ph
            worst_ratio = max(worst_ratio, ratio)
            pz = poly_real(coeffs, centre, z)
            if pz <= 0:
                print(f"P(z) <= 0 at z={z}")
                ok = False
    print(f"monotone: max |P'(z) + φ(z)| / φ(z) = {mp.nstr(worst_ratio, 3)} (must be < 0.5)")
    ok &= worst_ratio < mp.mpf("0.5")

    # 3. monotonicity across piece edges and the cut-off
    for e in EDGES_WAD[1:]:
        left, right = tail_wad(e - 1, pieces), tail_wad(e, pieces)
        if left < right:
            print(f"edge {e}: q(z-1)={left} < q(z)={right}")
            ok = False
    print("edges: q(e-1) >= q(e) at every piece edge and at the cut-off" if ok else "FAILED")
    return ok


def fit() -> list[tuple[int, int, int, list[int]]]:
    with mp.workdps(DPS):
        return _fit()


def _fit() -> list[tuple[int, int, int, list[int]]]:
    pieces = []
    for lo, hi in itertools.pairwise(EDGES_WAD):
        centre, coeffs = fit_piece(lo, hi)
        pieces.append((lo, hi, centre, coeffs))
        print(f"piece [{lo / WAD:g}, {hi / WAD:g}): degree {len(coeffs) - 1}")
    return pieces


def python_block(pieces: list[tuple[int, int, int, list[int]]]) -> str:
    lines = [
        "# (upper edge in wei, centre in Q96, coefficients c_0..c_n in units of 2^-80 wei)",
        "_PIECES: tuple[tuple[int, int, tuple[int, ...]], ...] = (",
    ]
    for _lo, hi, centre, coeffs in pieces:
        lines.append(f"    ({hi}, {centre}, (")
        lines.extend(f"        {c}," for c in coeffs)
        lines.append("    )),")
    lines.append(")")
    return "\n".join(lines)


def solidity_block(pieces: list[tuple[int, int, int, list[int]]], indent: str) -> str:
    """Binary dispatch on z, then Horner with the constants inline."""

    def horner(piece: tuple[int, int, int, list[int]], ind: str) -> list[str]:
        # One nested expression, constant on the left and the inner step on the right: Yul
        # evaluates arguments right to left, so the stack depth stays constant and no
        # assignment (swap/pop) is paid per step: dup t, mul, push 96, sar, push |c|, add/sub.
        # Sign trick, so that every literal is |c_k| (short pushes): the value carried out of
        # step k is sign(c_k)·v_k, v_k = c_k + t·v_(k+1); hence
        #   sign(c_k)·v_k = |c_k| + (sign(c_k)·sign(c_(k+1))) · (t · sign(c_(k+1))·v_(k+1)),
        # i.e. add when the signs of c_k and c_(k+1) agree, sub when they differ. c_0 > 0.
        _lo, _hi, centre, coeffs = piece
        assert coeffs[0] > 0
        out = [f"{ind}let t := sub(zq, {hex(centre)})"]
        for k, c in enumerate(coeffs[:-1]):
            op = "add" if (c < 0) == (coeffs[k + 1] < 0) else "sub"
            head = f"{ind}acc := " if k == 0 else f"{ind}    "
            out.append(f"{head}{op}({hex(abs(c))}, sar(96, mul(t,")
        out.append(f"{ind}    {hex(abs(coeffs[-1]))}")
        out.append(f"{ind}    " + ")))" * (len(coeffs) - 1))
        return out

    # Linear chain, lowest piece first: the pieces with the highest degree (small |x|, the
    # common case for option pricing) pay the fewest comparisons.
    lines: list[str] = []
    ind = indent
    for k, piece in enumerate(pieces):
        if k == len(pieces) - 1:
            lines += horner(piece, ind)
            break
        lines += [f"{ind}switch lt(z, {piece[1]})", f"{ind}case 1 {{"]
        lines += [*horner(piece, ind + "    "), f"{ind}}}", f"{ind}default {{"]
        ind += "    "
    for k in range(len(pieces) - 1, 0, -1):
        lines.append(f"{indent}{'    ' * (k - 1)}}}")
    return "\n".join(lines)


BEGIN, END = "BEGIN GENERATED by scripts/fit_normal_cdf.py", "END GENERATED"


def replace_block(path: Path, body: str) -> None:
    text = path.read_text()
    pat = re.compile(
        rf"(^[^\n]*{re.escape(BEGIN)}[^\n]*\n)(.*?)(^[^\n]*{re.escape(END)})", re.S | re.M
    )
    if not pat.search(text):
        raise SystemExit(f"no generated block in {path}")
    path.write_text(pat.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text, count=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the generated code blocks")
    ap.add_argument("--print", action="store_true", help="print the coefficient tables")
    args = ap.parse_args()
    mp.mp.dps = DPS
    pieces = fit()
    print(
        f"cut-off: Q(z) := 0 for z >= {CUT_WAD} wei; exact Q(cut-off) = "
        f"{mp.nstr(q_exact(mp.mpf(CUT_WAD) / WAD) * WAD, 4)} wei"
    )
    ok = verify(pieces)
    if args.print or not args.write:
        print(python_block(pieces))
    if args.write:
        replace_block(PY_FILE, python_block(pieces))
        replace_block(SOL_FILE, solidity_block(pieces, " " * 16))
        print(f"wrote {PY_FILE.relative_to(ROOT)} and {SOL_FILE.relative_to(ROOT)}")
    print("OK" if ok else "VERIFICATION FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
