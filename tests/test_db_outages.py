"""Scenario 4: the EHR database or the ledger database goes down in the middle of a pass.

Both run on a PRIVATE PostgreSQL cluster started by this module (``pgcluster``), stopped with
``pg_ctl -m immediate`` (connections cut, as in a crash) and started again; the machine's shared
server is never touched.  What must hold: the daemon keeps running, logs the degraded state at a
bounded rate, resumes by itself when the database is back, and nothing is lost or duplicated —
including when the ledger dies between a remote success and the commit of its outcome.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from gateways import HookedGateway
from harness import ZONE, World, guest, row, world
from pgcluster import PrivatePostgres, private_postgres
from procs import Syncd, wait_showing
from structlog.testing import capture_logs

from syncd.adapters.dberrors import classify
from syncd.adapters.ledger import create_ledger_engine, migrate
from syncd.adapters.outbox import create_outbox_engine
from syncd.adapters.sample_ehr import SampleEhr
from syncd.core.domain import CreateSession, RemoteSession
from syncd.emulator import MUTATING_METHODS
from syncd.ports import SessionGateway
from syncd.runtime.daemon import DEGRADED_LOG_INTERVAL, PassRunner

pytestmark = pytest.mark.postgres

T = datetime(2027, 2, 10, 9, 0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as pg:
        yield pg


@pytest.fixture
def pg(cluster: PrivatePostgres) -> PrivatePostgres:
    """The private cluster, running (a failed test may have left it stopped)."""
    if not cluster.is_running():
        cluster.start()
    return cluster


def fresh_ledger(pg: PrivatePostgres) -> str:
    url = pg.create_database(f"ledger_{uuid.uuid4().hex[:8]}")
    engine = create_ledger_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return url


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def booked(n: int, prefix: str = "A") -> list[dict[str, Any]]:
    return [
        row(f"{prefix}{i}", starts=T.replace(minute=i % 60), guests=[guest(i)]) for i in range(n)
    ]


def creates_per_appointment(w: World) -> Counter[str]:
    return Counter(
        str(c.body.get("ExternalSessionId"))
        for c in w.emulator.calls_matching("POST", "/session/0")
        if c.status is None or c.status < 300
    )


def calls_reach(w: World, n: int) -> Callable[[], bool]:
    return lambda: len(w.emulator.mutating_calls()) >= n


def live_exactly(w: World, ids: set[str]) -> Callable[[], bool]:
    return lambda: set(w.emulator.live_sessions_by_external_id()) == ids


def assert_exactly_one_each(w: World, ids: list[str]) -> None:
    assert w.emulator.duplicate_external_session_ids() == {}
    for aid in ids:
        assert len(w.live(aid)) == 1, aid
    assert creates_per_appointment(w) == dict.fromkeys(ids, 1)


# --- in process: PassRunner + the real engine ------------------------------------------------


def test_ledger_dies_between_remote_success_and_commit(pg: PrivatePostgres, tmp_path: Path) -> None:
    ledger_url = fresh_ledger(pg)
    with world(tmp_path) as w:
        hooks: list[HookedGateway] = []

        def hook(inner: SessionGateway) -> SessionGateway:
            hooks.append(HookedGateway(inner, hook=lambda _kind: pg.stop()))
            return hooks[-1]

        app = w.app(ledger={"url": ledger_url}, wrap_gateway=hook)
        (hooked,) = hooks
        ids = [f"A{i}" for i in range(6)]
        w.write(*booked(6))
        clock = FakeClock()
        runner = PassRunner(app.synchronizer, classify=classify, clock=clock)
        with capture_logs() as logs:
            runner()  # the first create is applied remotely, then its outcome cannot commit
            assert hooked.fired == 1
            assert runner.degraded == "database"
            first = hooked.created[0]
            # Seven failed passes over a minute of outage: the degraded line is written twice.
            for _ in range(6):
                clock.now += DEGRADED_LOG_INTERVAL / 6
                runner()
            assert runner.degraded == "database"
            pg.start()
            runner()
        assert runner.degraded is None
        events = [e["event"] for e in logs]
        assert events.count("degraded") == 2
        (recovered,) = [e for e in logs if e["event"] == "recovered"]
        assert recovered["component"] == "database"
        assert not [e for e in logs if e["event"] == "pass_failed"]

        assert_exactly_one_each(w, ids)
        with app.ledger.begin() as tx:
            assert tx.operations.open_intents() == []
            journal = tx.operations.of_appointment(first)
            assert tx.appointments.counts_by_state()["synced"] == len(ids)
        # The intent of the create whose outcome was lost stayed open through the outage and was
        # resolved by reading SecureVideo again, not by a second POST.
        assert [(op.op, op.state) for op in journal] == [("create", "resolved")]


class SlowCreateOf(HookedGateway):
    """Holds the create of one appointment back before sending it."""

    def __init__(self, inner: SessionGateway, slow: str, seconds: float, **kwargs: Any) -> None:
        super().__init__(inner, **kwargs)
        self.slow, self.seconds = slow, seconds

    def create_session(self, op: CreateSession) -> RemoteSession:
        if op.external_session_id == self.slow:
            time.sleep(self.seconds)
        return super().create_session(op)


def test_a_failed_pass_leaves_no_worker_behind(pg: PrivatePostgres, tmp_path: Path) -> None:
    """The ledger dies while one worker's create is still on its way: the failed pass must not
    return before that worker is done, or the next pass would create the same session again.

    (It did: a pass returned at the first failed worker, leaving the others running.)
    """
    ledger_url = fresh_ledger(pg)
    with world(tmp_path, concurrency=2) as w:
        app = w.app(
            ledger={"url": ledger_url},
            wrap_gateway=lambda inner: SlowCreateOf(
                inner,
                "S1",
                2.0,
                hook=lambda _kind: pg.stop(),
                when=lambda kind, count: kind == "create" and count == 1,
            ),
        )
        w.write(row("S0", starts=T, guests=[guest(1)]), row("S1", starts=T, guests=[guest(2)]))
        runner = PassRunner(app.synchronizer, classify=classify)
        runner()  # S0 created, then the ledger goes down; S1's create is still held back
        assert runner.degraded == "database"
        pg.start()
        runner()
        assert runner.degraded is None
        assert_exactly_one_each(w, ["S0", "S1"])


def test_ehr_database_dies_mid_pass(pg: PrivatePostgres, tmp_path: Path) -> None:
    ehr_url = pg.create_database(f"ehr_{uuid.uuid4().hex[:8]}")
    ehr = SampleEhr(create_outbox_engine(ehr_url, writable=True), zone=ZONE)
    try:
        # Batches of two: the pass reads the outbox again after the first batch is applied.
        with world(tmp_path, batch_size=2) as w:
            hooks: list[HookedGateway] = []

            def hook(inner: SessionGateway) -> SessionGateway:
                hooks.append(HookedGateway(inner, hook=lambda _kind: pg.stop()))
                return hooks[-1]

            app = w.app(outbox={"url": ehr_url, "timezone": ZONE}, wrap_gateway=hook)
            assert len(hooks) == 1
            ids = [f"E{i}" for i in range(6)]
            ehr.append(booked(6, "E"))
            runner = PassRunner(app.synchronizer, classify=classify)
            with capture_logs() as logs:
                runner()
                assert runner.degraded == "database"
                done_before = len(w.emulator.live_sessions_by_external_id())
                assert 0 < done_before < len(ids)
                for _ in range(3):
                    runner()
                pg.start()
                runner()
            assert runner.degraded is None
            assert [e["event"] for e in logs].count("degraded") == 1
            assert_exactly_one_each(w, ids)
            with app.ledger.begin() as tx:
                assert tx.operations.open_intents() == []
                assert tx.appointments.counts_by_state()["synced"] == len(ids)
    finally:
        ehr.dispose()


# --- a real `syncd run` ----------------------------------------------------------------------


class StopDatabaseAt:
    """The emulator's request hook: stops the database once SecureVideo has applied the n-th
    mutating call since ``arm``, before that call is answered; every other change waits until
    the database is down.  So the outage lands mid-pass, between a remote success and the commit
    of its outcome, however fast the daemon runs (waiting for the n-th call from the test
    thread left the daemon the time ``pg_ctl stop`` takes to finish the wave)."""

    def __init__(self, pg: PrivatePostgres) -> None:
        self.pg = pg
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._left = 0

    def arm(self, nth: int) -> None:
        with self._lock:
            self._left = nth
            self.stopped.clear()

    def __call__(self, phase: str, method: str, _path: str) -> bool:
        if method not in MUTATING_METHODS:
            return False
        with self._lock:  # held while the database stops: no other change goes through
            if self._left > 0 and phase == "after_apply":
                self._left -= 1
                if self._left == 0:
                    self.pg.stop()
                    self.stopped.set()
        return False


def long_only(long_run: bool) -> None:
    if not long_run:
        pytest.skip("long form only: pytest --long")


@pytest.mark.parametrize("down", ["ledger", "ehr"])
def test_syncd_run_outlives_outages_mid_pass(
    pg: PrivatePostgres, tmp_path: Path, down: str, long_run: bool
) -> None:
    """Fast form: one ledger outage.  Long form: five outages of each database in one run."""
    if down == "ehr":
        long_only(long_run)
    cycles = 5 if long_run else 1
    per_cycle = 24
    with world(tmp_path) as w:
        env = w.env() | {
            "SYNCD_SYNC__POLL_INTERVAL_SECONDS": "1",
            "SYNCD_SYNC__CONCURRENCY": "2",
            "SYNCD_SYNC__BATCH_SIZE": "4",
        }
        ehr = w.ehr
        if down == "ledger":
            env["SYNCD_LEDGER__URL"] = fresh_ledger(pg)
        else:
            ehr_url = pg.create_database(f"ehr_{uuid.uuid4().hex[:8]}")
            ehr = SampleEhr(create_outbox_engine(ehr_url, writable=True), zone=ZONE)
            env["SYNCD_OUTBOX__URL"] = ehr_url
        ids: list[str] = []
        cut_mid_pass = 0
        started = time.monotonic()
        try:
            # Slow answers make a pass long enough to stop the database in its middle.
            w.emulator.faults.latency(0.05)
            stop_at = StopDatabaseAt(pg)
            w.emulator.faults.on_request(stop_at)
            with Syncd(env, "run") as daemon:
                for cycle in range(cycles):
                    prefix, late = f"C{cycle}x", f"L{cycle}x"
                    ids += [f"{prefix}{i}" for i in range(per_cycle)]
                    ids += [f"{late}{i}" for i in range(4)]
                    stop_at.arm(4)
                    ehr.append(booked(per_cycle, prefix))
                    wait_showing(stop_at.stopped.is_set, "the 4th call of the wave", daemon)
                    live = w.emulator.live_sessions_by_external_id()
                    cut_mid_pass += sum(1 for i in ids if i in live) < len(ids) - 4
                    # The failing pass and at least one more tick (1 s apart), a second to spare.
                    time.sleep(2.5)
                    assert daemon.alive(), "the daemon exited during the outage"
                    if down == "ledger":
                        ehr.append(booked(4, late))  # the EHR keeps writing meanwhile
                    pg.start()
                    if down == "ehr":
                        ehr.append(booked(4, late))
                    wait_showing(live_exactly(w, set(ids)), "every appointment live", daemon)
                    assert daemon.wait_event("recovered", count=cycle + 1), daemon.out[-3000:]
                code = daemon.terminate()
        finally:
            if ehr is not w.ehr:
                ehr.dispose()
        elapsed = time.monotonic() - started
        assert code == 0, daemon.err
        assert cut_mid_pass == cycles, "a pass was over before its database went down"
        assert_exactly_one_each(w, ids)
    events = daemon.events()
    names = [e["event"] for e in events]
    degraded = [e for e in events if e["event"] == "degraded"]
    # At most one line a minute, however many passes failed.
    assert 1 <= len(degraded) <= 1 + elapsed // DEGRADED_LOG_INTERVAL, degraded
    assert all(e["component"] == "database" for e in degraded)
    recovered = [e for e in events if e["event"] == "recovered"]
    assert len(recovered) == cycles
    failed_passes = sum(e["errors"] for e in recovered) + len(degraded)
    assert failed_passes >= 2 * cycles  # more passes failed than lines were written
    assert "pass_failed" not in names
    assert "Traceback" not in daemon.out + daemon.err
    print(
        f"\n{down} outages: {cycles}, appointments {len(ids)}, duplicates 0, lost 0, "
        f"failed passes {failed_passes}, degraded lines {len(degraded)}, {elapsed:.0f} s"
    )


def test_run_started_while_the_ledger_is_down_waits_then_works(
    pg: PrivatePostgres, tmp_path: Path
) -> None:
    """``run`` waits for its ledger (a daemon outlives outages, at start too); ``once`` is a
    one-shot and says in one line that it cannot run (exit 2)."""
    with world(tmp_path) as w:
        env = w.env() | {
            "SYNCD_SYNC__POLL_INTERVAL_SECONDS": "1",
            "SYNCD_LEDGER__URL": fresh_ledger(pg),
        }
        w.write(*booked(3))
        pg.stop()
        with Syncd(env, "run") as daemon, Syncd(env, "once") as once:
            assert once.wait() == 2
            assert daemon.wait_event("degraded"), daemon.out + daemon.err
            assert daemon.alive(), "syncd run gave up instead of waiting for its ledger"
            assert w.emulator.mutating_calls() == []
            pg.start()
            wait_showing(
                lambda: len(w.emulator.live_sessions_by_external_id()) == 3,
                "three sessions live",
                daemon,
            )
            code = daemon.terminate()
        assert code == 0, daemon.err
        assert_exactly_one_each(w, ["A0", "A1", "A2"])
    waiting = [e for e in daemon.events() if e["event"] == "degraded"]
    assert len(waiting) == 1
    assert waiting[0]["state"] == "starting"
    assert (waiting[0]["database"], waiting[0]["problem"]) == ("ledger", "unreachable")
    assert "daemon_started" in daemon.names()
    assert "Traceback" not in daemon.out + daemon.err
    lines = once.err.strip().splitlines()
    assert len(lines) == 1, once.err
    assert lines[0].startswith("syncd: ledger database: the server cannot be reached: ")
    assert "Traceback" not in once.out + once.err


def test_sigterm_while_waiting_for_the_ledger_exits_0(
    pg: PrivatePostgres, tmp_path: Path, long_run: bool
) -> None:
    long_only(long_run)
    with world(tmp_path) as w:
        env = w.env() | {"SYNCD_LEDGER__URL": fresh_ledger(pg)}
        pg.stop()
        with Syncd(env, "run") as daemon:
            assert daemon.wait_event("degraded"), daemon.out + daemon.err
            code = daemon.terminate(15)
    assert code == 0, daemon.err
    assert "Traceback" not in daemon.out + daemon.err


def test_once_with_the_ehr_database_down_exits_2_with_one_line(
    pg: PrivatePostgres, tmp_path: Path, long_run: bool
) -> None:
    long_only(long_run)
    with world(tmp_path) as w:
        env = w.env()
        env["SYNCD_OUTBOX__URL"] = pg.create_database(f"ehr_{uuid.uuid4().hex[:8]}")
        pg.stop()
        with Syncd(env, "once") as once:
            code = once.wait()
        assert w.emulator.mutating_calls() == []
    assert code == 2
    lines = once.err.strip().splitlines()
    assert len(lines) == 1, once.err
    assert lines[0].startswith("syncd: EHR outbox database: the server cannot be reached: ")
    assert "Traceback" not in once.out + once.err
