"""The planner as data: each case is (desired, applied, observed) → the exact operations, in order.

desired is the EHR's appointment, applied what the ledger says syncd last sent, observed what
SecureVideo shows.  Staff changes in SecureVideo (observed differing from applied) are left alone.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from syncd.core.applied import AppliedState, sent_guest
from syncd.core.domain import (
    AddParticipant,
    Appointment,
    AppointmentStatus,
    CancelSession,
    CreateSession,
    Guest,
    Operation,
    RemoteParticipant,
    RemoteSession,
    RemoveParticipant,
    RescheduleSession,
    UpdateParticipant,
    describe,
)
from syncd.core.fingerprint import Fingerprints
from syncd.core.planner import changed_fields, plan, plan_in_full

NOW = datetime(2027, 1, 10, 12, 0)
PRINTS = Fingerprints(bytes(32))
T = datetime(2027, 1, 15, 15, 0)

ANNA = Guest(
    external_id="pat-1",
    full_name="Anna Canary",
    email="anna@example.test",
    time_zone_windows_id="Eastern Standard Time",
    deliver="E",
)
BEN = Guest(external_id="pat-2", full_name="Ben Canary", sms="15550001111", deliver="S")
SV_USER = Guest(external_id="nurse-7", securevideo_user_id="77")


def appt(
    status: AppointmentStatus = AppointmentStatus.BOOKED,
    *,
    host: str = "prov-001",
    at: datetime = T,
    guests: tuple[Guest, ...] = (ANNA,),
) -> Appointment:
    return Appointment(
        event_id=1,
        appointment_id="A1",
        external_session_id="A1",
        provider_external_id=host,
        status=status,
        starts_at=at,
        topic="Follow-up",
        guests=guests,
    )


HOST = RemoteParticipant(participation_id=1, external_id="prov-001", full_name="Dr Host")


def remote_of(g: Guest, pid: int, **changes: object) -> RemoteParticipant:
    p = RemoteParticipant(
        participation_id=pid,
        external_id=g.external_id,
        full_name=g.full_name,
        email=g.email,
        sms=g.sms,
        time_zone_windows_id=g.time_zone_windows_id,
        deliver=g.deliver,
        securevideo_user_id=g.securevideo_user_id,
    )
    return replace(p, **changes)  # type: ignore[arg-type]


def session(
    sid: int = 500,
    *,
    host: str = "prov-001",
    at: datetime = T,
    guests: tuple[RemoteParticipant, ...] = (),
    ext: str = "A1",
    schedule_type: str = "Scheduled",
) -> RemoteSession:
    return RemoteSession(
        session_id=sid,
        external_session_id=ext,
        user_id=1001,
        schedule_ts=at,
        schedule_type=schedule_type,
        host_external_id=host,
        participants=(HOST, *guests),
    )


FP = Fingerprints(bytes(range(32)))


def sent(*guests: tuple[Guest, int], at: datetime = T, sid: int = 500) -> AppliedState:
    """What syncd applied: the session, the time sent and the owned participations."""
    made = [sent_guest(g, pid, FP) for g, pid in guests]
    return AppliedState(
        session_id=sid,
        external_session_id="A1",
        host_external_id="prov-001",
        schedule_ts=at,
        guests={g.key: g for g in made},
    )


IN_SYNC = session(guests=(remote_of(ANNA, 11),))
SENT = sent((ANNA, 11))
LATER = T + timedelta(hours=2)
STAFF_GUEST = RemoteParticipant(participation_id=90, external_id=None, full_name="Interpreter")


def create(a: Appointment) -> CreateSession:
    return CreateSession("A1", "A1", a.provider_external_id, a.starts_at, a.topic, False, a.guests)


def at(minutes: int) -> datetime:
    return T + timedelta(minutes=minutes)


#: a SecureVideo user that staff added: its ParticipantExternalId is their own (per participation)
STAFF_USER = RemoteParticipant(
    participation_id=91,
    external_id="Provider_AMG",
    full_name="Dr Colleague",
    securevideo_user_id="12",
)
STAFF_WITH_ID = RemoteParticipant(participation_id=92, external_id="EMR444444", full_name="Guest X")
PAST = NOW - timedelta(hours=20)


Case = tuple[
    str, Appointment, AppliedState | None, tuple[RemoteSession, ...], tuple[Operation, ...]
]

CASES: list[Case] = [
    ("new booking creates", appt(), None, (), (create(appt()),)),
    ("equal makes no calls", appt(), SENT, (IN_SYNC,), ()),
    ("nothing on file, SecureVideo equal: adopted, no call", appt(), None, (IN_SYNC,), ()),
    (
        "arrived and checked-in are live too",
        appt(AppointmentStatus.CHECKED_IN),
        SENT,
        (IN_SYNC,),
        (),
    ),
    (
        "time change reschedules",
        appt(at=LATER),
        SENT,
        (IN_SYNC,),
        (RescheduleSession("A1", 500, LATER),),
    ),
    # defect 1: a change is desired versus the time sent, not versus a 15-minute tolerance
    *[
        (
            f"a move by {m:+d} minutes is a reschedule",
            appt(at=at(m)),
            SENT,
            (IN_SYNC,),
            (RescheduleSession("A1", 500, at(m)),),
        )
        for m in (1, 10, -10, 14)
    ],
    (
        "SecureVideo's quarter-hour rounding of the time sent is not drift",
        appt(at=at(10)),
        sent((ANNA, 11), at=at(10)),
        (session(at=at(15), guests=(remote_of(ANNA, 11),)),),
        (),
    ),
    (
        "a move from a rounded time is still sent",
        appt(at=at(20)),
        sent((ANNA, 11), at=at(10)),
        (session(at=at(15), guests=(remote_of(ANNA, 11),)),),
        (RescheduleSession("A1", 500, at(20)),),
    ),
    (
        "staff moved the session: left alone while the EHR keeps its time",
        appt(),
        SENT,
        (session(at=LATER, guests=(remote_of(ANNA, 11),)),),
        (),
    ),
    (
        "staff moved the session, then the EHR moves it: the EHR's time is sent",
        appt(at=at(30)),
        SENT,
        (session(at=LATER, guests=(remote_of(ANNA, 11),)),),
        (RescheduleSession("A1", 500, at(30)),),
    ),
    (
        "cancel cancels",
        appt(AppointmentStatus.CANCELLED),
        SENT,
        (IN_SYNC,),
        (CancelSession("A1", 500, "cancelled"),),
    ),
    (
        "entered-in-error cancels",
        appt(AppointmentStatus.ENTERED_IN_ERROR),
        SENT,
        (IN_SYNC,),
        (CancelSession("A1", 500, "cancelled"),),
    ),
    ("proposed with no session: nothing", appt(AppointmentStatus.PROPOSED), None, (), ()),
    ("fulfilled leaves SecureVideo alone", appt(AppointmentStatus.FULFILLED), SENT, (IN_SYNC,), ()),
    ("noshow leaves a missing session missing", appt(AppointmentStatus.NOSHOW), None, (), ()),
    (
        "cancelled tombstone is not ours: re-book creates again",
        appt(),
        SENT,
        (session(guests=(remote_of(ANNA, 11),), schedule_type="Cancelled"),),
        (create(appt()),),
    ),
    (
        "sessions of other appointments are never touched",
        appt(AppointmentStatus.CANCELLED),
        None,
        (session(ext="OTHER"),),
        (),
    ),
    (
        "guest added",
        appt(guests=(ANNA, BEN)),
        SENT,
        (IN_SYNC,),
        (AddParticipant("A1", 500, BEN),),
    ),
    (
        "owned guest removed",
        appt(guests=(ANNA,)),
        sent((ANNA, 11), (BEN, 12)),
        (session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12))),),
        (RemoveParticipant("A1", 500, 12, "pat-2", "removed"),),
    ),
    # defect 3: a participant with a ParticipantExternalId is not therefore syncd's
    (
        "a guest syncd does not own is left alone, external id or not",
        appt(guests=(ANNA,)),
        SENT,
        (session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12), STAFF_WITH_ID)),),
        (),
    ),
    (
        "staff's SecureVideo user (their own ParticipantExternalId) survives an EHR edit",
        appt(at=LATER),
        SENT,
        (session(guests=(remote_of(ANNA, 11), STAFF_USER)),),
        (RescheduleSession("A1", 500, LATER),),
    ),
    (
        "an EHR SecureVideo user with no ParticipantExternalId is owned by participation id",
        appt(guests=(ANNA,)),
        sent((ANNA, 11), (SV_USER, 31)),
        (session(guests=(remote_of(ANNA, 11), remote_of(SV_USER, 31, external_id=None))),),
        (RemoveParticipant("A1", 500, 31, "", "removed"),),
    ),
    (
        "an owned guest already gone is not removed again",
        appt(guests=(ANNA,)),
        sent((ANNA, 11), (BEN, 12)),
        (IN_SYNC,),
        (),
    ),
    (
        "e-mail and delivery change is one update naming both fields",
        appt(guests=(replace(ANNA, email="new@example.test", deliver="S", sms="15550002222"),)),
        SENT,
        (IN_SYNC,),
        (
            UpdateParticipant(
                "A1",
                500,
                11,
                replace(ANNA, email="new@example.test", deliver="S", sms="15550002222"),
                ("email", "sms", "deliver"),
            ),
        ),
    ),
    (
        "staff changed an owned guest's e-mail: left alone while the EHR keeps its own",
        appt(),
        SENT,
        (session(guests=(remote_of(ANNA, 11, email="desk@example.test"),)),),
        (),
    ),
    (
        "staff removed an owned guest: not added back while the EHR keeps it as it was",
        appt(),
        SENT,
        (session(),),
        (),
    ),
    (
        "staff removed an owned guest, then the EHR changes it: added again",
        appt(guests=(replace(ANNA, deliver="N"),)),
        SENT,
        (session(),),
        (AddParticipant("A1", 500, replace(ANNA, deliver="N")),),
    ),
    (
        "an owned participation made anew by a call whose answer was lost is adopted again",
        appt(guests=(replace(ANNA, full_name="Anna Renamed"),)),
        SENT,
        (session(guests=(remote_of(ANNA, 19, full_name="Anna Renamed"),)),),
        (),
    ),
    (
        "a guest claimed before an add whose answer was lost, then dropped by the EHR, is removed",
        appt(guests=(ANNA,)),
        replace(
            SENT,
            guests={
                **SENT.guests,
                FP.participant("pat-2"): replace(sent_guest(BEN, None, FP), fields_known=False),
            },
        ),
        (session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12))),),
        (RemoveParticipant("A1", 500, 12, "pat-2", "removed"),),
    ),
    (
        "a guest claimed before a create whose answer was lost, dropped by the EHR before the "
        "session was adopted, is removed",
        appt(guests=(ANNA,)),
        AppliedState(
            external_session_id="A1",
            host_external_id="prov-001",
            guests={
                g.key: replace(g, fields_known=False)
                for g in (sent_guest(ANNA, None, FP), sent_guest(BEN, None, FP))
            },
        ),
        (session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12))),),
        (RemoveParticipant("A1", 500, 12, "pat-2", "removed"),),
    ),
    (
        "rename is remove then add",
        appt(guests=(replace(ANNA, full_name="Anna Renamed"),)),
        SENT,
        (IN_SYNC,),
        (
            RemoveParticipant("A1", 500, 11, "pat-1", "rename"),
            AddParticipant("A1", 500, replace(ANNA, full_name="Anna Renamed")),
        ),
    ),
    # defect 7
    (
        "a case- or spacing-only name fix is the same name: no call",
        appt(guests=(replace(ANNA, full_name="Zelda  Canary"),)),
        sent((replace(ANNA, full_name="zelda canary"), 11)),
        (session(guests=(remote_of(ANNA, 11, full_name="zelda canary"),)),),
        (),
    ),
    (
        "name swap between two guests: both removes before both adds",
        appt(
            guests=(
                replace(ANNA, full_name="Ben Canary"),
                replace(BEN, full_name="Anna Canary"),
            )
        ),
        sent((ANNA, 11), (BEN, 12)),
        (session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12))),),
        (
            RemoveParticipant("A1", 500, 11, "pat-1", "rename"),
            RemoveParticipant("A1", 500, 12, "pat-2", "rename"),
            AddParticipant("A1", 500, replace(ANNA, full_name="Ben Canary")),
            AddParticipant("A1", 500, replace(BEN, full_name="Anna Canary")),
        ),
    ),
    (
        "staff-added guest without external id is left alone",
        appt(),
        SENT,
        (session(guests=(remote_of(ANNA, 11), STAFF_GUEST)),),
        (),
    ),
    (
        "provider change: cancel under the old host, then create under the new",
        appt(host="prov-002"),
        SENT,
        (IN_SYNC,),
        (CancelSession("A1", 500, "provider-change"), create(appt(host="prov-002"))),
    ),
    (
        "duplicate live sessions: keep the oldest, cancel the rest",
        appt(),
        None,
        (session(501, guests=(remote_of(ANNA, 21),)), IN_SYNC),
        (CancelSession("A1", 501, "duplicate"),),
    ),
    (
        "all together: remove, update, reschedule, add",
        appt(at=LATER, guests=(replace(ANNA, deliver="N"), SV_USER)),
        sent((ANNA, 11), (BEN, 12)),
        (session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12))),),
        (
            RemoveParticipant("A1", 500, 12, "pat-2", "removed"),
            UpdateParticipant("A1", 500, 11, replace(ANNA, deliver="N"), ("deliver",)),
            RescheduleSession("A1", 500, LATER),
            AddParticipant("A1", 500, SV_USER),
        ),
    ),
    (
        "SecureVideo user adopted by user id and ParticipantExternalId: no update",
        appt(guests=(SV_USER,)),
        None,
        (session(guests=(remote_of(SV_USER, 31),)),),
        (),
    ),
    # defect 4: the session-specific fields of a SecureVideo user are sent
    (
        "a SecureVideo user's PacketId, SvcId and deposit changes are an update",
        appt(guests=(replace(SV_USER, packet_id=1215, svc_id=1037, deposit=Decimal("20")),)),
        sent((SV_USER, 31)),
        (session(guests=(remote_of(SV_USER, 31),)),),
        (
            UpdateParticipant(
                "A1",
                500,
                31,
                replace(SV_USER, packet_id=1215, svc_id=1037, deposit=Decimal("20")),
                ("packet_id", "deposit"),
            ),
        ),
    ),
    (
        "a live appointment older than the active window is not created",
        appt(at=NOW - timedelta(days=2)),
        None,
        (),
        (),
    ),
    (
        "cancel after the active window: nothing visible, nothing to do",
        appt(AppointmentStatus.CANCELLED, at=NOW - timedelta(days=2)),
        None,
        (),
        (),
    ),
    # defect 5: past visits
    ("a booking 20 h in the past is not created", appt(at=PAST), None, (), ()),
    (
        "a booking that started within the grace is created",
        appt(at=NOW - timedelta(minutes=30)),
        None,
        (),
        (create(appt(at=NOW - timedelta(minutes=30))),),
    ),
    (
        "a connected visit marked entered-in-error is not cancelled",
        appt(AppointmentStatus.ENTERED_IN_ERROR, at=PAST),
        sent((ANNA, 11), at=PAST),
        (replace(session(at=PAST, guests=(remote_of(ANNA, 11),)), billable_ts=PAST),),
        (),
    ),
    (
        "a connected future-dated session is not cancelled either",
        appt(AppointmentStatus.CANCELLED),
        SENT,
        (replace(IN_SYNC, billable_ts=NOW),),
        (),
    ),
    (
        "a past visit's time correction is not a reschedule",
        appt(at=PAST + timedelta(minutes=5)),
        sent((ANNA, 11), at=PAST),
        (session(at=PAST, guests=(remote_of(ANNA, 11),)),),
        (),
    ),
    # defect 8
    (
        "the ExternalSessionId on file is kept when the prefix changes",
        replace(appt(), external_session_id="new-A1"),
        replace(SENT, external_session_id="A1"),
        (IN_SYNC,),
        (),
    ),
    (
        "a PacketId change for a known participation is an update",
        appt(guests=(replace(ANNA, packet_id=0),)),
        SENT,
        (IN_SYNC,),
        (UpdateParticipant("A1", 500, 11, replace(ANNA, packet_id=0), ("packet_id",)),),
    ),
]


@pytest.mark.parametrize(
    ("desired", "applied", "observed", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan(
    desired: Appointment,
    applied: AppliedState | None,
    observed: tuple[RemoteSession, ...],
    expected: tuple[Operation, ...],
) -> None:
    assert plan(desired, applied, observed, now=NOW, fingerprints=FP) == expected


def test_managed_session_is_preferred_over_the_oldest() -> None:
    observed = (IN_SYNC, session(501, guests=(remote_of(ANNA, 21),)))
    assert plan(appt(), None, observed, now=NOW, fingerprints=FP, managed_session_id=501) == (
        CancelSession("A1", 500, "duplicate"),
    )


def test_plan_is_deterministic_whatever_the_observed_order() -> None:
    a = appt(at=LATER, guests=(ANNA,))
    observed = [
        session(502, guests=(remote_of(ANNA, 41), remote_of(BEN, 42))),
        session(501, host="prov-009"),
        session(500, guests=(remote_of(BEN, 12), remote_of(ANNA, 11))),
    ]
    first = plan(a, SENT, observed, now=NOW, fingerprints=FP)
    assert plan(a, SENT, list(reversed(observed)), now=NOW, fingerprints=FP) == first
    assert first[0] == CancelSession("A1", 501, "provider-change")


def test_what_is_adopted_becomes_applied() -> None:
    """Nothing on file (an upgraded ledger, a lost answer): what SecureVideo shows is applied,
    the EHR's time when SecureVideo shows a rounding of it."""
    shown = session(at=at(15), guests=(remote_of(ANNA, 11), STAFF_WITH_ID))
    done = plan_in_full(appt(at=at(10)), None, (shown,), now=NOW, fingerprints=FP)
    assert done.ops == ()
    assert (done.applied.session_id, done.applied.schedule_ts) == (500, at(10))
    assert done.applied.external_session_id == "A1"
    # ANNA is adopted by her ParticipantExternalId; the staff guest is not syncd's
    assert list(done.applied.guests) == [FP.participant("pat-1")]
    assert done.applied.guests[FP.participant("pat-1")] == sent_guest(ANNA, 11, FP)


