"""The reconciler and the executor on fakes: no socket, no database, no wall clock.

Every path of one appointment's turn — converging, an ambiguous answer and the adopted create, a
refused call, refused credentials, a host SecureVideo does not know, a back-off that runs out of
budget, shutdown between operations, a plan that never converges — is driven here through the
in-memory ledger and the fake SecureVideo of ``syncd.testing``; the end-to-end suite covers the
same paths through HTTP and real databases.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from structlog.testing import capture_logs

from syncd.core.domain import (
    Appointment,
    AppointmentStatus,
    CreateSession,
    Guest,
    RemoteSession,
)
from syncd.core.errors import AmbiguousError, PermanentError, TemporaryError
from syncd.core.fingerprint import Fingerprints
from syncd.core.retry import RetryPolicy
from syncd.ports.ledger import AppointmentRecord
from syncd.sync.applied import applied_of
from syncd.sync.book import AppointmentBook
from syncd.sync.execute import Executor
from syncd.sync.hosts import HostSessions
from syncd.sync.queue import WorkQueue
from syncd.sync.reconcile import MAX_ROUNDS, PassScope, Reconciler
from syncd.sync.report import Disposition, PassReport
from syncd.testing.clock import ManualClock
from syncd.testing.gateway import FakeSecureVideo
from syncd.testing.hooks import SimulatedCrash
from syncd.testing.ledger import InMemoryLedger

START = datetime(2030, 1, 8, 15, 0)


def appointment(
    aid: str = "A1",
    *,
    event_id: int = 1,
    starts_at: datetime = START,
    status: AppointmentStatus = AppointmentStatus.BOOKED,
    host: str = "prov-001",
    guests: tuple[Guest, ...] = (Guest("pt-1", full_name="Zelda Canary"),),
) -> Appointment:
    return Appointment(
        event_id=event_id,
        appointment_id=aid,
        external_session_id=aid,
        provider_external_id=host,
        status=status,
        starts_at=starts_at,
        guests=guests,
    )


class IgnoresReschedules(FakeSecureVideo):
    """An API that answers a reschedule without applying it: the plan never converges."""

    def reschedule_session(self, session_id: int, schedule_ts: datetime) -> RemoteSession:
        self.ignored += 1
        return self.session(session_id)

    ignored = 0


class ChecksTheIntent(FakeSecureVideo):
    """Looks in the ledger while a create is on the wire: its intent must be committed."""

    ledger: InMemoryLedger

    def create_session(self, op: CreateSession) -> RemoteSession:
        with self.ledger.begin() as tx:
            journal = tx.operations.of_appointment(op.external_session_id)
            record = tx.appointments.get(op.external_session_id)
        self.seen = [(o.op, o.state) for o in journal]
        self.host_on_file = record.host_external_id if record else None
        return super().create_session(op)


class DiesAfterTheFirstCreate(FakeSecureVideo):
    """The process dies once SecureVideo made the first session, before its answer arrives."""

    died = False

    def create_session(self, op: CreateSession) -> RemoteSession:
        made = super().create_session(op)
        if not self.died:
            self.died = True
            raise SimulatedCrash
        return made


@dataclass
class Rig:
    """One pass's worth of collaborators, built from fakes."""

    gateway: FakeSecureVideo = field(default_factory=FakeSecureVideo)
    ledger: InMemoryLedger = field(default_factory=InMemoryLedger)
    clock: ManualClock = field(default_factory=ManualClock)
    stop: threading.Event = field(default_factory=threading.Event)
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(base_seconds=0.0, rng=random.Random(1))
    )
    budget_seconds: float = 120.0
    #: SecureVideo known to be down (the daemon's outage judge)
    outage: bool = False
    checkpoints: list[str] = field(default_factory=list)
    queue: WorkQueue = field(default_factory=lambda: WorkQueue(2))

    def fingerprints(self) -> Fingerprints:
        with self.ledger.begin() as tx:
            return Fingerprints(tx.cursor.fingerprint_key())

    def reconciler(self) -> Reconciler:
        fp = self.fingerprints()
        return Reconciler(
            book=AppointmentBook(self.ledger, self.clock),
            executor=Executor(
                self.ledger,
                self.gateway,
                self.clock,
                fingerprints=fp,
                checkpoint=self.checkpoints.append,
            ),
            clock=self.clock,
            retry=self.retry,
            stop=self.stop,
            retry_budget_seconds=self.budget_seconds,
            fingerprints=fp,
            outage=lambda: self.outage,
        )

    def scope(self, *, may_act: bool = True) -> PassScope:
        return PassScope(
            report=PassReport(pass_id="unit"),
            hosts=HostSessions(self.gateway, self.queue.submit),
            halted=lambda: self.stop.is_set() or not may_act,
        )

    def record(self, appt: Appointment) -> AppointmentRecord:
        with self.ledger.begin() as tx:
            tx.appointments.note_events({appt.appointment_id: appt.event_id}, now=self.clock.now())
            record = tx.appointments.get(appt.appointment_id)
        assert record is not None
        return record

    def turn(self, appt: Appointment, scope: PassScope | None = None) -> Disposition:
        """One appointment's turn, as a pass gives it: hosts requested first."""
        scope = scope or self.scope()
        record = self.record(appt)
        with self.ledger.begin() as tx:
            known = tx.participants.of_appointments([appt.appointment_id])[appt.appointment_id]
            unresolved = bool(tx.operations.with_open([appt.appointment_id]))
        scope.hosts.request([appt.provider_external_id, *filter(None, [record.host_external_id])])
        return self.reconciler().reconcile(
            record,
            appt,
            applied_of(record, known),
            scope,
            unresolved=unresolved,
        )

    def state(self, aid: str = "A1") -> AppointmentRecord:
        with self.ledger.begin() as tx:
            record = tx.appointments.get(aid)
        assert record is not None
        return record

    def owned(self, aid: str = "A1") -> dict[str, int | None]:
        """The participations on file as syncd's: key -> participation id."""
        with self.ledger.begin() as tx:
            rows = tx.participants.of_appointments([aid])[aid]
        return {key: r.participation_id for key, r in rows.items()}

    def guests_shown(self, aid: str = "A1") -> list[str]:
        (sid,) = self.gateway.live_by_external_session_id()[aid]
        return sorted(p.external_id or "" for p in self.gateway.session(sid).guests)

    def journal(self, aid: str = "A1") -> list[tuple[str, str]]:
        with self.ledger.begin() as tx:
            return [(o.op, o.state) for o in tx.operations.of_appointment(aid)]


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.queue.close()


