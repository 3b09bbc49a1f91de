"""Ingest: note in the ledger which appointments have newer outbox rows.

Ids can become visible out of order (concurrent EHR transactions commit late), so reading starts a
window behind the cursor; the ledger's per-appointment event id deduplicates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from syncd.core.rows import MAX_ID_LENGTH
from syncd.ports.clock import Clock
from syncd.ports.ledger import Ledger
from syncd.ports.outbox import OutboxRef, OutboxSource


def ledger_key(ref: OutboxRef) -> str:
    """The ledger's key for an outbox row: its appointment id, or ``event:<id>`` when that id is
    one the row parser refuses anyway (missing, empty, over 64 characters, unprintable, padded).

    Such an id must never reach the ledger: PostgreSQL refuses a NUL byte and an over-long value,
    and one refused INSERT would stop every pass at ingest.  Keyed by its event, the row is parked
    alone (with the parser's reason) and the rest of the outbox flows.
    """
    aid = ref.appointment_id
    if not aid or len(aid) > MAX_ID_LENGTH or not aid.isprintable() or aid != aid.strip():
        return f"event:{ref.event_id}"
    return aid


def newest_per_appointment(refs: Sequence[OutboxRef]) -> dict[str, int]:
    newest: dict[str, int] = {}
    for ref in refs:
        key = ledger_key(ref)
        newest[key] = max(ref.event_id, newest.get(key, 0))
    return newest


def pages(outbox: OutboxSource, after: int, batch_size: int) -> Iterator[list[OutboxRef]]:
    """The outbox's refs after an event id, a page at a time, until a short page."""
    position = after
    while True:
        refs = outbox.refs_after(position, batch_size)
        if refs:
            yield refs
        if len(refs) < batch_size:
            return
        position = refs[-1].event_id


class Ingest:
    """Remembers what this process has committed, so an idle pass re-reads the window without
    asking the ledger about rows it has seen."""

    def __init__(
        self,
        outbox: OutboxSource,
        ledger: Ledger,
        clock: Clock,
        *,
        batch_size: int,
        reread_window: int,
    ) -> None:
        self._outbox = outbox
        self._ledger = ledger
        self._clock = clock
        self._batch_size = batch_size
        self._window = reread_window
        #: the ledger's cursor as this process last read or wrote it (it only moves forward)
        self._cursor: int | None = None
        #: appointment id → newest event id this process knows the ledger has noted
        self._seen: dict[str, int] = {}

    def run(self) -> int:
        """Read the outbox from a window behind the cursor; returns how many appointments became
        pending."""
        if self._cursor is None:
            with self._ledger.begin() as tx:
                self._cursor = tx.cursor.get()
        became_pending = 0
        for refs in pages(self._outbox, max(0, self._cursor - self._window), self._batch_size):
            became_pending += self._note(refs)
        self._forget_below_window()
        return became_pending

    def _note(self, refs: list[OutboxRef]) -> int:
        assert self._cursor is not None
        unseen = {
            a: e for a, e in newest_per_appointment(refs).items() if e > self._seen.get(a, -1)
        }
        top = refs[-1].event_id
        if not unseen and top <= self._cursor:
            return 0
        noted = 0
        with self._ledger.begin() as tx:
            known = tx.appointments.last_events(unseen.keys()) if unseen else {}
            newer = {a: e for a, e in unseen.items() if e > known.get(a, -1)}
            if newer:
                noted = tx.appointments.note_events(newer, now=self._clock.now())
            if top > self._cursor:
                tx.cursor.advance(top)
        # Only after the commit: what is remembered must be in the ledger.
        for a, e in unseen.items():
            self._seen[a] = max(e, known.get(a, -1))
        self._cursor = max(self._cursor, top)
        return noted

    def _forget_below_window(self) -> None:
        """Rows at or below the window can never be re-read: forget them, keeping memory bounded."""
        assert self._cursor is not None
        floor = self._cursor - self._window
        if len(self._seen) > self._window:
            self._seen = {a: e for a, e in self._seen.items() if e > floor}
