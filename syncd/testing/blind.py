"""A gateway that never sees an existing session: the control for the tests that prove syncd
looks before it creates.  With it, a lost answer to a create must end in a duplicate, which shows
those tests can see one."""

from __future__ import annotations

from datetime import datetime

from syncd.core.domain import CreateSession, Guest, RemoteSession
from syncd.ports.securevideo import SessionGateway


class BlindGateway:
    """Delegates every call but the read of a host's sessions, which finds none."""

    def __init__(self, inner: SessionGateway) -> None:
        self._inner = inner

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]:
        return []

    def create_session(self, op: CreateSession) -> RemoteSession:
        return self._inner.create_session(op)

    def reschedule_session(self, session_id: int, schedule_ts: datetime) -> RemoteSession:
        return self._inner.reschedule_session(session_id, schedule_ts)

    def cancel_session(self, session_id: int) -> None:
        self._inner.cancel_session(session_id)

    def move_session(self, session_id: int, host_external_id: str) -> RemoteSession | None:
        return self._inner.move_session(session_id, host_external_id)

    def add_participant(self, session_id: int, guest: Guest) -> RemoteSession:
        return self._inner.add_participant(session_id, guest)

    def update_participant(self, participation_id: int, guest: Guest) -> RemoteSession:
        return self._inner.update_participant(participation_id, guest)

    def remove_participant(self, participation_id: int) -> None:
        self._inner.remove_participant(participation_id)
