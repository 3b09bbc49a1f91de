"""The sync engine end to end: EHR outbox → real reader → planner → real client → emulator, with
the EHR outbox and the ledger on SQLite, PostgreSQL and MariaDB.

Each test writes outbox rows the way an EHR would and looks at what the emulator ends up holding.

Where each scenario runs:

* ``@every_backend``: on each of SQLite, PostgreSQL and MariaDB (EHR and ledger on the same
  server) — the scenarios that touch the databases most: every write the ledger makes and every
  shape the outbox reader gets back (timestamps, booleans as tinyint, case-sensitive ids).
* ``@mixed``: those, and a PostgreSQL EHR with a SQLite ledger.
* ``test_uuid_keys_of_an_ehr_view_reach_syncd_as_text``: PostgreSQL only (its uuid type).
* everything else on SQLite alone, because it tests the engine's logic and would meet the same
  database code three times: staff-added guests, each bad row on its own (all of them at once run
  on every backend, each with that backend's own malformed timestamp), 5xx retries, a failure
  outlasting its pass (retrying, never parked), rejected credentials, the look-before-create
  control, the idle pass's statement count (a figure about the SQL syncd sends, counted on one
  dialect) and the concurrency bound.

A server that is absent skips its parameters, or fails them under ``CI=true``
(``conftest.database_or_skip``).  Migrations from empty to head and back are covered per backend
in ``test_ledger``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from harness import ZONE, ServerDatabases, World, guest, row, world
from sqlalchemy import delete

from syncd.emulator.state import ParticipantRecord as EmuParticipant
from syncd.runtime.app import App
from syncd.runtime.cli import main
from syncd.runtime.status import collect_status, render_status

T = datetime(2027, 2, 10, 9, 0)  # naive, America/New_York (EST, UTC-5)
T_UTC = datetime(2027, 2, 10, 14, 0)

#: (EHR backend, ledger backend) of the ``@every_backend`` scenarios
BACKENDS = [
    pytest.param(("sqlite", "sqlite"), id="sqlite"),
    pytest.param(("postgresql", "postgresql"), id="postgresql", marks=pytest.mark.postgres),
    pytest.param(("mariadb", "mariadb"), id="mariadb", marks=pytest.mark.mariadb),
]
#: and the ``@mixed`` ones on this pair too
MIXED = [
    pytest.param(
        ("postgresql", "sqlite"), id="postgresql-ehr+sqlite-ledger", marks=pytest.mark.postgres
    ),
]
every_backend = pytest.mark.parametrize("backends", BACKENDS, indirect=True)
mixed = pytest.mark.parametrize("backends", BACKENDS + MIXED, indirect=True)

DIALECTS = {"sqlite": "sqlite", "postgresql": "postgresql", "mariadb": "mysql"}

#: A starts_at each backend's column accepts but no datetime can hold: the row must be parked
#: alone, not fail the batch it is read in.
MALFORMED_STARTS_AT = {
    # SQLite stores any text in a TIMESTAMP column
    "sqlite": "next tuesday",
    # valid PostgreSQL timestamps beyond Python's range; psycopg raises on them by default
    "postgresql": "infinity",
    # MariaDB accepts the zero date unless sql_mode has NO_ZERO_DATE; PyMySQL returns it as text
    "mariadb": "0000-00-00 00:00:00",
}


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(EHR backend, ledger backend): SQLite for both unless the test is parametrised."""
    pair: tuple[str, str] = getattr(request, "param", ("sqlite", "sqlite"))
    return pair


@pytest.fixture(scope="module")
def databases() -> Iterator[ServerDatabases]:
    """The module's server databases, created on first use: a SQLite-only run makes none."""
    shared = ServerDatabases()
    yield shared
    shared.close()


@pytest.fixture
def w(backends: tuple[str, str], databases: ServerDatabases, tmp_path: Path) -> Iterator[World]:
    ehr, ledger = backends
    with world(tmp_path, ehr_backend=ehr, ledger_backend=ledger, databases=databases) as w:
        assert w.ehr.engine.dialect.name == DIALECTS[ehr]
        yield w


def guests_of(w: World, ext: str) -> dict[str | None, EmuParticipant]:
    (session,) = w.live(ext)
    return {p.external_id: p for p in session.participants[1:]}


