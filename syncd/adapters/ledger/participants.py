"""The participations syncd made, and what it sent that SecureVideo does not report (packet ids)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, select, update

from syncd.adapters.ledger.schema import participant_table
from syncd.adapters.ledger.sql import Prepared, Sql, chunks, records, utc
from syncd.ports.ledger import ParticipantRecord

__all__ = ["SqlParticipants"]

_t = participant_table

_DELETE_ALL_OF = Prepared(delete(_t).where(_t.c.appointment_id == bindparam("b_aid")))
_INSERT = Prepared(insert(_t))
_COLUMNS = tuple(ParticipantRecord.__dataclass_fields__)


class SqlParticipants:
    """:class:`syncd.ports.ledger.ParticipantRepository` on the ``participant`` table."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def of_appointments(
        self, appointment_ids: Collection[str]
    ) -> dict[str, dict[str, ParticipantRecord]]:
        out: dict[str, dict[str, ParticipantRecord]] = {aid: {} for aid in appointment_ids}
        for chunk in chunks(appointment_ids):
            rows = self._sql.rows(select(_t).where(_t.c.appointment_id.in_(chunk)))
            for record in records(ParticipantRecord, rows):
                out[record.appointment_id][record.external_id] = record
        return out

    def upsert(
        self,
        appointment_id: str,
        external_id: str,
        *,
        session_id: int,
        participation_id: int | None,
        packet_id: int | None,
        now: datetime,
    ) -> None:
        values = {
            "session_id": session_id,
            "participation_id": participation_id,
            "packet_id": packet_id,
            "updated_at": utc(now),
        }
        c = _t.c
        # Portable UPDATE-then-INSERT: one appointment is only ever worked on by one worker.
        changed = self._sql.write(
            update(_t)
            .where(c.appointment_id == appointment_id, c.external_id == external_id)
            .values(**values)
        )
        if not changed:
            self._sql.write(
                insert(_t).values(appointment_id=appointment_id, external_id=external_id, **values)
            )

    def put(self, record: ParticipantRecord) -> None:
        values = _values(record)
        c = _t.c
        # Portable UPDATE-then-INSERT: one appointment is only ever worked on by one worker.
        changed = self._sql.write(
            update(_t)
            .where(c.appointment_id == record.appointment_id, c.external_id == record.external_id)
            .values(**values)
        )
        if not changed:
            self._sql.write(insert(_t).values(**values))

    def delete(self, appointment_id: str, external_id: str) -> None:
        c = _t.c
        self._sql.write(
            delete(_t).where(c.appointment_id == appointment_id, c.external_id == external_id)
        )

    def delete_all_of(self, appointment_id: str) -> None:
        self._sql.write(_DELETE_ALL_OF, {"b_aid": appointment_id})

    def replace(
        self,
        appointment_id: str,
        participants: Sequence[ParticipantRecord],
    ) -> None:
        """One DELETE, one INSERT."""
        self.delete_all_of(appointment_id)
        if participants:
            self._sql.write(
                _INSERT, [_values(p, appointment_id=appointment_id) for p in participants]
            )


def _values(p: ParticipantRecord, appointment_id: str | None = None) -> dict[str, object]:
    """Every column of ``p``'s row (``appointment_id`` overrides the record's own)."""
    values = {f: getattr(p, f) for f in _COLUMNS}
    values["appointment_id"] = appointment_id or p.appointment_id
    values["updated_at"] = utc(p.updated_at)
    return values
