"""One sync pass: ingest the outbox into the ledger, then plan and apply every due appointment.

The imperative shell around the pure planner.  The protocol for every mutating call is
intent → call → outcome: the intent is committed to the ledger before the request leaves, the
outcome after a definite answer.  An intent without an outcome (a crash, a lost answer) is resolved
by reading SecureVideo again and planning from what it shows — never by sending the POST again
blindly.  The ledger holds only ids, states and hashes: the appointment itself is always re-read
from the outbox, so nothing of a patient is ever copied out of the EHR.
"""

from __future__ import annotations

import contextvars
import os
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import TypeVar
from zoneinfo import ZoneInfo

import structlog

from syncd.core.domain import (
    AddParticipant,
    Appointment,
    CancelSession,
    CreateSession,
    Guest,
    Operation,
    Presence,
    RemoteSession,
    RemoveParticipant,
    RescheduleSession,
    UpdateParticipant,
    describe,
)
from syncd.core.errors import (
    AmbiguousError,
    AuthenticationError,
    InvalidRowError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)
from syncd.core.planner import is_outside_active_window, plan
from syncd.core.redact import redact
from syncd.core.retry import RetryPolicy, counts_as_failure
from syncd.core.rows import MAX_ID_LENGTH, WindowsZone, parse_row
from syncd.ports.clock import Clock, SystemClock
from syncd.ports.ledger import AppointmentRecord, Ledger, LedgerTransaction, ParticipantRecord
from syncd.ports.outbox import OutboxRef, OutboxSource
from syncd.ports.securevideo import SessionGateway
from syncd.testing.crashpoints import crashpoint

log = structlog.get_logger("syncd.engine")

R = TypeVar("R")
Work = tuple[AppointmentRecord, Appointment]
#: one host's sessions by ExternalSessionId, or what reading them raised
_HostIndex = dict[str, list[RemoteSession]] | Exception
#: Given a call's answer: how to mark the appointment synced in the outcome's transaction, or None
#: when SecureVideo does not match yet.
Settler = Callable[[RemoteSession | None], Callable[[LedgerTransaction], None] | None]

#: After this many plan → apply rounds without converging, something disagrees with the planner
#: (an API that silently ignores a field, say): park rather than loop and spam the patient.
MAX_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class EngineOptions:
    concurrency: int = 4
    batch_size: int = 500
    reread_window: int = 1000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pass_retry_budget_seconds: float = 120.0
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    session_id_prefix: str = ""
    windows_zone: WindowsZone = field(kw_only=True)
    #: Off only for the crash sweep's control run, to prove that test can see duplicates.
    look_before_create: bool = True
    #: A pass that drains a backlog logs ``backlog_progress`` at most this often.
    progress_log_interval_seconds: float = 10.0


class Outcome(StrEnum):
    SYNCED = "synced"  # operations applied, SecureVideo now matches
    UNCHANGED = "unchanged"  # nothing to do
    SKIPPED = "skipped"  # fulfilled/noshow, or outside SecureVideo's active window
    RETRY = "retry"  # temporary failure: left pending for a later pass
    PARKED = "parked"  # permanent failure or attempts exhausted: waits for a newer row or retry
    INTERRUPTED = "interrupted"  # shutdown asked for: left pending, every outcome committed


@dataclass(slots=True)
class PassReport:
    pass_id: str
    ingested: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    reads: int = 0
    lag_seconds: float | None = None
    auth_error: str | None = None
    interrupted: bool = False
    duration_ms: int = 0

    @property
    def clean(self) -> bool:
        """Everything due was applied (``syncd once`` exits 0)."""
        bad = self.outcomes[Outcome.PARKED] + self.outcomes[Outcome.RETRY]
        return bad == 0 and self.auth_error is None and not self.interrupted


@dataclass(slots=True)
class PassProgress:
    """How far a pass has come.  Times are the engine clock's monotonic seconds.

    ``total`` is the number of pending appointments when the apply phase began (those waiting out
    a back-off included), so ``done`` may stop short of it; None until something is due.
    """

    pass_id: str
    started_at: float
    #: when the last appointment was finished (or the pass started)
    updated_at: float
    total: int | None = None
    done: int = 0
    apply_started_at: float | None = None
    logged_at: float = 0.0
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Preview:
    """What ``syncd plan`` shows for one appointment."""

    appointment_id: str
    operations: tuple[dict[str, object], ...] = ()
    problem: str | None = None


