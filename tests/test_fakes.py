"""The fakes in ``syncd.testing``: SecureVideo's scripted failures, the ledger's test controls and
the hand-moved clock.  No database, no socket, no wall clock."""

from __future__ import annotations

import json
import random
import threading
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from syncd.core.domain import Appointment, AppointmentStatus, CreateSession, Guest
from syncd.core.errors import (
    AmbiguousError,
    AuthenticationError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)
from syncd.core.fingerprint import Fingerprints
from syncd.core.planner import plan
from syncd.core.retry import RetryPolicy
from syncd.ports import Clock, Ledger, SessionGateway
from syncd.sync.passes import Synchronizer, SyncOptions
from syncd.testing.clock import ManualClock
from syncd.testing.gateway import Call, FakeSecureVideo
from syncd.testing.hooks import HookedGateway
from syncd.testing.ledger import InMemoryLedger
from syncd.testing.outbox import InMemoryOutbox

NOW = datetime(2030, 1, 7, 9, 0)
FP = Fingerprints(bytes(32))
STARTS = datetime(2030, 1, 8, 15, 30)

ALICE = Guest(
    external_id="pat-1", full_name="Test Patient One", email="p1@example.test", deliver="E"
)
BOB = Guest(external_id="pat-2", full_name="Test Patient Two", sms="+15550100", deliver="S")


def appointment(guests: tuple[Guest, ...] = (ALICE,), starts_at: datetime = STARTS) -> Appointment:
    return Appointment(
        event_id=1,
        appointment_id="a01",
        external_session_id="ehr-a01",
        provider_external_id="prov-001",
        status=AppointmentStatus.BOOKED,
        starts_at=starts_at,
        guests=guests,
    )


def create_op(guests: tuple[Guest, ...] = (ALICE,), host: str = "prov-001") -> CreateSession:
    return CreateSession(
        appointment_id="a01",
        external_session_id="ehr-a01",
        host_external_id=host,
        schedule_ts=STARTS,
        topic=None,
        is_recorded=False,
        guests=guests,
    )


# --- FakeSecureVideo: the account ------------------------------------------------------------


def test_a_created_session_reads_back_as_the_planner_wants_it() -> None:
    fake = FakeSecureVideo()
    gateway: SessionGateway = fake
    created = gateway.create_session(create_op((ALICE, BOB)))
    listed = gateway.list_host_sessions("prov-001")
    assert listed == [created]
    host, alice, bob = created.participants
    assert (host.external_id, created.host_external_id) == ("prov-001", "prov-001")
    assert (alice.external_id, alice.email, alice.deliver) == ("pat-1", "p1@example.test", "E")
    assert (bob.sms, bob.time_zone_windows_id) == ("+15550100", "Eastern Standard Time")
    assert created.schedule_ts == STARTS
    assert created.schedule_type == "Scheduled"
    # SecureVideo never reports a PacketId: the ledger must remember it.
    assert (alice.packet_id, alice.packet_known) == (None, False)
    assert plan(appointment((ALICE, BOB)), None, listed, now=NOW, fingerprints=FP) == ()
    assert gateway.list_host_sessions("prov-002") == []


def test_changes_are_applied_and_recorded_in_order() -> None:
    fake = FakeSecureVideo()
    session = fake.create_session(create_op())
    sid = session.session_id
    moved = fake.reschedule_session(sid, STARTS + timedelta(hours=1, seconds=42))
    assert moved.schedule_ts == STARTS + timedelta(hours=1)  # whole minutes, as SecureVideo keeps
    assert moved.schedule_type == "Rescheduled"
    added = fake.add_participant(sid, BOB)
    bob = added.participants[-1]
    updated = fake.update_participant(
        bob.participation_id, Guest("pat-2", "Test Patient Two", sms="+15550199", deliver="S")
    )
    assert updated.participants[-1].sms == "+15550199"
    fake.remove_participant(bob.participation_id)
    fake.cancel_session(sid)
    assert [(c.kind, c.session_id) for c in fake.mutations()] == [
        ("create", sid),
        ("reschedule", sid),
        ("add_participant", sid),
        ("update_participant", sid),
        ("remove_participant", sid),
        ("cancel", sid),
    ]
    assert all(c.outcome == "applied" for c in fake.calls)
    # A cancelled session stays listed, and the planner looks past it.
    (tombstone,) = fake.list_host_sessions("prov-001")
    assert tombstone.is_cancelled
    assert [op.kind for op in plan(appointment(), None, [tombstone], now=NOW, fingerprints=FP)] == [
        "create"
    ]
    assert fake.reads == {"prov-001": 1}


