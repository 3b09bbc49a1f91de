"""Visit outcomes: the migration on every backend, the repository, the pure core, and the collector
end to end against the emulator (RSVPs, connections, billing, then history once a session ages out).
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import World, guest, row, world
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session, sessionmaker

from syncd.adapters.dberrors import classify
from syncd.adapters.ledger import (
    OutcomeTarget,
    ParticipantOutcomeRecord,
    SessionOutcomeRecord,
    SqlTransaction,
    create_ledger_engine,
    current_revision,
    downgrade,
    head_revision,
    migrate,
)
from syncd.adapters.securevideo import history_record
from syncd.adapters.securevideo.wire import HistoryJson
from syncd.core.domain import RemoteParticipant, RemoteSession
from syncd.core.errors import TemporaryError
from syncd.emulator import Emulator
from syncd.ports.securevideo import HistoryPage, HistoryRecord
from syncd.runtime.app import App
from syncd.runtime.cli import main
from syncd.runtime.daemon import PassRunner, run_daemon
from syncd.runtime.log import configure_logging
from syncd.sync.visits import (
    CollectionReport,
    OutcomeCollector,
    OutcomeJob,
    history_window,
    observe_participants,
    observe_session,
    settle,
)

T = datetime(2027, 2, 10, 9, 0)  # America/New_York
T_UTC = datetime(2027, 2, 10, 14, 0)
T0 = datetime(2027, 1, 1, 12, 0)

VIEW_COLUMNS = [
    "appointment_id",
    "session_id",
    "host_external_id",
    "schedule_ts",
    "schedule_type",
    "participant_external_id",
    "participation_id",
    "rsvp",
    "connection_ts",
    "billable_ts",
    "duration_minutes",
    "wait_time",
    "billable_status_cd",
    "final_at",
    "changed_at",
]


@contextmanager
def tx(sessions: sessionmaker[Session]) -> Iterator[SqlTransaction]:
    # The repositories on the session's connection; the session frames the transaction.
    with sessions.begin() as session:
        yield SqlTransaction(session.connection())


def view(engine: Engine, appointment_id: str | None = None) -> list[dict[str, Any]]:
    query = "SELECT * FROM visit_outcome"
    params: dict[str, str] = {}
    if appointment_id is not None:
        query += " WHERE appointment_id = :a"
        params["a"] = appointment_id
    with engine.connect() as conn:
        rows = conn.execute(
            text(query + " ORDER BY appointment_id, participant_external_id"), params
        )
        return [{k: _timestamp(k, v) for k, v in r._mapping.items()} for r in rows]


def _timestamp(column: str, value: Any) -> Any:
    # A view has no declared types: SQLite hands its timestamps back as the stored text.
    if isinstance(value, str) and column.endswith(("_ts", "_at")):
        return datetime.fromisoformat(value)
    return value


def session_row(aid: str = "a1", sid: int = 9, **values: Any) -> SessionOutcomeRecord:
    base: dict[str, Any] = {
        "appointment_id": aid,
        "session_id": sid,
        "host_external_id": "prov-001",
        "schedule_ts": T0,
        "schedule_type": "Scheduled",
        "billable_ts": None,
        "duration_minutes": None,
        "wait_time": None,
        "billable_status_cd": None,
        "final_at": None,
        "changed_at": T0,
    }
    return SessionOutcomeRecord(**(base | values))


def participant_row(
    aid: str = "a1", ext: str = "pat-1", sid: int = 9, **values: Any
) -> ParticipantOutcomeRecord:
    base: dict[str, Any] = {
        "appointment_id": aid,
        "participant_external_id": ext,
        "session_id": sid,
        "participation_id": 700001,
        "rsvp": "Unknown",
        "connection_ts": None,
        "changed_at": T0,
    }
    return ParticipantOutcomeRecord(**(base | values))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main()`` points syncd's log handler at pytest's capture stream, which is closed after the
    test: put the previous handlers back, so later tests do not log into a closed file."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


# --- the migration, on every backend ------------------------------------------------------------


def test_migration_0002_up_down_up_keeps_appointments(fresh_ledger_url: str) -> None:
    engine = create_ledger_engine(fresh_ledger_url)
    try:
        migrate(engine, "0001_initial")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO appointment (appointment_id, last_event_id, state, attempts, "
                    "session_id, host_external_id, created_at, updated_at) "
                    "VALUES ('a1', 3, 'synced', 0, 9, 'prov-001', :t, :t)"
                ),
                {"t": T0},
            )
        migrate(engine)
        assert current_revision(engine) == head_revision()
        inspector = inspect(engine)
        assert "schedule_ts" in {c["name"] for c in inspector.get_columns("appointment")}
        assert "ix_appointment_schedule_ts" in {
            i["name"] for i in inspector.get_indexes("appointment")
        }
        assert "visit_outcome" in inspector.get_view_names()
        assert [c["name"] for c in inspector.get_columns("visit_outcome")] == VIEW_COLUMNS
        with engine.begin() as conn:
            kept = conn.execute(
                text("SELECT last_event_id, session_id, schedule_ts FROM appointment")
            ).one()
        assert tuple(kept) == (3, 9, None)

        downgrade(engine, "0001_initial")
        inspector = inspect(engine)
        assert "schedule_ts" not in {c["name"] for c in inspector.get_columns("appointment")}
        assert not {"session_outcome", "participant_outcome"} & set(inspector.get_table_names())
        assert "visit_outcome" not in inspector.get_view_names()
        # SQLite rebuilt the table in batch mode: its constraint and index must survive that.
        assert "ck_appointment_state" in {
            c["name"] for c in inspector.get_check_constraints("appointment")
        }
        assert "ix_appointment_state_next_attempt_at" in {
            i["name"] for i in inspector.get_indexes("appointment")
        }
        with engine.begin() as conn:
            assert conn.execute(text("SELECT session_id FROM appointment")).scalar_one() == 9

        migrate(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


# --- the repository, on every backend -----------------------------------------------------------


def settle_appointment(
    tx: SqlTransaction, aid: str, sid: int | None, when: datetime | None, event: int = 1
) -> None:
    tx.appointments.note_events({aid: event}, now=T0)
    tx.appointments.mark_synced(
        aid,
        event_id=event,
        session_id=sid,
        host_external_id="prov-001" if sid else None,
        now=T0,
        schedule_ts=when,
    )


def test_targets_are_managed_sessions_not_final_yet(
    ledger_sessions: sessionmaker[Session],
) -> None:
    with tx(ledger_sessions) as t:
        settle_appointment(t, "new", 1, T0)
        settle_appointment(t, "observed", 2, T0)
        settle_appointment(t, "final", 3, T0)
        settle_appointment(t, "rebooked", 4, T0 + timedelta(days=1))
        settle_appointment(t, "cancelled", None, None)
        settle_appointment(t, "legacy", 6, None)
        t.visits.put_session(session_row("observed", 2, schedule_ts=T0 + timedelta(hours=1)))
        t.visits.put_session(session_row("final", 3, final_at=T0))
        t.visits.put_session(session_row("rebooked", 40, final_at=T0))
        t.visits.put_session(session_row("legacy", 6, schedule_ts=T0 - timedelta(days=9)))
    with tx(ledger_sessions) as t:
        targets = t.visits.targets()
    assert targets == [
        OutcomeTarget("legacy", 6, "prov-001", T0 - timedelta(days=9)),
        OutcomeTarget("new", 1, "prov-001", T0),
        # the appointment's own time wins over an observed one
        OutcomeTarget("observed", 2, "prov-001", T0),
        # a new session: the old one's final row does not count, nor does its time
        OutcomeTarget("rebooked", 4, "prov-001", T0 + timedelta(days=1)),
    ]


def test_outcome_rows_upsert_delete_and_show_in_the_view(
    ledger_sessions: sessionmaker[Session], ledger_engine: Engine
) -> None:
    with tx(ledger_sessions) as t:
        settle_appointment(t, "a1", 9, T0)
        t.visits.put_session(session_row())
        t.visits.put_participant(participant_row(ext="pat-1"))
        t.visits.put_participant(participant_row(ext="pat-2", participation_id=700002))
    later = T0 + timedelta(hours=1)
    with tx(ledger_sessions) as t:
        t.visits.put_session(session_row(billable_ts=later, billable_status_cd="BILL"))
        t.visits.put_participant(participant_row(ext="pat-1", rsvp="Confirmed", changed_at=later))
    with tx(ledger_sessions) as t:
        assert t.visits.sessions(["a1", "zz"]) == {
            "a1": session_row(billable_ts=later, billable_status_cd="BILL")
        }
        parts = t.visits.participants(["a1", "zz"])
        assert parts["zz"] == {}
        assert parts["a1"]["pat-1"].rsvp == "Confirmed"

    rows = view(ledger_engine, "a1")
    assert [(r["participant_external_id"], r["rsvp"]) for r in rows] == [
        ("pat-1", "Confirmed"),
        ("pat-2", "Unknown"),
    ]
    assert all(r["billable_status_cd"] == "BILL" and r["session_id"] == 9 for r in rows)
    # the row's changed_at is the later of the session's and the participant's
    assert [r["changed_at"] for r in rows] == [later, T0]

    with tx(ledger_sessions) as t:
        assert t.visits.delete_participants("a1", ["pat-1", "pat-2", "nobody"]) == 2
    (alone,) = view(ledger_engine, "a1")
    assert alone["participant_external_id"] is None and alone["session_id"] == 9


def test_sessions_map_to_appointments_through_every_record(
    ledger_sessions: sessionmaker[Session],
) -> None:
    with tx(ledger_sessions) as t:
        settle_appointment(t, "current", 10, T0)
        settle_appointment(t, "moved", 12, T0)
        # "moved" first had session 11, made by an applied create and since replaced
        op = t.operations.record_intent(
            appointment_id="moved",
            event_id=1,
            op="create",
            session_id=None,
            participant_external_id=None,
            attempt=1,
            now=T0,
            pid=None,
        )
        t.operations.record_result(op, state="applied", detail=None, session_id=11, now=T0)
        failed = t.operations.record_intent(
            appointment_id="ghost",
            event_id=1,
            op="create",
            session_id=None,
            participant_external_id=None,
            attempt=1,
            now=T0,
            pid=None,
        )
        t.operations.record_result(failed, state="failed", detail="400", session_id=13, now=T0)
        settle_appointment(t, "seen", 14, T0)
        t.visits.put_session(session_row("seen", 15))
    with tx(ledger_sessions) as t:
        found = t.visits.appointments_of_sessions([10, 11, 12, 13, 15, 99])
    assert found == {10: "current", 11: "moved", 12: "moved", 15: "seen"}


def test_booked_between(ledger_sessions: sessionmaker[Session]) -> None:
    feb = datetime(2027, 2, 1)
    with tx(ledger_sessions) as t:
        settle_appointment(t, "in", 1, feb + timedelta(days=3))
        settle_appointment(t, "edge", 2, feb)
        settle_appointment(t, "march", 3, datetime(2027, 3, 1))
        settle_appointment(t, "cancelled", None, None)
        settle_appointment(t, "legacy", 5, None)
        t.visits.put_session(
            session_row("legacy", 5, schedule_ts=feb + timedelta(days=5), billable_ts=feb)
        )
    with tx(ledger_sessions) as t:
        booked = t.visits.booked_between(feb, datetime(2027, 3, 1))
    assert [(b.appointment_id, b.session_id, b.billable_ts) for b in booked] == [
        ("edge", 2, None),
        ("in", 1, None),
        ("legacy", 5, feb),
    ]


# --- the functional core ------------------------------------------------------------------------


def remote(
    sid: int = 9,
    *,
    guests: tuple[RemoteParticipant, ...] = (),
    **values: Any,
) -> RemoteSession:
    host = RemoteParticipant(participation_id=1, external_id="prov-001")
    return RemoteSession(
        session_id=sid,
        external_session_id="a1",
        user_id=1001,
        schedule_ts=values.pop("schedule_ts", T0),
        schedule_type=values.pop("schedule_type", "Scheduled"),
        host_external_id="prov-001",
        participants=(host, *guests),
        **values,
    )


def test_observe_session_writes_only_changes_and_never_erases() -> None:
    first = observe_session(None, "a1", remote(), T0)
    assert first == session_row()
    assert observe_session(first, "a1", remote(), T0 + timedelta(hours=1)) is None

    later = T0 + timedelta(hours=2)
    billed = observe_session(
        first, "a1", remote(billable_ts=later, duration_minutes=5, billable_status_cd="BILL"), later
    )
    assert billed is not None
    assert (billed.billable_ts, billed.duration_minutes, billed.changed_at) == (later, 5, later)
    # The host reconnects: DurationMinutes is null for a while; what was seen stays.
    assert observe_session(billed, "a1", remote(billable_status_cd="BILL"), later) is None

    moved = observe_session(billed, "a1", remote(10), later)
    assert moved is not None
    assert (moved.session_id, moved.billable_ts, moved.duration_minutes) == (10, None, None)
    long_code = observe_session(None, "a1", remote(schedule_type="X" * 40), T0)
    assert long_code is not None and long_code.schedule_type == "X" * 16


def test_observe_participants_tracks_managed_guests_by_external_id() -> None:
    p1 = RemoteParticipant(participation_id=11, external_id="pat-1", rsvp="Confirmed")
    interpreter = RemoteParticipant(participation_id=12, external_id=None)
    p2 = RemoteParticipant(participation_id=13, external_id="pat-2", connection_ts=T0)
    writes, gone = observe_participants({}, "a1", remote(guests=(p1, interpreter, p2)), T0)
    assert [(w.participant_external_id, w.rsvp, w.connection_ts) for w in writes] == [
        ("pat-1", "Confirmed", None),
        ("pat-2", "Unknown", T0),
    ]
    assert gone == []

    previous = {w.participant_external_id: w for w in writes}
    previous["pat-9"] = participant_row(ext="pat-9")
    later = T0 + timedelta(minutes=5)
    p2_again = RemoteParticipant(participation_id=13, external_id="pat-2", connection_ts=later)
    writes, gone = observe_participants(previous, "a1", remote(guests=(p1, p2_again)), later)
    assert writes == []  # the first connection stays the first
    assert gone == ["pat-9"]

    # The same person in a new session starts afresh.
    writes, _ = observe_participants(previous, "a1", remote(10, guests=(p2_again,)), later)
    assert [(w.session_id, w.connection_ts) for w in writes] == [(10, later)]


def history(sid: int = 9, **values: Any) -> HistoryRecord:
    return history_record(HistoryJson.model_validate({"SessionId": sid, **values}))


def test_settle_takes_history_and_keeps_what_it_leaves_out() -> None:
    seen = session_row(billable_ts=T0, duration_minutes=20, wait_time=2, billable_status_cd="BILL")
    target = OutcomeTarget("a1", 9, "prov-001", T0)
    now = T0 + timedelta(days=3)
    final = settle(
        seen,
        target,
        history(BillableTs="2027-01-01T12:00:00", DurationMinutes=31, BillableStatusCd="COMP"),
        now,
    )
    assert (final.duration_minutes, final.wait_time, final.billable_status_cd) == (31, 2, "COMP")
    assert (final.final_at, final.changed_at) == (now, now)

    unchanged = settle(seen, target, history(DurationMinutes=20), now)
    assert (unchanged.final_at, unchanged.changed_at) == (now, T0)

    never_billable = settle(None, target, None, now)
    assert never_billable == session_row(schedule_type=None, final_at=now, changed_at=now)


def test_history_window_spans_early_joins_and_deactivation() -> None:
    targets = [OutcomeTarget("a", 1, "h", T0), OutcomeTarget("b", 2, "h", T0 + timedelta(days=3))]
    assert history_window(targets, [T0 - timedelta(days=4)]) == (
        date(2026, 12, 27),
        date(2027, 1, 6),
    )
    with pytest.raises(ValueError, match="no dates"):
        history_window([OutcomeTarget("c", 3, "h", None)], [])


# --- end to end against the emulator ------------------------------------------------------------


class EmulatorClock:
    """The collector sees the emulator's time, so ageing out follows the emulator's clock."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def now(self) -> datetime:
        return self.emulator.state.now()

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as w:
        yield w


