"""The outbox reader's and the ledger repositories' SQL, compiled for SQL Server.

No SQL Server runs here.  Instead every statement the reader and the repositories issue is captured
while they work (against SQLite), compiled with SQLAlchemy's ``mssql`` dialect — the one
``mssql+pyodbc`` uses — and checked for what T-SQL rejects.  A raw ``text()`` statement would
bypass the dialect altogether, so none is allowed outside a dialect switch (the migration locks).

Capturing listens to SQLAlchemy's statement events, and a watched SQLite ledger runs every statement
through SQLAlchemy; unwatched, it hands its prepared statements to the driver itself.  The last
test shows, with the driver's own trace, that both paths send SQLite the same statements.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from harness import guest, row, world
from sqlalchemy.sql.elements import ClauseElement, TextClause

from syncd.adapters.ledger import (
    ParticipantOutcomeRecord,
    ParticipantRecord,
    SessionOutcomeRecord,
    SqlLedger,
    create_ledger_engine,
    migrate,
)
from syncd.adapters.ledger.appointments import SqlAppointments
from syncd.adapters.ledger.cursor import SqlCursor
from syncd.adapters.ledger.drift import SqlDrift
from syncd.adapters.ledger.inbox import SqlInbox
from syncd.adapters.ledger.leases import SqlLeases
from syncd.adapters.ledger.links import SqlLinks
from syncd.adapters.ledger.operations import SqlOperations
from syncd.adapters.ledger.participants import SqlParticipants
from syncd.adapters.ledger.visits import SqlVisits
from syncd.adapters.outbox import OutboxReader
from syncd.ports.inbox import InboxMessage
from syncd.ports.ledger import DriftRecord, LeaseHolder, LedgerTransaction
from syncd.ports.links import JoinLinkRecord

#: the dialect mssql+pyodbc compiles with; creating it needs no driver
SQL_SERVER = sa.dialects.registry.load("mssql")()

T = datetime(2027, 2, 10, 9, 0)
T0 = datetime(2027, 2, 1, 12, 0)

#: what T-SQL does not accept, as it would show in the compiled text
FORBIDDEN: dict[str, re.Pattern[str]] = {
    "LIMIT (T-SQL has TOP and OFFSET ... FETCH)": re.compile(r"\bLIMIT\b"),
    "EXISTS in a select list (T-SQL allows it only in WHERE or CASE)": re.compile(
        r"^\s*SELECT\s+(?:NOT\s+)?EXISTS\b", re.IGNORECASE
    ),
    "RETURNING (T-SQL has OUTPUT)": re.compile(r"\bRETURNING\b"),
    "another dialect's upsert": re.compile(r"ON CONFLICT|ON DUPLICATE KEY"),
    "a boolean literal (T-SQL has no boolean type)": re.compile(r"\b(?:TRUE|FALSE)\b", re.I),
    "|| concatenation (T-SQL uses +)": re.compile(r"\|\|"),
    "ILIKE": re.compile(r"\bILIKE\b"),
    "NULLS FIRST/LAST": re.compile(r"\bNULLS\s+(?:FIRST|LAST)\b"),
}

#: Public methods that issue no SQL of their own.
NO_SQL = {"OutboxReader.dispose"}

#: The ledger's repositories, one per property of the port's transaction.
REPOSITORIES: tuple[type, ...] = (
    SqlCursor,
    SqlAppointments,
    SqlOperations,
    SqlParticipants,
    SqlLeases,
    SqlVisits,
    SqlLinks,
    SqlInbox,
    SqlDrift,
)


@dataclasses.dataclass
class Issued:
    caller: str
    statement: ClauseElement


class StatementLog:
    """Every statement executed on any engine from inside an OutboxReader or ledger repository
    method, with the outermost such method (the public entry point)."""

    def __init__(self) -> None:
        self.issued: list[Issued] = []
        #: every reader/repository method that was on the stack of some statement
        self.methods: set[str] = set()

    def __call__(self, conn: sa.Connection, clause: Any, *_: Any) -> None:
        on_stack: list[str] = []
        frame: types.FrameType | None = sys._getframe(1)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, (OutboxReader, *REPOSITORIES)):
                on_stack.append(f"{type(owner).__name__}.{frame.f_code.co_name}")
            frame = frame.f_back
        if on_stack and isinstance(clause, ClauseElement):
            self.issued.append(Issued(on_stack[-1], clause))
            self.methods.update(on_stack)


@pytest.fixture
def statements() -> Iterator[StatementLog]:
    log = StatementLog()
    sa.event.listen(sa.Engine, "before_execute", log)
    try:
        yield log
    finally:
        sa.event.remove(sa.Engine, "before_execute", log)


def problems_on_sql_server(statement: ClauseElement) -> list[str]:
    if isinstance(statement, TextClause):
        return ["raw text() SQL, which no dialect translates"]
    compiled = str(statement.compile(dialect=SQL_SERVER))
    return [what for what, pattern in FORBIDDEN.items() if pattern.search(compiled)]


def sample(cls: type[Any], **values: Any) -> Any:
    """An instance of a record dataclass with a plain value for every field not given."""
    plain: dict[type, object] = {str: "x-1", int: 1, datetime: T0}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
            values[f.name] = next(plain[k] for k in kinds if k in plain)
    return cls(**values)


def exercise_everything(tmp_path: Path) -> None:
    """The engine's own passes first (the statements it really issues), then each repository
    method the passes do not reach."""
    with world(tmp_path, pass_retry_budget_seconds=0) as w:
        w.write(row("A1", starts=T, guests=[guest(1), guest(2)]))
        w.write(row("A2", starts=T, guests=[guest(3, full_name="Z")]))  # parked
        w.emulator.faults.drop_after_apply_next(1, methods=("POST",))  # intent → resolved
        w.run_pass()
        w.write(row("A1", starts=T + timedelta(hours=1), guests=[guest(1, email="n@phi.example")]))
        w.write(row("A3", starts=T, status="fulfilled", guests=[guest(4)]))  # skipped
        w.run_pass()
        w.emulator.faults.fail_next(10, status=503, methods=("PUT",))  # deferred to a later pass
        w.write(row("A1", starts=T + timedelta(hours=2), guests=[guest(1)]))
        w.run_pass()
        w.write(row("A1", starts=T, status="cancelled", guests=[guest(1)]))
        w.run_pass()
        w.app()  # a restart checks the re-read window's ids against the ledger's
        w.run_pass()
        with w.ehr.engine.begin() as conn:  # the outbox restored from a backup: ids from 1
            conn.execute(sa.delete(w.ehr.table))
        w.write({**row("A3", starts=T, status="fulfilled", guests=[guest(4)]), "event_id": 1})
        w.write(row("A4", starts=T, guests=[guest(5)]))
        assert w.run_pass().rewound

        app = w.apps[-1]
        assert app.outbox.check_shape() == []
        assert app.outbox.max_event_id() is not None
        every_ledger_method(app.ledger)


def every_ledger_method(ledger: SqlLedger) -> None:
    """Each repository method once or twice (both branches of an upsert), at fixed times."""
    now = T0
    with ledger.begin() as tx:
        ports = [n for n, v in vars(LedgerTransaction).items() if isinstance(v, property)]
        assert {type(getattr(tx, n)) for n in ports} == set(REPOSITORIES)
        tx.appointments.counts_by_state()
        tx.appointments.parked()
        tx.appointments.noted()
        tx.appointments.oldest_pending_since()
        tx.appointments.pending_count()
        tx.operations.open_intents()
        tx.operations.of_appointment("A1")
        tx.appointments.get("A1")
        tx.appointments.note_events({"A9": 100}, now=now)
        tx.appointments.set_session("A9", session_id=7, host_external_id="prov-001", now=now)
        op = tx.operations.record_intent(
            appointment_id="A9",
            event_id=100,
            op="create",
            session_id=None,
            participant_external_id=None,
            attempt=1,
            now=now,
            pid=1,
        )
        tx.operations.record_result(op, state="applied", detail=None, session_id=7, now=now)
        tx.operations.resolve_open("A9", now)
        tx.participants.upsert(
            "A9",
            "pat-9",
            session_id=7,
            participation_id=70,
            packet_id=None,
            now=now,
        )
        tx.participants.upsert(
            "A9",
            "pat-9",
            session_id=7,
            participation_id=71,
            packet_id=None,
            now=now,
        )
        tx.participants.put(
            ParticipantRecord("A9", "g-9", 7, 73, -1, now, deliver="E", deposit="20.00")
        )
        tx.appointments.record_applied(
            "A9", external_session_id="ehr-A9", sent_schedule_ts=now, now=now
        )
        tx.appointments.held(10)
        tx.participants.of_appointments(["A9"])
        tx.participants.delete("A9", "pat-9")
        tx.participants.delete_all_of("A9")
        tx.operations.with_open(["A9"])
        tx.participants.replace(
            "A9",
            [
                ParticipantRecord(
                    appointment_id="A9",
                    external_id="pat-9",
                    session_id=7,
                    participation_id=72,
                    packet_id=None,
                    updated_at=now,
                )
            ],
        )
        tx.appointments.schedule_retry(
            "A9", attempts=1, next_attempt_at=now, reason="r", now=now, event_id=100
        )
        tx.appointments.due(now, 10, after_appointment_id="A0")
        tx.appointments.retrying(10)
        tx.appointments.park("A9", reason="r", attempts=2, now=now, event_id=100)
        tx.appointments.unpark("A9", now)
        tx.appointments.park("A9", reason="r", now=now)
        tx.appointments.unpark_all(now)
        tx.appointments.mark_skipped("A9", event_id=100, reason="status noshow", now=now)
        tx.appointments.mark_synced(
            "A9",
            event_id=100,
            session_id=7,
            host_external_id="prov-001",
            now=now,
        )
        tx.cursor.advance(tx.cursor.get() + 1)
        tx.leases.try_acquire("daemon", LeaseHolder("host-1"), 30)
        tx.leases.try_acquire("daemon", LeaseHolder("host-2"), 30)
        tx.leases.current("daemon")
        tx.leases.take_over("daemon", "host-1", LeaseHolder("host-2"), 30)
        tx.leases.release("daemon", "host-1")
        tx.visits.put_session(sample(SessionOutcomeRecord, appointment_id="A9"))
        tx.visits.put_session(sample(SessionOutcomeRecord, appointment_id="A9"))
        tx.visits.put_participant(sample(ParticipantOutcomeRecord, appointment_id="A9"))
        tx.visits.sessions(["A9"])
        tx.visits.participants(["A9"])
        tx.visits.targets()
        tx.visits.appointments_of_sessions([7])
        tx.visits.booked_between(now - timedelta(days=1), now + timedelta(days=1))
        tx.visits.delete_participants("A9", ["x-1"])
        tx.links.put(sample(JoinLinkRecord, appointment_id="A9"))
        tx.links.put(sample(JoinLinkRecord, appointment_id="A9"))
        tx.links.all()
        tx.links.delete("A9", "x-1")
        message = InboxMessage("M-1", "H1", "S12", datetime(2030, 1, 1), "{}")
        _, inbox_id = tx.inbox.accept(message, now=datetime(2030, 1, 1, 0, 1))
        tx.inbox.accept(message, now=datetime(2030, 1, 1, 0, 2))  # a resend: the duplicate path
        tx.inbox.rows([inbox_id or 0])
        tx.inbox.count()
        drifted = DriftRecord("A9", "cancelled", 9001, datetime(2030, 1, 1))
        tx.drift.note(drifted)
        tx.drift.note(drifted)  # already on file
        tx.drift.of_appointments(["A9"])
        tx.drift.current()
        tx.drift.count()
        tx.drift.clear("A9", ["cancelled"])
        tx.drift.clear("A9")


def public_methods(*classes: type) -> set[str]:
    return {
        f"{cls.__name__}.{name}"
        for cls in classes
        for name, _ in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_every_statement_compiles_for_sql_server_without_dialect_only_syntax(
    statements: StatementLog, tmp_path: Path
) -> None:
    exercise_everything(tmp_path)

    missed = public_methods(OutboxReader, *REPOSITORIES) - NO_SQL - statements.methods
    assert not missed, f"exercise these in exercise_everything(): {sorted(missed)}"
    bad = {
        f"{i.caller}: {problem}"
        for i in statements.issued
        for problem in problems_on_sql_server(i.statement)
    }
    assert not bad, "\n".join(sorted(bad))
    # the paging query reaches SQL Server as TOP, in event order
    (refs,) = {
        str(i.statement.compile(dialect=SQL_SERVER))
        for i in statements.issued
        if i.caller == "OutboxReader.refs_after"
    }
    assert refs.startswith("SELECT TOP ")
    assert refs.endswith("ORDER BY appointment_outbox.event_id")
    # the same statements compile for the other supported dialects as well
    for name in ("postgresql", "mysql", "sqlite"):
        dialect = sa.dialects.registry.load(name)()
        for i in statements.issued:
            i.statement.compile(dialect=dialect)


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        (sa.select(sa.select(1).where(sa.column("a") == 1).exists()), "EXISTS in a select list"),
        (sa.select(sa.column("a")).limit(5), None),
        (sa.text("SELECT 1 LIMIT 1"), "raw text() SQL"),
        (sa.select(sa.literal_column("TRUE")), "a boolean literal"),
    ],
    ids=["select-exists", "limit-becomes-top", "text", "true"],
)
def test_the_check_finds_what_sql_server_rejects(statement: Any, problem: str | None) -> None:
    """The check above can fail: each construct T-SQL rejects is reported."""
    found = problems_on_sql_server(statement)
    if problem is None:
        assert found == []
    else:
        assert any(p.startswith(problem) for p in found), found


def traced_sqlite_ledger(path: Path, *, fast_path: bool) -> tuple[SqlLedger, list[str]]:
    """A migrated SQLite ledger, and the list its driver appends every statement it runs to."""
    engine = create_ledger_engine(f"sqlite:///{path}")
    trace: list[str] = []

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(trace.append)

    # A pool event, not a statement listener: it leaves the ledger's choice of path alone.
    sa.event.listen(engine, "connect", on_connect)
    ledger = SqlLedger(engine, fast_path=fast_path)
    migrate(engine)
    trace.clear()
    return ledger, trace


def test_the_sqlite_fast_path_sends_the_driver_the_statements_checked_above(
    tmp_path: Path,
) -> None:
    """The check above sees what SQLAlchemy runs; the fast path must run nothing else.

    SQLite's trace shows each statement as the driver ran it, values bound in: the fast path's
    trace must equal SQLAlchemy's, watched as above or with the fast path off.
    """
    traces: dict[str, list[str]] = {}
    ran: dict[str, int] = {}
    for name, fast_path, watched in (
        ("fast", True, False),
        ("watched", True, True),
        ("sqlalchemy", False, False),
    ):
        ledger, trace = traced_sqlite_ledger(tmp_path / f"{name}.db", fast_path=fast_path)
        log = StatementLog()
        if watched:
            sa.event.listen(ledger.engine, "before_execute", log)
        try:
            every_ledger_method(ledger)
        finally:
            ledger.dispose()
        # The cursor's row carries the wall-clock time it moved at, the lease's the database's
        # clock; SQLAlchemy always runs both.
        traces[name] = [
            sql for sql in trace if "sync_cursor" not in sql and not re.search(r"\blease\b", sql)
        ]
        ran[name] = ledger.fast_path.ran if ledger.fast_path is not None else 0
        if watched:
            assert {i.caller for i in log.issued} >= {"SqlAppointments.note_events"}

    assert ran["fast"] > 0  # the fast path did run statements itself
    assert ran["watched"] == ran["sqlalchemy"] == 0
    assert any(sql.startswith("INSERT INTO operation") for sql in traces["fast"])
    assert traces["fast"] == traces["watched"] == traces["sqlalchemy"]
