"""`keeper run` and `keeper status`: configuration errors are one clear line and exit 1.

`keeper run` runs every start-up check (``keeper.preflight.check_config``: deployment file,
signer and its password, node, code and ABI hashes) and binds the metrics port *before* it
opens the store, so a failing start writes nothing. `keeper status` only reads: it never
creates a database (``NoDatabase`` when there is none yet) and exits 1 when the node does not
answer (the lag is then unknown), after printing what the store alone says.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

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


class NoDatabase(RuntimeError):
    """A read-only command found no keeper database (it never creates one)."""


def open_existing_store(url: str) -> Any:
    """``Store.open`` for a database that already holds the keeper's schema; raises
    ``NoDatabase`` rather than creating one (opening an empty database creates the schema)."""
    from sqlalchemy import create_engine, inspect

    from keeper.secrets import redact_url
    from keeper.store import Store
    from keeper.store.db import normalise_url

    prefix = "sqlite:///"
    if url.startswith(prefix):
        path = Path(url[len(prefix) :])
        if not path.is_file():
            raise NoDatabase(f"no keeper database at {path} (store.url): `keeper run` creates it")
    else:
        engine = create_engine(normalise_url(url), pool_pre_ping=True)
        try:
            with engine.connect() as conn:
                # alembic_version since revision 0002 (which dropped schema_version).
                tables = inspect(conn)
                present = tables.has_table("alembic_version") or tables.has_table("schema_version")
        except Exception as exc:
            raise StoreError(
                f"cannot connect to the store {redact_url(url)}: {type(exc).__name__}"
            ) from None
        finally:
            engine.dispose()
        if not present:
            raise NoDatabase(
                f"no keeper schema in the store {redact_url(url)}: `keeper run` creates it"
            )
    return Store.open(url)


def _fail(exc: BaseException) -> int:
    sys.stderr.write(f"error: {printable(type(exc).__name__)}: {printable(scrub(str(exc)))}\n")
    return 1


def run_keeper(config_path: Path, *, progress: bool = True, log_level: str = "INFO") -> int:
    from keeper.metrics import MetricsBindError
    from keeper.preflight import check_config
    from keeper.service import KeeperService
    from keeper.signer import KeystoreError

    configure_logging(log_level)
    try:
        cfg = load_config(config_path)
        # Every check before anything is opened: a missing password or an unreachable node
        # must not leave a fresh database behind.
        check_config(cfg, need_signer=not cfg.service.dry_run)
        service = KeeperService(cfg, progress=progress and sys.stderr.isatty())
        # run() binds the metrics port before it opens the store.
        return service.run()
    except (*_STARTUP_ERRORS, KeystoreError, MetricsBindError) as exc:
        log.error("start-up failed", extra={"error": scrub(f"{type(exc).__name__}: {exc}")})
        return _fail(exc)


def show_status(config_path: Path, *, as_json: bool) -> int:
    from keeper.chain.rpc import Rpc, make_web3
    from keeper.status import collect, probe_endpoints, render

    try:
        cfg = load_config(config_path)
        store = open_existing_store(cfg.store.url)
    except (ConfigError, StoreError, NoDatabase) as exc:
        return _fail(exc)
    head: int | None = None
    rpc_error = None
    try:
        w3 = make_web3(
            cfg.rpc.url, timeout=float(cfg.rpc.timeout_seconds), fallback_urls=cfg.rpc.fallback_urls
        )
        head = Rpc(w3, cfg.rpc.url).block("latest").number
    except Exception as exc:  # the store alone still answers most questions
        rpc_error = scrub(f"{type(exc).__name__}: {exc}")
        head = None
    try:
        st = collect(store, head)
        if cfg.cluster.enabled:
            from keeper.cluster.view import collect_cluster

            st.cluster = collect_cluster(store, head, cfg.cluster.lease_ttl_seconds)
    finally:
        store.close()
    st.rpc_error = rpc_error
    if cfg.rpc.fallback_urls:
        urls = [cfg.rpc.url, *cfg.rpc.fallback_urls]
        st.endpoints = probe_endpoints(urls, float(cfg.rpc.timeout_seconds))
    if as_json:
        sys.stdout.write(st.to_json() + "\n")
    else:
        render(st)
    if rpc_error is not None:
        # The store's view was printed, but the lag (is the keeper keeping up?) is unknown.
        sys.stderr.write(
            f"error: {printable(rpc_error)} (chain unreachable: the store's view is shown, the "
            "lag is unknown)\n"
        )
        return 1
    return 0


def drain_keeper(config_path: Path, keeper_id: str) -> int:
    """``keeper cluster drain``: ask one keeper of the cluster to give its leases back."""
    from keeper.cluster.view import drain

    try:
        cfg = load_config(config_path)
        if not cfg.cluster.enabled:
            raise ConfigError("cluster mode is off in this configuration", "cluster.enabled")
        store = open_existing_store(cfg.store.url)
    except (ConfigError, StoreError, NoDatabase) as exc:
        return _fail(exc)
    try:
        found = drain(store, keeper_id)
    finally:
        store.close()
    if not found:
        sys.stderr.write(f"error: no keeper {printable(keeper_id)} in this cluster\n")
        return 1
    sys.stdout.write(
        f"keeper {printable(keeper_id)} asked to drain: it gives its leases back at its next "
        "heartbeat and takes none until it restarts\n"
    )
    return 0
