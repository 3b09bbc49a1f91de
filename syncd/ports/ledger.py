"""The ledger, as the sync layer sees it: a unit of work over small repositories.

The caller frames every transaction (``with ledger.begin() as tx:``) and reaches the tables through
the transaction's repositories (``tx.appointments.park(...)``); a repository never begins or
commits.  Every timestamp is naive UTC.  The ledger holds ids, states, attempt counts, redacted
reasons and timestamps — never patient data.

Two implementations: ``syncd.adapters.ledger`` (SQLAlchemy: SQLite, PostgreSQL, MariaDB) and
``syncd.testing.ledger`` (in memory, for unit tests); one contract suite runs against both.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

__all__ = [
    "AMBIGUOUS",
    "APPLIED",
    "APPOINTMENT_STATES",
    "FAILED",
    "HELD_PREFIX",
    "INTENT",
    "OPEN_OPERATION_STATES",
    "OPERATION_STATES",
    "PARKED",
    "PENDING",
    "RESOLVED",
    "SKIPPED",
    "SYNCED",
    "AppointmentRecord",
    "AppointmentRepository",
    "BookedAppointment",
    "CursorRepository",
    "LeaseRepository",
    "Ledger",
    "LedgerTransaction",
    "OperationJournal",
    "OperationRecord",
    "OutcomeTarget",
    "ParticipantOutcomeRecord",
    "ParticipantRecord",
    "ParticipantRepository",
    "SessionOutcomeRecord",
    "VisitRepository",
]

# --- states ------------------------------------------------------------------------------------

PENDING: Final = "pending"
SYNCED: Final = "synced"
PARKED: Final = "parked"
SKIPPED: Final = "skipped"
APPOINTMENT_STATES: Final = (PENDING, SYNCED, PARKED, SKIPPED)

INTENT: Final = "intent"
APPLIED: Final = "applied"
FAILED: Final = "failed"
AMBIGUOUS: Final = "ambiguous"
RESOLVED: Final = "resolved"
OPERATION_STATES: Final = (INTENT, APPLIED, FAILED, AMBIGUOUS, RESOLVED)
#: Operations whose remote effect is unknown until SecureVideo is read again.
OPEN_OPERATION_STATES: Final = (INTENT, AMBIGUOUS)

#: A skip reason that starts with this is a past visit's change held back (``syncd status``).
HELD_PREFIX: Final = "held:"

#: Width of the free-text ``reason``/``detail`` columns: longer texts are cut, never refused.
TEXT_LIMIT: Final = 1000


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppointmentRecord:
    appointment_id: str
    #: the newest outbox event seen for this appointment
    last_event_id: int
    #: the newest event fully handled (synced or skipped)
    applied_event_id: int | None
    #: one of :data:`APPOINTMENT_STATES`
    state: str
    attempts: int
    reason: str | None
    next_attempt_at: datetime | None
    #: the live SecureVideo session syncd manages for this appointment, and its host
    session_id: int | None
    host_external_id: str | None
    created_at: datetime
    updated_at: datetime
    parked_at: datetime | None
    #: the managed session's time (UTC) when last settled; None before migration 0002
    schedule_ts: datetime | None = None
    #: the ExternalSessionId the appointment got (kept across prefix changes); None before 0006
    external_session_id: str | None = None
    #: the ScheduleTs syncd last sent for the managed session; None before 0006 or without one
    sent_schedule_ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class OperationRecord:
    id: int
    appointment_id: str
    event_id: int
    op: str
    session_id: int | None
    participant_external_id: str | None
    #: one of :data:`OPERATION_STATES`
    state: str
    attempt: int
    detail: str | None
    started_at: datetime | None
    finished_at: datetime | None
    pid: int | None


@dataclass(frozen=True, slots=True)
class ParticipantRecord:
    """An owned participation and what syncd last sent to it.  ``external_id`` is the ledger's
    key for the participant, ``Fingerprints.participant(external id)``: never the raw id (an
    MRN); name, e-mail and SMS are kept as fingerprints only."""

    appointment_id: str
    external_id: str
    session_id: int
    participation_id: int | None
    #: what syncd last sent: SecureVideo never reports a participant's PacketId
    packet_id: int | None
    updated_at: datetime
    #: None when the fields sent are not known (rows from before migration 0006)
    deliver: str | None = None
    securevideo_user_id: str | None = None
    name_fp: str | None = None
    email_fp: str | None = None
    sms_fp: str | None = None
    time_zone_windows_id: str | None = None
    svc_id: int | None = None
    #: decimal text ("20.00"): exact on every backend
    deposit: str | None = None


@dataclass(frozen=True, slots=True)
class SessionOutcomeRecord:
    """The billing values SecureVideo last reported for an appointment's managed session."""

    appointment_id: str
    session_id: int
    host_external_id: str | None
    schedule_ts: datetime | None
    schedule_type: str | None
    billable_ts: datetime | None
    duration_minutes: int | None
    wait_time: int | None
    billable_status_cd: str | None
    #: when ``GET /history`` gave the values after the session left the active list
    final_at: datetime | None
    #: when any value above last changed
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class ParticipantOutcomeRecord:
    """A managed participant's answer and first connection, as SecureVideo last reported them."""

    appointment_id: str
    participant_external_id: str
    session_id: int
    participation_id: int | None
    rsvp: str | None
    connection_ts: datetime | None
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class OutcomeTarget:
    """A managed session whose outcome is not final yet."""

    appointment_id: str
    session_id: int
    host_external_id: str
    #: the appointment's, else the one last observed for this session; None when neither is known
    schedule_ts: datetime | None


