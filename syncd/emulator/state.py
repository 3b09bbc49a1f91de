"""The in-memory SecureVideo account behind the emulator: hosts, sessions, participants, billing.

No HTTP here: `server.py` maps requests onto these methods.  One lock guards everything, so each
method is atomic; that is what lets a chaos test say a change was either applied or not.

Field names, status codes and rules follow SecureVideo's own API articles (and the project's
NOTES.md) because the real client is written from the same documents and tested against this.
Error messages name fields and ids, never people: they end up in logs.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from syncd.emulator.notices import CANCELLATION, INVITATION, RESCHEDULE, Notice, NoticeLog
from syncd.emulator.windows_zones import WINDOWS_ZONE_IDS

JsonObject = dict[str, Any]

SCHEDULED: Final = "Scheduled"
ON_DEMAND: Final = "OnDemand"
RESCHEDULED: Final = "Rescheduled"
CANCELLED: Final = "Cancelled"

RSVP_VALUES: Final = ("Unknown", "Confirmed", "Declined")
DELIVERY_CODES: Final = ("E", "S", "N")
BILLABLE_STATUS_CODES: Final = ("BILL", "SVCO", "DUPL", "COMP")
#: ReportableMeetingProvider values; "the last one used" when a meeting switched.
MEETING_PROVIDERS: Final = ("Zoom", "One-Click", "VSee")
#: The account's CustomerId and CustomerName as History JSON reports them.
CUSTOMER_ID: Final = 4242
CUSTOMER_NAME: Final = "Emulated Clinic"

#: What a PacketId shows the participant: these two, or the packet of that id.
NO_DOCUMENTS: Final = -1
ALL_DOCUMENTS: Final = 0

#: SecureVideo deactivates sessions older than this every night; only newer ones are listed.
ACTIVE_WINDOW: Final = timedelta(days=1)
#: ScheduledByUserId that History JSON reports for sessions made through the API
API_SCHEDULER_ID: Final = -1

# Distinct ranges make a client that confuses a SessionId with a ParticipationId fail loudly.
_FIRST_SESSION_ID: Final = 50001
_FIRST_PARTICIPATION_ID: Final = 700001


class ApiError(Exception):
    """A request SecureVideo would refuse; `status` and `message` become the HTTP answer."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(ApiError):
    status = 400


class UnknownResourceError(ApiError):
    status = 404


@dataclass(frozen=True, slots=True)
class HostUser:
    """A SecureVideo user of the account who hosts sessions (a provider)."""

    user_id: int
    external_id: str
    full_name: str
    email: str
    time_zone_windows_id: str = "Eastern Standard Time"


def demo_hosts(count: int = 5, *, first_user_id: int = 1001) -> tuple[HostUser, ...]:
    """Providers "prov-001", "prov-002", ... with user ids 1001, 1002, ..."""
    return tuple(
        HostUser(
            user_id=first_user_id + index,
            external_id=f"prov-{index + 1:03d}",
            full_name=f"Demo Provider {index + 1:03d}",
            email=f"prov-{index + 1:03d}@clinic.example",
        )
        for index in range(count)
    )


DEFAULT_HOSTS: Final = demo_hosts()


@dataclass(slots=True)
class ParticipantRecord:
    participation_id: int
    full_name: str
    secure_video_user_id: int | None
    email: str
    sms: str
    default_resolution: str
    time_zone_windows_id: str
    external_id: str | None
    connect_code: int
    passkey: str | None
    should_auto_deliver_code: str
    connection_ts: datetime | None = None
    expires_ts: datetime | None = None
    rsvp: str = "Unknown"
    #: the PacketId as the request carried it; None when it was null or left out
    packet_id: int | None = None
    svc_id: int | None = None
    deposit_required: float | None = None
    #: what the participant is shown: NO_DOCUMENTS, ALL_DOCUMENTS or a packet id.  A null or
    #: missing PacketId means "none" to POST /session and "all" to POST and PUT /participant.
    documents: int = NO_DOCUMENTS
    #: an invitation was sent to it: its removal then sends a cancellation
    invited: bool = False
    #: the person behind the participation (one address at the time = one person), whose current
    #: address History's participantEmail matches; None in a state file from before it existed
    person_id: int | None = None


@dataclass(frozen=True, slots=True)
class PacketGiven:
    """The PacketId one participation was given, and what it shows the participant."""

    participation_id: int
    external_id: str | None
    #: as sent, -1 and 0 included; None when the request sent null or left it out
    sent: int | None
    #: NO_DOCUMENTS (-1), ALL_DOCUMENTS (0) or the packet shown
    shown: int


@dataclass(slots=True)
class SessionRecord:
    session_id: int
    schedule_ts: datetime
    schedule_type: str
    user_id: int
    connect_code: int
    is_recorded: bool
    zoom_meeting_id: int
    external_session_id: str
    topic: str
    #: the host is always first
    participants: list[ParticipantRecord] = field(default_factory=list)
    billable_ts: datetime | None = None
    billable_status_cd: str | None = None
    duration_minutes: int | None = None
    wait_time: int | None = None
    scheduled_by_user_id: int | None = API_SCHEDULER_ID
    created_at: datetime | None = None
    #: ReportableMeetingProvider: the video platform last used
    meeting_provider: str = "Zoom"
    #: the ScheduleType a cancel replaced: what a session that had connected still reports
    type_before_cancel: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.schedule_type == CANCELLED

    @property
    def reported_type(self) -> str:
        """ScheduleType as Session JSON shows it: "Cancelled" is documented as "cancelled prior
        to the Scheduled Time, and the BillableTs is null", so a session that connected keeps
        the type it had."""
        if self.cancelled and self.billable_ts is not None:
            return self.type_before_cancel or SCHEDULED
        return self.schedule_type

    @property
    def host_participant(self) -> ParticipantRecord:
        return self.participants[0]


