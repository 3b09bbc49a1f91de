"""The whole account's sessions (``GET /session``), read at most once per drift interval.

Drift detection and the visit-outcome collector share one :class:`AccountSessions`, so together
they cost one read per interval whatever the number of providers; a pass's own work still reads
its hosts (``sync.hosts``), whose lists it must see as they are now.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from syncd.core.domain import RemoteSession
from syncd.core.errors import AuthenticationError, PermanentError, TemporaryError
from syncd.ports.clock import Clock
from syncd.ports.securevideo import AccountGateway

__all__ = ["AccountSessions", "AccountSnapshot"]


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """One read of the account; ``read_at`` is the clock just before it was asked for."""

    #: counts reads: a consumer looks at each snapshot once
    number: int
    read_at: datetime
    sessions: tuple[RemoteSession, ...]
    by_id: Mapping[int, RemoteSession] = field(repr=False)
    #: sessions by ExternalSessionId, any state
    by_external_id: Mapping[str, tuple[RemoteSession, ...]] = field(repr=False)


def _snapshot(number: int, read_at: datetime, sessions: list[RemoteSession]) -> AccountSnapshot:
    by_external: dict[str, list[RemoteSession]] = {}
    for s in sessions:
        if s.external_session_id:
            by_external.setdefault(s.external_session_id, []).append(s)
    return AccountSnapshot(
        number=number,
        read_at=read_at,
        sessions=tuple(sessions),
        by_id={s.session_id: s for s in sessions},
        by_external_id={k: tuple(v) for k, v in by_external.items()},
    )


class AccountSessions:
    """``GET /session`` once per ``interval_seconds``; in between, the last answer.

    A failed read counts as the interval's read too: an outage is not met with a read per pass.
    """

    def __init__(self, gateway: AccountGateway, clock: Clock, interval_seconds: float) -> None:
        self._gateway = gateway
        self._clock = clock
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._last_try: float | None = None
        self._snapshot: AccountSnapshot | None = None
        self._error: Exception | None = None
        #: reads asked of SecureVideo, failed ones included
        self.reads = 0

    def current(self) -> AccountSnapshot:
        """The interval's snapshot, read now if the interval's read is still to be made; raises
        what that read raised (``syncd.core.errors``) until the next interval."""
        with self._lock:
            now = self._clock.monotonic()
            if self._last_try is None or now - self._last_try >= self._interval:
                self._last_try = now
                self._read()
            if self._error is not None:
                raise self._error
            assert self._snapshot is not None  # a read that did not fail left one
            return self._snapshot

    def _read(self) -> None:
        read_at = self._clock.now()
        self.reads += 1
        try:
            sessions = self._gateway.list_account_sessions()
        except (TemporaryError, PermanentError, AuthenticationError) as exc:
            self._error = exc
            return
        self._error = None
        self._snapshot = _snapshot(self.reads, read_at, sessions)
