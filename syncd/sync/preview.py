"""The dry run behind ``syncd plan``: what a pass would do, with no mutating call and no ledger
write.  It reads the outbox window and the due appointments as a pass does, with the same
helpers."""

from __future__ import annotations

from datetime import timedelta

from syncd.core.applied import kept_session_id
from syncd.core.domain import Appointment, describe
from syncd.core.errors import AuthenticationError, InvalidRowError, PermanentError, TemporaryError
from syncd.core.fingerprint import Fingerprints
from syncd.core.notices import notices_per_op
from syncd.core.planner import plan
from syncd.core.redact import redact
from syncd.ports.clock import Clock
from syncd.ports.ledger import AppointmentRecord, Ledger, ParticipantRecord
from syncd.ports.outbox import OutboxSource
from syncd.sync.applied import applied_of
from syncd.sync.hosts import HostSessions, hosts_of
from syncd.sync.ingest import newest_per_appointment, pages
from syncd.sync.load import RowReading, rows_of
from syncd.sync.report import Preview

#: ``syncd plan`` looks at this many due appointments at most
PREVIEW_LIMIT = 100_000


def preview(
    *,
    outbox: OutboxSource,
    ledger: Ledger,
    hosts: HostSessions,
    clock: Clock,
    reading: RowReading,
    batch_size: int,
    reread_window: int,
    fingerprints: Fingerprints,
    past_grace: timedelta,
    move_host: bool = False,
) -> list[Preview]:
    """Each appointment's operations, and how many notices each sends patients (counts only)."""
    todo, records, participants = _pending(ledger, outbox, clock, batch_size, reread_window)
    rows = rows_of(outbox, list(todo.values()))
    previews: list[Preview] = []
    parsed: list[tuple[Appointment, list[str], AppointmentRecord | None]] = []
    for aid, event_id in sorted(todo.items()):
        row = rows.get(event_id)
        if row is None:
            previews.append(Preview(aid, problem=f"outbox row for event {event_id} is gone"))
            continue
        try:
            appt = reading.parse(row)
        except InvalidRowError as err:
            previews.append(Preview(aid, problem=str(err)))
            continue
        record = records.get(aid)
        applied = applied_of(record, participants.get(aid, {}))
        appt = kept_session_id(appt, applied)
        parsed.append((appt, hosts_of(appt, record.host_external_id if record else None), record))
    hosts.request(h for _, host_list, _ in parsed for h in host_list)
    for appt, host_list, record in parsed:
        try:
            observed = hosts.sessions(host_list, appt.external_session_id)
        except (TemporaryError, PermanentError, AuthenticationError) as exc:
            previews.append(Preview(appt.appointment_id, problem=redact(str(exc), appt)))
            continue
        applied = applied_of(record, participants.get(appt.appointment_id, {}))
        managed = record.session_id if record else None
        ops = plan(
            appt,
            applied,
            observed,
            now=clock.now(),
            fingerprints=fingerprints,
            managed_session_id=managed,
            past_grace=past_grace,
            move_host=move_host,
        )
        sent = notices_per_op(ops, observed)
        shown = tuple(
            describe(op, fingerprints) | {"notices": n} for op, n in zip(ops, sent, strict=True)
        )
        previews.append(Preview(appt.appointment_id, shown, notices=sum(sent)))
    return previews


def _pending(
    ledger: Ledger, outbox: OutboxSource, clock: Clock, batch_size: int, reread_window: int
) -> tuple[dict[str, int], dict[str, AppointmentRecord], dict[str, dict[str, ParticipantRecord]]]:
    """What a pass would work on: the window's newer rows and the due appointments, by event."""
    with ledger.begin() as tx:
        cursor = tx.cursor.get()
    # An outbox that went back (restored): the pass re-reads it all, and its ids say nothing.
    newest = outbox.max_event_id()
    went_back = newest is not None and newest < cursor
    wanted: dict[str, int] = {}
    start = 0 if went_back else max(0, cursor - reread_window)
    for refs in pages(outbox, start, batch_size):
        for aid, event_id in newest_per_appointment(refs).items():
            wanted[aid] = max(event_id, wanted.get(aid, 0))
    with ledger.begin() as tx:
        records = tx.appointments.get_many(list(wanted))
        newer = {
            a: e
            for a, e in wanted.items()
            if went_back or a not in records or e > records[a].last_event_id
        }
        due = {
            r.appointment_id: r.last_event_id
            for r in tx.appointments.due(clock.now(), PREVIEW_LIMIT)
        }
        participants = tx.participants.of_appointments(list(newer | due))
    return {**due, **newer}, records, participants
