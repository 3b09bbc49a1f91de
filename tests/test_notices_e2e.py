"""Notices per EHR change, end to end: outbox rows → syncd → the emulator, which counts every
e-mail and text SecureVideo would send (``syncd.emulator.notices``).

The target: exactly one notice per affected patient for a change a patient can see (the time, a
cancellation, being added or removed, their own contact details) and none for what they cannot
(topic, recording, a case-only name fix, a row re-sent unchanged, documents, the provider moving
the session).  A real rename is a removal and an addition (the API cannot rename), so it costs
that patient a cancellation and a new invitation: two, asserted as such.

Also here: the settle window (``SYNCD_SYNC__SETTLE_SECONDS``) on a hand-moved clock, and the
provider change by ``PUT /sessionhost`` with the account option on and off.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from harness import ZONE, World, guest, row, world

from syncd.runtime.app import App
from syncd.sync.passes import Synchronizer
from syncd.testing.clock import ManualClock

T = datetime(2027, 2, 10, 9, 0)  # naive, America/New_York
T_UTC = datetime(2027, 2, 10, 14, 0)


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as w:
        yield w


class Counter:
    """The notices sent since the last look."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.seen = 0

    def since(self) -> int:
        total = len(self.w.emulator.notices())
        new, self.seen = total - self.seen, total
        return new


def app_with(w: World, *, host_change: str = "auto", **sync: object) -> App:
    s = w.settings
    return w.app(
        securevideo={
            "base_url": s.securevideo.base_url,
            "api_key": "demo",
            "api_secret": "demo",
            "read_timeout": 2.0,
            "host_change": host_change,
        },
        sync=s.sync.model_dump() | sync,
    )


PATIENTS = [guest(1), guest(2, deliver="S")]


def booking(**changes: Any) -> dict[str, Any]:
    guests = changes.pop("guests", PATIENTS)
    return row("A1", starts=changes.pop("starts", T), guests=guests, **changes)


#: (what changed, the row after it, notices expected); each applied on top of the one before
CHANGES: list[tuple[str, dict[str, Any], int]] = [
    ("new booking, two patients (E and S)", booking(), 2),
    ("time moved", booking(starts=T + timedelta(hours=2)), 2),
    ("topic", booking(starts=T + timedelta(hours=2), topic="Other topic"), 0),
    (
        "recording",
        booking(starts=T + timedelta(hours=2), topic="Other topic") | {"is_recorded": True},
        0,
    ),
    (
        "case-only name fix",
        booking(
            starts=T + timedelta(hours=2),
            topic="Other topic",
            guests=[guest(1, full_name="ZELDA canary1"), guest(2, deliver="S")],
        )
        | {"is_recorded": True},
        0,
    ),
]


def later(**changes: Any) -> dict[str, Any]:
    """The booking after the changes above, with more."""
    guests = changes.pop("guests", [guest(1, full_name="ZELDA canary1"), guest(2, deliver="S")])
    return booking(starts=T + timedelta(hours=2), topic="Other topic", guests=guests) | {
        "is_recorded": True
    }


CHANGES += [
    ("the same row re-sent", later(), 0),
    (
        "documents (PacketId) of one patient",
        later(guests=[guest(1, full_name="ZELDA canary1", packet_id=0), guest(2, deliver="S")]),
        0,
    ),
    (
        "a patient added",
        later(
            guests=[
                guest(1, full_name="ZELDA canary1", packet_id=0),
                guest(2, deliver="S"),
                guest(3),
            ]
        ),
        1,
    ),
    (
        "a patient's e-mail",
        later(
            guests=[
                guest(1, full_name="ZELDA canary1", packet_id=0, email="new1@phi.example"),
                guest(2, deliver="S"),
                guest(3),
            ]
        ),
        1,
    ),
    (
        "a patient removed",
        later(
            guests=[
                guest(1, full_name="ZELDA canary1", packet_id=0, email="new1@phi.example"),
                guest(2, deliver="S"),
            ]
        ),
        1,
    ),
    (
        "a patient renamed (remove + add: cancellation and invitation)",
        later(
            guests=[
                guest(1, full_name="ZELDA canary1", packet_id=0, email="new1@phi.example"),
                guest(2, deliver="S", full_name="Zelda Renamed"),
            ]
        ),
        2,
    ),
]


