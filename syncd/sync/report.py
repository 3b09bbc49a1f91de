"""What a pass did: each appointment's disposition, the counts, and progress for the health
endpoint."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from syncd.ports.ledger import OutboxRewind
from syncd.sync.drift import DriftCheck


class Disposition(StrEnum):
    """Where one appointment stands at the end of its turn in a pass."""

    SYNCED = "synced"  # operations applied, SecureVideo now matches
    UNCHANGED = "unchanged"  # nothing to do
    SKIPPED = "skipped"  # fulfilled/noshow, or outside SecureVideo's active window
    RETRY = "retry"  # temporary failure: left pending for a later pass
    PARKED = "parked"  # permanent refusal or bad row: waits for a newer row or `syncd retry`
    INTERRUPTED = "interrupted"  # shutdown asked for: left pending, every result committed
    SETTLING = "settling"  # its newest row is inside the settle window: applied once it passes


@dataclass(slots=True)
class PassReport:
    pass_id: str
    ingested: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    reads: int = 0
    lag_seconds: float | None = None
    auth_error: str | None = None
    interrupted: bool = False
    duration_ms: int = 0
    #: this pass found that the outbox went back, and read it again from its start
    rewound: bool = False
    #: the ledger's last rewind after this pass (``applied_at`` None: not yet re-applied)
    rewind: OutboxRewind | None = None
    #: what the pass's look for drift found; None when there was no new account read
    drift: DriftCheck | None = None

    @property
    def clean(self) -> bool:
        """Everything due was applied (``syncd once`` exits 0)."""
        bad = self.outcomes[Disposition.PARKED] + self.outcomes[Disposition.RETRY]
        return bad == 0 and self.auth_error is None and not self.interrupted

    def count(self, disposition: Disposition) -> None:
        self.outcomes[disposition.value] += 1

    def saw_lag(self, seconds: float) -> None:
        self.lag_seconds = max(seconds, self.lag_seconds or 0.0)


@dataclass(slots=True)
class PassProgress:
    """How far a pass has come.  Times are the sync clock's monotonic seconds.

    ``total`` is the number of pending appointments when the apply phase began (those waiting out
    a back-off included), so ``done`` may stop short of it; None until something is due.
    """

    pass_id: str
    started_at: float
    #: when the last appointment was finished (or the pass started)
    updated_at: float
    total: int | None = None
    done: int = 0
    apply_started_at: float | None = None
    logged_at: float = 0.0
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Preview:
    """What ``syncd plan`` shows for one appointment."""

    appointment_id: str
    operations: tuple[dict[str, object], ...] = ()
    problem: str | None = None
    #: the messages SecureVideo will send patients for these operations (counts, no recipients)
    notices: int = 0
