"""A clock a test moves by hand: time passes only when the test says so."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["ManualClock"]

#: An arbitrary fixed start, so that two runs of a test see the same times.
DEFAULT_START = datetime(2030, 1, 7, 9, 0)


class ManualClock:
    """Implements ``syncd.ports.clock.Clock``; :meth:`advance` moves both readings together.

    Engine worker threads read it while the test advances it, so reads and moves take a lock.
    """

    def __init__(self, start: datetime = DEFAULT_START, *, monotonic_start: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._now = _naive_utc(start)
        self._monotonic = monotonic_start

    def now(self) -> datetime:
        """Naive UTC, like every timestamp SecureVideo and the ledger use."""
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, delta: timedelta | float) -> datetime:
        """Move time forward by ``delta`` (a timedelta, or seconds); returns the new ``now``."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            # A monotonic clock that goes back would break every deadline computed from it.
            raise ValueError("a clock only moves forward; use set() to jump the wall clock")
        with self._lock:
            self._now += step
            self._monotonic += step.total_seconds()
            return self._now

    def set(self, when: datetime) -> None:
        """Jump the wall clock (as NTP might); the monotonic reading is left where it is."""
        with self._lock:
            self._now = _naive_utc(when)


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
