"""When the next request to SecureVideo may leave: its ``Retry-After`` and a client-side rate limit.

Shared by every thread using one client, so a 429 on one thread holds back all of them.
"""

from __future__ import annotations

import email.utils
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from syncd.core.errors import TemporaryError

__all__ = ["Gate", "parse_retry_after"]


class Gate:
    """When the next request may leave: the Retry-After moment and the rate limit, for all threads.

    Each caller reserves a slot under the lock and sleeps outside it.  If a Retry-After arrives
    while it sleeps and moves the gate past its slot, it reserves again.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        interval: float | None,
        max_wait: float,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._interval = interval
        self._max_wait = max_wait
        self._lock = threading.Lock()
        self._not_before = -math.inf
        self._next_slot = -math.inf

    def hold_off(self, seconds: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + seconds)

    def wait_turn(self, where: str) -> None:
        while True:
            with self._lock:
                now = self._clock()
                at = max(now, self._not_before, self._next_slot)
                if at - now > self._max_wait:
                    raise TemporaryError(
                        f"{where}: not sent: SecureVideo asked to wait {at - now:.1f} s more",
                        retry_after=at - now,
                    )
                if self._interval is not None:
                    self._next_slot = at + self._interval
            if at <= now:
                return
            self._sleep(at - now)
            with self._lock:
                if self._not_before <= at:
                    return


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (decimals tolerated) or an
    HTTP date.  None when absent or unreadable; never negative."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