def sessions_of(w: World, ext: str) -> list[tuple[int, str]]:
    return [
        (s.user_id, s.schedule_type)
        for s in w.emulator.state.sessions()
        if s.external_session_id == ext
    ]


@mixed
def test_create_then_a_second_pass_makes_no_call_at_all(w: World) -> None:
    (event_id,) = w.write(row("A1", starts=T, guests=[guest(1), guest(2, deliver="S")]))
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
    with w.apps[-1].ledger.begin() as tx:
        assert tx.appointments.counts_by_state()["synced"] == 1
        assert tx.cursor.get() == event_id


@every_backend
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


@every_backend
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
    assert w.live("A1")[0].schedule_ts == T_UTC + timedelta(days=1)


@every_backend
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


@every_backend
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
    assert {pid: p.email for pid, p in ps.items()} == {
        "pat-1": "moved@phi.example",
        "pat-3": "canary3@phi.example",
    }
    assert ps["pat-1"].time_zone_windows_id == "Central Standard Time"
    assert [c.method for c in w.emulator.mutating_calls()] == ["DELETE", "PUT", "POST"]


def test_a_guest_without_a_packet_is_shown_no_documents_however_it_was_added(w: World) -> None:
    """Defect 2: POST /participant and PUT read a null PacketId as "all documents"; syncd sends
    -1 for "no packet" on every call, so a guest added or updated later sees none."""
    w.write(row("A1", starts=T, guests=[guest(1), guest(2, packet_id=0)]))
    w.run_pass()
    w.write(
        row(
            "A1",
            starts=T,
            guests=[guest(1, email="moved@phi.example"), guest(2, packet_id=0), guest(3)],
        )
    )
    report = w.run_pass()
    assert report.operations == {"update_participant:applied": 1, "add_participant:applied": 1}
    (session,) = w.live("A1")
    given = {
        g.external_id: (g.sent, g.shown) for g in w.emulator.packets(session.session_id).values()
    }
    assert given == {"pat-1": (-1, -1), "pat-2": (0, 0), "pat-3": (-1, -1)}