def test_a_dropped_guest_stays_applied_until_its_removal_succeeds() -> None:
    """The plan's applied state is what a turn plans from again after a failed call: a guest it
    forgot there would be left in the session, and off file, once its removal failed."""
    on_file = sent((ANNA, 11), (BEN, 12))
    shown = session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12)))
    done = plan_in_full(appt(), on_file, (shown,), now=NOW, fingerprints=FP)
    assert done.ops == (RemoveParticipant("A1", 500, 12, "pat-2", "removed"),)
    assert done.applied.guests == on_file.guests
    again = plan_in_full(appt(), done.applied, (shown,), now=NOW, fingerprints=FP)
    assert again.ops == done.ops


def test_a_row_from_before_applied_state_compares_with_what_secure_video_shows() -> None:
    old_row = replace(sent_guest(ANNA, 11, FP), fields_known=False, name=None, deliver=None)
    applied = replace(SENT, schedule_ts=None, guests={old_row.key: old_row})
    assert plan(appt(), applied, (IN_SYNC,), now=NOW, fingerprints=FP) == ()
    moved = plan(appt(at=LATER), applied, (IN_SYNC,), now=NOW, fingerprints=FP)
    assert moved == (RescheduleSession("A1", 500, LATER),)


def test_held_changes_are_reported() -> None:
    done = plan_in_full(appt(at=PAST), None, (), now=NOW, fingerprints=FP)
    assert done.ops == ()
    assert done.held == ("held: the visit started over 60 minutes ago: not created",)
    connected = replace(IN_SYNC, billable_ts=NOW)
    done = plan_in_full(
        appt(AppointmentStatus.CANCELLED), SENT, (connected,), now=NOW, fingerprints=FP
    )
    assert done.held == ("held: session 500 has connected: no cancel",)
    late = plan_in_full(
        appt(at=PAST),
        None,
        (),
        now=NOW,
        fingerprints=FP,
        past_grace=timedelta(hours=21),
    )
    assert late.ops == (create(appt(at=PAST)),)