def test_what_secure_video_refuses() -> None:
    fake = FakeSecureVideo()
    session = fake.create_session(create_op())
    host, alice = session.participants
    with pytest.raises(PermanentError, match="cannot be changed") as refused:
        fake.update_participant(alice.participation_id, Guest("pat-1", "Another Name"))
    assert refused.value.status == 400
    with pytest.raises(PermanentError, match="host cannot be removed"):
        fake.remove_participant(host.participation_id)
    with pytest.raises(PermanentError, match="already in the session"):
        fake.add_participant(session.session_id, ALICE)
    with pytest.raises(PermanentError, match="SvcId and DepositRequired"):
        fake.add_participant(session.session_id, Guest("pat-3", "Third", deposit=Decimal(20)))
    with pytest.raises(PermanentError, match="at least one guest"):
        fake.create_session(create_op(()))
    fake.cancel_session(session.session_id)
    with pytest.raises(PermanentError, match="cancelled"):
        fake.reschedule_session(session.session_id, STARTS)
    with pytest.raises(PermanentError, match="already cancelled"):
        fake.cancel_session(session.session_id)
    with pytest.raises(NotFoundError) as missing:
        fake.cancel_session(1)
    assert missing.value.status == 404
    with pytest.raises(NotFoundError):
        fake.remove_participant(1)
    outcomes = [c.outcome for c in fake.mutations()]
    assert outcomes == ["applied"] + ["failed"] * 5 + ["applied"] + ["failed"] * 4
    assert len(fake.sessions()) == 1


def test_an_unknown_host_is_not_found() -> None:
    fake = FakeSecureVideo(hosts=["prov-001"])
    with pytest.raises(NotFoundError) as listing:
        fake.list_host_sessions("prov-404")
    assert listing.value.status == 404
    with pytest.raises(NotFoundError):
        fake.create_session(create_op(host="prov-404"))
    assert fake.sessions() == []
    assert [(c.kind, c.outcome, c.error) for c in fake.calls] == [
        ("list", "failed", "NotFoundError"),
        ("create", "failed", "NotFoundError"),
    ]
    fake.add_host("prov-404")
    assert fake.list_host_sessions("prov-404") == []


# --- FakeSecureVideo: scripted failures ---------------------------------------------------------


def test_the_next_calls_of_a_kind_fail_without_effect() -> None:
    fake = FakeSecureVideo()
    fake.fail_next("create", lambda: TemporaryError("503 (scripted)"), times=2)
    for _ in range(2):
        with pytest.raises(TemporaryError, match="scripted"):
            fake.create_session(create_op())
    assert fake.sessions() == []
    # Reads are another kind: untouched by the script.
    assert fake.list_host_sessions("prov-001") == []
    created = fake.create_session(create_op())
    assert [(c.kind, c.outcome) for c in fake.mutations()] == [
        ("create", "failed"),
        ("create", "failed"),
        ("create", "applied"),
    ]
    assert fake.applied() == [
        Call(
            "create",
            session_id=created.session_id,
            host_external_id="prov-001",
            external_session_id="ehr-a01",
            schedule_ts=STARTS,
        )
    ]


def test_scripts_for_any_kind_and_the_same_error_twice() -> None:
    fake = FakeSecureVideo()
    error = TemporaryError("timeout (scripted)")
    fake.fail_next(None, error, times=2)
    with pytest.raises(TemporaryError) as first:
        fake.list_host_sessions("prov-001")
    with pytest.raises(TemporaryError) as second:
        fake.create_session(create_op())
    assert first.value is second.value is error
    fake.create_session(create_op())
    assert [(c.kind, c.outcome) for c in fake.calls] == [
        ("list", "failed"),
        ("create", "failed"),
        ("create", "applied"),
    ]


def test_a_lost_answer_is_applied_then_ambiguous() -> None:
    fake = FakeSecureVideo()
    fake.lose_answer("create")
    with pytest.raises(AmbiguousError):
        fake.create_session(create_op())
    (made,) = fake.sessions()
    assert made.external_session_id == "ehr-a01"
    assert [(c.kind, c.session_id, c.outcome) for c in fake.mutations()] == [
        ("create", made.session_id, "ambiguous")
    ]
    # The retry reads first and finds it: nothing more to do.
    assert (
        plan(appointment(), None, fake.list_host_sessions("prov-001"), now=NOW, fingerprints=FP)
        == ()
    )
    fake.lose_answer(None, error=TemporaryError("read timeout (scripted)"))
    with pytest.raises(TemporaryError, match="read timeout"):
        fake.cancel_session(made.session_id)
    assert fake.session(made.session_id).is_cancelled
    assert [c.outcome for c in fake.applied()] == ["ambiguous", "ambiguous"]


