"""Time, as the sync layer reads it: a port so that tests can step it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Naive UTC, like every timestamp SecureVideo and the ledger use."""
        ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The machine's clock.  Standard library only, so it lives beside its protocol."""

    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()