def kinds(gateway: FakeSecureVideo) -> list[str]:
    return [c.kind for c in gateway.mutations()]


# --- converging --------------------------------------------------------------------------------


def test_a_new_appointment_is_created_and_settled_in_the_create_s_commit(rig: Rig) -> None:
    assert rig.turn(appointment()) is Disposition.SYNCED
    assert kinds(rig.gateway) == ["create"]
    state = rig.state()
    assert state.state == "synced" and state.session_id is not None
    assert state.host_external_id == "prov-001" and state.schedule_ts == START
    assert rig.journal() == [("create", "applied")]
    assert rig.checkpoints == ["before_call", "after_call", "after_commit"]


def test_an_appointment_that_already_matches_makes_no_call(rig: Rig) -> None:
    rig.turn(appointment())
    before = len(rig.gateway.mutations())
    assert rig.turn(appointment(event_id=2)) is Disposition.UNCHANGED
    assert len(rig.gateway.mutations()) == before


def test_a_reschedule_is_one_call(rig: Rig) -> None:
    rig.turn(appointment())
    later = START + timedelta(hours=2)
    assert rig.turn(appointment(event_id=2, starts_at=later)) is Disposition.SYNCED
    assert kinds(rig.gateway) == ["create", "reschedule"]
    assert rig.state().schedule_ts == later


def test_fulfilled_leaves_securevideo_alone(rig: Rig) -> None:
    assert rig.turn(appointment(status=AppointmentStatus.FULFILLED)) is Disposition.SKIPPED
    assert kinds(rig.gateway) == []
    assert rig.state().state == "skipped"


def test_a_visit_long_past_is_not_created(rig: Rig) -> None:
    rig.clock.advance(timedelta(days=3))  # a day and more after the start
    assert rig.turn(appointment()) is Disposition.SKIPPED
    assert kinds(rig.gateway) == []


# --- lost answers and retries -----------------------------------------------------------------


def test_the_intent_is_committed_before_the_create_leaves(rig: Rig) -> None:
    gateway = ChecksTheIntent()
    gateway.ledger = rig.ledger
    rig.gateway = gateway
    rig.turn(appointment())
    assert gateway.seen == [("create", "intent")]
    # The host is on file with the intent: a crash after SecureVideo created the session must not
    # leave it where no later pass looks.
    assert gateway.host_on_file == "prov-001"


