"""The retry policy: how long to wait before trying a temporary failure again.

Pure apart from the jitter, whose random source is given: tests seed it, so a chaos run's waits
are the same every time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from syncd.core.errors import TemporaryError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 0.5
    cap_seconds: float = 60.0
    #: failed tries in a row after which an appointment is reported as retrying for long
    #: (``retrying_long``); a temporary failure is retried for as long as it lasts, never parked
    long_after_attempts: int = 8
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Full-jitter exponential back-off; SecureVideo's ``Retry-After`` wins when it asks."""
        if retry_after is not None:
            # A little spread so that many waiting appointments don't return in the same instant.
            return max(0.0, retry_after) + self.rng.uniform(0, self.base_seconds / 10)
        return self.rng.uniform(0, min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1)))

    def turns_long(self, attempts: int) -> bool:
        """The attempt at which to say, once, that this appointment has been retrying for long."""
        return attempts == self.long_after_attempts


def counts_as_failure(exc: TemporaryError) -> int:
    """1 for a failed attempt; 0 when SecureVideo only asked syncd to wait (``Retry-After`` on a
    429 or 503, or a request held back for one): that is pacing, not this appointment failing,
    and a sustained throttle must delay the backlog, not park it."""
    return 0 if exc.retry_after is not None and exc.retry_after > 0 else 1
