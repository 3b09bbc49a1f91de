"""The in-memory ledger's operation journal, participants, leases and visit outcomes."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from syncd.ports.ledger import (
    APPLIED,
    INTENT,
    OPEN_OPERATION_STATES,
    OPERATION_STATES,
    RESOLVED,
    AppointmentRecord,
    BookedAppointment,
    LeaseHolder,
    LeaseRecord,
    OperationRecord,
    OutcomeTarget,
    ParticipantOutcomeRecord,
    ParticipantRecord,
    SessionOutcomeRecord,
)
from syncd.ports.links import JoinLinkRecord
from syncd.testing.memory_tables import Lease, Work, clip, pick, utc


class MemoryOperations:
    def __init__(self, work: Work) -> None:
        self._w = work

    @property
    def _rows(self) -> dict[int, OperationRecord]:
        return self._w.t.operations

    def record_intent(
        self,
        *,
        appointment_id: str,
        event_id: int,
        op: str,
        session_id: int | None,
        participant_external_id: str | None,
        attempt: int,
        now: datetime,
        pid: int | None,
    ) -> int:
        op_id = self._w.take_operation_id()
        self._w.put(
            "operations",
            op_id,
            OperationRecord(
                id=op_id,
                appointment_id=appointment_id,
                event_id=event_id,
                op=op,
                session_id=session_id,
                participant_external_id=participant_external_id,
                state=INTENT,
                attempt=attempt,
                detail=None,
                started_at=utc(now),
                finished_at=None,
                pid=pid,
            ),
        )
        return op_id

    def record_result(
        self,
        op_id: int,
        *,
        state: str,
        detail: str | None,
        session_id: int | None = None,
        now: datetime,
    ) -> None:
        if state not in OPERATION_STATES or state == INTENT:
            raise ValueError(f"not an operation outcome: {state!r}")
        record = self._rows.get(op_id)
        if record is None:
            raise LookupError(f"operation {op_id} is not in the ledger")
        values: dict[str, Any] = {"state": state, "detail": clip(detail), "finished_at": utc(now)}
        if session_id is not None:
            values["session_id"] = session_id
        self._w.put("operations", op_id, dataclasses.replace(record, **values))

    def _ordered(self) -> list[OperationRecord]:
        return [self._rows[k] for k in sorted(self._rows)]

    def open_intents(self) -> list[OperationRecord]:
        return [r for r in self._ordered() if r.state in OPEN_OPERATION_STATES]

    def of_appointment(self, appointment_id: str) -> list[OperationRecord]:
        return [r for r in self._ordered() if r.appointment_id == appointment_id]

    def with_open(self, appointment_ids: Collection[str]) -> set[str]:
        wanted = set(appointment_ids)
        return {
            r.appointment_id
            for r in self._rows.values()
            if r.appointment_id in wanted and r.state in OPEN_OPERATION_STATES
        }

    def resolve_open(self, appointment_id: str, now: datetime) -> int:
        now = utc(now)
        open_ = [
            r
            for r in self._rows.values()
            if r.appointment_id == appointment_id and r.state in OPEN_OPERATION_STATES
        ]
        for record in open_:
            resolved = dataclasses.replace(record, state=RESOLVED, finished_at=now)
            self._w.put("operations", record.id, resolved)
        return len(open_)


class MemoryParticipants:
    def __init__(self, work: Work) -> None:
        self._w = work

    @property
    def _rows(self) -> dict[tuple[str, str], ParticipantRecord]:
        return self._w.t.participants

    def of_appointments(
        self, appointment_ids: Collection[str]
    ) -> dict[str, dict[str, ParticipantRecord]]:
        out: dict[str, dict[str, ParticipantRecord]] = {aid: {} for aid in appointment_ids}
        for (aid, external_id), record in sorted(self._rows.items()):
            if aid in out:
                out[aid][external_id] = record
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
        self._w.put(
            "participants",
            (appointment_id, external_id),
            ParticipantRecord(
                appointment_id=appointment_id,
                external_id=external_id,
                session_id=session_id,
                participation_id=participation_id,
                packet_id=packet_id,
                updated_at=utc(now),
            ),
        )

    def put(self, record: ParticipantRecord) -> None:
        self._w.put(
            "participants",
            (record.appointment_id, record.external_id),
            dataclasses.replace(record, updated_at=utc(record.updated_at)),
        )

    def delete(self, appointment_id: str, external_id: str) -> None:
        self._w.drop("participants", (appointment_id, external_id))

    def delete_all_of(self, appointment_id: str) -> None:
        for key in [k for k in self._rows if k[0] == appointment_id]:
            self._w.drop("participants", key)

    def replace(
        self,
        appointment_id: str,
        participants: Sequence[ParticipantRecord],
    ) -> None:
        self.delete_all_of(appointment_id)
        keys = [(appointment_id, p.external_id) for p in participants]
        # The SQL ledger's INSERT fails on a duplicate primary key, and the whole statement with it.
        if len(set(keys)) != len(keys):
            raise ValueError(f"appointment {appointment_id!r}: a participant is listed twice")
        for key, p in zip(keys, participants, strict=True):
            # The record's own appointment id is ignored, as the SQL ledger ignores it.
            record = dataclasses.replace(
                p, appointment_id=appointment_id, updated_at=utc(p.updated_at)
            )
            self._w.put("participants", key, record)


class MemoryLeases:
    def __init__(self, work: Work) -> None:
        self._w = work

    def try_acquire(self, name: str, holder: LeaseHolder, ttl_seconds: float) -> bool:
        now = self._w.database_now()
        current = self._w.t.leases.get(name)
        expires_at = now + timedelta(seconds=ttl_seconds)
        if current is not None and current.holder.holder == holder.holder:
            self._w.put("leases", name, dataclasses.replace(current, expires_at=expires_at))
            return True
        # An expiry equal to now still holds: the SQL ledger takes a lease only once it is past.
        if current is not None and not current.expires_at < now:
            return False
        self._w.put("leases", name, Lease(holder, now, expires_at, now))
        return True

    def current(self, name: str) -> LeaseRecord | None:
        now = self._w.database_now()
        lease = self._w.t.leases.get(name)
        if lease is None:
            return None
        return LeaseRecord(name, lease.holder, lease.acquired_at, lease.expires_at, now)

    def take_over(self, name: str, dead: str, holder: LeaseHolder, ttl_seconds: float) -> bool:
        now = self._w.database_now()
        current = self._w.t.leases.get(name)
        if current is None or current.holder.holder != dead:
            return False
        self._w.put("leases", name, Lease(holder, now, now + timedelta(seconds=ttl_seconds), now))
        return True

    def release(self, name: str, holder: str) -> bool:
        current = self._w.t.leases.get(name)
        if current is None or current.holder.holder != holder:
            return False
        return self._w.drop("leases", name)


class MemoryVisits:
    def __init__(self, work: Work) -> None:
        self._w = work

    def _same_session(self, record: AppointmentRecord) -> SessionOutcomeRecord | None:
        """The appointment's outcome row, if it is about the session the ledger manages now."""
        outcome = self._w.t.session_outcomes.get(record.appointment_id)
        if outcome is None or outcome.session_id != record.session_id:
            return None
        return outcome

    def targets(self) -> list[OutcomeTarget]:
        out: list[OutcomeTarget] = []
        for aid in sorted(self._w.t.appointments):
            record = self._w.t.appointments[aid]
            if record.session_id is None or record.host_external_id is None:
                continue
            same = self._same_session(record)
            if same is not None and same.final_at is not None:
                continue
            schedule_ts = record.schedule_ts
            if schedule_ts is None and same is not None:
                schedule_ts = same.schedule_ts
            out.append(OutcomeTarget(aid, record.session_id, record.host_external_id, schedule_ts))
        return out

    def sessions(self, appointment_ids: Collection[str]) -> dict[str, SessionOutcomeRecord]:
        return pick(self._w.t.session_outcomes, appointment_ids)

    def participants(
        self, appointment_ids: Collection[str]
    ) -> dict[str, dict[str, ParticipantOutcomeRecord]]:
        out: dict[str, dict[str, ParticipantOutcomeRecord]] = {a: {} for a in appointment_ids}
        for (aid, external_id), record in sorted(self._w.t.participant_outcomes.items()):
            if aid in out:
                out[aid][external_id] = record
        return out

    def put_session(self, record: SessionOutcomeRecord) -> None:
        self._w.put("session_outcomes", record.appointment_id, record)

    def put_participant(self, record: ParticipantOutcomeRecord) -> None:
        key = (record.appointment_id, record.participant_external_id)
        self._w.put("participant_outcomes", key, record)

    def delete_participants(
        self, appointment_id: str, participant_external_ids: Collection[str]
    ) -> int:
        return sum(
            self._w.drop("participant_outcomes", (appointment_id, external_id))
            for external_id in dict.fromkeys(participant_external_ids)
        )

    def appointments_of_sessions(self, session_ids: Collection[int]) -> dict[int, str]:
        wanted = set(session_ids)
        out: dict[int, str] = {}
        for op_id in sorted(self._w.t.operations):
            op = self._w.t.operations[op_id]
            if op.op == "create" and op.state == APPLIED and op.session_id in wanted:
                out[op.session_id] = op.appointment_id
        for outcome in self._w.t.session_outcomes.values():
            if outcome.session_id in wanted:
                out[outcome.session_id] = outcome.appointment_id
        # Last, so the current managed session wins over any older record.
        for record in self._w.t.appointments.values():
            if record.session_id is not None and record.session_id in wanted:
                out[record.session_id] = record.appointment_id
        return out

    def booked_between(self, start: datetime, end: datetime) -> list[BookedAppointment]:
        start, end = utc(start), utc(end)
        out: list[BookedAppointment] = []
        for record in self._w.t.appointments.values():
            if record.session_id is None:
                continue
            same = self._same_session(record)
            when = record.schedule_ts
            if when is None and same is not None:
                when = same.schedule_ts
            if when is None or not start <= when < end:
                continue
            billable_ts = same.billable_ts if same is not None else None
            out.append(
                BookedAppointment(record.appointment_id, record.session_id, when, billable_ts)
            )
        out.sort(key=lambda b: (b.schedule_ts, b.appointment_id))
        return out


class MemoryLinks:
    def __init__(self, work: Work) -> None:
        self._w = work

    def all(self) -> list[JoinLinkRecord]:
        return [self._w.t.join_links[k] for k in sorted(self._w.t.join_links)]

    def put(self, record: JoinLinkRecord) -> None:
        key = (record.appointment_id, record.participant_external_id)
        self._w.put("join_links", key, record)

    def delete(self, appointment_id: str, participant_external_id: str) -> bool:
        return self._w.drop("join_links", (appointment_id, participant_external_id))
