"""Billing reconciliation: the period, History JSON record by record, the report, and ``syncd
history`` end to end against the emulator (totals, DUPL, orphans, no-shows, formats, bad input)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx  # noqa: TID251 - one bad record, served through httpx.MockTransport
import pytest
from harness import World, guest, row, world

from syncd.adapters.ledger import BookedAppointment
from syncd.adapters.securevideo import SecureVideoClient, parse_history
from syncd.core.errors import PermanentError
from syncd.emulator.state import SessionRecord
from syncd.ports.securevideo import HistoryPage, RejectedRecord
from syncd.runtime.cli import main
from syncd.sync.billing import Period, PeriodError, build_report, parse_period, run_history
from syncd.sync.billing_render import render_csv, render_table, to_json

FEB = Period(date(2027, 2, 1), date(2027, 2, 28), month=date(2027, 2, 1))
T = datetime(2027, 2, 10, 9, 0)  # America/New_York
T_UTC = datetime(2027, 2, 10, 14, 0)
AFTER_FEB = datetime(2027, 3, 2)


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


# --- the period ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("month", "start", "end", "expected"),
    [
        ("2027-02", None, None, FEB),
        (" 2028-02 ", None, None, Period(date(2028, 2, 1), date(2028, 2, 29), date(2028, 2, 1))),
        ("2026-12", None, None, Period(date(2026, 12, 1), date(2026, 12, 31), date(2026, 12, 1))),
        (None, "2027-02-04", "2027-02-04", Period(date(2027, 2, 4), date(2027, 2, 4))),
        (None, "2027-01-30", "2027-02-02", Period(date(2027, 1, 30), date(2027, 2, 2))),
    ],
)
def test_periods(month: str | None, start: str | None, end: str | None, expected: Period) -> None:
    period = parse_period(month, start, end)
    assert period == expected
    assert period.end == period.start + timedelta(days=(period.last - period.first).days + 1)


@pytest.mark.parametrize(
    ("month", "start", "end", "message"),
    [
        ("2027-13", None, None, "--month must be a month as YYYY-MM"),
        ("2027-00", None, None, "--month must be a month as YYYY-MM"),
        ("2027-2", None, None, "--month must be a month as YYYY-MM"),
        ("February", None, None, "--month must be a month as YYYY-MM"),
        ("2027-02-01", None, None, "--month must be a month as YYYY-MM"),
        ("2027-02", "2027-02-01", None, "not both"),
        (None, "2027-02-01", None, "give --month YYYY-MM, or both"),
        (None, None, "2027-02-01", "give --month YYYY-MM, or both"),
        (None, None, None, "give --month YYYY-MM, or both"),
        (None, "2027-02-30", "2027-03-01", "--start must be a date as YYYY-MM-DD"),
        (None, "2027-02-01", "3/1/2027", "--end must be a date as YYYY-MM-DD"),
        (None, "2027-03-05", "2027-03-01", "--end (2027-03-01) is before --start (2027-03-05)"),
    ],
)
def test_bad_periods(month: str | None, start: str | None, end: str | None, message: str) -> None:
    with pytest.raises(PeriodError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_period(month, start, end)


# --- History JSON, record by record -------------------------------------------------------------

GOOD = {
    "SessionId": 1,
    "ScheduleTs": "2027-02-10T14:00:00",
    "BillableTs": "2027-02-10T14:03:00.5",
    "DurationMinutes": 25,
    "WaitTime": 3,
    "BillableStatusCd": "BILL",
    "UsageDescription": "Zelda Canary1 Session #1 with Dr Who",
}
OLD = {"SessionId": 2, "BillableTs": "2019-05-01T10:00:00", "DurationMinutes": 12}  # no WaitTime
NEWER = {**GOOD, "SessionId": 3, "SomeFieldFrom2030": {"x": 1}}
BAD_DURATION = {**GOOD, "SessionId": 4, "DurationMinutes": "twenty"}
BAD_ID = {**GOOD, "SessionId": "not-an-id"}


def test_parse_history_sets_bad_records_aside_with_their_session_id() -> None:
    body = json.dumps([GOOD, OLD, BAD_DURATION, NEWER, BAD_ID, 17, {**GOOD, "SessionId": "5"}])
    page = parse_history(body)
    assert [r.session_id for r in page.records] == [1, 2, 3, 5]
    assert page.records[1].wait_time is None and page.records[1].duration_minutes == 12
    assert page.rejected == (
        RejectedRecord(2, 4, "DurationMinutes (int_parsing)"),
        RejectedRecord(4, None, "SessionId (int_parsing)"),
        RejectedRecord(5, None, "(root) (model_type)"),
    )
    assert "Canary" not in repr(page)


def client_answering(body: bytes) -> SecureVideoClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    return SecureVideoClient("http://127.0.0.1:9", "k", "s", transport=transport)


def test_client_history_page_tolerates_one_bad_record_where_history_fails() -> None:
    body = json.dumps([GOOD, BAD_DURATION, NEWER]).encode()
    with client_answering(body) as client:
        page = client.history_page(month=date(2027, 2, 1))
        assert [r.session_id for r in page.records] == [1, 3]
        assert [(r.session_id, r.problem) for r in page.rejected] == [
            (4, "DurationMinutes (int_parsing)")
        ]
        with pytest.raises(PermanentError, match="does not parse"):
            client.history(month=date(2027, 2, 1))
    with (
        client_answering(b'{"Message": "not a list"}') as client,
        pytest.raises(
            PermanentError,
            match=r"GET /history\?month=…: SecureVideo's answer \(200\) does not parse",
        ),
    ):
        client.history_page(month=date(2027, 2, 1))


# --- the report, pure ---------------------------------------------------------------------------


def test_build_report_totals_flags_and_no_shows() -> None:
    page = parse_history(
        json.dumps(
            [
                {**GOOD, "SessionId": 10, "DurationMinutes": 20, "WaitTime": 2},
                {**GOOD, "SessionId": 11, "DurationMinutes": 30, "WaitTime": None},
                {**GOOD, "SessionId": 12, "BillableStatusCd": "DUPL", "DurationMinutes": 5},
                {**GOOD, "SessionId": 13, "BillableStatusCd": None, "DurationMinutes": None},
                {**GOOD, "SessionId": 10, "DurationMinutes": 20, "WaitTime": 2},  # twice
                BAD_DURATION,
            ]
        )
    )
    booked = [
        BookedAppointment("A10", 10, datetime(2027, 2, 10), None),
        BookedAppointment("NS", 20, datetime(2027, 2, 11), None),
        BookedAppointment("EARLY", 21, datetime(2027, 2, 12), datetime(2027, 1, 31)),
        BookedAppointment("BAD", 4, datetime(2027, 2, 12), None),  # its record is unreadable
        BookedAppointment("MOVED", 22, datetime(2027, 2, 13), None),  # billed as session 11
        BookedAppointment("LATER", 23, datetime(2027, 2, 27), None),  # not happened yet
    ]
    report = build_report(
        FEB,
        page,
        {10: "A10", 11: "MOVED", 12: "A12"},
        booked,
        now=datetime(2027, 2, 20),
    )
    assert [(t.status, t.sessions, t.minutes, t.wait_minutes) for t in report.by_status] == [
        ("BILL", 2, 50, 2),
        ("SVCO", 0, 0, 0),
        ("DUPL", 1, 5, 3),
        ("COMP", 0, 0, 0),
        ("unknown", 1, 0, 3),
    ]
    total = report.total
    assert (total.sessions, total.minutes, total.wait_minutes) == (4, 55, 8)
    assert (total.minutes_unknown, total.wait_unknown) == (1, 1)
    assert [s.session_id for s in report.duplicates] == [12]
    assert [s.session_id for s in report.clinic_orphans] == [13]
    assert report.api_orphans == ()
    assert [n.appointment_id for n in report.no_shows] == ["NS"]
    assert [(k.session_id, k.problem) for k in report.skipped] == [
        (4, "DurationMinutes (int_parsing)")
    ]


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def w(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with world(tmp_path) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        yield w


def only(w: World, appointment_id: str) -> SessionRecord:
    (session,) = w.live(appointment_id)
    return session


def february(w: World) -> dict[str, int]:
    """A month of visits: billed, long, a duplicate, a no-show, a cancellation, an orphan, and one
    billed in March.  Returns session ids by name."""
    w.write(
        row("A1", starts=T, guests=[guest(1)]),
        row("A2", starts=T + timedelta(days=1), guests=[guest(2)]),
        row("A3", starts=T + timedelta(days=2), guests=[guest(3)]),
        row("A4", starts=T + timedelta(days=3), guests=[guest(4)]),
        row("A5", starts=T + timedelta(days=4), guests=[guest(5)]),
        row("A6", starts=datetime(2027, 2, 28, 18, 30), guests=[guest(6)]),
    )
    w.run_pass()
    w.write(row("A5", starts=T + timedelta(days=4), status="cancelled", guests=[guest(5)]))
    w.run_pass()
    ids = {a: only(w, a).session_id for a in ("A1", "A2", "A3", "A4", "A6")}
    emu = w.emulator
    emu.mark_connected(ids["A1"], None, at=T_UTC + timedelta(minutes=1))
    emu.mark_connected(
        ids["A1"], only(w, "A1").participants[1].participation_id, at=T_UTC + timedelta(minutes=3)
    )
    emu.set_billing(ids["A1"], T_UTC + timedelta(minutes=3), "BILL", 25, 2)
    emu.set_billing(ids["A2"], T_UTC + timedelta(days=1, minutes=5), "BILL", 50, 0)
    emu.set_billing(ids["A3"], T_UTC + timedelta(days=2, minutes=1), "DUPL", 4, 1)
    # A4 never connected.  A6: late on Feb 28 in New York, billable on March 1 UTC.
    emu.set_billing(ids["A6"], datetime(2027, 3, 1, 0, 2), "BILL", 30, 0)
    # Made in SecureVideo's own UI, outside syncd.
    orphan = emu.state.create_session(
        {
            "ScheduleTs": "2027-02-15T16:00:00",
            "Participants": [{"ParticipantFullName": "Walk In", "ShouldAutoDeliverCode": "N"}],
        },
        host_external_id="prov-002",
        scheduled_by_user_id=1002,
    )
    ids["orphan"] = orphan["SessionId"]
    emu.set_billing(ids["orphan"], datetime(2027, 2, 15, 16, 4), "BILL", 15, None)
    return ids


def expected_totals(w: World, period: Period) -> dict[str, dict[str, int]]:
    """What the emulator holds for the period, counted independently of syncd's report."""
    start, end = period.start, period.end
    out: dict[str, dict[str, int]] = {}
    for s in w.emulator.sessions():
        if s.billable_ts is None or not start <= s.billable_ts < end:
            continue
        t = out.setdefault(s.billable_status_cd or "unknown", {"sessions": 0, "minutes": 0})
        t["sessions"] += 1
        t["minutes"] += s.duration_minutes or 0
        t.setdefault("wait_minutes", 0)
        t["wait_minutes"] += s.wait_time or 0
    return out


