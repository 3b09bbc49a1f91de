"""The command line, end to end: exit codes, what each command prints, what it must not change."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from harness import World, guest, row, world

from syncd.runtime.cli import _parser, main

T = datetime(2027, 2, 10, 9, 0)


@pytest.fixture
def w(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with world(tmp_path) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        yield w


def ledger_dump(w: World) -> list[tuple[object, ...]]:
    path = str(w.settings.ledger.url).removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        return [(t, *r) for t in sorted(tables) for r in conn.execute(f'select * from "{t}"')]


def test_once_exits_0_when_everything_applied(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert main(["once"]) == 0
    assert len(w.live("A1")) == 1


def test_once_exits_1_when_something_was_parked(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]), row("BAD", starts=T, status="maybe"))
    assert main(["once"]) == 1
    assert len(w.live("A1")) == 1


def test_once_exits_2_with_one_line_on_rejected_credentials(
    w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SYNCD_SECUREVIDEO__API_SECRET", "wrong-secret-value")
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert main(["once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("syncd: ") and err.count("\n") == 1
    assert "401" in err
    assert "wrong-secret-value" not in err


def test_plan_prints_operations_and_changes_nothing(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert main(["once"]) == 0
    w.write(
        row("A1", starts=T.replace(hour=11), guests=[guest(1, email="new@phi.example")]),
        row("A2", starts=T, guests=[guest(2)]),
        row("BAD", starts=T, status="maybe"),
    )
    before = ledger_dump(w)
    w.emulator.calls_clear()
    capsys.readouterr()

    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert w.emulator.mutating_calls() == []
    assert ledger_dump(w) == before
    lines = out.splitlines()
    # A1: a new e-mail (an invitation there) and a new time; A2: a new session's invitation.
    assert "A1: 2 notices to patients" in lines and "A2: 1 notice to patients" in lines
    assert "total: 3 notices to patients across 2 appointment(s)" in lines
    assert any(line.strip().startswith("reschedule") and "notices=1" in line for line in lines)
    assert any("update_participant" in line and "fields=email" in line for line in lines)
    assert any(line.strip().startswith("reschedule") for line in lines)
    assert any(line.startswith("BAD: cannot apply") and "status" in line for line in lines)
    for canary in ("Zelda", "phi.example", "1555777", "pat-1", "pat-2"):
        assert canary not in out
    # Participants appear as the ledger-keyed fingerprints of their external ids.
    assert f"participant_external_id={w.app().fingerprints.participant('pat-1')}" in out

    assert main(["plan", "--detailed-exitcode"]) == 2
    assert main(["once"]) == 1  # BAD is parked; the rest applied
    capsys.readouterr()
    w.write(row("BAD", starts=T, status="cancelled"))
    assert main(["once"]) == 0
    assert main(["plan", "--detailed-exitcode"]) == 0


def test_status_and_retry(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    w.emulator.faults.fail_next(1, status=400, methods=("POST",))
    w.write(row("A1", starts=T, guests=[guest(1)]))
    assert main(["once"]) == 1
    capsys.readouterr()

    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["parked"] == 1
    (parked,) = status["parked"]
    assert parked["appointment_id"] == "A1"
    assert "create" in parked["reason"]

    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "parked:            1" in text and "A1" in text and "syncd retry" in text

    assert main(["retry", "NOPE"]) == 1
    assert main(["retry", "A1"]) == 0
    assert main(["once"]) == 0
    assert len(w.live("A1")) == 1

    assert main(["retry", "--all-parked"]) == 0
    assert "0 appointment(s)" in capsys.readouterr().out


def test_check_passes_then_names_the_failure(
    w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.count("[ ok ]") == 4

    monkeypatch.setenv("SYNCD_OUTBOX__TABLE", "no_such_table")
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] outbox" in out

    monkeypatch.setenv("SYNCD_OUTBOX__TABLE", "appointment_outbox")
    monkeypatch.setenv("SYNCD_SECUREVIDEO__API_SECRET", "nope")
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] credentials" in out and "SYNCD_SECUREVIDEO__API_SECRET" in out
    assert "nope" not in out.replace("[FAIL]", "")


def test_migrate_is_idempotent(w: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("ledger migrated:") and out[-1].endswith("-> " + out[-1].split()[-1])


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_bad_setting_stops_the_start_with_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {
        "SYNCD_SYNC__CONCURRENCY": "0",
        "SYNCD_CONFIG_FILE": "",
        "SYNCD_SECRETS_DIR": str(tmp_path),
    }
    result = _cli(env, "once")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "SYNCD_SYNC__CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_outbox_url_is_named(tmp_path: Path) -> None:
    result = _cli({"SYNCD_CONFIG_FILE": "", "SYNCD_SECRETS_DIR": str(tmp_path)}, "once")
    assert result.returncode == 2
    assert "SYNCD_OUTBOX__URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_passes_until_sigterm_then_exits_0(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    env = w.env() | {"SYNCD_SYNC__POLL_INTERVAL_SECONDS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not w.live("A1") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(w.live("A1")) == 1
        w.write(row("A1", starts=T.replace(hour=10), guests=[guest(1)]))
        while w.live("A1")[0].schedule_type != "Rescheduled" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert w.live("A1")[0].schedule_type == "Rescheduled"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert "daemon_started" in events
    assert events.index("daemon_stopping") < events.index("daemon_stopped") == len(events) - 1
    assert "pass_finished" in events
    assert "Traceback" not in err


def test_a_database_error_at_start_quotes_no_value() -> None:
    from sqlalchemy.exc import DataError

    from syncd.adapters.dberrors import describe_database_error

    driver = Exception('invalid input syntax for type timestamp: "Zelda Canary"\nLINE 1: ...')
    line = describe_database_error(DataError("SELECT 1", {}, driver))
    assert line is not None
    assert line.startswith("ledger database: invalid input syntax for type timestamp")
    assert "Zelda" not in line


def test_the_degraded_line_quotes_no_value() -> None:
    from syncd.runtime.daemon import _first_line

    line = _first_line(Exception("invalid input syntax for type timestamp: 'Zelda Canary'\nDETAIL"))
    assert line == "invalid input syntax for type timestamp: '…'"


def test_the_emulator_command_takes_the_rounding_reading() -> None:
    assert _parser().parse_args(["emulator"]).round_to_quarter_hours is False
    args = _parser().parse_args(["emulator", "--round-to-quarter-hours"])
    assert args.round_to_quarter_hours is True
