"""The ledger's tables, as the models Alembic compares the migrations with.

The schema itself belongs to Alembic (``migrations/``); these declarations must match what the
migrations build, which ``tests/test_ledger.py`` checks on every backend.  The repositories speak
Core to the tables (:data:`cursor_table` …), never load ORM objects: an identity map would keep
serving rows that a bulk UPDATE has since changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from syncd.ports.ledger import APPOINTMENT_STATES, OPERATION_STATES, TEXT_LIMIT

__all__ = [
    "MYSQL_TABLE_OPTIONS",
    "NAMING_CONVENTION",
    "appointment_table",
    "cursor_table",
    "drift_table",
    "hl7_inbox_table",
    "join_link_table",
    "lease_table",
    "metadata",
    "operation_table",
    "participant_outcome_table",
    "participant_table",
    "session_outcome_table",
]

NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Without these, MariaDB takes the server's defaults: a MyISAM default would silently drop
#: transactions, and a latin1 default would reject non-ASCII error messages.
MYSQL_TABLE_OPTIONS: Final[dict[str, str]] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _identifier(length: int) -> TypeEngine[str]:
    # MariaDB compares strings case-insensitively by default: "A1" and "a1" would be one primary key
    # and keyset pagination would order differently from the other backends.  Ids are exact.
    return String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


# MariaDB's DATETIME drops fractions of a second by default, which would make "due at" comparisons
# and lease expiry coarser there than elsewhere.
_TIMESTAMP: Final[TypeEngine[datetime]] = DateTime().with_variant(
    mysql.DATETIME(fsp=6), "mysql", "mariadb"
)
# SQLite only autoincrements an INTEGER PRIMARY KEY, not a BIGINT one.
_BIG_ID: Final[TypeEngine[int]] = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


metadata: Final = Base.metadata


def _states_check(states: Sequence[str]) -> CheckConstraint:
    listed = ", ".join(f"'{s}'" for s in states)
    return CheckConstraint(f"state IN ({listed})", name="state")


class SyncCursorRow(Base):
    __tablename__ = "sync_cursor"
    __table_args__ = (CheckConstraint("id = 1", name="singleton"), MYSQL_TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    #: hex of the HMAC key behind every fingerprint this ledger holds or shows (core.fingerprint)
    fingerprint_key: Mapped[str | None] = mapped_column(String(64))
    #: the last time the outbox went back (ports.ledger.OutboxRewind); all NULL if it never did
    rewound_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    rewound_from_event_id: Mapped[int | None] = mapped_column(BigInteger)
    rewound_newest_event_id: Mapped[int | None] = mapped_column(BigInteger)
    rewind_applied_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)


class AppointmentRow(Base):
    __tablename__ = "appointment"
    __table_args__ = (
        _states_check(APPOINTMENT_STATES),
        Index("ix_appointment_state_next_attempt_at", "state", "next_attempt_at"),
        # what the ids of a re-read outbox window are checked against (sync.rewind)
        Index("ix_appointment_last_event_id", "last_event_id"),
        MYSQL_TABLE_OPTIONS,
    )

    appointment_id: Mapped[str] = mapped_column(_identifier(96), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger)
    applied_event_id: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reason: Mapped[str | None] = mapped_column(String(TEXT_LIMIT))
    next_attempt_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    session_id: Mapped[int | None] = mapped_column(BigInteger)
    host_external_id: Mapped[str | None] = mapped_column(_identifier(64))
    created_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    updated_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    parked_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    #: the managed session's time (UTC), as SecureVideo last showed it: what outcomes select by
    schedule_ts: Mapped[datetime | None] = mapped_column(_TIMESTAMP, index=True)
    #: the ExternalSessionId the appointment got: SecureVideo cannot change it, so it is kept
    external_session_id: Mapped[str | None] = mapped_column(_identifier(128))
    #: the ScheduleTs syncd last sent (UTC): a change is the EHR's time versus this one
    sent_schedule_ts: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    #: keyed digests (never content) of the newest row read and of the row last applied
    last_digest: Mapped[str | None] = mapped_column(String(64))
    applied_digest: Mapped[str | None] = mapped_column(String(64))


class OperationRow(Base):
    __tablename__ = "operation"
    __table_args__ = (
        _states_check(OPERATION_STATES),
        Index("ix_operation_appointment_id", "appointment_id"),
        Index("ix_operation_state", "state"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    appointment_id: Mapped[str] = mapped_column(_identifier(96))
    event_id: Mapped[int] = mapped_column(BigInteger)
    op: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[int | None] = mapped_column(BigInteger)
    participant_external_id: Mapped[str | None] = mapped_column(_identifier(64))
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(String(TEXT_LIMIT))
    started_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    finished_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    pid: Mapped[int | None] = mapped_column(Integer)


class ParticipantRow(Base):
    __tablename__ = "participant"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    appointment_id: Mapped[str] = mapped_column(_identifier(96), primary_key=True)
    #: Fingerprints.participant(the external id), never the raw id (often an MRN)
    external_id: Mapped[str] = mapped_column(_identifier(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(BigInteger)
    participation_id: Mapped[int | None] = mapped_column(BigInteger)
    packet_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    # What syncd sent (PHI as fingerprints only); deliver NULL: not known (before 0008).
    deliver: Mapped[str | None] = mapped_column(String(1))
    securevideo_user_id: Mapped[str | None] = mapped_column(_identifier(64))
    name_fp: Mapped[str | None] = mapped_column(String(16))
    email_fp: Mapped[str | None] = mapped_column(String(16))
    sms_fp: Mapped[str | None] = mapped_column(String(16))
    time_zone_windows_id: Mapped[str | None] = mapped_column(String(64))
    svc_id: Mapped[int | None] = mapped_column(Integer)
    deposit: Mapped[str | None] = mapped_column(String(32))


class LeaseRow(Base):
    __tablename__ = "lease"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    name: Mapped[str] = mapped_column(_identifier(64), primary_key=True)
    holder: Mapped[str] = mapped_column(_identifier(128))
    expires_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    updated_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    #: the holder's machine and process, and that process's per-start identity (boot id and
    #: start time): what lets a process on the same machine tell that the holder is dead
    host: Mapped[str | None] = mapped_column(_identifier(80))
    pid: Mapped[int | None] = mapped_column(Integer)
    process_start: Mapped[str | None] = mapped_column(_identifier(64))
    #: when this holder took the lease; renewals keep it
    acquired_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)


class SessionOutcomeRow(Base):
    """What SecureVideo reports about an appointment's managed session (billing values)."""

    __tablename__ = "session_outcome"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    appointment_id: Mapped[str] = mapped_column(_identifier(96), primary_key=True)
    session_id: Mapped[int] = mapped_column(BigInteger, index=True)
    host_external_id: Mapped[str | None] = mapped_column(_identifier(64))
    schedule_ts: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    schedule_type: Mapped[str | None] = mapped_column(String(16))
    billable_ts: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    duration_minutes: Mapped[int | None] = mapped_column(Integer)
    wait_time: Mapped[int | None] = mapped_column(Integer)
    billable_status_cd: Mapped[str | None] = mapped_column(String(16))
    final_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    changed_at: Mapped[datetime] = mapped_column(_TIMESTAMP)


