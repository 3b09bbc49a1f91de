"""Billing reconciliation: ``syncd history`` matches SecureVideo's History JSON to the ledger.

For a month or a date range (UTC, by BillableTs, as SecureVideo filters) the report gives first
the sessions that count towards the monthly session limit (``BILL``) with their minutes, then
those that do not (``SVCO``, ``DUPL``, ``COMP``), per code; a record without a documented code is
kept apart as unclassified.  Beside DurationMinutes it gives the minutes after the second
participant connected (DurationMinutes - WaitTime), since DurationMinutes includes waiting on Zoom
with Join Before Host and on One-Click but not on VSee, and each session's platform.  Sessions with
no appointment in the ledger are orphans: one made through the API (``ScheduledByUserId`` -1) is an
alarm (another integration, or a lost ledger), one scheduled by a user in SecureVideo is the
clinic's own.  Last, the booked appointments of the period that never became billable (possible
no-shows).

No PHI: ``UsageDescription`` names the people who connected, so it is never read here; the report
holds ids, codes, times and minutes only.  A History record that does not parse is listed by its
SessionId and left out of the totals; it never stops the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, Literal

from syncd.ports.ledger import BookedAppointment, Ledger
from syncd.ports.securevideo import HistoryPage, HistoryRecord, OutcomeGateway

BILL: Final = "BILL"
DUPLICATE: Final = "DUPL"
#: The codes History documents as not counting towards the monthly session limit, in its order.
NOT_COUNTED_CODES: Final = ("SVCO", DUPLICATE, "COMP")
#: No appointment in the ledger, scheduled through the API (ScheduledByUserId -1): an alarm.
API_ORPHAN: Final = "API_ORPHAN"
#: No appointment in the ledger, scheduled in SecureVideo by a user (or by no scheduler at all).
CLINIC_ORPHAN: Final = "CLINIC_ORPHAN"
#: ScheduledByUserId of a session made through the API
API_SCHEDULER: Final = -1
#: The status label of a record without BillableStatusCd (lower case: never one of SecureVideo's).
NO_STATUS: Final = "unknown"

Group = Literal["counted", "not_counted", "unclassified"]

Format = Literal["table", "csv", "json"]
FORMATS: Final[tuple[Format, ...]] = ("table", "csv", "json")

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class PeriodError(ValueError):
    """A malformed month or date range; the message is the one line the operator sees."""


@dataclass(frozen=True, slots=True)
class Period:
    """Whole UTC days, ``first`` to ``last`` inclusive; ``month`` when asked for by month."""

    first: date
    last: date
    month: date | None = None

    @property
    def start(self) -> datetime:
        return datetime(self.first.year, self.first.month, self.first.day)

    @property
    def end(self) -> datetime:
        """Exclusive."""
        return self.start + timedelta(days=(self.last - self.first).days + 1)

    def __str__(self) -> str:
        return f"{self.first.isoformat()} .. {self.last.isoformat()}"


def _shown(value: str) -> str:
    # The operator's own input, echoed so the message says what was wrong; cut, in case.
    return repr(value if len(value) <= 20 else value[:17] + "...")


def parse_period(month: str | None, start: str | None, end: str | None) -> Period:
    """The period from ``--month YYYY-MM`` or ``--start YYYY-MM-DD --end YYYY-MM-DD``."""
    if month is not None and (start is not None or end is not None):
        raise PeriodError("give either --month or --start/--end, not both")
    if month is not None:
        m = _MONTH.fullmatch(month.strip())
        if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1:
            raise PeriodError(
                f"--month must be a month as YYYY-MM, e.g. 2026-03 (got {_shown(month)})"
            )
        first = date(int(m.group(1)), int(m.group(2)), 1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return Period(first, following - timedelta(days=1), month=first)
    if start is None or end is None:
        raise PeriodError("give --month YYYY-MM, or both --start YYYY-MM-DD and --end YYYY-MM-DD")
    first, last = _day("--start", start), _day("--end", end)
    if last < first:
        raise PeriodError(f"--end ({last.isoformat()}) is before --start ({first.isoformat()})")
    return Period(first, last)


def _day(option: str, value: str) -> date:
    text = value.strip()
    if _DAY.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise PeriodError(
        f"{option} must be a date as YYYY-MM-DD, e.g. 2026-03-01 (got {_shown(value)})"
    )


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionLine:
    session_id: int
    appointment_id: str | None
    host_user_id: int | None
    schedule_ts: datetime | None
    billable_ts: datetime | None
    status: str
    duration_minutes: int | None
    wait_time: int | None
    schedule_type: str | None
    scheduled_by_user_id: int | None
    #: ReportableMeetingProvider: "Zoom", "One-Click" or "VSee"
    provider: str | None
    #: DUPL (SecureVideo flagged it a duplicate), API_ORPHAN or CLINIC_ORPHAN (not in the ledger)
    flags: tuple[str, ...]

    @property
    def connected_minutes(self) -> int | None:
        """Minutes after the second participant connected, where History gives both figures."""
        if self.duration_minutes is None or self.wait_time is None:
            return None
        return max(self.duration_minutes - self.wait_time, 0)

    @property
    def group(self) -> Group:
        return group_of(self.status)


def group_of(status: str) -> Group:
    if status == BILL:
        return "counted"
    return "not_counted" if status in NOT_COUNTED_CODES else "unclassified"


@dataclass(frozen=True, slots=True)
class StatusTotal:
    #: a code, a provider, or a group's name
    status: str
    sessions: int
    minutes: int
    #: the sum of DurationMinutes - WaitTime over the sessions that have both
    connected_minutes: int
    wait_minutes: int
    #: sessions History gave no DurationMinutes / WaitTime for (WaitTime exists since Nov 2020)
    minutes_unknown: int
    wait_unknown: int
    #: sessions without both, so without connected minutes
    connected_unknown: int


@dataclass(frozen=True, slots=True)
class NoShow:
    appointment_id: str
    session_id: int
    schedule_ts: datetime


@dataclass(frozen=True, slots=True)
class Skipped:
    index: int
    session_id: int | None
    problem: str


@dataclass(frozen=True, slots=True)
class HistoryReport:
    period: Period
    sessions: tuple[SessionLine, ...]
    #: the BILL sessions: what counts towards the monthly session limit
    counted: StatusTotal
    #: SVCO, DUPL and COMP, always all three and in that order
    not_counted_by_code: tuple[StatusTotal, ...]
    not_counted: StatusTotal
    #: sessions without a documented code, per code seen
    unclassified_by_code: tuple[StatusTotal, ...]
    unclassified: StatusTotal
    #: the counted sessions per ReportableMeetingProvider ("unknown" when not given)
    counted_by_provider: tuple[StatusTotal, ...]
    #: every session listed, whatever its code: History's own count, not a billing figure
    total: StatusTotal
    no_shows: tuple[NoShow, ...]
    skipped: tuple[Skipped, ...]
    #: no-shows are only looked for before this moment: a later appointment has not happened yet
    as_of: datetime

    @property
    def by_status(self) -> tuple[StatusTotal, ...]:
        """Every code's row: counted first, then not counted, then unclassified."""
        counted = (self.counted,) if self.counted.sessions else ()
        return (*counted, *self.not_counted_by_code, *self.unclassified_by_code)

    @property
    def duplicates(self) -> tuple[SessionLine, ...]:
        return tuple(s for s in self.sessions if DUPLICATE in s.flags)

    @property
    def api_orphans(self) -> tuple[SessionLine, ...]:
        return tuple(s for s in self.sessions if API_ORPHAN in s.flags)

    @property
    def clinic_orphans(self) -> tuple[SessionLine, ...]:
        return tuple(s for s in self.sessions if CLINIC_ORPHAN in s.flags)


