"""The planner as data: each case is (desired, observed) → the exact operations, in order."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

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
from syncd.core.planner import changed_fields, plan, same_schedule
from syncd.core.view import with_known_packets

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


IN_SYNC = session(guests=(remote_of(ANNA, 11),))
LATER = T + timedelta(hours=2)
STAFF_GUEST = RemoteParticipant(participation_id=90, external_id=None, full_name="Interpreter")


def create(a: Appointment) -> CreateSession:
    return CreateSession("A1", "A1", a.provider_external_id, a.starts_at, a.topic, False, a.guests)


CASES: list[tuple[str, Appointment, tuple[RemoteSession, ...], tuple[Operation, ...]]] = [
    ("new booking creates", appt(), (), (create(appt()),)),
    ("equal makes no calls", appt(), (IN_SYNC,), ()),
    (
        "arrived and checked-in are live too",
        appt(AppointmentStatus.CHECKED_IN),
        (IN_SYNC,),
        (),
    ),
    (
        "time change reschedules",
        appt(at=LATER),
        (IN_SYNC,),
        (RescheduleSession("A1", 500, LATER),),
    ),
    (
        "cancel cancels",
        appt(AppointmentStatus.CANCELLED),
        (IN_SYNC,),
        (CancelSession("A1", 500, "cancelled"),),
    ),
    (
        "entered-in-error cancels",
        appt(AppointmentStatus.ENTERED_IN_ERROR),
        (IN_SYNC,),
        (CancelSession("A1", 500, "cancelled"),),
    ),
    ("proposed with no session: nothing", appt(AppointmentStatus.PROPOSED), (), ()),
    ("fulfilled leaves SecureVideo alone", appt(AppointmentStatus.FULFILLED), (IN_SYNC,), ()),
    ("noshow leaves a missing session missing", appt(AppointmentStatus.NOSHOW), (), ()),
    (
        "cancelled tombstone is not ours: re-book creates again",
        appt(),
        (session(guests=(remote_of(ANNA, 11),), schedule_type="Cancelled"),),
        (create(appt()),),
    ),
    (
        "sessions of other appointments are never touched",
        appt(AppointmentStatus.CANCELLED),
        (session(ext="OTHER"),),
        (),
    ),
    (
        "guest added",
        appt(guests=(ANNA, BEN)),
        (IN_SYNC,),
        (AddParticipant("A1", 500, BEN),),
    ),
    (
        "guest removed",
        appt(guests=(ANNA,)),
        (session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12))),),
        (RemoveParticipant("A1", 500, 12, "pat-2", "removed"),),
    ),
    (
        "e-mail and delivery change is one update naming both fields",
        appt(guests=(replace(ANNA, email="new@example.test", deliver="S", sms="15550002222"),)),
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
        "rename is remove then add",
        appt(guests=(replace(ANNA, full_name="Anna Renamed"),)),
        (IN_SYNC,),
        (
            RemoveParticipant("A1", 500, 11, "pat-1", "rename"),
            AddParticipant("A1", 500, replace(ANNA, full_name="Anna Renamed")),
        ),
    ),
    (
        "name swap between two guests: both removes before both adds",
        appt(
            guests=(
                replace(ANNA, full_name="Ben Canary"),
                replace(BEN, full_name="Anna Canary"),
            )
        ),
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
        (session(guests=(remote_of(ANNA, 11), STAFF_GUEST)),),
        (),
    ),
    (
        "host is never touched even when it carries an external id",
        appt(guests=(ANNA,)),
        (IN_SYNC,),
        (),
    ),
    (
        "provider change: cancel under the old host, then create under the new",
        appt(host="prov-002"),
        (IN_SYNC,),
        (CancelSession("A1", 500, "provider-change"), create(appt(host="prov-002"))),
    ),
    (
        "duplicate live sessions: keep the oldest, cancel the rest",
        appt(),
        (session(501, guests=(remote_of(ANNA, 21),)), IN_SYNC),
        (CancelSession("A1", 501, "duplicate"),),
    ),
    (
        "all together: remove, update, reschedule, add",
        appt(at=LATER, guests=(replace(ANNA, deliver="N"), SV_USER)),
        (session(guests=(remote_of(ANNA, 11), remote_of(BEN, 12))),),
        (
            RemoveParticipant("A1", 500, 12, "pat-2", "removed"),
            UpdateParticipant("A1", 500, 11, replace(ANNA, deliver="N"), ("deliver",)),
            RescheduleSession("A1", 500, LATER),
            AddParticipant("A1", 500, SV_USER),
        ),
    ),
    (
        "SecureVideo user matched by user id: no update",
        appt(guests=(SV_USER,)),
        (session(guests=(remote_of(SV_USER, 31, external_id="whatever"),)),),
        (),
    ),
    (
        "quarter-hour rounding by SecureVideo is not a change",
        appt(at=T + timedelta(minutes=10)),
        (session(at=T + timedelta(minutes=15), guests=(remote_of(ANNA, 11),)),),
        (),
    ),
    (
        "a live appointment older than the active window is not created",
        appt(at=NOW - timedelta(days=2)),
        (),
        (),
    ),
    (
        "cancel after the active window: nothing visible, nothing to do",
        appt(AppointmentStatus.CANCELLED, at=NOW - timedelta(days=2)),
        (),
        (),
    ),
]


@pytest.mark.parametrize(
    ("desired", "observed", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan(
    desired: Appointment, observed: tuple[RemoteSession, ...], expected: tuple[Operation, ...]
) -> None:
    assert plan(desired, observed, now=NOW) == expected


def test_managed_session_is_preferred_over_the_oldest() -> None:
    observed = (IN_SYNC, session(501, guests=(remote_of(ANNA, 21),)))
    assert plan(appt(), observed, now=NOW, managed_session_id=501) == (
        CancelSession("A1", 500, "duplicate"),
    )


def test_plan_is_deterministic_whatever_the_observed_order() -> None:
    a = appt(at=LATER, guests=(ANNA,))
    observed = [
        session(502, guests=(remote_of(ANNA, 41), remote_of(BEN, 42))),
        session(501, host="prov-009"),
        session(500, guests=(remote_of(BEN, 12), remote_of(ANNA, 11))),
    ]
    first = plan(a, observed, now=NOW)
    assert plan(a, list(reversed(observed)), now=NOW) == first
    assert first[0] == CancelSession("A1", 501, "provider-change")


def test_unknown_packet_is_never_a_change_known_packet_is() -> None:
    wanted = replace(ANNA, packet_id=1215)
    assert changed_fields(wanted, remote_of(ANNA, 11)) == ()
    known = remote_of(ANNA, 11, packet_known=True, packet_id=None)
    assert changed_fields(wanted, known) == ("packet_id",)


def test_deposit_compares_as_money() -> None:
    wanted = replace(ANNA, svc_id=1037, deposit=Decimal("20"))
    assert changed_fields(wanted, remote_of(ANNA, 11, svc_id=1037, deposit=Decimal("20.00"))) == ()
    assert changed_fields(wanted, remote_of(ANNA, 11)) == ("deposit",)


def test_no_zone_wanted_means_the_hosts_zone_is_fine() -> None:
    wanted = replace(ANNA, time_zone_windows_id=None)
    assert changed_fields(wanted, remote_of(ANNA, 11)) == ()


@pytest.mark.parametrize(
    ("remote", "desired", "same"),
    [
        (T, T, True),
        (None, T, False),
        (T + timedelta(minutes=15), T + timedelta(minutes=10), True),
        (T + timedelta(minutes=30), T + timedelta(minutes=10), False),
        (T + timedelta(minutes=5), T, False),
    ],
)
def test_same_schedule(remote: datetime | None, desired: datetime, same: bool) -> None:
    assert same_schedule(remote, desired) is same


def test_a_remembered_packet_is_known_and_a_remembered_null_is_not() -> None:
    """A null PacketId on file was sent by a syncd that left it out: whether that showed no
    documents or all of them depends on the endpoint, so it is not taken as known."""
    observed = [session(guests=(remote_of(ANNA, 11),))]
    sent = with_known_packets(observed, {"pat-1": (11, -1)})[0].guests[0]
    assert (sent.packet_id, sent.packet_known) == (-1, True)
    legacy = with_known_packets(observed, {"pat-1": (11, None)})[0].guests[0]
    assert legacy.packet_known is False
    assert plan(appt(), with_known_packets(observed, {"pat-1": (11, None)}), now=NOW) == ()


def test_describe_has_no_patient_data() -> None:
    ops = plan(
        appt(at=LATER, guests=(replace(ANNA, email="x@example.test"), BEN)),
        (IN_SYNC,),
        now=NOW,
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
