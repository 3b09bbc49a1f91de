"""Health, metrics and progress, end to end: the real engine, emulator and SQLite EHR, real HTTP.

The daemon is wired by the composition root, as ``syncd run`` wires it (``open_daemon``: the pass
runner and the client report to one ``HealthState``), the listener started the way ``syncd run``
starts it (``maybe_serve_health``), and read over a loopback socket with urllib.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from harness import World, guest, row, world
from prometheus_client.parser import text_string_to_metric_families

from syncd.runtime.app import App, Wiring, open_daemon
from syncd.runtime.cli import main
from syncd.runtime.daemon import PassRunner
from syncd.runtime.health import HEARTBEAT_STALE_AFTER, HealthState, heartbeat_path
from syncd.runtime.health_http import HealthServer, maybe_serve_health, read_heartbeat
from syncd.runtime.settings import Settings, load_settings
from syncd.sync.passes import Synchronizer
from syncd.testing.waiting import wait_until

# Tomorrow, clinic time: inside SecureVideo's active window whenever the suite runs.
T = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None, hour=15, minute=0, microsecond=0)

CANARIES = ("Zelda", "Canary", "phi.example", "1555777")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(w: World, tmp: Path, *, enabled: bool = True, secret: str = "demo") -> Settings:
    return load_settings(
        outbox={"url": w.settings.outbox.url, "timezone": w.settings.outbox.timezone},
        ledger={"url": w.settings.ledger.url, "data_dir": str(tmp / "data")},
        securevideo={
            "base_url": w.emulator.base_url,
            "api_key": "demo",
            "api_secret": secret,
            "read_timeout": 2.0,
        },
        sync=w.settings.sync.model_dump(),
        health={"enabled": enabled, "host": "127.0.0.1", "port": free_port()},
    )


@dataclass
class Daemon:
    settings: Settings
    health: HealthState
    app: App
    runner: PassRunner
    server: HealthServer | None

    def get(self, path: str) -> tuple[int, str]:
        assert self.server is not None
        url = f"http://127.0.0.1:{self.server.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def healthz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/healthz")
        return status, json.loads(body)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = self.get("/metrics")
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }


@contextmanager
def daemon(
    w: World, tmp: Path, *, enabled: bool = True, secret: str = "demo", **limits: Any
) -> Iterator[Daemon]:
    """What ``syncd run`` wires together, minus the scheduler and the lease: the test calls the
    runner.  ``limits``: the health state's clock, ``stale_after`` or ``check_ttl``."""
    settings = settings_for(w, tmp, enabled=enabled, secret=secret)
    wired = open_daemon(
        settings,
        stop=threading.Event(),
        wiring=Wiring(lease=False),
        health=HealthState.for_settings(settings, **limits),
    )
    assert wired is not None
    w.apps.append(wired.app)
    with maybe_serve_health(settings, wired.health) as server:
        yield Daemon(settings, wired.health, wired.app, wired.runner, server)


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as w:
        yield w


