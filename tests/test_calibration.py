"""Fixed-point EWMA calibration: against an mpmath reference, deterministic to the byte, bounded
grid proposals, named errors, and `keeper calibrate --dry-run` end to end."""

from __future__ import annotations

import csv
import json
import random
from decimal import Decimal
from pathlib import Path

import mpmath
import pytest
from eth_abi.abi import decode

from margin.params import DAY, YEAR, span_like
from margin.risk.ewma import (
    DEFAULT_LAMBDA,
    InvalidLambda,
    OracleRound,
    RoundPriceOutOfRange,
    RoundsNotAligned,
    RoundsNotIncreasing,
    TooFewRounds,
    ZeroVariance,
    ewma_correlation_down,
    ewma_covariance_down,
    ewma_variance_down,
    ewma_vol_down,
)
from margin.risk.recalibration import (
    PROPOSAL_ABI,
    Proposal,
    RecalibrationRule,
    canonical_encoding,
    proposal_hash,
    propose_underlying,
)
from tests.keeper_cli import run_keeper

ROOT = Path(__file__).resolve().parents[1]
BTC = ROOT / "data" / "btc_usd_daily.csv"
WAD = 10**18
mpmath.mp.dps = 60


def btc_rounds(first: str, last: str, column: str = "close") -> list[OracleRound]:
    from datetime import UTC, datetime

    with BTC.open() as f:
        rows = [r for r in csv.DictReader(f) if first <= r["date"] <= last]
    return [
        OracleRound(
            int(datetime.fromisoformat(r["date"]).replace(tzinfo=UTC).timestamp()),
            int(Decimal(r[column]) * WAD),
        )
        for r in rows
    ]


def reference_cov(a: list[OracleRound], b: list[OracleRound], lam: float, k: int) -> mpmath.mpf:
    """The same recursion in 60-digit real arithmetic (no flooring anywhere)."""
    lam_ = mpmath.mpf(lam)
    terms = []
    for i in range(1, len(a)):
        ra = mpmath.log(mpmath.mpf(a[i].price) / a[i - 1].price)
        rb = mpmath.log(mpmath.mpf(b[i].price) / b[i - 1].price)
        terms.append(ra * rb * YEAR / (a[i].timestamp - a[i - 1].timestamp))
    k = min(k, len(terms))
    v = sum(terms[:k]) / k
    for q in terms[k:]:
        v = lam_ * v + (1 - lam_) * q
    return v


# Stated tolerance: relative 1e-12 on variances and vols (each step floors at most one wei
# of a ~1e15-1e18 value; ln_wad is within a few wei), absolute 1e-12 on correlations.
REL = 1e-12


@pytest.mark.parametrize(
    ("first", "last"), [("2020-01-01", "2020-12-31"), ("2024-01-01", "2025-09-24")]
)
def test_ewma_vol_against_mpmath(first: str, last: str) -> None:
    rounds = btc_rounds(first, last)
    ref = reference_cov(rounds, rounds, 0.94, 20)
    assert ewma_variance_down(rounds) / WAD == pytest.approx(float(ref), rel=REL)
    assert ewma_vol_down(rounds) / WAD == pytest.approx(float(mpmath.sqrt(ref)), rel=REL)
    # Floors only: the fixed-point variance never exceeds the exact one by more than the
    # few wei ln_wad may add.
    assert ewma_variance_down(rounds) <= int(ref * WAD) + 100


def test_irregular_rounds_are_weighted_by_their_spacing() -> None:
    rng = random.Random(5)
    t, p, rounds = 1_700_000_000, 3000 * WAD, []
    for _ in range(300):
        rounds.append(OracleRound(t, p))
        t += rng.randint(60, 7200)
        p = p * (1_000_000 + rng.randint(-8000, 8000)) // 1_000_000
    for lam in (DEFAULT_LAMBDA, 99 * 10**16):
        ref = reference_cov(rounds, rounds, lam / WAD, 20)
        assert ewma_variance_down(rounds, lam) / WAD == pytest.approx(float(ref), rel=REL)


