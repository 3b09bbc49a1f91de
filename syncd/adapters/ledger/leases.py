"""Named leases with an expiry: which syncd instance may run the passes."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, update
from sqlalchemy.exc import IntegrityError

from syncd.adapters.ledger.schema import lease_table
from syncd.adapters.ledger.sql import Sql, utc

__all__ = ["SqlLeases"]


class SqlLeases:
    """:class:`syncd.ports.ledger.LeaseRepository` on the ``lease`` table."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def try_acquire(self, name: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
        now = utc(now)
        values = {"holder": holder, "expires_at": now + timedelta(seconds=ttl_seconds)}
        c = lease_table.c
        # The WHERE is evaluated on the latest committed row (PostgreSQL re-checks after waiting
        # for a concurrent taker; InnoDB reads current rows for UPDATE): only one taker wins.
        taken = self._sql.write(
            update(lease_table)
            .where(c.name == name, or_(c.holder == holder, c.expires_at < now))
            .values(**values, updated_at=now)
        )
        if taken:
            return True
        if self._sql.exists(c.name == name):
            return False
        # The UPDATE above already opened the transaction, as SQLite's driver needs for SAVEPOINT.
        try:
            with self._sql.savepoint():
                self._sql.write(insert(lease_table).values(name=name, **values, updated_at=now))
        except IntegrityError:
            return False  # another process created it first
        return True

    def release(self, name: str, holder: str) -> bool:
        c = lease_table.c
        return bool(self._sql.write(delete(lease_table).where(c.name == name, c.holder == holder)))
