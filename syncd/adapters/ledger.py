"""The ledger: syncd's own small database of progress, on SQLite, PostgreSQL or MariaDB.

It makes every step idempotent: the outbox cursor, which event of each appointment is pending and
which was applied, the intent → outcome journal of every remote call, and what SecureVideo will not
tell us later (the session we manage, the packet ids we sent).  It holds ids, states, attempt
counts, redacted reasons, timestamps and one-way fingerprints — never patient data.

The schema belongs to Alembic (``migrations/``); :func:`migrate` brings a database to the head
revision.  Every timestamp is naive UTC.  :class:`LedgerRepository` works inside a transaction the
caller frames (``with sessions.begin() as s: LedgerRepository(s)...``): it never begins or commits.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Connection,
    CursorResult,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    Result,
    String,
    Table,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.types import TypeEngine

from syncd.ports.ledger import (
    APPLIED,
    APPOINTMENT_STATES,
    INTENT,
    OPEN_OPERATION_STATES,
    OPERATION_STATES,
    PARKED,
    PENDING,
    RESOLVED,
    SKIPPED,
    SYNCED,
    TEXT_LIMIT,
    AppointmentRecord,
    BookedAppointment,
    OperationRecord,
    OutcomeTarget,
    ParticipantOutcomeRecord,
    ParticipantRecord,
    SessionOutcomeRecord,
)

__all__ = [
    "APPOINTMENT_STATES",
    "OPERATION_STATES",
    "AppointmentRecord",
    "BookedAppointment",
    "LedgerRepository",
    "OperationRecord",
    "OutcomeTarget",
    "ParticipantOutcomeRecord",
    "ParticipantRecord",
    "SessionOutcomeRecord",
    "create_ledger_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_at_head",
    "make_sessionmaker",
    "metadata",
    "migrate",
    "script_location",
]


#: Keeps IN lists well below every backend's bind-parameter limit (SQLite's is the lowest).
IN_CHUNK: Final = 500

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


class AppointmentRow(Base):
    __tablename__ = "appointment"
    __table_args__ = (
        _states_check(APPOINTMENT_STATES),
        Index("ix_appointment_state_next_attempt_at", "state", "next_attempt_at"),
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
    external_id: Mapped[str] = mapped_column(_identifier(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(BigInteger)
    participation_id: Mapped[int | None] = mapped_column(BigInteger)
    packet_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(_TIMESTAMP)


class LeaseRow(Base):
    __tablename__ = "lease"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    name: Mapped[str] = mapped_column(_identifier(64), primary_key=True)
    holder: Mapped[str] = mapped_column(_identifier(128))
    expires_at: Mapped[datetime] = mapped_column(_TIMESTAMP)
    updated_at: Mapped[datetime] = mapped_column(_TIMESTAMP)


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


# The repository speaks Core to the tables, never loads ORM objects: an identity map would keep
# serving rows that a bulk UPDATE has since changed.
_cursor_t = cast(Table, SyncCursorRow.__table__)
_appt_t = cast(Table, AppointmentRow.__table__)
_op_t = cast(Table, OperationRow.__table__)
_part_t = cast(Table, ParticipantRow.__table__)
_lease_t = cast(Table, LeaseRow.__table__)

# --- the hot path's statements, built once ---------------------------------------------------
# Every appointment costs a few journal writes; building each statement anew (``.values(**kw)``)
# cost more CPU than running it.  These are constructed once and executed with parameters, so
# SQLAlchemy compiles each a single time.  Bind names differ from column names, as SET requires.


class _Prepared:
    """A hot-path statement, compiled once per dialect and set of keys.

    On the SQLite ledger it runs straight on the driver's cursor with SQLAlchemy's own SQL text
    and bind processors: the same statement and stored values, without the ~40 µs per execution
    that building an execution context costs — more than SQLite takes to run it.
    """

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan | None] = {}

    def plan(self, dialect: Dialect, keys: tuple[str, ...]) -> _Plan | None:
        """None when the statement needs more than named values (SQLAlchemy then runs it)."""
        key = (dialect.name, keys)
        try:
            return self._plans[key]
        except KeyError:
            pass
        compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
        plan: _Plan | None = None
        names = compiled.positiontup
        # Positional values only: no IN-list expansion, no Python-side defaults to compute.
        simple = not (
            compiled.literal_execute_params or compiled.insert_prefetch or compiled.update_prefetch
        )
        if names is not None and simple:
            binds = compiled.binds
            if all(n in keys or not binds[n].required for n in names):
                plan = _Plan(
                    compiled.string,
                    tuple(
                        (
                            n,
                            binds[n].effective_value,
                            binds[n].type.dialect_impl(dialect).bind_processor(dialect),
                        )
                        for n in names
                    ),
                )
        self._plans[key] = plan
        return plan


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    #: per positional parameter: its name, its value when not given, its bind processor
    params: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]

    def values(self, given: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, default, process in self.params:
            value = given.get(name, default)
            out.append(value if process is None or value is None else process(value))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class _Written:
    """What a statement run on the driver's cursor tells: rows touched, an INSERT's new key."""

    rowcount: int
    inserted_primary_key: tuple[Any, ...] | None


_INSERT_APPOINTMENT = _Prepared(insert(_appt_t))
# The event guard in the WHERE keeps this right even if another writer got there first.
_RENEW_APPOINTMENT = _Prepared(
    update(_appt_t)
    .where(
        _appt_t.c.appointment_id == bindparam("b_id"),
        _appt_t.c.last_event_id < bindparam("b_event"),
    )
    .values(
        last_event_id=bindparam("b_event"),
        state=PENDING,
        attempts=0,
        reason=None,
        next_attempt_at=None,
        parked_at=None,
        updated_at=bindparam("b_at"),
    )
)
_INSERT_INTENT = _Prepared(insert(_op_t))
_CLOSE_OPERATION_STATEMENT = (
    update(_op_t)
    .where(_op_t.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), detail=bindparam("b_detail"), finished_at=bindparam("b_at"))
)
_CLOSE_OPERATION = _Prepared(_CLOSE_OPERATION_STATEMENT)
_CLOSE_CREATE = _Prepared(_CLOSE_OPERATION_STATEMENT.values(session_id=bindparam("b_session_id")))
_SET_SESSION = _Prepared(
    update(_appt_t)
    .where(_appt_t.c.appointment_id == bindparam("b_aid"))
    .values(
        session_id=bindparam("b_session_id"),
        host_external_id=bindparam("b_host"),
        updated_at=bindparam("b_at"),
    )
)
_FORGET_SESSION = _Prepared(
    update(_appt_t)
    .where(
        _appt_t.c.appointment_id == bindparam("b_aid"),
        _appt_t.c.session_id == bindparam("b_session_id"),
    )
    .values(session_id=None, host_external_id=None, updated_at=bindparam("b_at"))
)
_DELETE_PARTICIPANTS_OF = _Prepared(
    delete(_part_t).where(_part_t.c.appointment_id == bindparam("b_aid"))
)
_INSERT_PARTICIPANT = _Prepared(insert(_part_t))
_RESOLVE_OPEN = (
    update(_op_t)
    .where(_op_t.c.appointment_id == bindparam("b_aid"), _op_t.c.state.in_(OPEN_OPERATION_STATES))
    .values(state=RESOLVED, finished_at=bindparam("b_at"))
)


def _settle_statement(columns: tuple[str, ...], *, guarded: bool) -> _Prepared:
    c = _appt_t.c
    where = [c.appointment_id == bindparam("b_aid")]
    if guarded:
        where.append(c.last_event_id <= bindparam("b_event"))
    values: dict[str, Any] = {name: bindparam(f"b_{name}") for name in columns}
    values["updated_at"] = bindparam("b_updated_at")
    if guarded:
        for name in ("state", "attempts", "reason", "next_attempt_at", "parked_at"):
            values[name] = bindparam(f"b_{name}")
    return _Prepared(update(_appt_t).where(*where).values(**values))


_SYNCED_COLUMNS: tuple[str, ...] = (
    "applied_event_id",
    "session_id",
    "host_external_id",
    "schedule_ts",
)
_SKIPPED_COLUMNS: tuple[str, ...] = ("applied_event_id",)
_SETTLE: dict[tuple[tuple[str, ...], bool], _Prepared] = {
    (cols, guarded): _settle_statement(cols, guarded=guarded)
    for cols in (_SYNCED_COLUMNS, _SKIPPED_COLUMNS)
    for guarded in (True, False)
}
_sess_out_t = cast(Table, SessionOutcomeRow.__table__)
_part_out_t = cast(Table, ParticipantOutcomeRow.__table__)

_CURSOR_ID: Final = 1


_R = TypeVar("_R")


def _records(cls: type[_R], rows: Result[Any]) -> list[_R]:
    return [cls(**row._mapping) for row in rows]


def _utc(moment: datetime) -> datetime:
    """Naive UTC, whatever the caller passed: aware values are converted, naive ones trusted."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:TEXT_LIMIT]


