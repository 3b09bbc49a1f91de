"""An outbox that goes back (restored from a backup): noticed, and nothing lost — on the fakes.

The engine with its default settings (a 1,000-event re-read window) over the in-memory outbox,
ledger and SecureVideo.  Each scenario syncs some appointments, replaces the outbox with a
"backup" whose event ids start again at 1, writes a reschedule, a cancel and a new appointment
after it, and checks that exactly those three are applied, once each, and that the unchanged
appointments get no call.  The end-to-end versions over HTTP and real databases are in
``test_sync_e2e``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog

from syncd.core.fingerprint import Fingerprints
from syncd.ports.outbox import OutboxRow
from syncd.sync.passes import Synchronizer, SyncOptions
from syncd.sync.report import PassReport
from syncd.sync.rewind import canonical, rewind_problem, row_digest
from syncd.testing.clock import ManualClock
from syncd.testing.gateway import FakeSecureVideo
from syncd.testing.ledger import InMemoryLedger
from syncd.testing.outbox import InMemoryOutbox

NOW = datetime(2030, 3, 4, 9, 0)
STARTS = NOW + timedelta(days=2)


def booked(
    appointment_id: str, starts_at: datetime = STARTS, status: str = "booked"
) -> dict[str, Any]:
    guests = [{"external_id": f"pat-{appointment_id}", "full_name": "Test Patient", "deliver": "N"}]
    return {
        "appointment_id": appointment_id,
        "provider_external_id": "prov-001",
        "status": status,
        "starts_at": starts_at,
        "topic": None,
        "is_recorded": False,
        "participants": json.dumps(guests),
        "created_at": NOW,
    }


@dataclass
class Fakes:
    outbox: InMemoryOutbox
    ledger: InMemoryLedger
    securevideo: FakeSecureVideo
    clock: ManualClock
    engines: list[Synchronizer]

    def engine(self) -> Synchronizer:
        """A fresh process on the same ledger, outbox and SecureVideo, with default options."""
        engine = Synchronizer(
            outbox=self.outbox,
            ledger=self.ledger,
            gateway=self.securevideo,
            clock=self.clock,
            options=SyncOptions(concurrency=1, windows_zone=lambda _zone: "UTC"),
        )
        self.engines.append(engine)
        return engine

    def run_pass(self) -> PassReport:
        if not self.engines:
            self.engine()
        return self.engines[-1].run_pass()

    def mutations(self) -> list[tuple[str, str | None]]:
        return [
            (c.kind, c.external_session_id or _aid(self, c.session_id))
            for c in self.securevideo.mutations()
        ]

    def states(self) -> dict[str, str]:
        with self.ledger.begin() as tx:
            return {
                aid: r.state
                for aid, r in tx.appointments.get_many(["a1", "a2", "a3", "a4", "a5"]).items()
            }


def _aid(fakes: Fakes, session_id: int | None) -> str | None:
    if session_id is None:
        return None
    return fakes.securevideo.session(session_id).external_session_id


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    made = Fakes(InMemoryOutbox(), InMemoryLedger(), FakeSecureVideo(), ManualClock(NOW), [])
    yield made
    for engine in made.engines:
        engine.close()


def synced_before_the_restore(fakes: Fakes, first_id: int, updates: int = 0) -> None:
    """a1, a2, a3 synced from event ``first_id`` on, then ``updates`` rows that change nothing
    remote (the same content again) to move the cursor on."""
    for n, aid in enumerate(("a1", "a2", "a3")):
        fakes.outbox.append(booked(aid) | {"event_id": first_id + n})
    for n in range(updates):
        fakes.outbox.append(booked("a3") | {"event_id": first_id + 3 + n})
    assert fakes.run_pass().outcomes["synced"] == 3
    fakes.securevideo.calls.clear()


def restore_with_three_changes(fakes: Fakes, backup: tuple[str, ...] = ("a1", "a2", "a3")) -> None:
    """The backup (as it was synced), then a reschedule of a1, a cancel of a2 and a new a4."""
    fakes.outbox.restore(
        [booked(aid) for aid in backup]
        + [
            booked("a1", STARTS + timedelta(hours=3)),
            booked("a2", status="cancelled"),
            booked("a4"),
        ]
    )


def assert_the_three_changes_applied_once(fakes: Fakes, report: PassReport) -> None:
    assert report.rewound
    assert sorted(fakes.mutations()) == [("cancel", "a2"), ("create", "a4"), ("reschedule", "a1")]
    # a3 is unchanged: it was never due, so it met no call at all (not even a read)
    assert sum(report.outcomes.values()) == 3
    assert fakes.states() == {"a1": "synced", "a2": "synced", "a3": "synced", "a4": "synced"}
    fakes.securevideo.calls.clear()
    again = fakes.run_pass()
    assert not again.rewound and sum(again.outcomes.values()) == 0
    assert fakes.securevideo.calls == []


def test_cursor_far_ahead_of_a_restored_outbox(fakes: Fakes) -> None:
    synced_before_the_restore(fakes, first_id=4999)
    restore_with_three_changes(fakes)
    planned = {
        p.appointment_id: [op["op"] for op in p.operations] for p in fakes.engines[-1].preview()
    }
    assert planned == {"a1": ["reschedule"], "a2": ["cancel"], "a3": [], "a4": ["create"]}
    assert fakes.securevideo.mutations() == []
    with structlog.testing.capture_logs() as logs:
        report = fakes.run_pass()
    assert_the_three_changes_applied_once(fakes, report)
    (event,) = [e for e in logs if e["event"] == "outbox_rewound"]
    assert event["reason"] == "newest_below_cursor"
    assert (event["cursor"], event["newest_event_id"], event["log_level"]) == (5001, 6, "error")
    with fakes.ledger.begin() as tx:
        cursor, rewind = tx.cursor.position()
    assert cursor == 6
    assert rewind is not None and (rewind.from_event_id, rewind.newest_event_id) == (5001, 6)
    assert rewind.applied_at == NOW  # the pass left nothing pending
    assert report.rewind == rewind and rewind_problem(rewind) is None


def test_cursor_inside_the_reread_window(fakes: Fakes) -> None:
    synced_before_the_restore(fakes, first_id=1, updates=5)  # cursor at 8, window 1,000
    restore_with_three_changes(fakes)
    assert_the_three_changes_applied_once(fakes, fakes.run_pass())


def test_an_event_id_reused_by_another_appointment_beyond_the_cursor(fakes: Fakes) -> None:
    """a3 came after the backup; the rows written after the restore reach past the old cursor."""
    synced_before_the_restore(fakes, first_id=1)  # cursor at 3
    restore_with_three_changes(fakes, backup=("a1", "a2"))  # ids 1..5: 3 is a1's now, not a3's
    report = fakes.run_pass()
    assert report.rewound
    assert sorted(fakes.mutations()) == [("cancel", "a2"), ("create", "a4"), ("reschedule", "a1")]
    assert fakes.states()["a3"] == "synced"  # not in the restored outbox: left as it is


def test_a_new_process_notices_an_id_that_carries_other_content(fakes: Fakes) -> None:
    synced_before_the_restore(fakes, first_id=1)
    # restored with a1's row at id 1 as it was before a reschedule the backup missed the undo of
    fakes.outbox.restore(
        [booked("a1", STARTS + timedelta(hours=1)), booked("a2"), booked("a3"), booked("a4")]
    )
    fakes.engine()  # a restart: this process never read the old ids
    report = fakes.run_pass()
    assert report.rewound
    assert sorted(fakes.mutations()) == [("create", "a4"), ("reschedule", "a1")]


def test_a_growing_outbox_or_a_restart_is_no_rewind(fakes: Fakes) -> None:
    synced_before_the_restore(fakes, first_id=1, updates=2)
    fakes.outbox.append(booked("a4"))
    assert not fakes.run_pass().rewound
    fakes.engine()  # a restart re-reads the window and finds every id as it was
    report = fakes.run_pass()
    assert not report.rewound and report.rewind is None
    with fakes.ledger.begin() as tx:
        assert tx.cursor.position() == (6, None)


def test_an_emptied_outbox_is_no_rewind_until_rows_come_again(fakes: Fakes) -> None:
    synced_before_the_restore(fakes, first_id=1)
    fakes.outbox.restore([])
    assert not fakes.run_pass().rewound
    fakes.outbox.append(booked("a4"))
    report = fakes.run_pass()
    assert report.rewound
    assert fakes.mutations() == [("create", "a4")]


def test_ledgers_without_digests_see_no_rewind() -> None:
    """A ledger upgraded to 0007 has no digests yet: the same ids with their old rows are fine."""
    outbox, ledger = InMemoryOutbox(), InMemoryLedger()
    for aid in ("a1", "a2"):
        outbox.append(booked(aid))
    with ledger.begin() as tx:
        tx.appointments.note_events({"a1": 1, "a2": 2}, now=NOW)
        for aid, event_id in (("a1", 1), ("a2", 2)):
            tx.appointments.mark_synced(
                aid, event_id=event_id, session_id=None, host_external_id=None, now=NOW
            )
        tx.cursor.advance(2)
    engine = Synchronizer(
        outbox=outbox,
        ledger=ledger,
        gateway=FakeSecureVideo(),
        clock=ManualClock(NOW),
        options=SyncOptions(windows_zone=lambda _zone: "UTC"),
    )
    try:
        report = engine.run_pass()
    finally:
        engine.close()
    assert not report.rewound and sum(report.outcomes.values()) == 0


def test_the_rewind_stays_on_health_until_the_reread_is_applied(fakes: Fakes) -> None:
    synced_before_the_restore(fakes, first_id=4999)
    restore_with_three_changes(fakes)
    fakes.securevideo.refuse_credentials()  # nothing can be applied this pass
    report = fakes.run_pass()
    assert report.rewound and report.rewind is not None and report.rewind.applied_at is None
    problem = rewind_problem(report.rewind)
    assert problem is not None and "went back" in problem and "5001" in problem
    fakes.securevideo.refuse_credentials(False)
    later = fakes.run_pass()
    assert not later.rewound
    assert later.rewind is not None and later.rewind.applied_at is not None
    assert sorted(fakes.mutations()) == [("cancel", "a2"), ("create", "a4"), ("reschedule", "a1")]


def test_the_digest_is_of_the_content_not_the_event_or_when_it_was_written() -> None:
    fingerprints = Fingerprints(bytes(range(32)))
    row = booked("a1") | {"event_id": 7}
    same = booked("a1") | {"event_id": 1, "created_at": NOW + timedelta(days=9)}
    other = booked("a1", STARTS + timedelta(minutes=1)) | {"event_id": 7}
    digest = row_digest(fingerprints, OutboxRow(7, row))
    assert digest == row_digest(fingerprints, OutboxRow(1, same))
    assert digest != row_digest(fingerprints, OutboxRow(7, other))
    # typed, so that 1 and "1" or a missing value and "None" differ
    assert canonical({"topic": 1}) != canonical({"topic": "1"})
    assert canonical({"topic": None}) != canonical({"topic": "None"})
    # keyed: nothing about the row can be guessed from it without the ledger's key
    assert digest != row_digest(Fingerprints(bytes(32)), OutboxRow(7, row))
    assert "Test Patient" not in digest and len(digest) == 16


def test_an_instance_that_led_before_the_rewind_does_not_call_it_again(fakes: Fakes) -> None:
    """Two instances on one ledger: the one that synced before the restore leads again after the
    other handled the rewind; its memory of the old cursor and ids must not make a second one."""
    before = fakes.engine()
    synced_before_the_restore(fakes, first_id=4999)
    restore_with_three_changes(fakes)
    fakes.engine()  # the other instance takes the lead and handles the rewind
    assert fakes.run_pass().rewound
    fakes.securevideo.calls.clear()
    fakes.outbox.append(booked("a5"))
    with structlog.testing.capture_logs() as logs:
        report = before.run_pass()
    assert not report.rewound
    assert not [e for e in logs if e["event"] == "outbox_rewound"]
    assert fakes.mutations() == [("create", "a5")]
