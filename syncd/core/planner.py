"""The pure planner: desired appointment + observed sessions → the smallest ordered set of calls.

No I/O and no clock: ``now`` is an argument.  Every rule here exists because a SecureVideo call has
a cost beyond the call itself — a reschedule, cancel or participant change e-mails or texts the
patient — so the planner proposes a call only when the observed state really differs.

Order of operations for one appointment, and why:

1. cancel sessions that must go (status says absent, a duplicate, or the provider changed):
   cancelling before creating means a crash in between leaves zero live sessions, never two;
2. remove participants (dropped guests, and the first half of a rename): frees their names, since
   SecureVideo rejects a second participant with the same name;
3. update participants: their notices then go to the new address;
4. reschedule: the remaining guests get one notice with the new time;
5. add participants: new guests' invitations already carry the final time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from syncd.core.domain import (
    AddParticipant,
    Appointment,
    CancelSession,
    CreateSession,
    Guest,
    Operation,
    Presence,
    RemoteParticipant,
    RemoteSession,
    RemoveParticipant,
    RescheduleSession,
    UpdateParticipant,
)

#: ``GET /session`` lists sessions for about a day after their time; older ones vanish from view.
#: A session syncd cannot see, it must not create (each pass would create it again), so live
#: appointments older than this margin are left alone.
ACTIVE_WINDOW = timedelta(hours=23)

#: One edition of the docs says scheduled sessions sit on minutes 0, 15, 30 or 45.  If SecureVideo
#: does round, the remote time differs from the EHR's by less than this and is not a change.
QUARTER = timedelta(minutes=15)


def plan(
    desired: Appointment,
    observed: Sequence[RemoteSession],
    *,
    now: datetime,
    managed_session_id: int | None = None,
) -> tuple[Operation, ...]:
    """The operations that bring SecureVideo to ``desired``.

    ``observed`` holds the sessions read from the hosts' lists (any host, any state); only those
    whose ExternalSessionId matches and that are not cancelled belong to the appointment.
    ``managed_session_id`` is the session the ledger says syncd created, preferred when SecureVideo
    shows more than one live session for the appointment.
    """
    live = sorted(
        (
            s
            for s in observed
            if s.external_session_id == desired.external_session_id and not s.is_cancelled
        ),
        key=lambda s: s.session_id,
    )
    presence = desired.presence
    if presence is Presence.LEAVE_ALONE:
        return ()
    if presence is Presence.ABSENT:
        return tuple(_cancel(desired, s, "cancelled") for s in live)

    on_host = [s for s in live if s.host_external_id == desired.provider_external_id]
    elsewhere = [s for s in live if s.host_external_id != desired.provider_external_id]
    keep = _choose(on_host, managed_session_id)
    ops: list[Operation] = [_cancel(desired, s, "provider-change") for s in elsewhere]
    ops += [_cancel(desired, s, "duplicate") for s in on_host if s is not keep]

    if keep is None:
        if is_outside_active_window(desired, now):
            return tuple(ops)
        ops.append(
            CreateSession(
                appointment_id=desired.appointment_id,
                external_session_id=desired.external_session_id,
                host_external_id=desired.provider_external_id,
                schedule_ts=desired.starts_at,
                topic=desired.topic,
                is_recorded=desired.is_recorded,
                guests=desired.guests,
            )
        )
        return tuple(ops)

    ops += _participant_changes(desired, keep)
    return tuple(ops)


def is_outside_active_window(desired: Appointment, now: datetime) -> bool:
    """True when a session for this appointment would not be listed by ``GET /session``."""
    return desired.starts_at < now - ACTIVE_WINDOW


def same_schedule(remote: datetime | None, desired: datetime) -> bool:
    """Equal, or what SecureVideo's quarter-hour rounding of ``desired`` could give."""
    if remote is None:
        return False
    if remote == desired:
        return True
    on_quarter = remote.minute % 15 == 0 and remote.second == 0
    return on_quarter and abs(remote - desired) < QUARTER


def _choose(sessions: list[RemoteSession], managed: int | None) -> RemoteSession | None:
    for s in sessions:
        if s.session_id == managed:
            return s
    # Oldest first: it is the one whose invitations the patient most likely already holds.
    return sessions[0] if sessions else None


def _cancel(desired: Appointment, session: RemoteSession, reason: str) -> CancelSession:
    return CancelSession(
        appointment_id=desired.appointment_id, session_id=session.session_id, reason=reason
    )


def _participant_changes(desired: Appointment, session: RemoteSession) -> list[Operation]:
    aid, sid = desired.appointment_id, session.session_id
    # The host (first participant) is never matched, so it is never touched; nor are guests
    # without an external id: clinic staff added those by hand.
    remote = [p for p in session.guests if p.external_id or p.securevideo_user_id]
    removes: list[Operation] = []
    updates: list[Operation] = []
    adds: list[Operation] = []
    matched: set[int] = set()

    for guest in desired.guests:
        current = _match(guest, remote, matched)
        if current is None:
            adds.append(AddParticipant(aid, sid, guest))
            continue
        matched.add(current.participation_id)
        if guest.is_securevideo_user:
            # A SecureVideo user's details live in the User API, not in the session.
            continue
        if current.full_name != guest.full_name:
            removes.append(
                RemoveParticipant(aid, sid, current.participation_id, guest.external_id, "rename")
            )
            adds.append(AddParticipant(aid, sid, guest))
            continue
        changed = changed_fields(guest, current)
        if changed:
            updates.append(UpdateParticipant(aid, sid, current.participation_id, guest, changed))

    for p in remote:
        if p.participation_id not in matched and p.external_id:
            removes.append(
                RemoveParticipant(aid, sid, p.participation_id, p.external_id, "removed")
            )

    reschedule: list[Operation] = []
    if not same_schedule(session.schedule_ts, desired.starts_at):
        reschedule.append(RescheduleSession(aid, sid, desired.starts_at))

    removes.sort(key=_op_key)
    updates.sort(key=_op_key)
    return removes + updates + reschedule + adds


def _op_key(op: Operation) -> str:
    if isinstance(op, RemoveParticipant):
        return op.external_id
    if isinstance(op, UpdateParticipant | AddParticipant):
        return op.guest.external_id
    return ""


def _match(
    guest: Guest, remote: Iterable[RemoteParticipant], taken: set[int]
) -> RemoteParticipant | None:
    for p in remote:
        if p.participation_id in taken:
            continue
        if guest.is_securevideo_user:
            if p.securevideo_user_id == guest.securevideo_user_id:
                return p
        elif p.external_id == guest.external_id and p.securevideo_user_id is None:
            return p
    return None


def changed_fields(guest: Guest, current: RemoteParticipant) -> tuple[str, ...]:
    """Names of the fields an update must change.  Unknowable fields are never "changed"."""
    changed: list[str] = []
    if guest.email != current.email:
        changed.append("email")
    if guest.sms != current.sms:
        changed.append("sms")
    # No zone asked for means "the host's zone", which SecureVideo fills in: not a difference.
    if (
        guest.time_zone_windows_id is not None
        and guest.time_zone_windows_id != current.time_zone_windows_id
    ):
        changed.append("time_zone")
    if guest.deliver != current.deliver:
        changed.append("deliver")
    if current.packet_known and guest.packet_id != current.packet_id:
        changed.append("packet_id")
    if guest.svc_id != current.svc_id or _money(guest.deposit) != _money(current.deposit):
        changed.append("deposit")
    return tuple(changed)


def _money(value: object) -> object:
    # 20, 20.0 and 20.00 are the same deposit.
    return value.normalize() if isinstance(value, Decimal) else value