def label(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


# --- /healthz and /metrics over HTTP ----------------------------------------------------------


def test_healthz_and_metrics_follow_a_real_pass(w: World, tmp_path: Path) -> None:
    with daemon(w, tmp_path) as d:
        status, body = d.healthz()
        assert status == 503
        assert body["status"] == "failing"
        assert body["reasons"] == ["no pass has finished yet"]

        w.write(
            row("H1", starts=T, guests=[guest(1)]),
            row("H2", starts=T + timedelta(hours=1), guests=[guest(2, deliver="S")]),
            row("HBAD", starts=T, status="maybe"),
        )
        d.runner()

        status, body = d.healthz()
        assert status == 200, body
        assert body["status"] == "ok" and body["reasons"] == []
        assert body["pass"] == {"state": "idle"}
        assert 0 <= body["last_success_age_seconds"] < body["stale_after_seconds"]
        # Evidence from the pass itself: no extra query or request was needed.
        assert body["checks"]["database"]["ok"] and body["checks"]["database"]["source"] == "pass"
        assert body["checks"]["securevideo"]["ok"]
        assert body["checks"]["securevideo"]["source"] == "response"

        m = d.metrics()
        assert m[("syncd_passes_total", label(result="incomplete"))] == 1  # one row parked
        assert m[("syncd_appointments_total", label(outcome="synced"))] == 2
        assert m[("syncd_appointments_total", label(outcome="parked"))] == 1
        assert m[("syncd_operations_total", label(kind="create", outcome="applied"))] == 2
        assert m[("syncd_parked_appointments", label())] == 1
        assert m[("syncd_pending_appointments", label())] == 0
        assert m[("syncd_drifted_appointments", label())] == 0
        assert m[("syncd_outbox_lag_seconds", label())] >= 0
        assert m[("syncd_last_success_timestamp_seconds", label())] > 0
        posts = (
            "syncd_api_request_duration_seconds_count",
            label(method="POST", endpoint="/session/0?externalId=…"),
        )
        assert m[posts] == 2
        lists = label(method="GET", endpoint="/session/0?externalId=…", status="2xx")
        assert m[("syncd_api_responses_total", lists)] >= 1
        assert ("syncd_standby", label()) not in m  # no lease: no leadership to report

        d.runner()  # nothing new: an idle pass is clean and the lag drops to 0
        m = d.metrics()
        assert m[("syncd_passes_total", label(result="clean"))] == 1
        assert m[("syncd_outbox_lag_seconds", label())] == 0

        _, text = d.get("/metrics")
        _, health_text = d.get("/healthz")
        for canary in CANARIES:
            assert canary not in text and canary not in health_text
        # Appointment ids are unbounded: never a label value.
        assert not re.search(r"\bH(1|2|BAD)\b", text)

        assert d.get("/nope")[0] == 404


def test_a_long_first_pass_is_healthy_while_it_makes_progress(w: World, tmp_path: Path) -> None:
    reached, release = threading.Event(), threading.Event()

    def hold_creates(phase: str, method: str, path: str) -> bool:
        if phase == "before_apply" and method == "POST":
            reached.set()
            release.wait(1.5)  # under the client's 2 s read timeout
        return False

    w.write(*(row(f"L{i}", starts=T, guests=[guest(i)]) for i in range(6)))
    with daemon(w, tmp_path) as d:
        w.emulator.faults.on_request(hold_creates)
        first = threading.Thread(target=d.runner)
        first.start()
        try:
            assert reached.wait(10)
            status, body = d.healthz()
        finally:
            release.set()
            first.join(30)
        assert status == 200, body
        assert body["last_success_age_seconds"] is None
        assert body["pass"]["state"] == "running"
        assert body["pass"]["total"] == 6
        assert 0 <= body["pass"]["done"] < 6
        status, body = d.healthz()
        assert status == 200 and body["pass"] == {"state": "idle"}
        assert body["last_success_age_seconds"] is not None


def test_a_database_outage_fails_the_pass_and_healthz_until_it_is_back(
    w: World, tmp_path: Path
) -> None:
    ehr = sa.create_engine(str(w.settings.outbox.url))
    with daemon(w, tmp_path, check_ttl=0) as d:
        d.runner()
        assert d.healthz()[0] == 200
        with ehr.begin() as conn:
            conn.execute(sa.text("ALTER TABLE appointment_outbox RENAME TO outbox_gone"))
        try:
            d.runner()
            status, body = d.healthz()
            assert status == 503
            assert "the last pass could not reach a database (see degraded)" in body["reasons"]
            assert body["checks"]["database"]["ok"] is False
            # The pass's own failure, named: which database, what, and the fix of its class.
            assert body["checks"]["database"]["error"].startswith(
                "EHR outbox database: the table or view is missing: no such table"
            )
            assert "SYNCD_OUTBOX__TABLE" in body["checks"]["database"]["error"]
            m = d.metrics()
            assert m[("syncd_passes_total", label(result="failed"))] == 1
            assert m[("syncd_pass_failures_total", label(component="database"))] == 1
        finally:
            with ehr.begin() as conn:
                conn.execute(sa.text("ALTER TABLE outbox_gone RENAME TO appointment_outbox"))
        d.runner()
        status, body = d.healthz()
        assert status == 200, body
    ehr.dispose()


def test_securevideo_unreachable_is_named_by_healthz(w: World, tmp_path: Path) -> None:
    with daemon(w, tmp_path, check_ttl=0) as d:
        d.runner()
        w.emulator.faults.fail_next(1, status=503)
        status, body = d.healthz()
        assert status == 503
        check = body["checks"]["securevideo"]
        assert check["ok"] is False and check["source"] == "probe"
        assert "GET /user" in check["error"] and "503" in check["error"]
        assert any(r.startswith("securevideo: ") for r in body["reasons"])
        assert d.healthz()[0] == 200  # the next probe gets through


def test_a_securevideo_outage_is_one_degraded_state_until_it_answers(tmp_path: Path) -> None:
    """Passes during an outage finish (their appointments wait to be retried), so the passes
    alone would say healthy: /healthz says degraded, with 503, from the first few failed
    requests until SecureVideo answers again; the log has one degraded and one recovered."""
    with (
        world(tmp_path, pass_retry_budget_seconds=0) as w,
        daemon(w, tmp_path) as d,
        structlog.testing.capture_logs() as logs,
    ):
        w.write(*(row(f"A{i}", starts=T, guests=[guest(i)]) for i in range(3)))
        w.emulator.faults.fail_next(1_000_000, status=503)

        def pass_until(outage_open: bool) -> bool:
            d.runner()
            return (d.health.outage.current is not None) is outage_open

        wait_until(lambda: pass_until(True), timeout=30, what="passes to meet the outage")
        status, body = d.healthz()
        assert status == 503
        assert body["status"] == "degraded"
        assert body["degraded"]["securevideo"]["failures"] >= 3
        reasons = body["reasons"]
        assert any("securevideo: degraded for " in r and "none parked" in r for r in reasons)
        w.emulator.faults.clear()
        # The next pass whose back-offs have run out meets SecureVideo answering again.
        wait_until(lambda: pass_until(False), timeout=30, what="a pass to find SecureVideo back")
        status, body = d.healthz()
        assert (status, body["status"]) == (200, "ok")
        assert "degraded" not in body
        with d.app.ledger.begin() as tx:
            assert tx.appointments.parked() == []
    outage = [
        (e["event"], e.get("component")) for e in logs if e["event"] in ("degraded", "recovered")
    ]
    assert outage == [("degraded", "securevideo"), ("recovered", "securevideo")]


def test_rejected_credentials_make_healthz_fail(w: World, tmp_path: Path) -> None:
    w.write(row("C1", starts=T, guests=[guest(1)]))
    with daemon(w, tmp_path, secret="wrong-secret-value") as d:
        d.runner()
        status, body = d.healthz()
        assert status == 503
        assert any("rejected the API credentials" in r for r in body["reasons"])
        assert "wrong-secret-value" not in json.dumps(body)
        m = d.metrics()
        assert m[("syncd_passes_total", label(result="credentials_rejected"))] == 1


def test_no_successful_pass_for_too_long_is_unhealthy(w: World, tmp_path: Path) -> None:
    now = [1000.0]
    with daemon(w, tmp_path, clock=lambda: now[0], stale_after=100.0) as d:
        d.runner()
        assert d.health.liveness().ok
        now[0] += 101
        verdict = d.health.liveness()
        assert not verdict.ok
        assert verdict.reasons == ("no successful pass for 101 s (limit 100 s)",)


def test_the_listener_stops_and_frees_its_port(w: World, tmp_path: Path) -> None:
    with daemon(w, tmp_path) as d:
        assert d.server is not None
        port = d.server.port
        assert d.get("/healthz")[0] == 503
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_metric_labels_never_take_an_id_or_an_address(w: World, tmp_path: Path) -> None:
    with daemon(w, tmp_path) as d:
        d.health.report_response("GET", "/session/12345", 200, 0.1)
        d.health.report_response("GET", "/session?participantEmail=a@b.example", 200, 0.1)
        d.health.report_response("GET", "/session/{sessionId}", None, 0.1)
        m = d.metrics()
        other = ("syncd_api_request_duration_seconds_count", label(method="GET", endpoint="other"))
        assert m[other] == 2
        failed = label(method="GET", endpoint="/session/{sessionId}", status="error")
        assert m[("syncd_api_responses_total", failed)] == 1
        assert "12345" not in d.get("/metrics")[1]


# --- the heartbeat and `syncd healthcheck` ----------------------------------------------------


def test_heartbeat_works_with_the_listener_off_and_drives_syncd_healthcheck(
    w: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in w.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SYNCD_LEDGER__DATA_DIR", str(tmp_path / "data"))
    with daemon(w, tmp_path, enabled=False) as d:
        assert d.server is None
        path = heartbeat_path(d.settings)
        wait_until(path.exists, what="the first heartbeat")
        assert read_heartbeat(path) == (False, "no pass has finished yet")
        assert main(["healthcheck"]) == 1

        d.runner()  # the pass pokes the writer: no need to wait out the interval
        wait_until(lambda: read_heartbeat(path)[0], what="a healthy heartbeat")
        capsys.readouterr()
        assert main(["healthcheck"]) == 0
        assert capsys.readouterr().out.startswith("ok: last successful pass ")

        body = json.loads(path.read_text())
        assert read_heartbeat(path, now=body["written_at"] + HEARTBEAT_STALE_AFTER + 1)[0] is False
    # A stopped daemon takes its heartbeat with it.
    assert not path.exists()
    assert main(["healthcheck"]) == 1
    assert "no heartbeat at" in capsys.readouterr().out


# --- progress of a long drain -----------------------------------------------------------------


class SteppingClock:
    """Monotonic time that moves one second per reading; wall time is real."""

    def __init__(self) -> None:
        self.t = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)

    def monotonic(self) -> float:
        with self._lock:
            self.t += 1.0
            return self.t


def test_a_backlog_drain_logs_progress_at_a_bounded_rate(w: World) -> None:
    n = 30
    w.write(*(row(f"P{i:02d}", starts=T, guests=[guest(i)]) for i in range(n)))
    app = w.app()
    clock = SteppingClock()
    interval = 10.0
    engine = Synchronizer(
        outbox=app.outbox,
        ledger=app.ledger,
        gateway=app.gateway,
        options=replace(app.synchronizer.options, progress_log_interval_seconds=interval),
        clock=clock,
    )
    try:
        with structlog.testing.capture_logs() as logs:
            report = engine.run_pass()
    finally:
        engine.close()
    assert report.outcomes == {"synced": n}
    progress = [e for e in logs if e["event"] == "backlog_progress"]
    # The first line comes one interval after the start, then at most one per interval.
    assert 1 <= len(progress) <= clock.t // interval
    assert len(progress) < n
    assert all(e["total"] == n for e in progress)
    dones = [e["done"] for e in progress]
    assert dones == sorted(dones) and dones[-1] <= n
    assert all(e["rate_per_second"] > 0 for e in progress)
    assert engine.progress is not None and engine.progress.finished
    assert engine.progress.done == n


def test_progress_costs_one_count_per_busy_pass_and_none_when_idle(w: World) -> None:
    app = w.app()
    counts: list[str] = []

    def spy(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if re.search(
            r"SELECT count\(\*\).*FROM appointment\s+WHERE appointment.state", statement, re.S
        ):
            counts.append(statement)

    sa.event.listen(app.ledger.engine, "before_cursor_execute", spy)
    app.synchronizer.run_pass()
    assert counts == []
    w.write(*(row(f"Q{i}", starts=T, guests=[guest(i)]) for i in range(3)))
    app.synchronizer.run_pass()
    assert len(counts) == 1
    app.synchronizer.run_pass()
    assert len(counts) == 1


# --- `syncd run` as a process -----------------------------------------------------------------


def test_syncd_run_serves_health_and_metrics_and_stops_on_sigterm(w: World, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "run-data"
    env = {
        **os.environ,
        **w.env(),
        "SYNCD_LEDGER__DATA_DIR": str(data),
        "SYNCD_SYNC__POLL_INTERVAL_SECONDS": "1",
        "SYNCD_HEALTH__ENABLED": "true",
        "SYNCD_HEALTH__PORT": str(port),
    }
    w.write(row("R1", starts=T, guests=[guest(1)]))
    log = tmp_path / "run.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_until(
                lambda: read_heartbeat(data / "heartbeat.json")[0],
                timeout=60,
                what="a healthy heartbeat",
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                families = {
                    (s.name, frozenset(s.labels.items())): s.value
                    for f in text_string_to_metric_families(r.read().decode())
                    for s in f.samples
                }
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                assert json.load(r)["status"] == "ok"
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(60)
    # The wiring of `syncd run`: the runner and the client report to the one health state.
    assert families[("syncd_operations_total", label(kind="create", outcome="applied"))] == 1
    created = label(method="POST", endpoint="/session/0?externalId=…")
    assert families[("syncd_api_request_duration_seconds_count", created)] == 1
    assert families[("syncd_standby", label())] == 0  # the daemon holds the leader lease
    assert code == 0
    text = log.read_text()
    assert '"event": "health_listening"' in text and '"event": "daemon_stopped"' in text
    assert not (data / "heartbeat.json").exists()
    for canary in CANARIES:
        assert canary not in text


def test_healthz_says_the_outbox_went_back_until_its_reread_is_applied() -> None:
    from syncd.ports.ledger import OutboxRewind
    from syncd.sync.report import PassReport

    health = HealthState(clock=lambda: 1000.0)
    noticed = OutboxRewind(
        at=datetime(2030, 1, 1), from_event_id=5001, newest_event_id=6, applied_at=None
    )
    health.report_pass(PassReport(pass_id="p1", rewound=True, rewind=noticed))
    verdict = health.readiness()
    assert not verdict.ok
    assert verdict.reasons == (
        "the outbox went back (newest event 6, cursor was 5001); its re-read is not all "
        "applied yet (see outbox_rewound)",
    )
    assert health.liveness().ok  # the heartbeat: a restart would not help
    applied = replace(noticed, applied_at=datetime(2030, 1, 1, 0, 1))
    health.report_pass(PassReport(pass_id="p2", rewind=applied))
    assert health.readiness().ok
