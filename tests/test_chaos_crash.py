"""Scenario 1, the crash sweep: ``syncd once`` and ``syncd run`` as real processes, SIGKILLed at
every point of the intent → call → outcome protocol and at random moments, while the outbox keeps
changing.  Pass: no ExternalSessionId is ever live twice, and after a last clean ``syncd once``
SecureVideo holds exactly what the EHR says.  A control run with look-before-create switched off
must produce duplicates under the same crashes, or the sweep could not see them.

Crash points (docs/reliability.md):

* ``before_call``        the intent is committed, the request has not left (engine seam);
* ``request_received``   the request reached SecureVideo, which had not applied it (emulator hook);
* ``applied_unanswered`` SecureVideo applied it, the answer was never read (emulator hook);
* ``after_call``         the answer was read, the outcome is not committed (engine seam);
* ``after_commit``       the outcome and its effects are committed (engine seam);
* ``random``             ``syncd run`` killed at a random moment: mid-pass, mid-transaction, idle.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from chaos import (
    Child,
    EhrModel,
    ExecChild,
    ForkServer,
    canary_hits,
    fork_server,
    remote_differences,
    run_syncd,
    settle,
    sqlite_dump,
    syncd_env,
    wait_or_kill,
)
from harness import World, guest, row, world

from syncd.emulator import MUTATING_METHODS, Emulator
from syncd.testing.crashpoints import ENV as CRASHPOINT_ENV

ENGINE_POINTS = ("before_call", "after_call", "after_commit")
EMULATOR_POINTS = {"request_received": "before_apply", "applied_unanswered": "after_apply"}
POINTS = ("before_call", "request_received", "applied_unanswered", "after_call", "after_commit")
CYCLES = (200, 2000)  # fast, --long
CHECK_EVERY = 40  # cycles between quiescence checks


class Killer:
    """The emulator's request hook: SIGKILLs the armed process at the n-th mutating call, at the
    chosen phase, from inside the request handler — so the instant is exact.  It also watches, after
    every applied create, that no ExternalSessionId is live twice, even for a moment."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.duplicates: list[dict[str, list[int]]] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._child: Child | None = None
        self._phase = ""
        self._nth = 0
        self._calls = 0

    def arm(self, child: Child, phase: str, nth: int) -> None:
        with self._lock:
            self._child, self._phase, self._nth, self._calls = child, phase, nth, 0

    def disarm(self) -> None:
        with self._lock:
            self._child = None

    def __call__(self, phase: str, method: str, path: str) -> bool:
        if method not in MUTATING_METHODS:
            return False
        if phase == "after_apply" and method == "POST" and path.lower().startswith("/session"):
            duplicates = self.emulator.state.duplicate_external_session_ids()
            if duplicates:
                self.duplicates.append(duplicates)
        with self._lock:
            if phase == "before_apply":
                self._calls += 1
                self._local.index = self._calls
            if self._child is None or phase != self._phase or self._local.index != self._nth:
                return False
            child, self._child = self._child, None
        child.kill()
        return True


