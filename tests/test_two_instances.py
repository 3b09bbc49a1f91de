"""Scenario 8: two ``syncd run`` processes on one ledger (PostgreSQL) and one outbox.

Without coordination both would read SecureVideo, both find no session and both create one.  The
leader lease (``syncd.sync.lease``) lets one process apply at a time: the other logs "standby"
and skips its passes, and takes over within the lease's time to live after the holder
dies (SIGKILL).

The process tests count mutating calls per appointment against what one instance would make; a
control run with the lease left out (``python -m syncd.testing.control --no-lease run``, the same
command through the same composition root) shows that the same setup duplicates.
The unit tests below pin the lease's rules on a SQLite ledger (``tests/test_lease.py`` has those
of the database clock and of dead holders, on every backend).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from harness import World, guest, row, world
from procs import Syncd, wait_showing

from syncd.adapters.ledger import SqlLedger, create_ledger_engine, migrate
from syncd.emulator import RecordedCall
from syncd.ports.ledger import LeaseHolder
from syncd.sync.lease import LEASE_NAME, LeaderLease

T = datetime(2027, 2, 10, 9, 0)
TTL = 2.0
INTERVAL = 1


def booked(prefix: str, n: int, hour: int = 9) -> list[dict[str, Any]]:
    return [row(f"{prefix}{i}", starts=T.replace(hour=hour), guests=[guest(i)]) for i in range(n)]


def calls_per_appointment(w: World) -> Counter[tuple[str, str]]:
    """(method, appointment) → successful-or-dropped mutating calls."""
    by_session = {s.session_id: s.external_session_id for s in w.emulator.state.sessions()}
    out: Counter[tuple[str, str]] = Counter()
    for c in w.emulator.mutating_calls():
        if c.status is not None and c.status >= 300:
            continue
        out[(c.method, _appointment_of(c, by_session))] += 1
    return out


def _appointment_of(call: RecordedCall, by_session: dict[int, str]) -> str:
    if call.method == "POST" and call.path.lower() == "/session/0":
        return str(call.body.get("ExternalSessionId"))
    session_id = int(call.path.rstrip("/").rsplit("/", 1)[-1])
    return by_session.get(session_id, f"session {session_id}")


def holder_pid(ledger_url: str) -> int | None:
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            holder = conn.execute(
                sa.text("SELECT holder FROM lease WHERE name = :n"), {"n": LEASE_NAME}
            ).scalar_one_or_none()
    finally:
        engine.dispose()
    return int(holder.split(":")[1]) if holder else None


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path, ledger_backend="postgresql") as w:
        # Slow answers keep passes long enough for two instances to overlap.
        w.emulator.faults.latency(0.05)
        yield w


def env_of(w: World) -> dict[str, str]:
    return w.env() | {
        "SYNCD_SYNC__POLL_INTERVAL_SECONDS": str(INTERVAL),
        "SYNCD_SYNC__LEASE_SECONDS": str(TTL),
        "SYNCD_SYNC__CONCURRENCY": "4",
    }


def all_live(w: World, ids: list[str]) -> bool:
    return set(ids) <= set(w.emulator.live_sessions_by_external_id())


def calls_reach(w: World, n: int) -> Callable[[], bool]:
    return lambda: len(w.emulator.mutating_calls()) >= n


def test_two_daemons_apply_each_change_once_and_one_takes_over_after_sigkill(
    w: World, long_run: bool
) -> None:
    """Fast form: one takeover.  Long form: five, a fresh instance started after each kill."""
    kills = 5 if long_run else 1
    env = env_of(w)
    first = [f"A{i}" for i in range(12)]
    expected: Counter[tuple[str, str]] = Counter()
    takeovers: list[float] = []
    daemons = [Syncd(env, "run"), Syncd(env, "run")]
    try:
        for d in daemons:
            assert d.wait_event("daemon_started"), d.err
        w.write(*booked("A", 12))
        expected.update(("POST", a) for a in first)
        wait_showing(lambda: all_live(w, first), "the first wave live", *daemons)

        # Reschedules: one PUT each.  Meanwhile a one-off `syncd once` next to the running leader
        # does nothing and says so.
        with Syncd(env, "once") as once:
            w.write(*booked("A", 12, hour=11))
            expected.update(("PUT", a) for a in first)
            wait_showing(
                lambda: all(w.live(a)[0].schedule_type == "Rescheduled" for a in first),
                "the first wave rescheduled",
                *daemons,
            )
            assert once.wait() == 1
        assert "another syncd instance holds the leader lease" in once.err
        assert len(once.err.strip().splitlines()) == 1

        for k in range(kills):
            wave = [f"K{k}x{i}" for i in range(12)]
            pid = holder_pid(w.settings.ledger.url)
            (leader,) = [d for d in daemons if d.pid == pid and d.alive()]
            before = len(w.emulator.mutating_calls())
            w.write(*booked(f"K{k}x", 12))
            expected.update(("POST", a) for a in wave)
            # Killed in the middle of the wave: some of it done, the rest for the survivor.
            wait_showing(calls_reach(w, before + 3), "three calls of the wave", *daemons)
            leader.kill()
            killed_at = time.monotonic()
            wait_showing(partial(all_live, w, wave), f"wave {k} live", *daemons)
            resumed = [
                c.received_at for c in w.emulator.mutating_calls() if c.received_at > killed_at
            ]
            if resumed:  # none when the leader had sent the whole wave before it died
                takeovers.append(min(resumed) - killed_at)
            daemons.remove(leader)
            if long_run:
                daemons.append(Syncd(env, "run"))
                assert daemons[-1].wait_event("daemon_started")
        for d in daemons:
            assert d.terminate() == 0, d.err
    finally:
        for d in daemons:
            d.kill()

    assert w.emulator.duplicate_external_session_ids() == {}
    actual = calls_per_appointment(w)
    assert actual == expected, {k: (actual[k], expected[k]) for k in actual | expected}
    names = [d.names() for d in daemons]
    assert all("Traceback" not in d.out + d.err for d in daemons)
    assert any("standby" in n for n in names) or kills == 0
    # Takeover: the lease lapses within its TTL, a standby tries every interval.
    assert takeovers, "the leader always finished the wave before it was killed"
    bound = TTL + INTERVAL + 5.0  # slack for a loaded machine: process and thread scheduling
    assert max(takeovers) <= bound, takeovers
    print(
        f"\ntwo instances: kills {kills}, appointments {len({a for _, a in expected})}, "
        f"mutating calls {sum(actual.values())} = expected {sum(expected.values())}, "
        f"duplicates 0, takeover s {[round(t, 2) for t in takeovers]} (TTL {TTL}, interval "
        f"{INTERVAL})"
    )


#: Below the default lease's 30 s, so waiting out the dead holder's lease fails the test, with
#: room for interpreter start on a loaded CI machine; the figure itself is printed, not asserted
#: tighter (a few seconds here: 1.3 s and 3.2 s in two runs).
RESTART_FIRST_CALL_WITHIN = 25.0


def test_a_restart_after_kill_9_resumes_at_once_with_the_defaults(tmp_path: Path) -> None:
    """``kill -9`` of ``syncd run``, then an immediate restart, default settings (a 30 s lease and
    a 60 s poll): the new process sees that the lease's holder is gone, takes it over and makes
    its first SecureVideo call within seconds, not after the lease has run out."""
    with world(tmp_path) as w:
        env = w.env()
        with Syncd(env, "run") as first:
            w.write(*booked("A", 2))
            wait_showing(lambda: all_live(w, ["A0", "A1"]), "the first process leading", first)
            assert first.kill() == -9
        w.write(*booked("B", 1))
        started = time.monotonic()
        with Syncd(env, "run") as second:
            wait_showing(lambda: all_live(w, ["B0"]), "the restart's first change", second)
            first_call = min(c.received_at for c in w.emulator.calls if c.received_at > started)
            names = second.names()
            assert second.terminate() == 0, second.err
        took = first_call - started
        print(f"\nrestart after kill -9: first SecureVideo call {took:.2f} s after the start")
        assert took <= RESTART_FIRST_CALL_WITHIN, (took, names)
        assert "lease_taken_over" in names and "standby" not in names
        assert w.emulator.duplicate_external_session_ids() == {}


def test_control_without_the_lease_two_daemons_duplicate(w: World, long_run: bool) -> None:
    """Proves the test above can fail: the same two daemons without the lease create twice.

    Long form only (two more interpreters are a few seconds of the normal suite's budget).
    """
    if not long_run:
        pytest.skip("long form only: pytest --long")
    w.emulator.faults.latency(0.15)
    env = env_of(w)
    control = "syncd.testing.control"
    daemons = [Syncd(env, "--no-lease", "run", module=control) for _ in range(2)]
    try:
        for d in daemons:
            assert d.wait_event("daemon_started"), d.err
        w.write(*booked("A", 16))
        wait_showing(
            lambda: w.emulator.duplicate_external_session_ids() != {},
            "a duplicate",
            *daemons,
            timeout=30,
        )
    finally:
        for d in daemons:
            d.kill()


# --- the lease's rules ---------------------------------------------------------------------


class Clock:
    """A hand-moved monotonic clock: what ``may_act`` reads.  Expiry is the database's (see
    ``tests/test_lease.py``)."""

    def __init__(self) -> None:
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqlLedger]:
    engine = create_ledger_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    migrate(engine)
    yield SqlLedger(engine)
    engine.dispose()


def lease(ledger: SqlLedger, clock: Clock, holder: str, ttl: float = 30) -> LeaderLease:
    return LeaderLease(
        ledger, ttl_seconds=ttl, holder=LeaseHolder(holder), monotonic=lambda: clock.mono
    )


def test_one_holder_at_a_time_and_takeover_after_the_ttl(ledger: SqlLedger) -> None:
    a = LeaderLease(ledger, ttl_seconds=TTL, holder=LeaseHolder("a"))
    b = LeaderLease(ledger, ttl_seconds=TTL, holder=LeaseHolder("b"))
    assert a.acquire()
    assert not b.acquire()
    assert a.may_act() and not b.may_act()
    assert a.acquire()  # renewed
    time.sleep(TTL + 1.0)  # a stopped renewing: the real wait, a second past the TTL
    assert not a.may_act()  # it stops acting before b can take over
    assert b.acquire()
    assert b.may_act()
    assert not a.acquire()  # the old holder comes back: too late
    assert not a.may_act()


def test_may_act_keeps_a_margin_before_expiry(ledger: SqlLedger) -> None:
    clock = Clock()
    a = lease(ledger, clock, "a")
    assert a.acquire()
    clock.advance(30 - a.margin - 0.01)
    assert a.may_act()
    clock.advance(0.02)
    assert not a.may_act()  # the lease still runs, but a call started now could outlive it


def test_release_lets_another_take_over_at_once(ledger: SqlLedger) -> None:
    clock = Clock()
    a, b = lease(ledger, clock, "a"), lease(ledger, clock, "b")
    assert a.acquire()
    a.release()
    assert not a.may_act()
    assert b.acquire()


def test_heartbeat_renews_during_a_long_pass(ledger: SqlLedger) -> None:
    # A TTL of 2 s, renewed every 2/3 s: each wait below clears its bound by over a second.
    a = LeaderLease(ledger, ttl_seconds=2.0, holder=LeaseHolder("a"))
    b = LeaderLease(ledger, ttl_seconds=2.0, holder=LeaseHolder("b"))
    assert a.acquire()
    with a.heartbeat():
        time.sleep(4.0)  # twice the TTL: only the heartbeat keeps the lease
        assert not b.acquire()
        assert a.may_act()
    time.sleep(3.5)  # the last renewal's TTL has run out
    assert b.acquire()


def test_an_engine_that_may_not_act_makes_no_mutating_call(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        w.write(*booked("A", 3))
        report = w.app().synchronizer.run_pass(may_act=lambda: False)
        assert w.emulator.mutating_calls() == []
        assert report.interrupted
        with w.apps[-1].ledger.begin() as tx:
            assert tx.appointments.pending_count() == 3
        assert w.run_pass().outcomes["synced"] == 3


# --- the control entry point --------------------------------------------------------------


def test_the_control_leaves_out_only_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """While another instance holds the lease, ``syncd once`` does nothing; the same command
    through the control with ``--no-lease`` applies; ``syncd`` itself has no such switch."""
    from syncd.runtime.cli import main as syncd_main
    from syncd.testing.control import main as control_main

    with world(tmp_path) as w:
        for key, value in w.env().items():
            monkeypatch.setenv(key, value)
        other = LeaderLease(
            w.app().ledger,
            ttl_seconds=600,
            holder=LeaseHolder("another-instance:7:t", "another-host", 7, "b00t/1"),
        )
        assert other.acquire()
        w.write(*booked("C", 2))

        assert syncd_main(["once"]) == 1
        said = capsys.readouterr().err
        assert "another syncd instance holds the leader lease" in said
        assert "(host another-host, pid 7, since " in said and " UTC, until " in said
        assert w.emulator.mutating_calls() == []

        assert control_main(["--no-lease", "once"]) == 0
        assert all_live(w, ["C0", "C1"])
        capsys.readouterr()
        assert syncd_main(["once"]) == 1  # the other instance still holds the lease
        assert "another syncd instance holds the leader lease" in capsys.readouterr().err

        for argv in (["run", "--unsafe-no-lease"], ["once", "--unsafe-skip-look-before-create"]):
            with pytest.raises(SystemExit) as refused:
                syncd_main(argv)
            assert refused.value.code == 2  # argparse: no such option
