"""The HL7 inbox as a source of whole-appointment rows, beside (or instead of) the outbox.

An accepted message is stored and its appointment noted as pending in one ledger transaction
(:class:`InboxWriter`), so it is durable before it is acknowledged and needs no cursor of its
own.  The engine then asks for the appointment's row by event id; :class:`CombinedSource` answers
the inbox's ids (``INBOX_EVENT_BASE`` and up) from the inbox and every other id from the outbox,
which alone is paged through by the ingest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from syncd.ports.clock import Clock
from syncd.ports.inbox import INBOX_EVENT_BASE, InboxMessage, InboxOutcome
from syncd.ports.ledger import Ledger
from syncd.ports.outbox import OutboxRef, OutboxRow, OutboxSource

__all__ = ["CombinedSource", "InboxWriter", "NoOutbox"]


class InboxWriter:
    """Stores accepted messages, on as many connections at once as the ledger takes."""

    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock

    def store(self, message: InboxMessage) -> InboxOutcome:
        """Committed when this returns; raises when the ledger fails (nothing acknowledged).

        Tried twice: a resend racing its original on another connection loses at the unique
        control id (or appointment id), and the second try finds it stored."""
        try:
            return self._store(message)
        except Exception:  # noqa: BLE001 - the ledger's own errors; the second try decides
            return self._store(message)

    def _store(self, message: InboxMessage) -> InboxOutcome:
        with self._ledger.begin() as tx:
            now = self._clock.now()
            outcome, inbox_id = tx.inbox.accept(message, now=now)
            if inbox_id is not None:
                tx.appointments.note_events(
                    {message.appointment_id: INBOX_EVENT_BASE + inbox_id}, now=now
                )
        return outcome


class NoOutbox:
    """The outbox of a syncd fed by HL7 alone: empty."""

    def refs_after(self, event_id: int, limit: int) -> list[OutboxRef]:
        return []

    def rows(self, event_ids: Sequence[int]) -> list[OutboxRow]:
        return []

    def max_event_id(self) -> int | None:
        return None


class CombinedSource:
    """``OutboxSource``: the outbox's refs and rows, and the inbox's rows by their event ids."""

    def __init__(self, outbox: OutboxSource, ledger: Ledger) -> None:
        self._outbox = outbox
        self._ledger = ledger

    def refs_after(self, event_id: int, limit: int) -> list[OutboxRef]:
        return self._outbox.refs_after(event_id, limit)

    def max_event_id(self) -> int | None:
        return self._outbox.max_event_id()

    def rows(self, event_ids: Sequence[int]) -> list[OutboxRow]:
        inbox = [e - INBOX_EVENT_BASE for e in event_ids if e >= INBOX_EVENT_BASE]
        found = self._outbox.rows([e for e in event_ids if e < INBOX_EVENT_BASE])
        if inbox:
            with self._ledger.begin() as tx:
                stored = tx.inbox.rows(inbox)
            for inbox_id, text in stored.items():
                event_id = INBOX_EVENT_BASE + inbox_id
                values = json.loads(text)
                found.append(OutboxRow(event_id, {**values, "event_id": event_id}))
        return found