def _total(status: str, lines: Sequence[SessionLine]) -> StatusTotal:
    connected = [s.connected_minutes for s in lines]
    return StatusTotal(
        status=status,
        sessions=len(lines),
        minutes=sum(s.duration_minutes or 0 for s in lines),
        connected_minutes=sum(c or 0 for c in connected),
        wait_minutes=sum(s.wait_time or 0 for s in lines),
        minutes_unknown=sum(s.duration_minutes is None for s in lines),
        wait_unknown=sum(s.wait_time is None for s in lines),
        connected_unknown=sum(c is None for c in connected),
    )


def _per(key: str, lines: Sequence[SessionLine], keys: Sequence[str]) -> tuple[StatusTotal, ...]:
    return tuple(_total(k, [s for s in lines if getattr(s, key) == k]) for k in keys)


def build_report(
    period: Period,
    page: HistoryPage,
    appointment_of: Mapping[int, str],
    booked: Sequence[BookedAppointment],
    *,
    now: datetime,
) -> HistoryReport:
    """The report from History JSON and what the ledger knows; pure."""
    lines: list[SessionLine] = []
    seen: set[int] = set()
    for r in sorted(page.records, key=_order):
        if r.session_id in seen:
            continue  # listed twice: count it once
        seen.add(r.session_id)
        lines.append(_line(r, appointment_of.get(r.session_id)))
    counted = [s for s in lines if s.group == "counted"]
    not_counted = [s for s in lines if s.group == "not_counted"]
    unclassified = [s for s in lines if s.group == "unclassified"]
    providers = sorted({s.provider or NO_STATUS for s in counted})
    by_provider = tuple(
        _total(p, [s for s in counted if (s.provider or NO_STATUS) == p]) for p in providers
    )
    return HistoryReport(
        period=period,
        sessions=tuple(lines),
        counted=_total(BILL, counted),
        not_counted_by_code=_per("status", not_counted, NOT_COUNTED_CODES),
        not_counted=_total("not_counted", not_counted),
        unclassified_by_code=_per("status", unclassified, sorted({s.status for s in unclassified})),
        unclassified=_total("unclassified", unclassified),
        counted_by_provider=by_provider,
        total=_total("total", lines),
        no_shows=_no_shows(period, page, lines, booked, seen, now),
        skipped=tuple(Skipped(bad.index, bad.session_id, bad.problem) for bad in page.rejected),
        as_of=now,
    )


