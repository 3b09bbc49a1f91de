"""The settle window: a front desk that edits a booking three times in a minute should cost the
patient one notice, not three.  Pure: the caller passes the times."""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["settle_until"]


def settle_until(
    written_at: datetime | None,
    starts_at: datetime,
    now: datetime,
    *,
    window: timedelta,
    bypass: timedelta,
) -> datetime | None:
    """When an appointment whose newest outbox row was written at ``written_at`` may be applied,
    or None for now: the window is off, the row's time is unknown, the visit starts within
    ``bypass`` (the patient needs the notice now), or the window has passed.  A row written
    "in the future" (the EHR's clock ahead of ours) waits one window from now, no longer."""
    if window <= timedelta(0) or written_at is None:
        return None
    if starts_at - now <= bypass:
        return None
    until = min(written_at, now) + window
    return until if until > now else None