@dataclass(frozen=True, slots=True)
class BookedAppointment:
    """An appointment with a managed session, for the billing report."""

    appointment_id: str
    session_id: int
    schedule_ts: datetime
    #: what the outcome collector recorded for this session, if anything
    billable_ts: datetime | None


# --- repositories ------------------------------------------------------------------------------


class CursorRepository(Protocol):
    """How far the outbox has been read."""

    def get(self) -> int:
        """The newest outbox event id read (0 on a fresh ledger)."""
        ...

    def advance(self, event_id: int) -> None:
        """Move the cursor forward to ``event_id``; never backwards."""
        ...

    def fingerprint_key(self) -> bytes:
        """This ledger's secret for :class:`syncd.core.fingerprint.Fingerprints`, made on first
        use and the same ever after (concurrent first uses agree on one)."""
        ...


class AppointmentRepository(Protocol):
    """One row per appointment: which event is pending, which was applied, and the session."""

    def last_events(self, appointment_ids: Collection[str]) -> dict[str, int]:
        """The newest event id the ledger has seen for each known appointment."""
        ...

    def note_events(self, events: Mapping[str, int], *, now: datetime) -> int:
        """Record the newest outbox event of each appointment; returns how many now need work.

        An appointment whose event is newer than the one on file becomes ``pending`` afresh:
        attempts, reason and back-off cleared, un-parked.  An older or equal event changes nothing.
        """
        ...

    def due(
        self, now: datetime, limit: int, after_appointment_id: str | None = None
    ) -> list[AppointmentRecord]:
        """Pending appointments whose back-off has passed, by id, after ``after_appointment_id``."""
        ...

    def get(self, appointment_id: str) -> AppointmentRecord | None: ...

    def get_many(self, appointment_ids: Collection[str]) -> dict[str, AppointmentRecord]: ...

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
        """SecureVideo matches ``event_id``.  False when a newer event keeps it ``pending``."""
        ...

    def mark_skipped(
        self, appointment_id: str, *, event_id: int, reason: str, now: datetime
    ) -> bool:
        """``event_id`` needs nothing from SecureVideo (fulfilled, no-show, outside its window)."""
        ...

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
        """Leave the appointment ``pending`` until ``next_attempt_at``.  With ``event_id``, only
        while that is still its newest event."""
        ...

    def park(
        self,
        appointment_id: str,
        *,
        reason: str,
        attempts: int | None = None,
        now: datetime,
        event_id: int | None = None,
    ) -> bool:
        """Stop trying until a newer event arrives or an operator un-parks it.  With
        ``event_id``, only while that is still its newest event."""
        ...

    def unpark(self, appointment_id: str, now: datetime) -> bool:
        """Make a parked appointment ``pending`` again, attempts from zero.  False if not parked."""
        ...

    def unpark_all(self, now: datetime) -> int: ...

    def set_session(
        self,
        appointment_id: str,
        *,
        session_id: int | None,
        host_external_id: str | None,
        now: datetime,
    ) -> None:
        """Record the session syncd manages, as soon as a create or adopt succeeded."""
        ...

    def forget_session(self, appointment_id: str, session_id: int, *, now: datetime) -> bool:
        """The managed session was cancelled: forget it (and the time sent to it), if it is still
        the one on file."""
        ...

    def record_applied(
        self,
        appointment_id: str,
        *,
        external_session_id: str | None,
        sent_schedule_ts: datetime | None,
        now: datetime,
    ) -> None:
        """What syncd applied: the ExternalSessionId the appointment got and the time sent."""
        ...

    def held(self, limit: int = 100) -> list[AppointmentRecord]:
        """Skipped appointments whose reason starts with :data:`HELD_PREFIX`, newest first."""
        ...

    def counts_by_state(self) -> dict[str, int]:
        """Appointments per state; every state is present, zeros included."""
        ...

    def parked(self, limit: int = 100) -> list[AppointmentRecord]:
        """Parked appointments, longest parked first."""
        ...

    def oldest_pending_since(self) -> datetime | None:
        """When the longest-waiting pending appointment last got a newer row (naive UTC)."""
        ...

    def pending_count(self) -> int:
        """Appointments waiting for work, back-off or not."""
        ...


