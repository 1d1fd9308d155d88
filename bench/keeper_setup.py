"""What the keeper-level benchmarks share: the keeper's configuration on a devnet."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from keeper.config import KeeperConfig, load_config_data

#: anvil's second dev account: the benchmarked keeper's signer (a devnet key, public).
BENCH_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_keeper_config(
    rpc_url: str,
    chain_id: int,
    workdir: Path,
    *,
    poll: float,
    confirmations: int,
    watchdog: float = 300,
) -> KeeperConfig:
    """A keeper on the devnet: SQLite in ``workdir`` (which holds deployment.json), the
    bench signer, no profit floor, no periodic sweep or settlement job, metrics not served."""
    os.environ["KEEPER_BENCH_KEY"] = BENCH_KEY
    return load_config_data(
        {
            "rpc": {"url": rpc_url, "chain_id": chain_id},
            "deployment": {"file": str(workdir / "deployment.json")},
            "store": {"url": f"sqlite:///{workdir / 'keeper.db'}"},
            "signer": {"key_env": "KEEPER_BENCH_KEY"},
            "fees": {"max_fee_per_gas": "500 gwei", "priority_fee": "2 gwei"},
            "decisions": {
                "min_profit": 0,
                "confirmations": confirmations,
                "block_poll_interval_seconds": poll,
                "sweep_interval_seconds": 3600,
            },
            "metrics": {"bind": f"127.0.0.1:{free_port()}", "enabled": False},
            "service": {"watchdog_seconds": watchdog, "settle_interval_seconds": 3600},
        }
    )
