"""The sync engine end to end: SQLite EHR → real outbox reader → planner → real client → emulator.

Each test writes outbox rows the way an EHR would and looks at what the emulator ends up holding.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from harness import World, guest, row, world

from syncd.emulator.state import ParticipantRecord as EmuParticipant
from syncd.runtime.app import App

T = datetime(2027, 2, 10, 9, 0)  # naive, America/New_York (EST, UTC-5)
T_UTC = datetime(2027, 2, 10, 14, 0)


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as w:
        yield w


def guests_of(w: World, ext: str) -> dict[str | None, EmuParticipant]:
    (session,) = w.live(ext)
    return {p.external_id: p for p in session.participants[1:]}


def test_create_then_a_second_pass_makes_no_call_at_all(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1), guest(2, deliver="S")]))
    report = w.run_pass()
    assert report.outcomes == {"synced": 1}
    (session,) = w.live("A1")
    assert session.schedule_ts == T_UTC
    assert session.user_id == 1001
    assert [p.external_id for p in session.participants[1:]] == ["pat-1", "pat-2"]
    assert session.participants[1].time_zone_windows_id == "Eastern Standard Time"

    w.emulator.calls_clear()
    again = w.run_pass()
    assert w.emulator.calls == []
    assert sum(again.outcomes.values()) == 0


def test_reschedule(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(row("A1", starts=T + timedelta(hours=3), guests=[guest(1)]))
    w.run_pass()
    (session,) = w.live("A1")
    assert session.schedule_ts == T_UTC + timedelta(hours=3)
    assert session.schedule_type == "Rescheduled"
    assert [(c.method, c.path) for c in w.emulator.mutating_calls()] == [
        ("PUT", f"/session/{session.session_id}")
    ]


def test_cancel_then_rebook_gets_a_new_session_with_the_same_external_id(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.write(row("A1", starts=T, status="cancelled", guests=[guest(1)]))
    w.run_pass()
    assert w.live("A1") == []
    w.write(row("A1", starts=T + timedelta(days=1), guests=[guest(1)]))
    w.run_pass()
    sessions = [s for s in w.emulator.state.sessions() if s.external_session_id == "A1"]
    assert [s.schedule_type for s in sessions] == ["Cancelled", "Scheduled"]
    assert sessions[1].schedule_ts == T_UTC + timedelta(days=1)


def test_four_rows_in_one_pass_coalesce_into_one_create_with_the_final_state(w: World) -> None:
    w.write(
        row("A1", starts=T, guests=[guest(1)]),
        row("A1", starts=T + timedelta(hours=1), guests=[guest(1)]),
        row("A1", starts=T + timedelta(hours=2), guests=[guest(1), guest(2)]),
        row("A1", starts=T + timedelta(hours=4), guests=[guest(2)]),
    )
    w.run_pass()
    calls = w.emulator.mutating_calls()
    assert [(c.method, c.path) for c in calls] == [("POST", "/session/0")]
    (session,) = w.live("A1")
    assert session.schedule_ts == T_UTC + timedelta(hours=4)
    assert [p.external_id for p in session.participants[1:]] == ["pat-2"]


def test_participant_add_update_remove(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1), guest(2)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(
        row(
            "A1",
            starts=T,
            guests=[guest(1, email="moved@phi.example", time_zone="America/Chicago"), guest(3)],
        )
    )
    report = w.run_pass()
    assert report.operations == {
        "remove_participant:applied": 1,
        "update_participant:applied": 1,
        "add_participant:applied": 1,
    }
    ps = guests_of(w, "A1")
    assert set(ps) == {"pat-1", "pat-3"}
    assert ps["pat-1"].email == "moved@phi.example"
    assert ps["pat-1"].time_zone_windows_id == "Central Standard Time"
    assert [c.method for c in w.emulator.mutating_calls()] == ["DELETE", "PUT", "POST"]


def test_rename_is_remove_then_add(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(row("A1", starts=T, guests=[guest(1, full_name="Zelda Renamed")]))
    w.run_pass()
    assert [c.method for c in w.emulator.mutating_calls()] == ["DELETE", "POST"]
    ps = guests_of(w, "A1")
    assert ps["pat-1"].full_name == "Zelda Renamed"


def test_provider_change_cancels_under_the_old_host_and_creates_under_the_new(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.write(row("A1", starts=T, provider="prov-002", guests=[guest(1)]))
    w.run_pass()
    sessions = [s for s in w.emulator.state.sessions() if s.external_session_id == "A1"]
    assert [(s.user_id, s.schedule_type) for s in sessions] == [
        (1001, "Cancelled"),
        (1002, "Scheduled"),
    ]


def test_staff_added_guests_are_left_alone(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    (session,) = w.live("A1")
    w.emulator.state.add_participant(
        {"ParticipantFullName": "Interpreter On Call", "ShouldAutoDeliverCode": "N"},
        session_id=session.session_id,
    )
    w.write(row("A1", starts=T + timedelta(hours=1), guests=[guest(2)]))
    w.run_pass()
    names = [p.full_name for p in w.live("A1")[0].participants[1:]]
    assert "Interpreter On Call" in names
    assert set(guests_of(w, "A1")) == {None, "pat-2"}


@pytest.mark.parametrize(
    ("before", "after", "before_utc", "after_utc"),
    [
        # EST → EDT: the same wall-clock hour is an hour earlier in UTC after the change
        (
            datetime(2027, 3, 13, 10, 0),
            datetime(2027, 3, 15, 10, 0),
            datetime(2027, 3, 13, 15, 0),
            datetime(2027, 3, 15, 14, 0),
        ),
        # EDT → EST in November
        (
            datetime(2027, 11, 6, 10, 0),
            datetime(2027, 11, 8, 10, 0),
            datetime(2027, 11, 6, 14, 0),
            datetime(2027, 11, 8, 15, 0),
        ),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_dst_on_both_sides_of_a_change(
    w: World, before: datetime, after: datetime, before_utc: datetime, after_utc: datetime
) -> None:
    w.write(row("A1", starts=before, guests=[guest(1)]))
    w.run_pass()
    assert w.live("A1")[0].schedule_ts == before_utc
    w.write(row("A1", starts=after, guests=[guest(1)]))
    w.run_pass()
    assert w.live("A1")[0].schedule_ts == after_utc


def test_fulfilled_and_noshow_leave_securevideo_alone(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(row("A1", starts=T + timedelta(hours=1), status="fulfilled", guests=[guest(1)]))
    w.write(row("A2", starts=T, status="noshow", guests=[guest(2)]))
    report = w.run_pass()
    assert report.outcomes == {"skipped": 2}
    assert w.emulator.calls == []


BAD_ROWS = [
    ("participants", {"participants": "[{not json"}),
    ("provider_external_id", {"provider": ""}),
    ("starts_at", {"starts": "next tuesday"}),
    ("participants[0].time_zone", {"guests": [guest(1, time_zone="Mars/Olympus_Mons")]}),
    ("participants[0].email", {"guests": [guest(1, deliver="E", email="")]}),
    ("participants[0].sms", {"guests": [guest(1, deliver="S", sms="")]}),
    ("participants[0].full_name", {"guests": [guest(1, full_name="Z")]}),
    ("participants[0]", {"guests": [guest(1, svc_id=1037)]}),
    ("status", {"status": "maybe"}),
    ("provider_external_id", {"provider": "prov-unknown"}),
]


@pytest.mark.parametrize(
    ("field", "change"), BAD_ROWS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_ROWS)]
)
def test_bad_input_parks_that_appointment_and_the_good_one_flows(
    w: World, field: str, change: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs: dict[str, object] = {"starts": T, "guests": [guest(1)]} | change
    bad = row("BAD", **kwargs)  # type: ignore[arg-type]
    if isinstance(bad["starts_at"], str):
        w.ehr.append_raw(bad)
    else:
        w.write(bad)
    w.write(row("GOOD", starts=T, guests=[guest(2)]))
    report = w.run_pass()
    assert report.outcomes["parked"] == 1
    assert report.outcomes["synced"] == 1
    assert len(w.live("GOOD")) == 1
    assert w.live("BAD") == []
    with w.apps[-1].ledger.begin() as tx:
        (parked,) = tx.appointments.parked()
    assert parked.appointment_id == "BAD"
    assert parked.reason is not None
    assert "BAD" in parked.reason
    assert field.split("[")[0] in parked.reason
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    for canary in ("Zelda", "canary1@", "15557770001"):
        assert canary not in parked.reason


def test_a_newer_row_unparks_and_applies(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1, full_name="Z")]))
    assert w.run_pass().outcomes == {"parked": 1}
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert w.run_pass().outcomes == {"synced": 1}
    assert len(w.live("A1")) == 1


def test_apply_then_drop_on_create_ends_with_exactly_one_session(w: World) -> None:
    w.emulator.faults.drop_after_apply_next(1, methods=("POST",))
    w.write(row("A1", starts=T, guests=[guest(1)]))
    report = w.run_pass()
    assert report.operations["create:ambiguous"] == 1
    assert report.outcomes == {"synced": 1}
    assert len(w.live("A1")) == 1
    assert [c.method for c in w.emulator.mutating_calls()] == ["POST"]


def test_5xx_on_create_is_retried_and_ends_with_exactly_one_session(w: World) -> None:
    w.emulator.faults.fail_next(2, status=503, methods=("POST",))
    w.write(row("A1", starts=T, guests=[guest(1)]))
    report = w.run_pass()
    assert report.outcomes == {"synced": 1}
    assert len(w.live("A1")) == 1
    assert w.emulator.state.duplicate_external_session_ids() == {}


def test_attempts_exhausted_parks_with_the_reason(tmp_path: Path) -> None:
    with world(tmp_path, max_attempts=2) as w:
        w.emulator.faults.fail_next(10, status=503, methods=("POST",))
        w.write(row("A1", starts=T, guests=[guest(1)]))
        report = w.run_pass()
        assert report.outcomes == {"parked": 1}
        with w.apps[-1].ledger.begin() as tx:
            (parked,) = tx.appointments.parked()
        assert parked.reason is not None and "503" in parked.reason


def test_rejected_credentials_stop_the_pass(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        w.write(row("A1", starts=T, guests=[guest(1)]))
        app = w.app(
            securevideo={"base_url": w.emulator.base_url, "api_key": "demo", "api_secret": "wrong"}
        )
        report = app.engine.run_pass()
        assert report.auth_error is not None
        assert not report.clean
        with app.ledger.begin() as tx:
            assert tx.appointments.parked() == []
            assert tx.appointments.pending_count() == 1


def test_control_without_look_before_create_the_lost_answer_duplicates(w: World) -> None:
    """Proves the test above can fail: trusting the ledger alone re-sends the lost POST."""
    from syncd.runtime.app import Wiring, build_app
    from syncd.testing.blind import BlindGateway

    app = build_app(w.settings, wiring=Wiring(gateway=BlindGateway))
    w.apps.append(app)
    w.emulator.faults.drop_after_apply_next(1, methods=("POST",))
    w.write(row("A1", starts=T, guests=[guest(1)]))
    app.engine.run_pass()
    assert len(w.live("A1")) == 2


def test_an_idle_pass_makes_no_api_call_and_at_most_three_sql_statements(w: World) -> None:
    from sqlalchemy import event

    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split()[:4]))

    def watch(app: App) -> None:
        for engine in (app.ledger.engine, app.outbox.engine):
            event.listen(engine, "before_cursor_execute", count)

    empty = w.app()  # a fresh process, an empty outbox: cursor, outbox window, due list
    watch(empty)
    empty.engine.run_pass()
    assert len(statements) == 3, statements

    w.write(row("A1", starts=T, guests=[guest(1)]), row("A2", starts=T, guests=[guest(2)]))
    app = w.app()
    app.engine.run_pass()
    watch(app)
    w.emulator.calls_clear()
    for _ in range(3):
        statements.clear()
        report = app.engine.run_pass()
        assert sum(report.outcomes.values()) == 0
        # the outbox window (rows already seen) and the due list; nothing else
        assert len(statements) == 2, statements
    assert w.emulator.calls == []


def test_concurrency_bounds_the_requests_in_flight_and_every_host_is_read_once(
    tmp_path: Path,
) -> None:
    # Twice as many workers as request slots, and reads queued ahead of the appointments that
    # wait for them: with five hosts and two slots no worker may wait on a read nobody runs.
    with world(tmp_path, concurrency=2) as w:
        w.write(
            *(
                row(
                    f"A{n}",
                    starts=T + timedelta(hours=n),
                    provider=f"prov-{n % 5 + 1:03d}",
                    guests=[guest(n)],
                )
                for n in range(20)
            )
        )
        w.emulator.faults.latency(0.02)
        report = w.run_pass()
        assert report.outcomes == {"synced": 20}
        assert report.reads == 5
        assert len(w.emulator.calls_matching("GET", "/session")) == 5
        assert w.emulator.in_flight_peak == 2
        assert all(len(w.live(f"A{n}")) == 1 for n in range(20))
