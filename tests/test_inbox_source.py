"""The HL7 inbox beside the outbox, on fakes: a stored message is a pending appointment at once,
and the engine's source answers inbox ids from the inbox and the rest from the outbox."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from syncd.ports.inbox import INBOX_EVENT_BASE, InboxMessage
from syncd.sync.inbox import CombinedSource, InboxWriter, NoOutbox
from syncd.testing.clock import ManualClock
from syncd.testing.ledger import InMemoryLedger
from syncd.testing.outbox import InMemoryOutbox

T0 = datetime(2030, 1, 7, 9, 0)


def message(control_id: str, appointment_id: str = "H1") -> InboxMessage:
    row = {"appointment_id": appointment_id, "status": "booked", "control": control_id}
    return InboxMessage(
        control_id=control_id,
        appointment_id=appointment_id,
        message_type="S12",
        message_at=T0,
        row=json.dumps(row),
    )


def test_a_stored_message_is_pending_under_an_inbox_event_id() -> None:
    ledger = InMemoryLedger()
    writer = InboxWriter(ledger, ManualClock(T0))
    assert writer.store(message("M1")) == "stored"
    assert writer.store(message("M1")) == "duplicate"
    with ledger.begin() as tx:
        record = tx.appointments.get("H1")
    assert record is not None and record.state == "pending"
    assert record.last_event_id > INBOX_EVENT_BASE


def test_a_failed_commit_is_not_stored_and_raises() -> None:
    ledger = InMemoryLedger()
    ledger.fail_next(RuntimeError("commit lost"), times=2, at="commit")
    writer = InboxWriter(ledger, ManualClock(T0))
    with pytest.raises(RuntimeError):
        writer.store(message("M1"))
    with ledger.begin() as tx:
        assert tx.inbox.count() == 0 and tx.appointments.get("H1") is None


def test_the_combined_source_keeps_the_ids_apart() -> None:
    ledger, outbox = InMemoryLedger(), InMemoryOutbox()
    outbox.append({"appointment_id": "E1", "status": "booked"})
    InboxWriter(ledger, ManualClock(T0)).store(message("M1"))
    with ledger.begin() as tx:
        inbox_event = tx.appointments.last_events(["H1"])["H1"]
    source = CombinedSource(outbox, ledger)
    assert [r.appointment_id for r in source.refs_after(0, 10)] == ["E1"]
    assert source.max_event_id() == 1
    rows = {r.event_id: r.values for r in source.rows([1, inbox_event, inbox_event + 1])}
    assert rows[1]["appointment_id"] == "E1"
    assert rows[inbox_event]["appointment_id"] == "H1"
    assert rows[inbox_event]["event_id"] == inbox_event
    assert set(rows) == {1, inbox_event}


def test_without_an_outbox_only_the_inbox_answers() -> None:
    ledger = InMemoryLedger()
    InboxWriter(ledger, ManualClock(T0)).store(message("M1"))
    source = CombinedSource(NoOutbox(), ledger)
    assert source.refs_after(0, 10) == [] and source.max_event_id() is None
    assert [r.values["appointment_id"] for r in source.rows([INBOX_EVENT_BASE + 1])] == ["H1"]
