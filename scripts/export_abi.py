#!/usr/bin/env python3
"""Write abi/<Contract>.json for every keeper-facing contract (keeper.abi.KEEPER_CONTRACTS).

python scripts/export_abi.py            # build if stale, then (re)write abi/
python scripts/export_abi.py --check    # exit 1 and list the drift; writes nothing
"""

from __future__ import annotations

import argparse
import sys

from keeper.abi import ABI_DIR, KEEPER_CONTRACTS, check_drift, write_abis
from keeper.artifacts import ArtifactError, ensure_built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift, write nothing")
    parser.add_argument("--no-build", action="store_true", help="use contracts/out as it is")
    args = parser.parse_args(argv)
    try:
        if not args.no_build:
            ensure_built()
        if args.check:
            problems = check_drift()
            for problem in problems:
                print(f"ABI drift: {problem}", file=sys.stderr)
            if problems:
                print("fix: python scripts/export_abi.py", file=sys.stderr)
                return 1
            print(f"abi/ matches the build ({len(KEEPER_CONTRACTS)} contracts)")
            return 0
        written = write_abis()
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = check_drift()  # e.g. a file in abi/ for a contract no longer listed
    for problem in stale:
        print(f"warning: {problem}", file=sys.stderr)
    rel = ABI_DIR.relative_to(ABI_DIR.parent)
    print(f"{len(written)} of {len(KEEPER_CONTRACTS)} ABI files updated in {rel}/")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