def test_unknown_packet_is_never_a_change_known_packet_is() -> None:
    wanted = replace(ANNA, packet_id=1215)
    # adopted on first sight: SecureVideo does not report a PacketId, so the EHR's is taken
    assert plan(appt(guests=(wanted,)), None, (IN_SYNC,), now=NOW, fingerprints=FP) == ()
    assert changed_fields(wanted, sent_guest(ANNA, 11, FP), FP) == ("packet_id",)


def test_deposit_compares_as_money() -> None:
    wanted = replace(ANNA, svc_id=1037, deposit=Decimal("20"))
    on_file = sent_guest(replace(ANNA, svc_id=1037, deposit=Decimal("20.00")), 11, FP)
    assert changed_fields(wanted, on_file, FP) == ()
    assert changed_fields(wanted, sent_guest(ANNA, 11, FP), FP) == ("deposit",)


def test_no_zone_wanted_means_the_hosts_zone_is_fine() -> None:
    wanted = replace(ANNA, time_zone_windows_id=None)
    shown = sent_guest(ANNA, 11, FP)
    assert changed_fields(wanted, shown, FP) == ()


def test_a_remembered_packet_is_known_and_a_remembered_null_is_not() -> None:
    """A null PacketId on file was sent by a syncd that left it out: whether that showed no
    documents or all of them depends on the endpoint, so it is not taken as known."""
    legacy = replace(sent_guest(ANNA, 11, FP), fields_known=False, packet_id=None, deliver=None)
    on_file = replace(SENT, guests={legacy.key: legacy})
    assert plan(appt(), on_file, (IN_SYNC,), now=NOW, fingerprints=FP) == ()
    known = replace(legacy, packet_id=0)
    on_file = replace(SENT, guests={known.key: known})
    assert plan(appt(), on_file, (IN_SYNC,), now=NOW, fingerprints=FP) == (
        UpdateParticipant("A1", 500, 11, ANNA, ("packet_id",)),
    )