class _HostSessions:
    """Per-pass cache of ``GET /session/0?externalId=host``: one read per host per pass.

    Reads are queued in the worker pool ahead of the appointments that need them, and an
    appointment waits only for its own hosts: the first calls go out while other hosts are still
    being read.  The pool takes work in order, so a read an appointment waits for is already
    running on another worker, and a read waits for nothing but SecureVideo."""

    def __init__(
        self,
        gateway: SessionGateway,
        report: PassReport,
        submit: Callable[[Callable[[], _HostIndex]], Future[_HostIndex]],
    ) -> None:
        self._gateway = gateway
        self._report = report
        self._submit = submit
        self._lock = threading.Lock()
        self._reads: dict[str, Future[_HostIndex]] = {}

    def request(self, hosts: Iterable[str]) -> None:
        """Queue a read of each of these hosts not read yet in this pass."""
        with self._lock:
            for host in sorted(set(hosts) - self._reads.keys()):
                self._reads[host] = self._submit(partial(self._read, host))

    def wait(self) -> None:
        with self._lock:
            reads = list(self._reads.values())
        wait(reads)

    def _read(self, host: str) -> _HostIndex:
        try:
            sessions = self._gateway.list_host_sessions(host)
        except (TemporaryError, PermanentError, AuthenticationError) as exc:
            result: _HostIndex = exc
        else:
            index: dict[str, list[RemoteSession]] = {}
            for s in sessions:
                if s.external_session_id:
                    index.setdefault(s.external_session_id, []).append(
                        replace(s, host_external_id=host)
                    )
            result = index
        with self._lock:
            self._report.reads += 1
        return result

    def sessions(self, hosts: Sequence[str], external_session_id: str) -> list[RemoteSession]:
        """This appointment's sessions on these hosts; raises what a failed host read raised.

        Every host must have been requested."""
        out: list[RemoteSession] = []
        for host in hosts:
            with self._lock:
                read = self._reads[host]
            entry = read.result()
            if isinstance(entry, Exception):
                raise entry
            out += entry.get(external_session_id, [])
        return out


