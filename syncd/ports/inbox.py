"""The HL7 inbox: scheduling messages accepted from an interface engine, kept in the ledger.

Each stored message is one whole-appointment row, in the outbox contract's columns (JSON text),
so the engine plans from it exactly as from an outbox row.  Inbox event ids live apart from the
outbox's: the engine sees them as ``INBOX_EVENT_BASE + id`` (``syncd.sync.inbox``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol

__all__ = [
    "INBOX_EVENT_BASE",
    "SUPERSEDED_KEPT_SECONDS",
    "InboxMessage",
    "InboxOutcome",
    "InboxRepository",
]

#: Inbox ids are shown to the engine above every outbox event id (a BIGINT still holds them).
INBOX_EVENT_BASE: Final = 2**62
#: A superseded row stays this long: a pass that noted it before the newer one arrived still
#: finds it to plan from (the newer one is noted next pass).
SUPERSEDED_KEPT_SECONDS: Final = 3600

#: stored: a new row; duplicate: this control id was accepted before; stale: an older message
#: (MSH-7) than the newest stored for the appointment.  All three are acknowledged AA.
InboxOutcome = Literal["stored", "duplicate", "stale"]


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """One accepted message: ids and times that carry no patient data, and the row (which does)."""

    control_id: str
    appointment_id: str
    #: the trigger event: S12, S13, S14, S15, S17 or S26
    message_type: str
    #: MSH-7, naive UTC
    message_at: datetime
    #: the whole appointment in the outbox contract's columns, as JSON text
    row: str


class InboxRepository(Protocol):
    def accept(self, message: InboxMessage, *, now: datetime) -> tuple[InboxOutcome, int | None]:
        """Store the message unless its control id is known or it is older than the newest
        stored for its appointment; (outcome, the new row's inbox id when stored).  Rows that a
        newer one superseded more than ``SUPERSEDED_KEPT_SECONDS`` ago are deleted."""
        ...

    def rows(self, inbox_ids: Sequence[int]) -> dict[int, str]:
        """The stored rows' JSON text by inbox id (ids no longer there are absent)."""
        ...

    def count(self) -> int:
        """How many rows the inbox holds."""
        ...
