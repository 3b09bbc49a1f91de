"""SecureVideo, in domain terms: what the sync layer asks of it.  Raises ``syncd.core.errors``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from syncd.core.domain import CreateSession, Guest, RemoteSession


class SessionGateway(Protocol):
    """SecureVideo, in domain terms.  Raises the errors of ``syncd.core.errors``."""

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]:
        """Active sessions (cancelled ones included) of the host user with this ExternalId."""
        ...

    def create_session(self, op: CreateSession) -> RemoteSession: ...

    def reschedule_session(self, session_id: int, schedule_ts: datetime) -> RemoteSession: ...

    def cancel_session(self, session_id: int) -> None: ...

    def move_session(self, session_id: int, host_external_id: str) -> RemoteSession | None:
        """``PUT /sessionhost``: the session to the host with this ExternalId; the guests keep
        their connect codes.  A ``PermanentError`` when the account does not allow it; None
        when SecureVideo's answer has no body."""
        ...

    def add_participant(self, session_id: int, guest: Guest) -> RemoteSession: ...

    def update_participant(self, participation_id: int, guest: Guest) -> RemoteSession: ...

    def remove_participant(self, participation_id: int) -> None: ...


class AccountGateway(Protocol):
    """The whole account's sessions in one read: what drift and visit outcomes compare with."""

    def list_account_sessions(self) -> list[RemoteSession]:
        """``GET /session``: the active sessions (cancelled ones included) across every host."""
        ...


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One session in SecureVideo's history: ids, codes, times and minutes.

    Times are naive UTC.  Nothing that names a person (History's ``UsageDescription`` lists who
    connected), so a record can be logged or kept.
    """

    session_id: int
    schedule_ts: datetime | None = None
    billable_ts: datetime | None = None
    duration_minutes: int | None = None
    wait_time: int | None = None
    billable_status_cd: str | None = None
    schedule_type: str | None = None
    #: the host's SecureVideo user id
    user_id: int | None = None
    #: -1 when the session was scheduled through the API; None when no scheduler was involved
    scheduled_by_user_id: int | None = None
    #: "Zoom", "One-Click" or "VSee" (the last one used); it decides what DurationMinutes counts
    reportable_meeting_provider: str | None = None


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A history record that does not parse: where it was, its SessionId if readable, and which
    fields failed (paths and error kinds, never values)."""

    index: int
    session_id: int | None
    problem: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One history answer, read record by record: one bad record is set aside, not the answer."""

    records: tuple[HistoryRecord, ...]
    rejected: tuple[RejectedRecord, ...]


class OutcomeGateway(Protocol):
    """What visit outcomes and billing read from SecureVideo.  Raises ``syncd.core.errors``."""

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]: ...

    def history_page(
        self,
        *,
        month: date | None = None,
        start: date | None = None,
        end: date | None = None,
        host_user_id: int | None = None,
        participant_email: str | None = None,
    ) -> HistoryPage:
        """Billable sessions by month (any day of it) or by a start/end range of dates (UTC)."""
        ...
