"""Visit outcomes: what only SecureVideo knows about a visit (RSVPs, connections, billing)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Table, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from syncd.adapters.ledger.schema import (
    appointment_table,
    operation_table,
    participant_outcome_table,
    session_outcome_table,
)
from syncd.adapters.ledger.sql import IN_CHUNK, Sql, chunks, records, utc
from syncd.ports.ledger import (
    APPLIED,
    BookedAppointment,
    OutcomeTarget,
    ParticipantOutcomeRecord,
    SessionOutcomeRecord,
)

__all__ = ["SqlVisits"]

_appt = appointment_table
_sessions = session_outcome_table
_people = participant_outcome_table


class SqlVisits:
    """:class:`syncd.ports.ledger.VisitRepository` on ``session_outcome`` and
    ``participant_outcome``, joined with the appointments' managed sessions."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def targets(self) -> list[OutcomeTarget]:
        """The appointment's current session has no outcome row yet, or one that ``GET /history``
        has not settled."""
        a, o = _appt.c, _sessions.c
        observed = case((o.session_id == a.session_id, o.schedule_ts), else_=None)
        query = (
            select(
                a.appointment_id,
                a.session_id,
                a.host_external_id,
                func.coalesce(a.schedule_ts, observed).label("schedule_ts"),
            )
            .select_from(_appt.outerjoin(_sessions, o.appointment_id == a.appointment_id))
            .where(
                a.session_id.is_not(None),
                a.host_external_id.is_not(None),
                or_(o.appointment_id.is_(None), o.session_id != a.session_id, o.final_at.is_(None)),
            )
            .order_by(a.appointment_id)
        )
        return records(OutcomeTarget, self._sql.rows(query))

    def sessions(self, appointment_ids: Collection[str]) -> dict[str, SessionOutcomeRecord]:
        out: dict[str, SessionOutcomeRecord] = {}
        for chunk in chunks(appointment_ids):
            rows = self._sql.rows(select(_sessions).where(_sessions.c.appointment_id.in_(chunk)))
            out.update({r.appointment_id: r for r in records(SessionOutcomeRecord, rows)})
        return out

    def participants(
        self, appointment_ids: Collection[str]
    ) -> dict[str, dict[str, ParticipantOutcomeRecord]]:
        out: dict[str, dict[str, ParticipantOutcomeRecord]] = {a: {} for a in appointment_ids}
        for chunk in chunks(appointment_ids):
            rows = self._sql.rows(select(_people).where(_people.c.appointment_id.in_(chunk)))
            for r in records(ParticipantOutcomeRecord, rows):
                out[r.appointment_id][r.participant_external_id] = r
        return out

    def put_session(self, record: SessionOutcomeRecord) -> None:
        values = {k: getattr(record, k) for k in SessionOutcomeRecord.__slots__}
        key = {"appointment_id": values.pop("appointment_id")}
        self._upsert(_sessions, key, values)

    def put_participant(self, record: ParticipantOutcomeRecord) -> None:
        values = {k: getattr(record, k) for k in ParticipantOutcomeRecord.__slots__}
        key = {
            "appointment_id": values.pop("appointment_id"),
            "participant_external_id": values.pop("participant_external_id"),
        }
        self._upsert(_people, key, values)

    def delete_participants(
        self, appointment_id: str, participant_external_ids: Collection[str]
    ) -> int:
        c = _people.c
        deleted = 0
        for chunk in chunks(participant_external_ids):
            deleted += self._sql.write(
                delete(_people).where(
                    c.appointment_id == appointment_id, c.participant_external_id.in_(chunk)
                )
            )
        return deleted

    def appointments_of_sessions(self, session_ids: Collection[int]) -> dict[int, str]:
        wanted = sorted(set(session_ids))
        out: dict[int, str] = {}
        a, op, o = _appt.c, operation_table.c, _sessions.c
        for start in range(0, len(wanted), IN_CHUNK):
            chunk = wanted[start : start + IN_CHUNK]
            queries = [
                select(op.session_id, op.appointment_id).where(
                    op.op == "create", op.state == APPLIED, op.session_id.in_(chunk)
                ),
                select(o.session_id, o.appointment_id).where(o.session_id.in_(chunk)),
                # Last, so the current managed session wins over any older record.
                select(a.session_id, a.appointment_id).where(a.session_id.in_(chunk)),
            ]
            for query in queries:
                out.update({int(sid): aid for sid, aid in self._sql.rows(query)})
        return out

    def booked_between(self, start: datetime, end: datetime) -> list[BookedAppointment]:
        a, o = _appt.c, _sessions.c
        same = o.session_id == a.session_id
        when = func.coalesce(a.schedule_ts, case((same, o.schedule_ts), else_=None))
        query = (
            select(
                a.appointment_id,
                a.session_id,
                when.label("schedule_ts"),
                case((same, o.billable_ts), else_=None).label("billable_ts"),
            )
            .select_from(_appt.outerjoin(_sessions, o.appointment_id == a.appointment_id))
            .where(a.session_id.is_not(None), when >= utc(start), when < utc(end))
            .order_by(when, a.appointment_id)
        )
        return records(BookedAppointment, self._sql.rows(query))

    def _upsert(self, table: Table, key: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        where = [table.c[name] == value for name, value in key.items()]
        if self._sql.write(update(table).where(*where).values(**values)):
            return
        # The UPDATE above already opened the transaction, as SQLite's driver needs for SAVEPOINT.
        try:
            with self._sql.savepoint():
                self._sql.write(insert(table).values(**key, **values))
        except IntegrityError:
            # Another writer inserted it meanwhile (an operator's `syncd outcomes` beside the
            # daemon): both wrote what SecureVideo said, so the later update simply wins.
            self._sql.write(update(table).where(*where).values(**values))
