"""What went wrong with a database, for code that must not import SQLAlchemy itself.

:func:`failure_of` reads a SQLAlchemy error into a :class:`DatabaseFailure`: which database (the
EHR outbox or the ledger) and which class of problem — credentials, an unreachable server, a
permission, a missing table or column… — judged from the driver's error code or SQLSTATE.  Only
where the driver gives no code (libpq's connection failures, SQLite's "no such table") is its
text read.  The runtime turns a failure into a sentence that names the setting to fix.

Which database: the outbox reader marks every error it lets through (:func:`mark`); the only
other database syncd talks to is its ledger, so an unmarked error is the ledger's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from syncd.core.errors import TemporaryError
from syncd.core.redact import without_quoted_values

OUTBOX: Final = "EHR outbox"
LEDGER: Final = "ledger"

# The classes of problem, each with its own fix.
CREDENTIALS: Final = "credentials"  # wrong password, unknown role/user
UNREACHABLE: Final = "unreachable"  # refused, unknown host, timeout, connection lost
NO_DATABASE: Final = "no_database"  # the server has no database of that name
NOT_FOUND: Final = "not_found"  # a SQLite file that cannot be opened
PERMISSION: Final = "permission"  # the account may not read (or write) that table
MISSING_TABLE: Final = "missing_table"
MISSING_COLUMN: Final = "missing_column"
READ_ONLY: Final = "read_only"  # a write refused (the ledger on a replica; never the EHR)
OUTAGE: Final = "outage"  # any other operational failure: worth retrying
OTHER: Final = "other"  # a data or programming error: most likely a bug

#: Failures a daemon waits out rather than refusing to start: the server will come back.
TRANSIENT: Final = frozenset({UNREACHABLE, OUTAGE})

_OUTAGE_TYPES = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)
_MARK = "_syncd_database"

# PostgreSQL SQLSTATEs (psycopg's ``sqlstate``, psycopg2's ``pgcode``), exact codes first.
_PG_CODES = {
    "28P01": CREDENTIALS,
    "28000": CREDENTIALS,
    "3D000": NO_DATABASE,
    "42501": PERMISSION,
    "42P01": MISSING_TABLE,
    "3F000": MISSING_TABLE,  # invalid_schema_name: the schema of schema.table
    "42703": MISSING_COLUMN,
    "25006": READ_ONLY,
}
_PG_CLASSES = {"08": UNREACHABLE, "57": OUTAGE, "53": OUTAGE, "40": OUTAGE}
# MySQL/MariaDB error numbers (PyMySQL and mysqlclient: ``args[0]``; MariaDB Connector: ``errno``).
_MYSQL_CODES = {
    1045: CREDENTIALS,  # access denied (using password: YES/NO)
    1698: CREDENTIALS,  # access denied (no such user, or unix_socket only)
    1251: CREDENTIALS,  # client does not support the authentication protocol
    1044: PERMISSION,  # access denied to the database
    1142: PERMISSION,  # SELECT command denied for the table
    1143: PERMISSION,  # SELECT command denied for a column
    1049: NO_DATABASE,
    1146: MISSING_TABLE,
    1054: MISSING_COLUMN,
    1290: READ_ONLY,  # --read-only server
    1792: READ_ONLY,  # read-only transaction
    2002: UNREACHABLE,
    2003: UNREACHABLE,
    2005: UNREACHABLE,
    2006: UNREACHABLE,
    2013: UNREACHABLE,
    2055: UNREACHABLE,
}
# SQLite primary result codes (``sqlite_errorcode & 0xff``).
_SQLITE_CODES = {3: PERMISSION, 5: OUTAGE, 6: OUTAGE, 8: READ_ONLY, 14: NOT_FOUND, 23: PERMISSION}
_SQLITE_ERROR = 1
# Where the driver has no code: libpq's connection failures and SQLite's generic SQLITE_ERROR.
_TEXT_CLASSES = (
    (
        re.compile(
            r"password authentication failed|no password supplied|role \S+ does not exist"
            r"|no pg_hba\.conf entry|authentication failed",
            re.I,
        ),
        CREDENTIALS,
    ),
    (re.compile(r"FATAL:\s+database \S+ does not exist", re.I), NO_DATABASE),
    (re.compile(r"^no such table:", re.I), MISSING_TABLE),
    (re.compile(r"^no such column:", re.I), MISSING_COLUMN),
)
# libpq failing before the server said anything: refused, unknown host, timeout.
_PG_CONNECT = re.compile(r"^(connection failed:|failed to resolve host|connection timeout)", re.I)
# Classes whose driver text quotes identifiers, hosts and user names, never a row's value.
_NAMES_ONLY = frozenset(
    {CREDENTIALS, UNREACHABLE, NO_DATABASE, NOT_FOUND, PERMISSION, MISSING_TABLE, MISSING_COLUMN}
)


@dataclass(frozen=True, slots=True)
class DatabaseFailure:
    """One database error, read: ``database`` is OUTBOX or LEDGER, ``kind`` one of the classes
    above, ``detail`` the driver's first line (no bound value; quoted values dropped unless the
    class only ever quotes names)."""

    database: str
    kind: str
    detail: str


def mark(exc: BaseException, database: str) -> BaseException:
    """Note which database ``exc`` came from (the first mark wins); returns ``exc``."""
    if not hasattr(exc, _MARK):
        setattr(exc, _MARK, database)
    return exc


def database_of(exc: BaseException) -> str:
    return str(getattr(exc, _MARK, LEDGER))


def failure_of(exc: BaseException) -> DatabaseFailure | None:
    """The failure ``exc`` stands for; None when it is not a database error at all."""
    if not isinstance(exc, DBAPIError | DisconnectionError | PoolTimeoutError):
        return None
    original = getattr(exc, "orig", None) or exc
    message = _message(original)
    kind = _kind(original, message)
    if kind is None:
        outage = isinstance(exc, _OUTAGE_TYPES) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated
        )
        kind = OUTAGE if outage else OTHER
    lines = message.strip().splitlines()
    first = lines[0][:300].strip() if lines else type(original).__name__
    if kind not in _NAMES_ONLY:
        first = without_quoted_values(first)
    return DatabaseFailure(database_of(exc), kind, first or type(original).__name__)


def classify(exc: BaseException) -> str | None:
    """ "database" for a database failure syncd did not cause, "securevideo" for an API outage;
    None for anything else (a bug)."""
    failure = failure_of(exc)
    if failure is not None and failure.kind != OTHER:
        return "database"
    if isinstance(exc, TemporaryError):
        return "securevideo"
    return None


def classify_at_start(exc: BaseException) -> str | None:
    """:func:`classify` for a daemon that is starting: only a database that may come back is
    waited for; wrong credentials or a missing table stop the start instead."""
    failure = failure_of(exc)
    return "database" if failure is not None and failure.kind in TRANSIENT else None


def _message(original: BaseException) -> str:
    args: tuple[object, ...] = tuple(getattr(original, "args", ()))
    # PyMySQL and mysqlclient: (errno, message); the message alone reads as a sentence.
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return args[1]
    return str(original)


def _kind(original: BaseException, message: str) -> str | None:
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    module = type(original).__module__.split(".")[0]
    if module in ("psycopg", "psycopg2") and isinstance(sqlstate, str):
        return _PG_CODES.get(sqlstate) or _PG_CLASSES.get(sqlstate[:2])
    errno = getattr(original, "errno", None)
    args: tuple[object, ...] = tuple(getattr(original, "args", ()))
    if errno is None and args and isinstance(args[0], int):
        errno = args[0]
    if module in ("pymysql", "MySQLdb", "mariadb") and isinstance(errno, int):
        return _MYSQL_CODES.get(errno)
    code = getattr(original, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) != _SQLITE_ERROR:
        return _SQLITE_CODES.get(code & 0xFF)
    # No code to go by: read the text.
    for pattern, kind in _TEXT_CLASSES:
        if pattern.search(message):
            return kind
    if module in ("psycopg", "psycopg2") and _PG_CONNECT.search(message):
        return UNREACHABLE
    return None


def describe_database_error(exc: BaseException) -> str | None:
    """One line naming the database and what went wrong (no fix: the runtime adds that, knowing
    the settings); None when ``exc`` is not a database error."""
    failure = failure_of(exc)
    if failure is None:
        return None
    return f"{failure.database} database: {failure.detail}"
