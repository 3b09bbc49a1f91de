"""What the fake SecureVideo keeps and records: hosts, sessions, scripted failures, calls.  Ids
only, never a person."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from syncd.core.domain import RemoteParticipant

#: What a call does, as :class:`Call` and the scripts name it: the planner's operation kinds
#: (``CreateSession.kind`` …) plus ``"list"`` for reading a host's sessions.
KINDS: Final = (
    "list",
    #: ``GET /session``, the whole account's sessions
    "list_account",
    "create",
    "reschedule",
    "cancel",
    "move_host",
    "add_participant",
    "update_participant",
    "remove_participant",
)
MUTATING_KINDS: Final = KINDS[2:]

#: An exception to raise, or a function making a fresh one for each raise.
ErrorSource = BaseException | Callable[[], BaseException]

Outcome = Literal["applied", "failed", "ambiguous"]

_HOST_TIME_ZONE: Final = "Eastern Standard Time"


@dataclass(frozen=True, slots=True)
class FakeHost:
    """A SecureVideo user of the account (a provider).  No real names: ids only."""

    user_id: int
    external_id: str
    time_zone_windows_id: str = _HOST_TIME_ZONE

    @property
    def full_name(self) -> str:
        return f"Host {self.external_id}"


@dataclass(frozen=True, slots=True)
class Call:
    """One call that reached the fake, without patient data (ids only), and how it ended."""

    kind: str
    #: the session acted on; for a create, the session made (None when it failed first)
    session_id: int | None = None
    participation_id: int | None = None
    host_external_id: str | None = None
    external_session_id: str | None = None
    participant_external_id: str | None = None
    schedule_ts: datetime | None = None
    outcome: Outcome = "applied"
    #: the class name of the error raised, if any
    error: str | None = None


@dataclass(slots=True)
class Session:
    session_id: int
    external_session_id: str
    host: FakeHost
    schedule_ts: datetime
    schedule_type: str
    is_recorded: bool
    participants: list[RemoteParticipant]
    billable_ts: datetime | None = None
    duration_minutes: int | None = None
    wait_time: int | None = None
    billable_status_cd: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.schedule_type == "Cancelled"


@dataclass(slots=True)
class Script:
    kind: str | None
    error: ErrorSource
    #: applied first, then the answer is lost
    after_apply: bool
    remaining: int = field(default=1)

    def matches(self, kind: str) -> bool:
        if self.after_apply and kind not in MUTATING_KINDS:
            return False
        return self.kind is None or self.kind == kind

    def make(self) -> BaseException:
        return self.error() if callable(self.error) else self.error
