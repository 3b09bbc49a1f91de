"""What syncd last applied to an appointment's session: the third input of the planner.

The ledger keeps it (time sent, ExternalSessionId, host, and per owned participation its id and the
fields sent), so that a change is what the EHR wants versus what syncd sent — not versus what
SecureVideo shows, which rounds times and carries the clinic's own edits.  Names, e-mails and SMS
numbers are kept only as keyed fingerprints (:class:`~syncd.core.fingerprint.Fingerprints`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from syncd.core.domain import (
    AddParticipant,
    Appointment,
    CancelSession,
    CreateSession,
    Guest,
    MoveSession,
    Operation,
    RemoteParticipant,
    RemoteSession,
    RemoveParticipant,
    RescheduleSession,
    UpdateParticipant,
)
from syncd.core.fingerprint import Fingerprints

__all__ = [
    "NOTHING_APPLIED",
    "AppliedGuest",
    "AppliedState",
    "applied_after",
    "is_schedule_drift",
    "kept_session_id",
    "observed_as_applied",
    "participation_of",
    "roundings",
    "sent_guest",
]


#: One edition of the docs says scheduled sessions sit on minutes 0, 15, 30 or 45: a remote time
#: on the quarter hour next to the time sent is SecureVideo's rounding, not the clinic's change.
QUARTER = timedelta(minutes=15)


def roundings(sent: datetime) -> tuple[datetime, ...]:
    """What SecureVideo may show for a time sent: itself, or a quarter hour next to it."""
    down = sent.replace(minute=sent.minute - sent.minute % 15, second=0, microsecond=0)
    return (sent, down, down + QUARTER)


def is_schedule_drift(remote: datetime | None, sent: datetime) -> bool:
    """True when SecureVideo shows a time that is neither the one sent nor a rounding of it."""
    return remote is not None and remote not in roundings(sent)


@dataclass(frozen=True, slots=True)
class AppliedGuest:
    """One participation syncd owns (created it, or adopted it by ParticipantExternalId)."""

    #: ``Fingerprints.participant(external id)``: the raw id is often an MRN
    key: str
    participation_id: int | None
    securevideo_user_id: str | None = None
    #: False for a participation known by id only (a ledger from before migration 0008): the
    #: planner compares the EHR with what SecureVideo shows, once, and keeps that as applied
    fields_known: bool = False
    #: fingerprints of what was sent (``Fingerprints.name`` / ``.contact``)
    name: str | None = field(default=None, repr=False)
    email: str | None = field(default=None, repr=False)
    sms: str | None = field(default=None, repr=False)
    time_zone_windows_id: str | None = None
    deliver: str | None = None
    packet_id: int | None = None
    svc_id: int | None = None
    deposit: Decimal | None = None


@dataclass(frozen=True, slots=True)
class AppliedState:
    """Per appointment: the managed session and what syncd sent to it."""

    session_id: int | None = None
    #: the ExternalSessionId the appointment got: kept even when the configured prefix changes
    external_session_id: str | None = None
    host_external_id: str | None = None
    #: the ScheduleTs syncd sent (UTC); None when unknown (a ledger from before migration 0008)
    schedule_ts: datetime | None = None
    #: owned participations by key
    guests: Mapping[str, AppliedGuest] = field(default_factory=dict)


NOTHING_APPLIED = AppliedState()


def kept_session_id(desired: Appointment, applied: AppliedState) -> Appointment:
    """The appointment under the ExternalSessionId it already has: SecureVideo cannot change one,
    so a new prefix applies to new appointments only."""
    esid = applied.external_session_id
    if esid is None or esid == desired.external_session_id:
        return desired
    return replace(desired, external_session_id=esid)


def sent_guest(guest: Guest, participation_id: int | None, fp: Fingerprints) -> AppliedGuest:
    """What syncd sent for ``guest``, as the ledger keeps it."""
    sv_user = guest.is_securevideo_user
    return AppliedGuest(
        key=fp.participant(guest.external_id),
        participation_id=participation_id,
        securevideo_user_id=guest.securevideo_user_id,
        fields_known=True,
        name=None if sv_user else fp.name(guest.full_name),
        email=None if sv_user else fp.contact(guest.email),
        sms=None if sv_user else fp.contact(guest.sms),
        time_zone_windows_id=guest.time_zone_windows_id,
        deliver=guest.deliver,
        packet_id=guest.packet_id,
        svc_id=guest.svc_id,
        deposit=guest.deposit,
    )


def observed_as_applied(
    key: str, p: RemoteParticipant, packet_id: int | None, fp: Fingerprints
) -> AppliedGuest:
    """A participation taken as applied from what SecureVideo shows (adoption, upgrade).
    SecureVideo never reports a PacketId: ``packet_id`` is the best knowledge of it."""
    sv_user = p.securevideo_user_id is not None
    return AppliedGuest(
        key=key,
        participation_id=p.participation_id,
        securevideo_user_id=p.securevideo_user_id,
        fields_known=True,
        name=None if sv_user else fp.name(p.full_name),
        email=None if sv_user else fp.contact(p.email),
        sms=None if sv_user else fp.contact(p.sms),
        time_zone_windows_id=p.time_zone_windows_id,
        deliver=p.deliver,
        packet_id=packet_id,
        svc_id=p.svc_id,
        deposit=p.deposit,
    )


def participation_of(
    guest: Guest, session: RemoteSession, before: frozenset[int] = frozenset()
) -> int | None:
    """The participation a create, add or update made for ``guest`` in ``session`` (an answer):
    a SecureVideo user by user id (its ParticipantExternalId may be null), anyone else by
    ParticipantExternalId; the newest such one not in ``before``."""
    found = [
        p.participation_id
        for p in session.guests
        if p.participation_id not in before
        and (
            p.securevideo_user_id == guest.securevideo_user_id
            if guest.is_securevideo_user
            else p.securevideo_user_id is None and p.external_id == guest.external_id
        )
    ]
    return max(found) if found else None


def applied_after(
    applied: AppliedState,
    op: Operation,
    result: RemoteSession | None,
    fp: Fingerprints,
    *,
    before: frozenset[int] = frozenset(),
) -> AppliedState:
    """The applied state once ``op`` succeeded with answer ``result``; ``before`` holds the
    participation ids the session had before an add."""
    guests = dict(applied.guests)
    match op:
        case CreateSession():
            made = {} if result is None else _created(op, result, fp)
            return AppliedState(
                session_id=result.session_id if result is not None else None,
                external_session_id=op.external_session_id,
                host_external_id=op.host_external_id,
                schedule_ts=op.schedule_ts,
                guests=made,
            )
        case RescheduleSession():
            if result is not None and is_schedule_drift(result.schedule_ts, op.schedule_ts):
                # The answer shows another time: the call did not take, so nothing was applied
                # (planning again sends it again, within the bounded rounds).
                return applied
            return replace(applied, schedule_ts=op.schedule_ts)
        case CancelSession():
            if applied.session_id != op.session_id:
                return applied
            return replace(applied, session_id=None, schedule_ts=None, guests={})
        case MoveSession():
            if applied.session_id != op.session_id:
                return applied
            return replace(applied, host_external_id=op.host_external_id)
        case AddParticipant() | UpdateParticipant():
            if isinstance(op, UpdateParticipant):
                pid: int | None = op.participation_id
            else:
                pid = None if result is None else participation_of(op.guest, result, before)
            g = sent_guest(op.guest, pid, fp)
            guests[g.key] = g
        case RemoveParticipant():
            guests = {k: g for k, g in guests.items() if g.participation_id != op.participation_id}
    return replace(applied, guests=guests)


def _created(op: CreateSession, result: RemoteSession, fp: Fingerprints) -> dict[str, AppliedGuest]:
    out: dict[str, AppliedGuest] = {}
    taken: set[int] = set()
    for guest in op.guests:
        pid = participation_of(guest, result, frozenset(taken))
        if pid is not None:
            taken.add(pid)
        g = sent_guest(guest, pid, fp)
        out[g.key] = g
    return out
