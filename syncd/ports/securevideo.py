"""SecureVideo, in domain terms: what the sync layer asks of it.  Raises ``syncd.core.errors``."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from syncd.core.domain import CreateSession, Guest, RemoteSession


class SessionGateway(Protocol):
    """SecureVideo, in domain terms.  Raises the errors of ``syncd.core.errors``."""

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]:
        """Active sessions (cancelled ones included) of the host user with this ExternalId."""
        ...

    def create_session(self, op: CreateSession) -> RemoteSession: ...

    def reschedule_session(self, session_id: int, schedule_ts: datetime) -> RemoteSession: ...

    def cancel_session(self, session_id: int) -> None: ...

    def add_participant(self, session_id: int, guest: Guest) -> RemoteSession: ...

    def update_participant(self, participation_id: int, guest: Guest) -> RemoteSession: ...

    def remove_participant(self, participation_id: int) -> None: ...
