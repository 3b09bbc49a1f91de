"""The HL7 inbox repository: one contract on the in-memory ledger and on SQLite, PG and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from syncd.adapters.ledger import SqlLedger
from syncd.ports.inbox import INBOX_EVENT_BASE, SUPERSEDED_KEPT_SECONDS, InboxMessage
from syncd.ports.ledger import Ledger
from syncd.testing.ledger import InMemoryLedger

T0 = datetime(2030, 1, 7, 9, 0)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("memory"),
        pytest.param("sqlite"),
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def db_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def ledger(db_kind: str, request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if db_kind == "memory":
        yield InMemoryLedger()
        return
    request.getfixturevalue("ledger_sessions")  # empties the module's migrated database
    engine: Engine = request.getfixturevalue("ledger_engine")
    sql = SqlLedger(engine)
    yield sql
    sql.dispose()


def message(control_id: str, appointment_id: str = "A1", minute: int = 0) -> InboxMessage:
    return InboxMessage(
        control_id=control_id,
        appointment_id=appointment_id,
        message_type="S12",
        message_at=T0 + timedelta(minutes=minute),
        row=f'{{"appointment_id": "{appointment_id}", "control": "{control_id}"}}',
    )


def accept(ledger: Ledger, msg: InboxMessage, now: datetime = T0) -> tuple[str, int | None]:
    with ledger.begin() as tx:
        return tx.inbox.accept(msg, now=now)


def test_stored_once_by_control_id(ledger: Ledger) -> None:
    outcome, first = accept(ledger, message("M1"))
    assert outcome == "stored" and first is not None
    assert accept(ledger, message("M1")) == ("duplicate", None)
    with ledger.begin() as tx:
        assert tx.inbox.count() == 1
        assert tx.inbox.rows([first, first + 99]) == {first: message("M1").row}


def test_an_older_message_of_the_appointment_is_stale(ledger: Ledger) -> None:
    assert accept(ledger, message("M2", minute=5))[0] == "stored"
    assert accept(ledger, message("M1", minute=1)) == ("stale", None)
    # the same MSH-7 is not older; another appointment is not compared
    assert accept(ledger, message("M3", minute=5))[0] == "stored"
    assert accept(ledger, message("M4", "A2", minute=0))[0] == "stored"
    with ledger.begin() as tx:
        assert tx.inbox.count() == 3


def test_superseded_rows_are_kept_a_while_then_deleted(ledger: Ledger) -> None:
    _, first = accept(ledger, message("M1", minute=0))
    _, second = accept(ledger, message("M2", minute=1), now=T0)
    assert first is not None and second is not None and second > first
    kept = T0 + timedelta(seconds=SUPERSEDED_KEPT_SECONDS)
    accept(ledger, message("M3", "A2"), now=kept)
    with ledger.begin() as tx:
        assert set(tx.inbox.rows([first, second])) == {first, second}
    later = kept + timedelta(seconds=1)
    accept(ledger, message("M4", "A3"), now=later)
    with ledger.begin() as tx:
        assert set(tx.inbox.rows([first, second])) == {second}
        assert tx.inbox.count() == 3


def test_a_rolled_back_accept_stores_nothing(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.begin() as tx:
        tx.inbox.accept(message("M1"), now=T0)
        raise RuntimeError("the commit never happens")
    assert accept(ledger, message("M1"))[0] == "stored"


def test_an_outbox_rewind_keeps_inbox_event_ids(ledger: Ledger) -> None:
    with ledger.begin() as tx:
        tx.appointments.note_events({"E1": 5, "H1": INBOX_EVENT_BASE + 1}, now=T0)
        assert tx.appointments.rebase_events(T0) == 2
    with ledger.begin() as tx:
        assert tx.appointments.last_events(["E1", "H1"]) == {"E1": 0, "H1": INBOX_EVENT_BASE + 1}