def collector_for(w: World, app: App | None = None) -> OutcomeCollector:
    app = app or (w.apps[-1] if w.apps else w.app())
    return OutcomeCollector(ledger=app.ledger, gateway=app.gateway, clock=EmulatorClock(w.emulator))


def ledger_engine_of(w: World) -> Engine:
    return w.apps[-1].ledger.engine


def by_participant(w: World, aid: str) -> dict[str | None, dict[str, Any]]:
    return {r["participant_external_id"]: r for r in view(ledger_engine_of(w), aid)}


def test_outcomes_follow_rsvps_connections_billing_and_survive_ageing_out(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1), guest(2)]))
    w.run_pass()
    (session,) = w.live("A1")
    sid = session.session_id
    p1, p2 = (p.participation_id for p in session.participants[1:])
    with w.apps[-1].ledger.begin() as tx:
        appointment = tx.appointments.get("A1")
    assert appointment is not None and appointment.schedule_ts == T_UTC
    collector = collector_for(w)
    state = w.emulator.state

    state.set_clock(T_UTC - timedelta(days=2))
    first = collector.collect()
    assert (first.hosts_read, first.sessions_changed, first.participants_changed) == (1, 1, 2)
    rows = by_participant(w, "A1")
    assert set(rows) == {"pat-1", "pat-2"}
    assert {(r["rsvp"], r["connection_ts"], r["billable_ts"]) for r in rows.values()} == {
        ("Unknown", None, None)
    }
    assert rows["pat-1"]["schedule_ts"] == T_UTC and rows["pat-1"]["session_id"] == sid
    created = rows["pat-1"]["changed_at"]

    state.advance(timedelta(hours=1))
    again = collector.collect()
    assert (again.sessions_changed, again.participants_changed) == (0, 0)
    assert by_participant(w, "A1")["pat-1"]["changed_at"] == created

    # RSVPs
    w.emulator.set_rsvp(p1, "Confirmed")
    state.advance(timedelta(hours=1))
    collector.collect()
    w.emulator.set_rsvp(p2, "Declined")
    state.advance(timedelta(hours=1))
    collector.collect()
    rows = by_participant(w, "A1")
    assert (rows["pat-1"]["rsvp"], rows["pat-2"]["rsvp"]) == ("Confirmed", "Declined")
    assert rows["pat-1"]["changed_at"] == T_UTC - timedelta(days=2) + timedelta(hours=2)
    assert rows["pat-2"]["changed_at"] == T_UTC - timedelta(days=2) + timedelta(hours=3)

    # connections make it billable
    state.set_clock(T_UTC + timedelta(minutes=10))
    w.emulator.mark_connected(sid, p1, at=T_UTC + timedelta(minutes=2))
    w.emulator.mark_connected(sid, None, at=T_UTC + timedelta(minutes=4))
    collector.collect()
    rows = by_participant(w, "A1")
    assert rows["pat-1"]["connection_ts"] == T_UTC + timedelta(minutes=2)
    assert rows["pat-2"]["connection_ts"] is None
    assert rows["pat-1"]["billable_ts"] == T_UTC + timedelta(minutes=4)
    assert rows["pat-1"]["billable_status_cd"] == "BILL"

    # billing as the session ends
    w.emulator.set_billing(sid, T_UTC + timedelta(minutes=4), "BILL", 20, 2)
    state.set_clock(T_UTC + timedelta(minutes=40))
    collector.collect()
    rows = by_participant(w, "A1")
    assert (rows["pat-1"]["duration_minutes"], rows["pat-1"]["wait_time"]) == (20, 2)
    assert rows["pat-1"]["final_at"] is None

    # Reconnected later that day: only GET /history will know the final minutes.
    w.emulator.set_billing(sid, T_UTC + timedelta(minutes=4), "BILL", 31, 2)
    state.set_clock(T_UTC + timedelta(days=3))
    assert w.live("A1")[0].session_id == sid
    assert not [s for s in state.list_sessions_json() if s["SessionId"] == sid]  # aged out
    w.emulator.calls_clear()
    aged = collector.collect()
    assert (aged.finalized, aged.hosts_read, aged.history_reads) == (1, 0, 1)
    (call,) = w.emulator.calls
    assert (call.method, call.path) == ("GET", "/history")
    assert call.query == {"startDt": "2027-02-09", "endDt": "2027-02-12"}
    rows = by_participant(w, "A1")
    assert (rows["pat-1"]["duration_minutes"], rows["pat-1"]["wait_time"]) == (31, 2)
    assert rows["pat-1"]["final_at"] == T_UTC + timedelta(days=3)
    # History has no participants: RSVPs and connections stay as last seen.
    assert (rows["pat-1"]["rsvp"], rows["pat-2"]["rsvp"]) == ("Confirmed", "Declined")
    assert rows["pat-1"]["connection_ts"] == T_UTC + timedelta(minutes=2)

    # Final: nothing left to ask SecureVideo.
    w.emulator.calls_clear()
    done = collector.collect()
    assert done.targets == 0
    assert w.emulator.calls == []