def test_a_create_whose_answer_is_lost_is_adopted_not_sent_again(rig: Rig) -> None:
    rig.gateway.lose_answer("create")
    assert rig.turn(appointment()) is Disposition.SYNCED
    assert [(c.kind, c.outcome) for c in rig.gateway.mutations()] == [("create", "ambiguous")]
    assert rig.gateway.live_by_external_session_id() == {"A1": [rig.state().session_id]}
    # The open intent was resolved by reading SecureVideo again.
    assert rig.journal() == [("create", "resolved")]


ANNA = Guest("pat-41", full_name="Anna Canary")
BEN = Guest("pat-52", full_name="Ben Canary")
CLEO = Guest("pat-58", full_name="Cleo Canary")


def test_a_guest_of_a_lost_create_that_the_ehr_drops_before_adoption_is_removed(rig: Rig) -> None:
    """The crash sweep's C008: the create of Anna and Ben dies before its answer; when the
    session is adopted the EHR has dropped Ben and added Cleo, whose add's answer is lost too.
    Ben was claimed with the create's intent: he is syncd's, and goes."""
    rig.gateway = DiesAfterTheFirstCreate()
    with pytest.raises(SimulatedCrash):
        rig.turn(appointment(guests=(ANNA, BEN)))
    rig.gateway.lose_answer("add_participant")
    assert rig.turn(appointment(event_id=2, guests=(ANNA, CLEO))) is Disposition.SYNCED
    assert rig.guests_shown() == ["pat-41", "pat-58"]
    fp = rig.fingerprints()
    assert sorted(rig.owned()) == sorted(fp.participant(g.external_id) for g in (ANNA, CLEO))
    assert None not in rig.owned().values()
    assert rig.journal() == [
        ("create", "resolved"),
        ("remove_participant", "applied"),
        ("add_participant", "resolved"),
    ]


def test_a_dropped_guest_whose_removal_failed_is_still_owned_and_removed(rig: Rig) -> None:
    rig.turn(appointment(guests=(ANNA, BEN)))
    rig.gateway.fail_next("remove_participant", TemporaryError("503 from SecureVideo"))
    assert rig.turn(appointment(event_id=2, guests=(ANNA,))) is Disposition.SYNCED
    assert rig.guests_shown() == ["pat-41"]
    assert list(rig.owned()) == [rig.fingerprints().participant("pat-41")]
    assert rig.journal()[1:] == [
        ("remove_participant", "failed"),
        ("remove_participant", "applied"),
    ]


def test_a_temporary_failure_is_retried_within_the_turn(rig: Rig) -> None:
    rig.gateway.fail_next("create", TemporaryError("503 from SecureVideo"), times=2)
    assert rig.turn(appointment()) is Disposition.SYNCED
    assert [c.outcome for c in rig.gateway.mutations()] == ["failed", "failed", "applied"]
    assert rig.journal() == [("create", "failed"), ("create", "failed"), ("create", "applied")]


def test_a_temporary_failure_is_retried_past_max_attempts_never_parked(rig: Rig) -> None:
    rig.retry = RetryPolicy(base_seconds=0.0, long_after_attempts=3, rng=random.Random(1))
    rig.gateway.fail_next("create", TemporaryError("503 from SecureVideo"), times=10)
    with capture_logs() as logs:
        assert rig.turn(appointment()) is Disposition.SYNCED
    assert [c.outcome for c in rig.gateway.mutations()] == ["failed"] * 10 + ["applied"]
    assert rig.state().state == "synced"
    # Said once, when the attempts reached the threshold: an alert, not a verdict.
    (long,) = [e for e in logs if e["event"] == "retrying_long"]
    assert long["attempts"] == 3 and long["appointment_id"] == "A1"


def test_during_a_known_outage_a_failure_is_left_to_a_later_pass_at_once(rig: Rig) -> None:
    """A worker does not sit out a back-off while SecureVideo is down: with hundreds of pending
    appointments, a pass would otherwise last their budgets end to end."""
    rig.outage = True
    rig.retry = RetryPolicy(base_seconds=30.0, rng=random.Random(1))
    rig.gateway.fail_next("create", TemporaryError("503 from SecureVideo"), times=5)
    # Without the outage this turn would wait out (real) back-offs of up to 30 s and sync.
    assert rig.turn(appointment()) is Disposition.RETRY
    state = rig.state()
    assert (state.state, state.attempts) == ("pending", 1)
    assert state.next_attempt_at is not None and state.next_attempt_at > rig.clock.now()
    assert len(rig.gateway.mutations()) == 1