@every_backend
def test_rename_is_remove_then_add(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(row("A1", starts=T, guests=[guest(1, full_name="Zelda Renamed")]))
    w.run_pass()
    assert [c.method for c in w.emulator.mutating_calls()] == ["DELETE", "POST"]
    ps = guests_of(w, "A1")
    assert ps["pat-1"].full_name == "Zelda Renamed"
    (session,) = w.live("A1")
    assert [p.full_name for p in session.participants[1:]] == ["Zelda Renamed"]


@every_backend
def test_provider_change_cancels_under_the_old_host_and_creates_under_the_new(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.write(row("A1", starts=T, provider="prov-002", guests=[guest(1)]))
    w.run_pass()
    assert sessions_of(w, "A1") == [(1001, "Cancelled"), (1002, "Scheduled")]


def test_a_provider_change_away_from_a_provider_who_left_creates_and_reports(w: World) -> None:
    """Defect 6: the old host's session list answers 404 once the provider has left SecureVideo;
    the session is made under the new host and ``syncd status`` names the old one."""
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.emulator.remove_host("prov-001")
    w.write(row("A1", starts=T, provider="prov-002", guests=[guest(1)]))
    report = w.run_pass()
    assert report.outcomes == {"synced": 1}
    # The old session went with its host: nothing can cancel it.
    assert sessions_of(w, "A1") == [(1001, "Scheduled"), (1002, "Scheduled")]
    status = collect_status(w.settings)
    assert status["parked"] == []
    (note,) = status["notes"]
    assert note["appointment_id"] == "A1" and "previous host 'prov-001'" in note["reason"]
    assert "prov-001" in render_status(status)
    w.emulator.calls_clear()
    assert w.run_pass().outcomes == {} and w.emulator.mutating_calls() == []


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


#: (naive America/New_York, UTC): EST → EDT on 2027-03-14, EDT → EST on 2027-11-07; the same
#: wall-clock hour is an hour earlier in UTC after the spring change, an hour later after the fall
SPRING_FORWARD = [
    (datetime(2027, 3, 13, 10, 0), datetime(2027, 3, 13, 15, 0)),
    (datetime(2027, 3, 15, 10, 0), datetime(2027, 3, 15, 14, 0)),
]
FALL_BACK = [
    (datetime(2027, 11, 6, 10, 0), datetime(2027, 11, 6, 14, 0)),
    (datetime(2027, 11, 8, 10, 0), datetime(2027, 11, 8, 15, 0)),
]


@every_backend
@pytest.mark.parametrize(
    "moves",
    [SPRING_FORWARD, FALL_BACK, SPRING_FORWARD + FALL_BACK],
    ids=["spring-forward", "fall-back", "spring-forward-then-fall-back"],
)
def test_dst_on_both_sides_of_a_change(w: World, moves: list[tuple[datetime, datetime]]) -> None:
    for local, utc in moves:
        w.write(row("A1", starts=local, guests=[guest(1)]))
        w.run_pass()
        assert w.live("A1")[0].schedule_ts == utc


@every_backend
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
    ("starts_at", {"starts": MALFORMED_STARTS_AT["sqlite"]}),
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


@mixed
def test_every_bad_row_is_parked_alone_and_the_good_one_flows(
    w: World, backends: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    expected: dict[str, str] = {}
    for n, (field, raw_change) in enumerate(BAD_ROWS):
        change = cast(dict[str, object], raw_change)
        aid = f"BAD{n}"
        if "starts" in change:
            # the backend's own kind of malformed timestamp, written untyped as an EHR would
            bad = row(aid, starts=T, guests=[guest(1)]) | {
                "starts_at": MALFORMED_STARTS_AT[backends[0]]
            }
            w.ehr.append_raw(bad)
        else:
            kwargs: dict[str, object] = {"starts": T, "guests": [guest(1)]} | change
            w.write(row(aid, **kwargs))  # type: ignore[arg-type]
        expected[aid] = field.split("[")[0]
    w.write(row("GOOD", starts=T, guests=[guest(2)]))

    report = w.run_pass()

    assert report.outcomes == {"parked": len(BAD_ROWS), "synced": 1}
    assert len(w.live("GOOD")) == 1
    assert all(w.live(aid) == [] for aid in expected)
    with w.apps[-1].ledger.begin() as tx:
        parked = {p.appointment_id: p.reason or "" for p in tx.appointments.parked()}
    assert set(parked) == set(expected)
    for aid, field in expected.items():
        assert aid in parked[aid]
        assert field in parked[aid], parked[aid]
        for canary in ("Zelda", "canary1@", "15557770001"):
            assert canary not in parked[aid]
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err


@every_backend
def test_a_newer_row_unparks_and_applies(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1, full_name="Z")]))
    assert w.run_pass().outcomes == {"parked": 1}
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert w.run_pass().outcomes == {"synced": 1}
    assert len(w.live("A1")) == 1


@mixed
def test_apply_then_drop_on_create_ends_with_exactly_one_session(w: World) -> None:
    w.emulator.faults.drop_after_apply_next(1, methods=("POST",))
    w.write(row("A1", starts=T, guests=[guest(1)]))
    report = w.run_pass()
    assert report.operations["create:ambiguous"] == 1
    assert report.outcomes == {"synced": 1}
    assert len(w.live("A1")) == 1
    assert [c.method for c in w.emulator.mutating_calls()] == ["POST"]
    with w.apps[-1].ledger.begin() as tx:
        journal = tx.operations.of_appointment("A1")
    # the lost answer's intent, resolved by reading the host's sessions, not by a second POST
    assert (journal[0].op, journal[0].state) == ("create", "resolved")


def test_5xx_on_create_is_retried_and_ends_with_exactly_one_session(w: World) -> None:
    w.emulator.faults.fail_next(2, status=503, methods=("POST",))
    w.write(row("A1", starts=T, guests=[guest(1)]))
    report = w.run_pass()
    assert report.outcomes == {"synced": 1}
    assert len(w.live("A1")) == 1
    assert w.emulator.state.duplicate_external_session_ids() == {}


