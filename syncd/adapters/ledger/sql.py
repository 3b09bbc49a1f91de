"""How a repository runs its statements: one helper per transaction, and the values it stores.

Every repository of a transaction asks the same :class:`Sql` to run its statements.  Whether a
statement goes through SQLAlchemy or, on the SQLite ledger, straight to the driver's cursor
(:mod:`.sqlite`) is decided in :meth:`Sql.write` alone; a repository cannot tell the difference.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar, cast

from sqlalchemy import Connection, CursorResult, Executable, Result, select
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.expression import ColumnElement

from syncd.ports.ledger import TEXT_LIMIT

__all__ = [
    "IN_CHUNK",
    "DirectRunner",
    "Params",
    "Prepared",
    "Sql",
    "Written",
    "chunks",
    "clip",
    "records",
    "unknown_appointment",
    "utc",
    "utcnow",
]

#: Keeps IN lists well below every backend's bind-parameter limit (SQLite's is the lowest).
IN_CHUNK: Final = 500

#: One row's bound values, or several rows' for an executemany.
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]]


class Prepared:
    """A hot-path statement, built once and run with bound values.

    Every appointment costs a few journal writes; building each statement anew (``.values(**kw)``)
    cost more CPU than running it, so these are constructed at import time.  Bind names differ
    from column names, as SET requires.  Being prepared also lets :class:`Sql` hand the statement
    to the SQLite fast path, which caches its compiled form per prepared statement.
    """

    __slots__ = ("statement",)

    def __init__(self, statement: UpdateBase) -> None:
        self.statement = statement


class Written(Protocol):
    """What a write tells, from SQLAlchemy or the driver: rows touched, an INSERT's new key."""

    @property
    def rowcount(self) -> int: ...

    @property
    def inserted_primary_key(self) -> Sequence[Any] | None: ...


class DirectRunner(Protocol):
    """A faster way to run a prepared statement (``syncd.adapters.ledger.sqlite``); None when it
    cannot run this one, and the statement goes through SQLAlchemy."""

    def run(self, connection: Connection, prepared: Prepared, params: Params) -> Written | None: ...


class Sql:
    """The statements of one transaction, on the connection the caller began."""

    __slots__ = ("_fast", "connection", "rows")

    def __init__(self, connection: Connection, fast_path: DirectRunner | None = None) -> None:
        """``fast_path``: the SQLite ledger's driver-cursor path for prepared statements."""
        self.connection = connection
        self._fast = fast_path
        #: a query's rows: reads always go through SQLAlchemy, whose result processing they need
        self.rows = connection.execute

    def write(self, statement: Executable | Prepared, params: Params | None = None) -> int:
        """Run an INSERT, UPDATE or DELETE; the number of rows it touched."""
        return self._run(statement, params).rowcount

    def insert_one(self, statement: Prepared, params: Mapping[str, Any]) -> int:
        """Insert one row; its new integer primary key."""
        key = self._run(statement, params).inserted_primary_key
        assert key is not None  # a single-row INSERT always reports its key
        return int(key[0])

    def exists(self, condition: ColumnElement[bool]) -> bool:
        # Not ``SELECT EXISTS (...)``: T-SQL allows EXISTS only in a WHERE or a CASE.
        return self.rows(select(1).where(condition).limit(1)).first() is not None

    def savepoint(self) -> AbstractContextManager[object]:
        """A nested transaction: on PostgreSQL a failed INSERT would otherwise abort the caller's.

        On SQLite the transaction must already be open (a write ran first): the driver does not
        begin one before a SAVEPOINT, which would then commit on release.
        """
        return self.connection.begin_nested()

    def _run(self, statement: Executable | Prepared, params: Params | None) -> Written:
        # The one place that chooses the path; the fast path declines what it cannot run.
        if isinstance(statement, Prepared):
            if self._fast is not None and params:
                done = self._fast.run(self.connection, statement, params)
                if done is not None:
                    return done
            statement = statement.statement
        # Core DML always yields a CursorResult; execute()'s signature just doesn't say so.
        return cast(CursorResult[Any], self.connection.execute(statement, params))


_R = TypeVar("_R")
_H = TypeVar("_H", str, int)


def records(cls: type[_R], rows: Result[Any]) -> list[_R]:
    return [cls(**row._mapping) for row in rows]


def utc(moment: datetime) -> datetime:
    """Naive UTC, whatever the caller passed: aware values are converted, naive ones trusted."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def clip(value: str | None) -> str | None:
    return None if value is None else value[:TEXT_LIMIT]


def chunks(items: Collection[_H]) -> Iterator[list[_H]]:
    """The distinct items, in IN lists of at most :data:`IN_CHUNK`."""
    ordered = list(dict.fromkeys(items))
    for start in range(0, len(ordered), IN_CHUNK):
        yield ordered[start : start + IN_CHUNK]


def unknown_appointment(appointment_id: str) -> LookupError:
    return LookupError(f"appointment {appointment_id!r} is not in the ledger")
