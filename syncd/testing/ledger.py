"""The ledger port in memory, for unit tests that need no database.

:class:`InMemoryLedger` follows ``syncd.adapters.ledger.SqlLedger`` statement for statement (the
event guards, what a guarded write still changes when it loses, which writes clip their text, the
orderings), and ``tests/test_ledger_contract.py`` runs the same assertions on both.

A transaction works on its own copy of the tables and, on a clean exit, writes the rows it changed
back; when the block raises, the copy is dropped.  One lock serialises transactions, as SQLite's
single writer does.  A transaction begun inside another one of the same thread is a separate
transaction, as on the SQL ledger (its own connection there): it does not see the outer one's
uncommitted writes, and each commits only the rows it changed.

Test controls, without ``mock.patch``: :meth:`InMemoryLedger.fail_next` makes the next
transactions raise a given exception (at ``begin`` or at commit), :meth:`InMemoryLedger.outage`
makes every one raise until :meth:`InMemoryLedger.restore`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from syncd.ports.ledger import (
    APPLIED,
    APPOINTMENT_STATES,
    INTENT,
    OPEN_OPERATION_STATES,
    OPERATION_STATES,
    PARKED,
    PENDING,
    RESOLVED,
    SKIPPED,
    SYNCED,
    TEXT_LIMIT,
    AppointmentRecord,
    BookedAppointment,
    OperationRecord,
    OutcomeTarget,
    ParticipantOutcomeRecord,
    ParticipantRecord,
    SessionOutcomeRecord,
)

__all__ = ["InMemoryLedger", "InMemoryTransaction"]

#: An exception to raise, or a function making a fresh one for each raise.
ErrorSource = BaseException | Callable[[], BaseException]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class _Lease:
    holder: str
    expires_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class _Tables:
    """The ledger's rows.  Records are frozen, so a shallow copy of each dict is a snapshot."""

    cursor: int = 0
    appointments: dict[str, AppointmentRecord] = field(default_factory=dict)
    operations: dict[int, OperationRecord] = field(default_factory=dict)
    participants: dict[tuple[str, str], ParticipantRecord] = field(default_factory=dict)
    leases: dict[str, _Lease] = field(default_factory=dict)
    session_outcomes: dict[str, SessionOutcomeRecord] = field(default_factory=dict)
    participant_outcomes: dict[tuple[str, str], ParticipantOutcomeRecord] = field(
        default_factory=dict
    )

    def copy(self) -> _Tables:
        return _Tables(
            cursor=self.cursor,
            appointments=dict(self.appointments),
            operations=dict(self.operations),
            participants=dict(self.participants),
            leases=dict(self.leases),
            session_outcomes=dict(self.session_outcomes),
            participant_outcomes=dict(self.participant_outcomes),
        )


_TABLES = (
    "appointments",
    "operations",
    "participants",
    "leases",
    "session_outcomes",
    "participant_outcomes",
)


class _Work:
    """One transaction's copy of the tables and the rows it changed (what commit writes back)."""

    def __init__(self, committed: _Tables, take_operation_id: Callable[[], int]) -> None:
        self.t = committed.copy()
        self.dirty: dict[str, set[Any]] = {name: set() for name in _TABLES}
        self.cursor_moved = False
        self.take_operation_id = take_operation_id

    def put(self, table: str, key: Hashable, value: object) -> None:
        rows: dict[Any, object] = getattr(self.t, table)
        rows[key] = value
        self.dirty[table].add(key)

    def drop(self, table: str, key: Hashable) -> bool:
        rows: dict[Any, object] = getattr(self.t, table)
        if key not in rows:
            return False
        del rows[key]
        self.dirty[table].add(key)
        return True

    def write_back(self, committed: _Tables) -> None:
        if self.cursor_moved:
            committed.cursor = max(committed.cursor, self.t.cursor)
        for name in _TABLES:
            mine: dict[Any, object] = getattr(self.t, name)
            theirs: dict[Any, object] = getattr(committed, name)
            for key in self.dirty[name]:
                if key in mine:
                    theirs[key] = mine[key]
                else:
                    theirs.pop(key, None)


