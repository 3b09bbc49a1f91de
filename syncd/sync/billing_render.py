"""``syncd history``'s report as a table, CSV or JSON: counted sessions first, then the ones that
do not count per code, then every session with its platform and connected minutes."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from syncd.sync.billing import (
    API_SCHEDULER,
    BILL,
    Format,
    HistoryReport,
    SessionLine,
    Skipped,
    StatusTotal,
)

__all__ = [
    "CSV_COLUMNS",
    "render",
    "render_csv",
    "render_json",
    "render_table",
    "skipped_lines",
    "to_json",
]


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


def _total_json(t: StatusTotal) -> dict[str, Any]:
    return {
        "status": t.status,
        "sessions": t.sessions,
        "minutes": t.minutes,
        "connected_minutes": t.connected_minutes,
        "wait_minutes": t.wait_minutes,
        "minutes_unknown": t.minutes_unknown,
        "wait_unknown": t.wait_unknown,
        "connected_unknown": t.connected_unknown,
    }


def _session_json(s: SessionLine) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "appointment_id": s.appointment_id,
        "host_user_id": s.host_user_id,
        "schedule_ts": _iso(s.schedule_ts),
        "billable_ts": _iso(s.billable_ts),
        "status": s.status,
        "counts": s.group,
        "duration_minutes": s.duration_minutes,
        "wait_time": s.wait_time,
        "connected_minutes": s.connected_minutes,
        "provider": s.provider,
        "schedule_type": s.schedule_type,
        "scheduled_by_user_id": s.scheduled_by_user_id,
        "flags": list(s.flags),
    }


def to_json(report: HistoryReport) -> dict[str, Any]:
    return {
        "period": {
            "start": report.period.first.isoformat(),
            "end": report.period.last.isoformat(),
            "month": report.period.month.isoformat()[:7] if report.period.month else None,
        },
        "as_of": _iso(report.as_of),
        "counted": {
            **_total_json(report.counted),
            "by_provider": [_total_json(t) for t in report.counted_by_provider],
        },
        "not_counted": {
            **_total_json(report.not_counted),
            "by_code": [_total_json(t) for t in report.not_counted_by_code],
        },
        "unclassified": {
            **_total_json(report.unclassified),
            "by_code": [_total_json(t) for t in report.unclassified_by_code],
        },
        "listed": _total_json(report.total),
        "sessions": [_session_json(s) for s in report.sessions],
        "duplicates": [s.session_id for s in report.duplicates],
        "api_orphans": [s.session_id for s in report.api_orphans],
        "clinic_orphans": [s.session_id for s in report.clinic_orphans],
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
    "counts",
    "status",
    "provider",
    "sessions",
    "minutes",
    "connected_minutes",
    "wait_minutes",
    "minutes_unknown",
    "wait_unknown",
    "connected_unknown",
    "session_id",
    "appointment_id",
    "host_user_id",
    "scheduled_by_user_id",
    "schedule_ts",
    "billable_ts",
    "flags",
    "problem",
)


def _csv_total(kind: str, counts: str, t: StatusTotal, **more: str) -> dict[str, object]:
    figures = {k: v for k, v in _total_json(t).items() if k != "status"}
    return {"kind": kind, "counts": counts, **figures, **more}


def _csv_session(s: SessionLine) -> dict[str, object]:
    return {
        "kind": "session",
        "counts": s.group,
        "status": s.status,
        "provider": s.provider or "",
        "sessions": 1,
        "minutes": _num(s.duration_minutes),
        "connected_minutes": _num(s.connected_minutes),
        "wait_minutes": _num(s.wait_time),
        "session_id": s.session_id,
        "appointment_id": s.appointment_id or "",
        "host_user_id": _num(s.host_user_id),
        "scheduled_by_user_id": _num(s.scheduled_by_user_id),
        "schedule_ts": _iso(s.schedule_ts) or "",
        "billable_ts": _iso(s.billable_ts) or "",
        "flags": ";".join(s.flags),
    }


def render_csv(report: HistoryReport) -> str:
    """One flat table for spreadsheets; ``kind`` says what a row is: ``session``, ``no_show``,
    ``skipped``, ``status_total`` (one code, ``counts`` its group), ``provider_total`` (counted
    sessions of one platform), ``group_total`` (``counts``: counted, not_counted, unclassified)
    and last ``total`` (every session listed, whatever its code)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_session(s) for s in report.sessions)
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
    writer.writerow(_csv_total("status_total", "counted", report.counted, status=BILL))
    for t in report.counted_by_provider:
        writer.writerow(_csv_total("provider_total", "counted", t, status=BILL, provider=t.status))
    for t in report.not_counted_by_code:
        writer.writerow(_csv_total("status_total", "not_counted", t, status=t.status))
    for t in report.unclassified_by_code:
        writer.writerow(_csv_total("status_total", "unclassified", t, status=t.status))
    for group, t in (
        ("counted", report.counted),
        ("not_counted", report.not_counted),
        ("unclassified", report.unclassified),
    ):
        writer.writerow(_csv_total("group_total", group, t))
    writer.writerow(_csv_total("total", "", report.total))
    return out.getvalue()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _figures(t: StatusTotal) -> str:
    return (
        f"{t.sessions} session(s), {t.minutes} minute(s) "
        f"({t.connected_minutes} after the second participant connected)"
    )