def test_a_session_missing_from_the_list_after_a_day_is_settled_from_history(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]), row("A2", starts=T, guests=[guest(2)]))
    w.run_pass()
    state = w.emulator.state
    collector = collector_for(w)
    state.set_clock(T_UTC - timedelta(hours=1))
    collector.collect()
    (a2,) = w.live("A2")
    w.emulator.set_billing(a2.session_id, T_UTC + timedelta(minutes=1), "DUPL", 3, 0)

    # A day and a bit later: no longer listed, though not yet two days old.
    state.set_clock(T_UTC + timedelta(days=1, hours=1))
    w.emulator.calls_clear()
    report = collector.collect()
    assert (report.hosts_read, report.history_reads, report.finalized) == (1, 1, 2)
    assert [c.path for c in w.emulator.calls] == ["/session/0", "/history"]
    a1 = by_participant(w, "A1")["pat-1"]
    # never connected: settled with no billing at all (a possible no-show)
    assert (a1["billable_ts"], a1["billable_status_cd"], a1["final_at"]) == (
        None,
        None,
        T_UTC + timedelta(days=1, hours=1),
    )
    assert a1["rsvp"] == "Unknown"
    a2_row = by_participant(w, "A2")["pat-2"]
    assert (a2_row["billable_status_cd"], a2_row["duration_minutes"]) == ("DUPL", 3)


