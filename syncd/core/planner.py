"""The pure planner: desired (the EHR), applied (what syncd last sent, from the ledger) and
observed (what SecureVideo shows) → the smallest ordered set of calls.

No I/O and no clock: ``now`` is an argument.  Every rule here exists because a SecureVideo call has
a cost beyond the call itself — a reschedule, cancel or participant change e-mails or texts the
patient — so the planner proposes a call only for a real change.

Three-way, as ``kubectl apply`` does with its last-applied configuration:

- a **change** is desired versus applied: a time moved by one minute is a reschedule, whatever
  SecureVideo shows;
- applied versus observed is **drift** (the clinic's own edits, SecureVideo's rounding): undone
  only when ``restore`` is asked (``syncd.core.drift``); otherwise kept, and a session staff
  cancelled or removed is not created again until the EHR changes the visit's time;
- only **owned** participations (created by syncd, or adopted by ParticipantExternalId on first
  sight) are changed or removed; every other guest, SecureVideo users included, is left alone;
- where nothing is applied yet (a ledger from before applied state was kept, a lost answer), what
  SecureVideo shows is taken as applied;
- **past visits**: no create once the start passed by more than a grace, no reschedule or cancel of
  a session whose time has passed or that has connected; those are held and reported instead.

Order of operations for one appointment, and why:

1. cancel sessions that must go (status says absent, a duplicate, or the provider changed):
   cancelling before creating means a crash in between leaves zero live sessions, never two;
   with ``move_host``, a provider change moves the session instead (``PUT /sessionhost``: the
   patient keeps the connect code and gets no cancellation and no new invitation);
2. remove participants (dropped guests, and the first half of a rename): frees their names, since
   SecureVideo rejects a second participant with the same name;
3. update participants: their notices then go to the new address;
4. reschedule: the remaining guests get one notice with the new time;
5. add participants: new guests' invitations already carry the final time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from syncd.core.applied import (
    NOTHING_APPLIED,
    AppliedGuest,
    AppliedState,
    kept_session_id,
    observed_as_applied,
    roundings,
)
from syncd.core.domain import (
    AddParticipant,
    Appointment,
    CancelSession,
    CreateSession,
    Guest,
    MoveSession,
    Operation,
    Presence,
    RemoteParticipant,
    RemoteSession,
    RemoveParticipant,
    RescheduleSession,
    UpdateParticipant,
)
from syncd.core.drift import SESSION_LOST, DriftKind, applied_restoring
from syncd.core.fingerprint import Fingerprints

#: ``GET /session`` lists sessions for about a day after their time; older ones vanish from view.
#: A session syncd cannot see, it must not create (each pass would create it again), so live
#: appointments older than this margin are left alone.
ACTIVE_WINDOW = timedelta(hours=23)

#: No session is created for a visit that started longer ago than this (an invitation for a visit
#: that is over); ``SYNCD_SYNC__PAST_VISIT_GRACE_MINUTES`` sets it.
PAST_VISIT_GRACE = timedelta(minutes=60)

#: Every held reason starts with this, so ``syncd status`` can list them apart from other skips.
HELD = "held"
#: A session staff cancelled (or that left the list) not created again starts with this.
HELD_BY_DRIFT = f"{HELD}: drift:"


@dataclass(frozen=True, slots=True)
class Plan:
    """The calls, what was held back and why (past visits), and the applied state the plan
    starts from once adoption is done — what the ledger keeps when the plan is empty."""

    ops: tuple[Operation, ...]
    held: tuple[str, ...] = ()
    applied: AppliedState = field(default_factory=AppliedState)


def plan(
    desired: Appointment,
    applied: AppliedState | None,
    observed: Sequence[RemoteSession],
    *,
    now: datetime,
    fingerprints: Fingerprints,
    managed_session_id: int | None = None,
    past_grace: timedelta = PAST_VISIT_GRACE,
    move_host: bool = False,
    drift: Mapping[DriftKind, int | None] | None = None,
    restore: bool = False,
) -> tuple[Operation, ...]:
    """The operations that bring SecureVideo to ``desired``; see :func:`plan_in_full`."""
    return plan_in_full(
        desired,
        applied,
        observed,
        now=now,
        fingerprints=fingerprints,
        managed_session_id=managed_session_id,
        past_grace=past_grace,
        move_host=move_host,
        drift=drift,
        restore=restore,
    ).ops


def plan_in_full(
    desired: Appointment,
    applied: AppliedState | None,
    observed: Sequence[RemoteSession],
    *,
    now: datetime,
    fingerprints: Fingerprints,
    managed_session_id: int | None = None,
    past_grace: timedelta = PAST_VISIT_GRACE,
    move_host: bool = False,
    drift: Mapping[DriftKind, int | None] | None = None,
    restore: bool = False,
) -> Plan:
    """``move_host``: a provider change may move the session to the new host rather than
    cancel it and create another (the account allows ``PUT /sessionhost``).  ``observed``
    holds the sessions read from the hosts' lists (any host, any state); only those whose
    ExternalSessionId matches and that are not cancelled belong to the appointment.
    ``managed_session_id`` is the session the ledger says syncd created, preferred when
    SecureVideo shows more than one live session for the appointment.  ``applied`` None: nothing
    is on file.  ``drift``: what staff changed in SecureVideo (kind → session id); ``restore``:
    undo it, else keep it."""
    drift = drift or {}
    applied = applied or NOTHING_APPLIED
    desired = kept_session_id(desired, applied)
    if applied.external_session_id is None:
        applied = replace(applied, external_session_id=desired.external_session_id)
    live = sorted(
        (
            s
            for s in observed
            if s.external_session_id == desired.external_session_id and not s.is_cancelled
        ),
        key=lambda s: s.session_id,
    )
    extra = drift.get(DriftKind.EXTRA_SESSION)
    if extra is not None and not restore:
        # A session staff booked under the appointment's id is theirs, kept as they made it.
        live = [s for s in live if s.session_id != extra]
    presence = desired.presence
    if presence is Presence.LEAVE_ALONE:
        return Plan((), applied=applied)
    if presence is Presence.ABSENT:
        cancels, held = _held_back([_cancel(desired, s, "cancelled") for s in live], live, now)
        return Plan(cancels, held, applied)

    on_host = [s for s in live if s.host_external_id == desired.provider_external_id]
    elsewhere = [s for s in live if s.host_external_id != desired.provider_external_id]
    keep = _choose(on_host, managed_session_id)
    moved = None
    if keep is None and move_host:
        # Never a past or connected session: that one is left where it is, like a cancel.
        moved = _choose([s for s in elsewhere if not is_frozen(s, now)], managed_session_id)
    ops: list[Operation] = [
        _cancel(desired, s, "provider-change") for s in elsewhere if s is not moved
    ]
    ops += [_cancel(desired, s, "duplicate") for s in on_host if s is not keep]
    if moved is not None:
        host = desired.provider_external_id
        ops.append(MoveSession(desired.appointment_id, moved.session_id, host))
        keep = replace(moved, host_external_id=host)

    if keep is None:
        cancels, held = _held_back(ops, live, now)
        kept_away = _lost_session_kept(desired, applied, drift, restore=restore, now=now)
        if kept_away is not None:
            return Plan(cancels, (*held, kept_away), applied)
        if desired.starts_at < now - past_grace:
            late = f"{HELD}: the visit started over {_minutes(past_grace)} minutes ago: not created"
            return Plan(cancels, (*held, late), applied)
        create = CreateSession(
            appointment_id=desired.appointment_id,
            external_session_id=desired.external_session_id,
            host_external_id=desired.provider_external_id,
            schedule_ts=desired.starts_at,
            topic=desired.topic,
            is_recorded=desired.is_recorded,
            guests=desired.guests,
        )
        return Plan((*cancels, create), held, applied)

    if applied.session_id != keep.session_id:
        # What is on file is about another session (or none): adopt this one as it stands.  Claims
        # made before a call whose answer never came (a lost create's guests) stay: they name what
        # that call made here, which must be removed if the EHR has dropped it meanwhile.
        applied = replace(
            applied,
            session_id=keep.session_id,
            host_external_id=keep.host_external_id,
            schedule_ts=None,
            guests={k: g for k, g in applied.guests.items() if g.participation_id is None},
        )
    if restore and drift and desired.starts_at > now and not is_frozen(keep, now):
        # Planned against what SecureVideo shows, the EHR's wishes become the restoring calls.
        applied = applied_restoring(applied, keep, fingerprints)
    changes, applied = _session_changes(desired, applied, keep, fingerprints)
    kept, held = _held_back(ops + changes, live, now)
    return Plan(kept, held, applied)


def _lost_session_kept(
    desired: Appointment,
    applied: AppliedState,
    drift: Mapping[DriftKind, int | None],
    *,
    restore: bool,
    now: datetime,
) -> str | None:
    """Why a session staff cancelled (or that left the list) is not created again, or None when
    it is: restoring a visit still to come, or the EHR moved the visit since syncd sent it."""
    lost = sorted(k for k in drift if k in SESSION_LOST)
    if not lost:
        return None
    what = f"{HELD_BY_DRIFT} session {drift[lost[0]]} {lost[0]} in SecureVideo"
    if restore:
        return None if desired.starts_at > now else f"{what}; the visit time has passed"
    if applied.schedule_ts is not None and desired.starts_at != applied.schedule_ts:
        return None
    return f"{what}: not created again unless the EHR changes the visit"


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def is_frozen(session: RemoteSession, now: datetime) -> bool:
    """A session that has connected (BillableTs set) or whose time has passed: never rescheduled
    or cancelled — what DELETE does to such a session is not documented, and a notice about a
    visit that is over only confuses the patient."""
    if session.billable_ts is not None:
        return True
    return session.schedule_ts is not None and session.schedule_ts <= now


def _held_back(
    ops: list[Operation], live: Sequence[RemoteSession], now: datetime
) -> tuple[tuple[Operation, ...], tuple[str, ...]]:
    """The operations less the reschedules and cancels of frozen sessions, and why those went."""
    frozen = {s.session_id: s for s in live if is_frozen(s, now)}
    kept: list[Operation] = []
    held: list[str] = []
    for op in ops:
        if isinstance(op, CancelSession | RescheduleSession) and op.session_id in frozen:
            why = "has connected" if frozen[op.session_id].billable_ts else "time has passed"
            held.append(f"{HELD}: session {op.session_id} {why}: no {op.kind}")
        else:
            kept.append(op)
    return tuple(kept), tuple(held)


def is_outside_active_window(desired: Appointment, now: datetime) -> bool:
    """True when a session for this appointment would not be listed by ``GET /session``."""
    return desired.starts_at < now - ACTIVE_WINDOW


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


def _session_changes(
    desired: Appointment, applied: AppliedState, session: RemoteSession, fp: Fingerprints
) -> tuple[list[Operation], AppliedState]:
    aid, sid = desired.appointment_id, session.session_id
    owned, ops = _owned(desired, applied, session, fp)
    removes: list[Operation] = []
    updates: list[Operation] = []
    adds: list[Operation] = []
    shown = {p.participation_id: p for p in session.guests}
    for guest in desired.guests:
        key = fp.participant(guest.external_id)
        mine = owned.get(key)
        if mine is None:
            adds.append(AddParticipant(aid, sid, guest))
            continue
        changed = changed_fields(guest, mine, fp)
        if mine.participation_id not in shown:
            # The clinic removed it: respected until the EHR changes this guest.
            if changed:
                adds.append(AddParticipant(aid, sid, guest))
            continue
        pid = mine.participation_id
        assert pid is not None  # shown holds ids only
        if "name" in changed:
            removes.append(RemoveParticipant(aid, sid, pid, guest.external_id, "rename", key))
            adds.append(AddParticipant(aid, sid, guest))
        elif changed:
            # PUT cannot change a name, and one differing only in case is the same name: the
            # update carries the name SecureVideo has, or it would be refused.
            if not guest.is_securevideo_user and shown[pid].full_name:
                guest = replace(guest, full_name=shown[pid].full_name)
            updates.append(UpdateParticipant(aid, sid, pid, guest, changed))
    for p, key in ops:
        removes.append(
            RemoveParticipant(aid, sid, p.participation_id, p.external_id or "", "removed", key)
        )

    reschedule: list[Operation] = []
    sent = applied.schedule_ts
    if sent is None:
        # Nothing on file: SecureVideo's time (or its rounding of the EHR's) is taken as sent.
        shown_ts = session.schedule_ts
        sent = desired.starts_at if shown_ts in roundings(desired.starts_at) else shown_ts
    if sent != desired.starts_at:
        if session.schedule_ts == desired.starts_at:
            # SecureVideo already shows it (a reschedule whose answer was lost, say): another
            # would only send the patients the same notice again.
            sent = desired.starts_at
        else:
            reschedule.append(RescheduleSession(aid, sid, desired.starts_at))

    removes.sort(key=_op_key)
    updates.sort(key=_op_key)
    now_applied = replace(applied, schedule_ts=sent, guests=owned)
    return removes + updates + reschedule + adds, now_applied


def _owned(
    desired: Appointment, applied: AppliedState, session: RemoteSession, fp: Fingerprints
) -> tuple[dict[str, AppliedGuest], list[tuple[RemoteParticipant, str]]]:
    """The owned participations by key (on file, or adopted now; those the EHR no longer wants
    stay owned until their removal succeeds), and the owned participations shown that the EHR
    no longer wants."""
    shown = {p.participation_id: p for p in session.guests}
    owned: dict[str, AppliedGuest] = {}
    claimed = {
        g.participation_id for g in applied.guests.values() if g.participation_id is not None
    }
    wanted = {fp.participant(g.external_id): g for g in desired.guests}
    dropped: list[tuple[RemoteParticipant, str]] = []
    gone: dict[str, AppliedGuest] = {}
    for key, mine in applied.guests.items():
        current = shown.get(mine.participation_id) if mine.participation_id is not None else None
        if mine.participation_id is None:
            # Claimed before a call whose answer never came: adopted below if still wanted,
            # else what that call made is removed.
            made = None if key in wanted else _made_by_lost_call(key, mine, session, claimed, fp)
            if made is not None:
                claimed.add(made.participation_id)
                dropped.append((made, key))
                owned[key] = observed_as_applied(key, made, mine.packet_id, fp)
            continue
        if key not in wanted:
            if current is not None:
                dropped.append((current, key))
                owned[key] = mine
            continue
        if current is None:
            gone[key] = mine  # adopted again below if a call whose answer was lost made it anew
            continue
        if not mine.fields_known:
            # A null PacketId on file was sent by a syncd that left it out: whether that showed
            # no documents or all of them depended on the endpoint, so it is not taken as known.
            packet = wanted[key].packet_id if mine.packet_id is None else mine.packet_id
            mine = observed_as_applied(key, current, packet, fp)
        owned[key] = mine
    for key, guest in wanted.items():
        if key in owned:
            continue
        found = _adoptable(guest, session.guests, claimed)
        if found is not None:
            claimed.add(found.participation_id)
            owned[key] = observed_as_applied(key, found, guest.packet_id, fp)
        elif key in gone:
            owned[key] = gone[key]  # the clinic removed it
    dropped.sort(key=lambda d: d[0].participation_id)
    return owned, dropped


def _made_by_lost_call(
    key: str, mine: AppliedGuest, session: RemoteSession, taken: set[int], fp: Fingerprints
) -> RemoteParticipant | None:
    for p in session.guests:
        if p.participation_id in taken:
            continue
        if mine.securevideo_user_id is not None:
            if p.securevideo_user_id == mine.securevideo_user_id:
                return p
        elif (
            p.securevideo_user_id is None and p.external_id and fp.participant(p.external_id) == key
        ):
            return p
    return None


def _op_key(op: Operation) -> str:
    if isinstance(op, RemoveParticipant):
        return op.external_id
    if isinstance(op, UpdateParticipant | AddParticipant):
        return op.guest.external_id
    return ""


def _adoptable(
    guest: Guest, remote: Iterable[RemoteParticipant], taken: set[int]
) -> RemoteParticipant | None:
    """The participation syncd may adopt for ``guest``, never one already owned: same
    ParticipantExternalId; a SecureVideo user by user id, whatever its ParticipantExternalId (it
    is per participation and may be null), since a session holds a user once (a second is a
    400)."""
    for p in remote:
        if p.participation_id in taken:
            continue
        if guest.is_securevideo_user:
            if p.securevideo_user_id == guest.securevideo_user_id:
                return p
        elif p.external_id == guest.external_id and p.securevideo_user_id is None:
            return p
    return None


def changed_fields(guest: Guest, sent: AppliedGuest, fp: Fingerprints) -> tuple[str, ...]:
    """Names of the fields where the EHR differs from what syncd sent.  For a SecureVideo user,
    only the session-specific fields (PacketId, SvcId, deposit): the rest lives in the User API."""
    changed: list[str] = []
    if not guest.is_securevideo_user:
        if fp.name(guest.full_name) != sent.name:
            changed.append("name")
        if fp.contact(guest.email) != sent.email:
            changed.append("email")
        if fp.contact(guest.sms) != sent.sms:
            changed.append("sms")
        # No zone asked for means "the host's zone", which SecureVideo fills in: not a difference.
        if (
            guest.time_zone_windows_id is not None
            and guest.time_zone_windows_id != sent.time_zone_windows_id
        ):
            changed.append("time_zone")
        if guest.deliver != sent.deliver:
            changed.append("deliver")
    if guest.packet_id != sent.packet_id:
        changed.append("packet_id")
    if guest.svc_id != sent.svc_id or _money(guest.deposit) != _money(sent.deposit):
        changed.append("deposit")
    return tuple(changed)


def _money(value: object) -> object:
    # 20, 20.0 and 20.00 are the same deposit.
    return value.normalize() if isinstance(value, Decimal) else value
