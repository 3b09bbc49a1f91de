"""``syncd status``: how far syncd has read, what waits, what is parked or held and why.
Ids only."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from syncd.ports.ledger import DriftRecord, OutboxRewind
from syncd.runtime.app import ledger_of, open_outbox
from syncd.runtime.dbhints import explain_database_error
from syncd.runtime.settings import Settings


def collect_status(settings: Settings, *, parked_limit: int = 100) -> dict[str, Any]:
    with ledger_of(settings) as ledger, ledger.begin() as tx:
        cursor, rewind = tx.cursor.position()
        counts = tx.appointments.counts_by_state()
        parked = tx.appointments.parked(parked_limit)
        held = tx.appointments.held(parked_limit)
        noted = tx.appointments.noted(parked_limit)
        oldest = tx.appointments.oldest_pending_since()
        retrying = tx.appointments.retrying(parked_limit)
        drifted = tx.drift.current(parked_limit)
        drift_count = tx.drift.count()
    newest: int | None = None
    outbox_error: str | None = None
    if settings.outbox.url:
        reader = open_outbox(settings)
        try:
            newest = reader.max_event_id()
        except Exception as exc:  # noqa: BLE001 - status must still show the ledger's view
            outbox_error = explain_database_error(exc, settings) or type(exc).__name__
        finally:
            reader.dispose()
    now = datetime.now(UTC).replace(tzinfo=None)
    return {
        "cursor": cursor,
        "outbox_rewound": _rewound(rewind, cursor, newest),
        "outbox_newest_event_id": newest,
        "lag_events": None if newest is None else max(0, newest - cursor),
        "oldest_pending_seconds": None if oldest is None else int((now - oldest).total_seconds()),
        "outbox_error": outbox_error,
        "counts": counts,
        "retrying": [
            {
                "appointment_id": r.appointment_id,
                "attempts": r.attempts,
                "error_class": error_class(r.reason),
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "long": r.attempts >= settings.sync.max_attempts,
            }
            for r in retrying
        ],
        "parked": [
            {
                "appointment_id": r.appointment_id,
                "attempts": r.attempts,
                "parked_at": r.parked_at.isoformat() if r.parked_at else None,
                "reason": r.reason,
            }
            for r in parked
        ],
        # past visits: changes syncd did not send (no create, reschedule or cancel)
        "held": [
            {
                "appointment_id": r.appointment_id,
                "since": r.updated_at.isoformat(),
                "reason": r.reason,
            }
            for r in held
        ],
        # synced, with something an operator should know (a previous host that is gone)
        "notes": [{"appointment_id": r.appointment_id, "reason": r.reason} for r in noted],
        # what staff changed directly in SecureVideo: per appointment, each kind and since when
        "drifted_count": drift_count,
        "drifted": _drifted(drifted),
    }


def _drifted(rows: list[DriftRecord]) -> list[dict[str, Any]]:
    by_appointment: dict[str, dict[str, Any]] = {}
    for d in rows:
        entry = by_appointment.setdefault(
            d.appointment_id,
            {"appointment_id": d.appointment_id, "session_id": d.session_id, "drift": []},
        )
        entry["drift"].append(
            {"kind": d.kind, "session_id": d.session_id, "since": d.detected_at.isoformat()}
        )
    return list(by_appointment.values())


def _rewound(rewind: OutboxRewind | None, cursor: int, newest: int | None) -> dict[str, Any] | None:
    """The last rewind; or, before a pass has noticed it, an outbox whose newest id is below the
    cursor (``noticed`` False)."""
    if newest is not None and newest < cursor:
        return {"noticed": False, "cursor": cursor, "newest_event_id": newest, "applied": False}
    if rewind is None:
        return None
    return {
        "noticed": True,
        "at": rewind.at.isoformat(),
        "cursor": rewind.from_event_id,
        "newest_event_id": rewind.newest_event_id,
        "applied": rewind.applied_at is not None,
        "applied_at": None if rewind.applied_at is None else rewind.applied_at.isoformat(),
    }


def _render_rewound(rewound: dict[str, Any] | None) -> list[str]:
    if rewound is None:
        return []
    went = f"newest event {rewound['newest_event_id']}, cursor {rewound['cursor']}"
    if not rewound["noticed"]:
        return [f"outbox rewound:    yes ({went}); the next pass reads it again from its start"]
    if not rewound["applied"]:
        return [
            f"outbox rewound:    yes, at {rewound['at']} ({went}); re-read, not yet all applied"
        ]
    return [f"last rewind:       {rewound['at']} ({went}); applied at {rewound['applied_at']}"]


def render_status(status: dict[str, Any]) -> str:
    lines = [
        *_render_rewound(status.get("outbox_rewound")),
        f"cursor:            event {status['cursor']}",
        f"outbox newest:     {_or_dash(status['outbox_newest_event_id'])}"
        + (f" (unreadable: {status['outbox_error']})" if status["outbox_error"] else ""),
        f"lag:               {_lag(status)}",
        "appointments:      "
        + (", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items())) or "none yet"),
    ]
    retrying = status["retrying"]
    lines.append(f"retrying:          {len(retrying)}")
    for r in retrying:
        flag = "  [retrying long]" if r["long"] else ""
        lines.append(
            f"  {r['appointment_id']}  (attempts {r['attempts']}, last error {r['error_class']}, "
            f"next try {r['next_attempt_at']} UTC){flag}"
        )
    parked = status["parked"]
    lines.append(f"parked:            {len(parked)}")
    for p in parked:
        lines.append(f"  {p['appointment_id']}  (attempts {p['attempts']}, since {p['parked_at']})")
        lines.append(f"      {p['reason']}")
    if parked:
        lines.append(
            "fix the EHR row (a newer row un-parks it) or run `syncd retry APPOINTMENT_ID`"
        )
    held = status.get("held", [])
    if held:
        lines.append(f"held, no call made (see each reason): {len(held)}")
        for h in held:
            lines.append(f"  {h['appointment_id']}  (since {h['since']})")
            lines.append(f"      {h['reason']}")
    drifted = status.get("drifted", [])
    if drifted:
        lines.append(
            f"drifted (changed in SecureVideo): {status.get('drifted_count', len(drifted))}"
        )
        for d in drifted:
            what = ", ".join(f"{k['kind']} since {k['since']}" for k in d["drift"])
            lines.append(f"  {d['appointment_id']}  ({what})")
    notes = status.get("notes", [])
    if notes:
        lines.append(f"synced with notes: {len(notes)}")
        for n in notes:
            lines.append(f"  {n['appointment_id']}")
            lines.append(f"      {n['reason']}")
    return "\n".join(lines)


def _lag(status: dict[str, Any]) -> str:
    # Unknown values are said in words: "waiting - s" read as a broken template.
    lag = status["lag_events"]
    events = "unknown (outbox not read)" if lag is None else f"{lag} events"
    oldest = status["oldest_pending_seconds"]
    if oldest is None:
        return f"{events}; no change pending"
    return f"{events}; oldest pending change waiting {oldest} s"


#: The SecureVideo client's reasons name the failure as "answered 503" or "(ConnectError)".
_STATUS = re.compile(r"answered (\d{3})")
_EXCEPTION = re.compile(r"\((\w+(?:Error|Timeout))\)")


def error_class(reason: str | None) -> str:
    """The kind of the last failure, from a retry's reason: an HTTP status or a transport error."""
    text = reason or ""
    found = _STATUS.search(text) or _EXCEPTION.search(text)
    return found.group(1) if found else "other"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
