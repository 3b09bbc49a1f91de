"""Drift: what differs between what syncd applied (the ledger) and what SecureVideo shows.

Clinic staff edit sessions in SecureVideo's own UI: they move a visit, cancel it, remove or edit
a guest, or book a second session under the appointment's ExternalSessionId.  Those differences
are found here, from the applied state and the account's session list, with no I/O and no clock.
Each kind says only what drifted, never a value: the kinds and ids are what is logged and kept.

What is done about drift is the policy's (``SYNCD_SYNC__DRIFT``): ``report`` keeps what staff did
and plans the EHR's later changes against it; ``restore`` brings SecureVideo back to what syncd
applied, with the planner's guards (never a past or connected visit, never the clinic's own
guests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from syncd.core.applied import AppliedGuest, AppliedState, is_schedule_drift, observed_as_applied
from syncd.core.domain import RemoteSession
from syncd.core.fingerprint import Fingerprints

__all__ = [
    "DRIFT_POLICIES",
    "LISTED_FOR",
    "Drift",
    "DriftKind",
    "DriftPolicy",
    "applied_restoring",
    "detect",
    "kinds_of",
]

#: ``GET /session`` lists a session for about a day after its time: one missing before then left
#: the list by someone's hand, not by SecureVideo's nightly deactivation.
LISTED_FOR = timedelta(hours=23)


class DriftKind(StrEnum):
    #: the managed session shows ``ScheduleType: "Cancelled"``
    CANCELLED = "cancelled"
    #: it shows a time that is neither the one sent nor SecureVideo's rounding of it
    TIME_MOVED = "time_moved"
    #: an owned participation is no longer in it
    GUEST_REMOVED = "guest_removed"
    #: an owned participation shows another name, e-mail, SMS number or delivery than was sent
    GUEST_CHANGED = "guest_changed"
    #: another live session carries the appointment's ExternalSessionId
    EXTRA_SESSION = "extra_session"
    #: the managed session left the list before its time
    SESSION_GONE = "session_gone"


class DriftPolicy(StrEnum):
    REPORT = "report"
    RESTORE = "restore"


DRIFT_POLICIES = tuple(p.value for p in DriftPolicy)

#: Drift that leaves the appointment with no live session of its own.
SESSION_LOST = frozenset({DriftKind.CANCELLED, DriftKind.SESSION_GONE})


@dataclass(frozen=True, slots=True)
class Drift:
    kind: DriftKind
    #: the session it was seen on (the extra one, for ``EXTRA_SESSION``)
    session_id: int | None


def detect(
    applied: AppliedState,
    sessions: Iterable[RemoteSession],
    *,
    now: datetime,
    fingerprints: Fingerprints,
) -> tuple[Drift, ...]:
    """The drift of one appointment.  ``sessions``: every session the account lists under the
    appointment's ExternalSessionId, and its managed session if listed (any host, any state)."""
    sid = applied.session_id
    if sid is None:
        return ()
    esid = applied.external_session_id
    listed = list(sessions)
    mine = next((s for s in listed if s.session_id == sid), None)
    found: list[Drift] = []
    if mine is None:
        # A time not on file (a ledger from before applied state) cannot say "before its time".
        if applied.schedule_ts is not None and applied.schedule_ts >= now - LISTED_FOR:
            found.append(Drift(DriftKind.SESSION_GONE, sid))
    elif mine.is_cancelled:
        found.append(Drift(DriftKind.CANCELLED, sid))
    else:
        if applied.schedule_ts is not None and is_schedule_drift(
            mine.schedule_ts, applied.schedule_ts
        ):
            found.append(Drift(DriftKind.TIME_MOVED, sid))
        found += _guest_drift(applied.guests.values(), mine, fingerprints)
    extra = sorted(
        s.session_id
        for s in listed
        if s.session_id != sid and not s.is_cancelled and s.external_session_id == esid
    )
    if extra and esid is not None:
        found.append(Drift(DriftKind.EXTRA_SESSION, extra[0]))
    return tuple(found)


def _guest_drift(
    guests: Iterable[AppliedGuest], session: RemoteSession, fp: Fingerprints
) -> list[Drift]:
    shown = {p.participation_id: p for p in session.guests}
    removed = changed = False
    for g in guests:
        if g.participation_id is None:
            continue  # claimed before a call whose answer never came: not known to be there
        p = shown.get(g.participation_id)
        if p is None:
            removed = True
        elif g.fields_known and g.securevideo_user_id is None:
            now_shows = observed_as_applied(g.key, p, g.packet_id, fp)
            sent = (g.name, g.email, g.sms, g.deliver)
            changed = changed or sent != (
                now_shows.name,
                now_shows.email,
                now_shows.sms,
                now_shows.deliver,
            )
    out: list[Drift] = []
    if removed:
        out.append(Drift(DriftKind.GUEST_REMOVED, session.session_id))
    if changed:
        out.append(Drift(DriftKind.GUEST_CHANGED, session.session_id))
    return out


def applied_restoring(
    applied: AppliedState, session: RemoteSession | None, fp: Fingerprints
) -> AppliedState:
    """The applied state as SecureVideo shows it, so that planning the EHR against it makes the
    calls that restore: the time shown (a reschedule back), owned guests as shown (an update or
    rename back) and owned guests removed as never added (an add back).  Guests syncd does not
    own are not in the applied state, so nothing here touches them."""
    if session is None or session.is_cancelled or session.session_id != applied.session_id:
        return applied
    shown = {p.participation_id: p for p in session.guests}
    guests: dict[str, AppliedGuest] = {}
    for key, g in applied.guests.items():
        p = shown.get(g.participation_id) if g.participation_id is not None else None
        if g.participation_id is not None and p is None:
            continue  # removed in SecureVideo: planned as an add
        if p is not None and g.fields_known and g.securevideo_user_id is None:
            # Only what the session shows of the guest; the rest stays as sent.
            shows = observed_as_applied(key, p, g.packet_id, fp)
            g = replace(g, name=shows.name, email=shows.email, sms=shows.sms, deliver=shows.deliver)
        guests[key] = g
    schedule_ts = applied.schedule_ts
    if schedule_ts is not None and is_schedule_drift(session.schedule_ts, schedule_ts):
        schedule_ts = session.schedule_ts
    return replace(applied, schedule_ts=schedule_ts, guests=guests)


def kinds_of(drift: Iterable[Drift]) -> Mapping[DriftKind, int | None]:
    """Kind → session id, as the planner takes drift."""
    return {d.kind: d.session_id for d in drift}
