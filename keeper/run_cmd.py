"""`keeper run` and `keeper status`: configuration errors are one clear line and exit 1."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from keeper.chain import ChainError
from keeper.config import ConfigError, load_config
from keeper.deployment import DeploymentError
from keeper.logs import configure_logging
from keeper.margin_cmd import printable
from keeper.secrets import scrub
from keeper.store import StoreError

log = logging.getLogger("keeper.run")

#: Errors of the operator's making (config, deployment file, wrong chain, database): one line,
#: exit status 1, nothing started.
_STARTUP_ERRORS = (ConfigError, DeploymentError, ChainError, StoreError)


def _fail(exc: BaseException) -> int:
    sys.stderr.write(f"error: {printable(type(exc).__name__)}: {printable(scrub(str(exc)))}\n")
    return 1


def run_keeper(config_path: Path, *, progress: bool = True, log_level: str = "INFO") -> int:
    from keeper.service import KeeperService
    from keeper.signer import KeystoreError

    configure_logging(log_level)
    try:
        cfg = load_config(config_path)
        service = KeeperService(cfg, progress=progress and sys.stderr.isatty())
        return service.run()
    except (*_STARTUP_ERRORS, KeystoreError) as exc:
        log.error("start-up failed", extra={"error": scrub(f"{type(exc).__name__}: {exc}")})
        return _fail(exc)


def show_status(config_path: Path, *, as_json: bool) -> int:
    from keeper.chain.rpc import Rpc, make_web3
    from keeper.status import collect, render
    from keeper.store import Store

    try:
        cfg = load_config(config_path)
        store = Store.open(cfg.store.url)
    except (ConfigError, StoreError) as exc:
        return _fail(exc)
    head = None
    rpc_error = None
    try:
        head = Rpc(make_web3(cfg.rpc.url, timeout=float(cfg.rpc.timeout_seconds)), cfg.rpc.url)
        head = head.block("latest").number
    except Exception as exc:  # the store alone still answers most questions
        rpc_error = scrub(f"{type(exc).__name__}: {exc}")
        head = None
    try:
        st = collect(store, head)
    finally:
        store.close()
    st.rpc_error = rpc_error
    if as_json:
        sys.stdout.write(st.to_json() + "\n")
    else:
        render(st)
    return 0
