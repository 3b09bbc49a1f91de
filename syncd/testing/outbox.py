"""An outbox in memory: rows appended as the EHR's trigger would write them, read through the
``OutboxSource`` port."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from syncd.ports.outbox import OutboxRef, OutboxRow


class InMemoryOutbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, dict[str, object]] = {}
        self._next = 1

    def append(self, values: Mapping[str, object]) -> int:
        """Store a row; ``event_id`` is assigned when the row has none.  Returns it."""
        with self._lock:
            event_id = values.get("event_id")
            if not isinstance(event_id, int):
                event_id = self._next
            self._next = max(self._next, event_id + 1)
            self._rows[event_id] = {**values, "event_id": event_id}
            return event_id

    def restore(self, rows: Sequence[Mapping[str, object]]) -> list[int]:
        """Replace every row, as restoring a backup does: event ids start again at 1 (or at each
        row's own ``event_id``).  Returns the ids."""
        with self._lock:
            self._rows, self._next = {}, 1
        return [self.append(r) for r in rows]

    def refs_after(self, event_id: int, limit: int) -> list[OutboxRef]:
        with self._lock:
            ids = sorted(e for e in self._rows if e > event_id)[:limit]
            return [OutboxRef(e, _text(self._rows[e].get("appointment_id"))) for e in ids]

    def rows(self, event_ids: Sequence[int]) -> list[OutboxRow]:
        with self._lock:
            return [OutboxRow(e, dict(self._rows[e])) for e in event_ids if e in self._rows]

    def max_event_id(self) -> int | None:
        with self._lock:
            return max(self._rows, default=None)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
