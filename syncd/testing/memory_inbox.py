"""The HL7 inbox in memory, statement for statement as ``syncd.adapters.ledger.inbox``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from syncd.ports.inbox import SUPERSEDED_KEPT_SECONDS, InboxMessage, InboxOutcome
from syncd.testing.memory_tables import InboxEntry, Work, utc

__all__ = ["MemoryInbox"]


class MemoryInbox:
    def __init__(self, work: Work) -> None:
        self._w = work

    def accept(self, message: InboxMessage, *, now: datetime) -> tuple[InboxOutcome, int | None]:
        now = utc(now)
        message = replace(message, message_at=utc(message.message_at))
        rows = self._w.t.inbox
        if any(e.message.control_id == message.control_id for e in rows.values()):
            return "duplicate", None
        times = [
            e.message.message_at
            for e in rows.values()
            if e.message.appointment_id == message.appointment_id
        ]
        if times and message.message_at < max(times):
            return "stale", None
        self._w.t.inbox_last_id += 1
        inbox_id = self._w.t.inbox_last_id
        self._w.put("inbox", inbox_id, InboxEntry(message, received_at=now))
        for key, entry in list(rows.items()):
            same = entry.message.appointment_id == message.appointment_id
            if same and key != inbox_id and entry.superseded_at is None:
                self._w.put("inbox", key, replace(entry, superseded_at=now))
        horizon = now - timedelta(seconds=SUPERSEDED_KEPT_SECONDS)
        for key, entry in list(rows.items()):
            if entry.superseded_at is not None and entry.superseded_at < horizon:
                self._w.drop("inbox", key)
        return "stored", inbox_id

    def rows(self, inbox_ids: Sequence[int]) -> dict[int, str]:
        rows = self._w.t.inbox
        return {i: rows[i].message.row for i in sorted(set(inbox_ids)) if i in rows}

    def count(self) -> int:
        return len(self._w.t.inbox)
