"""Named leases with an expiry: which syncd instance may run the passes.

Expiry is reckoned by the ledger database's clock, read in the same transaction as the write,
never by the clock of the host asking: two hosts whose clocks disagree by minutes still agree on
whether a lease has run out, because they both ask the one database.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from syncd.adapters.ledger.schema import lease_table
from syncd.adapters.ledger.sql import Sql
from syncd.ports.ledger import LeaseHolder, LeaseRecord

__all__ = ["SqlLeases", "database_now"]


class _database_now(FunctionElement[Any]):  # noqa: N801 - named as SQL functions are
    """The database server's clock, naive UTC, with microseconds (SQLite: milliseconds)."""

    inherit_cache = True


@compiles(_database_now)
def _now_default(element: _database_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(_database_now, "sqlite")
def _now_sqlite(element: _database_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


@compiles(_database_now, "postgresql")
def _now_postgresql(element: _database_now, compiler: SQLCompiler, **kw: Any) -> str:
    # now() would be the transaction's start; clock_timestamp() is this statement's moment.
    return "(clock_timestamp() AT TIME ZONE 'UTC')"


@compiles(_database_now, "mysql")
@compiles(_database_now, "mariadb")
def _now_mysql(element: _database_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


@compiles(_database_now, "mssql")
def _now_mssql(element: _database_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "SYSUTCDATETIME()"


def database_now(sql: Sql) -> datetime:
    """The ledger database's clock, naive UTC."""
    value = sql.rows(select(_database_now())).scalar_one()
    if isinstance(value, str):  # SQLite answers text
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=None)


class SqlLeases:
    """:class:`syncd.ports.ledger.LeaseRepository` on the ``lease`` table."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def try_acquire(self, name: str, holder: LeaseHolder, ttl_seconds: float) -> bool:
        now = database_now(self._sql)
        c = lease_table.c
        values = _holder_values(holder, now, ttl_seconds)
        # Renewing keeps acquired_at; taking it over from an expired holder sets it.
        renewed = self._sql.write(
            update(lease_table)
            .where(c.name == name, c.holder == holder.holder)
            .values(expires_at=values["expires_at"], updated_at=now)
        )
        if renewed:
            return True
        # The WHERE is evaluated on the latest committed row (PostgreSQL re-checks after waiting
        # for a concurrent taker; InnoDB reads current rows for UPDATE): only one taker wins.
        taken = self._sql.write(
            update(lease_table)
            .where(c.name == name, or_(c.holder == holder.holder, c.expires_at < now))
            .values(**values)
        )
        if taken:
            return True
        if self._sql.exists(c.name == name):
            return False
        # The UPDATE above already opened the transaction, as SQLite's driver needs for SAVEPOINT.
        try:
            with self._sql.savepoint():
                self._sql.write(insert(lease_table).values(name=name, **values))
        except IntegrityError:
            return False  # another process created it first
        return True

    def current(self, name: str) -> LeaseRecord | None:
        now = database_now(self._sql)
        row = self._sql.rows(select(lease_table).where(lease_table.c.name == name)).first()
        if row is None:
            return None
        m = row._mapping
        return LeaseRecord(
            name=name,
            holder=LeaseHolder(m["holder"], m["host"], m["pid"], m["process_start"]),
            acquired_at=m["acquired_at"],
            expires_at=m["expires_at"],
            database_now=now,
        )

    def take_over(self, name: str, dead: str, holder: LeaseHolder, ttl_seconds: float) -> bool:
        now = database_now(self._sql)
        c = lease_table.c
        return bool(
            self._sql.write(
                update(lease_table)
                .where(c.name == name, c.holder == dead)
                .values(**_holder_values(holder, now, ttl_seconds))
            )
        )

    def release(self, name: str, holder: str) -> bool:
        c = lease_table.c
        return bool(self._sql.write(delete(lease_table).where(c.name == name, c.holder == holder)))


def _holder_values(holder: LeaseHolder, now: datetime, ttl_seconds: float) -> dict[str, Any]:
    return {
        "holder": holder.holder,
        "host": holder.host,
        "pid": holder.pid,
        "process_start": holder.process_start,
        "acquired_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "updated_at": now,
    }
