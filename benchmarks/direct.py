"""The engine's local cost: database + planning, with SecureVideo answered in-process.

A `SessionGateway` that hands the real client's wire bodies straight to the emulator's account
model and parses its answers with the real wire models — everything the HTTP client does except
the socket.  Used by drain.py to measure the local cost per row at L = 0.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from syncd.adapters.securevideo import new_participant, remote_session
from syncd.adapters.securevideo.wire import SESSIONS, NewSession, SessionJson
from syncd.core.domain import CreateSession, Guest, RemoteSession
from syncd.emulator.state import EmulatorState


class _ServerSide:
    """CPU spent on SecureVideo's side of a call (the account model and its JSON answer), which
    is not syncd's: measured per thread so that the benchmark can report syncd's share apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = 0.0

    def __call__(self, work: Callable[[], Any]) -> bytes:
        started = time.thread_time()
        text = json.dumps(work(), default=str).encode()
        spent = time.thread_time() - started
        with self._lock:
            self.seconds += spent
        return text


class DirectGateway:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.calls = 0
        self.server_side = _ServerSide()

    def _session(self, work: Callable[[], Any]) -> SessionJson:
        # Parsed from JSON text, as an HTTP answer would be.
        return SessionJson.model_validate_json(self.server_side(work))

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]:
        self.calls += 1
        text = self.server_side(
            lambda: self.state.list_sessions_json(host_external_id=host_external_id)
        )
        parsed = SESSIONS.validate_json(text)
        return [remote_session(s, host_external_id) for s in parsed]

    def create_session(self, op: CreateSession) -> RemoteSession:
        self.calls += 1
        body = NewSession(
            schedule_ts=op.schedule_ts,
            is_recorded=op.is_recorded,
            external_session_id=op.external_session_id,
            topic=op.topic,
            participants=tuple(new_participant(g) for g in op.guests),
        ).to_wire()
        created = self._session(
            lambda: self.state.create_session(body, host_external_id=op.host_external_id)
        )
        return remote_session(created, op.host_external_id)

    def reschedule_session(self, session_id: int, schedule_ts: datetime) -> RemoteSession:
        self.calls += 1
        body = {"ScheduleTs": schedule_ts.strftime("%Y-%m-%dT%H:%M:00")}
        answer = self._session(lambda: self.state.reschedule_session(body, session_id=session_id))
        return remote_session(answer)

    def cancel_session(self, session_id: int) -> None:
        self.calls += 1
        self.server_side(lambda: self.state.cancel_session(session_id=session_id))

    def move_session(self, session_id: int, host_external_id: str) -> RemoteSession:
        self.calls += 1
        body = {"ExternalUserId": host_external_id}
        answer = self._session(lambda: self.state.change_host(body, session_id=session_id))
        return remote_session(answer, host_external_id)

    def add_participant(self, session_id: int, guest: Guest) -> RemoteSession:
        self.calls += 1
        body = new_participant(guest).to_wire()
        answer = self._session(lambda: self.state.add_participant(body, session_id=session_id))
        return remote_session(answer)

    def update_participant(self, participation_id: int, guest: Guest) -> RemoteSession:
        self.calls += 1
        body = new_participant(guest).to_wire(update=True)
        answer = self._session(
            lambda: self.state.update_participant(body, participation_id=participation_id)
        )
        return remote_session(answer)

    def remove_participant(self, participation_id: int) -> None:
        self.calls += 1
        self.server_side(lambda: self.state.remove_participant(participation_id=participation_id))
