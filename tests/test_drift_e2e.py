"""Issue 15, drift, end to end: clinic staff change sessions through SecureVideo's own API (the
emulator's HTTP endpoints, as SecureVideo's UI would), and syncd finds it on its next account read.

Each kind of drift runs under both policies: ``report`` keeps what staff did (and says so in the
log, the ledger and ``syncd status``), ``restore`` makes the next pass undo it.  The drift interval
is one second, so each test waits for the next account read for real.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, MutableMapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import World, guest, row, world
from structlog.testing import capture_logs

from syncd.emulator.state import SessionRecord
from syncd.ports.ledger import DriftRecord
from syncd.runtime.app import probes_of
from syncd.runtime.cli import main
from syncd.runtime.health import HealthState
from syncd.runtime.status import collect_status, render_status
from syncd.sync.report import PassReport

#: a Wednesday 09:00 in New York, far enough ahead to be a future visit
T = datetime(2031, 3, 5, 9, 0)
T_UTC = datetime(2031, 3, 5, 14, 0)


@pytest.fixture(params=["report", "restore"])
def policy(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def w(tmp_path: Path, policy: str) -> Iterator[World]:
    with world(tmp_path, drift_interval_seconds=1, drift=policy) as w:
        yield w


class Staff:
    """SecureVideo's own UI: the account's HTTP API, with the clinic's credentials (plain
    ``urllib``, nothing of syncd's client)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = "Basic " + base64.b64encode(b"demo:demo").decode()

    def send(
        self, method: str, path: str, body: object = None, params: dict[str, str] | None = None
    ) -> Any:
        url = self.base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", self.auth)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as answer:
            raw = answer.read()
        return json.loads(raw) if raw else None


@pytest.fixture
def staff(w: World) -> Staff:
    return Staff(w.emulator.base_url)


def next_look(w: World) -> PassReport:
    """Passes until one looks at a new account read (the drift interval is 1 s: a real wait)."""
    deadline = time.monotonic() + 10
    while True:
        report = w.run_pass()
        if report.drift is not None:
            return report
        assert time.monotonic() < deadline, "no account read within 10 s"
        time.sleep(0.05)


def booked(w: World) -> SessionRecord:
    """A1 booked with one patient, synced, and one account read looked at since."""
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    next_look(w)
    (session,) = w.live("A1")
    return session


def syncd_mutations(w: World, since: int) -> list[tuple[str, str]]:
    return [(c.method, c.path.split("?")[0]) for c in w.emulator.mutating_calls()[since:]]


def drift_on_file(w: World) -> list[tuple[str, str]]:
    with w.apps[-1].ledger.begin() as tx:
        rows: list[DriftRecord] = tx.drift.current()
    return [(d.appointment_id, d.kind) for d in rows]


