"""Running the `keeper` command line as a user does: a subprocess in a folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_keeper(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m keeper ARGS`` in ``cwd``, without the caller's KEEPER* variables (a test's
    configuration is what it passes), plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "keeper", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
