"""Applied state between the ledger's rows and the planner's :class:`AppliedState`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation

from syncd.core.applied import AppliedGuest, AppliedState
from syncd.ports.ledger import AppointmentRecord, LedgerTransaction, ParticipantRecord


def applied_of(
    record: AppointmentRecord | None, rows: Mapping[str, ParticipantRecord]
) -> AppliedState:
    """What the ledger says syncd applied; participations of another session than the managed
    one are stale and left out, except those claimed before a call that made no answer yet (no
    participation id)."""
    if record is None:
        return AppliedState()
    guests = {
        key: _guest(r)
        for key, r in rows.items()
        if r.participation_id is None
        or (record.session_id is not None and r.session_id == record.session_id)
    }
    return AppliedState(
        session_id=record.session_id,
        external_session_id=record.external_session_id,
        host_external_id=record.host_external_id,
        schedule_ts=record.sent_schedule_ts if record.session_id is not None else None,
        guests=guests,
    )


def _guest(r: ParticipantRecord) -> AppliedGuest:
    return AppliedGuest(
        key=r.external_id,
        participation_id=r.participation_id,
        securevideo_user_id=r.securevideo_user_id,
        fields_known=r.deliver is not None,
        name=r.name_fp,
        email=r.email_fp,
        sms=r.sms_fp,
        time_zone_windows_id=r.time_zone_windows_id,
        deliver=r.deliver,
        packet_id=r.packet_id,
        svc_id=r.svc_id,
        deposit=_decimal(r.deposit),
    )


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def participant_record(
    appointment_id: str, session_id: int, g: AppliedGuest, now: datetime
) -> ParticipantRecord:
    return ParticipantRecord(
        appointment_id=appointment_id,
        external_id=g.key,
        session_id=session_id,
        participation_id=g.participation_id,
        packet_id=g.packet_id,
        updated_at=now,
        deliver=g.deliver if g.fields_known else None,
        securevideo_user_id=g.securevideo_user_id,
        name_fp=g.name,
        email_fp=g.email,
        sms_fp=g.sms,
        time_zone_windows_id=g.time_zone_windows_id,
        svc_id=g.svc_id,
        deposit=None if g.deposit is None else str(g.deposit),
    )


def write_applied(
    tx: LedgerTransaction, appointment_id: str, applied: AppliedState, now: datetime
) -> None:
    """All of an appointment's applied state at once: the time sent, its ExternalSessionId and
    the owned participations (those on file go)."""
    tx.appointments.record_applied(
        appointment_id,
        external_session_id=applied.external_session_id,
        sent_schedule_ts=applied.schedule_ts,
        now=now,
    )
    sid = applied.session_id
    people = (
        []
        if sid is None
        else [participant_record(appointment_id, sid, g, now) for g in applied.guests.values()]
    )
    tx.participants.replace(appointment_id, people)
