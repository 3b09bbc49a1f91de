"""Alembic, driven programmatically: the ledger's schema belongs to ``migrations/``."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

__all__ = [
    "current_revision",
    "downgrade",
    "head_revision",
    "is_at_head",
    "migrate",
    "script_location",
]


def script_location() -> Path:
    """Alembic's script directory: package ``syncd.migrations`` if installed, else the repo's."""
    try:
        spec = importlib.util.find_spec("syncd.migrations")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # syncd/adapters/ledger/migrate.py → the repository's top directory
    return Path(__file__).resolve().parents[3] / "migrations"


def _alembic_config(connection: Connection | None = None) -> Config:
    # No ini file, so Alembic never calls logging.config.fileConfig (which would disable syncd's
    # loggers).  The connection travels in attributes: no URL, so no "%" interpolation trap.
    config = Config()
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


log = structlog.get_logger("syncd.ledger")

#: Arbitrary but fixed: the PostgreSQL advisory lock and MariaDB named lock taken while migrating.
_MIGRATION_LOCK_KEY: Final = 0x5359_4E43_4400
_MIGRATION_LOCK_NAME: Final = "syncd.ledger.migrate"


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One connection, serialised against other migrators, atomic where the backend allows."""
    with engine.begin() as conn:
        backend = conn.dialect.name
        if backend == "sqlite":
            # sqlite3's legacy mode runs DDL outside any transaction: an explicit BEGIN makes the
            # migration all-or-nothing, and IMMEDIATE takes the write lock up front.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
        elif backend == "postgresql":
            # Replicas racing "upgrade head" is a known Alembic failure; this waits its turn.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            yield conn
        elif backend in ("mysql", "mariadb"):
            # MySQL DDL commits implicitly, so a session-level named lock instead of a transaction.
            got = conn.execute(text("SELECT GET_LOCK(:n, 600)"), {"n": _MIGRATION_LOCK_NAME})
            if got.scalar() != 1:
                raise RuntimeError("another process has been migrating the ledger for 10 minutes")
            try:
                yield conn
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": _MIGRATION_LOCK_NAME})
        else:
            yield conn


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the ledger schema to ``revision``."""
    with _migration_transaction(engine) as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(_alembic_config(conn), revision)
        after = MigrationContext.configure(conn).get_current_revision()
    if after != before:
        # Alembic's own lines are silenced (see syncd.runtime.log): this is the one that says it.
        log.info("ledger_migrated", from_revision=before, to_revision=after)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the ledger schema to ``revision`` (``"base"`` drops every ledger table)."""
    with _migration_transaction(engine) as conn:
        command.downgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for a database Alembic never touched."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revisions found in {script_location()}")
    return head


def is_at_head(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