def test_scripts_are_checked() -> None:
    fake = FakeSecureVideo()
    with pytest.raises(ValueError, match="only a change"):
        fake.lose_answer("list")
    with pytest.raises(ValueError, match="unknown call kind"):
        fake.fail_next("delete_everything", TemporaryError("x"))
    with pytest.raises(ValueError, match="at least 1"):
        fake.fail_next("create", TemporaryError("x"), times=0)
    fake.fail_next("create", TemporaryError("x"))
    fake.clear_scripts()
    fake.create_session(create_op())


def test_refused_credentials_stop_every_call_until_accepted() -> None:
    fake = FakeSecureVideo()
    session = fake.create_session(create_op())
    fake.refuse_credentials()
    with pytest.raises(AuthenticationError):
        fake.list_host_sessions("prov-001")
    with pytest.raises(AuthenticationError):
        fake.cancel_session(session.session_id)
    assert not fake.session(session.session_id).is_cancelled
    fake.refuse_credentials(False)
    fake.cancel_session(session.session_id)
    assert [(c.kind, c.error) for c in fake.calls] == [
        ("create", None),
        ("list", "AuthenticationError"),
        ("cancel", "AuthenticationError"),
        ("cancel", None),
    ]


def test_a_hook_after_a_success_of_the_fake() -> None:
    fake = FakeSecureVideo()
    fired: list[str] = []
    hooked = HookedGateway(fake, hook=fired.append)
    hooked.create_session(create_op())
    hooked.create_session(create_op())
    assert fired == ["create"]
    assert hooked.created == ["ehr-a01", "ehr-a01"]
    # Two live sessions for one appointment: the planner cancels the duplicate.
    ops = plan(appointment(), None, fake.list_host_sessions("prov-001"), now=NOW, fingerprints=FP)
    assert [op.kind for op in ops] == ["cancel"]
    assert list(fake.live_by_external_session_id().values()) == [
        [s.session_id for s in fake.sessions()]
    ]


def test_the_fake_is_deterministic() -> None:
    def run() -> list[object]:
        fake = FakeSecureVideo()
        fake.preload(create_op())
        session = fake.create_session(create_op((ALICE, BOB)))
        fake.set_billing(session.session_id, billable_ts=STARTS, duration_minutes=20)
        fake.set_attendance(session.participants[1].participation_id, rsvp="Confirmed")
        return [fake.sessions(), fake.calls]

    assert run() == run()


# --- InMemoryLedger: test controls ---------------------------------------------------------------


def test_the_next_transaction_fails_at_begin_or_at_commit() -> None:
    ledger = InMemoryLedger()
    ran: list[str] = []
    ledger.fail_next(ConnectionError("database down (scripted)"))
    ledger.fail_next(ConnectionError("connection lost at commit (scripted)"), at="commit")
    with pytest.raises(ConnectionError, match="down"), ledger.begin() as tx:
        ran.append("first")
    with pytest.raises(ConnectionError, match="at commit"), ledger.begin() as tx:
        ran.append("second")
        tx.cursor.advance(5)
    with ledger.begin() as tx:
        assert tx.cursor.get() == 0
        ran.append("third")
    assert ran == ["second", "third"]
    assert (ledger.commits, ledger.rollbacks) == (1, 2)


def test_an_outage_lasts_until_restored() -> None:
    ledger = InMemoryLedger()
    ledger.outage(lambda: ConnectionError("refused (scripted)"))
    for _ in range(3):
        with pytest.raises(ConnectionError), ledger.begin():
            pass
    ledger.restore()
    with ledger.begin() as tx:
        assert tx.cursor.get() == 0


def test_a_transaction_inside_another_is_separate() -> None:
    ledger = InMemoryLedger()
    with ledger.begin() as outer:
        outer.appointments.note_events({"a01": 1}, now=NOW)
        with ledger.begin() as inner:
            # Like a second connection: the outer block's writes are not committed yet.
            assert inner.appointments.get("a01") is None
            inner.appointments.note_events({"a02": 1}, now=NOW)
            inner.cursor.advance(9)
        outer.cursor.advance(4)
    with ledger.begin() as tx:
        assert set(tx.appointments.get_many(["a01", "a02"])) == {"a01", "a02"}
        # Each commit wrote only what it changed; the cursor still never goes back.
        assert tx.cursor.get() == 9


