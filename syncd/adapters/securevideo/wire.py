"""The JSON SecureVideo speaks, as pydantic models: nothing here knows about HTTP.

Response models are tolerant on purpose: SecureVideo's two editions of the Session JSON differ,
its sample is not even valid JSON, and an unknown field or a null where a value was expected must
not stop a sync pass.  So unknown fields are ignored, numbers are accepted where strings are
documented (``SecureVideoUserId`` is an integer in Session JSON and a string in User JSON), and
nearly everything may be null.  Only the ids syncd addresses things by are required.

Request models serialise to exactly the documented bodies through ``to_wire()``.

Fields holding patient data are left out of ``repr`` so that an assertion message or a stray log
line cannot print them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
)

# --- shared field types -----------------------------------------------------------------------


def _blank_to_none(value: object) -> object:
    # An empty string for "no time" is a common .NET serialiser habit; treat it like null.
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _as_naive_utc(value: datetime | None) -> datetime | None:
    # SecureVideo's timestamps are UTC without an offset; should one ever carry an offset, fold it
    # into UTC so that every datetime syncd compares is naive UTC.
    if value is not None and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _null_to_empty_list(value: object) -> object:
    return [] if value is None else value


def _decimal_as_number(value: Decimal | None) -> float | None:
    # The documented bodies carry deposits as JSON numbers (20.00), not strings.
    return None if value is None else float(value)


def format_schedule_ts(value: datetime | None) -> str | None:
    """``ScheduleTs`` as SecureVideo wants it: UTC, no offset, seconds zero; None means "now"."""
    if value is None:
        return None
    naive = _as_naive_utc(value)
    assert naive is not None
    return naive.strftime("%Y-%m-%dT%H:%M:00")


WireTs = Annotated[datetime | None, BeforeValidator(_blank_to_none), AfterValidator(_as_naive_utc)]
Deposit = Annotated[Decimal | None, PlainSerializer(_decimal_as_number, when_used="json")]
ScheduleTs = Annotated[datetime | None, PlainSerializer(format_schedule_ts, when_used="json")]


class _Response(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        coerce_numbers_to_str=True,
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- responses --------------------------------------------------------------------------------


class ParticipantJson(_Response):
    """One element of a Session's ``Participants``; the first one is the host."""

    participation_id: int = Field(alias="ParticipationId")
    participant_full_name: str | None = Field(None, alias="ParticipantFullName", repr=False)
    #: an integer in Session JSON, a string in User JSON: always a string here
    secure_video_user_id: str | None = Field(None, alias="SecureVideoUserId")
    participant_email_address: str | None = Field(None, alias="ParticipantEmailAddress", repr=False)
    participant_sms_number: str | None = Field(None, alias="ParticipantSmsNumber", repr=False)
    participant_default_resolution: str | None = Field(None, alias="ParticipantDefaultResolution")
    participant_time_zone_windows_id: str | None = Field(None, alias="ParticipantTimeZoneWindowsId")
    participant_external_id: str | None = Field(None, alias="ParticipantExternalId")
    connect_code: str | None = Field(None, alias="ConnectCode", repr=False)
    passkey: str | None = Field(None, alias="Passkey", repr=False)
    should_auto_deliver_code: str | None = Field(None, alias="ShouldAutoDeliverCode")
    connection_ts: WireTs = Field(None, alias="ConnectionTs")
    expires_ts: WireTs = Field(None, alias="ExpiresTs")
    rsvp: str | None = Field(None, alias="RSVP")
    #: not in the documented Session JSON; ``"packet_id" in model_fields_set`` says if it was sent
    packet_id: int | None = Field(None, alias="PacketId")
    svc_id: int | None = Field(None, alias="SvcId")
    deposit_required: Decimal | None = Field(None, alias="DepositRequired")

    @property
    def packet_reported(self) -> bool:
        return "packet_id" in self.model_fields_set


class SessionJson(_Response):
    """One element of the Session JSON array (GET /session) or the single session of a change."""

    session_id: int = Field(alias="SessionId")
    schedule_ts: WireTs = Field(None, alias="ScheduleTs")
    billable_ts: WireTs = Field(None, alias="BillableTs")
    connect_code: str | None = Field(None, alias="ConnectCode", repr=False)
    duration_minutes: int | None = Field(None, alias="DurationMinutes")
    wait_time: int | None = Field(None, alias="WaitTime")
    billable_status_cd: str | None = Field(None, alias="BillableStatusCd")
    schedule_type: str | None = Field(None, alias="ScheduleType")
    user_id: int = Field(alias="UserId")
    is_recorded: bool | None = Field(None, alias="IsRecorded")
    zoom_meeting_id: str | None = Field(None, alias="ZoomMeetingId")
    external_session_id: str | None = Field(None, alias="ExternalSessionId")
    topic: str | None = Field(None, alias="Topic", repr=False)
    participants: Annotated[list[ParticipantJson], BeforeValidator(_null_to_empty_list)] = Field(
        default_factory=list, alias="Participants"
    )


