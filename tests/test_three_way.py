"""Issue 13, end to end: plan from desired, applied and observed, on the emulator.

Each test runs against both readings of what the documents leave open about scheduled times: the
emulator keeps the minute sent, or rounds it to the nearest quarter hour.  syncd must be right
under either.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from harness import ZONE, World, guest, row, world

from syncd.ports.ledger import HELD_PREFIX, SKIPPED, SYNCED

#: a Wednesday 09:00 in the EHR's zone, far enough ahead to be a future visit
T = datetime(2031, 3, 5, 9, 0)
UTC_OFFSET = timedelta(hours=5)  # New York in March 2031 before the DST switch (9 March)
COLLEAGUE_USER_ID = 1003  # prov-003, a SecureVideo user of the account
#: the revision migration 0008_applied_state follows
BEFORE_0008 = "0007_outbox_row_digest"


@pytest.fixture(params=[False, True], ids=["exact-times", "quarter-hours"])
def w(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with world(tmp_path, round_to_quarter_hours=request.param) as w:
        yield w


def utc(local: datetime) -> datetime:
    return local + UTC_OFFSET


def shown(w: World, local: datetime) -> datetime:
    """What the emulator shows for a time sent, under its reading."""
    ts = utc(local)
    if not w.emulator.state.round_to_quarter_hours:
        return ts
    down = ts.replace(minute=ts.minute - ts.minute % 15)
    return down + timedelta(minutes=15) if ts.minute % 15 >= 8 else down


def mutations(w: World) -> list[tuple[str, str]]:
    return [(c.method, c.path.split("?")[0]) for c in w.emulator.mutating_calls()]


def record(w: World, aid: str) -> Any:
    with w.apps[-1].ledger.begin() as tx:
        return tx.appointments.get(aid)


def local_now() -> datetime:
    return datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None, second=0, microsecond=0)


# --- defect 1 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("minutes", [10, -10, 14, 1])
def test_a_reschedule_under_15_minutes_is_sent(w: World, minutes: int) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    before = len(mutations(w))
    w.write(row("A1", starts=T + timedelta(minutes=minutes), guests=[guest(1)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)[before:]] == ["PUT"]
    (session,) = w.live("A1")
    assert session.schedule_ts == shown(w, T + timedelta(minutes=minutes))
    assert record(w, "A1").sent_schedule_ts == utc(T + timedelta(minutes=minutes))
    # and what SecureVideo shows (rounded or not) is not a change on the next look
    w.write(row("A1", starts=T + timedelta(minutes=minutes), guests=[guest(1)]))
    w.run_pass()
    assert len(mutations(w)) == before + 1


def test_a_time_off_the_quarter_is_created_once_and_left_alone(w: World) -> None:
    w.write(row("A1", starts=T + timedelta(minutes=10), guests=[guest(1)]))
    w.run_pass()
    w.write(row("A1", starts=T + timedelta(minutes=10), guests=[guest(1)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST"]
    assert record(w, "A1").state == SYNCED


def test_staff_moving_the_session_is_not_undone_by_an_unrelated_edit(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    (session,) = w.live("A1")
    w.emulator.state.reschedule_session(
        {"ScheduleTs": "2031-03-05T16:00:00"}, session_id=session.session_id
    )
    before = len(mutations(w))
    w.write(row("A1", starts=T, guests=[guest(1), guest(2)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)[before:]] == ["POST"]  # the new guest only
    assert w.live("A1")[0].schedule_ts == datetime(2031, 3, 5, 16, 0)


# --- defect 3 ----------------------------------------------------------------------------------


def test_a_colleague_staff_added_is_not_removed_by_an_ehr_edit(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    (session,) = w.live("A1")
    w.emulator.state.add_participant(
        {"SecureVideoUserId": COLLEAGUE_USER_ID, "PacketId": -1}, session_id=session.session_id
    )
    w.emulator.state.add_participant(
        {"ParticipantFullName": "Front Desk Guest", "ParticipantExternalId": "EMR444444"},
        session_id=session.session_id,
    )
    before = len(mutations(w))
    w.write(row("A1", starts=T + timedelta(hours=1), guests=[guest(1)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)[before:]] == ["PUT"]  # the reschedule, nothing removed
    (session,) = w.live("A1")
    assert len(session.participants) == 4


def test_an_ehr_secure_video_user_is_removed_when_the_ehr_drops_it(w: World) -> None:
    nurse = {"external_id": "nurse-7", "securevideo_user_id": "1002"}
    w.write(row("A1", starts=T, guests=[guest(1), nurse]))
    w.run_pass()
    (session,) = w.live("A1")
    assert len(session.participants) == 3
    # The Session JSON article shows a SecureVideo user's ParticipantExternalId null in some
    # sessions: ownership must not hang on it.  (The emulator's own record, until it has an
    # option for per-participation ids.)
    state = w.emulator.state
    with state._lock:
        state._session(session.session_id).participants[2].external_id = None
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST", "DELETE"]
    (session,) = w.live("A1")
    assert [p.secure_video_user_id for p in session.participants[1:]] == [None]


# --- defect 4 ----------------------------------------------------------------------------------


def test_a_secure_video_users_packet_and_deposit_changes_are_sent(w: World) -> None:
    nurse: dict[str, Any] = {"external_id": "nurse-7", "securevideo_user_id": "1002"}
    w.write(row("A1", starts=T, guests=[{**nurse, "packet_id": -1}]))
    w.run_pass()
    w.write(
        row("A1", starts=T, guests=[{**nurse, "packet_id": 1215, "svc_id": 1037, "deposit": 20}])
    )
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST", "PUT"]
    (session,) = w.live("A1")
    user = session.participants[1]
    assert (user.packet_id, user.svc_id, user.deposit_required) == (1215, 1037, 20)


# --- defect 5 ----------------------------------------------------------------------------------


def test_a_booking_20_hours_past_is_not_created_and_is_reported(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w.write(row("A1", starts=local_now() - timedelta(hours=20), guests=[guest(1)]))
    w.run_pass()
    assert mutations(w) == []
    got = record(w, "A1")
    assert got.state == SKIPPED and got.reason.startswith(HELD_PREFIX)
    from syncd.runtime.status import collect_status, render_status

    status = collect_status(w.apps[-1].settings)
    assert [h["appointment_id"] for h in status["held"]] == ["A1"]
    assert "held, no call made (see each reason): 1" in render_status(status)


def test_a_connected_visit_marked_entered_in_error_is_not_cancelled(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    (session,) = w.live("A1")
    w.emulator.state.mark_connected(session.session_id)
    w.emulator.state.mark_connected(session.session_id, session.participants[1].participation_id)
    w.write(row("A1", starts=T, guests=[guest(1)], status="entered-in-error"))
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST"]
    assert w.live("A1")
    assert "connected" in record(w, "A1").reason


def test_a_past_visits_time_correction_is_not_a_reschedule(w: World) -> None:
    # Off the quarter hours, both times: whatever the wall clock, the corrected time is never
    # what SecureVideo's rounding of the first one shows (which would need no call at all).
    now = local_now()
    started = now.replace(minute=now.minute - now.minute % 15) - timedelta(minutes=23)
    w.write(row("A1", starts=started, guests=[guest(1)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST"]  # within the grace: created
    w.write(row("A1", starts=started - timedelta(minutes=5), guests=[guest(1)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST"]
    assert "time has passed" in record(w, "A1").reason


# --- defect 7 ----------------------------------------------------------------------------------


def test_a_case_or_spacing_only_name_fix_makes_no_call(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1, full_name="zelda  canary")]))
    w.run_pass()
    w.write(row("A1", starts=T, guests=[guest(1, full_name="Zelda Canary")]))
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST"]
    assert record(w, "A1").state == SYNCED


# --- defect 8 ----------------------------------------------------------------------------------


def test_a_new_session_id_prefix_applies_to_new_appointments_only(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    w.app(outbox={"url": w.settings.outbox.url, "timezone": ZONE, "session_id_prefix": "v2-"})
    w.write(row("A1", starts=T, guests=[guest(1)]), row("A2", starts=T, guests=[guest(2)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST", "POST"]
    assert len(w.live("A1")) == 1 and w.live("v2-A1") == []
    assert len(w.live("v2-A2")) == 1
    w.write(row("A1", starts=T + timedelta(hours=1), guests=[guest(1)]))
    w.run_pass()
    assert [m for m, _ in mutations(w)] == ["POST", "POST", "PUT"]
    assert w.live("A1")[0].schedule_ts == shown(w, T + timedelta(hours=1))


def test_the_ledger_holds_no_participant_id_or_contact(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1), guest(2)]))
    w.run_pass()
    with w.apps[-1].ledger.begin() as tx:
        rows = tx.participants.of_appointments(["A1"])["A1"]
    text = json.dumps([repr(r) for r in rows.values()])
    assert len(rows) == 2
    for secret in ("pat-1", "pat-2", "Canary", "phi.example", "1555777"):
        assert secret not in text


# --- the upgrade -------------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", [False, True], ids=["exact-times", "quarter-hours"])
@pytest.mark.parametrize("ledger_kind", ["sqlite", "postgresql", "mariadb"])
def test_an_upgraded_ledger_takes_what_secure_video_shows_as_applied(
    tmp_path: Path, ledger_kind: str, rounding: bool
) -> None:
    """A ledger of the schema before 0008 (no applied state, participants by raw id) with live
    sessions: after the migration, a pass over every appointment makes no call."""
    nurse = {"external_id": "nurse-7", "securevideo_user_id": "1002", "packet_id": -1}
    rows = [
        row("A1", starts=T + timedelta(minutes=10), guests=[guest(1, packet_id=0)]),
        row("A2", starts=T, guests=[guest(2), guest(3, full_name="zelda canary3"), nurse]),
        row("A3", starts=T, guests=[guest(4)], status="cancelled"),
    ]
    with world(tmp_path, ledger_backend=ledger_kind, round_to_quarter_hours=rounding) as w:
        w.write(*rows)
        w.run_pass()
        made = len(mutations(w))
        _as_before_0008(w, {"pat-1": 0, "pat-2": None, "pat-3": None, "nurse-7": -1})

        w.app()  # a new start on the migrated ledger
        w.write(*rows)  # every appointment due again, as after an EHR touch
        report = w.run_pass()
        assert len(mutations(w)) == made, mutations(w)[made:]
        assert report.outcomes["unchanged"] == 3 and report.outcomes["skipped"] == 0
        a1 = record(w, "A1")
        assert (a1.state, a1.sent_schedule_ts, a1.external_session_id) == (
            SYNCED,
            utc(T + timedelta(minutes=10)),
            "A1",
        )
        with w.apps[-1].ledger.begin() as tx:
            owned = tx.participants.of_appointments(["A2"])["A2"]
        assert len(owned) == 3 and all(p.deliver is not None for p in owned.values())

        # and from now on a change is the EHR versus what was applied: one minute is a call
        w.write(row("A1", starts=T + timedelta(minutes=11), guests=[guest(1, packet_id=0)]))
        w.run_pass()
        assert [m for m, _ in mutations(w)[made:]] == ["PUT"]


def _as_before_0008(w: World, packets: dict[str, int | None]) -> None:
    """The ledger as the code before 0008 left it: downgraded, and participants on file by raw
    external id with what was sent then (a SecureVideo user's participation id was not found in
    the answer by that code, so it is None)."""
    from sqlalchemy import column as col
    from sqlalchemy import insert, table

    from syncd.adapters.ledger import create_ledger_engine, downgrade, migrate

    engine = create_ledger_engine(w.settings.ledger.url)
    try:
        downgrade(engine, BEFORE_0008)
        participant = table(
            "participant",
            *(
                col(c)
                for c in (
                    "appointment_id",
                    "external_id",
                    "session_id",
                    "participation_id",
                    "packet_id",
                    "updated_at",
                )
            ),
        )
        old = []
        for session in w.emulator.state.sessions():
            if session.cancelled:
                continue
            for p in session.participants[1:]:
                external_id = "nurse-7" if p.secure_video_user_id is not None else p.external_id
                assert external_id is not None
                old.append(
                    {
                        "appointment_id": session.external_session_id,
                        "external_id": external_id,
                        "session_id": session.session_id,
                        "participation_id": None
                        if p.secure_video_user_id is not None
                        else p.participation_id,
                        "packet_id": packets[external_id],
                        "updated_at": datetime(2031, 1, 1),
                    }
                )
        with engine.begin() as conn:
            conn.execute(insert(participant), old)
        migrate(engine)
    finally:
        engine.dispose()