def _no_shows(
    period: Period,
    page: HistoryPage,
    lines: Sequence[SessionLine],
    booked: Sequence[BookedAppointment],
    seen: set[int],
    now: datetime,
) -> tuple[NoShow, ...]:
    billed_appointments = {s.appointment_id for s in lines if s.appointment_id is not None}
    unreadable = {bad.session_id for bad in page.rejected if bad.session_id is not None}
    until = min(period.end, now)
    return tuple(
        NoShow(b.appointment_id, b.session_id, b.schedule_ts)
        for b in booked
        if period.start <= b.schedule_ts < until
        and b.billable_ts is None
        and b.session_id not in seen
        and b.session_id not in unreadable
        and b.appointment_id not in billed_appointments
    )


def _order(r: HistoryRecord) -> tuple[datetime, int]:
    return (r.billable_ts or datetime.min, r.session_id)


def _line(r: HistoryRecord, appointment_id: str | None) -> SessionLine:
    status = (r.billable_status_cd or "").strip() or NO_STATUS
    orphan = API_ORPHAN if r.scheduled_by_user_id == API_SCHEDULER else CLINIC_ORPHAN
    flags = tuple(
        flag
        for flag, present in ((DUPLICATE, status == DUPLICATE), (orphan, appointment_id is None))
        if present
    )
    return SessionLine(
        session_id=r.session_id,
        appointment_id=appointment_id,
        host_user_id=r.user_id,
        schedule_ts=r.schedule_ts,
        billable_ts=r.billable_ts,
        status=status,
        duration_minutes=r.duration_minutes,
        wait_time=r.wait_time,
        schedule_type=r.schedule_type,
        scheduled_by_user_id=r.scheduled_by_user_id,
        provider=(r.reportable_meeting_provider or "").strip() or None,
        flags=flags,
    )


def run_history(
    ledger: Ledger, gateway: OutcomeGateway, period: Period, *, now: datetime
) -> HistoryReport:
    """Fetch History JSON for the period, join it to the ledger, and build the report."""
    if period.month is not None:
        page = gateway.history_page(month=period.month)
    else:
        page = gateway.history_page(start=period.first, end=period.last)
    ids = {r.session_id for r in page.records}
    with ledger.begin() as tx:
        appointment_of = tx.visits.appointments_of_sessions(ids)
        booked = tx.visits.booked_between(period.start, period.end)
    return build_report(period, page, appointment_of, booked, now=now)
