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
from datetime import datetime
from typing import Final, Protocol

from syncd.ports.inbox import InboxRepository
from syncd.ports.links import LinkRepository
from syncd.ports.records import (
    AppointmentRecord,
    BookedAppointment,
    DriftRecord,
    LeaseHolder,
    LeaseRecord,
    OperationRecord,
    OutboxRewind,
    OutcomeTarget,
    ParticipantOutcomeRecord,
    ParticipantRecord,
    SessionOutcomeRecord,
)

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
    "DriftRecord",
    "DriftRepository",
    "LeaseHolder",
    "LeaseRecord",
    "LeaseRepository",
    "Ledger",
    "LedgerTransaction",
    "OperationJournal",
    "OperationRecord",
    "OutboxRewind",
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


# --- repositories ------------------------------------------------------------------------------


class CursorRepository(Protocol):
    """How far the outbox has been read."""

    def get(self) -> int:
        """The newest outbox event id read (0 on a fresh ledger)."""
        ...

    def advance(self, event_id: int) -> None:
        """Move the cursor forward to ``event_id``; never backwards."""
        ...

    def position(self) -> tuple[int, OutboxRewind | None]:
        """The cursor and the last rewind recorded (None if none ever was), in one read."""
        ...

    def rewind(self, *, newest_event_id: int, now: datetime) -> OutboxRewind:
        """The outbox went back: move the cursor to 0 — the one way it moves backwards — and
        record the rewind (its ``applied_at`` None) in place of the last one."""
        ...

    def rewind_applied(self, now: datetime) -> bool:
        """The last rewind's re-read has been applied.  False without one not yet applied."""
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

    def newest_at(self, event_ids: Collection[int]) -> dict[int, tuple[str, str | None]]:
        """Event id → (appointment id, ``last_digest``) of the appointments whose newest event is
        one of these ids."""
        ...

    def note_digests(self, digests: Mapping[str, tuple[int, str]]) -> None:
        """Record each appointment's (event id, digest of that row), where that event is still
        its newest."""
        ...

    def rebase_events(self, now: datetime) -> int:
        """The outbox went back: its event ids mean nothing any more, so every appointment's
        newest event becomes 0 (state, session and digests kept) until :meth:`note_contents`
        sees its row again — but for an HL7 inbox event (``INBOX_EVENT_BASE`` and up), which
        the outbox never numbered.  Returns how many appointments the ledger has."""
        ...

    def note_contents(self, rows: Mapping[str, tuple[int, str]], *, now: datetime) -> int:
        """Record each appointment's newest (event id, row digest) where the event is newer than
        the one on file; content, not the id, decides what needs work.

        A new appointment enters ``pending``.  A known one is left as it is (its event id and
        ``last_digest`` updated) when synced or skipped with this digest applied, or parked or
        pending with this digest on file; otherwise it becomes ``pending`` afresh.  Returns how
        many now need work.
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
        reason: str | None = None,
    ) -> bool:
        """SecureVideo matches ``event_id``.  False when a newer event keeps it ``pending``.

        ``reason``: what an operator should still know (a previous host SecureVideo no longer
        knows), shown as a parked appointment's reason is.

        Either way ``applied_digest`` becomes the ``last_digest`` on file while ``event_id`` is
        the newest, and None otherwise (what was applied is then unknown by content)."""
        ...

    def mark_skipped(
        self, appointment_id: str, *, event_id: int, reason: str, now: datetime
    ) -> bool:
        """``event_id`` needs nothing from SecureVideo (fulfilled, no-show, outside its window).
        ``applied_digest`` as for :meth:`mark_synced`."""
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
        while that is still its newest event.  ``updated_at`` is left alone: the appointment has
        been waiting since it became pending."""
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

    def noted(self, limit: int = 100) -> list[AppointmentRecord]:
        """Synced appointments that carry a reason (``mark_synced(reason=…)``), by id."""
        ...

    def retrying(self, limit: int = 100) -> list[AppointmentRecord]:
        """Pending appointments that failed at least once (a temporary failure being retried),
        soonest next try first."""
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
    """Named leases, their expiry reckoned by the ledger database's clock (``CURRENT_TIMESTAMP``),
    so that hosts whose clocks disagree still agree on who holds a lease."""

    def try_acquire(self, name: str, holder: LeaseHolder, ttl_seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_seconds`` of database time.  False while
        another holder's lease has not expired."""
        ...

    def current(self, name: str) -> LeaseRecord | None:
        """The lease as it stands, with the database's clock; None when nobody holds it."""
        ...

    def take_over(self, name: str, dead: str, holder: LeaseHolder, ttl_seconds: float) -> bool:
        """Take the lease from ``dead`` (a holder shown to be gone), whatever its expiry; False if
        the lease no longer belongs to ``dead`` (someone else was quicker)."""
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


class DriftRepository(Protocol):
    """What clinic staff changed directly in SecureVideo, per appointment and kind of drift."""

    def note(self, record: DriftRecord) -> bool:
        """Record this drift unless the appointment has that kind on file already (which keeps
        its ``detected_at``).  Returns whether it was new."""
        ...

    def clear(self, appointment_id: str, kinds: Collection[str] | None = None) -> int:
        """Forget these kinds (None: every kind) of the appointment's drift; returns how many."""
        ...

    def of_appointments(self, appointment_ids: Collection[str]) -> dict[str, list[DriftRecord]]:
        """The drift on file for these appointments (only those with some), by kind."""
        ...

    def current(self, limit: int = 100) -> list[DriftRecord]:
        """Drift on file, oldest first (then by appointment id and kind)."""
        ...

    def count(self) -> int:
        """How many appointments have drift on file."""
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

    @property
    def links(self) -> LinkRepository: ...

    @property
    def inbox(self) -> InboxRepository: ...

    @property
    def drift(self) -> DriftRepository: ...


class Ledger(Protocol):
    """The unit of work: ``with ledger.begin() as tx`` commits on a clean exit, rolls back on an
    exception."""

    def begin(self) -> AbstractContextManager[LedgerTransaction]: ...