def test_notices_per_ehr_change(w: World) -> None:
    w.emulator.state.host_change = True
    app_with(w)
    count = Counter(w)
    table: list[tuple[str, int]] = []
    final = CHANGES[-1][1]
    for what, changed, expected in CHANGES:
        w.write(changed)
        report = w.run_pass()
        assert report.clean, what
        table.append((what, count.since()))
        assert table[-1] == (what, expected)
    w.write(final | {"provider_external_id": "prov-002"})
    w.run_pass()
    table.append(("provider changed (moved: the patients keep their codes)", count.since()))
    assert w.emulator.calls_matching("PUT", "/sessionhost")
    w.write(final | {"provider_external_id": "prov-002", "status": "cancelled"})
    w.run_pass()
    table.append(("cancelled", count.since()))
    print("\nnotices per EHR change:\n" + "\n".join(f"  {n}  {what}" for what, n in table))
    assert table[-2:] == [
        ("provider changed (moved: the patients keep their codes)", 0),
        ("cancelled", 2),
    ]
    assert not any(n.repeat for n in w.emulator.notices())


def test_a_provider_change_moves_the_session_when_the_account_allows(w: World) -> None:
    w.emulator.state.host_change = True
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    (before,) = w.live("A1")
    count = Counter(w)
    count.since()
    w.write(row("A1", starts=T, provider="prov-002", guests=[guest(1)]))
    assert w.run_pass().clean
    (after,) = w.live("A1")
    assert (after.session_id, after.user_id) == (before.session_id, 1002)
    assert after.participants[1].connect_code == before.participants[1].connect_code
    assert count.since() == 0
    # Settled: the next pass reads the new host's list and makes no call.
    w.emulator.calls_clear()
    w.run_pass()
    assert w.emulator.mutating_calls() == []


def test_auto_falls_back_to_cancel_and_create_once_refused_and_remembers(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]), row("A2", starts=T, guests=[guest(2)]))
    w.run_pass()
    count = Counter(w)
    count.since()
    w.write(row("A1", starts=T, provider="prov-002", guests=[guest(1)]))
    assert w.run_pass().clean
    assert [c.status for c in w.emulator.calls_matching("PUT", "/sessionhost")] == [400]
    assert [s.user_id for s in w.live("A1")] == [1002]
    assert count.since() == 2  # the cancellation and the new invitation
    w.emulator.calls_clear()
    w.write(row("A2", starts=T, provider="prov-002", guests=[guest(2)]))
    assert w.run_pass().clean
    assert w.emulator.calls_matching("PUT", "/sessionhost") == []
    assert [c.method for c in w.emulator.mutating_calls()] == ["DELETE", "POST"]


def test_move_parks_when_refused_and_recreate_never_asks(w: World) -> None:
    w.write(row("A1", starts=T, guests=[guest(1)]))
    w.run_pass()
    app_with(w, host_change="move")
    w.write(row("A1", starts=T, provider="prov-002", guests=[guest(1)]))
    report = w.run_pass()
    assert report.outcomes == {"parked": 1}
    assert [s.user_id for s in w.live("A1")] == [1001]  # nothing cancelled
    w.emulator.state.host_change = True
    w.emulator.calls_clear()
    app_with(w, host_change="recreate")
    w.write(row("A1", starts=T, provider="prov-003", guests=[guest(1)]))
    assert w.run_pass().clean
    assert w.emulator.calls_matching("PUT", "/sessionhost") == []
    assert [s.user_id for s in w.live("A1")] == [1003]


# --- the settle window ---------------------------------------------------------------------


def local(moment: datetime) -> datetime:
    """A naive UTC time as the EHR writes it: naive wall-clock time in its zone."""
    return moment.replace(tzinfo=UTC).astimezone(ZoneInfo(ZONE)).replace(tzinfo=None)


