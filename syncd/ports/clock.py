"""Time, as the sync layer reads it: a port so that tests can step it."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Naive UTC, like every timestamp SecureVideo and the ledger use."""
        ...

    def monotonic(self) -> float: ...