def test_month_report_matches_the_emulator_and_flags_dupl_orphans_no_shows(w: World) -> None:
    ids = february(w)
    app = w.apps[-1]
    report = run_history(app.ledger, app.gateway, FEB, now=AFTER_FEB)

    expected = expected_totals(w, FEB)
    assert expected == {
        "BILL": {"sessions": 3, "minutes": 90, "wait_minutes": 2},
        "DUPL": {"sessions": 1, "minutes": 4, "wait_minutes": 1},
    }
    got = {
        t.status: {"sessions": t.sessions, "minutes": t.minutes, "wait_minutes": t.wait_minutes}
        for t in report.by_status
        if t.sessions
    }
    assert got == expected
    assert report.total.sessions == 4 and report.total.minutes == 94
    assert report.total.wait_unknown == 1  # the orphan has no WaitTime

    by_session = {s.session_id: s for s in report.sessions}
    assert set(by_session) == {ids["A1"], ids["A2"], ids["A3"], ids["orphan"]}
    assert by_session[ids["A1"]].appointment_id == "A1"
    assert [(s.session_id, s.appointment_id) for s in report.duplicates] == [(ids["A3"], "A3")]
    assert [(s.session_id, s.appointment_id, s.flags) for s in report.clinic_orphans] == [
        (ids["orphan"], None, ("CLINIC_ORPHAN",))
    ]
    assert by_session[ids["orphan"]].scheduled_by_user_id == 1002
    # A4 never connected; A5 was cancelled; A6 was billable in March but booked in February.
    assert [n.appointment_id for n in report.no_shows] == ["A4", "A6"]

    # With the outcome collector's record, A6 is known to have become billable.
    from syncd.sync.visits import OutcomeCollector

    class Clock:
        def now(self) -> datetime:
            return datetime(2027, 2, 28, 23, 0)

        def monotonic(self) -> float:
            return 0.0

    w.emulator.state.set_clock(datetime(2027, 2, 28, 23, 0))
    OutcomeCollector(ledger=app.ledger, gateway=app.gateway, clock=Clock()).collect()
    again = run_history(app.ledger, app.gateway, FEB, now=AFTER_FEB)
    assert [n.appointment_id for n in again.no_shows] == ["A4"]

    march = run_history(
        app.ledger, app.gateway, Period(date(2027, 3, 1), date(2027, 3, 1)), now=AFTER_FEB
    )
    assert [(s.session_id, s.appointment_id) for s in march.sessions] == [(ids["A6"], "A6")]


