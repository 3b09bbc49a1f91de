"""What the sync engine needs from the outside world, as protocols.

The adapters in ``syncd.adapters`` implement these against httpx and SQLAlchemy; tests may use
fakes, but the end-to-end suite runs the real adapters against the emulator and real databases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from syncd.core.domain import CreateSession, Guest, RemoteSession

#: The outbox contract's columns, in the contract's order.  The reader maps each to the EHR's own
#: name (``SYNCD_OUTBOX__COLUMNS__<NAME>``).
CONTRACT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "appointment_id",
    "provider_external_id",
    "status",
    "starts_at",
    "topic",
    "is_recorded",
    "participants",
    "created_at",
)


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


@dataclass(frozen=True, slots=True)
class OutboxRef:
    """The two columns of an outbox row that carry no patient data."""

    event_id: int
    appointment_id: str | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One whole outbox row, values exactly as the database driver returned them."""

    event_id: int
    values: Mapping[str, object]


class OutboxSource(Protocol):
    def refs_after(self, event_id: int, limit: int) -> list[OutboxRef]:
        """Refs with ``event_id`` greater than the given one, in event order, at most ``limit``."""
        ...

    def rows(self, event_ids: Sequence[int]) -> list[OutboxRow]:
        """The whole rows for these event ids (missing ids are simply absent)."""
        ...
