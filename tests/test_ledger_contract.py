"""The ledger port's contract, run on the in-memory ledger and on the SQL ledger's three backends
(the HL7 inbox included).

The same assertions on both prove the fake faithful: a unit test that passes on
``InMemoryLedger`` says something about ``SqlLedger``.  The ``memory`` half needs no database and
no socket.  Appointment ids are lower-case letters and digits of one length, so that every
backend's collation orders them as Python does.  Operation ids are only compared with each other:
a server database's sequence does not restart when a test empties the tables.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine

from syncd.adapters.ledger import SqlLedger
from syncd.core.fingerprint import KEY_BYTES
from syncd.ports.inbox import INBOX_EVENT_BASE, SUPERSEDED_KEPT_SECONDS, InboxMessage
from syncd.ports.ledger import (
    AMBIGUOUS,
    APPLIED,
    FAILED,
    HELD_PREFIX,
    INTENT,
    PARKED,
    PENDING,
    RESOLVED,
    SKIPPED,
    SYNCED,
    TEXT_LIMIT,
    AppointmentRecord,
    BookedAppointment,
    DriftRecord,
    LeaseHolder,
    Ledger,
    OutboxRewind,
    OutcomeTarget,
    ParticipantOutcomeRecord,
    ParticipantRecord,
    SessionOutcomeRecord,
)
from syncd.ports.links import JoinLinkRecord
from syncd.testing.ledger import InMemoryLedger

T0 = datetime(2030, 1, 7, 9, 0)
T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)
T3 = T0 + timedelta(minutes=3)
LONG = "x" * (TEXT_LIMIT + 500)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("memory"),
        pytest.param("sqlite"),
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def db_kind(request: pytest.FixtureRequest) -> str:
    """Overrides conftest's: the three SQL backends plus the in-memory ledger."""
    kind: str = request.param
    return kind