def engine_on(app: App, clock: ManualClock) -> Synchronizer:
    """The app's engine on a hand-moved clock (its clock seam): the settle window passes only when
    the test says so."""
    s = app.synchronizer
    return Synchronizer(
        outbox=s.outbox,
        ledger=s.ledger,
        gateway=s.gateway,
        options=s.options,
        clock=clock,
        fingerprints=s.fingerprints,
    )


def three_edits(w: World, settle_seconds: int, starts: datetime = T) -> tuple[int, list[str]]:
    """One booking edited three times, 30 s apart, a pass after each; then time passes and a
    last pass.  Returns the notices sent and each pass's outcomes."""
    clock = ManualClock(datetime(2027, 2, 9, 14, 0))
    engine = engine_on(app_with(w, settle_seconds=settle_seconds), clock)
    count = Counter(w)
    outcomes: list[str] = []
    edits = [
        [guest(1)],
        [guest(1), guest(2, deliver="S")],
        [guest(1), guest(2, deliver="S")],
    ]
    try:
        for n, guests in enumerate(edits):
            moved = starts + timedelta(minutes=30 * (n // 2))
            w.write(row("A1", starts=moved, guests=guests) | {"created_at": local(clock.now())})
            outcomes.append(",".join(sorted(engine.run_pass().outcomes)))
            clock.advance(30)
        clock.advance(settle_seconds)
        outcomes.append(",".join(sorted(engine.run_pass().outcomes)))
    finally:
        engine.close()
    return count.since(), outcomes


def test_without_a_settle_window_each_edit_costs_its_notices(w: World) -> None:
    # Invitation to pat-1; invitation to pat-2; a reschedule notice to both.
    sent, outcomes = three_edits(w, settle_seconds=0)
    assert sent == 4
    assert outcomes == ["synced", "synced", "synced", ""]


def test_three_edits_inside_the_settle_window_cost_one_notice_each(w: World) -> None:
    sent, outcomes = three_edits(w, settle_seconds=120)
    assert outcomes == ["settling", "settling", "settling", "synced"]
    assert sent == 2  # one invitation per patient, with the final time
    (session,) = w.live("A1")
    assert session.schedule_ts == T_UTC + timedelta(minutes=30)
    assert w.emulator.calls_matching("PUT", "/session") == []


def test_a_visit_starting_within_the_bypass_is_not_held(w: World) -> None:
    soon = local(datetime(2027, 2, 9, 15, 0))  # an hour after the clock's start
    sent, outcomes = three_edits(w, settle_seconds=120, starts=soon)
    assert outcomes[0] == "synced"
    assert sent == 4


def test_a_settling_appointment_waits_in_the_ledger_not_in_a_worker(w: World) -> None:
    clock = ManualClock(datetime(2027, 2, 9, 14, 0))
    engine = engine_on(app_with(w, settle_seconds=600), clock)
    try:
        w.write(row("A1", starts=T, guests=[guest(1)]) | {"created_at": local(clock.now())})
        first = engine.run_pass()
        assert first.outcomes == {"settling": 1} and first.clean
        with engine.ledger.begin() as tx:
            (record,) = tx.appointments.get_many(["A1"]).values()
        assert record.next_attempt_at == clock.now() + timedelta(seconds=600)
        clock.advance(599)
        assert sum(engine.run_pass().outcomes.values()) == 0  # not due yet: not even loaded
        clock.advance(1)
        assert engine.run_pass().outcomes == {"synced": 1}
    finally:
        engine.close()
    assert len(w.live("A1")) == 1


def test_settings_reach_the_engine(w: World) -> None:
    app = app_with(w, host_change="recreate", settle_seconds=90, settle_bypass_minutes=30)
    options = app.synchronizer.options
    assert (options.host_change, options.settle_seconds) == ("recreate", 90)
    assert options.settle_bypass == timedelta(minutes=30)
    assert not app.synchronizer.host_change.may_move
    assert replace(options, settle_seconds=0).settle_seconds == 0