# --- JSON rendering ---------------------------------------------------------------------------


def format_timestamp(value: datetime | None) -> str | None:
    """ISO 8601 without offset (the API's UTC convention)."""
    if value is None:
        return None
    if value.microsecond:
        return value.isoformat(timespec="milliseconds")
    return value.isoformat(timespec="seconds")


def parse_timestamp(value: Any, field_name: str) -> datetime:
    """A naive UTC datetime from an API timestamp; offsets are honoured, then dropped."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field_name} must be an ISO 8601 date and time")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequestError(f"{field_name} must be an ISO 8601 date and time") from None
    return _naive_utc(parsed)


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def participant_json(participant: ParticipantRecord) -> JsonObject:
    # PacketId is accepted and stored but never shown: the published Session JSON lacks it.
    return {
        "ParticipationId": participant.participation_id,
        "ParticipantFullName": participant.full_name,
        "SecureVideoUserId": participant.secure_video_user_id,
        "ParticipantEmailAddress": participant.email,
        "ParticipantSmsNumber": participant.sms,
        "ParticipantDefaultResolution": participant.default_resolution,
        "ParticipantTimeZoneWindowsId": participant.time_zone_windows_id,
        "ParticipantExternalId": participant.external_id,
        "ConnectCode": participant.connect_code,
        "Passkey": participant.passkey,
        "ShouldAutoDeliverCode": participant.should_auto_deliver_code,
        "ConnectionTs": format_timestamp(participant.connection_ts),
        "ExpiresTs": format_timestamp(participant.expires_ts),
        "RSVP": participant.rsvp,
        "SvcId": participant.svc_id,
        "DepositRequired": participant.deposit_required,
    }


def session_json(session: SessionRecord) -> JsonObject:
    return {
        "SessionId": session.session_id,
        "ScheduleTs": format_timestamp(session.schedule_ts),
        "BillableTs": format_timestamp(session.billable_ts),
        "ConnectCode": session.connect_code,
        "DurationMinutes": session.duration_minutes,
        "WaitTime": session.wait_time,
        "BillableStatusCd": session.billable_status_cd,
        "ScheduleType": session.reported_type,
        "UserId": session.user_id,
        "IsRecorded": session.is_recorded,
        "ZoomMeetingId": session.zoom_meeting_id,
        "ExternalSessionId": session.external_session_id,
        "Topic": session.topic,
        "Participants": [participant_json(p) for p in session.participants],
    }


def history_json(session: SessionRecord) -> JsonObject:
    return {
        "SessionId": session.session_id,
        "ScheduleTs": format_timestamp(session.schedule_ts),
        "BillableTs": format_timestamp(session.billable_ts),
        "DurationMinutes": session.duration_minutes,
        "WaitTime": session.wait_time,
        "BillableStatusCd": session.billable_status_cd,
        "ScheduleType": session.reported_type,
        "UserId": session.user_id,
        # The real description lists host and participant names; ours must not carry names.
        "UsageDescription": f"Session #{session.session_id}",
        "CustomerId": CUSTOMER_ID,
        "CustomerName": CUSTOMER_NAME,
        "ScheduledByUserId": session.scheduled_by_user_id,
        "ReportableMeetingProvider": session.meeting_provider,
    }


def user_json(host: HostUser) -> JsonObject:
    return {
        "SystemUserId": str(host.user_id),
        "FullName": host.full_name,
        "EmailAddress": host.email,
        "ExternalId": host.external_id,
        "TimeZoneWindowsId": host.time_zone_windows_id,
    }


# --- body validation helpers -------------------------------------------------------------------


def _require_object(body: Any, what: str = "The request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError(f"{what} must be a JSON object")
    return body


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidRequestError(f"{key} must be a string")


def _optional_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # The documents send SecureVideoUserId as "1122": ASP.NET binds numeric strings to ints.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidRequestError(f"{key} must be an integer")


def _optional_number(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise InvalidRequestError(f"{key} must be a number")


def _same_name(left: str, right: str) -> bool:
    return " ".join(left.split()).casefold() == " ".join(right.split()).casefold()


def _check_delivery(code: str, email: str, sms: str) -> None:
    if code not in DELIVERY_CODES:
        raise InvalidRequestError("ShouldAutoDeliverCode must be E, S or N")
    if code == "E" and not email.strip():
        raise InvalidRequestError(
            "ParticipantEmailAddress is required when ShouldAutoDeliverCode is E"
        )
    if code == "S" and not sms.strip():
        raise InvalidRequestError(
            "ParticipantSmsNumber is required when ShouldAutoDeliverCode is S"
        )


def _check_deposit(svc_id: int | None, deposit: float | None) -> None:
    if (svc_id is None) != (deposit is None):
        raise InvalidRequestError("SvcId and DepositRequired must both be null or both be set")


def _packet_id(obj: dict[str, Any]) -> int | None:
    packet_id = _optional_int(obj, "PacketId")
    if packet_id is not None and packet_id < NO_DOCUMENTS:
        raise InvalidRequestError("PacketId must be -1, 0 or the id of a packet")
    return packet_id


def _time_zone(obj: dict[str, Any], host: HostUser) -> str:
    """A participant's Windows zone id; none (null or blank) is the host's zone."""
    zone = (_optional_str(obj, "ParticipantTimeZoneWindowsId") or "").strip()
    if not zone:
        return host.time_zone_windows_id
    if zone not in WINDOWS_ZONE_IDS:
        raise InvalidRequestError("ParticipantTimeZoneWindowsId must be a Windows time zone id")
    return zone


# --- the model ---------------------------------------------------------------------------------


#: what an update of a SecureVideo user's participation may carry
_SESSION_SPECIFIC: Final = frozenset({"PacketId", "SvcId", "DepositRequired"})


class EmulatorState:
    """One SecureVideo account. Every public method is atomic under a single lock."""

    def __init__(
        self,
        hosts: Iterable[HostUser] = DEFAULT_HOSTS,
        *,
        seed: int | None = None,
        passkeys: bool = False,
        refuse_cancelling_connected: bool = False,
        round_to_quarter_hours: bool = False,
        host_change: bool = False,
    ) -> None:
        """``host_change``: the account option ("External ID Label") that ``PUT /sessionhost``
        needs; without it that request is refused with a 400.  ``passkeys``: the account option
        that makes API-created guests join with a Passkey (without it every Passkey is null).
        ``refuse_cancelling_connected``: what DELETE does to a session that has connected is
        undocumented; by default it is accepted and the session keeps reporting its type (see
        ``SessionRecord.reported_type``), with this it is a 400.  ``round_to_quarter_hours``:
        scheduled times land on minute 0, 15, 30 or 45 (nearest, a half rounds up), as one
        edition of the docs says; unconfirmed, so tests run both."""
        self._lock = threading.RLock()
        self._passkeys = passkeys
        self._refuse_cancelling_connected = refuse_cancelling_connected
        self.round_to_quarter_hours = round_to_quarter_hours
        self.host_change = host_change
        #: what SecureVideo e-mailed or texted the guests (see ``notices.py``)
        self.notice_log = NoticeLog()
        self._initial_hosts = tuple(hosts)
        self._rng = random.Random(seed)
        self._hosts: dict[int, HostUser] = {}
        #: hosts removed by ``remove_host``: their sessions stay and still need their host
        self._departed: dict[int, HostUser] = {}
        self._sessions: dict[int, SessionRecord] = {}
        self._by_external_session_id: dict[str, list[int]] = {}
        self._session_of_participation: dict[int, int] = {}
        #: person id -> the address that person has now (History's participantEmail)
        self._people: dict[int, str] = {}
        self._next_person_id = 1
        # Ids keep growing across reset() so a client cache from before a reset cannot alias.
        self._next_session_id = _FIRST_SESSION_ID
        self._next_participation_id = _FIRST_PARTICIPATION_ID
        self._frozen_now: datetime | None = None
        self._clock_offset = timedelta()
        for host in self._initial_hosts:
            self.add_host(host)

    def _scheduled(self, asked: datetime) -> datetime:
        """The time SecureVideo keeps for a requested ScheduleTs: seconds zeroed, and rounded to
        the nearest quarter hour under ``round_to_quarter_hours``."""
        ts = asked.replace(second=0, microsecond=0)
        if not self.round_to_quarter_hours:
            return ts
        down = ts.replace(minute=ts.minute - ts.minute % 15)
        return down + timedelta(minutes=15) if ts.minute % 15 >= 8 else down

    # clock

    def now(self) -> datetime:
        """The emulator's current time, naive UTC."""
        with self._lock:
            if self._frozen_now is not None:
                return self._frozen_now
            return datetime.now(UTC).replace(tzinfo=None) + self._clock_offset

    def set_clock(self, when: datetime | None) -> None:
        """Freeze the clock at `when` (aware, or naive UTC); None returns to real time."""
        with self._lock:
            self._frozen_now = None if when is None else _naive_utc(when)
            self._clock_offset = timedelta()

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward (a frozen clock stays frozen)."""
        with self._lock:
            if self._frozen_now is not None:
                self._frozen_now += delta
            else:
                self._clock_offset += delta

    # users

    def add_host(self, host: HostUser) -> None:
        with self._lock:
            if host.user_id in self._hosts:
                raise ValueError(f"user id {host.user_id} already exists")
            if any(h.external_id == host.external_id for h in self._hosts.values()):
                raise ValueError(f"external id {host.external_id!r} already exists")
            self._hosts[host.user_id] = host

    def remove_host(self, external_id: str) -> None:
        """The provider leaves SecureVideo (a test control): their sessions stay, but the User
        and Session APIs answer 404 for them."""
        with self._lock:
            host = self._resolve_host(None, external_id)
            del self._hosts[host.user_id]
            self._departed[host.user_id] = host

    def hosts(self) -> list[HostUser]:
        with self._lock:
            return sorted(self._hosts.values(), key=lambda h: h.user_id)

    def users_json(self) -> list[JsonObject]:
        return [user_json(h) for h in self.hosts()]

    def user_json(
        self, *, user_id: int | None = None, external_id: str | None = None
    ) -> JsonObject:
        with self._lock:
            return user_json(self._resolve_host(user_id, external_id))

    def _resolve_host(self, user_id: int | None, external_id: str | None) -> HostUser:
        if external_id is not None:
            for host in self._hosts.values():
                if host.external_id == external_id:
                    return host
            raise UnknownResourceError("No user has this externalId")
        if user_id is not None and user_id in self._hosts:
            return self._hosts[user_id]
        raise UnknownResourceError(f"User {user_id} was not found")

    # sessions: reads

    def list_sessions_json(
        self,
        *,
        host_user_id: int | None = None,
        host_external_id: str | None = None,
        participant_email: str | None = None,
    ) -> list[JsonObject]:
        """Active sessions (scheduled on or after now minus one day), cancelled ones included."""
        with self._lock:
            host_id: int | None = None
            if host_user_id is not None or host_external_id is not None:
                host_id = self._resolve_host(host_user_id, host_external_id).user_id
            cutoff = self.now() - ACTIVE_WINDOW
            return [
                session_json(s)
                for s in self._sessions.values()
                if s.schedule_ts >= cutoff
                and (host_id is None or s.user_id == host_id)
                and (participant_email is None or _has_email(s, participant_email))
            ]

    def history_json(
        self,
        *,
        host_user_id: int | None = None,
        host_external_id: str | None = None,
        month: date | None = None,
        start_dt: date | None = None,
        end_dt: date | None = None,
        participant_email: str | None = None,
    ) -> list[JsonObject]:
        """Sessions whose BillableTs (UTC) falls in the range; `month` overrides start/end."""
        lower: datetime | None = None
        upper: datetime | None = None
        if month is not None:
            lower = datetime(month.year, month.month, 1)
            upper = datetime(month.year + month.month // 12, month.month % 12 + 1, 1)
        else:
            if start_dt is not None:
                lower = datetime(start_dt.year, start_dt.month, start_dt.day)
            if end_dt is not None:
                upper = datetime(end_dt.year, end_dt.month, end_dt.day) + timedelta(days=1)
        with self._lock:
            host_id: int | None = None
            if host_user_id is not None or host_external_id is not None:
                host_id = self._resolve_host(host_user_id, host_external_id).user_id
            found = []
            for s in self._sessions.values():
                billable = s.billable_ts
                if billable is None:
                    continue
                if (lower is not None and billable < lower) or (
                    upper is not None and billable >= upper
                ):
                    continue
                if host_id is not None and s.user_id != host_id:
                    continue
                if participant_email is not None and not self._has_person(s, participant_email):
                    continue
                found.append(history_json(s))
            return found

    # sessions: changes

    def create_session(
        self,
        body: Any,
        *,
        host_user_id: int | None = None,
        host_external_id: str | None = None,
        scheduled_by_user_id: int | None = API_SCHEDULER_ID,
    ) -> JsonObject:
        with self._lock:
            host = self._resolve_host(host_user_id, host_external_id)
            request = _require_object(body)
            now = self.now()
            if request.get("ScheduleTs") is None:
                # "Meet now": the creation time, seconds and all, as the documents describe.
                schedule_ts = now.replace(microsecond=0)
                schedule_type = ON_DEMAND
            else:
                schedule_ts = self._scheduled(parse_timestamp(request["ScheduleTs"], "ScheduleTs"))
                schedule_type = SCHEDULED
            is_recorded = request.get("IsRecorded")
            if is_recorded is not None and not isinstance(is_recorded, bool):
                raise InvalidRequestError("IsRecorded must be true or false")
            external_session_id = request.get("ExternalSessionId")
            if isinstance(external_session_id, int) and not isinstance(external_session_id, bool):
                external_session_id = str(external_session_id)
            elif external_session_id is not None and not isinstance(external_session_id, str):
                raise InvalidRequestError("ExternalSessionId must be a string")
            topic = _optional_str(request, "Topic")
            raw_participants = request.get("Participants")
            if not isinstance(raw_participants, list) or not raw_participants:
                raise InvalidRequestError("Participants must contain at least one participant")

            members = [self._host_participation(host)]
            for raw in raw_participants:
                candidate = self._new_participation(raw, host, absent_packet=NO_DOCUMENTS)
                _check_joinable(candidate, host, members)
                members.append(candidate)

            # Duplicate ExternalSessionIds are accepted on purpose: the real API's behaviour is
            # unconfirmed, so syncd must not lean on a rejection, and chaos tests count them.
            session = SessionRecord(
                session_id=self._take_session_id(),
                schedule_ts=schedule_ts,
                schedule_type=schedule_type,
                user_id=host.user_id,
                connect_code=self._connect_code(),
                is_recorded=bool(is_recorded),
                zoom_meeting_id=self._rng.randint(100_000_000, 99_999_999_999),
                external_session_id=external_session_id or "",
                topic=topic or "",
                scheduled_by_user_id=scheduled_by_user_id,
                created_at=now,
            )
            for member in members:
                self._attach(session, member)
            for member in session.participants[1:]:
                self._invite(session, member)
            self._sessions[session.session_id] = session
            if session.external_session_id:
                self._by_external_session_id.setdefault(session.external_session_id, []).append(
                    session.session_id
                )
            return session_json(session)

    def reschedule_session(
        self,
        body: Any,
        *,
        session_id: int | None = None,
        external_session_id: str | None = None,
    ) -> JsonObject:
        with self._lock:
            session = self._find_session(session_id, external_session_id)
            request = _require_object(body)
            if "ScheduleTs" not in request:
                raise InvalidRequestError("ScheduleTs is required")
            if session.cancelled:
                raise InvalidRequestError(
                    f"Session {session.session_id} is cancelled and cannot be changed"
                )
            before = session.schedule_ts
            if request["ScheduleTs"] is None:
                session.schedule_ts = self.now().replace(microsecond=0)
            else:
                session.schedule_ts = self._scheduled(
                    parse_timestamp(request["ScheduleTs"], "ScheduleTs")
                )
            session.schedule_type = RESCHEDULED
            for guest in session.participants[1:]:
                self._notify(RESCHEDULE, session, guest, repeat=session.schedule_ts == before)
            return session_json(session)

    def cancel_session(
        self, *, session_id: int | None = None, external_session_id: str | None = None
    ) -> None:
        with self._lock:
            session = self._find_session(session_id, external_session_id)
            if session.cancelled:
                raise InvalidRequestError(f"Session {session.session_id} is already cancelled")
            if session.billable_ts is not None and self._refuse_cancelling_connected:
                raise InvalidRequestError(
                    f"Session {session.session_id} has connected and cannot be cancelled"
                )
            # The session stays listed as a tombstone, as on SecureVideo.
            session.type_before_cancel = session.schedule_type
            session.schedule_type = CANCELLED
            for guest in session.participants[1:]:
                self._notify(CANCELLATION, session, guest)

    # participants

    def add_participant(
        self,
        body: Any,
        *,
        session_id: int | None = None,
        external_session_id: str | None = None,
    ) -> JsonObject:
        with self._lock:
            session = self._find_session(session_id, external_session_id)
            _refuse_if_cancelled(session)
            host = self._host_of(session)
            candidate = self._new_participation(body, host, absent_packet=ALL_DOCUMENTS)
            _check_joinable(candidate, host, session.participants)
            self._attach(session, candidate)
            self._invite(session, candidate)
            return session_json(session)

    def update_participant(
        self,
        body: Any,
        *,
        participation_id: int | None = None,
        external_session_id: str | None = None,
        participant_external_id: str | None = None,
    ) -> JsonObject:
        with self._lock:
            session, index = self._find_participation(
                participation_id, external_session_id, participant_external_id
            )
            _refuse_if_cancelled(session)
            current = session.participants[index]
            if index == 0:
                raise InvalidRequestError("The session host participation cannot be changed")
            request = _require_object(body)
            if current.secure_video_user_id is not None:
                # The Participants API: a User's update carries only session-specific
                # properties (PacketId, SvcId, DepositRequired); the rest is the User API's.
                user_fields = sorted(set(request) - _SESSION_SPECIFIC)
                if user_fields:
                    raise InvalidRequestError(
                        f"Participation {current.participation_id} is a SecureVideo user; "
                        f"change {', '.join(user_fields)} through the User API"
                    )
            new_name = _optional_str(request, "ParticipantFullName")
            if new_name is not None and new_name.strip() != current.full_name:
                raise InvalidRequestError(
                    "ParticipantFullName cannot be changed; remove the participant and add it again"
                )
            if request.get("SecureVideoUserId") is not None:
                raise InvalidRequestError("SecureVideoUserId cannot be changed")
            changes: dict[str, Any] = {}
            text_fields = {
                "ParticipantEmailAddress": "email",
                "ParticipantSmsNumber": "sms",
                "ParticipantDefaultResolution": "default_resolution",
            }
            for key, attribute in text_fields.items():
                if key in request:
                    value = _optional_str(request, key)
                    if value is None and attribute == "default_resolution":
                        value = "high"
                    changes[attribute] = (value or "").strip()
            if "ParticipantTimeZoneWindowsId" in request:
                changes["time_zone_windows_id"] = _time_zone(request, self._host_of(session))
            if "ParticipantExternalId" in request:
                changes["external_id"] = _optional_str(request, "ParticipantExternalId")
            if "ShouldAutoDeliverCode" in request:
                changes["should_auto_deliver_code"] = (
                    _optional_str(request, "ShouldAutoDeliverCode") or "N"
                )
            if "PacketId" in request:
                packet_id = _packet_id(request)
                changes["packet_id"] = packet_id
                # The Participants API: a null PacketId shows every document.
                changes["documents"] = ALL_DOCUMENTS if packet_id is None else packet_id
            if "SvcId" in request:
                changes["svc_id"] = _optional_int(request, "SvcId")
            if "DepositRequired" in request:
                changes["deposit_required"] = _optional_number(request, "DepositRequired")
            updated = dataclasses.replace(current, **changes)
            _check_delivery(updated.should_auto_deliver_code, updated.email, updated.sms)
            _check_deposit(updated.svc_id, updated.deposit_required)
            session.participants[index] = updated
            if updated.person_id is not None and updated.email != current.email:
                # The person now has this address; their earlier sessions keep the old one.
                self._people[updated.person_id] = updated.email
            if _address_changed(current, updated):
                self._invite(session, updated)
            return session_json(session)

    def remove_participant(
        self,
        *,
        participation_id: int | None = None,
        external_session_id: str | None = None,
        participant_external_id: str | None = None,
    ) -> None:
        with self._lock:
            session, index = self._find_participation(
                participation_id, external_session_id, participant_external_id
            )
            _refuse_if_cancelled(session)
            if index == 0:
                raise InvalidRequestError("The session host cannot be removed")
            # Removing the last guest is allowed: whether SecureVideo refuses it is unknown, and
            # refusing would break a remove-then-add name change.
            removed = session.participants.pop(index)
            del self._session_of_participation[removed.participation_id]
            if removed.invited:
                self._notify(CANCELLATION, session, removed)

    def change_host(
        self,
        body: Any,
        *,
        session_id: int | None = None,
        external_session_id: str | None = None,
    ) -> JsonObject:
        """``PUT /sessionhost``: the session moves to another host user, by ``UserId`` or
        ``ExternalUserId``.  The guests keep their participations and connect codes and are sent
        nothing; the host participation is the new host's.  Needs the account option."""
        with self._lock:
            if not self.host_change:
                raise InvalidRequestError(
                    "Changing a session's host requires the External ID Label account option"
                )
            session = self._find_session(session_id, external_session_id)
            _refuse_if_cancelled(session)
            request = _require_object(body)
            user_id = _optional_int(request, "UserId")
            external_user_id = _optional_str(request, "ExternalUserId")
            if user_id is None and external_user_id is None:
                raise InvalidRequestError("UserId or ExternalUserId is required")
            host = self._resolve_host(user_id, external_user_id)
            if host.user_id == session.user_id:
                return session_json(session)
            if any(p.secure_video_user_id == host.user_id for p in session.participants[1:]):
                raise InvalidRequestError(
                    f"SecureVideoUserId {host.user_id} is a participant of the session"
                )
            old = session.participants[0]
            del self._session_of_participation[old.participation_id]
            new = self._host_participation(host)
            new.participation_id = self._next_participation_id
            self._next_participation_id += 1
            session.participants[0] = new
            self._session_of_participation[new.participation_id] = session.session_id
            session.user_id = host.user_id
            return session_json(session)

    def respond_rsvp(self, participation_id: int, body: Any) -> JsonObject:
        """PUT /rsvp: body {"RSVP": "..."} or a bare JSON string."""
        answer = body.get("RSVP") if isinstance(body, dict) else body
        with self._lock:
            session, index = self._find_participation(participation_id, None, None)
            _refuse_if_cancelled(session)
            self._set_rsvp(session, index, answer)
            return session_json(session)

    # test controls (not part of the HTTP API)

    def mark_connected(
        self,
        session_id: int,
        participation_id: int | None = None,
        at: datetime | None = None,
    ) -> None:
        """Record a connection attempt (the host's when `participation_id` is None).

        Once two parties have connected the session becomes billable, as on SecureVideo:
        BillableTs is the second connection and BillableStatusCd "BILL"; it is never changed after.
        """
        with self._lock:
            session = self._session(session_id)
            if participation_id is None:
                participant = session.host_participant
            else:
                matches = [
                    p for p in session.participants if p.participation_id == participation_id
                ]
                if not matches:
                    raise UnknownResourceError(
                        f"Participation {participation_id} is not in session {session_id}"
                    )
                participant = matches[0]
            if participant.connection_ts is None:
                participant.connection_ts = _naive_utc(at) if at is not None else self.now()
            connected = sorted(
                p.connection_ts for p in session.participants if p.connection_ts is not None
            )
            if len(connected) >= 2 and session.billable_ts is None:
                session.billable_ts = connected[1]
                session.billable_status_cd = "BILL"

    def set_billing(
        self,
        session_id: int,
        billable_ts: datetime | None,
        status_cd: str | None = "BILL",
        duration_minutes: int | None = None,
        wait_time: int | None = None,
        provider: str | None = None,
    ) -> None:
        """``provider``: the ReportableMeetingProvider; None keeps the session's."""
        if status_cd is not None and status_cd not in BILLABLE_STATUS_CODES:
            raise ValueError(f"unknown BillableStatusCd {status_cd!r}")
        if provider is not None and provider not in MEETING_PROVIDERS:
            raise ValueError(f"unknown ReportableMeetingProvider {provider!r}")
        with self._lock:
            session = self._session(session_id)
            session.billable_ts = None if billable_ts is None else _naive_utc(billable_ts)
            session.billable_status_cd = status_cd
            session.duration_minutes = duration_minutes
            session.wait_time = wait_time
            if provider is not None:
                session.meeting_provider = provider

    def set_rsvp(self, participation_id: int, rsvp: str) -> None:
        with self._lock:
            session, index = self._find_participation(participation_id, None, None)
            self._set_rsvp(session, index, rsvp)

    def sessions(self) -> list[SessionRecord]:
        """Copies of every session, cancelled and deactivated ones included, oldest first."""
        with self._lock:
            return [copy.deepcopy(s) for s in self._sessions.values()]

    def session(self, session_id: int) -> SessionRecord:
        with self._lock:
            return copy.deepcopy(self._session(session_id))

    def packets(self, session_id: int) -> dict[int, PacketGiven]:
        """Per guest participation of a session: the PacketId it was last given and what that
        shows the participant (Session JSON does not report it)."""
        with self._lock:
            return {
                p.participation_id: PacketGiven(
                    p.participation_id, p.external_id, p.packet_id, p.documents
                )
                for p in self._session(session_id).participants[1:]
            }

    def notices(self, session_id: int | None = None) -> list[Notice]:
        """The notices sent so far (of one session, when given), oldest first."""
        return self.notice_log.all(session_id)

    def clear_notices(self) -> None:
        self.notice_log.clear()

    def live_sessions_by_external_id(self) -> dict[str, list[int]]:
        """ExternalSessionId -> ids of its non-cancelled sessions; more than one is a duplicate."""
        with self._lock:
            live: dict[str, list[int]] = {}
            for external_id, session_ids in self._by_external_session_id.items():
                ids = [i for i in session_ids if not self._sessions[i].cancelled]
                if ids:
                    live[external_id] = ids
            return live

    def order_free_name(self, kind: str, ident: int) -> str | None:
        """What an id this account handed out names, in terms that do not depend on the order
        the ids were handed out in: a session by its host and ExternalSessionId, a participation
        by its session's and the participant's ExternalId (its place in the session when it has
        none).  ``kind`` is "session" or "participation"; None for an id not (or no longer) known.

        Fault plans decide by it (``server.request_identity``): with several clients' threads
        creating sessions at once, which one gets SessionId 50007 is a matter of thread order.
        """
        with self._lock:
            if kind == "session":
                session = self._sessions.get(ident)
            elif kind == "participation":
                owner = self._session_of_participation.get(ident)
                session = None if owner is None else self._sessions.get(owner)
            else:
                raise ValueError(f"unknown kind of id {kind!r}")
            if session is None:
                return None
            name = f"session {session.user_id}/{session.external_session_id}"
            if kind == "session":
                return name
            for index, participant in enumerate(session.participants):
                if participant.participation_id == ident:
                    return f"{name} participant {participant.external_id or f'#{index}'}"
            return None

    def duplicate_external_session_ids(self) -> dict[str, list[int]]:
        return {k: v for k, v in self.live_sessions_by_external_id().items() if len(v) > 1}

    def reset(self) -> None:
        """Forget every session and runtime-added host; return to real time."""
        with self._lock:
            self._sessions.clear()
            self._by_external_session_id.clear()
            self._session_of_participation.clear()
            self._people.clear()
            self._hosts.clear()
            self._departed.clear()
            for host in self._initial_hosts:
                self._hosts[host.user_id] = host
            self._frozen_now = None
            self._clock_offset = timedelta()
            self.notice_log.clear()

    # internals (callers hold the lock)

    def _notify(
        self, kind: str, session: SessionRecord, guest: ParticipantRecord, *, repeat: bool = False
    ) -> None:
        self.notice_log.send(
            kind,
            session.session_id,
            guest.participation_id,
            guest.should_auto_deliver_code,
            repeat=repeat,
        )

    def _invite(self, session: SessionRecord, guest: ParticipantRecord) -> None:
        if self.notice_log.send(
            INVITATION, session.session_id, guest.participation_id, guest.should_auto_deliver_code
        ):
            guest.invited = True

    def _host_of(self, session: SessionRecord) -> HostUser:
        return self._hosts.get(session.user_id) or self._departed[session.user_id]

    def _session(self, session_id: int) -> SessionRecord:
        session = self._sessions.get(session_id)
        if session is None:
            raise UnknownResourceError(f"Session {session_id} was not found")
        return session

    def _find_session(
        self, session_id: int | None, external_session_id: str | None
    ) -> SessionRecord:
        if external_session_id is None:
            if session_id is None:
                raise UnknownResourceError("Session was not found")
            return self._session(session_id)
        # Several sessions may share the id (a reinstated appointment, or a duplicate): act on
        # the newest one still live.
        for candidate in reversed(self._by_external_session_id.get(external_session_id, [])):
            if not self._sessions[candidate].cancelled:
                return self._sessions[candidate]
        raise UnknownResourceError("No live session has this externalSessionId")

    def _find_participation(
        self,
        participation_id: int | None,
        external_session_id: str | None,
        participant_external_id: str | None,
    ) -> tuple[SessionRecord, int]:
        if external_session_id is not None:
            if participant_external_id is None:
                raise InvalidRequestError("externalId is required with externalSessionId")
            session = self._find_session(None, external_session_id)
            matches = [
                i
                for i, p in enumerate(session.participants)
                if p.external_id == participant_external_id
            ]
            guests = [i for i in matches if i != 0]
            if guests:
                return session, guests[0]
            if matches:
                return session, 0
            raise UnknownResourceError(
                f"No participant of session {session.session_id} has this externalId"
            )
        if participation_id is None or participation_id not in self._session_of_participation:
            raise UnknownResourceError(f"Participation {participation_id} was not found")
        session = self._sessions[self._session_of_participation[participation_id]]
        for index, participant in enumerate(session.participants):
            if participant.participation_id == participation_id:
                return session, index
        raise UnknownResourceError(f"Participation {participation_id} was not found")

    def _set_rsvp(self, session: SessionRecord, index: int, answer: Any) -> None:
        if index == 0:
            raise InvalidRequestError("The session host cannot RSVP")
        if answer not in RSVP_VALUES:
            raise InvalidRequestError("RSVP must be Unknown, Confirmed or Declined")
        session.participants[index].rsvp = answer

    def _take_session_id(self) -> int:
        session_id = self._next_session_id
        self._next_session_id += 1
        return session_id

    def _attach(self, session: SessionRecord, participant: ParticipantRecord) -> None:
        participant.participation_id = self._next_participation_id
        self._next_participation_id += 1
        if participant.person_id is None:
            participant.person_id = self._person_with(participant.email)
        session.participants.append(participant)
        self._session_of_participation[participant.participation_id] = session.session_id

    def _person_with(self, email: str) -> int:
        """The person who now has this address, or a new one (a guest without one is new)."""
        wanted = email.strip().casefold()
        if wanted:
            for person_id, current in self._people.items():
                if current.strip().casefold() == wanted:
                    return person_id
        person_id = self._next_person_id
        self._next_person_id += 1
        self._people[person_id] = email
        return person_id

    def _has_person(self, session: SessionRecord, email: str) -> bool:
        """History's participantEmail: a participant who *now* has the address, whatever address
        they had in this session."""
        wanted = email.strip().casefold()
        people = {pid for pid, now in self._people.items() if now.strip().casefold() == wanted}
        return any(
            p.person_id in people
            if p.person_id is not None
            else p.email.strip().casefold() == wanted
            for p in session.participants
        )

    def _connect_code(self) -> int:
        return self._rng.randint(100_000_000, 999_999_999)

    def _passkey(self) -> str | None:
        # Only with the account option; a registered user never has one.
        if not self._passkeys:
            return None
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _host_participation(self, host: HostUser) -> ParticipantRecord:
        return self._user_participation(host, code="E", external_id=host.external_id)

    def _user_participation(
        self,
        user: HostUser,
        *,
        code: str,
        external_id: str | None,
        packet_id: int | None = None,
        documents: int = NO_DOCUMENTS,
        svc_id: int | None = None,
        deposit: float | None = None,
    ) -> ParticipantRecord:
        """A user of the account in a session: the host, or a SecureVideo user as a guest.

        ``external_id`` is the participation's own: the Session JSON article shows one user as
        "Provider_AMG" in one session, "EMR123456" in another and null in a third."""
        return ParticipantRecord(
            participation_id=0,
            full_name=user.full_name,
            secure_video_user_id=user.user_id,
            email=user.email,
            sms="",
            default_resolution="high",
            time_zone_windows_id=user.time_zone_windows_id,
            external_id=external_id,
            connect_code=self._connect_code(),
            passkey=None,
            should_auto_deliver_code=code,
            packet_id=packet_id,
            svc_id=svc_id,
            deposit_required=deposit,
            documents=documents,
        )

    def _new_participation(
        self, raw: Any, host: HostUser, *, absent_packet: int
    ) -> ParticipantRecord:
        """A participant from a request body; its ParticipationId is assigned on attach.
        ``absent_packet``: what a null or missing PacketId shows, which differs by endpoint."""
        request = _require_object(raw, "A participant")
        packet_id = _packet_id(request)
        documents = absent_packet if packet_id is None else packet_id
        svc_id = _optional_int(request, "SvcId")
        deposit = _optional_number(request, "DepositRequired")
        _check_deposit(svc_id, deposit)
        user_id = _optional_int(request, "SecureVideoUserId")
        if user_id is not None:
            user = self._hosts.get(user_id)
            if user is None:
                raise InvalidRequestError(
                    f"SecureVideoUserId {user_id} is not a user of this account"
                )
            code = _optional_str(request, "ShouldAutoDeliverCode") or "E"
            _check_delivery(code, user.email, "")
            return self._user_participation(
                user,
                code=code,
                external_id=_optional_str(request, "ParticipantExternalId"),
                packet_id=packet_id,
                documents=documents,
                svc_id=svc_id,
                deposit=deposit,
            )
        name = (_optional_str(request, "ParticipantFullName") or "").strip()
        if len(name) < 2:
            raise InvalidRequestError("ParticipantFullName must be at least 2 characters")
        email = (_optional_str(request, "ParticipantEmailAddress") or "").strip()
        sms = (_optional_str(request, "ParticipantSmsNumber") or "").strip()
        code = _optional_str(request, "ShouldAutoDeliverCode") or "N"
        _check_delivery(code, email, sms)
        return ParticipantRecord(
            participation_id=0,
            full_name=name,
            secure_video_user_id=None,
            email=email,
            sms=sms,
            default_resolution=_optional_str(request, "ParticipantDefaultResolution") or "high",
            time_zone_windows_id=_time_zone(request, host),
            external_id=_optional_str(request, "ParticipantExternalId"),
            connect_code=self._connect_code(),
            passkey=self._passkey(),
            should_auto_deliver_code=code,
            packet_id=packet_id,
            svc_id=svc_id,
            deposit_required=deposit,
            documents=documents,
        )