class SyncEngine:
    def __init__(
        self,
        *,
        outbox: OutboxSource,
        ledger: Ledger,
        gateway: SessionGateway,
        options: EngineOptions,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.outbox = outbox
        self.ledger = ledger
        self.gateway = gateway
        self.options = options
        self.clock = clock or SystemClock()
        self.stop = stop or threading.Event()
        self._pool = ThreadPoolExecutor(
            # Twice as many appointments in progress as requests in flight (which the gateway
            # bounds to ``concurrency``): while some workers wait for SecureVideo, the others
            # write their ledger records and plan, instead of holding a request slot idle.
            max_workers=2 * options.concurrency,
            thread_name_prefix="syncd-apply",
        )
        self._auth_failed = threading.Event()
        #: the ledger's cursor as this process last read or wrote it (it only moves forward)
        self._cursor: int | None = None
        #: appointment id → newest event id this process knows the ledger has noted
        self._seen: dict[str, int] = {}
        self._may_act: Callable[[], bool] = _always
        #: the running (or last) pass's progress; read by the health endpoint from another thread
        self.progress: PassProgress | None = None
        self._progress_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _halted(self) -> bool:
        """Shutdown asked for, or this process may no longer act (its leader lease lapsed)."""
        return self.stop.is_set() or not self._may_act()

    # --- the pass ---------------------------------------------------------------------------

    def run_pass(self, *, may_act: Callable[[], bool] | None = None) -> PassReport:
        """One pass.  ``may_act`` is asked before every mutating call (the daemon's leader lease):
        once it says no, the pass stops as if interrupted, leaving the rest to the lease holder."""
        report = PassReport(pass_id=uuid.uuid4().hex[:12])
        started = self.clock.monotonic()
        self._auth_failed.clear()
        self._may_act = may_act or _always
        with (
            structlog.contextvars.bound_contextvars(pass_id=report.pass_id),
            self._tracking(report) as progress,
        ):
            report.ingested = self._ingest()
            hosts = _HostSessions(self.gateway, report, self._submit)
            # Two batches in the pool at most: the next one is read, parsed and queued while the
            # workers still have this one, so no worker idles while a batch's tail finishes and the
            # next is parsed, and memory stays bounded by two batches.
            queued: deque[list[Future[Outcome]]] = deque()
            try:
                for batch in self._due_batches():
                    if self._halted() or self._auth_failed.is_set():
                        report.interrupted = self._halted()
                        break
                    if progress.total is None:
                        # One count per pass, and only when something is due: idle passes stay
                        # free.
                        self._begin_apply(progress)
                    queued.append(self._start_batch(batch, hosts, report))
                    while len(queued) > 1:
                        report.outcomes.update(o.value for o in _results(queued.popleft()))
                while queued:
                    report.outcomes.update(o.value for o in _results(queued.popleft()))
            finally:
                # Every worker finishes before a failure (a database outage) leaves the pass: a
                # worker still running after the pass ended could race the next pass on the same
                # appointment.
                wait([f for futures in queued for f in futures])
                hosts.wait()
            if self._halted():
                report.interrupted = True
            report.duration_ms = int((self.clock.monotonic() - started) * 1000)
            if report.ingested or sum(report.outcomes.values()) or report.auth_error:
                log.info(
                    "pass_finished",
                    counts=dict(report.outcomes),
                    ops=dict(report.operations),
                    rows=report.ingested,
                    reads=report.reads,
                    lag_seconds=report.lag_seconds,
                    duration_ms=report.duration_ms,
                    error=report.auth_error,
                )
        return report

    def _ingest(self) -> int:
        """Record in the ledger which appointments have newer outbox rows.  Returns their count.

        Ids can become visible out of order (concurrent EHR transactions commit late), so reading
        starts a window behind the cursor; the ledger's per-appointment event id deduplicates.
        What this process has already committed is remembered, so an idle pass re-reads the
        window without asking the ledger about rows it has seen.
        """
        opts = self.options
        if self._cursor is None:
            with self.ledger.begin() as tx:
                self._cursor = tx.cursor.get()
        position = max(0, self._cursor - opts.reread_window)
        became_pending = 0
        while True:
            refs = self.outbox.refs_after(position, opts.batch_size)
            if not refs:
                break
            newest: dict[str, int] = {}
            for ref in refs:
                key = _ledger_key(ref)
                newest[key] = max(ref.event_id, newest.get(key, 0))
            unseen = {a: e for a, e in newest.items() if e > self._seen.get(a, -1)}
            top = refs[-1].event_id
            if unseen or top > self._cursor:
                with self.ledger.begin() as tx:
                    known = tx.appointments.last_events(unseen.keys()) if unseen else {}
                    newer = {a: e for a, e in unseen.items() if e > known.get(a, -1)}
                    if newer:
                        became_pending += tx.appointments.note_events(newer, now=self.clock.now())
                    if top > self._cursor:
                        tx.cursor.advance(top)
                # Only after the commit: what is remembered must be in the ledger.
                for a, e in unseen.items():
                    self._seen[a] = max(e, known.get(a, -1))
                self._cursor = max(self._cursor, top)
            position = top
            if len(refs) < opts.batch_size:
                break
        # Rows at or below this can never be re-read: forget them, keeping memory bounded.
        floor = self._cursor - opts.reread_window
        if len(self._seen) > opts.reread_window:
            self._seen = {a: e for a, e in self._seen.items() if e > floor}
        return became_pending

    def _due_batches(self) -> Iterator[list[AppointmentRecord]]:
        after: str | None = None
        while True:
            with self.ledger.begin() as tx:
                batch = tx.appointments.due(self.clock.now(), self.options.batch_size, after)
            if not batch:
                return
            yield batch
            after = batch[-1].appointment_id

    def _start_batch(
        self, batch: list[AppointmentRecord], hosts: _HostSessions, report: PassReport
    ) -> list[Future[Outcome]]:
        """Load and parse a batch, read the hosts it needs, and queue its appointments."""
        work = self._load(batch, report)
        self._advance(len(batch) - len(work))  # the rows parked by _load are done too
        if not work:
            return []
        needed = {
            h
            for record, appt in work
            if appt.presence is not Presence.LEAVE_ALONE
            for h in _hosts_of(appt, record.host_external_id)
        }
        hosts.request(needed)
        ids = [appt.appointment_id for _, appt in work]
        with self.ledger.begin() as tx:
            known = tx.participants.of_appointments(ids)
            unresolved = tx.operations.with_open(ids)

        def sync(item: Work) -> Outcome:
            record, appt = item
            try:
                return self._sync_one(
                    record,
                    appt,
                    known.get(appt.appointment_id, {}),
                    hosts,
                    report,
                    unresolved=appt.appointment_id in unresolved,
                )
            finally:
                self._advance(1)

        return [self._submit(partial(sync, item)) for item in work]

    @contextmanager
    def _tracking(self, report: PassReport) -> Iterator[PassProgress]:
        now = self.clock.monotonic()
        progress = PassProgress(report.pass_id, started_at=now, updated_at=now, logged_at=now)
        self.progress = progress
        try:
            yield progress
        finally:
            progress.finished = True

    def _begin_apply(self, progress: PassProgress) -> None:
        with self.ledger.begin() as tx:
            total = tx.appointments.pending_count()
        with self._progress_lock:
            progress.total = total
            progress.apply_started_at = self.clock.monotonic()

    def _advance(self, count: int) -> None:
        """Count finished appointments; log ``backlog_progress`` at a bounded rate."""
        progress = self.progress
        if progress is None or count <= 0:
            return
        now = self.clock.monotonic()
        with self._progress_lock:
            progress.done += count
            progress.updated_at = now
            if now - progress.logged_at < self.options.progress_log_interval_seconds:
                return
            progress.logged_at = now
            done, total = progress.done, progress.total
            elapsed = now - (progress.apply_started_at or progress.started_at)
        rate = done / elapsed if elapsed > 0 else None
        left = None if total is None else max(0, total - done)
        log.info(
            "backlog_progress",
            done=done,
            total=total,
            rate_per_second=None if rate is None else round(rate, 2),
            eta_seconds=None if not rate or left is None else round(left / rate),
        )

    def _submit(self, fn: Callable[[], R]) -> Future[R]:
        return self._pool.submit(contextvars.copy_context().run, fn)

    def _load(self, batch: list[AppointmentRecord], report: PassReport) -> list[Work]:
        """Fetch and parse the latest outbox row of each due appointment; park the bad ones."""
        rows = {r.event_id: r for r in self.outbox.rows([rec.last_event_id for rec in batch])}
        now = self.clock.now()
        work: list[Work] = []
        for record in batch:
            row = rows.get(record.last_event_id)
            if row is None:
                reason = (
                    f"appointment {record.appointment_id}: outbox row for event "
                    f"{record.last_event_id} is no longer there"
                )
                self._park(record, reason, field_name="event_id")
                report.outcomes[Outcome.PARKED.value] += 1
                continue
            try:
                appt = parse_row(
                    row.values,
                    zone=self.options.zone,
                    windows_zone=self.options.windows_zone,
                    session_id_prefix=self.options.session_id_prefix,
                )
            except InvalidRowError as err:
                self._park(record, str(err), field_name=err.field)
                report.outcomes[Outcome.PARKED.value] += 1
                continue
            if appt.appointment_id != record.appointment_id:
                # The row is keyed differently from how it was ingested (null id at ingest).
                self._park(
                    record,
                    f"appointment {record.appointment_id}: field 'appointment_id': changed",
                    field_name="appointment_id",
                )
                report.outcomes[Outcome.PARKED.value] += 1
                continue
            created = _created_at(row.values.get("created_at"), self.options.zone)
            if created is not None:
                lag = (now - created).total_seconds()
                report.lag_seconds = max(lag, report.lag_seconds or 0.0)
            work.append((record, appt))
        return work

    # --- one appointment --------------------------------------------------------------------

    def _sync_one(
        self,
        record: AppointmentRecord,
        appt: Appointment,
        known: dict[str, ParticipantRecord],
        hosts: _HostSessions,
        report: PassReport,
        *,
        unresolved: bool = True,
    ) -> Outcome:
        """``unresolved``: the ledger holds calls of this appointment whose outcome is unknown;
        they are marked resolved once SecureVideo has been read again and matches."""
        opts = self.options
        aid = appt.appointment_id
        # Failures in a row of each step, reading SecureVideo and calling it: max_attempts bounds
        # each, and a success of that step starts its count again.  One count of every failure of
        # the appointment parked one in 200 operations under a 30% 503 storm (overload scenario).
        read_failures = call_failures = record.attempts
        deadline = self.clock.monotonic() + opts.pass_retry_budget_seconds
        fresh_read = False
        managed = record.session_id
        host_list = _hosts_of(appt, record.host_external_id)

        if appt.presence is Presence.LEAVE_ALONE:
            return self._skip(appt, "status leaves SecureVideo alone")

        rounds = 0
        progressed: set[Operation] = set()
        acted = False  # a call was made: the outcome is "synced", not "unchanged"
        while True:
            if self._halted() or self._auth_failed.is_set():
                return Outcome.INTERRUPTED
            try:
                if fresh_read:
                    observed = self._read_fresh(host_list, appt.external_session_id, report)
                else:
                    observed = hosts.sessions(host_list, appt.external_session_id)
            except AuthenticationError as exc:
                return self._auth(exc, report)
            except NotFoundError as exc:
                return self._park_appt(
                    appt,
                    f"appointment {aid}: field 'provider_external_id': SecureVideo does not "
                    f"know this host ({exc.message})",
                    field_name="provider_external_id",
                )
            except PermanentError as exc:
                return self._park_appt(appt, f"appointment {aid}: {exc.message}")
            except TemporaryError as exc:
                read_failures += counts_as_failure(exc)
                outcome = self._back_off(appt, max(read_failures, call_failures), exc, deadline)
                if outcome is not None:
                    return outcome
                fresh_read = True
                continue
            read_failures = 0

            if not opts.look_before_create and managed is None:
                observed = []  # the control run: trust the ledger alone
            observed = _with_known_packets(observed, known)
            now = self.clock.now()
            if (
                appt.presence is Presence.LIVE
                and is_outside_active_window(appt, now)
                and all(s.is_cancelled for s in observed)
            ):
                return self._skip(appt, "starts before SecureVideo's active window")
            ops = plan(appt, observed, now=now, managed_session_id=managed)
            if not ops:
                return self._converged(appt, observed, applied=acted, unresolved=unresolved)
            rounds += 1
            acted = True
            if rounds > MAX_ROUNDS:
                fields = sorted({op.kind for op in ops})
                return self._park_appt(
                    appt,
                    f"appointment {aid}: does not converge after {MAX_ROUNDS} rounds "
                    f"({', '.join(fields)})",
                )

            view = list(observed)
            settled: list[bool] = []
            for index, op in enumerate(ops):
                if self._halted():
                    return Outcome.INTERRUPTED
                # After the last call, if its answer shows SecureVideo matching, the appointment
                # is settled in the same commit as that call's outcome: one transaction fewer.
                settle = (
                    self._settler(appt, view, op, managed, unresolved, settled)
                    if index == len(ops) - 1
                    else None
                )
                try:
                    result = self._apply(
                        op,
                        appt,
                        call_failures + 1,
                        report,
                        on_outcome=settle,
                        # Nothing of this appointment's participants is on file yet: a create
                        # needs no DELETE before its INSERT.
                        participants_on_file=bool(known or progressed),
                    )
                except AuthenticationError as exc:
                    return self._auth(exc, report)
                except PermanentError as exc:
                    msg = redact(exc.message, appt)
                    return self._park_appt(
                        appt, f"appointment {aid}: SecureVideo refused {op.kind}: {msg}"
                    )
                except TemporaryError as exc:
                    unresolved = unresolved or isinstance(exc, AmbiguousError)
                    call_failures += counts_as_failure(exc)
                    outcome = self._back_off(appt, call_failures, exc, deadline)
                    if outcome is not None:
                        return outcome
                    # Whatever we knew may be stale now (an ambiguous call may have applied):
                    # look again before planning again.
                    fresh_read = True
                    # A round cut short by a failed call says nothing about convergence;
                    # max_attempts bounds those.  Counted, three 503s on one create parked it as
                    # "does not converge" (found by the overload scenario).
                    rounds -= 1
                    break
                if settled:
                    return Outcome.SYNCED  # the last call's answer showed SecureVideo matching
                view = _after(view, op, result)
                if op not in progressed:
                    # Progress.  An op applied a second time is not (an API ignoring it): that
                    # loop stays bounded by max_attempts.
                    progressed.add(op)
                    call_failures = 0
                if isinstance(op, CreateSession) and result is not None:
                    managed = result.session_id
            else:
                observed = view
                fresh_read = True

    def _settler(
        self,
        appt: Appointment,
        view: list[RemoteSession],
        op: Operation,
        managed: int | None,
        unresolved: bool,
        settled: list[bool],
    ) -> Settler:
        def settle(result: RemoteSession | None) -> Callable[[LedgerTransaction], None] | None:
            after = _after(view, op, result)
            current = (
                result.session_id
                if isinstance(op, CreateSession) and result is not None
                else managed
            )
            # The answers carry the new state: plan against them to confirm convergence.
            if plan(appt, after, now=self.clock.now(), managed_session_id=current):
                return None

            mark = self._synced_writer(appt, after, unresolved=unresolved)

            def write(tx: LedgerTransaction) -> None:
                mark(tx)
                settled.append(True)

            return write

        return settle

    def _apply(
        self,
        op: Operation,
        appt: Appointment,
        attempt: int,
        report: PassReport,
        *,
        on_outcome: Settler | None = None,
        participants_on_file: bool = True,
    ) -> RemoteSession | None:
        """intent → call → outcome for one operation.  ``on_outcome`` is asked, given the answer,
        whether the appointment is settled; its writer then runs in the outcome's transaction."""
        desc = describe(op)
        session_id = None if isinstance(op, CreateSession) else getattr(op, "session_id", None)
        participant = desc.get("participant_external_id")
        with self.ledger.begin() as tx:
            op_id = tx.operations.record_intent(
                appointment_id=appt.appointment_id,
                event_id=appt.event_id,
                op=op.kind,
                session_id=session_id,
                participant_external_id=str(participant) if participant else None,
                attempt=attempt,
                now=self.clock.now(),
                pid=os.getpid(),
            )
            if isinstance(op, CreateSession):
                # With the intent, not the outcome: a crash after SecureVideo created the session
                # must not leave it under a host the ledger never heard of, where no later pass
                # looks once the provider changes again (found by the crash sweep).  Every other
                # live session was cancelled, and that committed, before a create is planned.
                tx.appointments.set_session(
                    appt.appointment_id,
                    session_id=None,
                    host_external_id=op.host_external_id,
                    now=self.clock.now(),
                )
        started = self.clock.monotonic()
        outcome = "applied"
        detail: str | None = None
        crashpoint("before_call")
        try:
            result = self._call(op)
        except AmbiguousError as exc:
            outcome, detail = "ambiguous", redact(exc.message, appt)
            raise
        except (TemporaryError, PermanentError, AuthenticationError) as exc:
            outcome, detail = "failed", redact(str(exc), appt)
            raise
        finally:
            duration_ms = int((self.clock.monotonic() - started) * 1000)
            report.operations[f"{op.kind}:{outcome}"] += 1
            if outcome != "applied":
                with self.ledger.begin() as tx:
                    tx.operations.record_result(
                        op_id, state=outcome, detail=detail, now=self.clock.now()
                    )
                log.warning(
                    "operation",
                    appointment_id=appt.appointment_id,
                    op=op.kind,
                    session_id=session_id,
                    outcome=outcome,
                    attempt=attempt,
                    duration_ms=duration_ms,
                    reason=detail,
                )
        crashpoint("after_call")
        new_session_id = result.session_id if result is not None else session_id
        settle = on_outcome(result) if on_outcome is not None else None
        effects = self._effects(
            op,
            appt,
            result,
            settling=settle is not None,
            participants_on_file=participants_on_file,
        )
        with self.ledger.begin() as tx:
            tx.operations.record_result(
                op_id, state="applied", detail=None, session_id=new_session_id, now=self.clock.now()
            )
            effects(tx)
            if settle is not None:
                settle(tx)
        crashpoint("after_commit")
        log.info(
            "operation",
            appointment_id=appt.appointment_id,
            op=op.kind,
            session_id=new_session_id,
            outcome="applied",
            attempt=attempt,
            duration_ms=duration_ms,
        )
        return result

    def _call(self, op: Operation) -> RemoteSession | None:
        gw = self.gateway
        match op:
            case CreateSession():
                return gw.create_session(op)
            case RescheduleSession():
                return gw.reschedule_session(op.session_id, op.schedule_ts)
            case CancelSession():
                gw.cancel_session(op.session_id)
                return None
            case AddParticipant():
                return gw.add_participant(op.session_id, op.guest)
            case UpdateParticipant():
                return gw.update_participant(op.participation_id, op.guest)
            case RemoveParticipant():
                gw.remove_participant(op.participation_id)
                return None

    def _effects(
        self,
        op: Operation,
        appt: Appointment,
        result: RemoteSession | None,
        *,
        settling: bool = False,
        participants_on_file: bool = True,
    ) -> Callable[[LedgerTransaction], None]:
        """What to keep in the ledger that SecureVideo won't tell us later: the session and
        packet ids.  Records and fingerprints are made here, outside the transaction.

        ``settling``: the appointment is marked synced in the same transaction, which records
        the session too."""
        now = self.clock.now()
        aid = appt.appointment_id
        match op:
            case CreateSession() if result is not None:
                ids = {p.external_id: p.participation_id for p in result.guests}
                people = [
                    ParticipantRecord(
                        appointment_id=aid,
                        external_id=g.external_id,
                        session_id=result.session_id,
                        participation_id=ids.get(g.external_id),
                        packet_id=g.packet_id,
                        updated_at=now,
                    )
                    for g in op.guests
                ]

                def created(tx: LedgerTransaction) -> None:
                    if not settling:
                        tx.appointments.set_session(
                            aid,
                            session_id=result.session_id,
                            host_external_id=op.host_external_id,
                            now=now,
                        )
                    tx.participants.replace(aid, people, clear=participants_on_file)

                return created
            case AddParticipant() | UpdateParticipant() if result is not None:
                external_id = op.guest.external_id
                pid = next(
                    (p.participation_id for p in result.guests if p.external_id == external_id),
                    None,
                )

                def remembered(tx: LedgerTransaction) -> None:
                    tx.participants.upsert(
                        aid,
                        external_id,
                        session_id=result.session_id,
                        participation_id=pid,
                        packet_id=op.guest.packet_id,
                        now=now,
                    )

                return remembered
            case RemoveParticipant():
                return lambda tx: tx.participants.delete(aid, op.external_id)
            case CancelSession():

                def cancelled(tx: LedgerTransaction) -> None:
                    if tx.appointments.forget_session(aid, op.session_id, now=now):
                        tx.participants.delete_all_of(aid)

                return cancelled
            case _:
                return _nothing

    def _read_fresh(
        self, hosts: Sequence[str], external_session_id: str, report: PassReport
    ) -> list[RemoteSession]:
        out: list[RemoteSession] = []
        for host in hosts:
            report.reads += 1
            out += [
                replace(s, host_external_id=host)
                for s in self.gateway.list_host_sessions(host)
                if s.external_session_id == external_session_id
            ]
        return out

    # --- outcomes ---------------------------------------------------------------------------

    def _back_off(
        self, appt: Appointment, attempts: int, exc: TemporaryError, deadline: float
    ) -> Outcome | None:
        """Wait and return None to try again in this pass, or an outcome to stop here."""
        opts = self.options
        reason = f"appointment {appt.appointment_id}: {redact(exc.message, appt)}"
        if opts.retry.exhausted(attempts):
            return self._park_appt(
                appt, f"{reason} (gave up after {attempts} attempts)", attempts=attempts
            )
        delay = opts.retry.delay(attempts, retry_after=exc.retry_after)
        if self.clock.monotonic() + delay > deadline or self.stop.is_set():
            with self.ledger.begin() as tx:
                tx.appointments.schedule_retry(
                    appt.appointment_id,
                    attempts=attempts,
                    next_attempt_at=self.clock.now() + timedelta(seconds=delay),
                    reason=reason,
                    now=self.clock.now(),
                    event_id=appt.event_id,
                )
            log.warning(
                "appointment_deferred",
                appointment_id=appt.appointment_id,
                attempts=attempts,
                reason=reason,
                delay_seconds=round(delay, 3),
            )
            return Outcome.RETRY
        # The wait outlives a shutdown: the next start must not send before SecureVideo's
        # Retry-After has passed (it did, right away, before the graceful-stop scenario).
        until = self.clock.now() + timedelta(seconds=delay)
        # stop.wait, not sleep: a shutdown request ends the wait at once.
        if self.stop.wait(delay):
            with self.ledger.begin() as tx:
                tx.appointments.schedule_retry(
                    appt.appointment_id,
                    attempts=attempts,
                    next_attempt_at=until,
                    reason=reason,
                    now=self.clock.now(),
                    event_id=appt.event_id,
                )
            return Outcome.INTERRUPTED
        return None

    def _converged(
        self,
        appt: Appointment,
        observed: Sequence[RemoteSession],
        *,
        applied: bool,
        unresolved: bool = True,
    ) -> Outcome:
        mark = self._synced_writer(appt, observed, unresolved=unresolved)
        with self.ledger.begin() as tx:
            mark(tx)
        return Outcome.SYNCED if applied else Outcome.UNCHANGED

    def _synced_writer(
        self,
        appt: Appointment,
        observed: Sequence[RemoteSession],
        *,
        unresolved: bool,
    ) -> Callable[[LedgerTransaction], None]:
        """Marks the appointment synced; what it writes is worked out here, before the ledger
        is taken, so that the transaction (and SQLite's one writer) is held for the writes only.
        """
        live = [
            s
            for s in observed
            if not s.is_cancelled and s.host_external_id == appt.provider_external_id
        ]
        session = live[0] if live and appt.presence is Presence.LIVE else None
        aid = appt.appointment_id

        def write(tx: LedgerTransaction) -> None:
            now = self.clock.now()
            tx.appointments.mark_synced(
                aid,
                event_id=appt.event_id,
                session_id=session.session_id if session else None,
                host_external_id=session.host_external_id if session else None,
                now=now,
                # what the outcome collector and the billing report select by
                schedule_ts=session.schedule_ts if session else None,
            )
            if unresolved:
                # Calls whose answer was lost are settled now that SecureVideo was read and
                # matches.
                tx.operations.resolve_open(aid, now)

        return write

    def _skip(self, appt: Appointment, reason: str) -> Outcome:
        with self.ledger.begin() as tx:
            tx.appointments.mark_skipped(
                appt.appointment_id, event_id=appt.event_id, reason=reason, now=self.clock.now()
            )
        log.info("appointment_skipped", appointment_id=appt.appointment_id, reason=reason)
        return Outcome.SKIPPED

    def _park_appt(
        self,
        appt: Appointment,
        reason: str,
        *,
        field_name: str | None = None,
        attempts: int | None = None,
    ) -> Outcome:
        with self.ledger.begin() as tx:
            tx.appointments.park(
                appt.appointment_id,
                reason=reason,
                attempts=attempts,
                now=self.clock.now(),
                event_id=appt.event_id,
            )
        log.warning(
            "appointment_parked",
            appointment_id=appt.appointment_id,
            reason=reason,
            field=field_name,
        )
        return Outcome.PARKED

    def _park(self, record: AppointmentRecord, reason: str, *, field_name: str) -> None:
        with self.ledger.begin() as tx:
            tx.appointments.park(
                record.appointment_id,
                reason=reason,
                now=self.clock.now(),
                event_id=record.last_event_id,
            )
        log.warning(
            "appointment_parked",
            appointment_id=record.appointment_id,
            reason=reason,
            field=field_name,
            event_id=record.last_event_id,
        )

    def _auth(self, exc: AuthenticationError, report: PassReport) -> Outcome:
        if not self._auth_failed.is_set():
            self._auth_failed.set()
            report.auth_error = str(exc)
            log.error("credentials_rejected", error=str(exc))
        return Outcome.INTERRUPTED

    # --- dry run ----------------------------------------------------------------------------

    def preview(self) -> list[Preview]:
        """What a pass would do, without a mutating call or a ledger write (``syncd plan``)."""
        opts = self.options
        with self.ledger.begin() as tx:
            cursor = tx.cursor.get()
        position = max(0, cursor - opts.reread_window)
        wanted: dict[str, int] = {}
        while True:
            refs = self.outbox.refs_after(position, opts.batch_size)
            for ref in refs:
                key = _ledger_key(ref)
                wanted[key] = max(ref.event_id, wanted.get(key, 0))
            if len(refs) < opts.batch_size:
                break
            position = refs[-1].event_id
        previews: list[Preview] = []
        report = PassReport(pass_id="dry-run")  # noqa: S106 - an id, not a password
        hosts = _HostSessions(self.gateway, report, self._submit)
        with self.ledger.begin() as tx:
            records = tx.appointments.get_many(list(wanted))
            newer = {
                a: e for a, e in wanted.items() if a not in records or e > records[a].last_event_id
            }
            due = {
                r.appointment_id: r.last_event_id
                for r in tx.appointments.due(self.clock.now(), 100_000)
            }
            participants = tx.participants.of_appointments(list(newer | due))
        todo = {**due, **newer}
        rows = {r.event_id: r for r in self.outbox.rows(list(todo.values()))}
        parsed: list[tuple[Appointment, AppointmentRecord | None]] = []
        for aid, event_id in sorted(todo.items()):
            row = rows.get(event_id)
            if row is None:
                previews.append(Preview(aid, problem=f"outbox row for event {event_id} is gone"))
                continue
            try:
                appt = parse_row(
                    row.values,
                    zone=opts.zone,
                    windows_zone=opts.windows_zone,
                    session_id_prefix=opts.session_id_prefix,
                )
            except InvalidRowError as err:
                previews.append(Preview(aid, problem=str(err)))
                continue
            parsed.append((appt, records.get(aid)))
        needed = {h for a, r in parsed for h in _hosts_of(a, r.host_external_id if r else None)}
        hosts.request(needed)
        for appt, record in parsed:
            host_list = _hosts_of(appt, record.host_external_id if record else None)
            try:
                observed = hosts.sessions(host_list, appt.external_session_id)
            except (TemporaryError, PermanentError, AuthenticationError) as exc:
                previews.append(Preview(appt.appointment_id, problem=redact(str(exc), appt)))
                continue
            observed = _with_known_packets(observed, participants.get(appt.appointment_id, {}))
            ops = plan(
                appt,
                observed,
                now=self.clock.now(),
                managed_session_id=record.session_id if record else None,
            )
            previews.append(Preview(appt.appointment_id, tuple(describe(op) for op in ops)))
        return previews


# --- helpers --------------------------------------------------------------------------------


def _always() -> bool:
    return True


def _nothing(_repo: LedgerTransaction) -> None:
    pass


def _results(futures: Sequence[Future[R]]) -> list[R]:
    """Every future's result once all are done; the first failure is raised after that."""
    wait(futures)
    return [f.result() for f in futures]


def _ledger_key(ref: OutboxRef) -> str:
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


def _hosts_of(appt: Appointment, recorded_host: str | None) -> list[str]:
    """The hosts whose lists can hold this appointment's session: today's, and the one before."""
    hosts = [appt.provider_external_id]
    if recorded_host and recorded_host != appt.provider_external_id:
        hosts.append(recorded_host)
    return hosts


def _with_known_packets(
    observed: list[RemoteSession], known: dict[str, ParticipantRecord]
) -> list[RemoteSession]:
    """Fill in the PacketIds SecureVideo does not report, from what syncd last sent."""
    if not known:
        return observed
    out = []
    for s in observed:
        participants = tuple(
            replace(p, packet_id=k.packet_id, packet_known=True)
            if p.external_id
            and (k := known.get(p.external_id)) is not None
            and k.participation_id == p.participation_id
            and not p.packet_known
            else p
            for p in s.participants
        )
        out.append(replace(s, participants=participants))
    return out


def _after(
    view: list[RemoteSession], op: Operation, result: RemoteSession | None
) -> list[RemoteSession]:
    """The observed sessions as they stand after ``op`` succeeded."""
    sid = None if isinstance(op, CreateSession) else getattr(op, "session_id", None)
    if isinstance(op, CreateSession):
        host = op.host_external_id
    else:
        host = next((s.host_external_id for s in view if s.session_id == sid), "")
    out = list(view)
    if result is not None:
        result = replace(result, host_external_id=host)
        if isinstance(op, AddParticipant | UpdateParticipant):
            result = replace(
                result,
                participants=tuple(
                    replace(p, packet_id=op.guest.packet_id, packet_known=True)
                    if p.external_id == op.guest.external_id
                    else p
                    for p in result.participants
                ),
            )
        if isinstance(op, CreateSession):
            result = replace(
                result,
                participants=(
                    result.participants[0],
                    *(
                        replace(p, packet_id=g.packet_id, packet_known=True)
                        if (g := _guest_by_id(op, p.external_id)) is not None
                        else p
                        for p in result.guests
                    ),
                ),
            )
        out = [s for s in out if s.session_id != result.session_id] + [result]
    elif isinstance(op, CancelSession):
        out = [replace(s, schedule_type="Cancelled") if s.session_id == sid else s for s in out]
    elif isinstance(op, RemoveParticipant):
        out = [
            replace(
                s,
                participants=tuple(
                    p for p in s.participants if p.participation_id != op.participation_id
                ),
            )
            if s.session_id == sid
            else s
            for s in out
        ]
    return out


def _guest_by_id(op: CreateSession, external_id: str | None) -> Guest | None:
    return next((g for g in op.guests if g.external_id == external_id), None)


def _created_at(value: object, zone: ZoneInfo) -> datetime | None:
    """The outbox row's ``created_at`` as naive UTC, or None when absent or unreadable."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC).replace(tzinfo=None)
