"""Visit outcomes: what only SecureVideo knows about a visit, brought back into the ledger.

A job of its own, beside the sync pass (which keeps its promise that a pass with nothing to do
makes no call).  Each collection:

1. asks the ledger for the managed sessions whose outcome is not final yet;
2. reads ``GET /session/0?externalId=host`` once per host of those still listed (scheduled within
   the last :data:`LISTED_FOR`, or later), matches sessions by SessionId and records each managed
   participant's RSVP and first connection and the session's billing values — writing a row only
   when a value changed, so ``changed_at`` means something;
3. for sessions that have left the active list, asks ``GET /history`` once, for the dates around
   them, and records their final billing values.  History JSON has no participants: RSVPs and
   connections stay as last seen.

Only ids, codes and timestamps are kept: never a name, an e-mail address or a phone number.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Final, TypeVar

import structlog

from syncd.core.domain import RemoteSession
from syncd.core.errors import AuthenticationError, PermanentError, TemporaryError
from syncd.ports.clock import Clock, SystemClock
from syncd.ports.ledger import (
    Ledger,
    OutcomeTarget,
    ParticipantOutcomeRecord,
    SessionOutcomeRecord,
)
from syncd.ports.securevideo import HistoryRecord, OutcomeGateway
from syncd.sync.account import AccountSessions

log = structlog.get_logger("syncd.outcomes")

T = TypeVar("T")

#: ``GET /session`` lists a session for a day after its time, until the nightly deactivation that
#: follows: after this long it is certainly gone, and only ``GET /history`` knows it.
LISTED_FOR: Final = timedelta(days=2)
#: A session missing from its host's list this long after its time has aged out (rather than being
#: briefly invisible), so its final values are asked of ``GET /history``.
AGED_OUT_AFTER: Final = timedelta(days=1)
#: History is filtered by BillableTs, which falls between someone joining early and deactivation.
HISTORY_BEFORE: Final = timedelta(days=1)
HISTORY_AFTER: Final = timedelta(days=2)
#: One history request covers sessions at most this far apart; a backlog takes several collections.
HISTORY_SPAN: Final = timedelta(days=31)
#: Width of the code columns (RSVP, ScheduleType, BillableStatusCd); longer values are cut.
CODE_LIMIT: Final = 16
#: Width of the participant id column (the ledger's participant table has the same).
EXTERNAL_ID_LIMIT: Final = 64


@dataclass(slots=True)
class CollectionReport:
    targets: int = 0
    hosts_read: int = 0
    #: reads of the whole account's list this collection made (it shares the drift read)
    account_reads: int = 0
    host_failures: int = 0
    sessions_changed: int = 0
    participants_changed: int = 0
    finalized: int = 0
    history_reads: int = 0
    history_failed: bool = False
    rejected_records: int = 0
    interrupted: bool = False
    duration_ms: int = 0

    @property
    def clean(self) -> bool:
        """Every host and the history could be read (``syncd outcomes`` exits 0)."""
        return not (self.host_failures or self.history_failed or self.interrupted)

    def counts(self) -> dict[str, int]:
        return {
            "targets": self.targets,
            "host_failures": self.host_failures,
            "sessions_changed": self.sessions_changed,
            "participants_changed": self.participants_changed,
            "finalized": self.finalized,
            "history_reads": self.history_reads,
            "rejected_records": self.rejected_records,
        }


# --- the functional core ------------------------------------------------------------------------


def _code(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()[:CODE_LIMIT]


def _kept(new: T | None, old: T | None) -> T | None:
    # A value SecureVideo stops reporting is not erased: DurationMinutes, for one, is null again
    # while the host reconnects, and BillableTs never changes once set.
    return old if new is None else new


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def _session_values(r: SessionOutcomeRecord) -> tuple[object, ...]:
    return (
        r.session_id,
        r.host_external_id,
        r.schedule_ts,
        r.schedule_type,
        r.billable_ts,
        r.duration_minutes,
        r.wait_time,
        r.billable_status_cd,
    )


def observe_session(
    previous: SessionOutcomeRecord | None,
    appointment_id: str,
    remote: RemoteSession,
    now: datetime,
) -> SessionOutcomeRecord | None:
    """The appointment's session row after seeing ``remote`` listed; None when nothing changed.

    A different session than the one recorded (a rebooked or moved appointment) starts afresh.
    """
    base = previous if previous is not None and previous.session_id == remote.session_id else None
    row = SessionOutcomeRecord(
        appointment_id=appointment_id,
        session_id=remote.session_id,
        host_external_id=remote.host_external_id or (base.host_external_id if base else None),
        schedule_ts=_kept(remote.schedule_ts, base.schedule_ts if base else None),
        schedule_type=_kept(_code(remote.schedule_type), base.schedule_type if base else None),
        billable_ts=_kept(remote.billable_ts, base.billable_ts if base else None),
        duration_minutes=_kept(remote.duration_minutes, base.duration_minutes if base else None),
        wait_time=_kept(remote.wait_time, base.wait_time if base else None),
        billable_status_cd=_kept(
            _code(remote.billable_status_cd), base.billable_status_cd if base else None
        ),
        final_at=base.final_at if base else None,
        changed_at=now,
    )
    if base is not None and _session_values(row) == _session_values(base):
        return None
    return row


def observe_participants(
    previous: Mapping[str, ParticipantOutcomeRecord],
    appointment_id: str,
    remote: RemoteSession,
    now: datetime,
) -> tuple[list[ParticipantOutcomeRecord], list[str]]:
    """Rows to write (changed or new) and participant ids to delete (no longer in the session).

    Managed participants are the guests with a ParticipantExternalId: the host and guests staff
    added by hand (an interpreter) are not the EHR's to track.
    """
    writes: list[ParticipantOutcomeRecord] = []
    seen: set[str] = set()
    for p in remote.guests:
        external_id = (p.external_id or "").strip()
        if not external_id or len(external_id) > EXTERNAL_ID_LIMIT or external_id in seen:
            continue
        seen.add(external_id)
        old = previous.get(external_id)
        same_session = old is not None and old.session_id == remote.session_id
        connection = p.connection_ts
        if old is not None and same_session:
            connection = _earliest(old.connection_ts, connection)
        row = ParticipantOutcomeRecord(
            appointment_id=appointment_id,
            participant_external_id=external_id,
            session_id=remote.session_id,
            participation_id=p.participation_id,
            rsvp=_code(p.rsvp),
            connection_ts=connection,
            changed_at=now,
        )
        if old is not None and (
            old.session_id,
            old.participation_id,
            old.rsvp,
            old.connection_ts,
        ) == (row.session_id, row.participation_id, row.rsvp, row.connection_ts):
            continue
        writes.append(row)
    return writes, sorted(set(previous) - seen)


def settle(
    previous: SessionOutcomeRecord | None,
    target: OutcomeTarget,
    record: HistoryRecord | None,
    now: datetime,
) -> SessionOutcomeRecord:
    """The final session row once the session left the active list.

    ``record`` is its history record, or None when ``GET /history`` does not list it: then it never
    became billable, and what was last seen stands.  Fields History leaves out (WaitTime before
    November 2020, say) keep what the active list showed.
    """
    base = previous if previous is not None and previous.session_id == target.session_id else None
    h = record
    row = SessionOutcomeRecord(
        appointment_id=target.appointment_id,
        session_id=target.session_id,
        host_external_id=target.host_external_id or (base.host_external_id if base else None),
        schedule_ts=_kept(h.schedule_ts if h else None, base.schedule_ts if base else None)
        or target.schedule_ts,
        schedule_type=_kept(
            _code(h.schedule_type) if h else None, base.schedule_type if base else None
        ),
        billable_ts=_kept(h.billable_ts if h else None, base.billable_ts if base else None),
        duration_minutes=_kept(
            h.duration_minutes if h else None, base.duration_minutes if base else None
        ),
        wait_time=_kept(h.wait_time if h else None, base.wait_time if base else None),
        billable_status_cd=_kept(
            _code(h.billable_status_cd) if h else None,
            base.billable_status_cd if base else None,
        ),
        final_at=now,
        changed_at=now,
    )
    if base is not None and _session_values(row) == _session_values(base):
        # Settling is not a change of values: changed_at keeps saying when they last changed.
        row = replace(row, changed_at=base.changed_at)
    return row


def history_window(
    targets: Iterable[OutcomeTarget], known_billable: Iterable[datetime]
) -> tuple[date, date]:
    """The startDt/endDt (inclusive dates, UTC) whose history holds these sessions' records."""
    times = [t.schedule_ts for t in targets if t.schedule_ts is not None]
    times += list(known_billable)
    if not times:
        raise ValueError("no dates to ask history for")
    start = (min(times) - HISTORY_BEFORE).date()
    end = (max(times) + HISTORY_AFTER).date()
    return start, end


