"""``keeper run`` processes of one cluster, as an operator starts them: one TOML file, one
signer and one metrics port each, the same PostgreSQL store. Used by the cluster tests
(tests/test_cluster_e2e.py), the soak's cluster mode and the cluster benchmark.

Each keeper's signer key is passed in its own environment variable (never in the file); its
JSON log goes to ``<name>.log`` next to its config.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: anvil's public dev keys #1..#5 (devnet only): one signer per keeper.
ANVIL_KEYS = (
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_toml(path: Path, data: dict[str, Any]) -> None:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class KeeperProcess:
    """One ``keeper run`` of the cluster."""

    name: str
    key: str
    address: str
    config: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.config.with_suffix(".log")

    def start(self, **env: str) -> KeeperProcess:
        key_env = f"KEEPER_CLUSTER_KEY_{self.name.upper().replace('-', '_')}"
        full = {**os.environ, key_env: self.key, **self.env, **env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "keeper", "run", "--config", str(self.config),
                 "--no-progress"],
                env=full, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then wait; SIGKILL if it does not stop in time. The exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused keeper must run to stop
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError as exc:  # HTTPError (503: unhealthy) carries the body too
            body = getattr(exc, "read", None)
            if callable(body):
                try:
                    return dict(json.loads(body()))
                except (ValueError, OSError):  # a body that does not come in time too
                    return None
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out


def cluster_keepers(
    base: dict[str, Any],
    directory: Path,
    n: int,
    *,
    cluster: dict[str, Any] | None = None,
    keys: tuple[str, ...] = ANVIL_KEYS,
    addresses: list[str] | None = None,
) -> list[KeeperProcess]:
    """``n`` keepers configured from ``base`` (a config without signer, metrics, cluster):
    keeper ``k<i>`` signs with ``keys[i]``."""
    from eth_account import Account

    out = []
    for i in range(n):
        name = f"k{i}"
        port = free_port()
        data = {k: dict(v) for k, v in base.items()}
        data["signer"] = {"key_env": f"KEEPER_CLUSTER_KEY_{name.upper()}"}
        data["metrics"] = {"bind": f"127.0.0.1:{port}"}
        data["cluster"] = {"enabled": True, "keeper_id": name, **(cluster or {})}
        path = directory / f"{name}.toml"
        write_toml(path, data)
        address = addresses[i] if addresses else Account.from_key(keys[i]).address
        out.append(KeeperProcess(name, keys[i], address, path, port))
    return out


def wait_healthy(keepers: list[KeeperProcess], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for k in keepers:
        while True:
            h = k.health()
            if h is not None and h.get("status") == "ok":
                break
            if not k.alive():
                tail = k.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"keeper {k.name} exited: {tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"keeper {k.name} not healthy: {h}")
            time.sleep(0.3)