def test_a_rebooked_appointment_follows_its_new_session(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1), guest(2)]))
    w.run_pass()
    collector = collector_for(w)
    collector.collect()
    (old,) = w.live("A1")
    w.write(row("A1", starts=T, provider="prov-002", guests=[guest(2)]))
    w.run_pass()
    (new,) = w.live("A1")
    assert new.session_id != old.session_id
    report = collector.collect()
    assert report.sessions_changed == 1
    rows = by_participant(w, "A1")
    assert set(rows) == {"pat-2"}
    assert rows["pat-2"]["session_id"] == new.session_id
    assert rows["pat-2"]["host_external_id"] == "prov-002"


def test_nothing_managed_means_no_call_and_cancelled_ones_are_not_followed(w: World) -> None:
    collector = collector_for(w)
    w.emulator.calls_clear()
    assert collector.collect() == CollectionReport()
    assert w.emulator.calls == []

    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    collector.collect()
    w.write(row("A1", starts=T, status="cancelled", guests=[guest(1)]))
    w.run_pass()
    w.emulator.calls_clear()
    assert collector.collect().targets == 0
    assert w.emulator.calls == []
    # what was seen before the cancellation stays readable
    assert set(by_participant(w, "A1")) == {"pat-1"}


def test_the_collection_log_line_is_readable_through_the_phi_guard(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    collector_for(w).collect()
    (line,) = [json.loads(x) for x in out.getvalue().splitlines() if "outcomes_collected" in x]
    assert line["counts"]["sessions_changed"] == 1
    assert line["counts"]["participants_changed"] == 1
    assert line["reads"] == 1
    assert "[masked]" not in json.dumps(line)


def test_a_host_that_cannot_be_read_is_left_for_the_next_collection(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    collector = collector_for(w)
    w.emulator.faults.fail_next(1, 503, methods=["GET"])
    report = collector.collect()
    assert (report.host_failures, report.sessions_changed, report.clean) == (1, 0, False)
    assert view(ledger_engine_of(w), "A1") == []
    assert collector.collect().sessions_changed == 1


def test_no_patient_data_reaches_the_outcome_tables(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1), guest(2, deliver="S")]))
    w.run_pass()
    (session,) = w.live("A1")
    w.emulator.set_rsvp(session.participants[1].participation_id, "Confirmed")
    w.emulator.mark_connected(session.session_id, session.participants[1].participation_id)
    collector_for(w).collect()
    path = str(w.settings.ledger.url).removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        dump = "\n".join(conn.iterdump())
    assert "pat-1" in dump  # the ids are there...
    for canary in ("Canary", "phi.example", "1555777", "Canary topic"):
        assert canary not in dump  # ...and nothing of the people