def _address_changed(before: ParticipantRecord, after: ParticipantRecord) -> bool:
    """The address SecureVideo delivers to changed: another method, or a new e-mail (E) or
    SMS number (S)."""
    code = after.should_auto_deliver_code
    if code != before.should_auto_deliver_code:
        return True
    if code == "E":
        return after.email.casefold() != before.email.casefold()
    if code == "S":
        return after.sms != before.sms
    return False


def _has_email(session: SessionRecord, email: str) -> bool:
    wanted = email.strip().casefold()
    return any(p.email.casefold() == wanted for p in session.participants)


def _refuse_if_cancelled(session: SessionRecord) -> None:
    if session.cancelled:
        raise InvalidRequestError(
            f"Session {session.session_id} is cancelled and cannot be changed"
        )


def _check_joinable(
    candidate: ParticipantRecord, host: HostUser, members: Sequence[ParticipantRecord]
) -> None:
    if candidate.secure_video_user_id == host.user_id or _same_name(
        candidate.full_name, host.full_name
    ):
        raise InvalidRequestError("The session host cannot be added as a participant")
    for member in members:
        if (
            candidate.secure_video_user_id is not None
            and member.secure_video_user_id == candidate.secure_video_user_id
        ):
            raise InvalidRequestError(
                f"SecureVideoUserId {candidate.secure_video_user_id} is already in the session"
            )
        if _same_name(candidate.full_name, member.full_name):
            raise InvalidRequestError(
                "A participant with this ParticipantFullName is already in the session"
            )
