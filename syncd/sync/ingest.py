"""Ingest: note in the ledger which appointments have newer outbox rows.

Ids can become visible out of order (concurrent EHR transactions commit late), so reading starts a
window behind the cursor; the ledger's per-appointment event id deduplicates.

The window (up to the first page that reaches the cursor) is judged before any of it is noted: an
outbox that went back (``sync.rewind``) is read again from its start, and the rows of appointments
whose ids it made meaningless are noted by content.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from syncd.core.fingerprint import Fingerprints
from syncd.core.rows import MAX_ID_LENGTH
from syncd.ports.clock import Clock
from syncd.ports.ledger import Ledger, OutboxRewind
from syncd.ports.outbox import OutboxRef, OutboxRow, OutboxSource
from syncd.sync.rewind import (
    NEWEST_BELOW_CURSOR,
    REUSED_EVENT_ID,
    log_rewound,
    reused_ids,
    row_digest,
    start_over,
)


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


def _chunks(refs: list[OutboxRef], size: int) -> Iterator[list[OutboxRef]]:
    for start in range(0, len(refs), size):
        yield refs[start : start + size]


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
        #: the ledger's cursor as this process last read or wrote it (forward but for a rewind)
        self._cursor: int | None = None
        #: appointment id → newest event id this process knows the ledger has noted
        self._seen: dict[str, int] = {}
        #: event id → ledger key of the rows this process noted within the window: an id read
        #: again with another key means the outbox went back
        self._keys: dict[int, str] = {}
        self._fingerprints: Fingerprints | None = None
        #: the last rewind the ledger holds, as this process last read or wrote it
        self.rewind: OutboxRewind | None = None
        #: whether the last run found that the outbox went back
        self.rewound = False

    def digest(self, row: OutboxRow) -> str:
        """The row's keyed content digest."""
        return row_digest(self._keyed(), row)

    def _keyed(self) -> Fingerprints:
        # The ledger's key, read once per process and only when a digest is wanted.
        if self._fingerprints is None:
            with self._ledger.begin() as tx:
                self._fingerprints = Fingerprints(tx.cursor.fingerprint_key())
        return self._fingerprints

    def run(self) -> int:
        """Read the outbox from a window behind the cursor (from its start when it went back);
        returns how many appointments became pending."""
        if self._cursor is None:
            self._read_position()
        self.rewound = False
        for confirming in (False, True):
            assert self._cursor is not None
            reader = pages(self._outbox, max(0, self._cursor - self._window), self._batch_size)
            held = self._hold(reader)
            went_back = self._went_back(held)
            # Another instance may have led meanwhile (and handled a rewind): ask the ledger
            # before calling one, and judge again from what it says.
            if went_back is None or confirming or not self._read_position():
                break
        if went_back is not None:
            self._start_over(*went_back)
            reader, held = pages(self._outbox, 0, self._batch_size), []
        became_pending = sum(self._note(refs) for refs in _chunks(held, self._batch_size))
        for refs in reader:
            became_pending += self._note(refs)
        self._forget_below_window()
        return became_pending

    def _read_position(self) -> bool:
        """The cursor and the last rewind from the ledger; whether they differ from what this
        process had (its memory of the window is then dropped)."""
        with self._ledger.begin() as tx:
            position = tx.cursor.position()
        if position == (self._cursor, self.rewind):
            return False
        self._cursor, self.rewind = position
        self._seen, self._keys = {}, {}
        return True

    def _hold(self, reader: Iterator[list[OutboxRef]]) -> list[OutboxRef]:
        """The refs up to the first page that reaches the cursor, or all there are."""
        assert self._cursor is not None
        held: list[OutboxRef] = []
        for refs in reader:
            held.extend(refs)
            if refs[-1].event_id >= self._cursor:
                break
        return held

    def _went_back(self, held: list[OutboxRef]) -> tuple[str, int] | None:
        """(why, the outbox's newest event id) when the outbox went back, else None."""
        assert self._cursor is not None
        if self._cursor == 0:
            return None
        # ``held`` ends below the cursor only when it is all the outbox has past the window.
        newest = held[-1].event_id if held else self._outbox.max_event_id()
        if newest is None:
            return None  # an emptied outbox: nothing in it can be lost
        if newest < self._cursor:
            return NEWEST_BELOW_CURSOR, newest
        fresh: list[OutboxRef] = []
        for ref in held:
            if ref.event_id > self._cursor:
                break
            key = self._keys.get(ref.event_id)
            if key is None:
                fresh.append(ref)
            elif key != ledger_key(ref):
                return REUSED_EVENT_ID, newest  # this process read that id as another's
        if not fresh:
            return None
        with self._ledger.begin() as tx:
            noted = tx.appointments.newest_at([r.event_id for r in fresh])
        if not noted:
            return None
        keys = {r.event_id: ledger_key(r) for r in fresh}
        if reused_ids(fresh, noted, keys, self._outbox, self._keyed()):
            return REUSED_EVENT_ID, newest
        return None

    def _start_over(self, reason: str, newest: int) -> None:
        with self._ledger.begin() as tx:
            self.rewind = start_over(tx, newest_event_id=newest, now=self._clock.now())
        log_rewound(self.rewind, reason)
        self.rewound = True
        self._cursor, self._seen, self._keys = 0, {}, {}

    def _note(self, refs: list[OutboxRef]) -> int:
        assert self._cursor is not None
        unseen = {
            a: e for a, e in newest_per_appointment(refs).items() if e > self._seen.get(a, -1)
        }
        top = refs[-1].event_id
        if not unseen and top <= self._cursor:
            self._keys.update((r.event_id, ledger_key(r)) for r in refs)
            return 0
        noted = 0
        with self._ledger.begin() as tx:
            known = tx.appointments.last_events(unseen.keys()) if unseen else {}
            newer = {a: e for a, e in unseen.items() if e > known.get(a, -1)}
            # An id from before the outbox went back says nothing: the content decides.
            rebased = {a: e for a, e in newer.items() if known.get(a) == 0}
            by_id = {a: e for a, e in newer.items() if a not in rebased}
            if by_id:
                noted = tx.appointments.note_events(by_id, now=self._clock.now())
            if top > self._cursor and not rebased:
                tx.cursor.advance(top)
        if rebased:
            contents = self._contents(rebased)
            with self._ledger.begin() as tx:
                noted += tx.appointments.note_contents(contents, now=self._clock.now())
                if top > self._cursor:
                    tx.cursor.advance(top)
        # Only after the commit: what is remembered must be in the ledger.
        for a, e in unseen.items():
            self._seen[a] = max(e, known.get(a, -1))
        self._keys.update((r.event_id, ledger_key(r)) for r in refs)
        self._cursor = max(self._cursor, top)
        return noted

    def _contents(self, events: Mapping[str, int]) -> dict[str, tuple[int, str]]:
        """Each appointment's (event id, row digest); a row gone meanwhile matches nothing."""
        rows = {r.event_id: r for r in self._outbox.rows(sorted(events.values()))}
        return {a: (e, self.digest(rows[e]) if e in rows else "gone") for a, e in events.items()}

    def _forget_below_window(self) -> None:
        """Rows at or below the window can never be re-read: forget them, keeping memory bounded."""
        assert self._cursor is not None
        floor = self._cursor - self._window
        if len(self._seen) > self._window:
            self._seen = {a: e for a, e in self._seen.items() if e > floor}
        if len(self._keys) > self._window + self._batch_size:
            self._keys = {e: k for e, k in self._keys.items() if e > floor}
