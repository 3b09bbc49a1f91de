"""The in-memory ledger's tables, and a transaction's working copy of them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from syncd.ports.inbox import InboxMessage
from syncd.ports.ledger import (
    TEXT_LIMIT,
    AppointmentRecord,
    DriftRecord,
    LeaseHolder,
    OperationRecord,
    OutboxRewind,
    ParticipantOutcomeRecord,
    ParticipantRecord,
    SessionOutcomeRecord,
)
from syncd.ports.links import JoinLinkRecord

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Lease:
    holder: LeaseHolder
    acquired_at: datetime
    expires_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class InboxEntry:
    message: InboxMessage
    received_at: datetime
    superseded_at: datetime | None = None


@dataclass(slots=True)
class Tables:
    """The ledger's rows.  Records are frozen, so a shallow copy of each dict is a snapshot."""

    cursor: int = 0
    #: made on first use, like the SQL ledger's; fixed here so fakes give the same fingerprints
    fingerprint_key: bytes | None = None
    rewind: OutboxRewind | None = None
    appointments: dict[str, AppointmentRecord] = field(default_factory=dict)
    operations: dict[int, OperationRecord] = field(default_factory=dict)
    participants: dict[tuple[str, str], ParticipantRecord] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    session_outcomes: dict[str, SessionOutcomeRecord] = field(default_factory=dict)
    participant_outcomes: dict[tuple[str, str], ParticipantOutcomeRecord] = field(
        default_factory=dict
    )
    join_links: dict[tuple[str, str], JoinLinkRecord] = field(default_factory=dict)
    inbox: dict[int, InboxEntry] = field(default_factory=dict)
    #: the inbox's last id, like its autoincrement (an id is not reused after a delete)
    inbox_last_id: int = 0
    drift: dict[tuple[str, str], DriftRecord] = field(default_factory=dict)

    def copy(self) -> Tables:
        return Tables(
            cursor=self.cursor,
            fingerprint_key=self.fingerprint_key,
            rewind=self.rewind,
            appointments=dict(self.appointments),
            operations=dict(self.operations),
            participants=dict(self.participants),
            leases=dict(self.leases),
            session_outcomes=dict(self.session_outcomes),
            participant_outcomes=dict(self.participant_outcomes),
            join_links=dict(self.join_links),
            inbox=dict(self.inbox),
            inbox_last_id=self.inbox_last_id,
            drift=dict(self.drift),
        )


TABLES = (
    "appointments",
    "operations",
    "participants",
    "leases",
    "session_outcomes",
    "participant_outcomes",
    "join_links",
    "inbox",
    "drift",
)


class Work:
    """One transaction's copy of the tables and the rows it changed (what commit writes back)."""

    def __init__(
        self,
        committed: Tables,
        take_operation_id: Callable[[], int],
        database_now: Callable[[], datetime],
    ) -> None:
        self.t = committed.copy()
        #: the "database server's" clock, which lease expiry is reckoned by
        self.database_now = database_now
        self.dirty: dict[str, set[Any]] = {name: set() for name in TABLES}
        self.cursor_moved = False
        #: the cursor was moved back, or the rewind record changed: both are written as they are
        self.rewind_changed = False
        self.take_operation_id = take_operation_id

    def put(self, table: str, key: Hashable, value: object) -> None:
        rows: dict[Any, object] = getattr(self.t, table)
        rows[key] = value
        self.dirty[table].add(key)

    def drop(self, table: str, key: Hashable) -> bool:
        rows: dict[Any, object] = getattr(self.t, table)
        if key not in rows:
            return False
        del rows[key]
        self.dirty[table].add(key)
        return True

    def write_back(self, committed: Tables) -> None:
        if self.rewind_changed:
            committed.cursor, committed.rewind = self.t.cursor, self.t.rewind
        elif self.cursor_moved:
            committed.cursor = max(committed.cursor, self.t.cursor)
        committed.inbox_last_id = max(committed.inbox_last_id, self.t.inbox_last_id)
        if committed.fingerprint_key is None:
            committed.fingerprint_key = self.t.fingerprint_key
        for name in TABLES:
            mine: dict[Any, object] = getattr(self.t, name)
            theirs: dict[Any, object] = getattr(committed, name)
            for key in self.dirty[name]:
                if key in mine:
                    theirs[key] = mine[key]
                else:
                    theirs.pop(key, None)


def utc(moment: datetime) -> datetime:
    """Naive UTC, whatever the caller passed: aware values are converted, naive ones trusted."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def clip(value: str | None) -> str | None:
    return None if value is None else value[:TEXT_LIMIT]


def unknown(appointment_id: str) -> LookupError:
    return LookupError(f"appointment {appointment_id!r} is not in the ledger")


def pick(rows: Mapping[_K, _V], keys: Collection[_K]) -> dict[_K, _V]:
    return {k: rows[k] for k in dict.fromkeys(keys) if k in rows}


# --- repositories ----------------------------------------------------------------------------
