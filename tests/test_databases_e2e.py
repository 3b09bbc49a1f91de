"""The end-to-end scenarios on real database servers: the EHR outbox and the ledger on SQLite,
PostgreSQL and MariaDB (and one mixed pair), through the real reader, engine, client and emulator.

The scenarios are those of ``test_sync_e2e`` that touch the databases most: every write the
ledger makes and every shape the outbox reader gets back (timestamps, booleans as tinyint,
case-sensitive ids, a timestamp the backend can store but Python cannot hold).  Migrations from
empty to head and back are covered per backend in ``test_ledger``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from harness import ZONE, ServerDatabases, World, guest, row, world
from test_sync_e2e import BAD_ROWS, T_UTC, T

#: (EHR backend, ledger backend): every scenario runs on each
BACKENDS = [
    pytest.param(("sqlite", "sqlite"), id="sqlite"),
    pytest.param(("postgresql", "postgresql"), id="postgresql", marks=pytest.mark.postgres),
    pytest.param(("mariadb", "mariadb"), id="mariadb", marks=pytest.mark.mariadb),
]
#: and the scenarios marked ``@mixed`` on this pair too
MIXED = [
    pytest.param(
        ("postgresql", "sqlite"), id="postgresql-ehr+sqlite-ledger", marks=pytest.mark.postgres
    ),
]
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


@pytest.fixture(params=BACKENDS)
def backends(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(EHR backend, ledger backend)."""
    pair: tuple[str, str] = request.param
    return pair


@pytest.fixture(scope="module")
def databases() -> Iterator[ServerDatabases]:
    shared = ServerDatabases()
    yield shared
    shared.close()


@pytest.fixture
def w(backends: tuple[str, str], databases: ServerDatabases, tmp_path: Path) -> Iterator[World]:
    ehr, ledger = backends
    with world(tmp_path, ehr_backend=ehr, ledger_backend=ledger, databases=databases) as w:
        assert w.ehr.engine.dialect.name == DIALECTS[ehr]
        yield w


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
    assert [p.external_id for p in session.participants[1:]] == ["pat-1", "pat-2"]
    assert session.participants[1].time_zone_windows_id == "Eastern Standard Time"

    w.emulator.calls_clear()
    again = w.run_pass()
    assert w.emulator.calls == []
    assert sum(again.outcomes.values()) == 0
    with w.apps[-1].ledger.begin() as tx:
        assert tx.appointments.counts_by_state()["synced"] == 1
        assert tx.cursor.get() == event_id


def test_reschedule(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(row("A1", starts=T + timedelta(hours=3), guests=[guest(1)]))
    w.run_pass()
    (session,) = w.live("A1")
    assert session.schedule_ts == T_UTC + timedelta(hours=3)
    assert [(c.method, c.path) for c in w.emulator.mutating_calls()] == [
        ("PUT", f"/session/{session.session_id}")
    ]


def test_cancel_then_rebook(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.write(row("A1", starts=T, status="cancelled", guests=[guest(1)]))
    w.run_pass()
    assert w.live("A1") == []
    w.write(row("A1", starts=T + timedelta(days=1), guests=[guest(1)]))
    w.run_pass()
    assert [t for _, t in sessions_of(w, "A1")] == ["Cancelled", "Scheduled"]
    assert w.live("A1")[0].schedule_ts == T_UTC + timedelta(days=1)


def test_four_rows_in_one_pass_coalesce_into_one_create(w: World) -> None:
    w.write(
        row("A1", starts=T, guests=[guest(1)]),
        row("A1", starts=T + timedelta(hours=1), guests=[guest(1)]),
        row("A1", starts=T + timedelta(hours=2), guests=[guest(1), guest(2)]),
        row("A1", starts=T + timedelta(hours=4), guests=[guest(2)]),
    )
    w.run_pass()
    assert [(c.method, c.path) for c in w.emulator.mutating_calls()] == [("POST", "/session/0")]
    (session,) = w.live("A1")
    assert session.schedule_ts == T_UTC + timedelta(hours=4)
    assert [p.external_id for p in session.participants[1:]] == ["pat-2"]


def test_participant_add_update_remove(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1), guest(2)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(row("A1", starts=T, guests=[guest(1, email="moved@phi.example"), guest(3)]))
    report = w.run_pass()
    assert report.operations == {
        "remove_participant:applied": 1,
        "update_participant:applied": 1,
        "add_participant:applied": 1,
    }
    (session,) = w.live("A1")
    emails = {p.external_id: p.email for p in session.participants[1:]}
    assert emails == {"pat-1": "moved@phi.example", "pat-3": "canary3@phi.example"}


def test_rename_is_remove_then_add(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(row("A1", starts=T, guests=[guest(1, full_name="Zelda Renamed")]))
    w.run_pass()
    assert [c.method for c in w.emulator.mutating_calls()] == ["DELETE", "POST"]
    (session,) = w.live("A1")
    assert [p.full_name for p in session.participants[1:]] == ["Zelda Renamed"]


def test_provider_change(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.write(row("A1", starts=T, provider="prov-002", guests=[guest(1)]))
    w.run_pass()
    assert sessions_of(w, "A1") == [(1001, "Cancelled"), (1002, "Scheduled")]


def test_dst_on_both_sides_of_each_change(w: World) -> None:
    # America/New_York: EST → EDT on 2027-03-14, EDT → EST on 2027-11-07
    moves = [
        (datetime(2027, 3, 13, 10, 0), datetime(2027, 3, 13, 15, 0)),
        (datetime(2027, 3, 15, 10, 0), datetime(2027, 3, 15, 14, 0)),
        (datetime(2027, 11, 6, 10, 0), datetime(2027, 11, 6, 14, 0)),
        (datetime(2027, 11, 8, 10, 0), datetime(2027, 11, 8, 15, 0)),
    ]
    for local, utc in moves:
        w.write(row("A1", starts=local, guests=[guest(1)]))
        w.run_pass()
        assert w.live("A1")[0].schedule_ts == utc


def test_fulfilled_and_noshow_leave_securevideo_alone(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.emulator.calls_clear()
    w.write(row("A1", starts=T + timedelta(hours=1), status="fulfilled", guests=[guest(1)]))
    w.write(row("A2", starts=T, status="noshow", guests=[guest(2)]))
    assert w.run_pass().outcomes == {"skipped": 2}
    assert w.emulator.calls == []


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
            assert app.engine.run_pass().outcomes == {"synced": 1}
            assert len(w.live(aid)) == 1
        finally:
            with w.ehr.engine.begin() as conn:
                conn.exec_driver_sql("DROP VIEW uuid_keyed")
