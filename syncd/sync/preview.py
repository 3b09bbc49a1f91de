"""The dry run behind ``syncd plan``: what a pass would do, with no mutating call and no ledger
write.  It reads the outbox window and the due appointments as a pass does, with the same
helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial

from syncd.core.applied import AppliedState, kept_session_id
from syncd.core.domain import Appointment, Operation, RemoteSession, describe
from syncd.core.drift import DriftKind, detect, kinds_of
from syncd.core.errors import AuthenticationError, InvalidRowError, PermanentError, TemporaryError
from syncd.core.fingerprint import Fingerprints
from syncd.core.notices import notices_per_op
from syncd.core.planner import plan
from syncd.core.redact import redact
from syncd.ports.clock import Clock
from syncd.ports.ledger import AppointmentRecord, DriftRecord, Ledger, ParticipantRecord
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
    restore: bool = False,
) -> list[Preview]:
    """Each appointment's operations with their notices (counts only); those with drift on file
    too, the calls that restore it marked ``drift`` (``restore``: the policy is ``restore``)."""
    todo, records, participants, drifted = _pending(
        ledger, outbox, clock, batch_size, reread_window
    )
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
        on_file = drifted.get(appt.appointment_id, ())
        planned = partial(
            plan,
            *(appt, applied, observed),
            now=clock.now(),
            fingerprints=fingerprints,
            managed_session_id=record.session_id if record else None,
            past_grace=past_grace,
            move_host=move_host,
            drift=_drift_of(applied, observed, on_file, clock, fingerprints),
        )
        shown, notices = _marked(planned, restore, fingerprints, observed)
        previews.append(Preview(appt.appointment_id, tuple(shown), notices=notices))
    return previews


def _drift_of(
    applied: AppliedState,
    observed: list[RemoteSession],
    on_file: Sequence[DriftRecord],
    clock: Clock,
    fingerprints: Fingerprints,
) -> dict[DriftKind, int | None]:
    """Drift on file and what the hosts' lists show of it, as a pass's turn takes it."""
    drift = {DriftKind(d.kind): d.session_id for d in on_file}
    seen = detect(applied, observed, now=clock.now(), fingerprints=fingerprints)
    return {**drift, **kinds_of(d for d in seen if d.kind is not DriftKind.SESSION_GONE)}


def _marked(
    planned: Callable[..., tuple[Operation, ...]],
    restore: bool,
    fingerprints: Fingerprints,
    observed: list[RemoteSession],
) -> tuple[list[dict[str, object]], int]:
    """The operations the policy makes, and those that would restore what staff changed
    (marked ``drift``), each with its notices; and the notices of those the policy makes."""
    kept = planned(restore=False)
    restoring = planned(restore=True)
    made = restoring if restore else kept
    ops = made if restore else kept + tuple(op for op in restoring if op not in kept)
    sent = notices_per_op(ops, observed)
    shown = [
        describe(op, fingerprints)
        | {"notices": n}
        | ({} if op in kept else {"drift": _DRIFT[restore]})
        for op, n in zip(ops, sent, strict=True)
    ]
    return shown, sum(n for op, n in zip(ops, sent, strict=True) if op in made)


#: How an operation that undoes what staff changed is marked, by policy (restore or not).
_DRIFT = {True: "restores", False: "would-restore (SYNCD_SYNC__DRIFT=report)"}


def _pending(
    ledger: Ledger, outbox: OutboxSource, clock: Clock, batch_size: int, reread_window: int
) -> tuple[
    dict[str, int],
    dict[str, AppointmentRecord],
    dict[str, dict[str, ParticipantRecord]],
    dict[str, list[DriftRecord]],
]:
    """What a pass would work on: the window's newer rows and the due appointments, by event;
    and the appointments with drift on file (what restoring them would do)."""
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
        drifted: dict[str, list[DriftRecord]] = {}
        for d in tx.drift.current(PREVIEW_LIMIT):
            drifted.setdefault(d.appointment_id, []).append(d)
        records |= tx.appointments.get_many([a for a in drifted if a not in records])
        on_file = {a: records[a].last_event_id for a in drifted if a in records}
        participants = tx.participants.of_appointments(list(on_file | newer | due))
    return {**on_file, **due, **newer}, records, participants, drifted
