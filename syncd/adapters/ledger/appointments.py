"""One row per appointment: which event is pending, which was applied, and the managed session.

Methods that change one appointment raise :class:`LookupError` when the ledger does not know it
(every appointment enters through :meth:`SqlAppointments.note_events`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, null, or_, select, update
from sqlalchemy.sql.expression import ColumnElement

from syncd.adapters.ledger.schema import appointment_table
from syncd.adapters.ledger.sql import (
    Prepared,
    Sql,
    chunks,
    clip,
    records,
    unknown_appointment,
    utc,
)
from syncd.ports.inbox import INBOX_EVENT_BASE
from syncd.ports.ledger import (
    APPOINTMENT_STATES,
    HELD_PREFIX,
    PARKED,
    PENDING,
    SKIPPED,
    SYNCED,
    AppointmentRecord,
)

__all__ = ["SqlAppointments"]

_t = appointment_table

_INSERT = Prepared(insert(_t))
# The event guard in the WHERE keeps this right even if another writer got there first.
_RENEW = Prepared(
    update(_t)
    .where(_t.c.appointment_id == bindparam("b_id"), _t.c.last_event_id < bindparam("b_event"))
    .values(
        last_event_id=bindparam("b_event"),
        state=PENDING,
        attempts=0,
        reason=None,
        next_attempt_at=None,
        parked_at=None,
        updated_at=bindparam("b_at"),
    )
)
_NOTE_DIGEST = Prepared(
    update(_t)
    .where(_t.c.appointment_id == bindparam("b_id"), _t.c.last_event_id == bindparam("b_event"))
    .values(last_digest=bindparam("b_digest"))
)
# A re-read row whose content needs nothing: its new event id, the state as it was.
_RESTATE = Prepared(
    update(_t)
    .where(_t.c.appointment_id == bindparam("b_id"))
    .values(last_event_id=bindparam("b_event"), last_digest=bindparam("b_digest"))
)
_RESTATE_APPLIED = Prepared(
    update(_t)
    .where(_t.c.appointment_id == bindparam("b_id"))
    .values(
        last_event_id=bindparam("b_event"),
        applied_event_id=bindparam("b_event"),
        last_digest=bindparam("b_digest"),
    )
)
_RENEW_CONTENT = Prepared(
    update(_t)
    .where(_t.c.appointment_id == bindparam("b_id"))
    .values(
        last_event_id=bindparam("b_event"),
        last_digest=bindparam("b_digest"),
        state=PENDING,
        attempts=0,
        reason=None,
        next_attempt_at=None,
        parked_at=None,
        updated_at=bindparam("b_at"),
    )
)
_SET_SESSION = Prepared(
    update(_t)
    .where(_t.c.appointment_id == bindparam("b_aid"))
    .values(
        session_id=bindparam("b_session_id"),
        host_external_id=bindparam("b_host"),
        updated_at=bindparam("b_at"),
    )
)
_FORGET_SESSION = Prepared(
    update(_t)
    .where(
        _t.c.appointment_id == bindparam("b_aid"),
        _t.c.session_id == bindparam("b_session_id"),
    )
    .values(
        session_id=None, host_external_id=None, sent_schedule_ts=None, updated_at=bindparam("b_at")
    )
)
_RECORD_APPLIED = Prepared(
    update(_t)
    .where(_t.c.appointment_id == bindparam("b_aid"))
    .values(
        external_session_id=bindparam("b_esid"),
        sent_schedule_ts=bindparam("b_sent"),
        updated_at=bindparam("b_at"),
    )
)


def _settle_statement(columns: tuple[str, ...], *, guarded: bool) -> Prepared:
    c = _t.c
    where = [c.appointment_id == bindparam("b_aid")]
    if guarded:
        where.append(c.last_event_id <= bindparam("b_event"))
    values: dict[str, Any] = {name: bindparam(f"b_{name}") for name in columns}
    values["updated_at"] = bindparam("b_updated_at")
    # The digest on file is the row at the newest event: applied only when that is this event.
    values["applied_digest"] = c.last_digest if guarded else null()
    if guarded:
        for name in ("state", "attempts", "reason", "next_attempt_at", "parked_at"):
            values[name] = bindparam(f"b_{name}")
    return Prepared(update(_t).where(*where).values(**values))


_SYNCED_COLUMNS: tuple[str, ...] = (
    "applied_event_id",
    "session_id",
    "host_external_id",
    "schedule_ts",
)
_SKIPPED_COLUMNS: tuple[str, ...] = ("applied_event_id",)
_SETTLE: dict[tuple[tuple[str, ...], bool], Prepared] = {
    (cols, guarded): _settle_statement(cols, guarded=guarded)
    for cols in (_SYNCED_COLUMNS, _SKIPPED_COLUMNS)
    for guarded in (True, False)
}


def _content_statement(record: AppointmentRecord, digest: str) -> Prepared:
    """How a re-read row changes a known appointment: content, not the id, decides."""
    if record.state in (SYNCED, SKIPPED) and digest == record.applied_digest:
        return _RESTATE_APPLIED
    if record.state in (PARKED, PENDING) and digest == record.last_digest:
        return _RESTATE
    return _RENEW_CONTENT


def _only_bound(statement: Prepared, params: dict[str, Any]) -> dict[str, Any]:
    # An executemany must not carry a value its statement does not bind.
    return (
        params if statement is _RENEW_CONTENT else {k: v for k, v in params.items() if k != "b_at"}
    )


class SqlAppointments:
    """:class:`syncd.ports.ledger.AppointmentRepository` on the ``appointment`` table."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    # --- noting events ----------------------------------------------------------------------

    def last_events(self, appointment_ids: Collection[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk in chunks(appointment_ids):
            rows = self._sql.rows(
                select(_t.c.appointment_id, _t.c.last_event_id).where(
                    _t.c.appointment_id.in_(chunk)
                )
            )
            out.update({aid: int(ev) for aid, ev in rows})
        return out

    def note_events(self, events: Mapping[str, int], *, now: datetime) -> int:
        """A new appointment enters ``pending``; a known one with an older event becomes
        ``pending`` afresh.  The count is of appointments inserted or moved to a newer event."""
        if not events:
            return 0
        now = utc(now)
        known = self.last_events(events.keys())
        fresh = [
            {
                "appointment_id": aid,
                "last_event_id": ev,
                "state": PENDING,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for aid, ev in events.items()
            if aid not in known
        ]
        newer = [
            {"b_id": aid, "b_event": ev, "b_at": now}
            for aid, ev in events.items()
            if aid in known and ev > known[aid]
        ]
        if fresh:
            self._sql.write(_INSERT, fresh)
        if newer:
            self._sql.write(_RENEW, newer)
        return len(fresh) + len(newer)

    # --- an outbox that went back -----------------------------------------------------------

    def newest_at(self, event_ids: Collection[int]) -> dict[int, tuple[str, str | None]]:
        c = _t.c
        out: dict[int, tuple[str, str | None]] = {}
        for chunk in chunks(event_ids):
            rows = self._sql.rows(
                select(c.last_event_id, c.appointment_id, c.last_digest).where(
                    c.last_event_id.in_(chunk)
                )
            )
            out.update({int(ev): (aid, digest) for ev, aid, digest in rows})
        return out

    def note_digests(self, digests: Mapping[str, tuple[int, str]]) -> None:
        params = [
            {"b_id": aid, "b_event": ev, "b_digest": digest}
            for aid, (ev, digest) in digests.items()
        ]
        if params:
            self._sql.write(_NOTE_DIGEST, params)

    def rebase_events(self, now: datetime) -> int:
        inbox = _t.c.last_event_id >= INBOX_EVENT_BASE
        self._sql.write(update(_t).where(~inbox).values(last_event_id=0))
        return int(self._sql.rows(select(func.count()).select_from(_t)).scalar_one())

    def note_contents(self, rows: Mapping[str, tuple[int, str]], *, now: datetime) -> int:
        if not rows:
            return 0
        now = utc(now)
        known = self.get_many(rows.keys())
        fresh = [
            {
                "appointment_id": aid,
                "last_event_id": ev,
                "last_digest": digest,
                "state": PENDING,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for aid, (ev, digest) in rows.items()
            if aid not in known
        ]
        batches: dict[Prepared, list[dict[str, Any]]] = {}
        for aid, (ev, digest) in rows.items():
            record = known.get(aid)
            if record is None or ev <= record.last_event_id:
                continue
            statement = _content_statement(record, digest)
            batches.setdefault(statement, []).append(
                {"b_id": aid, "b_event": ev, "b_digest": digest, "b_at": now}
            )
        if fresh:
            self._sql.write(_INSERT, fresh)
        for statement, params in batches.items():
            self._sql.write(statement, [_only_bound(statement, p) for p in params])
        return len(fresh) + len(batches.get(_RENEW_CONTENT, []))

    # --- reading ----------------------------------------------------------------------------

    def due(
        self, now: datetime, limit: int, after_appointment_id: str | None = None
    ) -> list[AppointmentRecord]:
        c = _t.c
        query = select(_t).where(
            c.state == PENDING,
            or_(c.next_attempt_at.is_(None), c.next_attempt_at <= utc(now)),
        )
        if after_appointment_id is not None:
            query = query.where(c.appointment_id > after_appointment_id)
        return records(
            AppointmentRecord, self._sql.rows(query.order_by(c.appointment_id).limit(limit))
        )

    def get(self, appointment_id: str) -> AppointmentRecord | None:
        return self.get_many([appointment_id]).get(appointment_id)

    def get_many(self, appointment_ids: Collection[str]) -> dict[str, AppointmentRecord]:
        out: dict[str, AppointmentRecord] = {}
        for chunk in chunks(appointment_ids):
            rows = self._sql.rows(select(_t).where(_t.c.appointment_id.in_(chunk)))
            out.update({r.appointment_id: r for r in records(AppointmentRecord, rows)})
        return out

    # --- settling ---------------------------------------------------------------------------

    def mark_synced(
        self,
        appointment_id: str,
        *,
        event_id: int,
        session_id: int | None,
        host_external_id: str | None,
        now: datetime,
        schedule_ts: datetime | None = None,
        reason: str | None = None,
    ) -> bool:
        """``schedule_ts`` is the managed session's time as SecureVideo shows it (None without
        one)."""
        applied = {
            "applied_event_id": event_id,
            "session_id": session_id,
            "host_external_id": host_external_id,
            "schedule_ts": None if schedule_ts is None else utc(schedule_ts),
        }
        return self._settle(appointment_id, event_id, SYNCED, applied, reason=reason, now=now)

    def mark_skipped(
        self, appointment_id: str, *, event_id: int, reason: str, now: datetime
    ) -> bool:
        applied = {"applied_event_id": event_id}
        return self._settle(appointment_id, event_id, SKIPPED, applied, reason=reason, now=now)

    def _settle(
        self,
        appointment_id: str,
        event_id: int,
        state: str,
        applied: dict[str, Any],
        *,
        reason: str | None,
        now: datetime,
    ) -> bool:
        columns = tuple(applied)
        params = {f"b_{name}": value for name, value in applied.items()}
        params |= {"b_aid": appointment_id, "b_updated_at": utc(now)}
        # One atomic guarded UPDATE: a newer event noted meanwhile (by another transaction) must
        # not be buried under this older event's final state.
        guarded = params | {
            "b_event": event_id,
            "b_state": state,
            "b_attempts": 0,
            "b_reason": clip(reason),
            "b_next_attempt_at": None,
            "b_parked_at": None,
        }
        if self._sql.write(_SETTLE[columns, True], guarded):
            return True
        # What was done remotely is still true, and the newer event's plan starts from it.
        if not self._sql.write(_SETTLE[columns, False], params):
            raise unknown_appointment(appointment_id)
        return False

    def schedule_retry(
        self,
        appointment_id: str,
        *,
        attempts: int,
        next_attempt_at: datetime,
        reason: str,
        now: datetime,
        event_id: int | None = None,
    ) -> bool:
        """With ``event_id``, a newer event noted meanwhile wins: its fresh attempt count and
        immediate due time are kept and this returns False."""
        return self._guarded(
            appointment_id,
            event_id,
            state=PENDING,
            attempts=attempts,
            next_attempt_at=utc(next_attempt_at),
            reason=clip(reason),
            # updated_at stays when the appointment began waiting: a retry changes no state,
            # and the oldest pending change's age must not restart with every retry.
        )

    def park(
        self,
        appointment_id: str,
        *,
        reason: str,
        attempts: int | None = None,
        now: datetime,
        event_id: int | None = None,
    ) -> bool:
        """With ``event_id``, a newer event noted meanwhile wins: it stays ``pending`` and this
        returns False."""
        now = utc(now)
        values: dict[str, Any] = {
            "state": PARKED,
            "reason": clip(reason),
            "next_attempt_at": None,
            "parked_at": now,
            "updated_at": now,
        }
        if attempts is not None:
            values["attempts"] = attempts
        return self._guarded(appointment_id, event_id, **values)

    def _guarded(self, appointment_id: str, event_id: int | None, **values: Any) -> bool:
        c = _t.c
        query = update(_t).where(c.appointment_id == appointment_id)
        if event_id is not None:
            query = query.where(c.last_event_id <= event_id)
        if self._sql.write(query.values(**values)):
            return True
        if not self._sql.exists(c.appointment_id == appointment_id):
            raise unknown_appointment(appointment_id)
        return False

    def unpark(self, appointment_id: str, now: datetime) -> bool:
        return bool(self._unpark(_t.c.appointment_id == appointment_id, now))

    def unpark_all(self, now: datetime) -> int:
        return self._unpark(None, now)

    def _unpark(self, which: ColumnElement[bool] | None, now: datetime) -> int:
        query = update(_t).where(_t.c.state == PARKED)
        if which is not None:
            query = query.where(which)
        return self._sql.write(
            query.values(
                state=PENDING,
                attempts=0,
                reason=None,
                next_attempt_at=None,
                parked_at=None,
                updated_at=utc(now),
            )
        )

    # --- the managed session ----------------------------------------------------------------

    def set_session(
        self,
        appointment_id: str,
        *,
        session_id: int | None,
        host_external_id: str | None,
        now: datetime,
    ) -> None:
        params = {
            "b_aid": appointment_id,
            "b_session_id": session_id,
            "b_host": host_external_id,
            "b_at": utc(now),
        }
        if not self._sql.write(_SET_SESSION, params):
            raise unknown_appointment(appointment_id)

    def forget_session(self, appointment_id: str, session_id: int, *, now: datetime) -> bool:
        """False when the ledger manages another session (or none) for this appointment."""
        params = {"b_aid": appointment_id, "b_session_id": session_id, "b_at": utc(now)}
        return bool(self._sql.write(_FORGET_SESSION, params))

    def record_applied(
        self,
        appointment_id: str,
        *,
        external_session_id: str | None,
        sent_schedule_ts: datetime | None,
        now: datetime,
    ) -> None:
        params = {
            "b_aid": appointment_id,
            "b_esid": external_session_id,
            "b_sent": None if sent_schedule_ts is None else utc(sent_schedule_ts),
            "b_at": utc(now),
        }
        if not self._sql.write(_RECORD_APPLIED, params):
            raise unknown_appointment(appointment_id)

    # --- reporting --------------------------------------------------------------------------

    def held(self, limit: int = 100) -> list[AppointmentRecord]:
        c = _t.c
        query = (
            select(_t)
            .where(c.state == SKIPPED, c.reason.like(f"{HELD_PREFIX}%"))
            .order_by(c.updated_at.desc(), c.appointment_id)
            .limit(limit)
        )
        return records(AppointmentRecord, self._sql.rows(query))

    def counts_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(APPOINTMENT_STATES, 0)
        rows = self._sql.rows(select(_t.c.state, func.count()).group_by(_t.c.state))
        counts.update({state: int(n) for state, n in rows})
        return counts

    def parked(self, limit: int = 100) -> list[AppointmentRecord]:
        c = _t.c
        query = (
            select(_t).where(c.state == PARKED).order_by(c.parked_at, c.appointment_id).limit(limit)
        )
        return records(AppointmentRecord, self._sql.rows(query))

    def noted(self, limit: int = 100) -> list[AppointmentRecord]:
        c = _t.c
        query = (
            select(_t)
            .where(c.state == SYNCED, c.reason.is_not(None))
            .order_by(c.appointment_id)
            .limit(limit)
        )
        return records(AppointmentRecord, self._sql.rows(query))

    def retrying(self, limit: int = 100) -> list[AppointmentRecord]:
        c = _t.c
        query = (
            select(_t)
            .where(c.state == PENDING, c.attempts > 0)
            .order_by(c.next_attempt_at, c.appointment_id)
            .limit(limit)
        )
        return records(AppointmentRecord, self._sql.rows(query))

    def oldest_pending_since(self) -> datetime | None:
        query = select(func.min(_t.c.updated_at)).where(_t.c.state == PENDING)
        value: datetime | None = self._sql.rows(query).scalar_one()
        return value

    def pending_count(self) -> int:
        query = select(func.count()).select_from(_t).where(_t.c.state == PENDING)
        return int(self._sql.rows(query).scalar_one())