def test_history_command_in_every_format(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    ids = february(w)
    expected = expected_totals(w, FEB)
    capsys.readouterr()  # the passes' log lines

    assert main(["history", "--month", "2027-02", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["period"] == {"start": "2027-02-01", "end": "2027-02-28", "month": "2027-02"}
    by_code = [data["counted"], *data["not_counted"]["by_code"]]
    assert {
        t["status"]: {k: t[k] for k in ("sessions", "minutes", "wait_minutes")}
        for t in by_code
        if t["sessions"]
    } == expected
    assert data["duplicates"] == [ids["A3"]]
    assert data["clinic_orphans"] == [ids["orphan"]]
    assert data["api_orphans"] == []
    assert data["skipped_records"] == []

    assert main(["history", "--start", "2027-02-01", "--end", "2027-02-28", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    sessions = [r for r in rows if r["kind"] == "session"]
    assert sorted(int(r["session_id"]) for r in sessions) == sorted(
        [ids["A1"], ids["A2"], ids["A3"], ids["orphan"]]
    )
    (total,) = [r for r in rows if r["kind"] == "total"]
    assert (int(total["sessions"]), int(total["minutes"])) == (4, 94)
    flagged = {r["session_id"]: r["flags"] for r in sessions if r["flags"]}
    assert flagged == {str(ids["A3"]): "DUPL", str(ids["orphan"]): "CLINIC_ORPHAN"}

    assert main(["history", "--month", "2027-02"]) == 0
    table = capsys.readouterr().out
    assert "SecureVideo history 2027-02-01 .. 2027-02-28" in table
    assert f"Flagged DUPL by SecureVideo: {ids['A3']} (appointment A3)" in table
    assert f"The clinic's own (scheduled in SecureVideo, not by syncd): {ids['orphan']}" in table


def test_an_unparseable_record_is_named_and_skipped_and_no_phi_is_printed(
    w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = february(w)
    state = w.emulator.state
    real = state.history_json

    def with_surprises(**query: Any) -> list[dict[str, Any]]:
        records = real(**query)
        for r in records:
            # Real SecureVideo names the people here; syncd must never print it.
            r["UsageDescription"] = "Zelda Canary1 Session with Dr Canary"
            r["CustomerName"] = "Canary Clinic"
            r["FieldFromTheFuture"] = [1, 2]
        return [*records, {"SessionId": 99999, "DurationMinutes": "n/a", "BillableTs": "x"}]

    monkeypatch.setattr(state, "history_json", with_surprises)
    expected = expected_totals(w, FEB)
    capsys.readouterr()  # the passes' log lines
    for fmt in ("table", "csv", "json"):
        assert main(["history", "--month", "2027-02", "--format", fmt]) == 1
        out, err = capsys.readouterr()
        assert "Canary" not in out + err  # log lines (stderr) included
        (said,) = [line for line in err.splitlines() if line.startswith("syncd: ")]
        assert said.startswith("syncd: history: skipped an unreadable record (SessionId 99999):")
        assert "DurationMinutes (int_parsing)" in said
        assert "99999" in out
    data = json.loads(out)
    assert data["skipped_records"][0]["session_id"] == 99999
    assert data["listed"]["sessions"] == sum(t["sessions"] for t in expected.values())
    assert data["clinic_orphans"] == [ids["orphan"]]


@pytest.mark.parametrize(
    "args",
    [
        ["--month", "2027-13"],
        ["--month", "27-02"],
        ["--start", "2027-02-01"],
        ["--start", "2027-02-10", "--end", "2027-02-01"],
        ["--start", "2027-02-31", "--end", "2027-03-01"],
        ["--month", "2027-02", "--end", "2027-03-01"],
    ],
)
def test_bad_month_or_range_exits_2_with_one_line(
    w: World, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    w.emulator.calls_clear()
    assert main(["history", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("syncd: history: ") and err.count("\n") == 1
    assert w.emulator.calls == []


def test_report_renderers_on_an_empty_month() -> None:
    report = build_report(FEB, HistoryPage((), ()), {}, [], now=AFTER_FEB)
    assert to_json(report)["listed"]["sessions"] == 0
    assert "Possible no-shows: none" in render_table(report)
    assert render_csv(report).splitlines()[-1] == "total,,,,0,0,0,0,0,0,0,,,,,,,,"


# --- counted and not counted, by platform: figures against a hand count -------------------------


def every_code_and_platform(w: World) -> dict[str, int]:
    """One session of every code and every platform, an API orphan and a clinic's own session."""
    from syncd.emulator.visits import simulate_visit

    names = ("zoom", "oneclick", "vsee", "svco", "dupl", "comp")
    w.write(
        *(
            row(f"H{i}", starts=T + timedelta(days=i), guests=[guest(10 + i)])
            for i in range(len(names))
        )
    )
    w.run_pass()
    ids = {name: only(w, f"H{i}").session_id for i, name in enumerate(names)}
    emu = w.emulator
    day = timedelta(days=1)
    emu.set_billing(ids["zoom"], T_UTC + timedelta(minutes=4), "BILL", 30, 4, provider="Zoom")
    emu.set_billing(ids["oneclick"], T_UTC + day, "BILL", 20, 2, provider="One-Click")
    # VSee: DurationMinutes counts only the host's minutes with a participant; WaitTime is 0.
    simulate_visit(
        emu.state,
        ids["vsee"],
        start=T_UTC + 2 * day,
        duration_minutes=15,
        wait_minutes=3,
        provider="VSee",
    )
    emu.set_billing(ids["svco"], T_UTC + 3 * day, "SVCO", 10, 1, provider="Zoom")
    emu.set_billing(ids["dupl"], T_UTC + 4 * day, "DUPL", 6, 0, provider="One-Click")
    emu.set_billing(ids["comp"], T_UTC + 5 * day, "COMP", 8, 0, provider="VSee")
    walk_in = {"Participants": [{"ParticipantFullName": "Walk In", "ShouldAutoDeliverCode": "N"}]}
    api = emu.state.create_session(
        {"ScheduleTs": "2027-02-20T16:00:00", **walk_in}, host_external_id="prov-001"
    )  # through the API (ScheduledByUserId -1), by something that is not this syncd
    ids["api_orphan"] = api["SessionId"]
    emu.set_billing(ids["api_orphan"], datetime(2027, 2, 20, 16, 5), "BILL", 40, 5)
    clinic = emu.state.create_session(
        {"ScheduleTs": "2027-02-21T16:00:00", **walk_in},
        host_external_id="prov-002",
        scheduled_by_user_id=1002,
    )
    ids["clinic_orphan"] = clinic["SessionId"]
    emu.set_billing(ids["clinic_orphan"], datetime(2027, 2, 21, 16, 1), "BILL", 12, None)
    return ids


# Counted by hand from every_code_and_platform (minutes / connected = minutes - wait / wait):
#   zoom 30/26/4, oneclick 20/18/2, vsee 12/12/0 (15 minutes with 3 of waiting, not counted on
#   VSee), api_orphan (Zoom) 40/35/5, clinic_orphan (Zoom) 12/-/- (no WaitTime): BILL
#   svco (Zoom) 10/9/1, dupl (One-Click) 6/6/0, comp (VSee) 8/8/0: not counted
HAND_COUNTED = {
    "status": "BILL", "sessions": 5, "minutes": 30 + 20 + 12 + 40 + 12,
    "connected_minutes": 26 + 18 + 12 + 35, "wait_minutes": 4 + 2 + 0 + 5,
    "minutes_unknown": 0, "wait_unknown": 1, "connected_unknown": 1,
}  # fmt: skip
HAND_BY_PROVIDER = {  # sessions, minutes, connected
    "One-Click": (1, 20, 18),
    "VSee": (1, 12, 12),
    "Zoom": (3, 30 + 40 + 12, 26 + 35),
}
HAND_NOT_COUNTED = {"SVCO": (1, 10, 9, 1), "DUPL": (1, 6, 6, 0), "COMP": (1, 8, 8, 0)}


def test_counted_and_not_counted_match_a_hand_count(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = every_code_and_platform(w)
    app = w.apps[-1]
    report = run_history(app.ledger, app.gateway, FEB, now=AFTER_FEB)

    assert dataclasses.asdict(report.counted) == HAND_COUNTED
    assert {
        t.status: (t.sessions, t.minutes, t.connected_minutes) for t in report.counted_by_provider
    } == HAND_BY_PROVIDER
    assert {
        t.status: (t.sessions, t.minutes, t.connected_minutes, t.wait_minutes)
        for t in report.not_counted_by_code
    } == HAND_NOT_COUNTED
    assert (report.not_counted.sessions, report.not_counted.minutes) == (3, 24)
    assert report.unclassified.sessions == 0
    assert (report.total.sessions, report.total.minutes) == (8, 138)
    by_id = {s.session_id: s for s in report.sessions}
    assert (by_id[ids["vsee"]].provider, by_id[ids["vsee"]].connected_minutes) == ("VSee", 12)
    assert by_id[ids["clinic_orphan"]].connected_minutes is None
    assert [s.session_id for s in report.api_orphans] == [ids["api_orphan"]]
    assert [s.session_id for s in report.clinic_orphans] == [ids["clinic_orphan"]]
    assert [s.session_id for s in report.duplicates] == [ids["dupl"]]

    capsys.readouterr()
    assert main(["history", "--month", "2027-02", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    counted = dict(data["counted"])
    assert {p["status"]: p["sessions"] for p in counted.pop("by_provider")} == {
        k: v[0] for k, v in HAND_BY_PROVIDER.items()
    }
    assert counted == HAND_COUNTED
    assert [
        (t["status"], t["sessions"], t["minutes"], t["connected_minutes"], t["wait_minutes"])
        for t in data["not_counted"]["by_code"]
    ] == [(code, *figures) for code, figures in HAND_NOT_COUNTED.items()]
    assert data["api_orphans"] == [ids["api_orphan"]]
    assert data["clinic_orphans"] == [ids["clinic_orphan"]]

    assert main(["history", "--month", "2027-02", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    groups = {r["counts"]: r for r in rows if r["kind"] == "group_total"}
    assert (groups["counted"]["sessions"], groups["counted"]["minutes"]) == ("5", "114")
    assert groups["counted"]["connected_minutes"] == "91"
    assert (groups["not_counted"]["sessions"], groups["not_counted"]["minutes"]) == ("3", "24")
    (total,) = [r for r in rows if r["kind"] == "total"]
    assert (total["sessions"], total["minutes"], total["wait_unknown"]) == ("8", "138", "1")
    assert total["connected_unknown"] == "1" and total["minutes_unknown"] == "0"
    codes = {r["status"]: r["counts"] for r in rows if r["kind"] == "status_total"}
    assert codes == {
        "BILL": "counted",
        "SVCO": "not_counted",
        "DUPL": "not_counted",
        "COMP": "not_counted",
    }
    platforms = {r["session_id"]: r["provider"] for r in rows if r["kind"] == "session"}
    assert platforms[str(ids["vsee"])] == "VSee"

    assert main(["history", "--month", "2027-02"]) == 0
    table, err = capsys.readouterr()
    alarm = [line for line in err.splitlines() if line.startswith("syncd: history: ALARM")]
    assert alarm == [
        "syncd: history: ALARM: 1 session(s) made through the API are unknown to the ledger "
        f"(another integration, or a lost ledger): {ids['api_orphan']}"
    ]
    assert (
        "Counted towards the monthly session limit (BILL): 5 session(s), 114 minute(s) "
        "(91 after the second participant connected)" in table
    )
    assert "Not counted (SVCO, DUPL, COMP): 3 session(s), 24 minute(s) (23 after" in table
    assert "ALARM: made through the API but unknown to the ledger" in table
    assert str(ids["api_orphan"]) in table.split("ALARM")[1].splitlines()[0]


def test_a_session_listed_twice_counts_once_and_a_new_code_is_kept_apart() -> None:
    page = parse_history(
        json.dumps(
            [
                {**GOOD, "SessionId": 1, "ScheduledByUserId": -1, "WaitTime": 3},
                {**GOOD, "SessionId": 1, "ScheduledByUserId": -1, "WaitTime": 3},  # twice
                {**GOOD, "SessionId": 2, "BillableStatusCd": "XTRA", "DurationMinutes": 7},
                {**GOOD, "SessionId": 3, "ScheduledByUserId": None, "WaitTime": 30},
            ]
        )
    )
    report = build_report(FEB, page, {}, [], now=AFTER_FEB)
    # By hand: sessions 1 and 3 are BILL, 25 minutes each; 1 waited 3, 3 waited 30 (more than it
    # lasted: connected 0, never negative).  Session 2's code is not a documented one.
    assert (report.counted.sessions, report.counted.minutes) == (2, 50)
    assert report.counted.connected_minutes == 22
    assert [(t.status, t.sessions, t.minutes) for t in report.unclassified_by_code] == [
        ("XTRA", 1, 7)
    ]
    assert report.not_counted.sessions == 0
    assert [s.session_id for s in report.api_orphans] == [1]
    assert [s.session_id for s in report.clinic_orphans] == [2, 3]  # no scheduler: not the API
    assert "Without a documented code: 1 session(s), 7 minute(s)" in render_table(report)


def test_emulator_history_follows_the_person_who_now_has_the_address() -> None:
    from syncd.emulator.state import EmulatorState

    state = EmulatorState(seed=7)
    state.set_clock(datetime(2027, 2, 1))

    def session(at: str, email: str) -> tuple[int, int]:
        created = state.create_session(
            {
                "ScheduleTs": at,
                "Participants": [
                    {
                        "ParticipantFullName": "Alex Alexis",
                        "ParticipantEmailAddress": email,
                        "ShouldAutoDeliverCode": "E",
                    }
                ],
            },
            host_external_id="prov-001",
        )
        sid = created["SessionId"]
        state.set_billing(sid, datetime.fromisoformat(at), "BILL", 20, 1)
        return sid, created["Participants"][1]["ParticipationId"]

    first, _ = session("2027-02-02T15:00:00", "aa@old.example")
    second, participation = session("2027-02-03T15:00:00", "aa@old.example")
    other, _ = session("2027-02-04T15:00:00", "someone@else.example")
    # Alex now has another address: set on the latest session, it is the person's.
    state.update_participant(
        {"ParticipantEmailAddress": "aa@changed.example"}, participation_id=participation
    )

    def ids(email: str) -> list[int]:
        return [r["SessionId"] for r in state.history_json(participant_email=email)]

    assert ids("AA@changed.example") == [first, second]  # the session under the old one too
    assert ids("aa@old.example") == []  # nobody has it now
    assert ids("someone@else.example") == [other]
    (record,) = [r for r in state.history_json() if r["SessionId"] == first]
    assert {"CustomerId", "CustomerName", "ScheduledByUserId"} <= set(record)
    assert record["ScheduledByUserId"] == -1 and record["ReportableMeetingProvider"] == "Zoom"

    # A state file keeps who has which address.
    from syncd.emulator.persist import restore, snapshot

    again = EmulatorState(seed=7)
    restore(again, json.loads(json.dumps(snapshot(state), default=str)))
    assert [r["SessionId"] for r in again.history_json(participant_email="aa@changed.example")] == [
        first,
        second,
    ]


def test_emulator_visit_control_takes_the_platform() -> None:
    from syncd.emulator.state import EmulatorState, InvalidRequestError
    from syncd.emulator.visits import admin_request

    state = EmulatorState(seed=3)
    state.set_clock(datetime(2027, 2, 10, 15, 0))
    created = state.create_session(
        {
            "ScheduleTs": "2027-02-10T14:00:00",
            "Participants": [{"ParticipantFullName": "Walk In", "ShouldAutoDeliverCode": "N"}],
        },
        host_external_id="prov-001",
    )
    body = {"StartTs": "2027-02-10T14:00:00", "DurationMinutes": 20, "WaitTime": 5}
    path = f"visit/{created['SessionId']}"
    admin_request(state, "POST", path, {}, {**body, "ReportableMeetingProvider": "VSee"})
    (record,) = state.history_json(month=date(2027, 2, 1))
    # VSee: only the host's minutes with a participant, and WaitTime always 0.
    assert (record["ReportableMeetingProvider"], record["DurationMinutes"]) == ("VSee", 15)
    assert record["WaitTime"] == 0
    with pytest.raises(InvalidRequestError, match="ReportableMeetingProvider must be"):
        admin_request(state, "POST", path, {}, {**body, "ReportableMeetingProvider": "Skype"})
