"""An outbox that goes back: what a row's content is, and how a rewind is recognised.

An outbox restored from a backup starts its event ids again, so ids can no longer say which row is
newer than the one applied.  Content can: the ledger keeps, per appointment, a keyed digest of the
newest row read and of the row last applied (never the row itself), and a re-read outbox is judged
by them.  The outbox went back when its newest event id is below the cursor, or when an event id
the ledger holds as an appointment's newest now carries another appointment or other content.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

import structlog

from syncd.core.fingerprint import Fingerprints
from syncd.ports.ledger import LedgerTransaction, OutboxRewind
from syncd.ports.outbox import OutboxRef, OutboxRow, OutboxSource

__all__ = [
    "NEWEST_BELOW_CURSOR",
    "REUSED_EVENT_ID",
    "canonical",
    "log_rewound",
    "reused_ids",
    "rewind_problem",
    "row_digest",
    "start_over",
]

log = structlog.get_logger("syncd.engine")

#: the two ways an outbox shows it went back (the ``outbox_rewound`` event's ``reason``)
NEWEST_BELOW_CURSOR: Final = "newest_below_cursor"
REUSED_EVENT_ID: Final = "event_id_reused"

#: Not the appointment's content: its place in the outbox, and when the EHR wrote the row.
_NOT_CONTENT: Final = frozenset({"event_id", "created_at"})


def _value(value: object) -> str:
    if value is None:
        return "~"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes:" + bytes(value).hex()
    # The type too: the same driver always returns the same type for a column.
    return f"{type(value).__name__}:{value}"


def canonical(values: Mapping[str, object]) -> str:
    """A row's mapped values, event id and ``created_at`` left out, in one stable text."""
    return "\x1e".join(
        f"{name}\x1f{_value(values[name])}" for name in sorted(values) if name not in _NOT_CONTENT
    )


def row_digest(fingerprints: Fingerprints, row: OutboxRow) -> str:
    return fingerprints.digest("outbox_row", canonical(row.values))


def reused_ids(
    refs: Sequence[OutboxRef],
    held: Mapping[int, tuple[str, str | None]],
    key_of: Mapping[int, str],
    outbox: OutboxSource,
    fingerprints: Fingerprints,
) -> bool:
    """Whether an event id the ledger holds as an appointment's newest (``held``: event id →
    appointment, digest) now belongs to another appointment or carries other content.  A digest
    the ledger does not have yet (a ledger from before digests) never counts."""
    compare: dict[int, str] = {}
    for ref in refs:
        hit = held.get(ref.event_id)
        if hit is None:
            continue
        appointment_id, digest = hit
        if appointment_id != key_of[ref.event_id]:
            return True
        if digest is not None:
            compare[ref.event_id] = digest
    if not compare:
        return False
    rows = outbox.rows(sorted(compare))
    return any(row_digest(fingerprints, r) != compare[r.event_id] for r in rows)


def start_over(tx: LedgerTransaction, *, newest_event_id: int, now: datetime) -> OutboxRewind:
    """Move the cursor back to 0 and let content, not the old ids, decide what the re-read
    changes."""
    tx.appointments.rebase_events(now)
    return tx.cursor.rewind(newest_event_id=newest_event_id, now=now)


def rewind_problem(rewind: OutboxRewind | None) -> str | None:
    """What ``/healthz`` says from a rewind until its re-read is all applied."""
    if rewind is None or rewind.applied_at is not None:
        return None
    return (
        f"the outbox went back (newest event {rewind.newest_event_id}, cursor was "
        f"{rewind.from_event_id}); its re-read is not all applied yet (see outbox_rewound)"
    )


def log_rewound(rewind: OutboxRewind, reason: str) -> None:
    """The one loud event of a rewind: ids and counts only."""
    log.error(
        "outbox_rewound",
        reason=reason,
        cursor=rewind.from_event_id,
        newest_event_id=rewind.newest_event_id,
        action="re-reading the outbox from its start; each appointment whose newest row differs "
        "from the one last applied is applied again",
    )