@pytest.fixture
def ledger(db_kind: str, request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """An empty ledger of ``db_kind``.  The SQL ones come from conftest's fixtures, which fail
    rather than skip under ``CI=true`` when a server is down."""
    if db_kind == "memory":
        yield InMemoryLedger()
        return
    request.getfixturevalue("ledger_sessions")  # empties the module's migrated database
    engine: Engine = request.getfixturevalue("ledger_engine")
    sql = SqlLedger(engine)
    yield sql
    sql.dispose()


def note(ledger: Ledger, events: Mapping[str, int], now: datetime = T0) -> int:
    with ledger.begin() as tx:
        return tx.appointments.note_events(events, now=now)


def appointment(ledger: Ledger, appointment_id: str) -> AppointmentRecord:
    with ledger.begin() as tx:
        record = tx.appointments.get(appointment_id)
    assert record is not None, appointment_id
    return record


def intent(
    ledger: Ledger, appointment_id: str, op: str = "create", session_id: int | None = None
) -> int:
    with ledger.begin() as tx:
        return tx.operations.record_intent(
            appointment_id=appointment_id,
            event_id=1,
            op=op,
            session_id=session_id,
            participant_external_id=None,
            attempt=1,
            now=T0,
            pid=4242,
        )


# --- cursor --------------------------------------------------------------------------------------


def test_cursor_starts_at_zero_and_never_moves_back(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        assert tx.cursor.get() == 0
        tx.cursor.advance(10)
        tx.cursor.advance(5)
        assert tx.cursor.get() == 10
    with ledger.begin() as tx:
        assert tx.cursor.get() == 10
        tx.cursor.advance(12)
    with ledger.begin() as tx:
        assert tx.cursor.get() == 12


def test_fingerprint_key_is_made_once_and_kept(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        key = tx.cursor.fingerprint_key()
        assert len(key) == KEY_BYTES
        assert tx.cursor.fingerprint_key() == key
    with ledger.begin() as tx:
        tx.cursor.advance(3)
        assert tx.cursor.fingerprint_key() == key
    with ledger.begin() as tx:
        assert tx.cursor.fingerprint_key() == key


def test_only_a_rewind_moves_the_cursor_back_and_it_is_recorded(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        assert tx.cursor.position() == (0, None)
        assert not tx.cursor.rewind_applied(T0)
        tx.cursor.advance(5001)
    with ledger.begin() as tx:
        rewind = tx.cursor.rewind(newest_event_id=3, now=T1)
        assert rewind == OutboxRewind(at=T1, from_event_id=5001, newest_event_id=3, applied_at=None)
    with ledger.begin() as tx:
        assert tx.cursor.position() == (0, rewind)
        tx.cursor.advance(6)
        tx.cursor.advance(2)  # forward only again
    with ledger.begin() as tx:
        assert tx.cursor.position() == (6, rewind)
        assert tx.cursor.rewind_applied(T2)
        assert not tx.cursor.rewind_applied(T3)  # once
    applied = OutboxRewind(at=T1, from_event_id=5001, newest_event_id=3, applied_at=T2)
    with ledger.begin() as tx:
        assert tx.cursor.position() == (6, applied)
        again = tx.cursor.rewind(newest_event_id=4, now=T3)  # the last one replaces it
    with ledger.begin() as tx:
        assert tx.cursor.position() == (0, again)
        assert again.from_event_id == 6 and again.applied_at is None


# --- appointments: events and guards -------------------------------------------------------------


def test_a_new_appointment_enters_pending(ledger: Ledger) -> None:
    assert note(ledger, {"a01": 5, "a02": 6}) == 2
    assert appointment(ledger, "a01") == AppointmentRecord(
        appointment_id="a01",
        last_event_id=5,
        applied_event_id=None,
        state=PENDING,
        attempts=0,
        reason=None,
        next_attempt_at=None,
        session_id=None,
        host_external_id=None,
        created_at=T0,
        updated_at=T0,
        parked_at=None,
        schedule_ts=None,
    )
    with ledger.begin() as tx:
        assert tx.appointments.last_events(["a01", "a02", "zz9", "a01"]) == {"a01": 5, "a02": 6}
        assert set(tx.appointments.get_many(["a02", "zz9"])) == {"a02"}
        assert tx.appointments.get("zz9") is None


def test_an_older_or_equal_event_changes_nothing(ledger: Ledger) -> None:
    note(ledger, {"a01": 5})
    with ledger.begin() as tx:
        tx.appointments.park("a01", reason="bad row", attempts=2, now=T1)
    before = appointment(ledger, "a01")
    assert note(ledger, {"a01": 5}, now=T2) == 0
    assert note(ledger, {"a01": 4}, now=T2) == 0
    assert appointment(ledger, "a01") == before


def test_a_newer_event_makes_it_pending_afresh_and_unparks(ledger: Ledger) -> None:
    note(ledger, {"a01": 5, "a02": 5})
    with ledger.begin() as tx:
        tx.appointments.set_session("a01", session_id=50001, host_external_id="prov-001", now=T0)
        tx.appointments.mark_synced(
            "a01", event_id=5, session_id=50001, host_external_id="prov-001", now=T0
        )
        tx.appointments.schedule_retry(
            "a02", attempts=3, next_attempt_at=T3, reason="timeout", now=T0
        )
        tx.appointments.park("a02", reason="gave up", attempts=4, now=T1)
    assert note(ledger, {"a01": 7, "a02": 8}, now=T2) == 2
    synced_before = appointment(ledger, "a01")
    assert synced_before.state == PENDING
    assert synced_before.last_event_id == 7
    # What was applied, and the session managed, stay: the newer event's plan starts from them.
    assert (synced_before.applied_event_id, synced_before.session_id) == (5, 50001)
    assert synced_before.host_external_id == "prov-001"
    parked_before = appointment(ledger, "a02")
    assert parked_before.state == PENDING
    assert parked_before.last_event_id == 8
    assert parked_before.attempts == 0
    assert parked_before.reason is None
    assert parked_before.next_attempt_at is None
    assert parked_before.parked_at is None
    assert parked_before.updated_at == T2
    assert parked_before.created_at == T0


def test_mark_synced_settles_the_event_it_applied(ledger: Ledger) -> None:
    note(ledger, {"a01": 5})
    with ledger.begin() as tx:
        tx.appointments.schedule_retry(
            "a01", attempts=2, next_attempt_at=T1, reason="timeout", now=T0
        )
        assert tx.appointments.mark_synced(
            "a01",
            event_id=5,
            session_id=50001,
            host_external_id="prov-001",
            now=T2,
            schedule_ts=datetime(2030, 2, 1, 15, 30),
        )
    record = appointment(ledger, "a01")
    assert record.state == SYNCED
    assert record.applied_event_id == 5
    assert (record.session_id, record.host_external_id) == (50001, "prov-001")
    assert record.schedule_ts == datetime(2030, 2, 1, 15, 30)
    assert (record.attempts, record.reason, record.next_attempt_at) == (0, None, None)
    assert record.updated_at == T2


def test_mark_synced_keeps_a_reason_for_the_operator(ledger: Ledger) -> None:
    note(ledger, {"a01": 5})
    with ledger.begin() as tx:
        tx.appointments.mark_synced(
            "a01",
            event_id=5,
            session_id=50001,
            host_external_id="prov-002",
            now=T1,
            reason="previous host 'prov-001' is unknown",
        )
    record = appointment(ledger, "a01")
    assert (record.state, record.reason) == (SYNCED, "previous host 'prov-001' is unknown")
    note(ledger, {"a02": 5, "a00": 5})
    with ledger.begin() as tx:
        for aid in ("a02", "a00"):
            tx.appointments.mark_synced(
                aid, event_id=5, session_id=None, host_external_id=None, now=T1
            )
        assert [r.appointment_id for r in tx.appointments.noted()] == ["a01"]
        tx.appointments.mark_synced(
            "a00", event_id=5, session_id=None, host_external_id=None, now=T2, reason="gone"
        )
        assert [r.appointment_id for r in tx.appointments.noted()] == ["a00", "a01"]
        assert [r.appointment_id for r in tx.appointments.noted(limit=1)] == ["a00"]
        # A later sync without a reason clears it.
        tx.appointments.mark_synced(
            "a01", event_id=5, session_id=50001, host_external_id="prov-002", now=T2
        )
        assert [r.appointment_id for r in tx.appointments.noted()] == ["a00"]


def test_mark_synced_of_an_older_event_keeps_the_newer_one_pending(ledger: Ledger) -> None:
    note(ledger, {"a01": 5})
    note(ledger, {"a01": 6}, now=T1)
    with ledger.begin() as tx:
        tx.appointments.schedule_retry(
            "a01", attempts=1, next_attempt_at=T3, reason="timeout", now=T1
        )
        assert not tx.appointments.mark_synced(
            "a01", event_id=5, session_id=50001, host_external_id="prov-001", now=T2
        )
    record = appointment(ledger, "a01")
    assert (record.state, record.last_event_id) == (PENDING, 6)
    assert (record.attempts, record.reason, record.next_attempt_at) == (1, "timeout", T3)
    # The remote effect is recorded all the same.
    assert (record.applied_event_id, record.session_id) == (5, 50001)
    assert record.updated_at == T2


def test_the_digest_on_file_is_the_newest_rows_and_settling_applies_it(ledger: Ledger) -> None:
    note(ledger, {"a01": 5, "a02": 5, "a03": 5})
    with ledger.begin() as tx:
        tx.appointments.note_digests({"a01": (5, "d5"), "a02": (4, "old"), "a03": (5, "e5")})
    with ledger.begin() as tx:
        assert tx.appointments.mark_synced(
            "a01", event_id=5, session_id=50001, host_external_id="prov-001", now=T1
        )
        assert tx.appointments.mark_skipped("a03", event_id=5, reason="fulfilled", now=T1)
    a01, a02, a03 = (appointment(ledger, a) for a in ("a01", "a02", "a03"))
    assert (a01.last_digest, a01.applied_digest) == ("d5", "d5")
    assert (a02.last_digest, a02.applied_digest) == (None, None)  # not its newest event
    assert (a03.last_digest, a03.applied_digest) == ("e5", "e5")
    note(ledger, {"a01": 6}, now=T2)
    with ledger.begin() as tx:  # an older event settled under a newer one: applied content unknown
        assert not tx.appointments.mark_synced(
            "a01", event_id=5, session_id=50001, host_external_id="prov-001", now=T2
        )
    assert appointment(ledger, "a01").applied_digest is None


def test_newest_at_maps_event_ids_to_the_appointments_holding_them(ledger: Ledger) -> None:
    note(ledger, {"a01": 5, "a02": 7})
    with ledger.begin() as tx:
        tx.appointments.note_digests({"a01": (5, "d5")})
        assert tx.appointments.newest_at([5, 7, 6, 5]) == {5: ("a01", "d5"), 7: ("a02", None)}
        assert tx.appointments.newest_at([]) == {}


def test_after_a_rebase_content_decides_what_needs_work(ledger: Ledger) -> None:
    note(ledger, {"a01": 51, "a02": 52, "a03": 53, "a04": 54, "a05": 55})
    digests = {f"a0{n}": (50 + n, f"d{n}") for n in range(1, 6)}
    with ledger.begin() as tx:
        a = tx.appointments
        a.note_digests(digests)
        a.mark_synced("a01", event_id=51, session_id=1, host_external_id="prov-001", now=T1)
        a.mark_synced("a02", event_id=52, session_id=2, host_external_id="prov-001", now=T1)
        a.park("a03", reason="bad row", attempts=2, now=T1)
        a.schedule_retry("a04", attempts=3, next_attempt_at=T3, reason="timeout", now=T1)
        a.mark_skipped("a05", event_id=55, reason="fulfilled", now=T1)
    with ledger.begin() as tx:
        assert tx.appointments.rebase_events(T2) == 5
        assert set(tx.appointments.last_events(digests).values()) == {0}
    restored = {
        "a01": (1, "d1"),  # as applied: nothing to do
        "a02": (2, "changed"),  # rescheduled after the backup: work
        "a03": (3, "d3"),  # the row it was parked for: still parked
        "a04": (4, "d4"),  # the row it waits to retry: still waiting
        "a05": (5, "d5"),
        "a06": (6, "d6"),  # new
    }
    with ledger.begin() as tx:
        assert tx.appointments.note_contents(restored, now=T2) == 2
        assert tx.appointments.note_contents(restored, now=T3) == 0  # not newer: nothing
    got = {aid: appointment(ledger, aid) for aid in restored}
    states = {aid: (r.state, r.last_event_id, r.last_digest) for aid, r in got.items()}
    assert states == {
        "a01": (SYNCED, 1, "d1"),
        "a02": (PENDING, 2, "changed"),
        "a03": (PARKED, 3, "d3"),
        "a04": (PENDING, 4, "d4"),
        "a05": (SKIPPED, 5, "d5"),
        "a06": (PENDING, 6, "d6"),
    }
    assert (got["a01"].applied_event_id, got["a01"].session_id) == (1, 1)
    assert (got["a01"].updated_at, got["a03"].reason, got["a04"].attempts) == (T1, "bad row", 3)
    assert (got["a02"].attempts, got["a02"].updated_at, got["a02"].session_id) == (0, T2, 2)
    assert got["a06"].created_at == T2
    with ledger.begin() as tx:
        assert tx.appointments.pending_count() == 3


def test_mark_skipped_clips_its_reason_and_loses_to_a_newer_event(ledger: Ledger) -> None:
    note(ledger, {"a01": 5, "a02": 5})
    note(ledger, {"a02": 9}, now=T1)
    with ledger.begin() as tx:
        assert tx.appointments.mark_skipped("a01", event_id=5, reason=LONG, now=T1)
        assert not tx.appointments.mark_skipped("a02", event_id=5, reason="fulfilled", now=T2)
    skipped = appointment(ledger, "a01")
    assert (skipped.state, skipped.applied_event_id) == (SKIPPED, 5)
    assert skipped.reason == LONG[:TEXT_LIMIT]
    kept = appointment(ledger, "a02")
    assert (kept.state, kept.applied_event_id, kept.reason) == (PENDING, 5, None)


def test_schedule_retry_is_guarded_by_the_event(ledger: Ledger) -> None:
    note(ledger, {"a01": 5})
    note(ledger, {"a01": 6}, now=T1)
    with ledger.begin() as tx:
        assert not tx.appointments.schedule_retry(
            "a01", attempts=3, next_attempt_at=T3, reason="old", now=T2, event_id=5
        )
    assert appointment(ledger, "a01").attempts == 0
    with ledger.begin() as tx:
        assert tx.appointments.schedule_retry(
            "a01", attempts=3, next_attempt_at=T3, reason=LONG, now=T2, event_id=6
        )
    record = appointment(ledger, "a01")
    assert (record.state, record.attempts, record.next_attempt_at) == (PENDING, 3, T3)
    assert record.reason == LONG[:TEXT_LIMIT]
    # Still waiting since its newer row came: a retry is not a change of state.
    assert record.updated_at == T1


def test_park_keeps_attempts_unless_given_and_is_guarded(ledger: Ledger) -> None:
    note(ledger, {"a01": 5, "a02": 5})
    with ledger.begin() as tx:
        tx.appointments.schedule_retry(
            "a01", attempts=2, next_attempt_at=T3, reason="timeout", now=T0
        )
        assert tx.appointments.park("a01", reason=LONG, now=T1)
        assert tx.appointments.park("a02", reason="bad", attempts=7, now=T1, event_id=5)
    parked = appointment(ledger, "a01")
    assert (parked.state, parked.attempts, parked.next_attempt_at) == (PARKED, 2, None)
    assert parked.reason == LONG[:TEXT_LIMIT]
    assert (parked.parked_at, parked.updated_at) == (T1, T1)
    assert appointment(ledger, "a02").attempts == 7
    note(ledger, {"a01": 6}, now=T2)
    with ledger.begin() as tx:
        assert not tx.appointments.park("a01", reason="late", now=T3, event_id=5)
    assert appointment(ledger, "a01").state == PENDING


def test_unknown_appointments(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        a = tx.appointments
        with pytest.raises(LookupError):
            a.mark_synced("zz9", event_id=1, session_id=None, host_external_id=None, now=T0)
        with pytest.raises(LookupError):
            a.mark_skipped("zz9", event_id=1, reason="r", now=T0)
        with pytest.raises(LookupError):
            a.schedule_retry("zz9", attempts=1, next_attempt_at=T1, reason="r", now=T0)
        with pytest.raises(LookupError):
            a.park("zz9", reason="r", now=T0)
        with pytest.raises(LookupError):
            a.set_session("zz9", session_id=1, host_external_id="prov-001", now=T0)
        assert not a.unpark("zz9", T0)
        assert not a.forget_session("zz9", 1, now=T0)


def test_unpark_and_unpark_all(ledger: Ledger) -> None:
    note(ledger, {"a01": 1, "a02": 1, "a03": 1})
    with ledger.begin() as tx:
        for aid in ("a01", "a02"):
            tx.appointments.park(aid, reason="bad", attempts=5, now=T1)
    with ledger.begin() as tx:
        assert not tx.appointments.unpark("a03", T2)  # pending, not parked
        assert tx.appointments.unpark("a01", T2)
        assert not tx.appointments.unpark("a01", T2)
    record = appointment(ledger, "a01")
    assert (record.state, record.attempts, record.reason) == (PENDING, 0, None)
    assert (record.parked_at, record.next_attempt_at, record.updated_at) == (None, None, T2)
    with ledger.begin() as tx:
        assert tx.appointments.unpark_all(T3) == 1
        assert tx.appointments.unpark_all(T3) == 0
    assert appointment(ledger, "a02").state == PENDING


def test_set_and_forget_session(ledger: Ledger) -> None:
    note(ledger, {"a01": 1})
    with ledger.begin() as tx:
        tx.appointments.set_session("a01", session_id=50001, host_external_id="prov-001", now=T1)
    record = appointment(ledger, "a01")
    assert (record.session_id, record.host_external_id, record.updated_at) == (
        50001,
        "prov-001",
        T1,
    )
    with ledger.begin() as tx:
        assert not tx.appointments.forget_session("a01", 50002, now=T2)
    assert appointment(ledger, "a01").session_id == 50001
    with ledger.begin() as tx:
        assert tx.appointments.forget_session("a01", 50001, now=T2)
    record = appointment(ledger, "a01")
    assert (record.session_id, record.host_external_id, record.updated_at) == (None, None, T2)


# --- appointments: due work and reports -----------------------------------------------------------


def test_due_orders_by_id_honours_back_off_and_pages(ledger: Ledger) -> None:
    note(ledger, {f"a{i:02d}": i for i in range(1, 8)})
    with ledger.begin() as tx:
        a = tx.appointments
        a.schedule_retry("a02", attempts=1, next_attempt_at=T2, reason="later", now=T0)
        a.schedule_retry("a03", attempts=1, next_attempt_at=T1, reason="now", now=T0)
        a.mark_skipped("a04", event_id=4, reason="fulfilled", now=T0)
        a.park("a05", reason="bad", now=T0)
    with ledger.begin() as tx:
        due = [r.appointment_id for r in tx.appointments.due(T1, 10)]
        # a02 waits until T2; a03's back-off ends exactly now; a04 and a05 are settled.
        assert due == ["a01", "a03", "a06", "a07"]
        assert [r.appointment_id for r in tx.appointments.due(T2, 10)] == [
            "a01",
            "a02",
            "a03",
            "a06",
            "a07",
        ]
        first = tx.appointments.due(T1, 2)
        assert [r.appointment_id for r in first] == ["a01", "a03"]
        second = tx.appointments.due(T1, 2, after_appointment_id=first[-1].appointment_id)
        assert [r.appointment_id for r in second] == ["a06", "a07"]
        assert tx.appointments.due(T1, 2, after_appointment_id="a07") == []
        assert tx.appointments.due(T1, 10, after_appointment_id="a00")[0].appointment_id == "a01"


def test_counts_parked_and_pending(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        assert tx.appointments.counts_by_state() == {
            PENDING: 0,
            SYNCED: 0,
            PARKED: 0,
            SKIPPED: 0,
        }
        assert tx.appointments.oldest_pending_since() is None
        assert tx.appointments.pending_count() == 0
        assert tx.appointments.parked() == []
    note(ledger, {"a01": 1, "a02": 1, "a03": 1}, now=T0)
    note(ledger, {"a04": 1, "a05": 1}, now=T1)
    with ledger.begin() as tx:
        a = tx.appointments
        a.park("a03", reason="bad", now=T2)
        a.park("a02", reason="bad", now=T1)
        a.park("a01", reason="bad", now=T2)
        a.mark_skipped("a05", event_id=1, reason="noshow", now=T2)
    with ledger.begin() as tx:
        a = tx.appointments
        assert a.counts_by_state() == {PENDING: 1, SYNCED: 0, PARKED: 3, SKIPPED: 1}
        # Longest parked first, then by id.
        assert [r.appointment_id for r in a.parked()] == ["a02", "a01", "a03"]
        assert [r.appointment_id for r in a.parked(limit=2)] == ["a02", "a01"]
        assert a.pending_count() == 1
        assert a.oldest_pending_since() == T1
    with ledger.begin() as tx:
        tx.appointments.unpark("a03", T3)
    with ledger.begin() as tx:
        assert tx.appointments.oldest_pending_since() == T1
        assert tx.appointments.pending_count() == 2


def test_retrying_lists_failed_pending_soonest_first_and_keeps_their_waiting_since(
    ledger: Ledger,
) -> None:
    note(ledger, {"a01": 1, "a02": 1, "a03": 1}, now=T0)
    with ledger.begin() as tx:
        a = tx.appointments
        assert a.retrying() == []
        a.schedule_retry("a02", attempts=3, next_attempt_at=T2, reason="503", now=T1, event_id=1)
        a.schedule_retry("a01", attempts=9, next_attempt_at=T3, reason="503", now=T2, event_id=1)
    with ledger.begin() as tx:
        a = tx.appointments
        retrying = a.retrying()
        assert [(r.appointment_id, r.attempts, r.next_attempt_at) for r in retrying] == [
            ("a02", 3, T2),
            ("a01", 9, T3),
        ]
        assert [r.appointment_id for r in a.retrying(limit=1)] == ["a02"]
        # A retry is no newer row: the oldest pending change has been waiting since T0.
        assert a.oldest_pending_since() == T0


# --- operations ----------------------------------------------------------------------------------


def test_the_journal_records_intents_and_results(ledger: Ledger) -> None:
    first = intent(ledger, "a01")
    second = intent(ledger, "a01", op="add_participant", session_id=50001)
    other = intent(ledger, "a02")
    assert first < second < other
    with ledger.begin() as tx:
        ops = tx.operations
        ops.record_result(first, state=APPLIED, detail=None, session_id=50001, now=T1)
        ops.record_result(second, state=FAILED, detail=LONG, now=T2)
    with ledger.begin() as tx:
        journal = tx.operations.of_appointment("a01")
    assert [o.id for o in journal] == [first, second]
    created, added = journal
    assert (created.op, created.state, created.session_id) == ("create", APPLIED, 50001)
    assert (created.event_id, created.attempt, created.pid) == (1, 1, 4242)
    assert (created.started_at, created.finished_at, created.detail) == (T0, T1, None)
    # No session id given: the intent's stays.
    assert (added.state, added.session_id, added.detail) == (FAILED, 50001, LONG[:TEXT_LIMIT])
    with ledger.begin() as tx:
        with pytest.raises(ValueError, match="outcome"):
            tx.operations.record_result(other, state=INTENT, detail=None, now=T1)
        with pytest.raises(ValueError, match="outcome"):
            tx.operations.record_result(other, state="done", detail=None, now=T1)
        with pytest.raises(LookupError):
            tx.operations.record_result(other + 1000, state=APPLIED, detail=None, now=T1)
        assert tx.operations.of_appointment("zz9") == []


def test_open_intents_and_their_resolution(ledger: Ledger) -> None:
    open_a = intent(ledger, "a01")
    ambiguous_a = intent(ledger, "a01")
    done_a = intent(ledger, "a01")
    failed_b = intent(ledger, "a02")
    open_c = intent(ledger, "a03")
    with ledger.begin() as tx:
        ops = tx.operations
        ops.record_result(ambiguous_a, state=AMBIGUOUS, detail="timeout", now=T1)
        ops.record_result(done_a, state=APPLIED, detail=None, now=T1)
        ops.record_result(failed_b, state=FAILED, detail="400", now=T1)
    with ledger.begin() as tx:
        ops = tx.operations
        assert [o.id for o in ops.open_intents()] == [open_a, ambiguous_a, open_c]
        assert ops.with_open(["a01", "a02", "a03", "a01", "zz9"]) == {"a01", "a03"}
        assert ops.with_open([]) == set()
        assert ops.resolve_open("a01", T2) == 2
        assert ops.resolve_open("a01", T2) == 0
    with ledger.begin() as tx:
        ops = tx.operations
        assert [o.id for o in ops.open_intents()] == [open_c]
        states = {o.id: (o.state, o.finished_at, o.detail) for o in ops.of_appointment("a01")}
    assert states[open_a] == (RESOLVED, T2, None)
    assert states[ambiguous_a] == (RESOLVED, T2, "timeout")
    assert states[done_a] == (APPLIED, T1, None)


# --- applied state ------------------------------------------------------------------------------


def test_applied_state_is_kept_and_the_time_sent_goes_with_the_session(ledger: Ledger) -> None:
    note(ledger, {"a01": 1, "a02": 1})
    with ledger.begin() as tx:
        tx.appointments.set_session("a01", session_id=50001, host_external_id="prov-001", now=T0)
        tx.appointments.record_applied(
            "a01", external_session_id="old-a01", sent_schedule_ts=T2, now=T1
        )
        with pytest.raises(LookupError):
            tx.appointments.record_applied(
                "zz9", external_session_id="x", sent_schedule_ts=None, now=T1
            )
    with ledger.begin() as tx:
        got = tx.appointments.get("a01")
        assert got is not None
        assert (got.external_session_id, got.sent_schedule_ts, got.updated_at) == (
            "old-a01",
            T2,
            T1,
        )
        assert tx.appointments.forget_session("a01", 50001, now=T2)
    with ledger.begin() as tx:
        got = tx.appointments.get("a01")
        assert got is not None
        # the time sent was the cancelled session's; the ExternalSessionId stays the appointment's
        assert (got.session_id, got.external_session_id, got.sent_schedule_ts) == (
            None,
            "old-a01",
            None,
        )


def test_held_lists_the_skips_held_back_newest_first(ledger: Ledger) -> None:
    note(ledger, {"a01": 1, "a02": 1, "a03": 1, "a04": 1})
    with ledger.begin() as tx:
        tx.appointments.mark_skipped("a01", event_id=1, reason=f"{HELD_PREFIX} x", now=T1)
        tx.appointments.mark_skipped("a02", event_id=1, reason="status noshow", now=T1)
        tx.appointments.mark_skipped("a03", event_id=1, reason=f"{HELD_PREFIX} y", now=T2)
        tx.appointments.park("a04", reason=f"{HELD_PREFIX} not a skip", now=T3)
    with ledger.begin() as tx:
        assert [r.appointment_id for r in tx.appointments.held()] == ["a03", "a01"]
        assert [r.appointment_id for r in tx.appointments.held(1)] == ["a03"]


def test_put_keeps_every_field_sent(ledger: Ledger) -> None:
    full = ParticipantRecord(
        "a01",
        "g-1",
        50001,
        700001,
        -1,
        T0,
        deliver="E",
        securevideo_user_id="77",
        name_fp="n" * 16,
        email_fp="e" * 16,
        sms_fp="s" * 16,
        time_zone_windows_id="Eastern Standard Time",
        svc_id=1037,
        deposit="20.00",
    )
    with ledger.begin() as tx:
        tx.participants.put(full)
        tx.participants.put(ParticipantRecord("a01", "g-2", 50001, 700002, None, T0))
    with ledger.begin() as tx:
        assert tx.participants.of_appointments(["a01"])["a01"]["g-1"] == full
        changed = ParticipantRecord("a01", "g-1", 50001, 700003, 0, T1, deliver="N")
        tx.participants.put(changed)
    with ledger.begin() as tx:
        found = tx.participants.of_appointments(["a01"])["a01"]
    assert found == {
        "g-1": changed,
        "g-2": ParticipantRecord("a01", "g-2", 50001, 700002, None, T0),
    }


# --- participants -------------------------------------------------------------------------------


def test_participants_upsert_delete_and_replace(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        p = tx.participants
        p.upsert("a01", "g1", session_id=50001, participation_id=None, packet_id=None, now=T0)
        p.upsert("a01", "g2", session_id=50001, participation_id=700002, packet_id=3, now=T0)
        p.upsert("a01", "g1", session_id=50001, participation_id=700001, packet_id=9, now=T1)
        p.upsert("a02", "g1", session_id=50002, participation_id=700005, packet_id=None, now=T0)
    with ledger.begin() as tx:
        found = tx.participants.of_appointments(["a01", "zz9"])
    assert set(found) == {"a01", "zz9"}
    assert found["zz9"] == {}
    assert found["a01"]["g1"] == ParticipantRecord("a01", "g1", 50001, 700001, 9, T1)
    assert found["a01"]["g2"] == ParticipantRecord("a01", "g2", 50001, 700002, 3, T0)
    with ledger.begin() as tx:
        tx.participants.delete("a01", "g2")
        tx.participants.delete("a01", "nobody")
    with ledger.begin() as tx:
        assert set(tx.participants.of_appointments(["a01"])["a01"]) == {"g1"}
        tx.participants.replace(
            "a01",
            [
                # The record's own appointment id is not what counts: the argument is.
                ParticipantRecord("ignored", "g3", 50009, 700010, None, T2),
                ParticipantRecord("a01", "g4", 50009, 700011, 1, T2),
            ],
        )
    with ledger.begin() as tx:
        found = tx.participants.of_appointments(["a01", "a02"])
    assert found["a01"] == {
        "g3": ParticipantRecord("a01", "g3", 50009, 700010, None, T2),
        "g4": ParticipantRecord("a01", "g4", 50009, 700011, 1, T2),
    }
    assert set(found["a02"]) == {"g1"}
    with ledger.begin() as tx:
        tx.participants.delete_all_of("a01")
        tx.participants.replace("a03", [ParticipantRecord("a03", "g1", 50003, 700020, None, T3)])
        tx.participants.replace("a04", [])
    with ledger.begin() as tx:
        found = tx.participants.of_appointments(["a01", "a02", "a03", "a04"])
    assert (found["a01"], found["a04"]) == ({}, {})
    assert set(found["a02"]) == {"g1"}
    assert found["a03"]["g1"].participation_id == 700020


# --- leases --------------------------------------------------------------------------------------


A = LeaseHolder("host-a:1:aaaa", "host-a", 1, "boot/100")
B = LeaseHolder("host-b:2:bbbb", "host-b", 2, "boot/200")


def test_a_lease_is_held_until_it_expires(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        leases = tx.leases
        assert leases.try_acquire("sync", A, 30)
        assert not leases.try_acquire("sync", B, 30)
        assert leases.try_acquire("other", B, 30)
        first = leases.current("sync")
    assert first is not None and first.holder == A and not first.expired
    assert first.acquired_at is not None
    assert first.expires_at - first.acquired_at == timedelta(seconds=30)
    # The database's clock, read as the lease was: within the TTL of its taking.
    assert first.acquired_at <= first.database_now < first.expires_at
    with ledger.begin() as tx:
        # Renewed by its holder: a later expiry, the same since.
        assert tx.leases.try_acquire("sync", A, 60)
        renewed = tx.leases.current("sync")
        assert tx.leases.current("nothing") is None
    assert renewed is not None and renewed.acquired_at == first.acquired_at
    assert renewed.expires_at > first.expires_at
    with ledger.begin() as tx:
        assert not tx.leases.release("sync", B.holder)
        assert not tx.leases.release("nothing", A.holder)
        assert tx.leases.release("sync", A.holder)
        assert not tx.leases.release("sync", A.holder)
        assert tx.leases.try_acquire("sync", B, 30)


def test_an_expired_lease_is_taken_by_the_database_clock(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        assert tx.leases.try_acquire("sync", A, 0.5)
    # The real wait, with a second of margin: nothing here moves a clock or ages a row.
    time.sleep(1.5)
    with ledger.begin() as tx:
        assert tx.leases.current("sync").expired  # type: ignore[union-attr]
        assert tx.leases.try_acquire("sync", B, 30)
        taken = tx.leases.current("sync")
    assert taken is not None and taken.holder == B and not taken.expired


def test_a_dead_holder_is_taken_over_whatever_its_expiry(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        assert tx.leases.try_acquire("sync", A, 600)
        # Only from the holder named: a taker that lost the race to another gets nothing.
        assert not tx.leases.take_over("sync", B.holder, B, 30)
        assert not tx.leases.take_over("nothing", A.holder, B, 30)
        assert tx.leases.take_over("sync", A.holder, B, 30)
        taken = tx.leases.current("sync")
        assert not tx.leases.try_acquire("sync", A, 30)
    assert taken is not None and taken.holder == B
    assert taken.expires_at - taken.database_now <= timedelta(seconds=30)


# --- visit outcomes ------------------------------------------------------------------------------


def outcome(
    aid: str,
    session_id: int,
    *,
    schedule_ts: datetime | None = None,
    billable_ts: datetime | None = None,
    final_at: datetime | None = None,
) -> SessionOutcomeRecord:
    return SessionOutcomeRecord(
        appointment_id=aid,
        session_id=session_id,
        host_external_id="prov-001",
        schedule_ts=schedule_ts,
        schedule_type="Scheduled",
        billable_ts=billable_ts,
        duration_minutes=None if billable_ts is None else 25,
        wait_time=None if billable_ts is None else 3,
        billable_status_cd=None if billable_ts is None else "BILL",
        final_at=final_at,
        changed_at=T0,
    )


def manage(
    ledger: Ledger,
    aid: str,
    session_id: int | None,
    host: str | None = "prov-001",
    schedule_ts: datetime | None = None,
) -> None:
    note(ledger, {aid: 1})
    with ledger.begin() as tx:
        tx.appointments.mark_synced(
            aid,
            event_id=1,
            session_id=session_id,
            host_external_id=host,
            now=T0,
            schedule_ts=schedule_ts,
        )


def test_outcome_targets(ledger: Ledger) -> None:
    s1 = datetime(2030, 1, 8, 10, 0)
    s2 = datetime(2030, 1, 8, 11, 0)
    manage(ledger, "a01", 50001, schedule_ts=s1)  # no outcome yet
    manage(ledger, "a02", 50002)  # an outcome of this session, not final: its time is used
    manage(ledger, "a03", 50003, schedule_ts=s1)  # final: done
    manage(ledger, "a04", 50004)  # the outcome is of an earlier session: its time is not used
    manage(ledger, "a05", 50005, host=None)  # no host to read it from
    manage(ledger, "a06", None)  # no session
    with ledger.begin() as tx:
        v = tx.visits
        v.put_session(outcome("a02", 50002, schedule_ts=s2))
        v.put_session(outcome("a03", 50003, schedule_ts=s1, billable_ts=s1, final_at=T2))
        v.put_session(outcome("a04", 49999, schedule_ts=s2, final_at=T2))
    with ledger.begin() as tx:
        assert tx.visits.targets() == [
            OutcomeTarget("a01", 50001, "prov-001", s1),
            OutcomeTarget("a02", 50002, "prov-001", s2),
            OutcomeTarget("a04", 50004, "prov-001", None),
        ]


def test_session_and_participant_outcomes(ledger: Ledger) -> None:
    first = outcome("a01", 50001, schedule_ts=T1)
    later = outcome("a01", 50001, schedule_ts=T1, billable_ts=T2, final_at=T3)
    guest = ParticipantOutcomeRecord("a01", "g1", 50001, 700002, "Confirmed", None, T0)
    with ledger.begin() as tx:
        v = tx.visits
        v.put_session(first)
        v.put_session(later)
        v.put_session(outcome("a02", 50002))
        v.put_participant(guest)
        v.put_participant(ParticipantOutcomeRecord("a01", "g1", 50001, 700002, "Declined", T2, T3))
        v.put_participant(ParticipantOutcomeRecord("a01", "g2", 50001, 700003, None, None, T0))
        v.put_participant(ParticipantOutcomeRecord("a02", "g1", 50002, 700009, None, None, T0))
    with ledger.begin() as tx:
        v = tx.visits
        assert v.sessions(["a01", "zz9"]) == {"a01": later}
        found = v.participants(["a01", "zz9"])
        assert found["zz9"] == {}
        assert found["a01"]["g1"] == ParticipantOutcomeRecord(
            "a01", "g1", 50001, 700002, "Declined", T2, T3
        )
        assert set(found["a01"]) == {"g1", "g2"}
        assert v.delete_participants("a01", ["g2", "nobody", "g2"]) == 1
        assert v.delete_participants("a01", []) == 0
    with ledger.begin() as tx:
        assert set(tx.visits.participants(["a01", "a02"])["a01"]) == {"g1"}
        assert set(tx.visits.participants(["a02"])["a02"]) == {"g1"}


def test_appointments_of_sessions(ledger: Ledger) -> None:
    manage(ledger, "a01", 50001)
    created = intent(ledger, "a02", session_id=None)
    failed = intent(ledger, "a03", session_id=None)
    stale = intent(ledger, "a04", session_id=None)
    with ledger.begin() as tx:
        ops = tx.operations
        ops.record_result(created, state=APPLIED, detail=None, session_id=50002, now=T1)
        ops.record_result(failed, state=FAILED, detail=None, session_id=50003, now=T1)
        # An older create of a04 made the session a01 manages now: the current one wins.
        ops.record_result(stale, state=APPLIED, detail=None, session_id=50001, now=T1)
        tx.visits.put_session(outcome("a05", 50005))
    with ledger.begin() as tx:
        found = tx.visits.appointments_of_sessions([50001, 50002, 50003, 50005, 50009, 50001])
    assert found == {50001: "a01", 50002: "a02", 50005: "a05"}


def test_booked_between(ledger: Ledger) -> None:
    day = datetime(2030, 1, 8)
    manage(ledger, "a01", 50001, schedule_ts=day + timedelta(hours=10))
    manage(ledger, "a02", 50002, schedule_ts=day + timedelta(hours=9))
    manage(ledger, "a03", 50003, schedule_ts=day + timedelta(hours=9))
    manage(ledger, "a04", 50004, schedule_ts=day + timedelta(days=1))  # the end is excluded
    manage(ledger, "a05", 50005, schedule_ts=day)  # the start is included
    manage(ledger, "a06", 50006)  # its time only from the outcome of the same session
    manage(ledger, "a07", 50007)  # the outcome is of another session: no time known
    manage(ledger, "a08", None, schedule_ts=day + timedelta(hours=8))  # no session managed
    with ledger.begin() as tx:
        v = tx.visits
        v.put_session(outcome("a01", 50001, billable_ts=day + timedelta(hours=10, minutes=2)))
        v.put_session(outcome("a02", 49999, billable_ts=day + timedelta(hours=9)))
        v.put_session(outcome("a06", 50006, schedule_ts=day + timedelta(hours=12)))
        v.put_session(outcome("a07", 49998, schedule_ts=day + timedelta(hours=12)))
    with ledger.begin() as tx:
        booked = tx.visits.booked_between(day, day + timedelta(days=1))
    assert booked == [
        BookedAppointment("a05", 50005, day, None),
        BookedAppointment("a02", 50002, day + timedelta(hours=9), None),
        BookedAppointment("a03", 50003, day + timedelta(hours=9), None),
        BookedAppointment(
            "a01", 50001, day + timedelta(hours=10), day + timedelta(hours=10, minutes=2)
        ),
        BookedAppointment("a06", 50006, day + timedelta(hours=12), None),
    ]


# --- the unit of work ------------------------------------------------------------------------


class BoomError(Exception):
    pass


def test_join_links_put_replace_delete(ledger: Ledger) -> None:
    url = "https://hub.securevideo.com/Pass/Join/"
    with ledger.begin() as tx:
        assert tx.links.all() == []
        tx.links.put(JoinLinkRecord("a02", "g1", 50002, 700009, url + "2", T0))
        tx.links.put(JoinLinkRecord("a01", "g2", 50001, 700003, url + "3?passkey=k", T0))
        tx.links.put(JoinLinkRecord("a01", "g1", 50001, 700002, url + "1", T0))
    with ledger.begin() as tx:  # a new session: the row is replaced, not added
        tx.links.put(JoinLinkRecord("a01", "g1", 50005, 700011, url + "5", T1))
        assert tx.links.delete("a02", "g1") is True
        assert tx.links.delete("a02", "g1") is False
        assert tx.links.delete("a09", "g1") is False
    with ledger.begin() as tx:
        assert tx.links.all() == [
            JoinLinkRecord("a01", "g1", 50005, 700011, url + "5", T1),
            JoinLinkRecord("a01", "g2", 50001, 700003, url + "3?passkey=k", T0),
        ]
    with pytest.raises(RuntimeError), ledger.begin() as tx:
        tx.links.put(JoinLinkRecord("a03", "g1", 50003, 1, url + "9", T0))
        raise RuntimeError
    with ledger.begin() as tx:
        assert [r.appointment_id for r in tx.links.all()] == ["a01", "a01"]


def test_a_block_that_raises_leaves_nothing_behind(ledger: Ledger) -> None:
    note(ledger, {"a01": 1})
    with pytest.raises(BoomError), ledger.begin() as tx:
        tx.cursor.advance(40)
        tx.appointments.note_events({"a02": 2}, now=T1)
        tx.appointments.park("a01", reason="bad", now=T1)
        tx.operations.record_intent(
            appointment_id="a01",
            event_id=1,
            op="create",
            session_id=None,
            participant_external_id=None,
            attempt=1,
            now=T1,
            pid=None,
        )
        tx.participants.upsert(
            "a01", "g1", session_id=1, participation_id=None, packet_id=None, now=T1
        )
        tx.leases.try_acquire("sync", A, 60)
        tx.visits.put_session(outcome("a01", 50001))
        # Inside the transaction its own writes are visible.
        assert tx.appointments.get("a01") is not None
        assert tx.appointments.get("a01").state == PARKED  # type: ignore[union-attr]
        raise BoomError
    with ledger.begin() as tx:
        assert tx.cursor.get() == 0
        assert tx.appointments.get("a02") is None
        assert tx.appointments.get("a01").state == PENDING  # type: ignore[union-attr]
        assert tx.operations.of_appointment("a01") == []
        assert tx.participants.of_appointments(["a01"]) == {"a01": {}}
        assert tx.visits.sessions(["a01"]) == {}
        # The lease was never taken, so another holder gets it.
        assert tx.leases.try_acquire("sync", B, 60)


def test_timestamps_are_stored_as_naive_utc(ledger: Ledger) -> None:
    plus_two = timezone(timedelta(hours=2))
    aware = (T0 + timedelta(hours=2)).replace(tzinfo=plus_two)
    note(ledger, {"a01": 1}, now=aware)
    with ledger.begin() as tx:
        tx.appointments.schedule_retry(
            "a01",
            attempts=1,
            next_attempt_at=(T1 + timedelta(hours=2)).replace(tzinfo=plus_two),
            reason="r",
            now=aware,
        )
    record = appointment(ledger, "a01")
    assert (record.created_at, record.next_attempt_at) == (T0, T1)
    assert record.created_at.tzinfo is None
    with ledger.begin() as tx:
        assert [r.appointment_id for r in tx.appointments.due(aware, 10)] == []
        later = (T1 + timedelta(hours=2)).replace(tzinfo=plus_two)
        assert [r.appointment_id for r in tx.appointments.due(later, 10)] == ["a01"]


# --- drift ---------------------------------------------------------------------------------------


def test_drift_is_noted_once_per_kind_and_cleared(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        assert tx.drift.note(DriftRecord("B", "time_moved", 7, T1))
        assert tx.drift.note(DriftRecord("A", "guest_removed", 5, T2))
        assert tx.drift.note(DriftRecord("A", "cancelled", 5, T2))
    with ledger.begin() as tx:
        # seen again later: the first sighting stands
        assert not tx.drift.note(DriftRecord("B", "time_moved", 7, T2))
        assert tx.drift.count() == 2
        assert tx.drift.current() == [
            DriftRecord("B", "time_moved", 7, T1),
            DriftRecord("A", "cancelled", 5, T2),
            DriftRecord("A", "guest_removed", 5, T2),
        ]
        assert tx.drift.current(limit=1) == [DriftRecord("B", "time_moved", 7, T1)]
        assert tx.drift.of_appointments(["A", "C"]) == {
            "A": [DriftRecord("A", "cancelled", 5, T2), DriftRecord("A", "guest_removed", 5, T2)]
        }
    with ledger.begin() as tx:
        assert tx.drift.clear("A", ["cancelled", "extra_session"]) == 1
        assert tx.drift.clear("B") == 1
        assert tx.drift.clear("B") == 0
    with ledger.begin() as tx:
        assert tx.drift.current() == [DriftRecord("A", "guest_removed", 5, T2)]
        assert tx.drift.count() == 1


def test_drift_noted_in_a_rolled_back_transaction_is_gone(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.begin() as tx:
        tx.drift.note(DriftRecord("A", "cancelled", 5, T1))
        raise RuntimeError("boom")
    with ledger.begin() as tx:
        assert tx.drift.current() == []


# --- the HL7 inbox ------------------------------------------------------------------------------


def message(control_id: str, appointment_id: str = "A1", minute: int = 0) -> InboxMessage:
    return InboxMessage(
        control_id=control_id,
        appointment_id=appointment_id,
        message_type="S12",
        message_at=T0 + timedelta(minutes=minute),
        row=f'{{"appointment_id": "{appointment_id}", "control": "{control_id}"}}',
    )


def accept(ledger: Ledger, msg: InboxMessage, now: datetime = T0) -> tuple[str, int | None]:
    with ledger.begin() as tx:
        return tx.inbox.accept(msg, now=now)


def test_stored_once_by_control_id(ledger: Ledger) -> None:
    outcome, first = accept(ledger, message("M1"))
    assert outcome == "stored" and first is not None
    assert accept(ledger, message("M1")) == ("duplicate", None)
    with ledger.begin() as tx:
        assert tx.inbox.count() == 1
        assert tx.inbox.rows([first, first + 99]) == {first: message("M1").row}


def test_an_older_message_of_the_appointment_is_stale(ledger: Ledger) -> None:
    assert accept(ledger, message("M2", minute=5))[0] == "stored"
    assert accept(ledger, message("M1", minute=1)) == ("stale", None)
    # the same MSH-7 is not older; another appointment is not compared
    assert accept(ledger, message("M3", minute=5))[0] == "stored"
    assert accept(ledger, message("M4", "A2", minute=0))[0] == "stored"
    with ledger.begin() as tx:
        assert tx.inbox.count() == 3


def test_superseded_rows_are_kept_a_while_then_deleted(ledger: Ledger) -> None:
    _, first = accept(ledger, message("M1", minute=0))
    _, second = accept(ledger, message("M2", minute=1), now=T0)
    assert first is not None and second is not None and second > first
    kept = T0 + timedelta(seconds=SUPERSEDED_KEPT_SECONDS)
    accept(ledger, message("M3", "A2"), now=kept)
    with ledger.begin() as tx:
        assert set(tx.inbox.rows([first, second])) == {first, second}
    later = kept + timedelta(seconds=1)
    accept(ledger, message("M4", "A3"), now=later)
    with ledger.begin() as tx:
        assert set(tx.inbox.rows([first, second])) == {second}
        assert tx.inbox.count() == 3


def test_a_rolled_back_accept_stores_nothing(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.begin() as tx:
        tx.inbox.accept(message("M1"), now=T0)
        raise RuntimeError("the commit never happens")
    assert accept(ledger, message("M1"))[0] == "stored"


def test_an_outbox_rewind_keeps_inbox_event_ids(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"E1": 5, "H1": INBOX_EVENT_BASE + 1}, now=T0)
        assert tx.appointments.rebase_events(T0) == 2
    with ledger.begin() as tx:
        assert tx.appointments.last_events(["E1", "H1"]) == {"E1": 0, "H1": INBOX_EVENT_BASE + 1}
