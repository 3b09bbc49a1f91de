"""Simulated visits: a session's participants connect and it becomes billable, as on SecureVideo.

Not part of SecureVideo's API: SecureVideo fills these values in when people join a call, which
the emulator has no way to see.  This lets an operator trying syncd by hand (or a test) make a
visit happen, then watch ``syncd outcomes`` and ``syncd history`` pick it up:

* every participant (the host first) gets a ``ConnectionTs``;
* ``BillableTs`` is the second connection ("connected by two people"), ``BillableStatusCd``
  ``BILL``; once set it never changes, as the Session JSON article says;
* ``DurationMinutes`` and ``WaitTime`` are set as History JSON describes them for the platform
  (``ReportableMeetingProvider``, default Zoom): on Zoom and One-Click the minutes the session was
  active, WaitTime the minutes before BillableTs; on VSee only the minutes the host was connected
  to a participant, WaitTime 0.  The session appears in ``GET /history`` for its billable month.

Also here: ``GET``/``DELETE /emulator/notices``, the notices SecureVideo sent (``notices.py``).

Over HTTP: ``POST /emulator/visit/{SessionId}`` or ``POST /emulator/visit/0?externalSessionId=X``
with the API's credentials and an optional JSON body
``{"StartTs": "2027-02-10T14:00:00", "DurationMinutes": 25, "WaitTime": 2,
"ReportableMeetingProvider": "VSee"}``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from syncd.emulator.notices import notices_json
from syncd.emulator.state import (
    MEETING_PROVIDERS,
    EmulatorState,
    InvalidRequestError,
    JsonObject,
    UnknownResourceError,
    parse_timestamp,
    session_json,
)

__all__ = ["ADMIN_PATH", "DEFAULT_DURATION_MINUTES", "admin_request", "simulate_visit"]

#: Where the emulator's own controls live, beside (and never clashing with) SecureVideo's paths.
ADMIN_PATH: Final = "/emulator/"
DEFAULT_DURATION_MINUTES: Final = 25
DEFAULT_WAIT_MINUTES: Final = 2


def simulate_visit(
    state: EmulatorState,
    session_id: int,
    *,
    start: datetime | None = None,
    duration_minutes: int = DEFAULT_DURATION_MINUTES,
    wait_minutes: int = DEFAULT_WAIT_MINUTES,
    provider: str = "Zoom",
) -> JsonObject:
    """The visit of ``session_id``: the host connects at ``start`` (default: ``duration_minutes``
    before the emulator's now, a visit that has just ended), each guest ``wait_minutes`` later.
    Returns the session's JSON.  A cancelled session cannot be visited."""
    if provider not in MEETING_PROVIDERS:
        raise InvalidRequestError("ReportableMeetingProvider must be Zoom, One-Click or VSee")
    if duration_minutes < 0 or wait_minutes < 0:
        raise InvalidRequestError("DurationMinutes and WaitTime must not be negative")
    if wait_minutes > duration_minutes:
        raise InvalidRequestError("WaitTime must not exceed DurationMinutes")
    session = state.session(session_id)
    if session.cancelled:
        raise InvalidRequestError(f"Session {session_id} is cancelled and cannot be visited")
    if len(session.participants) < 2:
        raise InvalidRequestError(f"Session {session_id} has no participant besides its host")
    begin = start if start is not None else state.now() - timedelta(minutes=duration_minutes)
    begin = begin.replace(microsecond=0)
    state.mark_connected(session_id, None, begin)
    for guest in session.participants[1:]:
        state.mark_connected(
            session_id, guest.participation_id, begin + timedelta(minutes=wait_minutes)
        )
    # BillableTs and its status stay as first set; the minutes are the visit's.
    visited = state.session(session_id)
    vsee = provider == "VSee"  # VSee counts only the host's minutes with a participant
    state.set_billing(
        session_id,
        visited.billable_ts,
        visited.billable_status_cd or "BILL",
        duration_minutes=duration_minutes - wait_minutes if vsee else duration_minutes,
        wait_time=0 if vsee else wait_minutes,
        provider=provider,
    )
    return session_json(state.session(session_id))


def admin_request(
    state: EmulatorState, method: str, path: str, query: dict[str, str], body: Any
) -> tuple[int, Any]:
    """An emulator control request; ``path`` is what follows :data:`ADMIN_PATH`.  Raises the
    state's ``ApiError`` subclasses, which the server answers as the API does."""
    segments = [s for s in path.lower().split("/") if s]
    if segments == ["notices"]:
        return _notices(state, method, query)
    if len(segments) != 2 or segments[0] != "visit":
        raise UnknownResourceError("No emulator control matches the request URI.")
    if method != "POST":
        raise InvalidRequestError("Emulator controls are POST requests")
    try:
        ident = int(segments[1])
    except ValueError:
        raise UnknownResourceError("No emulator control matches the request URI.") from None
    q = {k.lower(): v for k, v in query.items()}
    session_id = ident or _by_external_session_id(state, q.get("externalsessionid"))
    options = body if body is not None else {}
    if not isinstance(options, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    start = options.get("StartTs")
    return 200, simulate_visit(
        state,
        session_id,
        start=None if start is None else parse_timestamp(start, "StartTs"),
        duration_minutes=_minutes(options, "DurationMinutes", DEFAULT_DURATION_MINUTES),
        wait_minutes=_minutes(options, "WaitTime", DEFAULT_WAIT_MINUTES),
        provider=str(options.get("ReportableMeetingProvider") or "Zoom"),
    )


def _notices(state: EmulatorState, method: str, query: dict[str, str]) -> tuple[int, Any]:
    """``GET`` the notices sent (``?sessionId=N`` for one session), ``DELETE`` to forget them."""
    if method == "DELETE":
        state.clear_notices()
        return 204, None
    if method != "GET":
        raise InvalidRequestError("The notices control answers GET and DELETE")
    q = {k.lower(): v for k, v in query.items()}
    raw = q.get("sessionid")
    try:
        session_id = None if raw is None else int(raw)
    except ValueError:
        raise InvalidRequestError("sessionId must be a whole number") from None
    return 200, notices_json(state.notices(session_id))


def _minutes(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"{key} must be a whole number of minutes")
    return value


def _by_external_session_id(state: EmulatorState, external_session_id: str | None) -> int:
    if not external_session_id:
        raise InvalidRequestError("Give a SessionId or externalSessionId")
    live = state.live_sessions_by_external_id().get(external_session_id)
    if not live:
        raise UnknownResourceError("No live session has this externalSessionId")
    return live[-1]