def test_a_failure_outlasting_the_pass_is_left_retrying_never_parked(tmp_path: Path) -> None:
    # Attempts past max_attempts and a pass with no time to wait: it stays pending, with a next
    # try, and says so in `syncd status`.
    with world(tmp_path, max_attempts=1, pass_retry_budget_seconds=0) as w:
        w.emulator.faults.fail_next(10, status=503, methods=("POST",))
        w.write(row("A1", starts=T, guests=[guest(1)]))
        report = w.run_pass()
        assert report.outcomes == {"retry": 1}
        with w.apps[-1].ledger.begin() as tx:
            assert tx.appointments.parked() == []
            (retrying,) = tx.appointments.retrying()
        assert retrying.state == "pending" and retrying.attempts == 1
        assert retrying.next_attempt_at is not None
        assert retrying.reason is not None and "503" in retrying.reason
        status = collect_status(w.settings)
        assert status["retrying"] == [
            {
                "appointment_id": "A1",
                "attempts": 1,
                "error_class": "503",
                "next_attempt_at": retrying.next_attempt_at.isoformat(),
                "long": True,
            }
        ]
        assert "A1  (attempts 1, last error 503, next try " in render_status(status)


def test_rejected_credentials_stop_the_pass(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        w.write(row("A1", starts=T, guests=[guest(1)]))
        app = w.app(
            securevideo={"base_url": w.emulator.base_url, "api_key": "demo", "api_secret": "wrong"}
        )
        report = app.synchronizer.run_pass()
        assert report.auth_error is not None
        assert not report.clean
        with app.ledger.begin() as tx:
            assert tx.appointments.parked() == []
            assert tx.appointments.pending_count() == 1


@mixed
def test_ids_differing_only_in_case_are_different_appointments_across_pages(
    backends: tuple[str, str], databases: ServerDatabases, tmp_path: Path
) -> None:
    """MariaDB compares text case-insensitively by default, and a page boundary between "a1" and
    "A1" is where a keyset cursor in the wrong collation would skip or repeat one."""
    ehr, ledger = backends
    with world(
        tmp_path, ehr_backend=ehr, ledger_backend=ledger, databases=databases, batch_size=3
    ) as w:
        ids = [f"{c}{n}" for n in range(1, 3) for c in ("a", "A", "b", "B")]
        w.write(*(row(aid, starts=T, guests=[guest(i)]) for i, aid in enumerate(ids, 1)))
        report = w.run_pass()
        assert report.outcomes == {"synced": len(ids)}
        assert w.emulator.state.duplicate_external_session_ids() == {}
        for aid in ids:
            assert len(w.live(aid)) == 1, aid
        w.emulator.calls_clear()
        assert sum(w.run_pass().outcomes.values()) == 0
        assert w.emulator.calls == []


@pytest.mark.postgres
def test_uuid_keys_of_an_ehr_view_reach_syncd_as_text(
    databases: ServerDatabases, tmp_path: Path
) -> None:
    """psycopg hands a uuid column over as uuid.UUID; the ledger and SecureVideo know ids as
    text, and the row parser accepts only text, so the reader converts."""
    with world(tmp_path, ehr_backend="postgresql", databases=databases) as w:
        aid = str(uuid.uuid4())
        w.write(row(aid, starts=T, guests=[guest(1)]))
        with w.ehr.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE VIEW uuid_keyed AS SELECT event_id, appointment_id::uuid AS appointment_id,"
                " provider_external_id, status, starts_at, topic, is_recorded, participants,"
                " created_at FROM appointment_outbox"
            )
        try:
            app = w.app(
                outbox={"url": w.settings.outbox.url, "timezone": ZONE, "table": "uuid_keyed"}
            )
            assert app.synchronizer.run_pass().outcomes == {"synced": 1}
            assert len(w.live(aid)) == 1
        finally:
            with w.ehr.engine.begin() as conn:
                conn.exec_driver_sql("DROP VIEW uuid_keyed")