class ParticipantOutcomeRow(Base):
    """What SecureVideo reports about one managed participant of an appointment's session."""

    __tablename__ = "participant_outcome"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    appointment_id: Mapped[str] = mapped_column(_identifier(96), primary_key=True)
    participant_external_id: Mapped[str] = mapped_column(_identifier(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(BigInteger)
    participation_id: Mapped[int | None] = mapped_column(BigInteger)
    rsvp: Mapped[str | None] = mapped_column(String(16))
    connection_ts: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    changed_at: Mapped[datetime] = mapped_column(_TIMESTAMP)


class JoinLinkRow(Base):
    """A guest's join URL (its connect code: a credential) while the session is active, for the
    EHR to read through the ``guest_join_link`` view; only with ``SYNCD_LINKS__ENABLED``."""

    __tablename__ = "join_link"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    appointment_id: Mapped[str] = mapped_column(_identifier(96), primary_key=True)
    participant_external_id: Mapped[str] = mapped_column(_identifier(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(BigInteger)
    participation_id: Mapped[int] = mapped_column(BigInteger)
    join_url: Mapped[str] = mapped_column(String(500))
    changed_at: Mapped[datetime] = mapped_column(_TIMESTAMP)


class Hl7InboxRow(Base):
    """An accepted HL7 scheduling message: the whole appointment row the engine plans from."""

    __tablename__ = "hl7_inbox"
    __table_args__ = (
        # the newest message of an appointment, and its older ones to supersede
        Index("ix_hl7_inbox_appointment_id", "appointment_id", "message_at"),
        Index("ix_hl7_inbox_superseded_at", "superseded_at"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    #: MSH-10: a resent message is known by it
    control_id: Mapped[str] = mapped_column(_identifier(199), unique=True)
    appointment_id: Mapped[str] = mapped_column(_identifier(96))
    message_type: Mapped[str] = mapped_column(String(8))
    #: MSH-7 in UTC: a message older than the newest stored for its appointment is ignored
    message_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    received_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    superseded_at: Mapped[datetime | None] = mapped_column(_TIMESTAMP)
    #: the outbox contract's columns as JSON: patient data, kept only while it is needed
    row_json: Mapped[str] = mapped_column(Text)


class DriftRow(Base):
    """One kind of drift standing on an appointment (``syncd.core.drift``): ids and times only."""

    __tablename__ = "drift"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    appointment_id: Mapped[str] = mapped_column(_identifier(96), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[int | None] = mapped_column(BigInteger)
    detected_at: Mapped[datetime] = mapped_column(_TIMESTAMP)


cursor_table: Final = cast(Table, SyncCursorRow.__table__)
appointment_table: Final = cast(Table, AppointmentRow.__table__)
operation_table: Final = cast(Table, OperationRow.__table__)
participant_table: Final = cast(Table, ParticipantRow.__table__)
lease_table: Final = cast(Table, LeaseRow.__table__)
session_outcome_table: Final = cast(Table, SessionOutcomeRow.__table__)
participant_outcome_table: Final = cast(Table, ParticipantOutcomeRow.__table__)
join_link_table: Final = cast(Table, JoinLinkRow.__table__)
hl7_inbox_table: Final = cast(Table, Hl7InboxRow.__table__)
drift_table: Final = cast(Table, DriftRow.__table__)
