"""The ledger's engine: hidden values, checked connections, SQLite in WAL mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from syncd.adapters.dburl import engine_url

__all__ = ["create_ledger_engine", "make_sessionmaker"]


def create_ledger_engine(url: str) -> Engine:
    """An engine for the ledger database at ``url`` (SQLite, PostgreSQL or MariaDB).

    Bound values stay out of logs and error messages; pooled connections are checked and renewed
    for a long-running daemon.  A SQLite file's directory is created; SQLite runs in WAL mode with
    a generous busy timeout, so the worker threads and a CLI can share it.  ``postgres://`` and
    URLs without a driver connect with an installed one (``dburl.engine_url``, which raises
    ``UnusableUrlError`` when there is none).
    """
    parsed = engine_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    connect_args: dict[str, Any] = {}
    if sqlite:
        connect_args["check_same_thread"] = False
        database = parsed.database or ""
        in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
        if not in_memory and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # InnoDB's default REPEATABLE READ gap-locks the empty range an UPDATE or DELETE finds no
        # row in: two workers upserting participants of different appointments then deadlock on
        # their INSERTs.  READ COMMITTED, PostgreSQL's default and what the repositories' guarded
        # statements are written for, takes no such locks.
        options["isolation_level"] = "READ COMMITTED"
    engine = create_engine(
        parsed,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
        **options,
    )
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL survives a crash of the process (what the intent/outcome journal must
        # survive) without an fsync per commit; only an OS crash or power loss can lose the last
        # commits, and those are recovered by reading SecureVideo before acting, as after any
        # ambiguous answer.  FULL made every appointment cost three fsyncs.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # Records are copied out of rows anyway; expiring on commit would only cost reloads.
    return sessionmaker(bind=engine, expire_on_commit=False)
