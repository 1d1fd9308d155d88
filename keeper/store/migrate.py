"""Schema migrations of the store, with Alembic: the scripts live in ``keeper/store/migrations``
(inside the package, so an installed keeper can migrate), ``Store.open`` upgrades to the head
revision, and an operator drives the same machinery from the command line::

    python -m keeper.store.migrate --url postgresql://keeper@db/keeper current
    python -m keeper.store.migrate --config keeper.toml upgrade      # to head (or a revision)
    python -m keeper.store.migrate --config keeper.toml upgrade --sql  # print the SQL, run none
    python -m keeper.store.migrate --config keeper.toml downgrade 0001
    python -m keeper.store.migrate history
    python -m keeper.store.migrate --url sqlite:///var/keeper.db check  # models == migrations
    python -m keeper.store.migrate --url sqlite:///tmp/dev.db revision -m "add x"  # a new one

A store created before Alembic managed the schema carries a ``schema_version`` table instead of
``alembic_version``. At version ``LEGACY_SCHEMA_VERSION`` its tables are exactly the baseline
revision's, so it is stamped with ``BASELINE`` and upgraded from there, rows untouched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, inspect, text

from keeper.secrets import register_url
from keeper.store.db import SchemaVersionMismatch, make_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: The first revision: the schema as it was when Alembic took over.
BASELINE = "0001"
#: ``schema_version.version`` of a store from before Alembic whose tables equal ``BASELINE``.
LEGACY_SCHEMA_VERSION = 4
#: Serialises concurrent upgrades of one PostgreSQL database (keepers sharing a store).
_PG_LOCK_KEY = 0x6B656570  # "keep"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """The Alembic configuration of the store: our scripts, and the database to work on (an
    open connection, used as is, or a URL)."""
    cfg = Config(stdout=sys.stdout)
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    cfg.attributes["url"] = url
    return cfg


def head() -> str:
    """The newest revision of the scripts."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, "keeper/store/migrations/versions has no revision"
    return revision


def current(conn: Connection) -> str | None:
    """The revision the database is at (None: not managed by Alembic yet, or empty)."""
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: Connection, revision: str = "head") -> None:
    """Bring the database to ``revision``: adopt a store from before Alembic, refuse one this
    keeper cannot read (unversioned, or at a revision its scripts do not know), then run the
    missing revisions. Run it inside a transaction (``engine.begin()``): on PostgreSQL a failed
    step then leaves the database as it was."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    cfg = alembic_config(conn)
    _adopt_legacy_store(conn, cfg)
    found = current(conn)
    if found is not None:
        try:
            ScriptDirectory.from_config(cfg).get_revision(found)
        except CommandError:
            raise SchemaVersionMismatch(f"revision {found!r}", head()) from None
    command.upgrade(cfg, revision)


def _adopt_legacy_store(conn: Connection, cfg: Config) -> None:
    tables = set(inspect(conn).get_table_names())
    if not tables or "alembic_version" in tables:
        return
    if "schema_version" not in tables:
        raise SchemaVersionMismatch(None, head())
    found = conn.execute(text("SELECT version FROM schema_version WHERE id = 1")).scalar()
    if found is None:
        raise SchemaVersionMismatch(None, head())
    if int(found) != LEGACY_SCHEMA_VERSION:
        raise SchemaVersionMismatch(
            f"legacy schema version {found}",
            head(),
            hint=f"a keeper release from before Alembic brings it to version "
            f"{LEGACY_SCHEMA_VERSION}; open it with that release once",
        )
    command.stamp(cfg, BASELINE)


def _describe_unmanaged(conn: Connection) -> str:
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return "none: an empty database (upgrade creates the schema)"
    if "schema_version" in tables:
        found = conn.execute(text("SELECT version FROM schema_version WHERE id = 1")).scalar()
        return f"none: a store from before Alembic at schema version {found} (upgrade adopts it)"
    return "none: tables without a schema version (this keeper refuses them)"


def _as_list(scripts: Script | list[Script | None] | None) -> list[Script]:
    if scripts is None:
        return []
    return [x for x in scripts if x is not None] if isinstance(scripts, list) else [scripts]


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    if args.config:
        from keeper.config import load_config

        return load_config(args.config).store.url
    raise SystemExit("give the store with --url URL or --config keeper.toml")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keeper.store.migrate", description="Schema migrations of the store."
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="store URL (sqlite:///path or postgresql://...)")
    where.add_argument("--config", type=Path, help="keeper TOML file: its [store] url")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="migrate to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    up.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    down = sub.add_parser("downgrade", help="migrate back to a revision (base: empty)")
    down.add_argument("revision")
    sub.add_parser("current", help="the revision the database is at")
    sub.add_parser("history", help="every revision, newest first")
    sub.add_parser("check", help="fail if the models differ from the migrated database")
    rev = sub.add_parser(
        "revision", help="upgrade the store, then write a new revision: the models' changes"
    )
    rev.add_argument("-m", "--message", required=True, help="what the revision changes")
    args = parser.parse_args(argv)
    # Alembic reports each step it runs ("Running upgrade 0001 -> 0002") on its logger.
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "history":
        command.history(alembic_config(), verbose=True)
        return 0
    url = _url(args)
    register_url(url)  # a password in the URL never shows in an error
    if args.command == "upgrade" and args.sql:
        command.upgrade(alembic_config(url=url), args.revision, sql=True)
        return 0
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if args.command == "upgrade":
                upgrade(conn, args.revision)
                print(f"at revision {current(conn)}")
            elif args.command == "downgrade":
                command.downgrade(alembic_config(conn), args.revision)
                print(f"at revision {current(conn)}")
            elif args.command == "current":
                print(current(conn) or _describe_unmanaged(conn))
            elif args.command == "revision":
                upgrade(conn)
                (script,) = _as_list(
                    command.revision(
                        alembic_config(conn),
                        args.message,
                        autogenerate=True,
                        rev_id=f"{int(head()) + 1:04d}",  # revisions are numbered in order
                    )
                )
                print(f"wrote {script.path}: review it (types written out), then test it")
            else:
                command.check(alembic_config(conn))
                print("the models and the migrations agree")
    except (CommandError, SchemaVersionMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
