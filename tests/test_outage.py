"""A SecureVideo outage, with the default settings: nothing parks, everything applies once after.

Before, a temporary failure parked an appointment after ``max_attempts`` (8) tries, which with
the default back-off (0.5 s doubling, 60 s cap, full jitter) is at most 0.5 + 1 + … + 32 = 63.5 s
of waiting: a 35-second outage parked appointments for good.  Here SecureVideo answers 503 to
every request for longer than both budgets — more than twice 8 tries of the first appointments,
and more than twice 63.5 s — while the EHR keeps writing: new appointments, a reschedule and a
cancel.  Then it answers again.

The real engine, client, ledger (SQLite) and emulator; only time is moved by hand.  A back-off
is waited out by moving a :class:`ManualClock` (the reconciler's ``wait``), and between passes
the clock moves by the poll interval, as the daemon's ticks would: no ledger row is aged, and the
test takes seconds, not minutes.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness import World, guest, row, world
from structlog.testing import capture_logs

from syncd.runtime.app import open_gateway, open_ledger, open_outbox, sync_options
from syncd.runtime.health import HealthState
from syncd.runtime.settings import SyncSettings
from syncd.sync.passes import Synchronizer
from syncd.testing.clock import ManualClock

#: Today's defaults' whole back-off budget before parking: max_attempts and the waits before it.
OLD_MAX_ATTEMPTS = 8
OLD_BUDGET_SECONDS = sum(min(60.0, 0.5 * 2 ** (n - 1)) for n in range(1, OLD_MAX_ATTEMPTS))


def successful_mutations(w: World) -> Counter[tuple[str, str]]:
    """(method, appointment) of every mutating call SecureVideo applied."""
    by_session = {s.session_id: s.external_session_id for s in w.emulator.state.sessions()}
    out: Counter[tuple[str, str]] = Counter()
    for c in w.emulator.mutating_calls():
        if c.status is None or c.status >= 300:
            continue
        if c.method == "POST" and c.path.lower() == "/session/0":
            out[(c.method, str(c.body.get("ExternalSessionId")))] += 1
        else:
            session_id = int(c.path.rstrip("/").rsplit("/", 1)[-1])
            out[(c.method, by_session.get(session_id, f"session {session_id}"))] += 1
    return out


def test_an_outage_longer_than_the_old_budget_parks_nothing_and_applies_each_change_once(
    tmp_path: Path,
) -> None:
    assert OLD_BUDGET_SECONDS == 63.5
    starts = (datetime.now(UTC) + timedelta(days=2)).replace(tzinfo=None, microsecond=0)
    # The harness speeds back-off up for other tests: here it is the project's defaults.
    defaults = SyncSettings().model_dump()
    with world(tmp_path, **defaults) as w:
        settings = w.settings
        assert settings.sync.model_dump() == defaults
        poll = float(settings.sync.poll_interval_seconds)
        clock = ManualClock(datetime.now(UTC))
        stop = threading.Event()

        def wait(seconds: float) -> bool:
            clock.advance(seconds)
            return stop.is_set()

        health = HealthState()
        ledger = open_ledger(settings)
        outbox = open_outbox(settings)
        gateway = open_gateway(settings, on_response=health.report_response)
        engine = Synchronizer(
            outbox=outbox,
            ledger=ledger,
            gateway=gateway,
            options=sync_options(settings, rng=random.Random(14)),
            clock=clock,
            stop=stop,
            wait=wait,
            # As the daemon wires it (open_daemon): the outage judge's verdict.
            outage=lambda: health.outage.current is not None,
        )
        try:
            w.write(*(row(f"A{i}", starts=starts, guests=[guest(i)]) for i in range(3)))
            assert engine.run_pass().clean
            expected = Counter(("POST", f"A{i}") for i in range(3))

            with capture_logs() as logs:
                w.emulator.faults.fail_next(1_000_000, status=503)
                down_at = clock.monotonic()
                # Changes keep coming while SecureVideo is down.
                w.write(row("A0", starts=starts + timedelta(hours=1), guests=[guest(0)]))
                w.write(row("A1", starts=starts, status="cancelled", guests=[guest(1)]))
                expected.update([("PUT", "A0"), ("DELETE", "A1")])
                most_attempts, passes, n = 0, 0, 0
                while most_attempts <= 2 * OLD_MAX_ATTEMPTS or (
                    clock.monotonic() - down_at <= 2 * OLD_BUDGET_SECONDS
                ):
                    w.write(row(f"B{n}", starts=starts, guests=[guest(100 + n)]))
                    expected[("POST", f"B{n}")] += 1
                    n += 1
                    report = engine.run_pass()
                    passes += 1
                    assert not report.clean
                    with ledger.begin() as tx:
                        assert tx.appointments.parked() == []
                        retrying = tx.appointments.retrying()
                    most_attempts = max(r.attempts for r in retrying)
                    verdict = health.readiness()
                    assert not verdict.ok and verdict.as_dict()["status"] == "degraded"
                    clock.advance(poll)
                    assert passes < 50, "the outage loop does not end"
                outage_seconds = clock.monotonic() - down_at
                failed = w.emulator.faults.injected["fail"]

                w.emulator.faults.clear()
                for _ in range(20):
                    report = engine.run_pass()
                    with ledger.begin() as tx:
                        pending = tx.appointments.pending_count()
                        parked = tx.appointments.parked()
                    if report.clean and pending == 0:
                        break
                    clock.advance(poll)
                assert pending == 0 and parked == []
                assert health.readiness().as_dict().get("degraded") is None
        finally:
            engine.close()
            gateway.close()
            outbox.dispose()
            ledger.dispose()

    events = [(e["event"], e.get("component")) for e in logs]
    outages = [e for e in events if e[0] in ("degraded", "recovered")]
    print(
        f"\noutage: {failed} requests answered 503 over {outage_seconds:.0f} s of clock time "
        f"({passes} passes), most attempts of one appointment {most_attempts}; "
        f"retrying_long {events.count(('retrying_long', None))}; events {outages}"
    )
    assert outage_seconds > 2 * OLD_BUDGET_SECONDS and most_attempts > 2 * OLD_MAX_ATTEMPTS
    assert outages == [("degraded", "securevideo"), ("recovered", "securevideo")]
    assert successful_mutations(w) == expected
    assert w.emulator.duplicate_external_session_ids() == {}
    live = w.emulator.live_sessions_by_external_id()
    assert set(live) == {"A0", "A2"} | {f"B{i}" for i in range(n)}