def _utc(moment: datetime) -> datetime:
    """Naive UTC, whatever the caller passed: aware values are converted, naive ones trusted."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:TEXT_LIMIT]


def _unknown(appointment_id: str) -> LookupError:
    return LookupError(f"appointment {appointment_id!r} is not in the ledger")


def _pick(rows: Mapping[_K, _V], keys: Collection[_K]) -> dict[_K, _V]:
    return {k: rows[k] for k in dict.fromkeys(keys) if k in rows}


# --- repositories ----------------------------------------------------------------------------


class _Cursor:
    def __init__(self, work: _Work) -> None:
        self._w = work

    def get(self) -> int:
        return self._w.t.cursor

    def advance(self, event_id: int) -> None:
        if event_id > self._w.t.cursor:
            self._w.t.cursor = event_id
            self._w.cursor_moved = True


class _Appointments:
    def __init__(self, work: _Work) -> None:
        self._w = work

    @property
    def _rows(self) -> dict[str, AppointmentRecord]:
        return self._w.t.appointments

    def _put(self, record: AppointmentRecord) -> None:
        self._w.put("appointments", record.appointment_id, record)

    def _change(self, record: AppointmentRecord, **values: Any) -> None:
        self._put(dataclasses.replace(record, **values))

    def last_events(self, appointment_ids: Collection[str]) -> dict[str, int]:
        return {aid: r.last_event_id for aid, r in _pick(self._rows, appointment_ids).items()}

    def note_events(self, events: Mapping[str, int], *, now: datetime) -> int:
        now = _utc(now)
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

    def due(
        self, now: datetime, limit: int, after_appointment_id: str | None = None
    ) -> list[AppointmentRecord]:
        now = _utc(now)
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
        return _pick(self._rows, appointment_ids)

    def mark_synced(
        self,
        appointment_id: str,
        *,
        event_id: int,
        session_id: int | None,
        host_external_id: str | None,
        now: datetime,
        schedule_ts: datetime | None = None,
    ) -> bool:
        applied = {
            "applied_event_id": event_id,
            "session_id": session_id,
            "host_external_id": host_external_id,
            "schedule_ts": None if schedule_ts is None else _utc(schedule_ts),
        }
        return self._settle(appointment_id, event_id, SYNCED, applied, reason=None, now=now)

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
            raise _unknown(appointment_id)
        now = _utc(now)
        if record.last_event_id <= event_id:
            self._change(
                record,
                **applied,
                state=state,
                attempts=0,
                reason=_clip(reason),
                next_attempt_at=None,
                parked_at=None,
                updated_at=now,
            )
            return True
        # A newer event is pending: what was done remotely is still recorded (its plan starts
        # from it), but the state, attempts and reason stay the newer event's.
        self._change(record, **applied, updated_at=now)
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
            next_attempt_at=_utc(next_attempt_at),
            reason=_clip(reason),
            updated_at=_utc(now),
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
        now = _utc(now)
        values: dict[str, Any] = {
            "state": PARKED,
            "reason": _clip(reason),
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
            raise _unknown(appointment_id)
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
            updated_at=_utc(now),
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
            raise _unknown(appointment_id)
        self._change(
            record, session_id=session_id, host_external_id=host_external_id, updated_at=_utc(now)
        )

    def forget_session(self, appointment_id: str, session_id: int, *, now: datetime) -> bool:
        record = self._rows.get(appointment_id)
        if record is None or record.session_id != session_id:
            return False
        self._change(record, session_id=None, host_external_id=None, updated_at=_utc(now))
        return True

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

    def oldest_pending_since(self) -> datetime | None:
        return min((r.updated_at for r in self._rows.values() if r.state == PENDING), default=None)

    def pending_count(self) -> int:
        return sum(1 for r in self._rows.values() if r.state == PENDING)


class _Operations:
    def __init__(self, work: _Work) -> None:
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
                started_at=_utc(now),
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
        values: dict[str, Any] = {"state": state, "detail": _clip(detail), "finished_at": _utc(now)}
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
        now = _utc(now)
        open_ = [
            r
            for r in self._rows.values()
            if r.appointment_id == appointment_id and r.state in OPEN_OPERATION_STATES
        ]
        for record in open_:
            resolved = dataclasses.replace(record, state=RESOLVED, finished_at=now)
            self._w.put("operations", record.id, resolved)
        return len(open_)


class _Participants:
    def __init__(self, work: _Work) -> None:
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
                updated_at=_utc(now),
            ),
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
        *,
        clear: bool = True,
    ) -> None:
        if clear:
            self.delete_all_of(appointment_id)
        keys = [(appointment_id, p.external_id) for p in participants]
        # The SQL ledger's INSERT fails on a duplicate primary key, and the whole statement with it.
        if len(set(keys)) != len(keys) or any(k in self._rows for k in keys):
            raise ValueError(
                f"appointment {appointment_id!r}: a participant is already on file or listed twice"
            )
        for key, p in zip(keys, participants, strict=True):
            # The record's own appointment id is ignored, as the SQL ledger ignores it.
            record = dataclasses.replace(
                p, appointment_id=appointment_id, updated_at=_utc(p.updated_at)
            )
            self._w.put("participants", key, record)


class _Leases:
    def __init__(self, work: _Work) -> None:
        self._w = work

    def try_acquire(self, name: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
        now = _utc(now)
        current = self._w.t.leases.get(name)
        # An expiry equal to now still holds: the SQL ledger takes a lease only once it is past.
        if current is not None and current.holder != holder and not current.expires_at < now:
            return False
        expires_at = now + timedelta(seconds=ttl_seconds)
        self._w.put("leases", name, _Lease(holder, expires_at, now))
        return True

    def release(self, name: str, holder: str) -> bool:
        current = self._w.t.leases.get(name)
        if current is None or current.holder != holder:
            return False
        return self._w.drop("leases", name)


class _Visits:
    def __init__(self, work: _Work) -> None:
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
        return _pick(self._w.t.session_outcomes, appointment_ids)

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
        start, end = _utc(start), _utc(end)
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


class InMemoryTransaction:
    """One transaction's view of the in-memory ledger, through the port's repositories."""

    def __init__(self, work: _Work) -> None:
        self.cursor = _Cursor(work)
        self.appointments = _Appointments(work)
        self.operations = _Operations(work)
        self.participants = _Participants(work)
        self.leases = _Leases(work)
        self.visits = _Visits(work)


# --- the ledger ----------------------------------------------------------------------------------

FailurePoint = Literal["begin", "commit"]


@dataclass(slots=True)
class _Failure:
    error: ErrorSource
    at: FailurePoint

    def make(self) -> BaseException:
        return self.error() if callable(self.error) else self.error


class InMemoryLedger:
    """Implements ``syncd.ports.ledger.Ledger`` in memory.  ``with ledger.begin() as tx:`` commits
    on a clean exit and drops every write when the block raises."""

    def __init__(self) -> None:
        # Reentrant: a transaction begun inside another one of the same thread must not deadlock.
        self._lock = threading.RLock()
        self._committed = _Tables()
        # Outside the tables and never rolled back, like a database sequence: an id is not reused.
        self._next_operation_id = 1
        self._failures: deque[_Failure] = deque()
        self._outage: _Failure | None = None
        #: transactions committed and rolled back (failed ones included), for tests to assert on
        self.commits = 0
        self.rollbacks = 0

    @contextmanager
    def begin(self) -> Iterator[InMemoryTransaction]:
        with self._lock:
            failure = self._take_failure()
            if failure is not None and failure.at == "begin":
                self.rollbacks += 1
                raise failure.make()
            work = _Work(self._committed, self._take_operation_id)
            try:
                yield InMemoryTransaction(work)
            except BaseException:
                self.rollbacks += 1
                raise
            if failure is not None:
                # The block ran, the commit is lost: as a database that dies at COMMIT.
                self.rollbacks += 1
                raise failure.make()
            work.write_back(self._committed)
            self.commits += 1

    def _take_operation_id(self) -> int:
        with self._lock:
            op_id = self._next_operation_id
            self._next_operation_id += 1
            return op_id

    def _take_failure(self) -> _Failure | None:
        if self._outage is not None:
            return self._outage
        return self._failures.popleft() if self._failures else None

    # --- test controls -------------------------------------------------------------------

    def fail_next(self, error: ErrorSource, *, times: int = 1, at: FailurePoint = "begin") -> None:
        """The next ``times`` transactions raise ``error``: at ``begin`` (nothing runs), or at
        ``commit`` (the block runs, then its writes are dropped).  Queued after earlier ones."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._failures.extend(_Failure(error, at) for _ in range(times))

    def outage(self, error: ErrorSource, *, at: FailurePoint = "begin") -> None:
        """Every transaction raises ``error`` until :meth:`restore`."""
        with self._lock:
            self._outage = _Failure(error, at)

    def restore(self) -> None:
        """End an :meth:`outage` and forget queued failures."""
        with self._lock:
            self._outage = None
            self._failures.clear()