class OperationJournal(Protocol):
    """Intent → result of every remote call: what may have reached SecureVideo."""

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
        """Journal a remote call before it is sent; returns the operation id."""
        ...

    def record_result(
        self,
        op_id: int,
        *,
        state: str,
        detail: str | None,
        session_id: int | None = None,
        now: datetime,
    ) -> None:
        """Close an intent: ``applied``, ``failed``, ``ambiguous`` or ``resolved``."""
        ...

    def open_intents(self) -> list[OperationRecord]:
        """Calls that may or may not have reached SecureVideo (``intent`` or ``ambiguous``)."""
        ...

    def of_appointment(self, appointment_id: str) -> list[OperationRecord]:
        """The journal of one appointment, oldest first."""
        ...

    def with_open(self, appointment_ids: Collection[str]) -> set[str]:
        """Which of these appointments have calls whose outcome is unknown (one query a batch)."""
        ...

    def resolve_open(self, appointment_id: str, now: datetime) -> int:
        """Close an appointment's open calls once its remote state was re-read and re-planned."""
        ...


class ParticipantRepository(Protocol):
    """The participations syncd made, and what it sent that SecureVideo does not report."""

    def of_appointments(
        self, appointment_ids: Collection[str]
    ) -> dict[str, dict[str, ParticipantRecord]]:
        """Per appointment asked for (possibly empty), its participants by external id."""
        ...

    def upsert(
        self,
        appointment_id: str,
        external_id: str,
        *,
        session_id: int,
        participation_id: int | None,
        packet_id: int | None,
        now: datetime,
    ) -> None: ...

    def put(self, record: ParticipantRecord) -> None:
        """Insert or replace one participation's row, every field as given."""
        ...

    def delete(self, appointment_id: str, external_id: str) -> None: ...

    def delete_all_of(self, appointment_id: str) -> None: ...

    def replace(
        self,
        appointment_id: str,
        participants: Sequence[ParticipantRecord],
    ) -> None:
        """All of an appointment's participants at once (after a create): those on file go."""
        ...


class LeaseRepository(Protocol):
    def try_acquire(self, name: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
        """Take or renew the lease ``name`` for ``ttl_seconds``.  False while another holds it."""
        ...

    def release(self, name: str, holder: str) -> bool:
        """Give the lease up if ``holder`` has it.  Returns whether it did."""
        ...


class VisitRepository(Protocol):
    """What only SecureVideo knows about a visit: RSVPs, connections, billing values."""

    def targets(self) -> list[OutcomeTarget]:
        """Managed sessions whose outcome is not final, by appointment id."""
        ...

    def sessions(self, appointment_ids: Collection[str]) -> dict[str, SessionOutcomeRecord]: ...

    def participants(
        self, appointment_ids: Collection[str]
    ) -> dict[str, dict[str, ParticipantOutcomeRecord]]:
        """Per appointment asked for (possibly empty), its participants' outcomes by external id."""
        ...

    def put_session(self, record: SessionOutcomeRecord) -> None:
        """Insert or replace the appointment's session outcome row."""
        ...

    def put_participant(self, record: ParticipantOutcomeRecord) -> None:
        """Insert or replace one participant outcome row."""
        ...

    def delete_participants(
        self, appointment_id: str, participant_external_ids: Collection[str]
    ) -> int: ...

    def appointments_of_sessions(self, session_ids: Collection[int]) -> dict[int, str]:
        """The appointment each SecureVideo session belongs to, as far as the ledger knows: the
        current managed session, a session an applied create made, or one outcomes recorded."""
        ...

    def booked_between(self, start: datetime, end: datetime) -> list[BookedAppointment]:
        """Appointments with a managed session scheduled in ``[start, end)``, by time then id."""
        ...


class LedgerTransaction(Protocol):
    """One transaction's view of the ledger."""

    @property
    def cursor(self) -> CursorRepository: ...

    @property
    def appointments(self) -> AppointmentRepository: ...

    @property
    def operations(self) -> OperationJournal: ...

    @property
    def participants(self) -> ParticipantRepository: ...

    @property
    def leases(self) -> LeaseRepository: ...

    @property
    def visits(self) -> VisitRepository: ...


class Ledger(Protocol):
    """The unit of work: ``with ledger.begin() as tx`` commits on a clean exit, rolls back on an
    exception."""

    def begin(self) -> AbstractContextManager[LedgerTransaction]: ...
