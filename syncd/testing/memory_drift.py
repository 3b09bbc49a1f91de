"""The in-memory ledger's drift repository (``syncd.adapters.ledger.drift`` in memory)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from syncd.ports.ledger import DriftRecord
from syncd.testing.memory_tables import Work, utc

__all__ = ["MemoryDrift"]


class MemoryDrift:
    def __init__(self, work: Work) -> None:
        self._w = work

    def note(self, record: DriftRecord) -> bool:
        key = (record.appointment_id, record.kind)
        if key in self._w.t.drift:
            return False
        self._w.put("drift", key, replace(record, detected_at=utc(record.detected_at)))
        return True

    def clear(self, appointment_id: str, kinds: Collection[str] | None = None) -> int:
        keys = [k for k in self._w.t.drift if k[0] == appointment_id]
        if kinds is not None:
            wanted = set(kinds)
            keys = [k for k in keys if k[1] in wanted]
        return sum(self._w.drop("drift", k) for k in keys)

    def of_appointments(self, appointment_ids: Collection[str]) -> dict[str, list[DriftRecord]]:
        wanted = set(appointment_ids)
        out: dict[str, list[DriftRecord]] = {}
        for (aid, _), record in sorted(self._w.t.drift.items()):
            if aid in wanted:
                out.setdefault(aid, []).append(record)
        return out

    def current(self, limit: int = 100) -> list[DriftRecord]:
        rows = sorted(
            self._w.t.drift.values(), key=lambda r: (r.detected_at, r.appointment_id, r.kind)
        )
        return rows[:limit]

    def count(self) -> int:
        return len({aid for aid, _ in self._w.t.drift})