class HistoryJson(_Response):
    """One element of History JSON (GET /history)."""

    session_id: int = Field(alias="SessionId")
    schedule_ts: WireTs = Field(None, alias="ScheduleTs")
    billable_ts: WireTs = Field(None, alias="BillableTs")
    duration_minutes: int | None = Field(None, alias="DurationMinutes")
    wait_time: int | None = Field(None, alias="WaitTime")
    billable_status_cd: str | None = Field(None, alias="BillableStatusCd")
    schedule_type: str | None = Field(None, alias="ScheduleType")
    user_id: int | None = Field(None, alias="UserId")
    #: names the participants who connected: patient data
    usage_description: str | None = Field(None, alias="UsageDescription", repr=False)
    customer_id: int | None = Field(None, alias="CustomerId")
    customer_name: str | None = Field(None, alias="CustomerName")
    #: -1 when the session was scheduled through the API
    scheduled_by_user_id: int | None = Field(None, alias="ScheduledByUserId")
    reportable_meeting_provider: str | None = Field(None, alias="ReportableMeetingProvider")


class UserJson(_Response):
    """A SecureVideo user (a host, in syncd's terms), as GET /user returns it."""

    #: a string on the wire, unlike a session's integer ``UserId``
    system_user_id: str = Field(alias="SystemUserId")
    full_name: str | None = Field(None, alias="FullName")
    email_address: str | None = Field(None, alias="EmailAddress", repr=False)
    sms_number: str | None = Field(None, alias="SmsNumber", repr=False)
    time_zone_windows_id: str | None = Field(None, alias="TimeZoneWindowsId")
    help_number: str | None = Field(None, alias="HelpNumber", repr=False)
    default_resolution: str | None = Field(None, alias="DefaultResolution")
    should_auto_deliver_code: str | None = Field(None, alias="ShouldAutoDeliverCode")
    external_id: str | None = Field(None, alias="ExternalId")
    system_roles: str | None = Field(None, alias="SystemRoles")
    is_active: bool | None = Field(None, alias="IsActive")


class ErrorJson(_Response):
    """ASP.NET Web API's error shape."""

    message: str | None = Field(None, alias="Message")
    message_detail: str | None = Field(None, alias="MessageDetail", repr=False)


SESSIONS: Final = TypeAdapter(list[SessionJson])
HISTORY: Final = TypeAdapter(list[HistoryJson])
USERS: Final = TypeAdapter(list[UserJson])


# --- requests ---------------------------------------------------------------------------------


class NewParticipant(_Request):
    """A guest to add to a session (or the new state of one), in either documented shape.

    With ``secure_video_user_id`` set the body is the SecureVideo-user shape: only the
    session-specific fields, since the person's own details belong to the User API.
    """

    participant_full_name: str | None = Field(None, alias="ParticipantFullName", repr=False)
    participant_email_address: str | None = Field(None, alias="ParticipantEmailAddress", repr=False)
    participant_sms_number: str | None = Field(None, alias="ParticipantSmsNumber", repr=False)
    participant_default_resolution: str = Field("high", alias="ParticipantDefaultResolution")
    participant_time_zone_windows_id: str | None = Field(None, alias="ParticipantTimeZoneWindowsId")
    participant_external_id: str | None = Field(None, alias="ParticipantExternalId")
    should_auto_deliver_code: Literal["E", "S", "N"] = Field("N", alias="ShouldAutoDeliverCode")
    secure_video_user_id: str | None = Field(None, alias="SecureVideoUserId")
    #: never null: a null or missing PacketId means "none" to POST /session and "all" to
    #: POST /participant, so -1 (none), 0 (all) or a packet id is always sent
    packet_id: int = Field(-1, alias="PacketId", ge=-1)
    svc_id: int | None = Field(None, alias="SvcId")
    deposit_required: Deposit = Field(None, alias="DepositRequired")

    _USER_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"secure_video_user_id", "packet_id", "svc_id", "deposit_required"}
    )

    @property
    def is_securevideo_user(self) -> bool:
        return self.secure_video_user_id is not None

    def to_wire(self, *, update: bool = False) -> dict[str, Any]:
        """The documented body; ``update`` for PUT, where a participant's identity is fixed."""
        if self.is_securevideo_user:
            fields = set(self._USER_FIELDS)
            if update:
                fields.discard("secure_video_user_id")
            return self.model_dump(mode="json", by_alias=True, include=fields)
        return self.model_dump(mode="json", by_alias=True, exclude={"secure_video_user_id"})


class NewSession(_Request):
    """The body of POST /session."""

    #: naive UTC (an aware value is converted); None schedules the session for right now
    schedule_ts: ScheduleTs = Field(alias="ScheduleTs")
    is_recorded: bool = Field(False, alias="IsRecorded")
    external_session_id: str | None = Field(None, alias="ExternalSessionId")
    topic: str | None = Field(None, alias="Topic", repr=False)
    participants: tuple[NewParticipant, ...] = Field(alias="Participants", min_length=1)

    def to_wire(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", by_alias=True, exclude={"participants"})
        body["Participants"] = [p.to_wire() for p in self.participants]
        return body


class Reschedule(_Request):
    """The body of PUT /session."""

    schedule_ts: ScheduleTs = Field(alias="ScheduleTs")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# --- validation errors without patient data ---------------------------------------------------


def describe_validation_error(error: ValidationError, *, limit: int = 5) -> str:
    """Where a response failed to parse: field paths and error kinds, never the values."""
    details = error.errors(include_input=False, include_url=False, include_context=False)
    parts = [f"{_path(d['loc'])} ({d['type']})" for d in details[:limit]]
    if len(details) > limit:
        parts.append(f"and {len(details) - limit} more")
    return ", ".join(parts)


def _path(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"
