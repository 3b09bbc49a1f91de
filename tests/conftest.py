"""Shared pytest fixtures.

Sections (append new ones at the end, each under its own banner):

* Databases — scratch databases on SQLite, PostgreSQL and MariaDB, and a migrated ledger.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import Engine, create_engine, delete, insert, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from syncd.adapters.ledger import (
    SqlLedger,
    create_ledger_engine,
    make_sessionmaker,
    metadata,
    migrate,
)

# =================================================================================================
# Databases
#
# ``db_kind`` runs a test module once per backend.  ``scratch_database(kind)`` makes a fresh,
# uniquely named database and drops it afterwards, so no test depends on leftovers; it raises
# ``DatabaseUnavailableError`` when the server cannot be reached, and ``database_or_skip`` turns
# that into a skip — or, when ``CI=true``, into a failure: a missing server must not pass silently.
#
# Server addresses can be overridden with SYNCD_TEST_POSTGRES_URL / SYNCD_TEST_MARIADB_URL: an
# administrative URL (any database) of a role allowed to CREATE and DROP DATABASE.
# =================================================================================================

DB_KINDS = ("sqlite", "postgresql", "mariadb")

#: Tried in order: the first role that connects is used (local servers trust both on dev boxes).
POSTGRES_ADMIN_URLS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://root@127.0.0.1:5432/postgres",
)
MARIADB_ADMIN_URLS = ("mysql+pymysql://root@127.0.0.1:3306/test",)

_CONNECT_TIMEOUT = {"postgresql": {"connect_timeout": 3}, "mariadb": {"connect_timeout": 3}}


class DatabaseUnavailableError(Exception):
    """The database server for a backend cannot be reached."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it in CI, where every server is expected to be up."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


_admin_engines: dict[str, Engine] = {}
#: Remembered so that an unreachable server costs one connect timeout, not one per test.
_admin_problems: dict[str, str] = {}


def _admin_engine(kind: str) -> Engine:
    if kind in _admin_engines:
        return _admin_engines[kind]
    if kind in _admin_problems:
        raise DatabaseUnavailableError(_admin_problems[kind])
    override = os.environ.get(f"SYNCD_TEST_{'POSTGRES' if kind == 'postgresql' else 'MARIADB'}_URL")
    candidates = (
        (override,)
        if override
        else (POSTGRES_ADMIN_URLS if kind == "postgresql" else MARIADB_ADMIN_URLS)
    )
    problems: list[str] = []
    for url in candidates:
        engine = create_engine(
            url,
            isolation_level="AUTOCOMMIT",
            poolclass=NullPool,
            connect_args=_CONNECT_TIMEOUT[kind],
        )
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            engine.dispose()
            problems.append(f"{make_url(url).render_as_string()}: {exc.orig}")
            continue
        _admin_engines[kind] = engine
        return engine
    _admin_problems[kind] = f"{kind} server unavailable: {'; '.join(problems)}"
    raise DatabaseUnavailableError(_admin_problems[kind])


@contextmanager
def scratch_database(kind: str, directory: Path | None = None) -> Iterator[str]:
    """A URL to a brand-new empty database of ``kind``, dropped (or deleted) on exit.

    ``kind`` is one of :data:`DB_KINDS`.  For SQLite the file goes in ``directory`` (a temporary
    directory when None).
    """
    if kind == "sqlite":
        if directory is not None:
            yield f"sqlite:///{directory / f'{uuid.uuid4().hex[:8]}.db'}"
            return
        with tempfile.TemporaryDirectory(prefix="syncd-test-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'scratch.db'}"
        return
    if kind not in DB_KINDS:
        raise ValueError(f"unknown database kind {kind!r}")
    admin = _admin_engine(kind)
    name = f"syncd_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.connect() as conn:
        if kind == "postgresql":
            conn.execute(text(f"CREATE DATABASE {quoted}"))
        else:
            conn.execute(text(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4"))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE: a test that leaked a connection must not leave the database behind.
            suffix = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}{suffix}"))


@contextmanager
def database_or_skip(kind: str, directory: Path | None = None) -> Iterator[str]:
    """:func:`scratch_database`, skipping (or failing in CI) when the server is unreachable."""
    try:
        with scratch_database(kind, directory) as url:
            yield url
    except DatabaseUnavailableError as exc:
        unavailable(str(exc))


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite"),
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def db_kind(request: pytest.FixtureRequest) -> str:
    """The backend under test: each module that uses it runs once per backend."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def ledger_url(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database of ``db_kind``, fresh for each test module (not migrated)."""
    with database_or_skip(db_kind, tmp_path_factory.mktemp("ledger")) as url:
        yield url


@pytest.fixture
def fresh_ledger_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``db_kind``, fresh for this one test (not migrated)."""
    with database_or_skip(db_kind, tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def ledger_engine(ledger_url: str) -> Iterator[Engine]:
    """A ledger engine on ``ledger_url``, migrated to head once per module."""
    engine = create_ledger_engine(ledger_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _empty_ledger(engine: Engine) -> None:
    """Every ledger table emptied, the cursor back at 0 as the migration leaves it."""
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(delete(table))
            if table.name == "sync_cursor":
                conn.execute(
                    insert(table).values(id=1, last_event_id=0, updated_at=datetime(2000, 1, 1))
                )


@pytest.fixture
def ledger(ledger_engine: Engine) -> Iterator[SqlLedger]:
    """The module's ledger through the port (``with ledger.begin() as tx``), emptied first."""
    _empty_ledger(ledger_engine)
    opened = SqlLedger(ledger_engine)
    yield opened
    # Closes the SQLite ledger's shared connection; the module's engine opens new ones on demand.
    opened.dispose()


@pytest.fixture
def ledger_sessions(ledger_engine: Engine) -> sessionmaker[Session]:
    """Sessions on the module's ledger, emptied before each test (the cursor back at 0)."""
    _empty_ledger(ledger_engine)
    return make_sessionmaker(ledger_engine)


# =================================================================================================
# Long runs
#
# Chaos and soak tests have a fast form that runs in the normal suite and a long form (more
# cycles) that runs with ``pytest --long``; ``long_run(fast, long)`` picks the figure.
# =================================================================================================


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long forms of the chaos tests (figures recorded in docs/reliability.md)",
    )


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))


# =================================================================================================
# Long-run time limits
#
# pyproject's per-test timeout (300 s) suits the normal suite; the long forms (tests that take the
# ``long_run`` fixture, run with ``--long``) are given an hour instead.
# =================================================================================================

LONG_RUN_TIMEOUT_SECONDS = 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--long"):
        return
    for item in items:
        if "long_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(LONG_RUN_TIMEOUT_SECONDS))
