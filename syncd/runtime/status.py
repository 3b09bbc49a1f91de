"""``syncd status``: how far syncd has read, what waits, what is parked or held and why.
Ids only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from syncd.runtime.app import ledger_of, open_outbox
from syncd.runtime.settings import Settings


def collect_status(settings: Settings, *, parked_limit: int = 100) -> dict[str, Any]:
    with ledger_of(settings) as ledger, ledger.begin() as tx:
        cursor = tx.cursor.get()
        counts = tx.appointments.counts_by_state()
        parked = tx.appointments.parked(parked_limit)
        held = tx.appointments.held(parked_limit)
        oldest = tx.appointments.oldest_pending_since()
    newest: int | None = None
    outbox_error: str | None = None
    if settings.outbox.url:
        reader = open_outbox(settings)
        try:
            newest = reader.max_event_id()
        except Exception as exc:  # noqa: BLE001 - status must still show the ledger's view
            outbox_error = type(exc).__name__
        finally:
            reader.dispose()
    now = datetime.now(UTC).replace(tzinfo=None)
    return {
        "cursor": cursor,
        "outbox_newest_event_id": newest,
        "lag_events": None if newest is None else max(0, newest - cursor),
        "oldest_pending_seconds": None if oldest is None else int((now - oldest).total_seconds()),
        "outbox_error": outbox_error,
        "counts": counts,
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
    }


def render_status(status: dict[str, Any]) -> str:
    lines = [
        f"cursor:            event {status['cursor']}",
        f"outbox newest:     {_or_dash(status['outbox_newest_event_id'])}"
        + (f" (unreadable: {status['outbox_error']})" if status["outbox_error"] else ""),
        f"lag:               {_or_dash(status['lag_events'])} events; oldest pending change "
        f"waiting {_or_dash(status['oldest_pending_seconds'])} s",
        "appointments:      "
        + (", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items())) or "none yet"),
    ]
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
    lines.append(f"held (past visits): {len(held)}")
    for h in held:
        lines.append(f"  {h['appointment_id']}  (since {h['since']})")
        lines.append(f"      {h['reason']}")
    return "\n".join(lines)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