def test_describe_has_no_patient_data() -> None:
    ops = plan(
        appt(at=LATER, guests=(replace(ANNA, email="x@example.test"), BEN)),
        SENT,
        (IN_SYNC,),
        now=NOW,
        fingerprints=FP,
    )
    text = repr([describe(op, PRINTS) for op in ops]) + repr(ops)
    for secret in ("Anna", "Ben", "example.test", "1555", "Follow-up", "pat-1", "pat-2"):
        assert secret not in text


def test_describe_shows_participant_external_ids_as_fingerprints() -> None:
    """Defect 9: participant external ids are often MRNs; plan, logs and the journal show
    their keyed fingerprints."""
    mrn = replace(ANNA, external_id="MRN-00424242")
    ops = (
        create(appt(guests=(mrn, BEN))),
        AddParticipant("A1", 500, mrn),
        UpdateParticipant("A1", 500, 11, mrn, ("email",)),
        RemoveParticipant("A1", 500, 11, "MRN-00424242", "removed"),
    )
    described = [describe(op, PRINTS) for op in ops]
    assert "MRN-00424242" not in repr(described) and "00424242" not in repr(described)
    shown = PRINTS.participant("MRN-00424242")
    assert described[0]["participants"] == [shown, PRINTS.participant("pat-2")]
    assert [d["participant_external_id"] for d in described[1:]] == [shown] * 3
    assert shown.startswith("g-") and shown != Fingerprints(b"\x01" * 32).participant(
        mrn.external_id
    )
