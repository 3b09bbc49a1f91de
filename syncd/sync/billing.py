"""Billing reconciliation: ``syncd history`` matches SecureVideo's History JSON to the ledger.

For a month or a date range (UTC, by BillableTs, as SecureVideo filters) the report gives the
billable sessions per status code with their minutes and wait time, the sessions SecureVideo
flagged ``DUPL``, the sessions with no appointment in the ledger ("orphans": made outside syncd),
and the booked appointments of the period that never became billable (possible no-shows).

No PHI: ``UsageDescription`` names the people who connected, so it is never read here; the report
holds ids, codes, times and minutes only.  A History record that does not parse is listed by its
SessionId and left out of the totals; it never stops the report.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final, Literal

from syncd.ports.ledger import BookedAppointment, Ledger
from syncd.ports.securevideo import HistoryPage, HistoryRecord, OutcomeGateway

DUPLICATE: Final = "DUPL"
ORPHAN: Final = "ORPHAN"
#: The status label of a record without BillableStatusCd (lower case: never one of SecureVideo's).
NO_STATUS: Final = "unknown"

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
    #: DUPL (SecureVideo flagged it a duplicate) and ORPHAN (no appointment in the ledger)
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusTotal:
    status: str
    sessions: int
    minutes: int
    wait_minutes: int
    #: sessions History gave no DurationMinutes / WaitTime for (WaitTime exists since Nov 2020)
    minutes_unknown: int
    wait_unknown: int


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
    by_status: tuple[StatusTotal, ...]
    total: StatusTotal
    no_shows: tuple[NoShow, ...]
    skipped: tuple[Skipped, ...]
    #: no-shows are only looked for before this moment: a later appointment has not happened yet
    as_of: datetime

    @property
    def duplicates(self) -> tuple[SessionLine, ...]:
        return tuple(s for s in self.sessions if DUPLICATE in s.flags)

    @property
    def orphans(self) -> tuple[SessionLine, ...]:
        return tuple(s for s in self.sessions if ORPHAN in s.flags)


def _total(status: str, lines: Sequence[SessionLine]) -> StatusTotal:
    return StatusTotal(
        status=status,
        sessions=len(lines),
        minutes=sum(s.duration_minutes or 0 for s in lines),
        wait_minutes=sum(s.wait_time or 0 for s in lines),
        minutes_unknown=sum(s.duration_minutes is None for s in lines),
        wait_unknown=sum(s.wait_time is None for s in lines),
    )


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
    statuses = sorted({s.status for s in lines})
    by_status = tuple(_total(st, [s for s in lines if s.status == st]) for st in statuses)

    billed_appointments = {s.appointment_id for s in lines if s.appointment_id is not None}
    unreadable = {bad.session_id for bad in page.rejected if bad.session_id is not None}
    until = min(period.end, now)
    no_shows = tuple(
        NoShow(b.appointment_id, b.session_id, b.schedule_ts)
        for b in booked
        if period.start <= b.schedule_ts < until
        and b.billable_ts is None
        and b.session_id not in seen
        and b.session_id not in unreadable
        and b.appointment_id not in billed_appointments
    )
    skipped = tuple(Skipped(bad.index, bad.session_id, bad.problem) for bad in page.rejected)
    return HistoryReport(
        period=period,
        sessions=tuple(lines),
        by_status=by_status,
        total=_total("total", lines),
        no_shows=no_shows,
        skipped=skipped,
        as_of=now,
    )


def _order(r: HistoryRecord) -> tuple[datetime, int]:
    return (r.billable_ts or datetime.min, r.session_id)


def _line(r: HistoryRecord, appointment_id: str | None) -> SessionLine:
    status = (r.billable_status_cd or "").strip() or NO_STATUS
    flags = tuple(
        flag
        for flag, present in ((DUPLICATE, status == DUPLICATE), (ORPHAN, appointment_id is None))
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


# --- rendering ----------------------------------------------------------------------------------


def _ts(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


def render(report: HistoryReport, fmt: Format) -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report)
    return render_table(report)


def to_json(report: HistoryReport) -> dict[str, Any]:
    def total(t: StatusTotal) -> dict[str, Any]:
        return {
            "status": t.status,
            "sessions": t.sessions,
            "minutes": t.minutes,
            "wait_minutes": t.wait_minutes,
            "minutes_unknown": t.minutes_unknown,
            "wait_unknown": t.wait_unknown,
        }

    return {
        "period": {
            "start": report.period.first.isoformat(),
            "end": report.period.last.isoformat(),
            "month": report.period.month.isoformat()[:7] if report.period.month else None,
        },
        "as_of": _iso(report.as_of),
        "total": total(report.total),
        "by_status": [total(t) for t in report.by_status],
        "sessions": [
            {
                "session_id": s.session_id,
                "appointment_id": s.appointment_id,
                "host_user_id": s.host_user_id,
                "schedule_ts": _iso(s.schedule_ts),
                "billable_ts": _iso(s.billable_ts),
                "status": s.status,
                "duration_minutes": s.duration_minutes,
                "wait_time": s.wait_time,
                "schedule_type": s.schedule_type,
                "scheduled_by_user_id": s.scheduled_by_user_id,
                "flags": list(s.flags),
            }
            for s in report.sessions
        ],
        "duplicates": [s.session_id for s in report.duplicates],
        "orphans": [s.session_id for s in report.orphans],
        "possible_no_shows": [
            {
                "appointment_id": n.appointment_id,
                "session_id": n.session_id,
                "schedule_ts": _iso(n.schedule_ts),
            }
            for n in report.no_shows
        ],
        "skipped_records": [
            {"index": k.index, "session_id": k.session_id, "problem": k.problem}
            for k in report.skipped
        ],
    }


def render_json(report: HistoryReport) -> str:
    return json.dumps(to_json(report), indent=2) + "\n"


CSV_COLUMNS: Final = (
    "kind",
    "status",
    "sessions",
    "minutes",
    "wait_minutes",
    "session_id",
    "appointment_id",
    "host_user_id",
    "schedule_ts",
    "billable_ts",
    "flags",
    "problem",
)


def render_csv(report: HistoryReport) -> str:
    """One flat table for spreadsheets; ``kind`` says what a row is: ``session``, ``no_show``,
    ``skipped``, ``status_total`` or ``total``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for s in report.sessions:
        writer.writerow(
            {
                "kind": "session",
                "status": s.status,
                "sessions": 1,
                "minutes": _num(s.duration_minutes),
                "wait_minutes": _num(s.wait_time),
                "session_id": s.session_id,
                "appointment_id": s.appointment_id or "",
                "host_user_id": _num(s.host_user_id),
                "schedule_ts": _iso(s.schedule_ts) or "",
                "billable_ts": _iso(s.billable_ts) or "",
                "flags": ";".join(s.flags),
            }
        )
    for n in report.no_shows:
        writer.writerow(
            {
                "kind": "no_show",
                "session_id": n.session_id,
                "appointment_id": n.appointment_id,
                "schedule_ts": _iso(n.schedule_ts),
            }
        )
    for k in report.skipped:
        writer.writerow({"kind": "skipped", "session_id": _num(k.session_id), "problem": k.problem})
    for t in (*report.by_status, report.total):
        writer.writerow(
            {
                "kind": "total" if t is report.total else "status_total",
                "status": "" if t is report.total else t.status,
                "sessions": t.sessions,
                "minutes": t.minutes,
                "wait_minutes": t.wait_minutes,
            }
        )
    return out.getvalue()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def render_table(report: HistoryReport) -> str:
    lines = [
        f"SecureVideo history {report.period} (UTC, by billable time)",
        "",
    ]
    totals = [
        [t.status, str(t.sessions), str(t.minutes), str(t.wait_minutes)]
        for t in (*report.by_status, report.total)
    ]
    lines += _table(["Status", "Sessions", "Minutes", "Wait"], totals, right={1, 2, 3})
    missing = [
        f"{n} session(s) without {name}"
        for n, name in (
            (report.total.minutes_unknown, "DurationMinutes"),
            (report.total.wait_unknown, "WaitTime"),
        )
        if n
    ]
    if missing:
        lines.append(f"({', '.join(missing)}: counted as 0)")
    lines.append("")
    if report.sessions:
        rows = [
            [
                str(s.session_id),
                s.appointment_id or "-",
                _num(s.host_user_id),
                _ts(s.billable_ts),
                s.status,
                _num(s.duration_minutes),
                _num(s.wait_time),
                " ".join(s.flags),
            ]
            for s in report.sessions
        ]
        headers = ["Session", "Appointment", "Host", "Billable (UTC)", "Status", "Min", "Wait"]
        lines += _table([*headers, "Flags"], rows, right={0, 2, 5, 6})
        lines.append("")
    lines.append(_listing("Flagged DUPL by SecureVideo", report.duplicates))
    lines.append(_listing("Orphans (no appointment in the ledger)", report.orphans))
    if report.no_shows:
        lines.append("Possible no-shows (booked in the period, never billable):")
        rows = [[n.appointment_id, str(n.session_id), _ts(n.schedule_ts)] for n in report.no_shows]
        lines += [
            "  " + line for line in _table(["Appointment", "Session", "Booked (UTC)"], rows, {1})
        ]
    else:
        lines.append("Possible no-shows: none")
    if report.skipped:
        lines.append(
            "Skipped (unreadable records): "
            + "; ".join(f"{_skipped_name(k)}: {k.problem}" for k in report.skipped)
        )
    return "\n".join(lines) + "\n"


def _listing(title: str, sessions: Sequence[SessionLine]) -> str:
    if not sessions:
        return f"{title}: none"
    return f"{title}: " + ", ".join(
        f"{s.session_id}" + (f" (appointment {s.appointment_id})" if s.appointment_id else "")
        for s in sessions
    )


def _skipped_name(k: Skipped) -> str:
    return f"SessionId {k.session_id}" if k.session_id is not None else f"record #{k.index + 1}"


def skipped_lines(report: HistoryReport) -> list[str]:
    """One line per record left out, for stderr."""
    return [
        f"history: skipped an unreadable record ({_skipped_name(k)}): {k.problem}"
        for k in report.skipped
    ]