# --- the imperative shell -----------------------------------------------------------------------


class OutcomeCollector:
    """Collects visit outcomes from SecureVideo into the ledger; one :meth:`collect` at a time."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        gateway: OutcomeGateway,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        account: AccountSessions | None = None,
    ) -> None:
        """``account``: the account's sessions as drift detection reads them, once per drift
        interval; given, outcomes use that read and make no host read of their own."""
        self.ledger = ledger
        self.gateway = gateway
        self.clock = clock or SystemClock()
        self.stop = stop or threading.Event()
        self.account = account

    def collect(self) -> CollectionReport:
        """One collection.  Raises ``AuthenticationError`` when SecureVideo refuses the
        credentials; a host or history read that fails otherwise is logged and left for the next
        collection."""
        report = CollectionReport()
        started = self.clock.monotonic()
        now = self.clock.now()
        with self.ledger.begin() as tx:
            targets = tx.visits.targets()
        report.targets = len(targets)
        if not targets:
            return report
        ids = [t.appointment_id for t in targets]
        with self.ledger.begin() as tx:
            sessions = tx.visits.sessions(ids)
            participants = tx.visits.participants(ids)

        listed_since = now - LISTED_FOR
        listed = [t for t in targets if t.schedule_ts is None or t.schedule_ts >= listed_since]
        aged = [t for t in targets if t.schedule_ts is not None and t.schedule_ts < listed_since]
        hosts = sorted({t.host_external_id for t in listed})
        lists = (
            self._read_hosts(hosts, report) if self.account is None else self._shared(hosts, report)
        )

        for t in listed:
            if self.stop.is_set():
                report.interrupted = True
                break
            host_list = lists.get(t.host_external_id)
            if host_list is None:
                continue  # that host could not be read: try again next time
            remote = host_list.get(t.session_id)
            if remote is not None:
                # The account-wide list does not say which host list a session is on.
                remote = replace(remote, host_external_id=t.host_external_id)
                self._observe(t, remote, sessions.get(t.appointment_id), participants, report)
            elif t.schedule_ts is None:
                # Settled before syncd recorded times and never seen since: its date is unknown,
                # so history cannot be asked for it.  Mark it done rather than read it forever.
                self._write_final(settle(sessions.get(t.appointment_id), t, None, now), report)
            elif t.schedule_ts < now - AGED_OUT_AFTER:
                aged.append(t)

        if aged and not self.stop.is_set():
            self._settle_from_history(aged, sessions, report, now)
        report.duration_ms = int((self.clock.monotonic() - started) * 1000)
        changed = report.sessions_changed + report.participants_changed + report.finalized
        # Quiet when nothing changed: a line every few minutes saying so would be noise.
        if changed or not report.clean or report.rejected_records:
            log.info(
                "outcomes_collected",
                counts=report.counts(),
                reads=report.hosts_read + report.account_reads + report.history_reads,
                duration_ms=report.duration_ms,
            )
        return report

    def _shared(
        self, hosts: list[str], report: CollectionReport
    ) -> dict[str, Mapping[int, RemoteSession]]:
        """Every host's sessions from the interval's account read; none when it failed (then
        the next interval's read is the next try)."""
        assert self.account is not None
        before = self.account.reads
        try:
            snapshot = self.account.current()
        except AuthenticationError:
            raise
        except (TemporaryError, PermanentError):
            report.host_failures += 1  # drift detection logs the failed read (drift_unread)
            return {}
        finally:
            report.account_reads += self.account.reads - before
        return dict.fromkeys(hosts, snapshot.by_id)

    def _read_hosts(
        self, hosts: list[str], report: CollectionReport
    ) -> dict[str, Mapping[int, RemoteSession]]:
        lists: dict[str, Mapping[int, RemoteSession]] = {}
        for host in hosts:
            if self.stop.is_set():
                report.interrupted = True
                break
            try:
                found = self.gateway.list_host_sessions(host)
            except AuthenticationError:
                raise
            except (TemporaryError, PermanentError) as exc:
                report.host_failures += 1
                log.warning("outcomes_host_unread", provider_external_id=host, error=str(exc))
                continue
            report.hosts_read += 1
            lists[host] = {s.session_id: s for s in found}
        return lists

    def _observe(
        self,
        target: OutcomeTarget,
        remote: RemoteSession,
        previous: SessionOutcomeRecord | None,
        participants: Mapping[str, Mapping[str, ParticipantOutcomeRecord]],
        report: CollectionReport,
    ) -> None:
        now = self.clock.now()
        aid = target.appointment_id
        row = observe_session(previous, aid, remote, now)
        writes, gone = observe_participants(participants.get(aid, {}), aid, remote, now)
        if row is None and not writes and not gone:
            return
        with self.ledger.begin() as tx:
            if row is not None:
                tx.visits.put_session(row)
            for p in writes:
                tx.visits.put_participant(p)
            if gone:
                tx.visits.delete_participants(aid, gone)
        report.sessions_changed += row is not None
        report.participants_changed += len(writes) + len(gone)

    def _settle_from_history(
        self,
        aged: list[OutcomeTarget],
        sessions: Mapping[str, SessionOutcomeRecord],
        report: CollectionReport,
        now: datetime,
    ) -> None:
        aged.sort(key=lambda t: (t.schedule_ts or now, t.appointment_id))
        first = aged[0].schedule_ts or now
        batch = [t for t in aged if (t.schedule_ts or now) - first <= HISTORY_SPAN]
        billable = [
            r.billable_ts
            for t in batch
            if (r := sessions.get(t.appointment_id)) is not None
            and r.session_id == t.session_id
            and r.billable_ts is not None
        ]
        start, end = history_window(batch, billable)
        try:
            page = self.gateway.history_page(start=start, end=end)
        except AuthenticationError:
            raise
        except (TemporaryError, PermanentError) as exc:
            report.history_failed = True
            log.warning("outcomes_history_unread", period=f"{start}..{end}", error=str(exc))
            return
        report.history_reads += 1
        by_session = {r.session_id: r for r in page.records}
        wanted = {t.session_id for t in batch}
        for bad in page.rejected:
            if bad.session_id is None or bad.session_id in wanted:
                report.rejected_records += 1
                # Its last-seen values stand: a record that never parses must not make every
                # collection ask again.
                log.warning(
                    "history_record_unreadable", session_id=bad.session_id, reason=bad.problem
                )
        for t in batch:
            row = settle(sessions.get(t.appointment_id), t, by_session.get(t.session_id), now)
            self._write_final(row, report)

    def _write_final(self, row: SessionOutcomeRecord, report: CollectionReport) -> None:
        with self.ledger.begin() as tx:
            tx.visits.put_session(row)
        report.finalized += 1


class OutcomeJob:
    """The collector as a daemon job: a failed collection is logged and retried on the next tick.

    ``should_run`` lets the daemon skip a tick (an instance on standby, say).
    """

    def __init__(
        self,
        collector: OutcomeCollector,
        *,
        classify: Callable[[BaseException], str | None],
        should_run: Callable[[], bool] | None = None,
        after: Callable[[], object] | None = None,
    ) -> None:
        """``after``: run once the collection is done, even when it failed (the join links)."""
        self.collector = collector
        self.classify = classify
        self.should_run = should_run
        self.after = after
        self.last_report: CollectionReport | None = None

    def __call__(self) -> None:
        structlog.contextvars.clear_contextvars()
        if self.should_run is not None and not self.should_run():
            return
        self._guarded(self._collect)
        if self.after is not None:
            self._guarded(self.after)

    def _collect(self) -> None:
        self.last_report = self.collector.collect()

    def _guarded(self, job: Callable[[], object]) -> None:
        try:
            job()
        except AuthenticationError as exc:
            log.error("credentials_rejected", component="outcomes", error=str(exc))
        except Exception as exc:  # a daemon outlives any one failed collection
            component = self.classify(exc)
            if component is None:
                log.error(
                    "outcomes_failed",
                    component="outcomes",
                    error_type=type(exc).__name__,
                    exc_info=exc,
                )
            else:
                log.warning(
                    "degraded",
                    component=component,
                    error_type=type(exc).__name__,
                    error=_first_line(exc),
                )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
