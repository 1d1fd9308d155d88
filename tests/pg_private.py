"""A private PostgreSQL server for one test, which the test may stop, crash and restart (the
machine's shared server at 127.0.0.1:5432 must never be).

The binaries are the machine's (``/usr/lib/postgresql/<version>/bin``, or ``pg_config
--bindir``); the data directory and the socket directory live in a fresh temporary directory;
the server listens on a free port of 127.0.0.1, trust auth, superuser ``postgres``.
PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run as the ``postgres``
OS user (``runuser``), owner of the directory. Without the binaries the test is skipped, unless
KEEPER_TEST_REQUIRE_PG=1 (CI), which makes it fail. The server is stopped at teardown, also
when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keeper.cluster.launch import free_port


def pg_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: the newest under /usr/lib/postgresql, else
    ``pg_config --bindir``; None when neither has them."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "pg_ctl").exists() and (bindir / "initdb").exists():
            return bindir
    return None


class PrivatePostgres:
    """One server: ``url`` to connect (database ``postgres``), ``stop(mode)`` and ``start()``."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.logfile = root / "server.log"
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres", "postgres")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        out = subprocess.run(
            [*self._as, str(self.bindir / tool), *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {out.stdout}{out.stderr}")

    def initdb(self) -> None:
        self.sockets.mkdir()
        if self._as:
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--no-sync", "--no-instructions", "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                  "-l", str(self.logfile), "-o", options)  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions ended, a clean shutdown; ``immediate``: every server process
        killed at once, in-flight transactions lost, crash recovery at the next start."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-D", str(self.data), "-m", mode)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private server (the ``private_pg`` fixture of tests/conftest.py)."""
    bindir = pg_bindir()
    missing = None
    if bindir is None:
        missing = "PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql"
    elif os.geteuid() == 0 and not _has_user("postgres"):
        missing = "running as root and no postgres user to run the server as"
    if missing is not None:
        if os.environ.get("KEEPER_TEST_REQUIRE_PG") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    assert bindir is not None
    # Not pytest's tmp_path: its parents are root's alone (0700), closed to the postgres user.
    root = Path(tempfile.mkdtemp(prefix="keeper-pg-"))
    pg = PrivatePostgres(bindir, root, free_port())
    try:
        pg.initdb()
        pg.start()
        yield pg
    finally:
        # Whatever the test left (running, half started, stopping): a server is stopped.
        for _ in range(3):
            if not (pg.data / "postmaster.pid").exists():
                break
            try:
                pg.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(1)
        shutil.rmtree(root, ignore_errors=True)