def _summary(report: HistoryReport) -> list[str]:
    lines = [
        f"Counted towards the monthly session limit (BILL): {_figures(report.counted)}",
        f"Not counted (SVCO, DUPL, COMP): {_figures(report.not_counted)}",
    ]
    if report.unclassified.sessions:
        lines.append(f"Without a documented code: {_figures(report.unclassified)}")
    lines.append("")
    rows = [
        [
            label,
            t.status,
            *(str(n) for n in (t.sessions, t.minutes, t.connected_minutes)),
            str(t.wait_minutes),
        ]
        for label, group in (
            ("yes", (report.counted, *report.counted_by_provider)),
            ("no", report.not_counted_by_code),
            ("?", report.unclassified_by_code),
        )
        for t in group
    ]
    for i, t in enumerate(report.counted_by_provider, start=1):
        rows[i][0], rows[i][1] = "", f"  on {t.status}"
    headers = ["Counts", "Status", "Sessions", "Minutes", "Connected", "Wait"]
    lines += _table(headers, rows, right={2, 3, 4, 5})
    t = report.total
    missing = [
        f"{n} session(s) without {name}"
        for n, name in (
            (t.minutes_unknown, "DurationMinutes"),
            (t.wait_unknown, "WaitTime"),
            (t.connected_unknown, "both (no connected minutes)"),
        )
        if n
    ]
    if missing:
        lines.append(f"({', '.join(missing)}: counted as 0)")
    lines.append(f"History lists {t.sessions} session(s) in all.")
    return [*lines, ""]


def render_table(report: HistoryReport) -> str:
    lines = [f"SecureVideo history {report.period} (UTC, by billable time)", ""]
    lines += _summary(report)
    if report.sessions:
        rows = [
            [
                str(s.session_id),
                s.appointment_id or "-",
                _num(s.host_user_id),
                _scheduled_by(s.scheduled_by_user_id),
                _ts(s.billable_ts),
                s.status,
                s.provider or "-",
                _num(s.duration_minutes),
                _num(s.wait_time),
                _num(s.connected_minutes),
                " ".join(s.flags),
            ]
            for s in report.sessions
        ]
        headers = ["Session", "Appointment", "Host", "By", "Billable (UTC)", "Status", "Platform"]
        lines += _table([*headers, "Min", "Wait", "Connected", "Flags"], rows, {0, 2, 7, 8, 9})
        lines.append("")
    lines += _orphans_and_no_shows(report)
    return "\n".join(lines) + "\n"


def _scheduled_by(user_id: int | None) -> str:
    if user_id is None:
        return "-"
    return "API" if user_id == API_SCHEDULER else f"user {user_id}"


def _orphans_and_no_shows(report: HistoryReport) -> list[str]:
    lines = [
        _listing("Flagged DUPL by SecureVideo", report.duplicates),
        _listing(
            "ALARM: made through the API but unknown to the ledger (another integration, or a "
            "lost ledger)",
            report.api_orphans,
        ),
        _listing(
            "The clinic's own (scheduled in SecureVideo, not by syncd)", report.clinic_orphans
        ),
    ]
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
    return lines


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
