"""The records the ledger's repositories take and give (see :mod:`syncd.ports.ledger`).

Plain frozen values; every timestamp is naive UTC.  No patient data: ids, states, redacted
reasons, timestamps, and keyed fingerprints of what is PHI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "AppointmentRecord",
    "BookedAppointment",
    "DriftRecord",
    "LeaseHolder",
    "LeaseRecord",
    "OperationRecord",
    "OutboxRewind",
    "OutcomeTarget",
    "ParticipantOutcomeRecord",
    "ParticipantRecord",
    "SessionOutcomeRecord",
]


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
    #: the ExternalSessionId the appointment got (kept across prefix changes); None before 0008
    external_session_id: str | None = None
    #: the ScheduleTs syncd last sent for the managed session; None before 0008 or without one
    sent_schedule_ts: datetime | None = None
    #: keyed digest of the outbox row at ``last_event_id`` once read (``sync.rewind``), and of the
    #: row last synced or skipped; None until then (and on ledgers from before migration 0007)
    last_digest: str | None = None
    applied_digest: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRewind:
    """The outbox went back (restored from a backup, say): when syncd noticed, and how far."""

    at: datetime
    #: the cursor when it was noticed
    from_event_id: int
    #: the outbox's newest event id then
    newest_event_id: int
    #: when a pass first ended with nothing pending after the re-read; None until then
    applied_at: datetime | None


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
    #: None when the fields sent are not known (rows from before migration 0008)
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


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who asks for a lease.  ``holder`` is unique to one start of one process (it carries a
    random per-start token); the rest lets a process on the same machine tell it is dead."""

    holder: str
    host: str | None = None
    pid: int | None = None
    #: the process's per-start identity (boot id and start time); None where it cannot be read
    process_start: str | None = None


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A lease as the ledger holds it, with the ledger database's own clock at the reading."""

    name: str
    holder: LeaseHolder
    #: when this holder took it (None for a row an older syncd wrote)
    acquired_at: datetime | None
    expires_at: datetime
    #: the database's clock when this was read: expiry is judged by it, never a host's clock
    database_now: datetime

    @property
    def expired(self) -> bool:
        return self.expires_at < self.database_now


@dataclass(frozen=True, slots=True)
class DriftRecord:
    """One kind of drift standing on an appointment: what the clinic changed in SecureVideo
    (``syncd.core.drift`` names the kinds), in which session, and since when.  Ids only."""

    appointment_id: str
    kind: str
    session_id: int | None
    detected_at: datetime