def test_covariance_and_correlation_against_mpmath() -> None:
    close = btc_rounds("2023-01-01", "2024-12-31")
    opening = btc_rounds("2023-01-01", "2024-12-31", "open")
    ref_cov = reference_cov(close, opening, 0.94, 20)
    ref_rho = ref_cov / mpmath.sqrt(
        reference_cov(close, close, 0.94, 20) * reference_cov(opening, opening, 0.94, 20)
    )
    assert ewma_covariance_down(close, opening) / WAD == pytest.approx(float(ref_cov), rel=1e-10)
    assert ewma_correlation_down(close, opening) / WAD == pytest.approx(float(ref_rho), abs=1e-12)


def test_correlation_of_a_power_and_an_inverse_is_plus_and_minus_one() -> None:
    x = btc_rounds("2022-01-01", "2022-12-31")
    squared = [OracleRound(r.timestamp, r.price * r.price // (10_000 * WAD)) for r in x]
    inverse = [OracleRound(r.timestamp, 10**8 * WAD * WAD // r.price) for r in x]
    assert abs(ewma_correlation_down(x, squared) - WAD) < 10**4
    assert abs(ewma_correlation_down(x, inverse) + WAD) < 10**4


def test_same_rounds_same_bytes() -> None:
    rounds = btc_rounds("2021-01-01", "2021-12-31")
    u = propose_underlying(ewma_vol_down(rounds), span_like(), RecalibrationRule())
    p1 = Proposal(rounds[-1].timestamp, DEFAULT_LAMBDA, (u,), ())
    u2 = propose_underlying(ewma_vol_down(list(rounds)), span_like(), RecalibrationRule())
    p2 = Proposal(rounds[-1].timestamp, DEFAULT_LAMBDA, (u2,), ())
    assert canonical_encoding(p1) == canonical_encoding(p2)
    assert proposal_hash(p1) == proposal_hash(p2)
    # A change of one part in 1e9 of the last price changes the vol and the hash (one wei of
    # a 1e22-wei price is below ln_wad's resolution and rightly changes nothing).
    last = rounds[-1]
    bumped = [*rounds[:-1], OracleRound(last.timestamp, last.price + last.price // 10**9)]
    u3 = propose_underlying(ewma_vol_down(bumped), span_like(), RecalibrationRule())
    assert u3.vol != u.vol
    assert proposal_hash(
        Proposal(rounds[-1].timestamp, DEFAULT_LAMBDA, (u3,), ())
    ) != proposal_hash(p1)


def test_price_range_rule_by_hand_and_its_bounds() -> None:
    rule = RecalibrationRule()
    # sigma = 50%: R* = 3 · 0.5 · sqrt(2/365) = 0.111035..., inside ±25% of 0.12.
    p = propose_underlying(WAD // 2, span_like(price_range=12 * 10**16), rule)
    exact = 3 * mpmath.mpf("0.5") * mpmath.sqrt(mpmath.mpf(2 * DAY) / YEAR)
    assert p.price_range == p.price_range_target
    assert 0 <= p.price_range - int(exact * WAD) < 10**4  # rounded up, a few wei
    assert p.vol_shift_base == 10**17  # 0.2 · 50% = 10 vol points
    # sigma = 300%: the step caps the rise at +25% of 0.12 = 0.15.
    hi = propose_underlying(3 * WAD, span_like(price_range=12 * 10**16), rule)
    assert hi.price_range == 15 * 10**16 and hi.price_range_target > hi.price_range
    # From 0.3, the absolute bound 0.33 wins over the step (0.375).
    top = propose_underlying(3 * WAD, span_like(price_range=30 * 10**16), rule)
    assert top.price_range == 33 * 10**16
    # sigma = 1%: down by at most 25%, never below 5%.
    lo = propose_underlying(10**16, span_like(price_range=6 * 10**16), rule)
    assert lo.price_range == 5 * 10**16 and lo.vol_shift_base == 6 * 10**16


@pytest.mark.parametrize(
    ("rounds", "error"),
    [
        ([OracleRound(1, WAD)], TooFewRounds),
        ([OracleRound(2, WAD), OracleRound(2, WAD)], RoundsNotIncreasing),
        ([OracleRound(1, WAD), OracleRound(2, 0)], RoundPriceOutOfRange),
    ],
)
def test_bad_rounds_are_named(rounds: list[OracleRound], error: type[Exception]) -> None:
    with pytest.raises(error):
        ewma_variance_down(rounds)


def test_bad_settings_and_pairs_are_named() -> None:
    x = btc_rounds("2022-01-01", "2022-01-31")
    with pytest.raises(InvalidLambda):
        ewma_variance_down(x, WAD)
    with pytest.raises(RoundsNotAligned):
        ewma_covariance_down(x, [*x[1:], OracleRound(x[-1].timestamp + DAY, WAD)])
    flat = [OracleRound(r.timestamp, WAD) for r in x]
    with pytest.raises(ZeroVariance):
        ewma_correlation_down(x, flat)


def _two_asset_csv(path: Path) -> None:
    with BTC.open() as f:
        rows = [r for r in csv.DictReader(f) if r["date"] >= "2024-01-01"]
    lines = ["date,BTC,ETH"]
    for r in rows:  # "ETH": the close squared (scaled): log returns doubled, correlation 1
        lines.append(f"{r['date']},{r['close']},{Decimal(r['close']) ** 2 / 10**6}")
    path.write_text("\n".join(lines) + "\n")


def test_cli_dry_run_prints_the_proposal_and_its_hash(tmp_path: Path) -> None:
    _two_asset_csv(tmp_path / "p.csv")
    book = json.loads((ROOT / "examples" / "portfolios" / "two_underlyings.json").read_text())
    (tmp_path / "book.json").write_text(json.dumps(book))
    args = ("calibrate", "--dry-run", "--prices", "p.csv", "--book", "book.json", "--json")
    r1 = run_keeper(tmp_path, *args)
    r2 = run_keeper(tmp_path, *args, env={"PYTHONHASHSEED": "123"})
    assert r1.returncode == 0, r1.stderr
    assert r1.stdout == r2.stdout  # same input, same bytes, in two processes
    out = json.loads(r1.stdout)
    enc = bytes.fromhex(out["encoding"][2:])
    ((srcs, interval, as_of, lam, _k, _h, _m, vols, ranges, shifts, corr, refs, fhs),) = decode(
        PROPOSAL_ABI, enc
    )
    assert srcs == () and interval == 0  # a CSV names no feed rounds
    assert refs == fhs == ()  # the book's parameters carry no historical set
    assert lam == DEFAULT_LAMBDA and len(vols) == 2 and len(corr) == 1
    assert as_of == out["as_of"] == 1758672000  # 2025-09-24, the last day of the file
    for name, v, r, s in zip(("BTC", "ETH"), vols, ranges, shifts, strict=True):
        u = out["underlyings"][name]
        assert [
            int(Decimal(u[k]) * WAD) for k in ("ewma_vol", "price_range", "vol_shift_base")
        ] == [
            v,
            r,
            s,
        ]
    assert WAD - 10**6 < corr[0] <= WAD
    assert vols[1] == pytest.approx(2 * vols[0], rel=1e-9)
    from eth_utils.crypto import keccak

    assert out["hash"] == "0x" + keccak(enc).hex()
    text = run_keeper(tmp_path, *args[:-1])
    assert out["hash"] in text.stdout and "dry run" in text.stdout


def test_cli_without_dry_run_or_with_bad_input(tmp_path: Path) -> None:
    r = run_keeper(tmp_path, "calibrate", "--prices", str(BTC))
    assert r.returncode == 2 and "--dry-run" in r.stderr
    r = run_keeper(tmp_path, "calibrate", "--dry-run", "--prices", str(BTC), "--lambda", "1")
    assert r.returncode == 1 and r.stderr.startswith("error: InvalidLambda: ")
    r = run_keeper(tmp_path, "calibrate", "--dry-run", "--prices", str(BTC), "--lambda", "x")
    assert r.returncode == 1 and r.stderr.startswith("error: InvalidLambda: ")
    (tmp_path / "one.csv").write_text("date,close\n2020-01-01,5\n")
    r = run_keeper(tmp_path, "calibrate", "--dry-run", "--prices", "one.csv")
    assert r.returncode == 1 and r.stderr.startswith("error: TooFewRounds: ")
