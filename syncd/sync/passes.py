"""One sync pass: ingest the outbox into the ledger, then reconcile every due appointment.

The imperative shell around the pure planner.  The pieces, each in its module: ``ingest`` notes
newer outbox rows in the ledger, ``load`` parses the due appointments' rows, ``queue`` feeds them
to the workers, ``reconcile`` decides one appointment's calls, ``execute`` makes each call as
intent → call → result, ``book`` writes where each appointment ended up.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

import structlog

from syncd.core.domain import Appointment, Presence
from syncd.core.drift import DriftPolicy
from syncd.core.errors import AuthenticationError
from syncd.core.fingerprint import Fingerprints
from syncd.core.planner import PAST_VISIT_GRACE
from syncd.core.retry import RetryPolicy
from syncd.core.rows import WindowsZone
from syncd.core.settle import settle_until
from syncd.ports.clock import Clock, SystemClock
from syncd.ports.ledger import (
    AppointmentRecord,
    DriftRecord,
    Ledger,
    OutboxRewind,
    ParticipantRecord,
)
from syncd.ports.outbox import OutboxRow, OutboxSource
from syncd.ports.securevideo import SessionGateway
from syncd.sync.account import AccountSessions
from syncd.sync.applied import applied_of
from syncd.sync.book import AppointmentBook
from syncd.sync.drift import DriftWatch
from syncd.sync.execute import Checkpoint, Executor, ledger_fingerprints, no_checkpoint
from syncd.sync.host_change import HostChange, HostChangeMode
from syncd.sync.hosts import HostSessions, hosts_of
from syncd.sync.ingest import Ingest
from syncd.sync.load import RowReading, Work, load
from syncd.sync.preview import preview
from syncd.sync.queue import ProgressLog, WorkQueue, results
from syncd.sync.reconcile import PassScope, Reconciler
from syncd.sync.report import Disposition, PassProgress, PassReport, Preview

log = structlog.get_logger("syncd.engine")


@dataclass(frozen=True, slots=True)
class SyncOptions:
    #: SecureVideo requests in flight at once (the gateway bounds them); twice as many
    #: appointments are in progress, so that one's ledger writes overlap another's call
    concurrency: int = 4
    batch_size: int = 500
    reread_window: int = 1000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pass_retry_budget_seconds: float = 120.0
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    session_id_prefix: str = ""
    windows_zone: WindowsZone = field(kw_only=True)
    #: A pass that drains a backlog logs ``backlog_progress`` at most this often.
    progress_log_interval_seconds: float = 10.0
    #: no session is created for a visit that started longer ago than this
    past_visit_grace: timedelta = PAST_VISIT_GRACE
    #: a provider change: "auto" (move, else cancel + create), "move" or "recreate"
    host_change: HostChangeMode = "auto"
    #: an appointment whose newest outbox row is younger than this waits (0: never)
    settle_seconds: int = 0
    #: ... unless it starts within this
    settle_bypass: timedelta = timedelta(minutes=120)
    #: what is done about what staff changed in SecureVideo (``SYNCD_SYNC__DRIFT``)
    drift: DriftPolicy = DriftPolicy.REPORT

    @property
    def reading(self) -> RowReading:
        return RowReading(self.zone, self.windows_zone, self.session_id_prefix)


def _always() -> bool:
    return True


class Synchronizer:
    def __init__(
        self,
        *,
        outbox: OutboxSource,
        ledger: Ledger,
        gateway: SessionGateway,
        options: SyncOptions,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        checkpoint: Checkpoint = no_checkpoint,
        fingerprints: Fingerprints | None = None,
        wait: Callable[[float], bool] | None = None,
        outage: Callable[[], bool] | None = None,
        account: AccountSessions | None = None,
    ) -> None:
        """``fingerprints``: how participants are shown (plan, logs, the journal), by default the
        ledger's own; ``wait``: how a back-off is waited out (default ``stop.wait``); ``outage``:
        whether SecureVideo is known to be down (see ``Reconciler``); ``account``: the account's
        sessions, read once per drift interval: given, each pass ends by looking for drift."""
        self.outbox = outbox
        self.ledger = ledger
        self.gateway = gateway
        self.options = options
        self.clock = clock or SystemClock()
        self.stop = stop or threading.Event()
        self._queue = WorkQueue(2 * options.concurrency)
        self._ingest = Ingest(
            outbox,
            ledger,
            self.clock,
            batch_size=options.batch_size,
            reread_window=options.reread_window,
        )
        self.fingerprints = fingerprints or ledger_fingerprints(ledger)
        self._book = AppointmentBook(ledger, self.clock)
        self.host_change = HostChange(options.host_change)
        self._reconciler = Reconciler(
            book=self._book,
            executor=Executor(
                ledger, gateway, self.clock, checkpoint=checkpoint, fingerprints=self.fingerprints
            ),
            clock=self.clock,
            retry=options.retry,
            stop=self.stop,
            retry_budget_seconds=options.pass_retry_budget_seconds,
            fingerprints=self.fingerprints,
            past_visit_grace=options.past_visit_grace,
            wait=wait,
            outage=outage,
            host_change=self.host_change,
            restore_drift=options.drift is DriftPolicy.RESTORE,
        )
        self._progress = ProgressLog(self.clock, options.progress_log_interval_seconds)
        #: shared with the outcome collector, so the two cost one read per interval
        self.account = account
        self._drift = None if account is None else self._drift_watch(account)

    def _drift_watch(self, account: AccountSessions) -> DriftWatch:
        return DriftWatch(
            ledger=self.ledger,
            account=account,
            clock=self.clock,
            fingerprints=self.fingerprints,
            policy=self.options.drift,
        )

    @property
    def progress(self) -> PassProgress | None:
        """The running (or last) pass's progress, for the health endpoint."""
        return self._progress.current

    def close(self) -> None:
        self._queue.close()

    def run_pass(self, *, may_act: Callable[[], bool] | None = None) -> PassReport:
        """One pass.  ``may_act`` is asked before every mutating call (the daemon's leader lease):
        once it says no, the pass stops as if interrupted, leaving the rest to the lease holder."""
        report = PassReport(pass_id=uuid.uuid4().hex[:12])
        started = self.clock.monotonic()
        allowed = may_act or _always
        scope = PassScope(
            report=report,
            hosts=HostSessions(self.gateway, self._queue.submit),
            halted=lambda: self.stop.is_set() or not allowed(),
        )
        with structlog.contextvars.bound_contextvars(pass_id=report.pass_id):
            progress = self._progress.start(report.pass_id)
            try:
                report.ingested = self._ingest.run()
                report.rewound = self._ingest.rewound
                self._apply_due(scope)
                if self._drift is not None and not scope.stopped():
                    self._look_for_drift(scope)
            finally:
                progress.finished = True
                report.reads = scope.hosts.reads
            report.interrupted = report.interrupted or scope.halted()
            report.rewind = self._settle_rewind(report)
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

    def _look_for_drift(self, scope: PassScope) -> None:
        assert self._drift is not None
        try:
            scope.report.drift = self._drift.check()
        except AuthenticationError as exc:
            scope.reject_credentials(exc)

    def _settle_rewind(self, report: PassReport) -> OutboxRewind | None:
        """The last rewind, marked applied once a whole pass after it leaves nothing pending:
        until then ``status`` and ``/healthz`` say the outbox went back."""
        rewind = self._ingest.rewind
        if rewind is None or rewind.applied_at is not None or report.interrupted:
            return rewind
        with self.ledger.begin() as tx:
            if tx.appointments.pending_count() == 0 and tx.cursor.rewind_applied(self.clock.now()):
                rewind = tx.cursor.position()[1]
        self._ingest.rewind = rewind
        return rewind

    def _apply_due(self, scope: PassScope) -> None:
        """Reconcile every due appointment.  Two batches in the pool at most: the next one is
        read, parsed and queued while the workers still have this one, and memory stays bounded
        by two batches."""
        report = scope.report
        queued: deque[list[Future[Disposition]]] = deque()
        try:
            for index, batch in enumerate(self._due_batches()):
                if scope.stopped():
                    report.interrupted = scope.halted()
                    break
                if index == 0:
                    # One count per pass, and only when something is due: idle passes stay free.
                    with self.ledger.begin() as tx:
                        self._progress.begin_apply(tx.appointments.pending_count())
                queued.append(self._start_batch(batch, scope))
                while len(queued) > 1:
                    report.outcomes.update(d.value for d in results(queued.popleft()))
            while queued:
                report.outcomes.update(d.value for d in results(queued.popleft()))
        finally:
            # Every worker finishes before a failure (a database outage) leaves the pass: a
            # worker still running after the pass ended could race the next pass on the same
            # appointment.
            wait([f for futures in queued for f in futures])
            scope.hosts.wait()

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
        self, batch: list[AppointmentRecord], scope: PassScope
    ) -> list[Future[Disposition]]:
        """Load and parse a batch, read the hosts it needs, and queue its appointments."""
        work = self._load(batch, scope.report)
        self._progress.advance(len(batch) - len(work))  # the bad rows are done too
        if not work:
            return []
        scope.hosts.request(
            h
            for record, appt in work
            if appt.presence is not Presence.LEAVE_ALONE
            for h in hosts_of(appt, record.host_external_id)
        )
        ids = [appt.appointment_id for _, appt in work]
        with self.ledger.begin() as tx:
            known = tx.participants.of_appointments(ids)
            unresolved = tx.operations.with_open(ids)
            drift = tx.drift.of_appointments(ids)
        return [
            self._queue.submit(
                partial(self._reconcile, record, appt, known, scope, unresolved, drift)
            )
            for record, appt in work
        ]

    def _reconcile(
        self,
        record: AppointmentRecord,
        appt: Appointment,
        known: dict[str, dict[str, ParticipantRecord]],
        scope: PassScope,
        unresolved: set[str],
        drift: dict[str, list[DriftRecord]],
    ) -> Disposition:
        mine = known.get(appt.appointment_id, {})
        try:
            return self._reconciler.reconcile(
                record,
                appt,
                applied_of(record, mine),
                scope,
                unresolved=appt.appointment_id in unresolved,
                drift=drift.get(appt.appointment_id, ()),
            )
        finally:
            self._progress.advance(1)

    def _load(self, batch: list[AppointmentRecord], report: PassReport) -> list[Work]:
        """Parse the batch's rows; park the bad ones."""
        now = self.clock.now()

        digests: dict[int, str] = {}
        written: dict[int, datetime] = {}

        def seen(row: OutboxRow) -> None:
            digests[row.event_id] = self._ingest.digest(row)
            created = self.options.reading.created_at(row)
            if created is not None:
                written[row.event_id] = created
                report.saw_lag((now - created).total_seconds())

        work, bad = load(batch, self.outbox, self.options.reading, on_row=seen)
        # What a rewind's re-read compares with: the row each settled state was decided on.
        changed = {
            r.appointment_id: (r.last_event_id, digests[r.last_event_id])
            for r, _ in work
            if r.last_digest != digests[r.last_event_id]
        }
        if changed:
            with self.ledger.begin() as tx:
                tx.appointments.note_digests(changed)
        for b in bad:
            self._book.parked(
                b.record.appointment_id,
                b.record.last_event_id,
                b.reason,
                field_name=b.field,
            )
            report.count(Disposition.PARKED)
        return self._settled(work, written, report)

    def _settled(
        self, work: list[Work], written: dict[int, datetime], report: PassReport
    ) -> list[Work]:
        """The work less the appointments inside the settle window, which wait till it ends."""
        window = timedelta(seconds=self.options.settle_seconds)
        if window <= timedelta(0):
            return work
        now = self.clock.now()
        ready: list[Work] = []
        for record, appt in work:
            until = settle_until(
                written.get(record.last_event_id),
                appt.starts_at,
                now,
                window=window,
                bypass=self.options.settle_bypass,
            )
            if until is None:
                ready.append((record, appt))
                continue
            reason = (
                f"appointment {appt.appointment_id}: settling: its newest outbox row is under "
                f"{self.options.settle_seconds} s old"
            )
            self._book.deferred(appt, record.attempts, until, reason)
            report.count(Disposition.SETTLING)
        return ready

    def preview(self) -> list[Preview]:
        """What a pass would do, without a mutating call or a ledger write (``syncd plan``)."""
        return preview(
            outbox=self.outbox,
            ledger=self.ledger,
            hosts=HostSessions(self.gateway, self._queue.submit),
            clock=self.clock,
            reading=self.options.reading,
            batch_size=self.options.batch_size,
            reread_window=self.options.reread_window,
            fingerprints=self.fingerprints,
            past_grace=self.options.past_visit_grace,
            move_host=self.host_change.may_move,
            restore=self.options.drift is DriftPolicy.RESTORE,
        )