def detected(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    return [(e["appointment_id"], e["kind"]) for e in logs if e["event"] == "drift_detected"]


def look_and_settle(w: World, policy: str) -> tuple[list[MutableMapping[str, Any]], int]:
    """The next look (logs captured) and, under restore, the pass after it; the emulator's
    mutating-call count before syncd's reaction."""
    before = len(w.emulator.mutating_calls())
    with capture_logs() as logs:
        report = next_look(w)
        if policy == "restore":
            assert report.drift is not None and report.drift.restoring == ["A1"]
            w.run_pass()
    return logs, before


def assert_reported(w: World, logs: list[MutableMapping[str, Any]], kind: str) -> None:
    assert detected(logs) == [("A1", kind)]
    (event,) = [e for e in logs if e["event"] == "drift_detected"]
    # ids and kinds only
    assert set(event) <= {"event", "appointment_id", "kind", "session_id", "policy", "log_level"}
    assert drift_on_file(w) == [("A1", kind)]
    status = collect_status(w.settings)
    (entry,) = status["drifted"]
    assert [d["kind"] for d in entry["drift"]] == [kind]
    assert f"A1  ({kind} since " in render_status(status)


# --- each kind, under both policies -------------------------------------------------------------


def test_staff_cancelling_the_session(w: World, staff: Staff, policy: str) -> None:
    session = booked(w)
    staff.send("DELETE", f"/session/{session.session_id}")
    logs, before = look_and_settle(w, policy)
    if policy == "report":
        assert_reported(w, logs, "cancelled")
        assert syncd_mutations(w, before) == []
        assert w.live("A1") == []
        # an unrelated EHR edit does not bring it back: no new invitation for the patient
        w.write(row("A1", starts=T, guests=[guest(1)], topic="another topic"))
        w.run_pass()
        assert syncd_mutations(w, before) == []
        assert w.live("A1") == []
        # the EHR moving the visit asks for a session again
        w.write(row("A1", starts=T + timedelta(hours=1), guests=[guest(1)]))
        w.run_pass()
        assert syncd_mutations(w, before) == [("POST", "/session/0")]
    else:
        assert detected(logs) == [("A1", "cancelled")]
        assert syncd_mutations(w, before) == [("POST", "/session/0")]
        (again,) = w.live("A1")
        assert again.schedule_ts == T_UTC
        next_look(w)
        assert drift_on_file(w) == []


def test_staff_moving_the_session(w: World, staff: Staff, policy: str) -> None:
    session = booked(w)
    staff.send("PUT", f"/session/{session.session_id}", {"ScheduleTs": "2031-03-05T16:00:00"})
    logs, before = look_and_settle(w, policy)
    (now_shows,) = w.live("A1")
    if policy == "report":
        assert_reported(w, logs, "time_moved")
        assert syncd_mutations(w, before) == []
        assert now_shows.schedule_ts == datetime(2031, 3, 5, 16, 0)
        # an unrelated EHR edit is planned against what SecureVideo shows: no re-time
        w.write(row("A1", starts=T, guests=[guest(1), guest(2)]))
        w.run_pass()
        assert syncd_mutations(w, before) == [("POST", f"/participant/{session.session_id}")]
        assert w.live("A1")[0].schedule_ts == datetime(2031, 3, 5, 16, 0)
    else:
        assert syncd_mutations(w, before) == [("PUT", f"/session/{session.session_id}")]
        assert now_shows.schedule_ts == T_UTC
        next_look(w)
        assert drift_on_file(w) == []


def test_staff_removing_the_guest(w: World, staff: Staff, policy: str) -> None:
    session = booked(w)
    patient = session.participants[1].participation_id
    staff.send("DELETE", f"/participant/{patient}")
    # and put their own guest in (an interpreter): never syncd's to remove or restore
    staff.send(
        "POST",
        f"/participant/{session.session_id}",
        {"ParticipantFullName": "Interpreter", "ShouldAutoDeliverCode": "N", "PacketId": -1},
    )
    logs, before = look_and_settle(w, policy)
    if policy == "report":
        assert_reported(w, logs, "guest_removed")
        assert syncd_mutations(w, before) == []
        w.write(row("A1", starts=T, guests=[guest(1)], topic="another topic"))
        w.run_pass()
        assert syncd_mutations(w, before) == []
        names = [p.full_name for p in w.live("A1")[0].participants[1:]]
        assert names == ["Interpreter"]
    else:
        assert syncd_mutations(w, before) == [("POST", f"/participant/{session.session_id}")]
        shown = [(p.full_name, p.external_id) for p in w.live("A1")[0].participants[1:]]
        assert shown == [("Interpreter", None), (guest(1)["full_name"], "pat-1")]


def test_staff_changing_the_guests_details(w: World, staff: Staff, policy: str) -> None:
    session = booked(w)
    patient = session.participants[1].participation_id
    staff.send(
        "PUT", f"/participant/{patient}", {"ParticipantEmailAddress": "front.desk@clinic.example"}
    )
    logs, before = look_and_settle(w, policy)
    email = w.live("A1")[0].participants[1].email
    if policy == "report":
        assert_reported(w, logs, "guest_changed")
        assert syncd_mutations(w, before) == []
        assert email == "front.desk@clinic.example"
    else:
        assert syncd_mutations(w, before) == [("PUT", f"/participant/{patient}")]
        assert email == guest(1)["email"]


def test_staff_booking_a_second_session_under_the_id(w: World, staff: Staff, policy: str) -> None:
    session = booked(w)
    made = staff.send(
        "POST",
        "/session/0",
        {
            "ExternalSessionId": "A1",
            "ScheduleTs": "2031-03-06T14:00:00",
            "Participants": [{"ParticipantFullName": "Walk In", "ShouldAutoDeliverCode": "N"}],
        },
        params={"externalId": "prov-001"},
    )
    extra = made["SessionId"]
    logs, before = look_and_settle(w, policy)
    live = sorted(s.session_id for s in w.live("A1"))
    if policy == "report":
        assert_reported(w, logs, "extra_session")
        assert syncd_mutations(w, before) == []
        # an EHR edit leaves staff's session alone
        w.write(row("A1", starts=T, guests=[guest(1)], topic="another topic"))
        w.run_pass()
        assert syncd_mutations(w, before) == []
        assert live == sorted([session.session_id, extra])
    else:
        assert syncd_mutations(w, before) == [("DELETE", f"/session/{extra}")]
        assert live == [session.session_id]


def test_the_session_gone_from_the_list_before_its_time(w: World, policy: str) -> None:
    session = booked(w)
    # SecureVideo has no API call that does this (its support can); the account loses it.
    state = w.emulator.state
    with state._lock:
        del state._sessions[session.session_id]
        state._by_external_session_id.pop("A1", None)
    logs, before = look_and_settle(w, policy)
    if policy == "report":
        assert_reported(w, logs, "session_gone")
        assert syncd_mutations(w, before) == []
        w.write(row("A1", starts=T, guests=[guest(1)], topic="another topic"))
        w.run_pass()
        assert syncd_mutations(w, before) == []
    else:
        assert syncd_mutations(w, before) == [("POST", "/session/0")]
        assert len(w.live("A1")) == 1


# --- idle ---------------------------------------------------------------------------------------


def test_idle_with_no_drift_one_account_read_per_look_and_no_mutating_call(
    w: World, policy: str
) -> None:
    booked(w)
    w.emulator.calls_clear()
    with capture_logs() as logs:
        for _ in range(3):
            next_look(w)
    assert [(c.method, c.path) for c in w.emulator.calls] == [("GET", "/session")] * 3
    assert detected(logs) == []
    assert drift_on_file(w) == []


# --- syncd plan and /metrics --------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["report"], indirect=True)
def test_plan_shows_the_restoring_call_and_the_gauge_counts_the_appointment(
    w: World,
    staff: Staff,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    session = booked(w)
    staff.send("PUT", f"/session/{session.session_id}", {"ScheduleTs": "2031-03-05T16:00:00"})
    next_look(w)
    health = HealthState()
    health.attach(probes_of(w.apps[-1]))
    scraped = health.metrics_text().decode()
    assert "syncd_drifted_appointments 1.0" in scraped
    for key, value in w.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SYNCD_SYNC__DRIFT", "report")
    before = len(w.emulator.mutating_calls())
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "A1:" in out
    (line,) = [x for x in out.splitlines() if "reschedule" in x]
    assert f"session_id={session.session_id}" in line
    assert "schedule_ts=2031-03-05T14:00:00" in line
    assert "drift=would-restore" in line
    assert len(w.emulator.mutating_calls()) == before  # a plan makes no call