def test_concurrent_transactions_lose_no_update() -> None:
    ledger = InMemoryLedger()

    def bump() -> None:
        for _ in range(50):
            with ledger.begin() as tx:
                tx.cursor.advance(tx.cursor.get() + 1)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with ledger.begin() as tx:
        assert tx.cursor.get() == 400


def test_operation_ids_are_not_reused_after_a_rollback() -> None:
    ledger: Ledger = InMemoryLedger()

    def record() -> int:
        with ledger.begin() as tx:
            return tx.operations.record_intent(
                appointment_id="a01",
                event_id=1,
                op="create",
                session_id=None,
                participant_external_id=None,
                attempt=1,
                now=NOW,
                pid=None,
            )

    first = record()
    with pytest.raises(RuntimeError), ledger.begin() as tx:
        lost = tx.operations.record_intent(
            appointment_id="a01",
            event_id=1,
            op="create",
            session_id=None,
            participant_external_id=None,
            attempt=2,
            now=NOW,
            pid=None,
        )
        raise RuntimeError("rolled back")
    assert first < lost < record()


def test_replace_refuses_a_participant_listed_twice_and_keeps_what_was_on_file() -> None:
    ledger = InMemoryLedger()
    with ledger.begin() as tx:
        tx.participants.upsert(
            "a01", "g1", session_id=1, participation_id=2, packet_id=None, now=NOW
        )
    with ledger.begin() as tx:
        on_file = list(tx.participants.of_appointments(["a01"])["a01"].values())
    with pytest.raises(ValueError, match="listed twice"), ledger.begin() as tx:
        tx.participants.replace("a01", on_file * 2)
    with ledger.begin() as tx:  # rolled back: the DELETE before the failed INSERT too
        assert list(tx.participants.of_appointments(["a01"])["a01"].values()) == on_file


# --- ManualClock ---------------------------------------------------------------------------------


def test_the_clock_moves_only_when_told() -> None:
    manual = ManualClock(NOW)
    clock: Clock = manual
    assert (clock.now(), clock.monotonic()) == (NOW, 1000.0)
    assert manual.advance(timedelta(seconds=90)) == NOW + timedelta(seconds=90)
    manual.advance(0.5)
    assert clock.now() == NOW + timedelta(seconds=90.5)
    assert clock.monotonic() == 1090.5
    with pytest.raises(ValueError, match="forward"):
        manual.advance(-1)
    manual.set(NOW)  # the wall clock jumps back; monotonic time does not
    assert (clock.now(), clock.monotonic()) == (NOW, 1090.5)


# --- together: the real engine on the fakes ---------------------------------------------------


def booked_row(appointment_id: str, starts_at: datetime) -> dict[str, object]:
    guests = [{"external_id": "pat-1", "full_name": "Test Patient One", "deliver": "N"}]
    return {
        "appointment_id": appointment_id,
        "provider_external_id": "prov-001",
        "status": "booked",
        "starts_at": starts_at,
        "topic": None,
        "is_recorded": False,
        "participants": json.dumps(guests),
        "created_at": starts_at,
    }


def test_the_engine_runs_on_the_fakes_through_a_failure_and_a_lost_answer() -> None:
    clock = ManualClock(NOW)
    outbox = InMemoryOutbox()
    for n in range(1, 4):
        outbox.append(booked_row(f"a{n:02d}", NOW + timedelta(hours=5)))
    fake = FakeSecureVideo()
    fake.fail_next("create", TemporaryError("503 (scripted)"))
    fake.lose_answer("create")
    ledger = InMemoryLedger()
    engine = Synchronizer(
        outbox=outbox,
        ledger=ledger,
        gateway=fake,
        clock=clock,
        options=SyncOptions(
            concurrency=1,
            # A seeded back-off of at most 10 ms: the in-pass retry waits on the real clock.
            retry=RetryPolicy(base_seconds=0.01, rng=random.Random(7)),
            windows_zone=lambda _zone: "UTC",
        ),
    )
    try:
        engine.run_pass()
    finally:
        engine.close()
    # Every appointment has exactly one session: the lost answer's was adopted, not duplicated.
    assert sorted(len(ids) for ids in fake.live_by_external_session_id().values()) == [1, 1, 1]
    # Two workers share the scripts, so which appointment met which is not fixed; what was met is.
    outcomes = sorted((c.kind, c.outcome) for c in fake.mutations())
    assert outcomes == [
        ("create", "ambiguous"),
        ("create", "applied"),
        ("create", "applied"),
        ("create", "failed"),
    ]
    with ledger.begin() as tx:
        assert tx.appointments.counts_by_state()["synced"] == 3
        assert tx.operations.open_intents() == []