@dataclass
class Sweep:
    w: World
    spawner: ForkServer
    rng: random.Random
    out: Path
    killer: Killer
    model: EhrModel = field(init=False)
    tried: Counter[str] = field(default_factory=Counter)
    killed: Counter[str] = field(default_factory=Counter)
    exits: Counter[int] = field(default_factory=Counter)
    checks: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    #: per cycle: (cycle, point, mode, spawned at, ended at, exit code), for failure messages
    timeline: list[tuple[int, str, str, float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model = EhrModel(self.rng)
        self.env = syncd_env(
            self.w,
            LOG__LEVEL="DEBUG",
            SYNC__POLL_INTERVAL_SECONDS=1,
            SYNC__BASE_BACKOFF_SECONDS=0.01,
            SYNC__MAX_BACKOFF_SECONDS=0.05,
        )

    def cycle(self, i: int) -> None:
        self.w.write(*self.model.rows(self.rng.randint(1, 3)))
        point = (*POINTS, "random")[i % (len(POINTS) + 1)]
        mode = "run" if point == "random" or self.rng.random() < 0.25 else "once"
        nth = self.rng.randint(1, 3)
        env = self.env | ({CRASHPOINT_ENV: f"{point}:{nth}"} if point in ENGINE_POINTS else {})
        self.tried[point] += 1
        began = time.monotonic()
        child = self.spawner.spawn([mode], env, self.out)
        if point in EMULATOR_POINTS:
            self.killer.arm(child, EMULATOR_POINTS[point], nth)
        # `run` never ends by itself: it dies at its crash point or at a random moment.
        life = self.rng.uniform(0.0, 0.8) if mode == "run" else 60.0
        code = child.wait(life)
        if code is None:
            child.kill()
            code = wait_or_kill(child, 10.0)
            point = "random"
        self.killer.disarm()
        self.timeline.append((i, point, mode, began, time.monotonic(), code))
        key = f"{mode}:{point}"
        self.seconds[key] = self.seconds.get(key, 0.0) + time.monotonic() - began
        if code == -9:
            self.killed[point] += 1
            settle(self.w.emulator)
        else:
            self.exits[code] += 1

    def explain(self, external_ids: set[str]) -> str:
        """When each create of these appointments reached SecureVideo, against the cycles."""
        creates = [
            c
            for c in self.w.emulator.calls
            if c.method == "POST"
            and isinstance(c.body, dict)
            and c.body.get("ExternalSessionId") in external_ids
        ]
        lines = [
            f"create {c.body['ExternalSessionId']} received {c.received_at:.3f} status {c.status}"
            f" fault {c.fault}"
            for c in creates
        ]
        lines += [
            f"cycle {i} {point} {mode}: {began:.3f} → {ended:.3f} exit {code}"
            for i, point, mode, began, ended, code in self.timeline[-4:]
        ]
        return "\n".join(lines)

    def quiescence(self, child: Child | None = None) -> list[str]:
        """A clean ``syncd once`` (no crash, no fault), then SecureVideo compared with the EHR."""
        self.checks += 1
        child = child or self.spawner.spawn(["once"], self.env, self.out)
        code = wait_or_kill(child, 60)
        assert code == 0, f"the clean `syncd once` exited {code}; see {self.out}"
        return remote_differences(self.w.emulator, self.model)


@pytest.fixture
def spawner() -> ForkServer:
    return fork_server()


@pytest.mark.timeout(3600)
def test_crash_sweep(tmp_path: Path, spawner: ForkServer, long_run: bool) -> None:
    cycles = CYCLES[long_run]
    started = time.monotonic()
    with world(tmp_path) as w:
        killer = Killer(w.emulator)
        w.emulator.faults.on_request(killer)
        sweep = Sweep(w, spawner, random.Random(20270201), tmp_path / "syncd.log", killer)
        for i in range(cycles):
            sweep.cycle(i)
            if killer.duplicates:
                ids = {k for d in killer.duplicates for k in d}
                raise AssertionError(f"cycle {i}: live twice: {ids}\n{sweep.explain(ids)}")
            assert w.emulator.state.duplicate_external_session_ids() == {}, f"cycle {i}"
            if (i + 1) % CHECK_EVERY == 0:
                assert sweep.quiescence() == [], f"after cycle {i}"
        # The last word is a brand-new interpreter's, not a fork's.
        final = ExecChild(["once"], sweep.env, sweep.out)
        differences = sweep.quiescence(final)
        with w.app().ledger.begin() as tx:
            open_intents = tx.operations.open_intents()
        calls = len(w.emulator.mutating_calls())
        sessions = len(w.emulator.state.sessions())
        repeated = [n for n in w.emulator.notices() if n.repeat]

    output = sweep.out.read_bytes()
    ledger = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("ledger.sqlite3*")))
    ledger_rows = sqlite_dump(tmp_path / "ledger.sqlite3")
    print(
        f"\ncrash sweep: {cycles} cycles, {sweep.model.changes} outbox changes, "
        f"{sum(sweep.killed.values())} SIGKILLs {dict(sorted(sweep.killed.items()))}, "
        f"tried {dict(sorted(sweep.tried.items()))}, clean exits {dict(sweep.exits)}, "
        f"{sweep.checks} quiescence checks, {calls} mutating calls, {sessions} sessions, "
        f"duplicates 0, differences {len(differences)}, open intents {len(open_intents)}, "
        f"{time.monotonic() - started:.0f} s"
    )
    print({k: round(v, 1) for k, v in sorted(sweep.seconds.items())})
    assert differences == []
    assert open_intents == []
    assert killer.duplicates == []
    # A crash never costs a patient a second notice: no reschedule was sent twice.
    assert repeated == []
    # Every crash point was really hit, not merely configured.
    for point in (*POINTS, "random"):
        assert sweep.killed[point] > 0, f"no process died at {point}: {sweep.killed}"
    assert b"Traceback" not in output
    # Scenario 7: the processes ran at DEBUG with canary patients.
    assert canary_hits(output, "syncd stdout/stderr") == []
    assert canary_hits(ledger, "ledger file") + canary_hits(ledger_rows, "ledger rows") == []


