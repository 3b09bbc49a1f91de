"""One ``degraded`` event when SecureVideo stops answering, one ``recovered`` when it answers again.

Judged per outage of the service, not per appointment or per pass: the SecureVideo client reports
every response (through ``HealthState.report_response``), and a few failures in a row with no
answer between them open an outage, which the first answer closes.  A single lost answer or 503
among successes is a blip the back-off absorbs, not an outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("syncd.health")

#: Failed responses in a row (5xx or no answer, none answered between) that make an outage.
FAILURES_TO_DEGRADE = 3


@dataclass(frozen=True, slots=True)
class Outage:
    """An open outage: since when (monotonic), and the failed responses seen so far."""

    since: float
    failures: int
    last_error: str


class OutageWatch:
    """Thread-safe: the engine's workers report responses concurrently."""

    def __init__(
        self,
        component: str = "securevideo",
        *,
        failures_to_degrade: int = FAILURES_TO_DEGRADE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.component = component
        self._threshold = failures_to_degrade
        self._clock = clock
        self._lock = threading.Lock()
        self._streak = 0
        self._streak_since = 0.0
        self._outage: Outage | None = None

    def observe(self, status: int | None) -> None:
        """One response: ``status`` None when no answer came (connection failed, timed out)."""
        failed = status is None or status >= 500
        now = self._clock()
        error = "no answer" if status is None else f"answering {status}"
        opened: Outage | None = None
        closed: Outage | None = None
        with self._lock:
            if not failed:
                self._streak = 0
                closed, self._outage = self._outage, None
            else:
                if self._streak == 0:
                    self._streak_since = now
                self._streak += 1
                if self._outage is not None:
                    self._outage = Outage(self._outage.since, self._outage.failures + 1, error)
                elif self._streak >= self._threshold:
                    opened = self._outage = Outage(self._streak_since, self._streak, error)
        # Logged outside the lock; changes keep being retried meanwhile, nothing parks.
        if opened is not None:
            log.warning("degraded", component=self.component, error=error, failures=opened.failures)
        if closed is not None:
            log.info(
                "recovered",
                component=self.component,
                outage_seconds=round(now - closed.since, 1),
                failures=closed.failures,
            )

    @property
    def current(self) -> Outage | None:
        with self._lock:
            return self._outage
