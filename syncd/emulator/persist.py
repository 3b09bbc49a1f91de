"""The emulator's account in a file: loaded at start, written after every change and at exit.

For trying syncd by hand across restarts of ``syncd emulator --state-file PATH``: the hosts, the
sessions with their participants and billing values, and the next ids, so a restarted emulator
never hands out an id twice.  The file is JSON, written to a temporary file beside it and renamed
over it, so a crash mid-write leaves the previous version whole.  It holds what the account holds,
participants' names and addresses included: keep it where test data belongs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from syncd.emulator.state import EmulatorState, HostUser, ParticipantRecord, SessionRecord

__all__ = ["FORMAT", "StateFile", "StateFileError", "restore", "snapshot"]

FORMAT: Final = "securevideo-emulator-state"
VERSION: Final = 1
_DATETIME: Final = "$datetime"

R = TypeVar("R")


class StateFileError(Exception):
    """The state file cannot be read or does not hold an emulator's state; one line."""


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_DATETIME}:
            return datetime.fromisoformat(value[_DATETIME])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _record(cls: type[R], data: Any, what: str) -> R:
    if not isinstance(data, dict):
        raise StateFileError(f"{what} is not a JSON object")
    # Keys this version does not know are left out; fields it added since take their defaults.
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{key: item for key, item in data.items() if key in known})
    except TypeError as exc:
        raise StateFileError(f"{what} lacks a field: {exc}") from None


def snapshot(state: EmulatorState) -> dict[str, Any]:
    """The account as JSON-ready data, taken atomically."""
    with state._lock:
        hosts = [dataclasses.asdict(h) for h in state._hosts.values()]
        departed = [dataclasses.asdict(h) for h in state._departed.values()]
        sessions = [dataclasses.asdict(s) for s in state._sessions.values()]
        next_ids = (state._next_session_id, state._next_participation_id)
        people = {str(k): v for k, v in state._people.items()}
        next_person_id = state._next_person_id
    return {
        "format": FORMAT,
        "version": VERSION,
        "next_session_id": next_ids[0],
        "next_participation_id": next_ids[1],
        "hosts": _encode(hosts),
        # removed hosts (``remove_host``): their sessions stay and still name them
        "departed_hosts": _encode(departed),
        "sessions": _encode(sessions),
        # who has which address now (History's participantEmail), and the next person id
        "people": people,
        "next_person_id": next_person_id,
    }


def restore(state: EmulatorState, data: Any) -> None:
    """Replace the account's hosts and sessions with a :func:`snapshot`'s."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateFileError("it is not an emulator state file")
    if data.get("version") != VERSION:
        raise StateFileError(f"it has version {data.get('version')!r}; this emulator reads 1")
    decoded = _decode(data)
    hosts = [_record(HostUser, h, "a host") for h in decoded.get("hosts", [])]
    departed = [_record(HostUser, h, "a host") for h in decoded.get("departed_hosts", [])]
    sessions: list[SessionRecord] = []
    for raw in decoded.get("sessions", []):
        session = _record(SessionRecord, raw, "a session")
        session.participants = [
            _record(ParticipantRecord, p, f"a participant of session {session.session_id}")
            for p in raw.get("participants", [])
        ]
        sessions.append(session)
    try:
        next_session_id = int(decoded["next_session_id"])
        next_participation_id = int(decoded["next_participation_id"])
        people = {int(k): str(v) for k, v in dict(decoded.get("people") or {}).items()}
        next_person_id = int(decoded.get("next_person_id") or 1)
    except (KeyError, TypeError, ValueError):
        raise StateFileError("it lacks the next ids") from None
    with state._lock:
        state._hosts = {h.user_id: h for h in hosts}
        state._departed = {h.user_id: h for h in departed}
        state._sessions = {s.session_id: s for s in sessions}
        state._by_external_session_id = {}
        state._session_of_participation = {}
        state._people = people
        state._next_person_id = max([next_person_id, *(k + 1 for k in people)])
        for session in sessions:
            if session.external_session_id:
                state._by_external_session_id.setdefault(session.external_session_id, []).append(
                    session.session_id
                )
            for participant in session.participants:
                state._session_of_participation[participant.participation_id] = session.session_id
        # Never below what the sessions use: an id is never handed out twice.
        state._next_session_id = max([next_session_id, *(s.session_id + 1 for s in sessions)])
        state._next_participation_id = max(
            [next_participation_id, *(pid + 1 for pid in state._session_of_participation)]
        )


class StateFile:
    """An emulator state kept in ``path``; :meth:`save` is safe from any thread."""

    def __init__(self, path: Path, state: EmulatorState) -> None:
        self.path = path
        self.state = state
        self._lock = threading.Lock()
        self._written: bytes | None = None

    def load(self) -> bool:
        """Load the file into the state; False (state untouched) when there is no file yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StateFileError(f"{self.path}: cannot be read: {exc.strerror}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise StateFileError(f"{self.path}: is not JSON") from None
        try:
            restore(self.state, data)
        except StateFileError as exc:
            raise StateFileError(f"{self.path}: {exc}") from None
        with self._lock:
            self._written = raw
        return True

    def save(self) -> bool:
        """Write the state if it changed since the last write; True when it wrote."""
        with self._lock:
            data = json.dumps(snapshot(self.state), indent=1, sort_keys=True).encode() + b"\n"
            if data == self._written:
                return False
            self._write(data)
            self._written = data
            return True

    def _write(self, data: bytes) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            Path(temporary).replace(self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(temporary).unlink()
            raise