def test_control_without_look_before_create_the_sweep_sees_duplicates(
    tmp_path: Path, spawner: ForkServer
) -> None:
    """The same crash, ``after_call`` on a create, with the engine blind to existing sessions
    (``syncd.testing.control --blind``): the ledger alone does not know the session exists, so
    the restart creates it again."""
    out = tmp_path / "syncd.log"
    with world(tmp_path) as w:
        env = syncd_env(w, LOG__LEVEL="DEBUG")
        unsafe = ["--blind", "once"]
        for n in range(1, 4):
            w.write(row(f"X{n}", starts=datetime(2027, 2, 10, 9, 0), guests=[guest(n)]))
            crashed = spawner.spawn(unsafe, env | {CRASHPOINT_ENV: "after_call:1"}, out)
            assert wait_or_kill(crashed, 60) == -9
            if n == 1:
                # once through a brand-new interpreter too
                assert run_syncd(unsafe, env, out) == 0
            else:
                assert wait_or_kill(spawner.spawn(unsafe, env, out), 60) == 0
        duplicates = w.emulator.state.duplicate_external_session_ids()
        print(f"\ncontrol: 3 crashes after a create, duplicates {duplicates}")
        assert sorted(duplicates) == ["X1", "X2", "X3"]

        # And the safe syncd, after the same crash, creates nothing more.
        w.write(row("S1", starts=datetime(2027, 2, 10, 9, 0), guests=[guest(9)]))
        crashed = spawner.spawn(["once"], env | {CRASHPOINT_ENV: "after_call:1"}, out)
        assert wait_or_kill(crashed, 60) == -9
        assert wait_or_kill(spawner.spawn(["once"], env, out), 60) == 0
        assert len(w.live("S1")) == 1


@pytest.mark.parametrize("then", ["cancelled", "moved again"])
def test_a_create_lost_to_a_crash_is_found_after_the_provider_changes(
    tmp_path: Path, spawner: ForkServer, then: str
) -> None:
    """Found by the long sweep: the appointment moves to prov-002, syncd cancels the prov-001
    session, creates one under prov-002 and dies before committing that; then the EHR moves it
    again (or cancels it).  The session under prov-002 must still be found and cancelled."""
    out = tmp_path / "syncd.log"
    starts = datetime(2027, 2, 10, 9, 0)
    with world(tmp_path) as w:
        env = syncd_env(w)

        def once(**more: str) -> int:
            return wait_or_kill(spawner.spawn(["once"], env | more, out), 60)

        w.write(row("A1", starts=starts, guests=[guest(1)]))
        assert once() == 0
        w.write(row("A1", starts=starts, provider="prov-002", guests=[guest(1)]))
        # the 1st call cancels under prov-001, the 2nd creates under prov-002: die after it
        assert once(**{CRASHPOINT_ENV: "after_call:2"}) == -9
        assert [s.user_id for s in w.live("A1")] == [1002]
        if then == "cancelled":
            w.write(row("A1", starts=starts, status="cancelled", guests=[guest(1)]))
            assert once() == 0
            assert w.live("A1") == []
        else:
            w.write(row("A1", starts=starts, provider="prov-003", guests=[guest(1)]))
            assert once() == 0
            assert [s.user_id for s in w.live("A1")] == [1003]
