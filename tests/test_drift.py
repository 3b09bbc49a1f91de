"""Issue 15, drift, on the fakes: what the account read costs, and the pure rules.

The end-to-end suite (``test_drift_e2e``) makes staff's changes through the emulator's HTTP API;
here the in-memory SecureVideo and ledger count reads exactly, on a hand-moved clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from syncd.core.applied import AppliedGuest, AppliedState
from syncd.core.domain import (
    Appointment,
    AppointmentStatus,
    CreateSession,
    Guest,
    RemoteParticipant,
    RemoteSession,
    RescheduleSession,
)
from syncd.core.drift import DriftKind, DriftPolicy, applied_restoring, detect
from syncd.core.fingerprint import Fingerprints
from syncd.core.planner import HELD, plan_in_full
from syncd.ports.securevideo import HistoryPage
from syncd.sync.account import AccountSessions
from syncd.sync.passes import Synchronizer, SyncOptions
from syncd.sync.visits import OutcomeCollector
from syncd.testing.clock import ManualClock
from syncd.testing.gateway import FakeSecureVideo
from syncd.testing.ledger import InMemoryLedger
from syncd.testing.outbox import InMemoryOutbox

NOW = datetime(2030, 1, 7, 9, 0)
STARTS = NOW + timedelta(days=2)
INTERVAL = 300
FP = Fingerprints(b"k" * 32)


class FakeAccount(FakeSecureVideo):
    """The fake with an empty history: the outcome collector's other read."""

    def history_page(self, **_: object) -> HistoryPage:
        return HistoryPage((), ())


class Rig:
    def __init__(self, providers: int, policy: DriftPolicy = DriftPolicy.REPORT) -> None:
        self.clock = ManualClock(NOW)
        self.outbox = InMemoryOutbox()
        self.hosts = [f"prov-{n:03d}" for n in range(1, providers + 1)]
        self.fake = FakeAccount(self.hosts)
        self.ledger = InMemoryLedger()
        self.account = AccountSessions(self.fake, self.clock, INTERVAL)
        self.engine = Synchronizer(
            outbox=self.outbox,
            ledger=self.ledger,
            gateway=self.fake,
            clock=self.clock,
            options=SyncOptions(concurrency=2, windows_zone=lambda _zone: "UTC", drift=policy),
            account=self.account,
        )
        self.outcomes = OutcomeCollector(
            ledger=self.ledger, gateway=self.fake, clock=self.clock, account=self.account
        )

    def book(self, appointment_id: str, provider: str, starts: datetime = STARTS) -> None:
        guests = [{"external_id": "pat-1", "full_name": "Test Patient", "deliver": "N"}]
        self.outbox.append(
            {
                "appointment_id": appointment_id,
                "provider_external_id": provider,
                "status": "booked",
                "starts_at": starts,
                "topic": None,
                "is_recorded": False,
                "participants": json.dumps(guests),
                "created_at": NOW,
            }
        )

    def host_reads(self) -> int:
        return sum(self.fake.reads.values())


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(providers=1)
    yield r
    r.engine.close()


