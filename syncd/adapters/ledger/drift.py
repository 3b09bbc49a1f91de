"""Drift on file: what clinic staff changed directly in SecureVideo, per appointment and kind."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, func, insert, select

from syncd.adapters.ledger.schema import drift_table
from syncd.adapters.ledger.sql import Sql, chunks, records, utc
from syncd.ports.ledger import DriftRecord

__all__ = ["SqlDrift"]

_drift = drift_table


class SqlDrift:
    """:class:`syncd.ports.ledger.DriftRepository` on the ``drift`` table."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def note(self, record: DriftRecord) -> bool:
        c = _drift.c
        if self._sql.exists((c.appointment_id == record.appointment_id) & (c.kind == record.kind)):
            return False
        # Only the lease holder looks for drift, so no other writer races this insert.
        self._sql.write(
            insert(_drift).values(
                appointment_id=record.appointment_id,
                kind=record.kind,
                session_id=record.session_id,
                detected_at=utc(record.detected_at),
            )
        )
        return True

    def clear(self, appointment_id: str, kinds: Collection[str] | None = None) -> int:
        c = _drift.c
        if kinds is None:
            return self._sql.write(delete(_drift).where(c.appointment_id == appointment_id))
        gone = 0
        for chunk in chunks(kinds):
            gone += self._sql.write(
                delete(_drift).where(c.appointment_id == appointment_id, c.kind.in_(chunk))
            )
        return gone

    def of_appointments(self, appointment_ids: Collection[str]) -> dict[str, list[DriftRecord]]:
        c = _drift.c
        out: dict[str, list[DriftRecord]] = {}
        for chunk in chunks(appointment_ids):
            query = select(_drift).where(c.appointment_id.in_(chunk)).order_by(c.kind)
            for r in records(DriftRecord, self._sql.rows(query)):
                out.setdefault(r.appointment_id, []).append(r)
        return dict(sorted(out.items()))

    def current(self, limit: int = 100) -> list[DriftRecord]:
        c = _drift.c
        query = select(_drift).order_by(c.detected_at, c.appointment_id, c.kind).limit(limit)
        return records(DriftRecord, self._sql.rows(query))

    def count(self) -> int:
        query = select(func.count(func.distinct(_drift.c.appointment_id)))
        return int(self._sql.rows(query).scalar() or 0)