def test_a_wait_beyond_the_pass_budget_is_deferred_to_a_later_pass(rig: Rig) -> None:
    rig.budget_seconds = 0.0
    rig.retry = RetryPolicy(base_seconds=30.0, rng=random.Random(1))
    rig.gateway.fail_next("list", TemporaryError("503 from SecureVideo"))
    assert rig.turn(appointment()) is Disposition.RETRY
    state = rig.state()
    assert state.state == "pending" and state.attempts == 1
    assert state.next_attempt_at is not None and state.next_attempt_at > rig.clock.now()
    assert kinds(rig.gateway) == []


def test_retry_after_is_pacing_not_a_failed_attempt(rig: Rig) -> None:
    rig.budget_seconds = 0.0
    rig.gateway.fail_next("create", TemporaryError("429", retry_after=5.0))
    assert rig.turn(appointment()) is Disposition.RETRY
    assert rig.state().attempts == 0


# --- refusals ------------------------------------------------------------------------------------


def test_a_refused_call_parks_with_securevideo_s_message_redacted(rig: Rig) -> None:
    rig.gateway.fail_next("create", PermanentError("400: Zelda Canary has no e-mail"))
    assert rig.turn(appointment()) is Disposition.PARKED
    reason = rig.state().reason
    assert reason == "appointment A1: SecureVideo refused create: 400: [redacted] has no e-mail"


def test_a_refusal_quoting_a_participant_external_id_parks_without_it(rig: Rig) -> None:
    mrn = Guest("MRN-00424242", full_name="Zelda Canary")
    rig.gateway.fail_next("create", PermanentError("400: ParticipantExternalId MRN-00424242 taken"))
    assert rig.turn(appointment(guests=(mrn,))) is Disposition.PARKED
    reason = rig.state().reason
    assert (
        reason
        == "appointment A1: SecureVideo refused create: 400: ParticipantExternalId [redacted] taken"
    )


def test_an_unknown_host_parks_naming_the_provider_field(rig: Rig) -> None:
    assert rig.turn(appointment(host="prov-nobody")) is Disposition.PARKED
    reason = rig.state().reason
    assert reason is not None and "field 'provider_external_id'" in reason


def test_a_provider_change_away_from_a_host_who_left_creates_under_the_new_host(
    rig: Rig,
) -> None:
    """Defect 6: the old host's list answers 404; the session is made under the new host and
    the old one is reported, not blamed on the new provider."""
    rig.turn(appointment())
    rig.gateway.remove_host("prov-001")
    with capture_logs() as logs:
        assert rig.turn(appointment(event_id=2, host="prov-002")) is Disposition.SYNCED
    assert kinds(rig.gateway) == ["create", "create"]
    state = rig.state()
    assert (state.state, state.host_external_id) == ("synced", "prov-002")
    assert state.reason is not None and "previous host 'prov-001'" in state.reason
    (gone,) = [e for e in logs if e["event"] == "previous_host_gone"]
    assert gone["appointment_id"] == "A1"
    assert (gone["provider_external_id"], gone["previous_host_external_id"]) == (
        "prov-002",
        "prov-001",
    )
    # The next change finds the session on its host and makes no call.
    assert rig.turn(appointment(event_id=3, host="prov-002")) is Disposition.UNCHANGED


def test_a_provider_change_to_an_unknown_host_parks_naming_the_new_host(rig: Rig) -> None:
    rig.turn(appointment())
    assert rig.turn(appointment(event_id=2, host="prov-nobody")) is Disposition.PARKED
    reason = rig.state().reason
    assert reason is not None and "field 'provider_external_id'" in reason
    assert "'prov-nobody'" in reason and "prov-001" not in reason
    assert kinds(rig.gateway) == ["create"]


