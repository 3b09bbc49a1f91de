"""Trying syncd by hand: the emulator's providers, state file and visits; status and quiet stderr.

What a new engineer does on a first afternoon: start ``syncd emulator``, run ``syncd once``, make
a visit happen, then ``syncd outcomes`` and ``syncd history``; look at ``syncd status``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from harness import World, guest, row, world

from syncd.adapters.securevideo import SecureVideoClient
from syncd.adapters.securevideo.wire import NewSession
from syncd.emulator import (
    DEFAULT_HOSTS,
    Emulator,
    InvalidRequestError,
    StateFile,
    StateFileError,
    serve,
    simulate_visit,
)
from syncd.runtime.cli import main
from syncd.runtime.log import configure_logging
from syncd.runtime.status import render_status

T = datetime(2027, 2, 10, 9, 0)  # America/New_York: 14:00 UTC
STARTED = "2027-02-10T14:00:00"


@pytest.fixture
def w(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with world(tmp_path) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        yield w


def _post(base_url: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"demo:demo").decode())
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _new_session(client: SecureVideoClient, external_session_id: str) -> int:
    body = NewSession.model_validate(
        {
            "ScheduleTs": datetime(2027, 3, 1, 15, 0),
            "ExternalSessionId": external_session_id,
            "Participants": [
                {"ParticipantFullName": "Zelda Canary1", "ShouldAutoDeliverCode": "N"}
            ],
        }
    )
    return client.create_session_raw(body, host_external_id="prov-001").session_id


# --- a visit, then outcomes and history ---------------------------------------------------------


def test_a_simulated_visit_feeds_outcomes_and_history(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert main(["once"]) == 0
    (session,) = w.live("A1")
    assert session.billable_ts is None

    status, visited = _post(
        w.emulator.base_url,
        "/emulator/visit/0?externalSessionId=A1",
        {"StartTs": STARTED, "DurationMinutes": 30, "WaitTime": 3},
    )
    assert status == 200
    assert visited["SessionId"] == session.session_id
    assert visited["BillableTs"] == "2027-02-10T14:03:00"
    assert (visited["BillableStatusCd"], visited["DurationMinutes"], visited["WaitTime"]) == (
        "BILL",
        30,
        3,
    )
    host, patient = visited["Participants"]
    assert (host["ConnectionTs"], patient["ConnectionTs"]) == (STARTED, "2027-02-10T14:03:00")
    capsys.readouterr()

    assert main(["outcomes"]) == 0
    out = capsys.readouterr().out
    assert "1 session(s) and 1 participant(s) changed" in out

    assert main(["history", "--month", "2027-02", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    counted = report["counted"]
    assert (counted["status"], counted["sessions"], counted["minutes"]) == ("BILL", 1, 30)
    assert counted["connected_minutes"] == 27  # 30 minutes, 3 of them waiting (Zoom)
    assert report["not_counted"]["sessions"] == 0
    (line,) = report["sessions"]
    assert (line["session_id"], line["appointment_id"]) == (session.session_id, "A1")
    assert report["possible_no_shows"] == []


def test_a_visit_is_refused_for_a_cancelled_or_unknown_session(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert main(["once"]) == 0
    (session,) = w.live("A1")
    w.write(row("A1", starts=T, guests=[guest(1)], status="cancelled"))
    assert main(["once"]) == 0
    status, answer = _post(w.emulator.base_url, f"/emulator/visit/{session.session_id}")
    assert status == 400 and "cancelled" in answer["Message"]
    status, answer = _post(w.emulator.base_url, "/emulator/visit/0?externalSessionId=NOPE")
    assert status == 404
    status, _ = _post(w.emulator.base_url, "/emulator/nothing/1")
    assert status == 404
    assert w.emulator.sessions()[0].billable_ts is None


def test_a_visit_by_default_has_just_ended_and_billable_ts_never_moves() -> None:
    emulator = Emulator()
    emulator.state.set_clock(datetime(2027, 2, 10, 15, 0))
    with emulator, SecureVideoClient(emulator.base_url, "demo", "demo") as client:
        session_id = _new_session(client, "V1")
    first = simulate_visit(emulator.state, session_id)
    assert first["Participants"][0]["ConnectionTs"] == "2027-02-10T14:35:00"  # 25 min before
    assert first["BillableTs"] == "2027-02-10T14:37:00"
    again = simulate_visit(emulator.state, session_id, duration_minutes=40, wait_minutes=0)
    assert again["BillableTs"] == first["BillableTs"]
    assert again["DurationMinutes"] == 40
    with pytest.raises(InvalidRequestError):
        simulate_visit(emulator.state, session_id, duration_minutes=5, wait_minutes=10)


# --- the state file ------------------------------------------------------------------------------


def _serve_in_thread(state_file: Path) -> tuple[threading.Thread, threading.Event, list[Emulator]]:
    ready: list[Emulator] = []
    stop = threading.Event()
    started = threading.Event()

    def on_ready(emulator: Emulator) -> None:
        ready.append(emulator)
        started.set()

    options = {"on_ready": on_ready, "stop": stop, "state_file": state_file}
    thread = threading.Thread(target=serve, args=(0,), kwargs=options)
    thread.start()
    assert started.wait(10)
    return thread, stop, ready


def test_the_state_file_survives_a_restart_and_ids_are_never_reused(tmp_path: Path) -> None:
    state_file = tmp_path / "emulator.json"
    thread, stop, (emulator,) = _serve_in_thread(state_file)
    with SecureVideoClient(emulator.base_url, "demo", "demo") as client:
        first = _new_session(client, "S1")
        # Written on the change, before the answer: no need to stop the emulator first.
        saved = json.loads(state_file.read_text())
        assert [s["session_id"] for s in saved["sessions"]] == [first]
        _post(emulator.base_url, f"/emulator/visit/{first}", {"StartTs": STARTED})
    stop.set()
    thread.join(10)
    assert [p.name for p in tmp_path.iterdir()] == ["emulator.json"]  # no temporary file left

    thread, stop, (restarted,) = _serve_in_thread(state_file)
    try:
        (kept,) = restarted.sessions()
        assert (kept.session_id, kept.external_session_id) == (first, "S1")
        assert kept.billable_ts == datetime(2027, 2, 10, 14, 2)
        assert kept.participants[1].full_name == "Zelda Canary1"
        with SecureVideoClient(restarted.base_url, "demo", "demo") as client:
            assert [s.session_id for s in client.list_sessions(host_external_id="prov-001")] == [
                first
            ]
            second = _new_session(client, "S2")
        assert second > first
        ids = [p.participation_id for s in restarted.sessions() for p in s.participants]
        assert len(ids) == len(set(ids))
    finally:
        stop.set()
        thread.join(10)


def test_a_state_file_that_cannot_be_loaded_is_one_line_and_left_alone(tmp_path: Path) -> None:
    broken = tmp_path / "emulator.json"
    broken.write_text('{"format": "something else"}')
    with pytest.raises(StateFileError) as info:
        StateFile(broken, Emulator().state).load()
    assert str(info.value) == f"{broken}: it is not an emulator state file"

    env = {**os.environ, "SYNCD_CONFIG_FILE": ""}
    result = subprocess.run(
        [sys.executable, "-m", "syncd", "emulator", "--port", "0", "--state-file", str(broken)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"syncd: emulator: --state-file {broken}: it is not an emulator state file"
    ]
    assert broken.read_text() == '{"format": "something else"}'


def test_the_emulator_command_lists_its_providers_and_keeps_its_state(tmp_path: Path) -> None:
    state_file = tmp_path / "emulator.json"
    command = [sys.executable, "-m", "syncd", "emulator", "--port", "0"]
    env = {**os.environ, "SYNCD_CONFIG_FILE": "", "PYTHONUNBUFFERED": "1"}

    def start() -> tuple[subprocess.Popen[str], int, list[dict[str, Any]]]:
        proc = subprocess.Popen(
            [*command, "--state-file", str(state_file)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        lines: list[dict[str, Any]] = []
        while len(lines) < 1 + len(DEFAULT_HOSTS):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(json.loads(line))
        return proc, lines[0]["port"], lines

    proc, port, lines = start()
    try:
        assert lines[0]["event"] == "emulator_listening" and lines[0]["tls"] is False
        assert [(e["event"], e["provider_external_id"], e["host_user_id"]) for e in lines[1:]] == [
            ("emulator_host", h.external_id, h.user_id) for h in DEFAULT_HOSTS
        ]
        assert "Demo Provider" not in json.dumps(lines)
        with SecureVideoClient(f"http://127.0.0.1:{port}", "demo", "demo") as client:
            session_id = _new_session(client, "C1")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    proc, port, _ = start()
    try:
        with SecureVideoClient(f"http://127.0.0.1:{port}", "demo", "demo") as client:
            listed = client.list_sessions(host_external_id="prov-001")
        assert [s.session_id for s in listed] == [session_id]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_emulator_tls_flags_are_checked_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["emulator", "--port", "0", "--tls-cert", str(tmp_path / "c.pem")]) == 2
    assert capsys.readouterr().err == "syncd: emulator: give --tls-cert and --tls-key together\n"
    missing = ["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")]
    assert main(["emulator", "--port", "0", *missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("syncd: emulator: --tls-cert/--tls-key cannot be loaded: ")
    assert err.count("\n") == 1


# --- status and stderr ---------------------------------------------------------------------------


def test_status_says_in_words_what_is_unknown_or_not_waiting() -> None:
    base: dict[str, Any] = {
        "cursor": 0,
        "outbox_newest_event_id": None,
        "lag_events": None,
        "oldest_pending_seconds": None,
        "outbox_error": None,
        "counts": {},
        "parked": [],
        "retrying": [],
    }
    text = render_status(base)
    assert "lag:               unknown (outbox not read); no change pending" in text
    assert "- s" not in text and "- events" not in text
    text = render_status(base | {"lag_events": 3, "oldest_pending_seconds": 42})
    assert "lag:               3 events; oldest pending change waiting 42 s" in text


def test_status_plan_and_check_print_no_alembic_lines(w: World) -> None:
    # A fresh SQLite ledger: status migrates it, which is when Alembic talks the most.
    env = {**os.environ, **w.env()}
    w.write(row("A1", starts=T, guests=[guest(1)]))
    for command in (["status"], ["plan"], ["check"]):
        result = subprocess.run(
            [sys.executable, "-m", "syncd", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stderr.splitlines()]
        assert not [e for e in events if e.get("logger", "").startswith("alembic")], command
        assert {e["event"] for e in events} <= {"ledger_migrated"}, command
        assert "- s" not in result.stdout


def test_alembic_speaks_only_when_asked_for_debug() -> None:
    try:
        configure_logging("json", "INFO")
        assert logging.getLogger("alembic").getEffectiveLevel() == logging.WARNING
        configure_logging("json", "DEBUG")
        assert logging.getLogger("alembic").getEffectiveLevel() == logging.DEBUG
    finally:
        configure_logging("json", "INFO")


# --- the documents -------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
_REPO_PATH = re.compile(r"`((?:config|docs|syncd|tests|migrations|benchmarks)/[A-Za-z0-9_./-]+)`")


def test_the_operator_documents_name_only_files_that_ship() -> None:
    # container.md once sent readers to a file on its author's machine.
    for doc in ("README.md", "docs/container.md", "docs/operations.md", "docs/architecture.md"):
        text = (REPO / doc).read_text(encoding="utf-8")
        assert "/work/" not in text, doc
        missing = [p for p in _REPO_PATH.findall(text) if not (REPO / p.rstrip(".")).exists()]
        assert missing == [], doc
