"""The in-memory ledger's cursor and appointments, as the SQL ledger keeps them."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from syncd.core.fingerprint import KEY_BYTES
from syncd.ports.inbox import INBOX_EVENT_BASE
from syncd.ports.ledger import (
    APPOINTMENT_STATES,
    HELD_PREFIX,
    PARKED,
    PENDING,
    SKIPPED,
    SYNCED,
    AppointmentRecord,
    OutboxRewind,
)
from syncd.testing.memory_tables import Work, clip, pick, unknown, utc


class MemoryCursor:
    def __init__(self, work: Work) -> None:
        self._w = work

    def get(self) -> int:
        return self._w.t.cursor

    def advance(self, event_id: int) -> None:
        if event_id > self._w.t.cursor:
            self._w.t.cursor = event_id
            self._w.cursor_moved = True

    def position(self) -> tuple[int, OutboxRewind | None]:
        return self._w.t.cursor, self._w.t.rewind

    def rewind(self, *, newest_event_id: int, now: datetime) -> OutboxRewind:
        rewind = OutboxRewind(
            at=utc(now),
            from_event_id=self._w.t.cursor,
            newest_event_id=newest_event_id,
            applied_at=None,
        )
        self._w.t.cursor, self._w.t.rewind = 0, rewind
        self._w.rewind_changed = True
        return rewind

    def rewind_applied(self, now: datetime) -> bool:
        rewind = self._w.t.rewind
        if rewind is None or rewind.applied_at is not None:
            return False
        self._w.t.rewind = dataclasses.replace(rewind, applied_at=utc(now))
        self._w.rewind_changed = True
        return True

    def fingerprint_key(self) -> bytes:
        if self._w.t.fingerprint_key is None:
            self._w.t.fingerprint_key = bytes(range(KEY_BYTES))
        return self._w.t.fingerprint_key


class MemoryAppointments:
    def __init__(self, work: Work) -> None:
        self._w = work

    @property
    def _rows(self) -> dict[str, AppointmentRecord]:
        return self._w.t.appointments

    def _put(self, record: AppointmentRecord) -> None:
        self._w.put("appointments", record.appointment_id, record)

    def _change(self, record: AppointmentRecord, **values: Any) -> None:
        self._put(dataclasses.replace(record, **values))

    def last_events(self, appointment_ids: Collection[str]) -> dict[str, int]:
        return {aid: r.last_event_id for aid, r in pick(self._rows, appointment_ids).items()}

    def note_events(self, events: Mapping[str, int], *, now: datetime) -> int:
        now = utc(now)
        changed = 0
        for aid, event_id in events.items():
            known = self._rows.get(aid)
            if known is None:
                self._put(
                    AppointmentRecord(
                        appointment_id=aid,
                        last_event_id=event_id,
                        applied_event_id=None,
                        state=PENDING,
                        attempts=0,
                        reason=None,
                        next_attempt_at=None,
                        session_id=None,
                        host_external_id=None,
                        created_at=now,
                        updated_at=now,
                        parked_at=None,
                    )
                )
            elif event_id > known.last_event_id:
                self._change(
                    known,
                    last_event_id=event_id,
                    state=PENDING,
                    attempts=0,
                    reason=None,
                    next_attempt_at=None,
                    parked_at=None,
                    updated_at=now,
                )
            else:
                continue
            changed += 1
        return changed

    def newest_at(self, event_ids: Collection[int]) -> dict[int, tuple[str, str | None]]:
        wanted = set(event_ids)
        return {
            r.last_event_id: (r.appointment_id, r.last_digest)
            for r in self._rows.values()
            if r.last_event_id in wanted
        }

    def note_digests(self, digests: Mapping[str, tuple[int, str]]) -> None:
        for aid, (event_id, digest) in digests.items():
            record = self._rows.get(aid)
            if record is not None and record.last_event_id == event_id:
                self._change(record, last_digest=digest)

    def rebase_events(self, now: datetime) -> int:
        for record in list(self._rows.values()):
            if record.last_event_id < INBOX_EVENT_BASE:
                self._change(record, last_event_id=0)
        return len(self._rows)

    def note_contents(self, rows: Mapping[str, tuple[int, str]], *, now: datetime) -> int:
        now = utc(now)
        changed = 0
        for aid, (event_id, digest) in rows.items():
            known = self._rows.get(aid)
            if known is None:
                self.note_events({aid: event_id}, now=now)
                self._change(self._rows[aid], last_digest=digest)
            elif event_id <= known.last_event_id:
                continue
            elif known.state in (SYNCED, SKIPPED) and digest == known.applied_digest:
                self._change(
                    known, last_event_id=event_id, applied_event_id=event_id, last_digest=digest
                )
                continue
            elif known.state in (PARKED, PENDING) and digest == known.last_digest:
                self._change(known, last_event_id=event_id, last_digest=digest)
                continue
            else:
                self.note_events({aid: event_id}, now=now)
                self._change(self._rows[aid], last_digest=digest)
            changed += 1
        return changed

    def due(
        self, now: datetime, limit: int, after_appointment_id: str | None = None
    ) -> list[AppointmentRecord]:
        now = utc(now)
        found = sorted(
            (
                r
                for r in self._rows.values()
                if r.state == PENDING
                and (r.next_attempt_at is None or r.next_attempt_at <= now)
                and (after_appointment_id is None or r.appointment_id > after_appointment_id)
            ),
            key=lambda r: r.appointment_id,
        )
        return found[: max(limit, 0)]

    def get(self, appointment_id: str) -> AppointmentRecord | None:
        return self._rows.get(appointment_id)

    def get_many(self, appointment_ids: Collection[str]) -> dict[str, AppointmentRecord]:
        return pick(self._rows, appointment_ids)

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
        record = self._rows.get(appointment_id)
        if record is None:
            raise unknown(appointment_id)
        now = utc(now)
        if record.last_event_id <= event_id:
            self._change(
                record,
                **applied,
                applied_digest=record.last_digest,
                state=state,
                attempts=0,
                reason=clip(reason),
                next_attempt_at=None,
                parked_at=None,
                updated_at=now,
            )
            return True
        # A newer event is pending: what was done remotely is still recorded (its plan starts
        # from it), but the state, attempts and reason stay the newer event's.
        self._change(record, **applied, applied_digest=None, updated_at=now)
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
        record = self._rows.get(appointment_id)
        if record is None:
            raise unknown(appointment_id)
        if event_id is not None and record.last_event_id > event_id:
            return False
        self._change(record, **values)
        return True

    def unpark(self, appointment_id: str, now: datetime) -> bool:
        record = self._rows.get(appointment_id)
        if record is None or record.state != PARKED:
            return False
        self._unpark(record, now)
        return True

    def unpark_all(self, now: datetime) -> int:
        parked = [r for r in self._rows.values() if r.state == PARKED]
        for record in parked:
            self._unpark(record, now)
        return len(parked)

    def _unpark(self, record: AppointmentRecord, now: datetime) -> None:
        self._change(
            record,
            state=PENDING,
            attempts=0,
            reason=None,
            next_attempt_at=None,
            parked_at=None,
            updated_at=utc(now),
        )

    def set_session(
        self,
        appointment_id: str,
        *,
        session_id: int | None,
        host_external_id: str | None,
        now: datetime,
    ) -> None:
        record = self._rows.get(appointment_id)
        if record is None:
            raise unknown(appointment_id)
        self._change(
            record, session_id=session_id, host_external_id=host_external_id, updated_at=utc(now)
        )

    def forget_session(self, appointment_id: str, session_id: int, *, now: datetime) -> bool:
        record = self._rows.get(appointment_id)
        if record is None or record.session_id != session_id:
            return False
        self._change(
            record,
            session_id=None,
            host_external_id=None,
            sent_schedule_ts=None,
            updated_at=utc(now),
        )
        return True

    def record_applied(
        self,
        appointment_id: str,
        *,
        external_session_id: str | None,
        sent_schedule_ts: datetime | None,
        now: datetime,
    ) -> None:
        record = self._rows.get(appointment_id)
        if record is None:
            raise unknown(appointment_id)
        self._change(
            record,
            external_session_id=external_session_id,
            sent_schedule_ts=None if sent_schedule_ts is None else utc(sent_schedule_ts),
            updated_at=utc(now),
        )

    def held(self, limit: int = 100) -> list[AppointmentRecord]:
        found = sorted(
            (
                r
                for r in self._rows.values()
                if r.state == SKIPPED and (r.reason or "").startswith(HELD_PREFIX)
            ),
            key=lambda r: r.appointment_id,
        )
        found.sort(key=lambda r: r.updated_at, reverse=True)
        return found[: max(limit, 0)]

    def counts_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(APPOINTMENT_STATES, 0)
        for record in self._rows.values():
            counts[record.state] = counts.get(record.state, 0) + 1
        return counts

    def parked(self, limit: int = 100) -> list[AppointmentRecord]:
        found = sorted(
            (r for r in self._rows.values() if r.state == PARKED),
            # SQLite and MariaDB sort a NULL first; park() always sets parked_at anyway.
            key=lambda r: (r.parked_at is not None, r.parked_at or datetime.min, r.appointment_id),
        )
        return found[: max(limit, 0)]

    def noted(self, limit: int = 100) -> list[AppointmentRecord]:
        found = sorted(
            (r for r in self._rows.values() if r.state == SYNCED and r.reason is not None),
            key=lambda r: r.appointment_id,
        )
        return found[: max(limit, 0)]

    def retrying(self, limit: int = 100) -> list[AppointmentRecord]:
        found = sorted(
            (r for r in self._rows.values() if r.state == PENDING and r.attempts > 0),
            # NULL first, as SQLite and MariaDB sort it; schedule_retry always sets it anyway.
            key=lambda r: (
                r.next_attempt_at is not None,
                r.next_attempt_at or datetime.min,
                r.appointment_id,
            ),
        )
        return found[: max(limit, 0)]

    def oldest_pending_since(self) -> datetime | None:
        return min((r.updated_at for r in self._rows.values() if r.state == PENDING), default=None)

    def pending_count(self) -> int:
        return sum(1 for r in self._rows.values() if r.state == PENDING)
