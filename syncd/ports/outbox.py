"""The EHR's outbox, read-only: refs (ids only) to find work, whole rows to parse."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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

    def max_event_id(self) -> int | None:
        """The newest event id in the outbox; None when it is empty."""
        ...
