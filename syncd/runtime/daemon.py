"""``syncd run``: passes on an interval until SIGTERM or SIGINT.

APScheduler 3.x installs no signal handler, and as PID 1 in a container an unhandled SIGTERM is
ignored, so the handlers here only set the shared stop flag.  The main thread waits for that flag,
then shuts the scheduler down waiting for the running pass, which stops between operations: every
call in flight finishes and its outcome is committed before the process exits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import TypeVar

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from syncd.adapters.dberrors import TRANSIENT
from syncd.core.redact import without_quoted_values
from syncd.runtime.dbhints import DatabaseHint
from syncd.runtime.health import HealthState
from syncd.sync.lease import LeaderLease, describe_holder
from syncd.sync.passes import Synchronizer
from syncd.sync.report import PassReport

log = structlog.get_logger("syncd.daemon")

T = TypeVar("T")

#: A database or network outage is logged at most this often, not once per pass.
DEGRADED_LOG_INTERVAL = 60.0


class PassRunner:
    """Runs one pass at a time and turns failures into bounded-rate log lines, never a crash.

    ``classify`` names the component an unexpected exception came from ("database", …) so an
    outage is logged as a degraded state and retried on the next tick, by itself.  What happened
    is reported to ``health`` (the daemon's one :class:`HealthState`); the runner keeps only
    what it needs to bound its own log lines.  ``explain`` reads a database failure into which
    database, what and the fix (``dbhints.database_hint``), for the log line and ``/healthz``.
    """

    def __init__(
        self,
        synchronizer: Synchronizer,
        *,
        classify: Callable[[BaseException], str | None],
        clock: Callable[[], float] = time.monotonic,
        lease: LeaderLease | None = None,
        health: HealthState | None = None,
        explain: Callable[[BaseException], DatabaseHint | None] | None = None,
    ) -> None:
        self.synchronizer = synchronizer
        self.classify = classify
        self.explain = explain
        self.clock = clock
        #: None only where one instance is guaranteed (tests, the control run)
        self.lease = lease
        self.health = health or HealthState()
        self.health.follow_progress(lambda: synchronizer.progress)
        if lease is not None:
            # Until the first tick says otherwise, an instance with a lease expects to lead.
            self.health.report_leadership(standby=False)
        self._last_standby_log = -DEGRADED_LOG_INTERVAL
        self._last_degraded_log = -DEGRADED_LOG_INTERVAL
        self._suppressed = 0

    @property
    def degraded(self) -> str | None:
        """The component of the last failed pass, until a pass finishes again."""
        return self.health.degraded

    @property
    def standby(self) -> bool:
        return self.health.standby

    def __call__(self) -> None:
        structlog.contextvars.clear_contextvars()
        self.health.report_tick()
        try:
            if self.lease is None:
                report = self.synchronizer.run_pass()
            elif not self.lease.acquire():
                self._standby()
                return
            else:
                if self.health.standby:
                    log.info("leader", pid=os.getpid())
                    self.health.report_leadership(standby=False)
                with self.lease.heartbeat():
                    report = self.synchronizer.run_pass(may_act=self.lease.may_act)
        except Exception as exc:  # noqa: BLE001 - a daemon outlives any one failed pass
            component = self.classify(exc) or "unexpected"
            hint = None
            if component == "database" and self.explain is not None:
                hint = self.explain(exc)
            self._degrade(component, exc, hint)
            self.health.report_failure(component, None if hint is None else hint.line())
            return
        recovered = self.health.report_pass(report)
        if recovered is not None:
            log.info("recovered", component=recovered, errors=self._suppressed)
        if report.auth_error is None:
            self._suppressed = 0

    def _standby(self) -> None:
        """Another instance holds the lease: skip the pass, saying so at a bounded rate."""
        self.health.report_leadership(standby=True)
        now = self.clock()
        if now - self._last_standby_log >= DEGRADED_LOG_INTERVAL:
            self._last_standby_log = now
            other = self.lease.other if self.lease is not None else None
            log.info("standby", pid=os.getpid(), holder=describe_holder(other))

    def _degrade(self, component: str, exc: BaseException, hint: DatabaseHint | None) -> None:
        now = self.clock()
        if now - self._last_degraded_log < DEGRADED_LOG_INTERVAL:
            self._suppressed += 1
            return
        self._last_degraded_log = now
        fields: dict[str, object] = {
            "component": component,
            "error_type": type(exc).__name__,
            "errors": self._suppressed,
        }
        if component == "unexpected":
            log.error("pass_failed", exc_info=exc, **fields)
        elif hint is not None:
            # An outage passes by itself; a refused login or a missing grant needs an operator.
            emit = log.warning if hint.problem in TRANSIENT else log.error
            emit(
                "degraded",
                database=hint.database,
                problem=hint.problem,
                error=hint.error,
                fix=hint.fix,
                **fields,
            )
        else:
            # The message of a driver error can quote SQL, never values (hide_parameters).
            log.warning("degraded", error=_first_line(exc), **fields)
        self._suppressed = 0


def run_daemon(
    runner: PassRunner,
    *,
    interval_seconds: float,
    stop: threading.Event,
    install_signal_handlers: bool = True,
    outcomes: Callable[[], None] | None = None,
    outcomes_interval_seconds: float = 0,
) -> int:
    """``outcomes``, when given with a positive interval, runs as a second job (visit outcomes,
    ``syncd.sync.visits``): apart from the pass, so a pass with nothing to do makes no call."""
    if install_signal_handlers:
        _install(stop)
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        runner,
        "interval",
        seconds=interval_seconds,
        id="sync-pass",
        # A tick that finds the previous pass still running is skipped, not queued.
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval_seconds)),
        next_run_time=datetime.now(UTC),
    )
    if outcomes is not None and outcomes_interval_seconds > 0:
        scheduler.add_job(
            outcomes,
            "interval",
            seconds=outcomes_interval_seconds,
            id="visit-outcomes",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(outcomes_interval_seconds)),
            next_run_time=datetime.now(UTC),
        )
    log.info("daemon_started", interval_seconds=interval_seconds)
    scheduler.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("daemon_stopping")
        scheduler.shutdown(wait=True)
        if runner.lease is not None:
            # The pass has ended: a standby may take over now rather than after the TTL.
            runner.lease.release()
        log.info("daemon_stopped")
    return 0


def run_one_pass(synchronizer: Synchronizer, lease: LeaderLease | None) -> PassReport | None:
    """``syncd once``: one pass under the leader lease; None when another live instance holds it
    (``lease.other`` says which)."""
    if lease is None:
        return synchronizer.run_pass()
    if not lease.acquire():
        return None
    try:
        with lease.heartbeat():
            return synchronizer.run_pass(may_act=lease.may_act)
    finally:
        lease.release()


def open_when_available(
    build: Callable[[], T],
    *,
    classify: Callable[[BaseException], str | None],
    stop: threading.Event,
    retry_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    explain: Callable[[BaseException], DatabaseHint | None] | None = None,
) -> T | None:
    """``build()``, retried while a database it needs is down; None if stopped while waiting.

    The daemon waits for its ledger rather than exiting: at boot the database often comes up after
    syncd, and a supervisor restarting a service that fails at once gives up after a few tries
    (systemd's StartLimitBurst), leaving syncd down after the database is back.  Anything that is
    not an outage (a schema behind, a bad setting) still raises at once.
    """
    last_log, suppressed = -DEGRADED_LOG_INTERVAL, 0
    while True:
        try:
            return build()
        except Exception as exc:
            component = classify(exc)
            if component != "database":
                raise
            now = clock()
            if now - last_log >= DEGRADED_LOG_INTERVAL:
                last_log = now
                hint = None if explain is None else explain(exc)
                named = {}
                if hint is not None:
                    named = {"database": hint.database, "problem": hint.problem, "fix": hint.fix}
                log.warning(
                    "degraded",
                    component=component,
                    state="starting",
                    error=_first_line(exc) if hint is None else hint.error,
                    error_type=type(exc).__name__,
                    errors=suppressed,
                    **named,
                )
                suppressed = 0
            else:
                suppressed += 1
        if stop.wait(retry_seconds):
            return None


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; nothing else happens in a signal handler."""
    _install(stop)


def _install(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _first_line(exc: BaseException) -> str:
    # Quoted parts dropped: a driver's error can quote the row value it choked on.
    text = str(exc).strip().splitlines()
    return without_quoted_values(text[0][:300]) if text else type(exc).__name__