def _chunks(items: Collection[str]) -> Iterator[list[str]]:
    ordered = list(dict.fromkeys(items))
    for start in range(0, len(ordered), IN_CHUNK):
        yield ordered[start : start + IN_CHUNK]


# --- the repository ------------------------------------------------------------------------------


class LedgerRepository:
    """Ledger reads and writes inside the caller's transaction.

    Methods that change one appointment raise :class:`LookupError` when the ledger does not know it
    (every appointment enters through :meth:`note_events`).
    """

    def __init__(self, session: Session | Connection, *, direct: bool = False) -> None:
        """``direct``: run the prepared hot-path statements on the driver's cursor (the SQLite
        ledger's shared connection)."""
        self._s = session
        self._direct = direct and isinstance(session, Connection)

    def _run(
        self,
        statement: Any,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> CursorResult[Any] | _Written:
        if isinstance(statement, _Prepared):
            if self._direct and params:
                written = self._run_direct(statement, params)
                if written is not None:
                    return written
            statement = statement.statement
        # Core DML through the Session always yields a CursorResult; the Session's signature
        # just doesn't say so.
        return cast(CursorResult[Any], self._s.execute(statement, params))

    def _run_direct(
        self, statement: _Prepared, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> _Written | None:
        connection = cast(Connection, self._s)
        dispatch = connection.dispatch
        if dispatch.before_execute or dispatch.before_cursor_execute:
            return None  # someone watches the statements: let SQLAlchemy show them
        many = not isinstance(params, Mapping)
        rows: Sequence[Mapping[str, Any]] = (
            cast(Sequence[Mapping[str, Any]], params) if many else [cast(Mapping[str, Any], params)]
        )
        dialect = connection.dialect
        plan = statement.plan(dialect, tuple(sorted(rows[0])))
        if plan is None:
            return None
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if many:
                cursor.executemany(plan.sql, [plan.values(r) for r in rows])
            else:
                cursor.execute(plan.sql, plan.values(rows[0]))
            return _Written(cursor.rowcount, None if many else (cursor.lastrowid,))
        except dialect.loaded_dbapi.Error as err:
            raise _driver_error(plan.sql, err, dialect) from err
        finally:
            cursor.close()

    # --- outbox cursor ---------------------------------------------------------------------

    def cursor(self) -> int:
        value = self._s.execute(
            select(_cursor_t.c.last_event_id).where(_cursor_t.c.id == _CURSOR_ID)
        ).scalar_one_or_none()
        return 0 if value is None else int(value)

    def set_cursor(self, event_id: int, *, now: datetime | None = None) -> None:
        """Move the cursor forward to ``event_id``; never backwards."""
        stamp = _utc(now) if now is not None else _utcnow()
        moved = self._run(
            update(_cursor_t)
            .where(_cursor_t.c.id == _CURSOR_ID, _cursor_t.c.last_event_id < event_id)
            .values(last_event_id=event_id, updated_at=stamp)
        ).rowcount
        if moved or self._exists(_cursor_t.c.id == _CURSOR_ID):
            return
        # The migration seeds the row; this covers a table emptied by hand.  The UPDATE above
        # already opened the transaction, which SQLite's driver needs for a correct SAVEPOINT.
        try:
            with self._s.begin_nested():
                self._run(
                    insert(_cursor_t).values(
                        id=_CURSOR_ID, last_event_id=event_id, updated_at=stamp
                    )
                )
        except IntegrityError:
            self.set_cursor(event_id, now=stamp)

    # --- appointments ------------------------------------------------------------------------

    def last_events(self, appointment_ids: Collection[str]) -> dict[str, int]:
        """The newest event id the ledger has seen for each known appointment."""
        out: dict[str, int] = {}
        for chunk in _chunks(appointment_ids):
            rows = self._s.execute(
                select(_appt_t.c.appointment_id, _appt_t.c.last_event_id).where(
                    _appt_t.c.appointment_id.in_(chunk)
                )
            )
            out.update({aid: int(ev) for aid, ev in rows})
        return out

    def note_events(
        self,
        events: Mapping[str, int],
        *,
        now: datetime,
    ) -> int:
        """Record the newest outbox event of each appointment; returns how many now need work.

        A new appointment enters ``pending``.  A known one with an older event becomes ``pending``
        afresh — attempts, reason and back-off cleared, un-parked.  Equal or older event ids change
        nothing.  The count is of appointments inserted or moved to a newer event.
        """
        if not events:
            return 0
        now = _utc(now)
        known = self.last_events(events.keys())
        fresh = [
            {
                "appointment_id": aid,
                "last_event_id": ev,
                "state": PENDING,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for aid, ev in events.items()
            if aid not in known
        ]
        newer = [
            {"b_id": aid, "b_event": ev}
            for aid, ev in events.items()
            if aid in known and ev > known[aid]
        ]
        if fresh:
            self._run(_INSERT_APPOINTMENT, fresh)
        if newer:
            self._run(_RENEW_APPOINTMENT, [row | {"b_at": now} for row in newer])
        return len(fresh) + len(newer)

    def due(
        self, now: datetime, limit: int, after_appointment_id: str | None = None
    ) -> list[AppointmentRecord]:
        """Pending appointments whose back-off has passed, by id, after ``after_appointment_id``."""
        c = _appt_t.c
        query = select(_appt_t).where(
            c.state == PENDING,
            or_(c.next_attempt_at.is_(None), c.next_attempt_at <= _utc(now)),
        )
        if after_appointment_id is not None:
            query = query.where(c.appointment_id > after_appointment_id)
        return _records(
            AppointmentRecord, self._s.execute(query.order_by(c.appointment_id).limit(limit))
        )

    def get(self, appointment_id: str) -> AppointmentRecord | None:
        return self.get_many([appointment_id]).get(appointment_id)

    def get_many(self, appointment_ids: Collection[str]) -> dict[str, AppointmentRecord]:
        out: dict[str, AppointmentRecord] = {}
        for chunk in _chunks(appointment_ids):
            rows = self._s.execute(select(_appt_t).where(_appt_t.c.appointment_id.in_(chunk)))
            out.update({r.appointment_id: r for r in _records(AppointmentRecord, rows)})
        return out

    def mark_synced(
        self,
        appointment_id: str,
        *,
        event_id: int,
        session_id: int | None,
        host_external_id: str | None,
        now: datetime,
        schedule_ts: datetime | None = None,
    ) -> bool:
        """SecureVideo matches ``event_id``.  False when a newer event keeps it ``pending``.

        ``schedule_ts`` is the managed session's time as SecureVideo shows it (None without one).
        """
        applied = {
            "applied_event_id": event_id,
            "session_id": session_id,
            "host_external_id": host_external_id,
            "schedule_ts": None if schedule_ts is None else _utc(schedule_ts),
        }
        return self._settle(appointment_id, event_id, SYNCED, applied, reason=None, now=now)

    def mark_skipped(
        self, appointment_id: str, *, event_id: int, reason: str, now: datetime
    ) -> bool:
        """``event_id`` needs nothing from SecureVideo (fulfilled, no-show, outside its window).

        False when a newer event keeps the appointment ``pending``.
        """
        applied = {"applied_event_id": event_id}
        return self._settle(appointment_id, event_id, SKIPPED, applied, reason=reason, now=now)

    def _settle(
        self,
        appointment_id: str,
        event_id: int,
        state: str,
        applied: dict[str, Any],
        *,
        reason: str | None,
        now: datetime,
    ) -> bool:
        now = _utc(now)
        columns = tuple(applied)
        params = {f"b_{name}": value for name, value in applied.items()}
        params |= {"b_aid": appointment_id, "b_updated_at": now}
        # One atomic guarded UPDATE: a newer event noted meanwhile (by another transaction) must
        # not be buried under this older event's final state.
        guarded = params | {
            "b_event": event_id,
            "b_state": state,
            "b_attempts": 0,
            "b_reason": _clip(reason),
            "b_next_attempt_at": None,
            "b_parked_at": None,
        }
        if self._run(_SETTLE[columns, True], guarded).rowcount:
            return True
        # What was done remotely is still true, and the newer event's plan starts from it.
        if not self._run(_SETTLE[columns, False], params).rowcount:
            raise _unknown(appointment_id)
        return False

    def schedule_retry(
        self,
        appointment_id: str,
        *,
        attempts: int,
        next_attempt_at: datetime,
        reason: str,
        now: datetime,
        event_id: int | None = None,
    ) -> bool:
        """Leave the appointment ``pending`` until ``next_attempt_at``.

        With ``event_id``, a newer event noted meanwhile wins: its fresh attempt count and
        immediate due time are kept and this returns False.
        """
        return self._guarded(
            appointment_id,
            event_id,
            state=PENDING,
            attempts=attempts,
            next_attempt_at=_utc(next_attempt_at),
            reason=_clip(reason),
            updated_at=_utc(now),
        )

    def park(
        self,
        appointment_id: str,
        *,
        reason: str,
        attempts: int | None = None,
        now: datetime,
        event_id: int | None = None,
    ) -> bool:
        """Stop trying until a newer event arrives or an operator un-parks it.

        With ``event_id``, a newer event noted meanwhile wins: it stays ``pending`` and this
        returns False.
        """
        now = _utc(now)
        values: dict[str, Any] = {
            "state": PARKED,
            "reason": _clip(reason),
            "next_attempt_at": None,
            "parked_at": now,
            "updated_at": now,
        }
        if attempts is not None:
            values["attempts"] = attempts
        return self._guarded(appointment_id, event_id, **values)

    def _guarded(self, appointment_id: str, event_id: int | None, **values: Any) -> bool:
        c = _appt_t.c
        query = update(_appt_t).where(c.appointment_id == appointment_id)
        if event_id is not None:
            query = query.where(c.last_event_id <= event_id)
        if self._run(query.values(**values)).rowcount:
            return True
        if not self._exists(c.appointment_id == appointment_id):
            raise _unknown(appointment_id)
        return False

    def unpark(self, appointment_id: str, now: datetime) -> bool:
        """Make a parked appointment ``pending`` again, attempts from zero.  False if not parked."""
        return bool(self._unpark(_appt_t.c.appointment_id == appointment_id, now))

    def unpark_all(self, now: datetime) -> int:
        return self._unpark(None, now)

    def _unpark(self, which: ColumnElement[bool] | None, now: datetime) -> int:
        query = update(_appt_t).where(_appt_t.c.state == PARKED)
        if which is not None:
            query = query.where(which)
        return self._run(
            query.values(
                state=PENDING,
                attempts=0,
                reason=None,
                next_attempt_at=None,
                parked_at=None,
                updated_at=_utc(now),
            )
        ).rowcount

    def set_session(
        self,
        appointment_id: str,
        *,
        session_id: int | None,
        host_external_id: str | None,
        now: datetime,
    ) -> None:
        """Record the session syncd manages, as soon as a create or adopt succeeded."""
        params = {
            "b_aid": appointment_id,
            "b_session_id": session_id,
            "b_host": host_external_id,
            "b_at": _utc(now),
        }
        changed = self._run(_SET_SESSION, params).rowcount
        if not changed:
            raise _unknown(appointment_id)

    def forget_session(self, appointment_id: str, session_id: int, *, now: datetime) -> bool:
        """The managed session was cancelled: forget it, if it is still the one on file.

        False when the ledger manages another session (or none) for this appointment."""
        params = {"b_aid": appointment_id, "b_session_id": session_id, "b_at": _utc(now)}
        return bool(self._run(_FORGET_SESSION, params).rowcount)

    # --- the operation journal ------------------------------------------------------------

    def record_intent(
        self,
        *,
        appointment_id: str,
        event_id: int,
        op: str,
        session_id: int | None,
        participant_external_id: str | None,
        attempt: int,
        now: datetime,
        pid: int | None,
    ) -> int:
        """Journal a remote call before it is sent; returns the operation id."""
        result = self._run(
            _INSERT_INTENT,
            {
                "appointment_id": appointment_id,
                "event_id": event_id,
                "op": op,
                "session_id": session_id,
                "participant_external_id": participant_external_id,
                "state": INTENT,
                "attempt": attempt,
                "started_at": _utc(now),
                "pid": pid,
            },
        )
        key = result.inserted_primary_key
        assert key is not None  # a single-row INSERT always reports its key
        return int(key[0])

    def record_outcome(
        self,
        op_id: int,
        *,
        state: str,
        detail: str | None,
        session_id: int | None = None,
        now: datetime,
    ) -> None:
        """Close an intent: ``applied``, ``failed``, ``ambiguous`` or ``resolved``.

        ``session_id`` fills in the session a create produced; None keeps what the intent said.
        """
        if state not in OPERATION_STATES or state == INTENT:
            raise ValueError(f"not an operation outcome: {state!r}")
        params = {"b_id": op_id, "b_state": state, "b_detail": _clip(detail), "b_at": _utc(now)}
        statement = _CLOSE_OPERATION
        if session_id is not None:
            statement = _CLOSE_CREATE
            params["b_session_id"] = session_id
        if not self._run(statement, params).rowcount:
            raise LookupError(f"operation {op_id} is not in the ledger")

    def open_intents(self) -> list[OperationRecord]:
        """Calls that may or may not have reached SecureVideo (``intent`` or ``ambiguous``)."""
        query = select(_op_t).where(_op_t.c.state.in_(OPEN_OPERATION_STATES)).order_by(_op_t.c.id)
        return _records(OperationRecord, self._s.execute(query))

    def operations(self, appointment_id: str) -> list[OperationRecord]:
        """The journal of one appointment, oldest first."""
        query = select(_op_t).where(_op_t.c.appointment_id == appointment_id).order_by(_op_t.c.id)
        return _records(OperationRecord, self._s.execute(query))

    def with_open_operations(self, appointment_ids: Collection[str]) -> set[str]:
        """Which of these appointments have calls whose outcome is unknown (one query a batch)."""
        out: set[str] = set()
        for chunk in _chunks(appointment_ids):
            rows = self._s.execute(
                select(_op_t.c.appointment_id)
                .where(
                    _op_t.c.appointment_id.in_(chunk),
                    _op_t.c.state.in_(OPEN_OPERATION_STATES),
                )
                .distinct()
            )
            out.update(aid for (aid,) in rows)
        return out

    def resolve_open(self, appointment_id: str, now: datetime) -> int:
        """Close an appointment's open calls once its remote state was re-read and re-planned."""
        return self._run(_RESOLVE_OPEN, {"b_aid": appointment_id, "b_at": _utc(now)}).rowcount

    # --- participants ---------------------------------------------------------------------

    def participants(
        self, appointment_ids: Collection[str]
    ) -> dict[str, dict[str, ParticipantRecord]]:
        """Per appointment asked for (possibly empty), its participants by external id."""
        out: dict[str, dict[str, ParticipantRecord]] = {aid: {} for aid in appointment_ids}
        for chunk in _chunks(appointment_ids):
            rows = self._s.execute(select(_part_t).where(_part_t.c.appointment_id.in_(chunk)))
            for record in _records(ParticipantRecord, rows):
                out[record.appointment_id][record.external_id] = record
        return out

    def upsert_participant(
        self,
        appointment_id: str,
        external_id: str,
        *,
        session_id: int,
        participation_id: int | None,
        packet_id: int | None,
        now: datetime,
    ) -> None:
        values = {
            "session_id": session_id,
            "participation_id": participation_id,
            "packet_id": packet_id,
            "updated_at": _utc(now),
        }
        c = _part_t.c
        # Portable UPDATE-then-INSERT: one appointment is only ever worked on by one worker.
        changed = self._run(
            update(_part_t)
            .where(c.appointment_id == appointment_id, c.external_id == external_id)
            .values(**values)
        ).rowcount
        if not changed:
            self._run(
                insert(_part_t).values(
                    appointment_id=appointment_id, external_id=external_id, **values
                )
            )

    def delete_participant(self, appointment_id: str, external_id: str) -> None:
        self._run(
            delete(_part_t).where(
                _part_t.c.appointment_id == appointment_id, _part_t.c.external_id == external_id
            )
        )

    def delete_participants_of(self, appointment_id: str) -> None:
        self._run(_DELETE_PARTICIPANTS_OF, {"b_aid": appointment_id})

    def replace_participants(
        self,
        appointment_id: str,
        participants: Sequence[ParticipantRecord],
        *,
        clear: bool = True,
    ) -> None:
        """All of an appointment's participants at once (after a create): one DELETE, one INSERT.

        ``clear=False`` skips the DELETE when the caller knows none are on file."""
        if clear:
            self.delete_participants_of(appointment_id)
        if participants:
            self._run(
                _INSERT_PARTICIPANT,
                [
                    {
                        "appointment_id": appointment_id,
                        "external_id": p.external_id,
                        "session_id": p.session_id,
                        "participation_id": p.participation_id,
                        "packet_id": p.packet_id,
                        "updated_at": _utc(p.updated_at),
                    }
                    for p in participants
                ],
            )

    # --- reporting ------------------------------------------------------------------------

    def counts_by_state(self) -> dict[str, int]:
        """Appointments per state; every state is present, zeros included."""
        counts = dict.fromkeys(APPOINTMENT_STATES, 0)
        rows = self._s.execute(select(_appt_t.c.state, func.count()).group_by(_appt_t.c.state))
        counts.update({state: int(n) for state, n in rows})
        return counts

    def parked(self, limit: int = 100) -> list[AppointmentRecord]:
        """Parked appointments, longest parked first."""
        c = _appt_t.c
        query = (
            select(_appt_t)
            .where(c.state == PARKED)
            .order_by(c.parked_at, c.appointment_id)
            .limit(limit)
        )
        return _records(AppointmentRecord, self._s.execute(query))

    def oldest_pending_since(self) -> datetime | None:
        """When the longest-waiting pending appointment last got a newer row (naive UTC)."""
        query = select(func.min(_appt_t.c.updated_at)).where(_appt_t.c.state == PENDING)
        value: datetime | None = self._s.execute(query).scalar_one()
        return value

    def pending_count(self) -> int:
        """Appointments waiting for work, back-off or not."""
        query = select(func.count()).select_from(_appt_t).where(_appt_t.c.state == PENDING)
        return int(self._s.execute(query).scalar_one())

    # --- leases ---------------------------------------------------------------------------

    def try_acquire_lease(self, name: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
        """Take or renew the lease ``name`` for ``ttl_seconds``.  False while another holds it."""
        now = _utc(now)
        values = {"holder": holder, "expires_at": now + timedelta(seconds=ttl_seconds)}
        c = _lease_t.c
        # The WHERE is evaluated on the latest committed row (PostgreSQL re-checks after waiting
        # for a concurrent taker; InnoDB reads current rows for UPDATE): only one taker wins.
        taken = self._run(
            update(_lease_t)
            .where(c.name == name, or_(c.holder == holder, c.expires_at < now))
            .values(**values, updated_at=now)
        ).rowcount
        if taken:
            return True
        if self._exists(c.name == name):
            return False
        # A savepoint, because on PostgreSQL a failed INSERT would abort the caller's transaction.
        # The UPDATE above already opened the transaction, as SQLite's driver needs for SAVEPOINT.
        try:
            with self._s.begin_nested():
                self._run(insert(_lease_t).values(name=name, **values, updated_at=now))
        except IntegrityError:
            return False  # another process created it first
        return True

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up if ``holder`` has it.  Returns whether it did."""
        c = _lease_t.c
        return bool(self._run(delete(_lease_t).where(c.name == name, c.holder == holder)).rowcount)

    # --- visit outcomes -------------------------------------------------------------------

    def outcome_targets(self) -> list[OutcomeTarget]:
        """Managed sessions whose outcome is not final: the appointment's current session has no
        outcome row yet, or one that ``GET /history`` has not settled.  By appointment id."""
        a, o = _appt_t.c, _sess_out_t.c
        observed = case((o.session_id == a.session_id, o.schedule_ts), else_=None)
        query = (
            select(
                a.appointment_id,
                a.session_id,
                a.host_external_id,
                func.coalesce(a.schedule_ts, observed).label("schedule_ts"),
            )
            .select_from(_appt_t.outerjoin(_sess_out_t, o.appointment_id == a.appointment_id))
            .where(
                a.session_id.is_not(None),
                a.host_external_id.is_not(None),
                or_(o.appointment_id.is_(None), o.session_id != a.session_id, o.final_at.is_(None)),
            )
            .order_by(a.appointment_id)
        )
        return _records(OutcomeTarget, self._s.execute(query))

    def session_outcomes(self, appointment_ids: Collection[str]) -> dict[str, SessionOutcomeRecord]:
        out: dict[str, SessionOutcomeRecord] = {}
        for chunk in _chunks(appointment_ids):
            rows = self._s.execute(
                select(_sess_out_t).where(_sess_out_t.c.appointment_id.in_(chunk))
            )
            out.update({r.appointment_id: r for r in _records(SessionOutcomeRecord, rows)})
        return out

    def participant_outcomes(
        self, appointment_ids: Collection[str]
    ) -> dict[str, dict[str, ParticipantOutcomeRecord]]:
        """Per appointment asked for (possibly empty), its participants' outcomes by external id."""
        out: dict[str, dict[str, ParticipantOutcomeRecord]] = {a: {} for a in appointment_ids}
        for chunk in _chunks(appointment_ids):
            rows = self._s.execute(
                select(_part_out_t).where(_part_out_t.c.appointment_id.in_(chunk))
            )
            for r in _records(ParticipantOutcomeRecord, rows):
                out[r.appointment_id][r.participant_external_id] = r
        return out

    def put_session_outcome(self, record: SessionOutcomeRecord) -> None:
        """Insert or replace the appointment's session outcome row."""
        values = {k: getattr(record, k) for k in SessionOutcomeRecord.__slots__}
        key = {"appointment_id": values.pop("appointment_id")}
        self._upsert(_sess_out_t, key, values)

    def put_participant_outcome(self, record: ParticipantOutcomeRecord) -> None:
        """Insert or replace one participant outcome row."""
        values = {k: getattr(record, k) for k in ParticipantOutcomeRecord.__slots__}
        key = {
            "appointment_id": values.pop("appointment_id"),
            "participant_external_id": values.pop("participant_external_id"),
        }
        self._upsert(_part_out_t, key, values)

    def delete_participant_outcomes(
        self, appointment_id: str, participant_external_ids: Collection[str]
    ) -> int:
        c = _part_out_t.c
        deleted = 0
        for chunk in _chunks(participant_external_ids):
            deleted += self._run(
                delete(_part_out_t).where(
                    c.appointment_id == appointment_id, c.participant_external_id.in_(chunk)
                )
            ).rowcount
        return deleted

    def appointments_of_sessions(self, session_ids: Collection[int]) -> dict[int, str]:
        """The appointment each SecureVideo session belongs to, as far as the ledger knows: the
        current managed session, a session an applied create made, or one outcomes recorded."""
        wanted = sorted(set(session_ids))
        out: dict[int, str] = {}
        for start in range(0, len(wanted), IN_CHUNK):
            chunk = wanted[start : start + IN_CHUNK]
            a, op, o = _appt_t.c, _op_t.c, _sess_out_t.c
            queries = [
                select(op.session_id, op.appointment_id).where(
                    op.op == "create", op.state == APPLIED, op.session_id.in_(chunk)
                ),
                select(o.session_id, o.appointment_id).where(o.session_id.in_(chunk)),
                # Last, so the current managed session wins over any older record.
                select(a.session_id, a.appointment_id).where(a.session_id.in_(chunk)),
            ]
            for query in queries:
                out.update({int(sid): aid for sid, aid in self._s.execute(query)})
        return out

    def booked_between(self, start: datetime, end: datetime) -> list[BookedAppointment]:
        """Appointments with a managed session scheduled in ``[start, end)``, by time then id."""
        a, o = _appt_t.c, _sess_out_t.c
        same = o.session_id == a.session_id
        when = func.coalesce(a.schedule_ts, case((same, o.schedule_ts), else_=None))
        query = (
            select(
                a.appointment_id,
                a.session_id,
                when.label("schedule_ts"),
                case((same, o.billable_ts), else_=None).label("billable_ts"),
            )
            .select_from(_appt_t.outerjoin(_sess_out_t, o.appointment_id == a.appointment_id))
            .where(a.session_id.is_not(None), when >= _utc(start), when < _utc(end))
            .order_by(when, a.appointment_id)
        )
        return _records(BookedAppointment, self._s.execute(query))

    def _upsert(self, table: Table, key: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        where = [table.c[name] == value for name, value in key.items()]
        if self._run(update(table).where(*where).values(**values)).rowcount:
            return
        # A savepoint, because on PostgreSQL a failed INSERT would abort the caller's transaction;
        # the UPDATE above already opened the transaction, as SQLite's driver needs.
        try:
            with self._s.begin_nested():
                self._run(insert(table).values(**key, **values))
        except IntegrityError:
            # Another writer inserted it meanwhile (an operator's `syncd outcomes` beside the
            # daemon): both wrote what SecureVideo said, so the later update simply wins.
            self._run(update(table).where(*where).values(**values))

    # --- helpers --------------------------------------------------------------------------

    def _exists(self, condition: ColumnElement[bool]) -> bool:
        # Not ``SELECT EXISTS (...)``: T-SQL allows EXISTS only in a WHERE or a CASE.
        return self._s.execute(select(1).where(condition).limit(1)).first() is not None


def _unknown(appointment_id: str) -> LookupError:
    return LookupError(f"appointment {appointment_id!r} is not in the ledger")


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# --- engine and sessions ---------------------------------------------------------------------


def create_ledger_engine(url: str) -> Engine:
    """An engine for the ledger database at ``url`` (SQLite, PostgreSQL or MariaDB).

    Bound values stay out of logs and error messages; pooled connections are checked and renewed
    for a long-running daemon.  A SQLite file's directory is created; SQLite runs in WAL mode with
    a generous busy timeout, so the worker threads and a CLI can share it.
    """
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    connect_args: dict[str, Any] = {}
    if sqlite:
        connect_args["check_same_thread"] = False
        database = parsed.database or ""
        in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
        if not in_memory and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # InnoDB's default REPEATABLE READ gap-locks the empty range an UPDATE or DELETE finds no
        # row in: two workers upserting participants of different appointments then deadlock on
        # their INSERTs.  READ COMMITTED, PostgreSQL's default and what the repository's guarded
        # statements are written for, takes no such locks.
        options["isolation_level"] = "READ COMMITTED"
    engine = create_engine(
        parsed,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
        **options,
    )
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL survives a crash of the process (what the intent/outcome journal must
        # survive) without an fsync per commit; only an OS crash or power loss can lose the last
        # commits, and those are recovered by reading SecureVideo before acting, as after any
        # ambiguous answer.  FULL made every appointment cost three fsyncs.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # Records are copied out of rows anyway; expiring on commit would only cost reloads.
    return sessionmaker(bind=engine, expire_on_commit=False)


class SqlLedger:
    """The ledger database.  ``with ledger.begin() as tx:`` is one transaction, framed by the
    caller: it commits when the block ends and rolls back if it raises."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = make_sessionmaker(engine)
        # SQLite has one writer at a time; threads that collide wait in its busy handler, which
        # sleeps 1, 2, 5, 10… ms between tries.  Taking turns on a lock in this process instead
        # hands the database over at once (16 workers spent ~0.7 ms more CPU per appointment
        # than one did), and lets the turns share one connection: a pool checkout and return
        # per transaction cost more than the statements.  Other processes are still held off by
        # the busy timeout.  A server database keeps its pool and its concurrency.
        self._sqlite = engine.dialect.name == "sqlite"
        self._turn = threading.RLock()
        self._shared: Connection | None = None
        #: a transaction of the shared connection is open (in the thread holding the turn)
        self._open = False

    @contextmanager
    def begin(self) -> Iterator[SqlTransaction]:
        # A Core connection, not an ORM Session: the repository only runs Core statements, and
        # the Session's unit-of-work machinery cost more per statement than SQLite itself.
        if not self._sqlite:
            with self.engine.begin() as connection:
                yield SqlTransaction(LedgerRepository(connection))
            return
        with self._turn:
            if self._open:
                # A transaction inside another one of the same thread: its own connection.
                with self.engine.begin() as nested:
                    yield SqlTransaction(LedgerRepository(nested))
                return
            if self._shared is None or self._shared.closed or self._shared.invalidated:
                self._shared = self.engine.connect()
            connection = self._shared
            self._open = True
            try:
                yield SqlTransaction(LedgerRepository(connection, direct=True))
            except BaseException:
                _end(connection, commit=False)
                raise
            else:
                _end(connection, commit=True)
            finally:
                self._open = False

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        with self._turn:
            if self._shared is not None:
                self._shared.close()
                self._shared = None
        self.engine.dispose()


def _end(connection: Connection, *, commit: bool) -> None:
    """End the shared connection's transaction.

    The driver opened it on the first change (sqlite3 begins before any INSERT, UPDATE or
    DELETE); SQLAlchemy knows of it only if one of its own statements ran.  Framing each
    transaction with SQLAlchemy's ``begin()`` cost more than the statements run directly.
    """
    if connection.in_transaction():
        (connection.commit if commit else connection.rollback)()
        return
    driver = connection.connection.driver_connection
    dbapi = connection.dialect.loaded_dbapi
    try:
        (driver.commit if commit else driver.rollback)()  # type: ignore[union-attr]
    except dbapi.Error as err:
        if commit:
            driver.rollback()  # type: ignore[union-attr]
        raise _driver_error("COMMIT" if commit else "ROLLBACK", err, connection.dialect) from err


def _driver_error(sql: str, err: Exception, dialect: Dialect) -> StatementError:
    """A driver's error as SQLAlchemy would raise it, with the values hidden as the engine hides
    them: callers (the degraded-database handling) only know SQLAlchemy's exceptions."""
    return DBAPIError.instance(
        sql, None, err, dialect.loaded_dbapi.Error, hide_parameters=True, dialect=dialect
    )


# --- migrations --------------------------------------------------------------------------------


def script_location() -> Path:
    """Alembic's script directory: package ``syncd.migrations`` if installed, else the repo's."""
    try:
        spec = importlib.util.find_spec("syncd.migrations")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "migrations"


def _alembic_config(connection: Connection | None = None) -> Config:
    # No ini file, so Alembic never calls logging.config.fileConfig (which would disable syncd's
    # loggers).  The connection travels in attributes: no URL, so no "%" interpolation trap.
    config = Config()
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


#: Arbitrary but fixed: the PostgreSQL advisory lock and MariaDB named lock taken while migrating.
_MIGRATION_LOCK_KEY: Final = 0x5359_4E43_4400
_MIGRATION_LOCK_NAME: Final = "syncd.ledger.migrate"


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One connection, serialised against other migrators, atomic where the backend allows."""
    with engine.begin() as conn:
        backend = conn.dialect.name
        if backend == "sqlite":
            # sqlite3's legacy mode runs DDL outside any transaction: an explicit BEGIN makes the
            # migration all-or-nothing, and IMMEDIATE takes the write lock up front.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
        elif backend == "postgresql":
            # Replicas racing "upgrade head" is a known Alembic failure; this waits its turn.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            yield conn
        elif backend in ("mysql", "mariadb"):
            # MySQL DDL commits implicitly, so a session-level named lock instead of a transaction.
            got = conn.execute(text("SELECT GET_LOCK(:n, 600)"), {"n": _MIGRATION_LOCK_NAME})
            if got.scalar() != 1:
                raise RuntimeError("another process has been migrating the ledger for 10 minutes")
            try:
                yield conn
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": _MIGRATION_LOCK_NAME})
        else:
            yield conn


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the ledger schema to ``revision``."""
    with _migration_transaction(engine) as conn:
        command.upgrade(_alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the ledger schema to ``revision`` (``"base"`` drops every ledger table)."""
    with _migration_transaction(engine) as conn:
        command.downgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for a database Alembic never touched."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revisions found in {script_location()}")
    return head


def is_at_head(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


class _Cursor:
    def __init__(self, repo: LedgerRepository) -> None:
        self._repo = repo

    def get(self) -> int:
        return self._repo.cursor()

    def advance(self, event_id: int) -> None:
        self._repo.set_cursor(event_id)


class _Appointments:
    def __init__(self, repo: LedgerRepository) -> None:
        r = repo
        self.last_events = r.last_events
        self.note_events = r.note_events
        self.mark_synced = r.mark_synced
        self.due = r.due
        self.get = r.get
        self.get_many = r.get_many
        self.mark_skipped = r.mark_skipped
        self.schedule_retry = r.schedule_retry
        self.park = r.park
        self.unpark = r.unpark
        self.unpark_all = r.unpark_all
        self.set_session = r.set_session
        self.forget_session = r.forget_session
        self.counts_by_state = r.counts_by_state
        self.parked = r.parked
        self.oldest_pending_since = r.oldest_pending_since
        self.pending_count = r.pending_count
        self._repo = r


class _Operations:
    def __init__(self, repo: LedgerRepository) -> None:
        self.record_intent = repo.record_intent
        self.record_result = repo.record_outcome
        self.open_intents = repo.open_intents
        self.of_appointment = repo.operations
        self.with_open = repo.with_open_operations
        self.resolve_open = repo.resolve_open


class _Participants:
    def __init__(self, repo: LedgerRepository) -> None:
        self.of_appointments = repo.participants
        self.upsert = repo.upsert_participant
        self.delete = repo.delete_participant
        self.delete_all_of = repo.delete_participants_of
        self.replace = repo.replace_participants


class _Leases:
    def __init__(self, repo: LedgerRepository) -> None:
        self.try_acquire = repo.try_acquire_lease
        self.release = repo.release_lease


class _Visits:
    def __init__(self, repo: LedgerRepository) -> None:
        self.targets = repo.outcome_targets
        self.sessions = repo.session_outcomes
        self.participants = repo.participant_outcomes
        self.put_session = repo.put_session_outcome
        self.put_participant = repo.put_participant_outcome
        self.delete_participants = repo.delete_participant_outcomes
        self.appointments_of_sessions = repo.appointments_of_sessions
        self.booked_between = repo.booked_between


class SqlTransaction:
    """One transaction, through the port's small repositories."""

    def __init__(self, repo: LedgerRepository) -> None:
        self.repo = repo
        self.cursor = _Cursor(repo)
        self.appointments = _Appointments(repo)
        self.operations = _Operations(repo)
        self.participants = _Participants(repo)
        self.leases = _Leases(repo)
        self.visits = _Visits(repo)
