"""A managed anvil process: start on a free loopback port, wait until it answers, stop cleanly.

Usage::

    with Anvil(chain_id=31337) as node:
        w3 = Web3(Web3.HTTPProvider(node.url))

Design notes (the why):
- The port is chosen by the kernel (``--port 0``) and read back from anvil's own "Listening on"
  line, so two parallel pytest-xdist workers can never race for the same port.
- tools/node_modules/.bin/anvil is a Node wrapper that spawns the native binary and exits on
  SIGTERM without waiting for its child. anvil therefore runs in its own process group and is
  stopped with a signal to the whole group; we wait until every member is gone, so a ``--state``
  dump is complete when ``stop()`` returns and nothing is left running.
- Output goes to a log file, never to the terminal; a failed start quotes the log's tail.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ANVIL = REPO_ROOT / "tools" / "node_modules" / ".bin" / "anvil"

#: Block gas limit of the devnet. Large on purpose: a parity test packs 1,000 calls of the
#: math harness into one ``eth_call`` (anvil caps an ``eth_call`` at the block gas limit).
DEFAULT_GAS_LIMIT = 10_000_000_000

_LISTENING = re.compile(r"Listening on (\S+):(\d+)")


class AnvilError(RuntimeError):
    """Base of every devnet failure."""


class AnvilNotFound(AnvilError):
    """The anvil binary does not exist (bootstrap not run, or ANVIL_BIN wrong)."""


class AnvilStartError(AnvilError):
    """anvil exited or did not answer ``eth_chainId`` in time; carries the log tail."""


def resolve_anvil_binary(explicit: str | Path | None = None) -> Path:
    """The executable to run: ``explicit``, else ANVIL_BIN, else tools/node_modules/.bin/anvil.

    The npm ``.bin/anvil`` is a Node script that spawns the platform binary shipped in the
    sibling package ``@foundry-rs/anvil-<platform>``; when that binary is there we run it
    directly: no Node start-up, and anvil is our direct child, so we reap it ourselves.
    """
    override = os.environ.get("ANVIL_BIN")
    if explicit is not None:
        path, source = Path(explicit), "explicit path"
    elif override:
        path, source = Path(override), "ANVIL_BIN"
    else:
        path, source = DEFAULT_ANVIL, "default path"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise AnvilNotFound(
            f"anvil binary not found or not executable at {path} ({source}); "
            "run `bash scripts/bootstrap.sh` or set ANVIL_BIN"
        )
    return _native_behind_npm_wrapper(path)


def _native_behind_npm_wrapper(path: Path) -> Path:
    real = path.resolve()
    if real.suffix != ".mjs":
        return path
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine)
    system = os.uname().sysname.lower()
    native = real.parent.parent / f"anvil-{system}-{machine}" / "bin" / "anvil"
    return native if native.is_file() and os.access(native, os.X_OK) else path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


class Anvil:
    """One anvil process. Not started until ``start()`` or ``with``."""

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        block_time: float | None = None,
        state: str | Path | None = None,
        accounts: int = 10,
        balance_eth: int | None = None,
        gas_limit: int | None = DEFAULT_GAS_LIMIT,
        disable_block_gas_limit: bool = False,
        code_size_limit: int | None = None,
        disable_code_size_limit: bool = False,
        timestamp: int | None = None,
        log_path: str | Path | None = None,
        binary: str | Path | None = None,
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        """
        Args:
            chain_id: ``--chain-id``.
            block_time: seconds between blocks; ``None`` = automine (a block per transaction).
            state: ``--state`` file: loaded at start if it exists, dumped on clean stop.
            accounts: number of funded dev accounts (``--accounts``).
            balance_eth: ether per dev account (``--balance``); anvil's default if None.
            gas_limit: block gas limit, which also caps ``eth_call`` gas; None = anvil default.
            disable_block_gas_limit: ``--disable-block-gas-limit``.
            code_size_limit: ``--code-size-limit`` in bytes (EIP-170 default 0x6000 otherwise).
            disable_code_size_limit: ``--disable-code-size-limit`` (large test harnesses).
            timestamp: genesis timestamp (``--timestamp``), for reproducible chains.
            log_path: where anvil's output goes (kept); if None, a temporary file that stop()
                deletes.
            binary: explicit anvil path; otherwise ANVIL_BIN or the repo's pinned binary.
            startup_timeout: seconds to wait for ``eth_chainId`` to answer.
            extra_args: further anvil flags, passed through verbatim.
        """
        self.chain_id = chain_id
        self.block_time = block_time
        self.state = Path(state) if state is not None else None
        self.accounts = accounts
        self.balance_eth = balance_eth
        self.gas_limit = gas_limit
        self.disable_block_gas_limit = disable_block_gas_limit
        self.code_size_limit = code_size_limit
        self.disable_code_size_limit = disable_code_size_limit
        self.timestamp = timestamp
        self._log_given = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = None
        self._binary = Path(binary) if binary is not None else None
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None

    # --- public API -------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise AnvilError("anvil is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            str(resolve_anvil_binary(self._binary)),
            "--host", self.host,
            "--port", "0",  # kernel-chosen free port, read back from the log
            "--chain-id", str(self.chain_id),
            "--accounts", str(self.accounts),
        ]  # fmt: skip
        if self.block_time is not None:
            cmd += ["--block-time", _fmt_seconds(self.block_time)]
        if self.state is not None:
            cmd += ["--state", str(self.state)]
        if self.balance_eth is not None:
            cmd += ["--balance", str(self.balance_eth)]
        if self.gas_limit is not None:
            cmd += ["--gas-limit", str(self.gas_limit)]
        if self.disable_block_gas_limit:
            cmd.append("--disable-block-gas-limit")
        if self.code_size_limit is not None:
            cmd += ["--code-size-limit", str(self.code_size_limit)]
        if self.disable_code_size_limit:
            cmd.append("--disable-code-size-limit")
        if self.timestamp is not None:
            cmd += ["--timestamp", str(self.timestamp)]
        cmd += list(self.extra_args)
        return cmd

    def start(self) -> Anvil:
        if self.running:
            return self
        cmd = self.command()
        if self._log_given is not None:
            self.log_path = self._log_given
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix="anvil-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self._log_file = log
        interrupted: list[int] = []
        try:
            with _sigint_noted(interrupted):
                # Own session = own process group: stop() signals the wrapper and the native
                # binary. Being in its own session, anvil would outlive a parent killed by a
                # signal (atexit does not run then), so on Linux it also gets SIGTERM when its
                # parent dies.
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=REPO_ROOT,
                    preexec_fn=_die_with_parent(),
                )
        except OSError as exc:
            log.close()
            raise AnvilStartError(f"cannot execute {cmd[0]}: {exc}") from exc
        _LIVE.add(self)
        try:
            if interrupted:  # the Ctrl-C that came during the fork, now that stop() can run
                signal.raise_signal(signal.SIGINT)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group (anvil dumps ``--state``), SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # leader of its own session, so pgid == pid
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _group_alive(pgid) and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
            if _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        proc.wait()  # reap our direct child: no zombie
        # The native binary (grandchild) is reaped by init; wait until it is really gone.
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._proc = None
        self.port = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._log_given is None and self.log_path is not None:
            # Our own temporary log: gone with the process (start errors quote its tail).
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
        _LIVE.discard(self)

    def restart(self) -> Anvil:
        """Stop (SIGTERM: a ``--state`` file is dumped) and start again with the same flags, so
        the chain continues from the dump. The port is new (kernel-chosen): a proxy in front
        (keeper.devnet.fault_proxy) gives clients a stable URL across the restart."""
        self.stop()
        return self.start()

    def rpc(self, method: str, params: list[object] | None = None, timeout: float = 5.0) -> object:
        """A raw JSON-RPC call (no web3 needed); raises AnvilError on an RPC error."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        req = urllib.request.Request(
            self.url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = json.loads(resp.read())
        if "error" in reply:
            raise AnvilError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines) if self.log_path else "<no log>"

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.port is not None else "stopped"
        return f"Anvil(chain_id={self.chain_id}, {where})"

    # --- internals --------------------------------------------------------------------

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.log_path is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AnvilStartError(
                    f"anvil exited with status {self._proc.returncode} during start-up "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            if self.port is None:
                match = _LISTENING.search(self.log_path.read_text(errors="replace"))
                if match:
                    self.host, self.port = match.group(1), int(match.group(2))
            if self.port is not None:
                try:
                    answered = int(str(self.rpc("eth_chainId", timeout=1.0)), 16)
                except (OSError, urllib.error.URLError, ValueError, AnvilError):
                    answered = None
                if answered is not None:
                    if answered != self.chain_id:
                        raise AnvilStartError(
                            f"anvil answers chain id {answered}, expected {self.chain_id} "
                            f"(a --state file from another chain?)"
                        )
                    return
            time.sleep(0.05)
        raise AnvilStartError(
            f"anvil did not answer eth_chainId within {self.startup_timeout:.0f} s "
            f"(log {self.log_path}):\n{self.log_tail()}"
        )


@contextlib.contextmanager
def _sigint_noted(noted: list[int]) -> Iterator[None]:
    """SIGINT only noted, not raised, for the duration (main thread only: Python runs signal
    handlers there). A fork with a preexec hook runs Python's at-fork hooks; a KeyboardInterrupt
    raised inside one is swallowed ("Exception ignored") and leaves logging's lock held, so
    the Ctrl-C is lost and the next log call of another thread deadlocks."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None  # a handler not set from Python: left alone
    ):
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook: prctl(PR_SET_PDEATHSIG, SIGTERM) on Linux; None elsewhere."""
    if os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in the group. A zombie is already dead: when a
    wrapper dies first, its orphaned child is reaped by init, possibly seconds later."""
    proc_root = Path("/proc")
    if proc_root.is_dir():
        for entry in proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Safety net: a test run interrupted between start() and stop() leaves no anvil behind.
_LIVE: set[Anvil] = set()


@atexit.register
def _stop_all() -> None:
    for node in list(_LIVE):
        with contextlib.suppress(Exception):
            node.stop(timeout=2.0)
