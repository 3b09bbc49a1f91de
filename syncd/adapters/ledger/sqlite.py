"""The SQLite ledger's fast path: prepared statements run straight on the driver's cursor.

Only :class:`~syncd.adapters.ledger.sql.Sql` calls into this module, and only for a
:class:`~syncd.adapters.ledger.sql.Prepared` statement with bound values; everything else, and
anything this path declines, runs through SQLAlchemy.  The driver receives SQLAlchemy's own SQL text
and values from SQLAlchemy's own bind processors: the same statement and stored values, without the
~40 µs per execution that building an execution context costs — more than SQLite takes to run it
(docs/performance.md: ledger work per create 635 → 264 µs).

A connection someone watches (a statement listener: counting, tracing, the SQL Server portability
check) runs everything through SQLAlchemy, so that watchers see every statement.  Either way the
driver executes the same SQL with the same values: ``tests/test_sql_portability.py`` compares the
driver's own trace of both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError

from syncd.adapters.ledger.sql import Params, Prepared

__all__ = ["FastPath", "driver_error", "end_transaction"]


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    #: per positional parameter: its name, its value when not given, its bind processor
    params: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]

    def values(self, given: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, default, process in self.params:
            value = given.get(name, default)
            out.append(value if process is None or value is None else process(value))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class _Written:
    rowcount: int
    inserted_primary_key: tuple[Any, ...] | None


class FastPath:
    """One SQLite ledger's compiled prepared statements, and the count of statements it ran.

    Used only by the thread holding the ledger's turn on its shared connection.
    """

    __slots__ = ("_plans", "ran")

    def __init__(self) -> None:
        self._plans: dict[tuple[Prepared, tuple[str, ...]], _Plan | None] = {}
        #: statements run on the driver's cursor since the ledger opened (a diagnostic)
        self.ran = 0

    def run(self, connection: Connection, prepared: Prepared, params: Params) -> _Written | None:
        """Run ``prepared`` on the driver's cursor; None when SQLAlchemy has to run it."""
        if _watched(connection):
            return None
        many = not isinstance(params, Mapping)
        rows: Sequence[Mapping[str, Any]] = (
            cast(Sequence[Mapping[str, Any]], params) if many else [cast(Mapping[str, Any], params)]
        )
        dialect = connection.dialect
        plan = self._plan(prepared, dialect, tuple(sorted(rows[0])))
        if plan is None:
            return None
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if many:
                cursor.executemany(plan.sql, [plan.values(r) for r in rows])
            else:
                cursor.execute(plan.sql, plan.values(rows[0]))
            self.ran += 1
            return _Written(cursor.rowcount, None if many else (cursor.lastrowid,))
        except dialect.loaded_dbapi.Error as err:
            raise driver_error(plan.sql, err, dialect) from err
        finally:
            cursor.close()

    def _plan(self, prepared: Prepared, dialect: Dialect, keys: tuple[str, ...]) -> _Plan | None:
        """None when the statement needs more than named values (SQLAlchemy then runs it)."""
        try:
            return self._plans[prepared, keys]
        except KeyError:
            pass
        compiled = prepared.statement.compile(dialect=dialect, column_keys=list(keys))
        plan: _Plan | None = None
        names = compiled.positiontup
        # Positional values only: no IN-list expansion, no Python-side defaults to compute.
        simple = not (
            compiled.literal_execute_params or compiled.insert_prefetch or compiled.update_prefetch
        )
        if names is not None and simple:
            binds = compiled.binds
            if all(n in keys or not binds[n].required for n in names):
                plan = _Plan(
                    compiled.string,
                    tuple(
                        (
                            n,
                            binds[n].effective_value,
                            binds[n].type.dialect_impl(dialect).bind_processor(dialect),
                        )
                        for n in names
                    ),
                )
        self._plans[prepared, keys] = plan
        return plan


def _watched(connection: Connection) -> bool:
    # A connection's dispatch includes its engine's listeners, those added later too.
    d = connection.dispatch
    return bool(
        d.before_execute or d.after_execute or d.before_cursor_execute or d.after_cursor_execute
    )


def end_transaction(connection: Connection, *, commit: bool) -> None:
    """End the shared connection's transaction.

    The driver opened it on the first change (sqlite3 begins before any INSERT, UPDATE or
    DELETE); SQLAlchemy knows of it only if one of its own statements ran.  Framing each
    transaction with SQLAlchemy's ``begin()`` cost more than the statements run directly.
    """
    if connection.in_transaction():
        (connection.commit if commit else connection.rollback)()
        return
    driver = connection.connection.driver_connection
    dbapi = connection.dialect.loaded_dbapi
    try:
        (driver.commit if commit else driver.rollback)()  # type: ignore[union-attr]
    except dbapi.Error as err:
        if commit:
            driver.rollback()  # type: ignore[union-attr]
        raise driver_error("COMMIT" if commit else "ROLLBACK", err, connection.dialect) from err


def driver_error(sql: str, err: Exception, dialect: Dialect) -> StatementError:
    """A driver's error as SQLAlchemy would raise it, with the values hidden as the engine hides
    them: callers (the degraded-database handling) only know SQLAlchemy's exceptions."""
    return DBAPIError.instance(
        sql, None, err, dialect.loaded_dbapi.Error, hide_parameters=True, dialect=dialect
    )
