#!/usr/bin/env python3
"""Deploy the clearing house with devnet mocks to an RPC (anvil by default) and write the
deployment file the keeper reads.

    python scripts/deploy.py                                  # http://127.0.0.1:8545
    python scripts/deploy.py --rpc http://host:8545 --out var/deployment.json

Sends from the node's first unlocked account (anvil's dev accounts). Builds contracts/ first
when contracts/out is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from web3 import Web3

from keeper.artifacts import ArtifactError, ensure_built
from keeper.deployment import DeploymentError, deploy_protocol

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "var" / "deployment.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpc", default="http://127.0.0.1:8545", help="JSON-RPC URL")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="deployment JSON path")
    args = parser.parse_args(argv)
    w3 = Web3(Web3.HTTPProvider(args.rpc, request_kwargs={"timeout": 60}))
    if not w3.is_connected():
        print(f"error: no JSON-RPC node answers at {args.rpc}", file=sys.stderr)
        return 2
    try:
        ensure_built()
        deployment = deploy_protocol(w3)
    except (ArtifactError, DeploymentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    deployment.write(args.out)
    ch = deployment.address("ClearingHouse")
    print(f"ClearingHouse {ch} on chain {deployment.chain_id}; deployment written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
