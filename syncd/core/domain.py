"""The vocabulary of syncd: what the EHR wants and what SecureVideo has.

Plain frozen values, no I/O.  Fields that hold patient data (names, e-mails, phone numbers) are
excluded from ``repr`` so that an accidental ``log.info(x=appointment)`` or an assertion message
cannot print them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import ClassVar, Literal

from syncd.core.fingerprint import Fingerprints

Delivery = Literal["E", "S", "N"]

#: PacketId values with a meaning of their own.  An omitted or null PacketId means "no documents"
#: to the Sessions API and "all documents" to the Participants API, so syncd always sends one.
NO_DOCUMENTS = -1
ALL_DOCUMENTS = 0


class AppointmentStatus(StrEnum):
    """FHIR R4 ``Appointment.status``."""

    PROPOSED = "proposed"
    PENDING = "pending"
    BOOKED = "booked"
    ARRIVED = "arrived"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    NOSHOW = "noshow"
    ENTERED_IN_ERROR = "entered-in-error"
    CHECKED_IN = "checked-in"
    WAITLIST = "waitlist"


class Presence(Enum):
    """What an appointment status asks of its SecureVideo session."""

    LIVE = "live"  # the session must exist as described
    ABSENT = "absent"  # no live session: cancel one that exists
    LEAVE_ALONE = "leave-alone"  # the visit happened or was missed: don't touch SecureVideo


PRESENCE: dict[AppointmentStatus, Presence] = {
    AppointmentStatus.BOOKED: Presence.LIVE,
    AppointmentStatus.ARRIVED: Presence.LIVE,
    AppointmentStatus.CHECKED_IN: Presence.LIVE,
    AppointmentStatus.CANCELLED: Presence.ABSENT,
    AppointmentStatus.ENTERED_IN_ERROR: Presence.ABSENT,
    AppointmentStatus.PROPOSED: Presence.ABSENT,
    AppointmentStatus.PENDING: Presence.ABSENT,
    AppointmentStatus.WAITLIST: Presence.ABSENT,
    AppointmentStatus.FULFILLED: Presence.LEAVE_ALONE,
    AppointmentStatus.NOSHOW: Presence.LEAVE_ALONE,
}


@dataclass(frozen=True, slots=True)
class Guest:
    """A participant the EHR wants in the session (never the host).

    Either a non-SecureVideo person (``full_name`` set) or a SecureVideo user
    (``securevideo_user_id`` set).  ``email``/``sms`` are "" when absent, as SecureVideo
    reports them.  ``external_id`` is often an MRN: shown only as a fingerprint, never in repr.
    """

    external_id: str = field(repr=False)
    full_name: str = field(default="", repr=False)
    email: str = field(default="", repr=False)
    sms: str = field(default="", repr=False)
    time_zone_windows_id: str | None = None
    deliver: Delivery = "N"
    #: always sent: ``NO_DOCUMENTS`` (-1), ``ALL_DOCUMENTS`` (0) or a packet's id
    packet_id: int = NO_DOCUMENTS
    svc_id: int | None = None
    deposit: Decimal | None = None
    securevideo_user_id: str | None = None

    @property
    def is_securevideo_user(self) -> bool:
        return self.securevideo_user_id is not None


@dataclass(frozen=True, slots=True)
class Appointment:
    """The whole appointment as of one outbox row, already validated and normalised."""

    event_id: int
    appointment_id: str
    external_session_id: str
    provider_external_id: str
    status: AppointmentStatus
    #: UTC, naive, seconds zeroed: exactly what ``ScheduleTs`` will say
    starts_at: datetime
    topic: str | None = field(default=None, repr=False)
    is_recorded: bool = False
    guests: tuple[Guest, ...] = ()

    @property
    def presence(self) -> Presence:
        return PRESENCE[self.status]


@dataclass(frozen=True, slots=True)
class RemoteParticipant:
    """A participant as SecureVideo reports it."""

    participation_id: int
    external_id: str | None = field(repr=False)
    full_name: str = field(default="", repr=False)
    email: str = field(default="", repr=False)
    sms: str = field(default="", repr=False)
    time_zone_windows_id: str | None = None
    deliver: str = "N"
    #: not in Session JSON: filled from the ledger's record of what syncd last sent, else None
    packet_id: int | None = None
    svc_id: int | None = None
    deposit: Decimal | None = None
    securevideo_user_id: str | None = None
    #: True when ``packet_id`` is known (SecureVideo does not report it; the ledger remembers it)
    packet_known: bool = False
    rsvp: str = "Unknown"
    connection_ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class RemoteSession:
    """A session as SecureVideo reports it; ``participants[0]`` is the host."""

    session_id: int
    external_session_id: str | None
    user_id: int
    schedule_ts: datetime | None
    schedule_type: str
    #: the ExternalId of the host user whose list this session was read from
    host_external_id: str
    is_recorded: bool = False
    participants: tuple[RemoteParticipant, ...] = ()
    billable_ts: datetime | None = None
    duration_minutes: int | None = None
    wait_time: int | None = None
    billable_status_cd: str | None = None

    @property
    def is_cancelled(self) -> bool:
        return self.schedule_type == "Cancelled"

    @property
    def guests(self) -> tuple[RemoteParticipant, ...]:
        return self.participants[1:]


# --- operations: what the planner asks the executor to do -------------------------------------


@dataclass(frozen=True, slots=True)
class CreateSession:
    appointment_id: str
    external_session_id: str
    host_external_id: str
    schedule_ts: datetime
    topic: str | None = field(repr=False)
    is_recorded: bool
    guests: tuple[Guest, ...]

    kind: ClassVar[str] = "create"


@dataclass(frozen=True, slots=True)
class RescheduleSession:
    appointment_id: str
    session_id: int
    schedule_ts: datetime

    kind: ClassVar[str] = "reschedule"


@dataclass(frozen=True, slots=True)
class CancelSession:
    appointment_id: str
    session_id: int
    #: why: "cancelled" (status), "provider-change", "duplicate"
    reason: str

    kind: ClassVar[str] = "cancel"


@dataclass(frozen=True, slots=True)
class MoveSession:
    """``PUT /sessionhost``: the session goes to another host; its guests keep their connect
    codes and get no cancellation (it needs an account option a clinic may not have)."""

    appointment_id: str
    session_id: int
    host_external_id: str

    kind: ClassVar[str] = "move_host"


@dataclass(frozen=True, slots=True)
class AddParticipant:
    appointment_id: str
    session_id: int
    guest: Guest

    kind: ClassVar[str] = "add_participant"


@dataclass(frozen=True, slots=True)
class UpdateParticipant:
    appointment_id: str
    session_id: int
    participation_id: int
    guest: Guest
    #: names of the changed fields (no values): for logs and ``syncd plan``
    changed: tuple[str, ...]

    kind: ClassVar[str] = "update_participant"


@dataclass(frozen=True, slots=True)
class RemoveParticipant:
    appointment_id: str
    session_id: int
    participation_id: int
    external_id: str = field(repr=False)
    #: "removed" or "rename" (remove + add)
    reason: str
    #: the owned participation's ledger key (``Fingerprints.participant``), never shown
    key: str = field(default="", repr=False, compare=False)

    kind: ClassVar[str] = "remove_participant"


Operation = (
    CreateSession
    | RescheduleSession
    | CancelSession
    | MoveSession
    | AddParticipant
    | UpdateParticipant
    | RemoveParticipant
)


def describe(op: Operation, fingerprints: Fingerprints) -> dict[str, object]:
    """A PHI-free description of an operation, for logs, the ledger and ``syncd plan``.

    Participant external ids are often MRNs: they appear as ``fingerprints.participant(id)``."""
    out: dict[str, object] = {"op": op.kind, "appointment_id": op.appointment_id}
    shown = fingerprints.participant
    match op:
        case CreateSession():
            out["host"] = op.host_external_id
            out["schedule_ts"] = op.schedule_ts.isoformat()
            out["participants"] = [shown(g.external_id) for g in op.guests]
        case RescheduleSession():
            out["session_id"] = op.session_id
            out["schedule_ts"] = op.schedule_ts.isoformat()
        case CancelSession():
            out["session_id"] = op.session_id
            out["reason"] = op.reason
        case MoveSession():
            out["session_id"] = op.session_id
            out["host"] = op.host_external_id
        case AddParticipant():
            out["session_id"] = op.session_id
            out["participant_external_id"] = shown(op.guest.external_id)
        case UpdateParticipant():
            out["session_id"] = op.session_id
            out["participant_external_id"] = shown(op.guest.external_id)
            out["fields"] = list(op.changed)
        case RemoveParticipant():
            out["session_id"] = op.session_id
            out["participant_external_id"] = shown(op.external_id)
            out["reason"] = op.reason
    return out
