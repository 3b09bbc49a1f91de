"""A crash or a lost answer must not cost a patient a second notice.

Each change a patient sees — a new booking, a new time, a cancellation, being added or removed, a
new e-mail, and the provider moving the session (which sends nothing) — is applied once with its
answer lost (the emulator applies the call and drops the connection) and once with the process
dying between SecureVideo's answer and the ledger's commit (an in-process crash, then a new App on
the same ledger, as after a restart).  Either way syncd must find the change already made by
reading SecureVideo again, and the emulator must have sent exactly the notices one clean call
sends, none of them a repeat.  The crash sweep and the lost-answer storm (``test_chaos_crash``,
``test_chaos_faults``) assert the same invariant at random over hundreds of changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import World, guest, row, world

from syncd.testing.hooks import HookedGateway, SimulatedCrash

T = datetime(2027, 2, 10, 9, 0)
FIRST = [guest(1), guest(2, deliver="S")]

#: name → (the row that makes the change, the HTTP method it needs, the gateway's kind, notices)
CHANGES: dict[str, tuple[dict[str, Any], str, str, int]] = {
    "create": (row("A1", starts=T, guests=FIRST), "POST", "create", 2),
    "reschedule": (row("A1", starts=T + timedelta(hours=1), guests=FIRST), "PUT", "reschedule", 2),
    "cancel": (row("A1", starts=T, status="cancelled", guests=FIRST), "DELETE", "cancel", 2),
    "add": (row("A1", starts=T, guests=[*FIRST, guest(3)]), "POST", "add_participant", 1),
    "remove": (row("A1", starts=T, guests=FIRST[:1]), "DELETE", "remove_participant", 1),
    "new e-mail": (
        row("A1", starts=T, guests=[guest(1, email="moved1@phi.example"), FIRST[1]]),
        "PUT",
        "update_participant",
        1,
    ),
    "move": (row("A1", starts=T, provider="prov-002", guests=FIRST), "PUT", "move_host", 0),
}


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as w:
        w.emulator.state.host_change = True
        yield w


def booked(w: World, change: str) -> int:
    """The booking before the change (none before a create); the notices sent so far."""
    if change != "create":
        w.write(row("A1", starts=T, guests=FIRST))
        assert w.run_pass().clean
    return len(w.emulator.notices())


def converged(w: World, change: str, before: int, expected: int) -> None:
    # Whatever the fault left open is resolved by a later pass without another call.
    for _ in range(2):
        w.run_pass()
    w.emulator.calls_clear()
    assert sum(w.run_pass().operations.values()) == 0
    assert w.emulator.mutating_calls() == []
    notices = w.emulator.notices()[before:]
    assert len(notices) == expected, f"{change}: {notices}"
    assert not any(n.repeat for n in notices)
    with w.apps[-1].ledger.begin() as tx:
        assert tx.operations.open_intents() == []


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_lost_answer_costs_no_second_notice(w: World, change: str) -> None:
    changed, method, _kind, expected = CHANGES[change]
    before = booked(w, change)
    w.emulator.faults.drop_after_apply_next(1, methods=(method,))
    w.write(changed)
    w.run_pass()
    assert w.emulator.faults.injected["drop"] == 1
    converged(w, change, before, expected)


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_crash_between_answer_and_commit_costs_no_second_notice(w: World, change: str) -> None:
    changed, _method, kind, expected = CHANGES[change]
    before = booked(w, change)

    def die(_kind: str) -> None:
        raise SimulatedCrash

    fires: Callable[[str, int], bool] = lambda k, _count: k == kind  # noqa: E731
    crashing = w.app(wrap_gateway=lambda inner: HookedGateway(inner, hook=die, when=fires))
    w.write(changed)
    with pytest.raises(SimulatedCrash):
        crashing.synchronizer.run_pass()
    crashing.close()
    w.apps.remove(crashing)
    w.app()  # the restarted process: same ledger, fresh memory
    converged(w, change, before, expected)