@pytest.mark.parametrize("providers", [1, 20, 200])
def test_one_account_read_per_interval_whatever_the_number_of_providers(providers: int) -> None:
    rig = Rig(providers)
    try:
        for n, host in enumerate(rig.hosts):
            rig.book(f"A{n:03d}", host)
        rig.engine.run_pass()
        assert rig.host_reads() == providers  # the pass's own work reads its hosts
        assert rig.fake.account_reads == 1
        mutations = len(rig.fake.mutations())
        assert mutations == providers  # one create each
        passes = 0
        for interval in range(1, 4):
            # idle passes every 60 s through the interval, and an outcome collection
            for _ in range(INTERVAL // 60):
                rig.clock.advance(60)
                report = rig.engine.run_pass()
                passes += 1
                assert report.reads == 0
            rig.outcomes.collect()
            assert rig.fake.account_reads == 1 + interval
        assert passes == 15
        # drift and outcomes together: one read per interval; no host read, no mutating call
        assert rig.host_reads() == providers
        assert len(rig.fake.mutations()) == mutations
    finally:
        rig.engine.close()


def test_outcomes_use_the_drift_read_and_make_none_of_their_own(rig: Rig) -> None:
    rig.book("A1", "prov-001")
    rig.engine.run_pass()
    rig.clock.advance(INTERVAL)
    report = rig.outcomes.collect()
    assert (report.account_reads, report.hosts_read, report.sessions_changed) == (1, 0, 1)
    rig.engine.run_pass()  # within the interval: the pass's drift look reuses it
    assert rig.fake.account_reads == 2
    assert rig.outcomes.collect().account_reads == 0


def test_a_failed_account_read_is_the_intervals_read(rig: Rig) -> None:
    from syncd.core.errors import TemporaryError

    rig.book("A1", "prov-001")
    rig.engine.run_pass()
    rig.clock.advance(INTERVAL)
    rig.fake.fail_next("list_account", TemporaryError("503 (scripted)"))
    assert rig.engine.run_pass().drift is None
    rig.clock.advance(60)
    assert rig.engine.run_pass().drift is None
    assert not rig.outcomes.collect().clean
    assert rig.fake.account_reads == 2  # no read per pass through an outage
    rig.clock.advance(INTERVAL)
    assert rig.engine.run_pass().drift is not None


def test_staff_cancel_then_an_ehr_edit_within_the_interval_recreates_nothing(rig: Rig) -> None:
    """The defect of the issue: the pass's own read shows the cancel before the next account
    read does; the unrelated edit must not send the patient a new invitation."""
    rig.book("A1", "prov-001")
    rig.engine.run_pass()
    (session,) = rig.fake.sessions("prov-001")
    rig.fake.cancel_session(session.session_id)
    mutations = len(rig.fake.mutations())
    rig.clock.advance(60)
    rig.book("A1", "prov-001")  # re-sent unchanged by the EHR
    rig.engine.run_pass()
    assert len(rig.fake.mutations()) == mutations
    with rig.ledger.begin() as tx:
        record = tx.appointments.get("A1")
    assert record is not None and record.reason is not None
    assert record.reason.startswith(f"{HELD}: drift: session {session.session_id} cancelled")
    # the account read then records it, once
    rig.clock.advance(INTERVAL)
    rig.engine.run_pass()
    with rig.ledger.begin() as tx:
        assert [d.kind for d in tx.drift.current()] == ["cancelled"]


def test_restore_never_touches_a_visit_whose_time_has_passed() -> None:
    rig = Rig(1, DriftPolicy.RESTORE)
    try:
        rig.book("A1", "prov-001", starts=NOW + timedelta(minutes=30))
        rig.engine.run_pass()
        (session,) = rig.fake.sessions("prov-001")
        rig.fake.reschedule_session(session.session_id, NOW + timedelta(hours=3))
        mutations = len(rig.fake.mutations())
        rig.clock.advance(timedelta(minutes=31))  # the EHR's time has passed
        report = rig.engine.run_pass()
        assert report.drift is not None and report.drift.restoring == ["A1"]
        rig.engine.run_pass()
        assert len(rig.fake.mutations()) == mutations
    finally:
        rig.engine.close()


# --- the pure rules -----------------------------------------------------------------------------


def guest_sent(pid: int, name: str = "Test Patient") -> AppliedGuest:
    return AppliedGuest(
        key=FP.participant("pat-1"),
        participation_id=pid,
        fields_known=True,
        name=FP.name(name),
        email=FP.contact(""),
        sms=FP.contact(""),
        deliver="N",
        packet_id=-1,
    )


def session(sid: int = 9, **overrides: object) -> RemoteSession:
    base = RemoteSession(
        session_id=sid,
        external_session_id="A1",
        user_id=1001,
        schedule_ts=STARTS,
        schedule_type="Scheduled",
        host_external_id="prov-001",
        participants=(
            RemoteParticipant(1, "prov-001", full_name="Dr Host"),
            RemoteParticipant(70, "pat-1", full_name="Test Patient"),
        ),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


APPLIED = AppliedState(
    session_id=9,
    external_session_id="A1",
    host_external_id="prov-001",
    schedule_ts=STARTS,
    guests={FP.participant("pat-1"): guest_sent(70)},
)
HOST = RemoteParticipant(1, "prov-001", full_name="Dr Host")


@pytest.mark.parametrize(
    ("shown", "kinds"),
    [
        ([session()], []),
        ([session(schedule_type="Cancelled")], [DriftKind.CANCELLED]),
        ([session(schedule_ts=STARTS + timedelta(hours=2))], [DriftKind.TIME_MOVED]),
        # SecureVideo's rounding to the quarter hour is not drift
        ([session(schedule_ts=STARTS + timedelta(minutes=15))], []),
        ([session(participants=(HOST,))], [DriftKind.GUEST_REMOVED]),
        (
            [
                session(
                    participants=(
                        HOST,
                        RemoteParticipant(
                            70, "pat-1", full_name="Test Patient", email="x@y.example"
                        ),
                    )
                )
            ],
            [DriftKind.GUEST_CHANGED],
        ),
        # the clinic's own guest added beside is not drift
        (
            [
                session(
                    participants=(
                        *session().participants,
                        RemoteParticipant(71, None, full_name="Interpreter"),
                    )
                )
            ],
            [],
        ),
        ([session(), session(10)], [DriftKind.EXTRA_SESSION]),
        ([session(), session(10, schedule_type="Cancelled")], []),
        ([], [DriftKind.SESSION_GONE]),
    ],
)
def test_each_kind_of_drift(shown: list[RemoteSession], kinds: list[DriftKind]) -> None:
    found = detect(APPLIED, shown, now=NOW, fingerprints=FP)
    assert [d.kind for d in found] == kinds


def test_a_session_aged_out_of_the_list_is_not_gone() -> None:
    later = STARTS + timedelta(days=1)
    assert detect(APPLIED, [], now=later, fingerprints=FP) == ()


def desired(starts: datetime = STARTS) -> Appointment:
    return Appointment(
        event_id=2,
        appointment_id="A1",
        external_session_id="A1",
        provider_external_id="prov-001",
        status=AppointmentStatus.BOOKED,
        starts_at=starts,
        guests=(Guest("pat-1", full_name="Test Patient", deliver="N"),),
    )


def test_report_keeps_a_moved_session_and_restore_moves_it_back() -> None:
    moved = session(schedule_ts=STARTS + timedelta(hours=2))
    drift = {DriftKind.TIME_MOVED: 9}
    kept = plan_in_full(desired(), APPLIED, [moved], now=NOW, fingerprints=FP, drift=drift)
    assert kept.ops == ()
    back = plan_in_full(
        desired(), APPLIED, [moved], now=NOW, fingerprints=FP, drift=drift, restore=True
    )
    assert back.ops == (RescheduleSession("A1", 9, STARTS),)
    # the EHR asking for a new time is sent under either policy
    later = STARTS + timedelta(hours=5)
    asked = plan_in_full(desired(later), APPLIED, [moved], now=NOW, fingerprints=FP, drift=drift)
    assert asked.ops == (RescheduleSession("A1", 9, later),)


def test_report_recreates_a_cancelled_session_only_when_the_ehr_moves_the_visit() -> None:
    gone = [session(schedule_type="Cancelled")]
    drift = {DriftKind.CANCELLED: 9}
    held = plan_in_full(desired(), APPLIED, gone, now=NOW, fingerprints=FP, drift=drift)
    assert held.ops == () and held.held[0].startswith(f"{HELD}: drift")
    later = STARTS + timedelta(hours=5)
    asked = plan_in_full(desired(later), APPLIED, gone, now=NOW, fingerprints=FP, drift=drift)
    assert [type(op) for op in asked.ops] == [CreateSession]
    restored = plan_in_full(
        desired(), APPLIED, gone, now=NOW, fingerprints=FP, drift=drift, restore=True
    )
    assert [type(op) for op in restored.ops] == [CreateSession]


def test_restore_leaves_a_connected_session_alone() -> None:
    connected = session(participants=(HOST,), billable_ts=NOW - timedelta(minutes=5))
    drift = {DriftKind.GUEST_REMOVED: 9}
    planned = plan_in_full(
        desired(), APPLIED, [connected], now=NOW, fingerprints=FP, drift=drift, restore=True
    )
    assert planned.ops == ()


def test_restoring_state_never_holds_the_clinics_own_guests() -> None:
    shown = session(
        participants=(*session().participants, RemoteParticipant(71, None, full_name="Interpreter"))
    )
    assert applied_restoring(APPLIED, shown, FP).guests.keys() == APPLIED.guests.keys()


def test_refused_credentials_on_the_account_read_are_the_passs_once(rig: Rig) -> None:
    from syncd.core.errors import AuthenticationError

    rig.book("A1", "prov-001")
    rig.engine.run_pass()
    rig.clock.advance(INTERVAL)
    rig.fake.fail_next("list_account", AuthenticationError("401 (scripted)"))
    assert rig.engine.run_pass().auth_error is not None
    rig.clock.advance(60)
    assert rig.engine.run_pass().auth_error is None  # said once per interval's read


def test_a_guest_dropped_after_a_create_lost_its_answer_is_removed(rig: Rig) -> None:
    """The create's answer is lost and the pass stops; the EHR then drops a guest.  The session
    the create made holds that guest, claimed by syncd before the call: it is removed, not left
    as if the clinic had added it (found by the crash sweep)."""

    def booking(*patients: str) -> None:
        guests = [{"external_id": p, "full_name": f"Patient {p}", "deliver": "N"} for p in patients]
        rig.outbox.append(
            {
                "appointment_id": "A1",
                "provider_external_id": "prov-001",
                "status": "booked",
                "starts_at": STARTS,
                "topic": None,
                "is_recorded": False,
                "participants": json.dumps(guests),
                "created_at": NOW,
            }
        )

    booking("pat-1", "pat-2")
    rig.fake.lose_answer("create")
    # the lease lapses right after the create: the pass stops before it looks again
    rig.engine.run_pass(may_act=lambda: not rig.fake.mutations())
    (made,) = rig.fake.sessions("prov-001")
    assert [p.external_id for p in made.guests] == ["pat-1", "pat-2"]
    booking("pat-1")
    rig.engine.run_pass()
    (session,) = rig.fake.sessions("prov-001")
    assert [p.external_id for p in session.guests] == ["pat-1"]
