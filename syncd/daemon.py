"""``syncd run``: passes on an interval until SIGTERM or SIGINT.

APScheduler 3.x installs no signal handler, and as PID 1 in a container an unhandled SIGTERM is
ignored, so the handlers here only set the shared stop flag.  The main thread waits for that flag,
then shuts the scheduler down waiting for the running pass, which stops between operations: every
call in flight finishes and its outcome is committed before the process exits.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from syncd.engine import PassReport, SyncEngine

log = structlog.get_logger("syncd.daemon")

#: A database or network outage is logged at most this often, not once per pass.
DEGRADED_LOG_INTERVAL = 60.0


class PassRunner:
    """Runs one pass at a time and turns failures into bounded-rate log lines, never a crash.

    ``classify`` names the component an unexpected exception came from ("database", …) so an
    outage is logged as a degraded state and retried on the next tick, by itself.
    """

    def __init__(
        self,
        engine: SyncEngine,
        *,
        classify: Callable[[BaseException], str | None],
        on_report: Callable[[PassReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.classify = classify
        self.on_report = on_report
        self.clock = clock
        self.last_report: PassReport | None = None
        self.last_success_at: datetime | None = None
        self.degraded: str | None = None
        self._last_degraded_log = -DEGRADED_LOG_INTERVAL
        self._suppressed = 0

    def __call__(self) -> None:
        structlog.contextvars.clear_contextvars()
        try:
            report = self.engine.run_pass()
        except Exception as exc:  # noqa: BLE001 - a daemon outlives any one failed pass
            component = self.classify(exc) or "unexpected"
            self._degrade(component, exc)
            return
        self.last_report = report
        if report.auth_error is None:
            if self.degraded is not None:
                log.info("recovered", component=self.degraded, errors=self._suppressed)
            self.degraded, self._suppressed = None, 0
            self.last_success_at = datetime.now(UTC)
        if self.on_report is not None:
            self.on_report(report)

    def _degrade(self, component: str, exc: BaseException) -> None:
        self.degraded = component
        now = self.clock()
        if now - self._last_degraded_log < DEGRADED_LOG_INTERVAL:
            self._suppressed += 1
            return
        self._last_degraded_log = now
        fields = {
            "component": component,
            "error_type": type(exc).__name__,
            "errors": self._suppressed,
        }
        if component == "unexpected":
            log.error("pass_failed", exc_info=exc, **fields)
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
) -> int:
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
    log.info("daemon_started", interval_seconds=interval_seconds)
    scheduler.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("daemon_stopping")
        scheduler.shutdown(wait=True)
        log.info("daemon_stopped")
    return 0


def _install(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
