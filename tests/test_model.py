"""Scenario 5: a model-based test of the whole sync loop (Hypothesis ``RuleBasedStateMachine``).

The model is what the EHR says: appointments with a status, a start, a provider and guests.  Rules
edit it the way a clinic does (book, reschedule, cancel, re-book, add / change / rename / remove a
participant, change provider) and write each change to a real SQLite outbox as a whole row; other
rules make SecureVideo (the emulator) misbehave (5xx, a change applied then its answer dropped,
429 with Retry-After), crash and restart syncd in process — a new App from the same settings,
possibly with the crash between a remote success and its ledger commit — and run passes.

Staff act in SecureVideo too (on a settled appointment's session): they add a guest of their own,
add a SecureVideo user (a colleague), move the session's time, or change a syncd guest's e-mail.
syncd owns only what it created: it must never remove or change what staff added, and it must not
undo a staff change until the EHR changes that same thing (a change is the EHR versus what syncd
applied, not versus what SecureVideo shows).

Invariant: at quiescence (faults cleared, passes until nothing is due) SecureVideo holds exactly
the EHR's appointments — plus what staff added, with staff's changes where the EHR did not change
the same field since — and no ExternalSessionId is live twice.  At every step, no
ExternalSessionId is live twice under the same host (across hosts it is, for an instant, while a
provider change cancels under the old host and creates under the new one), and every staff-added
participant of a live session is there as staff left it.

Fast form: 4 programs of up to 30 steps (derandomized); long form (``--long``): 100 of up to 50.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateways import HookedGateway, SimulatedCrash
from harness import ZONE, World, world
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from syncd.runtime.app import App

BASE = datetime(2027, 3, 1, 9, 0)  # naive, America/New_York
PROVIDERS = {"prov-001": 1001, "prov-002": 1002, "prov-003": 1003}
GUEST_ZONES = {
    "America/New_York": "Eastern Standard Time",
    "America/Chicago": "Central Standard Time",
    "America/Denver": "Mountain Standard Time",
}
SLOTS = st.integers(min_value=0, max_value=40)  # half-hour slots after BASE
PICK = st.integers(min_value=0, max_value=10_000)  # which appointment or guest
#: SecureVideo users of the emulator's account that are never a host in this model
COLLEAGUES = (1004, 1005)
#: What the programs did, printed at the end (the long form's figures in docs/reliability.md).
STATS: Counter[str] = Counter()


@dataclass(frozen=True)
class Guest:
    external_id: str
    full_name: str
    email: str
    zone: str

    def as_row(self) -> dict[str, Any]:
        return {
            "external_id": self.external_id,
            "full_name": self.full_name,
            "email": self.email,
            "time_zone": self.zone,
            "deliver": "E",
        }


@dataclass
class Staff:
    """What staff did to one session of an appointment in SecureVideo."""

    session_id: int
    #: participations staff added: id -> (ParticipantExternalId, name, SecureVideo user id)
    added: dict[int, tuple[str | None, str, int | None]] = field(default_factory=dict)
    #: the time staff moved the session to (UTC)
    moved_to: datetime | None = None
    #: a syncd guest's e-mail as staff changed it, by the guest's external id
    emails: dict[str, str] = field(default_factory=dict)


@dataclass
class Appointment:
    aid: str
    status: str
    slot: int
    provider: str
    guests: list[Guest] = field(default_factory=list)
    staff: Staff | None = None

    @property
    def starts(self) -> datetime:
        return BASE + timedelta(minutes=30 * self.slot)

    def as_row(self) -> dict[str, Any]:
        return {
            "appointment_id": self.aid,
            "provider_external_id": self.provider,
            "status": self.status,
            "starts_at": self.starts,
            "topic": "Model visit",
            "is_recorded": False,
            "participants": json.dumps([g.as_row() for g in self.guests]),
        }


class SyncLoop(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="syncd-model-"))
        # A long fault streak never parks (temporary failures are retried without limit).
        self._world = world(self.tmp)
        self.w: World = self._world.__enter__()
        self.app: App = self.w.app()
        self.model: dict[str, Appointment] = {}
        self.numbers = itertools.count(1)
        STATS["programs"] += 1

    def teardown(self) -> None:
        try:
            if self.model:
                self.settle_and_compare()
            STATS.update(
                f"fault:{kind}"
                for kind, n in self.w.emulator.faults.injected.items()
                for _ in range(n)
            )
            STATS["appointments"] += len(self.model)
            STATS["mutating calls"] += len(self.w.emulator.mutating_calls())
        finally:
            self._world.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- the EHR -------------------------------------------------------------------------

    def _write(self, appt: Appointment) -> None:
        self.w.write(appt.as_row())
        if appt.staff is not None:
            # The EHR's change meets staff's on the same session: apply it now, so that the
            # model knows which of the two SecureVideo shows (the EHR's change wins).
            self._settle()

    def _new_guest(self, zone: str) -> Guest:
        n = next(self.numbers)
        return Guest(f"pat-{n}", f"Zelda Canary{n}", f"canary{n}@phi.example", zone)

    def _pick(self, status: str, index: int) -> Appointment:
        candidates = sorted(
            (a for a in self.model.values() if a.status == status), key=lambda a: a.aid
        )
        return candidates[index % len(candidates)]

    def _has(self, status: str) -> bool:
        return any(a.status == status for a in self.model.values())

    @initialize(slot=SLOTS, provider=st.sampled_from(sorted(PROVIDERS)))
    def first_booking(self, slot: int, provider: str) -> None:
        self.book(slot, provider, 1, "America/New_York")

    @rule(
        slot=SLOTS,
        provider=st.sampled_from(sorted(PROVIDERS)),
        guests=st.integers(min_value=1, max_value=2),
        zone=st.sampled_from(sorted(GUEST_ZONES)),
    )
    def book(self, slot: int, provider: str, guests: int, zone: str) -> None:
        appt = Appointment(
            aid=f"M{next(self.numbers)}",
            status="booked",
            slot=slot,
            provider=provider,
            guests=[self._new_guest(zone) for _ in range(guests)],
        )
        self.model[appt.aid] = appt
        self._write(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, slot=SLOTS)
    def reschedule(self, pick: int, slot: int) -> None:
        appt = self._pick("booked", pick)
        if appt.staff is not None and slot != appt.slot:
            appt.staff.moved_to = None  # a change in the EHR: its time is sent
        appt.slot = slot
        self._write(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        appt = self._pick("booked", pick)
        appt.status = "cancelled"
        self._write(appt)
        appt.staff = None  # the session staff worked on is gone

    @precondition(lambda self: self._has("cancelled"))
    @rule(pick=PICK, slot=SLOTS)
    def rebook(self, pick: int, slot: int) -> None:
        appt = self._pick("cancelled", pick)
        appt.status, appt.slot = "booked", slot
        self._write(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, zone=st.sampled_from(sorted(GUEST_ZONES)))
    def add_participant(self, pick: int, zone: str) -> None:
        appt = self._pick("booked", pick)
        if len(appt.guests) < 3:
            appt.guests.append(self._new_guest(zone))
            self._write(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, which=PICK, zone=st.sampled_from(sorted(GUEST_ZONES)))
    def change_participant(self, pick: int, which: int, zone: str) -> None:
        appt = self._pick("booked", pick)
        i = which % len(appt.guests)
        n = next(self.numbers)
        appt.guests[i] = replace(appt.guests[i], email=f"moved{n}@phi.example", zone=zone)
        if appt.staff is not None:
            appt.staff.emails.pop(appt.guests[i].external_id, None)
        self._write(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, which=PICK)
    def rename_participant(self, pick: int, which: int) -> None:
        appt = self._pick("booked", pick)
        i = which % len(appt.guests)
        appt.guests[i] = replace(appt.guests[i], full_name=f"Zelda Renamed{next(self.numbers)}")
        if appt.staff is not None:  # removed and added again, with the EHR's e-mail
            appt.staff.emails.pop(appt.guests[i].external_id, None)
        self._write(appt)

    @precondition(lambda self: any(len(a.guests) > 1 for a in self.model.values()))
    @rule(pick=PICK, which=PICK)
    def remove_participant(self, pick: int, which: int) -> None:
        several = sorted((a for a in self.model.values() if len(a.guests) > 1), key=lambda a: a.aid)
        appt = several[pick % len(several)]
        gone = appt.guests.pop(which % len(appt.guests))
        if appt.staff is not None:
            appt.staff.emails.pop(gone.external_id, None)
        self._write(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, provider=st.sampled_from(sorted(PROVIDERS)))
    def change_provider(self, pick: int, provider: str) -> None:
        appt = self._pick("booked", pick)
        if provider != appt.provider:
            appt.staff = None  # a new session under the new host
        appt.provider = provider
        self._write(appt)

    # --- staff in SecureVideo --------------------------------------------------------------

    def _touch(self, appt: Appointment) -> None:
        """The EHR sends the appointment again, unchanged (an edit of something syncd does not
        send): what staff just did must survive the pass that follows."""
        self._write(appt)

    def _staff_session(self, pick: int) -> tuple[Appointment, Any]:
        """A booked appointment, settled, and its live session (staff work on what they see)."""
        self._settle()
        appt = self._pick("booked", pick)
        (session,) = self.w.live(appt.aid)
        if appt.staff is None or appt.staff.session_id != session.session_id:
            appt.staff = Staff(session.session_id)
        STATS["staff actions"] += 1
        return appt, session

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, with_id=st.booleans())
    def staff_add_guest(self, pick: int, with_id: bool) -> None:
        appt, session = self._staff_session(pick)
        n = next(self.numbers)
        external_id = f"EMR{n:06d}" if with_id else None
        name = f"Front Desk Guest{n}"
        body: dict[str, Any] = {"ParticipantFullName": name, "PacketId": -1}
        if external_id:
            body["ParticipantExternalId"] = external_id
        answer = self.w.emulator.state.add_participant(body, session_id=session.session_id)
        pid = int(answer["Participants"][-1]["ParticipationId"])
        assert appt.staff is not None
        appt.staff.added[pid] = (external_id, name, None)
        self._touch(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, which=st.sampled_from(COLLEAGUES))
    def staff_add_user(self, pick: int, which: int) -> None:
        appt, session = self._staff_session(pick)
        assert appt.staff is not None
        if any(user == which for _, _, user in appt.staff.added.values()):
            return  # a session holds a SecureVideo user once
        answer = self.w.emulator.state.add_participant(
            {"SecureVideoUserId": which, "PacketId": -1}, session_id=session.session_id
        )
        last = answer["Participants"][-1]
        appt.staff.added[int(last["ParticipationId"])] = (
            last.get("ParticipantExternalId"),
            last["ParticipantFullName"],
            which,
        )
        self._touch(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, minutes=st.integers(min_value=1, max_value=90))
    def staff_move_time(self, pick: int, minutes: int) -> None:
        appt, session = self._staff_session(pick)
        moved = session.schedule_ts + timedelta(minutes=minutes)
        self.w.emulator.state.reschedule_session(
            {"ScheduleTs": moved.isoformat()}, session_id=session.session_id
        )
        assert appt.staff is not None
        appt.staff.moved_to = moved
        self._touch(appt)

    @precondition(lambda self: self._has("booked"))
    @rule(pick=PICK, which=PICK)
    def staff_change_guest(self, pick: int, which: int) -> None:
        appt, session = self._staff_session(pick)
        assert appt.staff is not None
        guest = appt.guests[which % len(appt.guests)]
        (p,) = [p for p in session.participants[1:] if p.external_id == guest.external_id]
        email = f"desk{next(self.numbers)}@clinic.example"
        self.w.emulator.state.update_participant(
            {"ParticipantEmailAddress": email}, participation_id=p.participation_id
        )
        appt.staff.emails[guest.external_id] = email
        self._touch(appt)

    # --- SecureVideo misbehaving -----------------------------------------------------------

    @rule(n=st.integers(min_value=1, max_value=3), status=st.sampled_from([500, 502, 503]))
    def server_errors(self, n: int, status: int) -> None:
        self.w.emulator.faults.fail_next(n, status=status)

    @rule(n=st.integers(min_value=1, max_value=2))
    def answers_lost_after_apply(self, n: int) -> None:
        self.w.emulator.faults.drop_after_apply_next(n)

    @rule(n=st.integers(min_value=1, max_value=2))
    def throttled(self, n: int) -> None:
        self.w.emulator.faults.throttle_next(n, retry_after=0.05)

    # --- syncd -----------------------------------------------------------------------------

    @rule()
    def run_pass(self) -> None:
        self.app.synchronizer.run_pass()
        STATS["passes"] += 1

    @rule()
    def restart(self) -> None:
        """A new App from the same settings: what a process restart keeps is the ledger."""
        self.app.close()
        self.w.apps.remove(self.app)
        self.app = self.w.app()
        STATS["restarts"] += 1

    @rule(after=st.integers(min_value=1, max_value=4))
    def crash_between_call_and_commit(self, after: int) -> None:
        """The process dies after SecureVideo applied the ``after``-th call of a pass, before
        the ledger heard of it; then it restarts."""

        def die(_kind: str) -> None:
            raise SimulatedCrash

        # The crashing process: an App whose gateway dies after the chosen call.
        self.app.close()
        self.w.apps.remove(self.app)
        self.app = self.w.app(
            wrap_gateway=lambda inner: HookedGateway(
                inner, hook=die, when=lambda _kind, count: count == after
            )
        )
        try:
            self.app.synchronizer.run_pass()
        except SimulatedCrash:
            STATS["crashes between call and commit"] += 1
        self.restart()

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def never_twice_under_one_host(self) -> None:
        live = Counter(
            (s.external_session_id, s.user_id)
            for s in self.w.emulator.state.sessions()
            if s.schedule_type != "Cancelled"
        )
        assert [k for k, n in live.items() if n > 1] == []

    @invariant()
    def what_staff_added_stays(self) -> None:
        """syncd never removes or changes a participant it does not own."""
        for appt in self.model.values():
            if appt.staff is None or not appt.staff.added:
                continue
            session = self.w.emulator.state.session(appt.staff.session_id)
            if session.schedule_type == "Cancelled":
                continue
            shown = {
                p.participation_id: (p.external_id, p.full_name, p.secure_video_user_id)
                for p in session.participants
            }
            for pid, was in appt.staff.added.items():
                assert shown.get(pid) == was, (appt.aid, pid)

    @rule()
    def settle_and_compare(self) -> None:
        """Quiescence: faults cleared, passes until nothing is due; then SecureVideo == EHR.

        The first pass still meets the faults armed since the last pass (each fault is counted:
        "the next n calls"), so none of them goes unexercised.
        """
        STATS["quiescence checks"] += 1
        self._settle()
        self.compare()

    def _settle(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            self.app.synchronizer.run_pass()
            STATS["passes"] += 1
            self.w.emulator.faults.clear()
            with self.app.ledger.begin() as tx:
                pending = tx.appointments.pending_count()
                parked = tx.appointments.parked()
            assert parked == [], [(p.appointment_id, p.reason) for p in parked]
            if pending == 0:
                break
            assert time.monotonic() < deadline, "no quiescence within 30 s"
            time.sleep(0.02)  # a back-off (Retry-After) may still be running

    def compare(self) -> None:
        emulator = self.w.emulator
        assert emulator.duplicate_external_session_ids() == {}
        zone = ZoneInfo(ZONE)
        for aid, appt in sorted(self.model.items()):
            live = self.w.live(aid)
            if appt.status == "cancelled":
                assert live == [], aid
                continue
            assert len(live) == 1, (aid, live)
            (session,) = live
            assert session.user_id == PROVIDERS[appt.provider], aid
            starts_utc = appt.starts.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
            staff = (
                appt.staff if appt.staff and appt.staff.session_id == session.session_id else None
            )
            if staff is not None and staff.moved_to is not None:
                starts_utc = staff.moved_to  # staff's move stands until the EHR moves the visit
            assert session.schedule_ts == starts_utc, aid
            added = staff.added if staff is not None else {}
            emails = staff.emails if staff is not None else {}
            remote = sorted(
                (p.external_id, p.full_name, p.email, p.time_zone_windows_id)
                for p in session.participants[1:]
                if p.participation_id not in added
            )
            wanted = sorted(
                (
                    g.external_id,
                    g.full_name,
                    emails.get(g.external_id, g.email),
                    GUEST_ZONES[g.zone],
                )
                for g in appt.guests
            )
            assert remote == wanted, aid
            shown = {p.participation_id for p in session.participants}
            assert set(added) <= shown, aid
        # Nothing live that the EHR does not know.
        assert set(emulator.live_sessions_by_external_id()) <= set(self.model)


def test_the_sync_loop_against_its_model(long_run: bool) -> None:
    STATS.clear()
    run_state_machine_as_test(
        SyncLoop,
        settings=settings(
            max_examples=100 if long_run else 4,
            stateful_step_count=50 if long_run else 30,
            deadline=None,
            derandomize=not long_run,
            # Every step is real I/O, so shrinking a failure takes minutes: the fast form reports
            # the program as found; the long form shrinks it.
            phases=list(Phase) if long_run else [Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print("\nmodel:", ", ".join(f"{k} {v}" for k, v in sorted(STATS.items())))