def test_the_journal_and_the_log_show_participants_as_fingerprints(rig: Rig) -> None:
    """Defect 9: a participant external id (an MRN) is journalled and logged as its keyed
    fingerprint."""
    first = Guest("MRN-00424242", full_name="Zelda Canary")
    second = Guest("MRN-00515151", full_name="Yves Canary")
    with capture_logs() as logs:
        rig.turn(appointment(guests=(first,)))
        rig.turn(appointment(event_id=2, guests=(first, second)))
    with rig.ledger.begin() as tx:
        journal = tx.operations.of_appointment("A1")
        prints = Fingerprints(tx.cursor.fingerprint_key())
    shown = prints.participant("MRN-00515151")
    assert [(o.op, o.participant_external_id) for o in journal] == [
        ("create", None),
        ("add_participant", shown),
    ]
    operations = [e for e in logs if e["event"] == "operation"]
    assert [e["participant"] for e in operations] == [None, shown]
    assert "MRN-" not in repr(logs) and "MRN-" not in repr(journal)


def test_refused_credentials_stop_the_pass_and_are_reported_once(rig: Rig) -> None:
    rig.gateway.refuse_credentials()
    scope = rig.scope()
    assert rig.turn(appointment("A1"), scope) is Disposition.INTERRUPTED
    assert rig.turn(appointment("A2"), scope) is Disposition.INTERRUPTED
    assert scope.report.auth_error is not None and scope.auth_failed.is_set()
    assert rig.state("A1").state == "pending"


# --- stopping ------------------------------------------------------------------------------------


class StopsAfterCancel(FakeSecureVideo):
    """Asks for shutdown while the cancel is on the wire."""

    stop: threading.Event

    def cancel_session(self, session_id: int) -> None:
        super().cancel_session(session_id)
        self.stop.set()


def test_shutdown_between_operations_keeps_what_was_applied(rig: Rig) -> None:
    gateway = StopsAfterCancel()
    gateway.stop = rig.stop
    rig.gateway = gateway
    rig.turn(appointment())
    # A provider change is cancel + create under the new host; shutdown comes during the cancel.
    assert rig.turn(appointment(event_id=2, host="prov-002")) is Disposition.INTERRUPTED
    assert kinds(gateway) == ["create", "cancel"]  # the new create is left for the next pass
    assert rig.journal() == [("create", "applied"), ("cancel", "applied")]
    assert rig.state().session_id is None  # the cancel's result is committed
    assert rig.state().state == "pending"


def test_a_lapsed_lease_stops_before_the_next_call(rig: Rig) -> None:
    assert rig.turn(appointment(), rig.scope(may_act=False)) is Disposition.INTERRUPTED
    assert kinds(rig.gateway) == []


# --- convergence ---------------------------------------------------------------------------------


def test_a_plan_that_never_converges_is_parked_after_the_bounded_rounds(rig: Rig) -> None:
    rig.gateway = IgnoresReschedules()
    rig.turn(appointment())
    later = START + timedelta(hours=1)
    assert rig.turn(appointment(event_id=2, starts_at=later)) is Disposition.PARKED
    assert isinstance(rig.gateway, IgnoresReschedules)
    assert rig.gateway.ignored == MAX_ROUNDS
    assert rig.journal() == [("create", "applied")] + [("reschedule", "applied")] * MAX_ROUNDS
    reason = rig.state().reason
    assert reason == f"appointment A1: does not converge after {MAX_ROUNDS} rounds (reschedule)"


def test_a_cancelled_session_is_followed_by_a_new_one_with_the_same_external_id(rig: Rig) -> None:
    rig.turn(appointment())
    rig.turn(appointment(event_id=2, status=AppointmentStatus.CANCELLED))
    assert rig.turn(appointment(event_id=3)) is Disposition.SYNCED
    assert kinds(rig.gateway) == ["create", "cancel", "create"]
    assert len(rig.gateway.live_by_external_session_id()["A1"]) == 1


# --- the executor alone ---------------------------------------------------------------------------


def test_the_executor_journals_an_ambiguous_answer_and_raises_it(rig: Rig) -> None:
    rig.gateway.lose_answer("create")
    appt = appointment()
    rig.record(appt)
    op = CreateSession(
        appointment_id="A1",
        external_session_id="A1",
        host_external_id="prov-001",
        schedule_ts=START,
        topic=None,
        is_recorded=False,
        guests=appt.guests,
    )
    report = PassReport(pass_id="unit")
    with pytest.raises(AmbiguousError):
        Executor(rig.ledger, rig.gateway, rig.clock, fingerprints=rig.fingerprints()).apply(
            op, appt, 1, report
        )
    assert rig.journal() == [("create", "ambiguous")]
    assert report.operations == {"create:ambiguous": 1}
