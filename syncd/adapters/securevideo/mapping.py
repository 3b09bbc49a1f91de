"""SecureVideo's JSON in domain terms: guests to participant bodies, answers to remote sessions,
History JSON to the port's history records."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from syncd.adapters.securevideo.wire import (
    HistoryJson,
    NewParticipant,
    ParticipantJson,
    SessionJson,
    describe_validation_error,
)
from syncd.core.domain import Guest, RemoteParticipant, RemoteSession
from syncd.ports.links import GuestCode
from syncd.ports.securevideo import HistoryPage, HistoryRecord, RejectedRecord

__all__ = [
    "history_record",
    "new_participant",
    "parse_history",
    "remote_participant",
    "remote_session",
]

_ANY_LIST: Final = TypeAdapter(list[Any])


def new_participant(guest: Guest) -> NewParticipant:
    """The documented participant body for a guest: a SecureVideo user only by reference."""
    if guest.is_securevideo_user:
        return NewParticipant(
            secure_video_user_id=guest.securevideo_user_id,
            packet_id=guest.packet_id,
            svc_id=guest.svc_id,
            deposit_required=guest.deposit,
        )
    return NewParticipant(
        participant_full_name=guest.full_name,
        participant_email_address=guest.email,
        participant_sms_number=guest.sms,
        participant_default_resolution="high",
        participant_time_zone_windows_id=guest.time_zone_windows_id,
        participant_external_id=guest.external_id,
        should_auto_deliver_code=guest.deliver,
        packet_id=guest.packet_id,
        svc_id=guest.svc_id,
        deposit_required=guest.deposit,
    )


def remote_participant(p: ParticipantJson) -> RemoteParticipant:
    return RemoteParticipant(
        participation_id=p.participation_id,
        external_id=p.participant_external_id or None,
        full_name=p.participant_full_name or "",
        email=p.participant_email_address or "",
        sms=p.participant_sms_number or "",
        time_zone_windows_id=p.participant_time_zone_windows_id,
        deliver=p.should_auto_deliver_code or "N",
        packet_id=p.packet_id,
        svc_id=p.svc_id,
        deposit=p.deposit_required,
        securevideo_user_id=p.secure_video_user_id,
        packet_known=p.packet_reported,
        rsvp=p.rsvp or "Unknown",
        connection_ts=p.connection_ts,
    )


def remote_session(s: SessionJson, host_external_id: str | None = None) -> RemoteSession:
    """``host_external_id`` defaults to the host participant's ExternalId ("" if it has none):
    a change's answer does not say which host list the session was read from."""
    if host_external_id is None:
        host = s.participants[0].participant_external_id if s.participants else None
        host_external_id = host or ""
    return RemoteSession(
        session_id=s.session_id,
        external_session_id=s.external_session_id or None,
        user_id=s.user_id,
        schedule_ts=s.schedule_ts,
        schedule_type=s.schedule_type or "",
        host_external_id=host_external_id,
        is_recorded=bool(s.is_recorded),
        participants=tuple(remote_participant(p) for p in s.participants),
        billable_ts=s.billable_ts,
        duration_minutes=s.duration_minutes,
        wait_time=s.wait_time,
        billable_status_cd=s.billable_status_cd,
    )


def guest_codes(sessions: Iterable[SessionJson]) -> list[GuestCode]:
    """Each guest of these sessions with its connect code and Passkey (credentials)."""
    return [
        GuestCode(
            session_id=s.session_id,
            schedule_ts=s.schedule_ts,
            cancelled=s.schedule_type == "Cancelled",
            participation_id=p.participation_id,
            external_id=p.participant_external_id or None,
            deliver=p.should_auto_deliver_code or "N",
            connect_code=p.connect_code,
            passkey=p.passkey or None,
        )
        for s in sessions
        for p in s.participants[1:]  # the first participant is the host
        if p.connect_code
    ]


def history_record(h: HistoryJson) -> HistoryRecord:
    """The port's record; ``UsageDescription`` (who connected) and the customer are left behind."""
    return HistoryRecord(
        session_id=h.session_id,
        schedule_ts=h.schedule_ts,
        billable_ts=h.billable_ts,
        duration_minutes=h.duration_minutes,
        wait_time=h.wait_time,
        billable_status_cd=h.billable_status_cd,
        schedule_type=h.schedule_type,
        user_id=h.user_id,
        scheduled_by_user_id=h.scheduled_by_user_id,
        reportable_meeting_provider=h.reportable_meeting_provider or None,
    )


def parse_history(content: bytes | str) -> HistoryPage:
    """Parse a History JSON array record by record; raises ``ValidationError`` only when it is not
    an array."""
    records: list[HistoryRecord] = []
    rejected: list[RejectedRecord] = []
    for index, item in enumerate(_ANY_LIST.validate_json(content)):
        try:
            records.append(history_record(HistoryJson.model_validate(item)))
        except ValidationError as exc:
            problem = describe_validation_error(exc)
            rejected.append(RejectedRecord(index, _readable_session_id(item), problem))
    return HistoryPage(tuple(records), tuple(rejected))


def _readable_session_id(item: object) -> int | None:
    # Only an integer (or a string of digits) is shown: anything else might not be an id at all.
    value = item.get("SessionId") if isinstance(item, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