# --- the daemon job and the command -------------------------------------------------------------


class FailingGateway:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]:
        raise self.exc

    def history_page(self, **_: Any) -> HistoryPage:
        raise self.exc


def test_the_job_outlives_a_failed_collection(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    app = w.apps[-1]

    class Broken:
        def begin(self) -> Any:
            raise RuntimeError("the disk is on fire")

    job = OutcomeJob(OutcomeCollector(ledger=Broken(), gateway=app.gateway), classify=classify)
    job()  # logged, not raised
    assert job.last_report is None

    flaky = OutcomeCollector(ledger=app.ledger, gateway=FailingGateway(TemporaryError("503")))
    job = OutcomeJob(flaky, classify=classify)
    job()
    assert job.last_report is not None and job.last_report.host_failures == 1

    skipped = OutcomeJob(collector_for(w), classify=classify, should_run=lambda: False)
    w.emulator.calls_clear()
    skipped()
    assert skipped.last_report is None and w.emulator.calls == []


def test_the_daemon_runs_the_collector_as_a_second_job(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    app = w.app()
    stop = threading.Event()
    runner = PassRunner(app.synchronizer, classify=classify)
    job = OutcomeJob(
        OutcomeCollector(ledger=app.ledger, gateway=app.gateway, stop=stop), classify=classify
    )
    done = threading.Event()

    def collect_then_stop() -> None:
        job()
        if job.last_report is not None and job.last_report.sessions_changed:
            done.set()
            stop.set()

    daemon = threading.Thread(
        target=run_daemon,
        args=(runner,),
        kwargs={
            "interval_seconds": 0.2,
            "stop": stop,
            "install_signal_handlers": False,
            "outcomes": collect_then_stop,
            "outcomes_interval_seconds": 0.2,
        },
    )
    daemon.start()
    daemon.join(timeout=30)
    stop.set()
    daemon.join(timeout=10)
    assert done.is_set()
    assert set(by_participant(w, "A1")) == {"pat-1"}


def test_outcomes_command(
    w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in w.env().items():
        monkeypatch.setenv(key, value)
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert main(["once"]) == 0
    capsys.readouterr()
    assert main(["outcomes"]) == 0
    out = capsys.readouterr().out
    # one GET /session for the whole account (the read drift detection shares), no host read
    assert out.startswith(
        "outcomes: 1 managed session(s) not final; read the account's sessions 1 time(s) and "
        "0 host(s)"
    )
    assert "1 session(s) and 1 participant(s) changed" in out
    engine = create_ledger_engine(w.settings.ledger.url)
    try:
        assert [r["participant_external_id"] for r in view(engine, "A1")] == ["pat-1"]
    finally:
        engine.dispose()
