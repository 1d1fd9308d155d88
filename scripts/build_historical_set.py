"""Write margin/risk/data/historical_set.json: the committed historical scenario set.

    .venv/bin/python scripts/build_historical_set.py [--check]

Reads data/btc_usd_daily.csv (BTC) and the stress library (margin/risk/data/stress_days.json)
and applies the rule of margin/risk/historical.py (underlyings BTC, ETH: the repository has no
ETH price series, so ETH moves 0 on historical days and by its cited figure on stress days).
``--check`` writes nothing and exits 1 when the committed file differs from a rebuild.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from margin.risk.historical import (
    DATA_FILE_NAME,
    SetRule,
    build_scenarios,
    encode_set,
    parse_closes,
    reference_vols,
)
from margin.risk.stress_days import DATA_FILE as STRESS_FILE
from margin.risk.stress_days import parse_stress_library

ROOT = Path(__file__).resolve().parent.parent

CSV = ROOT / "data" / "btc_usd_daily.csv"
OUT = ROOT / "margin" / "risk" / "data" / DATA_FILE_NAME
NAMES = ("BTC", "ETH")


def build() -> str:
    raw = CSV.read_bytes()
    rule = SetRule()
    series = {"BTC": parse_closes(raw.decode())}
    scenarios = build_scenarios(
        series,
        NAMES,
        parse_stress_library(STRESS_FILE.read_text()),
        rule,
    )
    sources = {
        "BTC": f"data/btc_usd_daily.csv sha256:{hashlib.sha256(raw).hexdigest()}",
        "ETH": "no price series in the repository: 0 on historical days",
        "stress": "margin/risk/data/stress_days.json",
    }
    return encode_set(scenarios, NAMES, rule, sources, reference_vols(series, NAMES, rule))


def main() -> int:
    text = build()
    if "--check" in sys.argv[1:]:
        same = OUT.exists() and OUT.read_text() == text
        print("up to date" if same else f"{OUT} differs from a rebuild")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
