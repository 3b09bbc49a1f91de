"""A gateway that runs a hook after a chosen remote success: the instant between SecureVideo
applying a change and the ledger hearing of it, for outage and crash tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from syncd.core.domain import CreateSession, Guest, RemoteSession
from syncd.ports.securevideo import SessionGateway

__all__ = ["HookedGateway", "SimulatedCrash"]


class SimulatedCrash(BaseException):
    """Stands for the process dying: a BaseException, so no ``except Exception`` in syncd
    catches it and no outcome is recorded on its way out."""


class HookedGateway:
    """Delegates to ``inner``; calls ``hook(kind)`` after the chosen successful mutating call.

    The hook runs after SecureVideo applied a change and answered, before the answer reaches the
    engine — the instant between a remote success and the ledger commit.  It can stop a database
    (the outage tests) or raise :class:`SimulatedCrash` (an in-process crash).

    ``when(kind, count)`` says whether to fire for this call (``count`` counts successful mutating
    calls so far, this one included); by default it fires once, after the first create.
    """

    def __init__(
        self,
        inner: SessionGateway,
        hook: Callable[[str], None],
        when: Callable[[str, int], bool] | None = None,
    ) -> None:
        self.inner = inner
        self.hook = hook
        self.count = 0
        self.fired = 0
        self.when = when or (lambda kind, count: kind == "create" and self.fired == 0)
        self.created: list[str] = []
        self._lock = threading.Lock()

    def _after(self, kind: str) -> None:
        with self._lock:
            self.count += 1
            fire = self.when(kind, self.count)
            if fire:
                self.fired += 1
        if fire:
            self.hook(kind)

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]:
        return self.inner.list_host_sessions(host_external_id)

    def create_session(self, op: CreateSession) -> RemoteSession:
        result = self.inner.create_session(op)
        with self._lock:
            self.created.append(op.external_session_id)
        self._after("create")
        return result

    def reschedule_session(self, session_id: int, schedule_ts: datetime) -> RemoteSession:
        result = self.inner.reschedule_session(session_id, schedule_ts)
        self._after("reschedule")
        return result

    def cancel_session(self, session_id: int) -> None:
        self.inner.cancel_session(session_id)
        self._after("cancel")

    def move_session(self, session_id: int, host_external_id: str) -> RemoteSession | None:
        result = self.inner.move_session(session_id, host_external_id)
        self._after("move_host")
        return result

    def add_participant(self, session_id: int, guest: Guest) -> RemoteSession:
        result = self.inner.add_participant(session_id, guest)
        self._after("add_participant")
        return result

    def update_participant(self, participation_id: int, guest: Guest) -> RemoteSession:
        result = self.inner.update_participant(participation_id, guest)
        self._after("update_participant")
        return result

    def remove_participant(self, participation_id: int) -> None:
        self.inner.remove_participant(participation_id)
        self._after("remove_participant")