def test_control_without_look_before_create_the_lost_answer_duplicates(w: World) -> None:
    """Proves the test above can fail: trusting the ledger alone re-sends the lost POST."""
    from syncd.runtime.app import Wiring, build_app
    from syncd.testing.blind import BlindGateway

    app = build_app(w.settings, wiring=Wiring(gateway=BlindGateway))
    w.apps.append(app)
    w.emulator.faults.drop_after_apply_next(1, methods=("POST",))
    w.write(row("A1", starts=T, guests=[guest(1)]))
    app.synchronizer.run_pass()
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
    w.emulator.calls_clear()
    empty.synchronizer.run_pass()
    # and the drift interval's look: the account's sessions once, the managed ones and the
    # drift on file (nothing, so nothing more)
    assert len(statements) == 5, statements
    assert [(c.method, c.path) for c in w.emulator.calls] == [("GET", "/session")]

    w.write(row("A1", starts=T, guests=[guest(1)]), row("A2", starts=T, guests=[guest(2)]))
    app = w.app()
    app.synchronizer.run_pass()
    watch(app)
    w.emulator.calls_clear()
    for _ in range(3):
        statements.clear()
        report = app.synchronizer.run_pass()
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
        assert len(w.emulator.calls_matching("GET", "/session/0")) == 5
        # and the drift interval's one read of the whole account
        assert [c.path for c in w.emulator.calls_matching("GET", "/session")].count("/session") == 1
        assert w.emulator.in_flight_peak == 2
        assert all(len(w.live(f"A{n}")) == 1 for n in range(20))


# --- an outbox restored from a backup ------------------------------------------------------------


def restore_outbox(w: World, rows: list[dict[str, object]]) -> None:
    """Replace every outbox row, as restoring a backup of the EHR does: event ids from 1 again."""
    with w.ehr.engine.begin() as conn:
        conn.execute(delete(w.ehr.table))
    w.write(*({**r, "event_id": n} for n, r in enumerate(rows, start=1)))


@every_backend
@pytest.mark.parametrize(
    ("first_id", "repeats"),
    [(4999, 0), (1, 5)],
    ids=["cursor-at-5001", "cursor-inside-the-reread-window"],
)
def test_a_restored_outbox_is_noticed_and_each_change_after_it_applied_once(
    w: World,
    first_id: int,
    repeats: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the default settings (a 1,000-event window): the cursor at 5,001, or at 8 with the
    restored ids inside the window.  After the backup: a reschedule, a cancel, a new appointment."""
    for key, value in w.env().items():
        monkeypatch.setenv(key, value)
    backup = [row(a, starts=T, guests=[guest(n)]) for n, a in enumerate(("A1", "A2", "A3"), 1)]
    # the same A3 again: rows that change nothing, only move the cursor on (to 8)
    before = backup + [backup[2]] * repeats
    w.write(*({**r, "event_id": first_id + n} for n, r in enumerate(before)))
    assert main(["once"]) == 0
    sessions = {a: w.live(a)[0].session_id for a in ("A1", "A2", "A3")}
    cursor = first_id + len(before) - 1
    after = [
        row("A1", starts=T + timedelta(hours=3), guests=[guest(1)]),
        row("A2", starts=T, status="cancelled", guests=[guest(2)]),
        row("A4", starts=T, guests=[guest(4)]),
    ]
    restore_outbox(w, [*backup, *after])
    w.emulator.calls_clear()
    capsys.readouterr()

    assert main(["status"]) == 0
    shown = capsys.readouterr().out
    assert f"outbox rewound:    yes (newest event 6, cursor {cursor})" in shown

    assert main(["once"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("syncd: the outbox went back (newest event 6, cursor was ") and (
        err.count("\n") == 1
    )
    mutating = sorted((c.method, c.path) for c in w.emulator.mutating_calls())
    assert mutating == sorted(
        [
            ("PUT", f"/session/{sessions['A1']}"),
            ("DELETE", f"/session/{sessions['A2']}"),
            ("POST", "/session/0"),
        ]
    ), mutating
    assert not any(str(sessions["A3"]) in c.path for c in w.emulator.calls)
    assert w.live("A1")[0].schedule_ts == T_UTC + timedelta(hours=3)
    assert w.live("A2") == [] and len(w.live("A4")) == 1

    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    rewound = status["outbox_rewound"]
    assert (rewound["cursor"], rewound["newest_event_id"]) == (cursor, 6)
    assert rewound["noticed"] and rewound["applied"]
    assert (status["cursor"], status["lag_events"]) == (6, 0)
    assert status["counts"] == {"synced": 4, "pending": 0, "parked": 0, "skipped": 0}

    w.emulator.calls_clear()
    assert main(["once"]) == 0  # noticed once: the next pass is an ordinary one
    assert w.emulator.mutating_calls() == []
