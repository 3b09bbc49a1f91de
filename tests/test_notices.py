"""The notices SecureVideo sends, as the emulator counts them, and the pure parts around them:
what a plan will send (``syncd plan``), the settle window's arithmetic, the host-change policy and
the planner's move.  No socket except the emulator's own, no database, no wall clock."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from syncd.core.applied import AppliedState
from syncd.core.domain import (
    AddParticipant,
    Appointment,
    AppointmentStatus,
    CancelSession,
    CreateSession,
    Guest,
    MoveSession,
    Operation,
    RemoteParticipant,
    RemoteSession,
    RemoveParticipant,
    RescheduleSession,
    UpdateParticipant,
)
from syncd.core.errors import PermanentError
from syncd.core.fingerprint import Fingerprints
from syncd.core.notices import notices_per_op
from syncd.core.planner import plan
from syncd.core.settle import settle_until
from syncd.emulator import Emulator
from syncd.sync.host_change import HostChange
from syncd.testing.gateway import FakeSecureVideo

WHEN = "2030-01-08T15:00:00"
NOW = datetime(2030, 1, 7, 9, 0)
STARTS = datetime(2030, 1, 8, 15, 0)
FP = Fingerprints(b"k" * 32)


def person(name: str, deliver: str, **extra: Any) -> dict[str, Any]:
    return {
        "ParticipantFullName": name,
        "ParticipantEmailAddress": f"{name.split()[0].lower()}@phi.example",
        "ParticipantSmsNumber": "15557770001",
        "ShouldAutoDeliverCode": deliver,
        "PacketId": -1,
    } | extra


@dataclass
class Reply:
    status_code: int
    text: str

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return json.loads(self.text)


class Api:
    """A thin client on http.client (only the adapter imports httpx)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.auth = "Basic " + base64.b64encode(b"demo:demo").decode()

    def call(
        self, method: str, path: str, params: dict[str, Any] | None = None, json_body: Any = None
    ) -> Reply:
        if params:
            path += "?" + urllib.parse.urlencode(params)
        body = None if json_body is None else json.dumps(json_body).encode()
        headers = {"Authorization": self.auth, "Content-Type": "application/json"}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return Reply(response.status, response.read().decode())
        finally:
            connection.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Reply:
        return self.call("GET", path, params)

    def post(self, path: str, params: dict[str, Any] | None = None, json: Any = None) -> Reply:
        return self.call("POST", path, params, json)

    def put(self, path: str, params: dict[str, Any] | None = None, json: Any = None) -> Reply:
        return self.call("PUT", path, params, json)

    def delete(self, path: str) -> Reply:
        return self.call("DELETE", path)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(seed=7) as emulator:
        yield emulator


@pytest.fixture
def api(emu: Emulator) -> Api:
    return Api(emu.port)


def create(api: Api, *people: dict[str, Any], host: str = "prov-001") -> dict[str, Any]:
    body = {"ScheduleTs": WHEN, "ExternalSessionId": "A1", "Participants": list(people)}
    answer = api.post("/session/0", params={"externalId": host}, json=body)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def counted(api: Api) -> dict[str, Any]:
    answer = api.get("/emulator/notices")
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


# --- the emulator --------------------------------------------------------------------------


def test_a_create_invites_the_guests_who_get_e_mail_or_text_and_no_one_else(
    api: Api, emu: Emulator
) -> None:
    session = create(api, person("Ann Canary", "E"), person("Bo Canary", "S"), person("Cy X", "N"))
    ann, bo = (p["ParticipationId"] for p in session["Participants"][1:3])
    body = counted(api)
    assert body["Total"] == 2
    assert body["ByKind"] == {"invitation": 2, "reschedule": 0, "cancellation": 0}
    assert [(n["ParticipationId"], n["Channel"]) for n in body["Notices"]] == [
        (ann, "E"),
        (bo, "S"),
    ]
    # Counts and ids only: nothing of the people.
    assert "Canary" not in str(body) and "phi.example" not in str(body)
    assert emu.state.notice_log.counts() == {(ann, "E"): 1, (bo, "S"): 1}


def test_reschedule_and_cancel_notify_each_delivering_guest_once(api: Api, emu: Emulator) -> None:
    session = create(api, person("Ann Canary", "E"), person("Cy X", "N"))
    sid = session["SessionId"]
    assert api.put(f"/session/{sid}", json={"ScheduleTs": "2030-01-08T16:00:00"}).is_success
    # The same time again tells the patient nothing: counted, and marked as a repeat.
    assert api.put(f"/session/{sid}", json={"ScheduleTs": "2030-01-08T16:00:00"}).is_success
    assert api.delete(f"/session/{sid}").status_code == 204
    kinds = [(n.kind, n.repeat) for n in emu.notices(sid)]
    assert kinds == [
        ("invitation", False),
        ("reschedule", False),
        ("reschedule", True),
        ("cancellation", False),
    ]
    assert counted(api)["Repeats"] == 1


def test_participant_changes_invite_and_cancel_only_whom_they_concern(
    api: Api, emu: Emulator
) -> None:
    session = create(api, person("Ann Canary", "E"), person("Cy X", "N"))
    sid = session["SessionId"]
    ann, cy = (p["ParticipationId"] for p in session["Participants"][1:])
    emu.state.clear_notices()
    added = api.post(f"/participant/{sid}", json=person("Di Canary", "S")).json()
    di = added["Participants"][-1]["ParticipationId"]
    # A zone or packet change tells nobody; a new address gets the invitation there.
    same = person("Ann Canary", "E", ParticipantTimeZoneWindowsId="Central Standard Time")
    assert api.put(f"/participant/{ann}", json=same).is_success
    assert api.put(f"/participant/{ann}", json=same | {"PacketId": 0}).is_success
    moved = same | {"ParticipantEmailAddress": "ann.new@phi.example"}
    assert api.put(f"/participant/{ann}", json=moved).is_success
    # Removing someone never invited (delivery N) sends nothing; an invited one is told.
    assert api.delete(f"/participant/{cy}").status_code == 204
    assert api.delete(f"/participant/{di}").status_code == 204
    assert [(n.kind, n.participation_id) for n in emu.notices()] == [
        ("invitation", di),
        ("invitation", ann),
        ("cancellation", di),
    ]
    assert api.delete("/emulator/notices").status_code == 204
    assert counted(api)["Total"] == 0


def test_sessionhost_needs_the_account_option(api: Api, emu: Emulator) -> None:
    session = create(api, person("Ann Canary", "E"))
    sid = session["SessionId"]
    refused = api.put(f"/sessionhost/{sid}", json={"ExternalUserId": "prov-002"})
    assert refused.status_code == 400
    assert "External ID Label" in refused.json()["Message"]
    assert emu.state.session(sid).user_id == 1001


def test_sessionhost_moves_the_session_and_the_guests_keep_their_codes(
    api: Api, emu: Emulator
) -> None:
    emu.state.host_change = True
    session = create(api, person("Ann Canary", "E"))
    sid, guest = session["SessionId"], session["Participants"][1]
    emu.state.clear_notices()
    moved = api.put(f"/sessionhost/{sid}", json={"ExternalUserId": "prov-002"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["UserId"] == 1002
    assert moved.json()["Participants"][1] == guest
    by_user = api.put(
        "/sessionhost/0", params={"externalSessionId": "A1"}, json={"UserId": 1003}
    ).json()
    assert by_user["UserId"] == 1003
    assert emu.notices() == []
    listed = api.get("/session/0", params={"externalId": "prov-003"}).json()
    assert [s["SessionId"] for s in listed] == [sid]
    assert api.get("/session/0", params={"externalId": "prov-001"}).json() == []
    assert api.put(f"/sessionhost/{sid}", json={}).status_code == 400
    assert api.put(f"/sessionhost/{sid}", json={"ExternalUserId": "nobody"}).status_code == 404


def test_the_fake_moves_a_session_only_with_the_option() -> None:
    guest = Guest("pt-1", full_name="Zelda Canary")
    op = CreateSession("A1", "A1", "prov-001", STARTS, None, False, (guest,))
    refusing = FakeSecureVideo()
    made = refusing.create_session(op)
    with pytest.raises(PermanentError):
        refusing.move_session(made.session_id, "prov-002")
    allowing = FakeSecureVideo(host_change=True)
    made = allowing.create_session(op)
    moved = allowing.move_session(made.session_id, "prov-002")
    assert moved.host_external_id == "prov-002"
    assert moved.guests == made.guests
    assert [s.session_id for s in allowing.list_host_sessions("prov-002")] == [made.session_id]
    assert [c.kind for c in allowing.mutations()] == ["create", "move_host"]


# --- what a plan will send -----------------------------------------------------------------


def remote(*guests: RemoteParticipant, host: str = "prov-001") -> RemoteSession:
    hostp = RemoteParticipant(1, host, "Dr Host", deliver="E", securevideo_user_id="1001")
    return RemoteSession(50001, "A1", 1001, STARTS, "Scheduled", host, False, (hostp, *guests))


def test_notices_per_op_counts_what_securevideo_will_send() -> None:
    ann = RemoteParticipant(11, "pt-1", "Ann Canary", email="ann@phi.example", deliver="E")
    cy = RemoteParticipant(12, "pt-2", "Cy X", deliver="N")
    observed = [remote(ann, cy)]
    new_ann = Guest("pt-1", full_name="Ann Canary", email="ann.new@phi.example", deliver="E")
    ops: list[Operation] = [
        RemoveParticipant("A1", 50001, 12, "pt-2", "removed"),
        UpdateParticipant("A1", 50001, 11, new_ann, ("email",)),
        RescheduleSession("A1", 50001, STARTS + timedelta(hours=1)),
        AddParticipant("A1", 50001, Guest("pt-3", full_name="Di", sms="1555", deliver="S")),
        AddParticipant("A1", 50001, Guest("pt-4", full_name="Ed", deliver="N")),
        MoveSession("A1", 50001, "prov-002"),
    ]
    # cy gets nothing (N); ann an invitation at the new address and one reschedule notice.
    assert notices_per_op(ops, observed) == [0, 1, 1, 1, 0, 0]
    # After the cancel the session has no one left to tell.
    again: list[Operation] = [
        CancelSession("A1", 50001, "cancelled"),
        RescheduleSession("A1", 50001, STARTS),
    ]
    assert notices_per_op(again, observed) == [1, 1]
    create = CreateSession("A1", "A1", "prov-002", STARTS, None, False, (new_ann,))
    assert notices_per_op([create], []) == [1]


# --- the settle window ---------------------------------------------------------------------

WINDOW = timedelta(seconds=120)
BYPASS = timedelta(minutes=120)


@pytest.mark.parametrize(
    ("written_ago", "starts_in", "window", "waits_until"),
    [
        (timedelta(seconds=30), timedelta(days=1), WINDOW, timedelta(seconds=90)),
        (timedelta(seconds=120), timedelta(days=1), WINDOW, None),  # the window has passed
        (timedelta(seconds=30), timedelta(minutes=90), WINDOW, None),  # starts soon: at once
        (timedelta(seconds=30), timedelta(days=1), timedelta(0), None),  # off
        (-timedelta(hours=1), timedelta(days=1), WINDOW, timedelta(seconds=120)),  # EHR ahead
    ],
)
def test_settle_until(
    written_ago: timedelta, starts_in: timedelta, window: timedelta, waits_until: timedelta | None
) -> None:
    got = settle_until(NOW - written_ago, NOW + starts_in, NOW, window=window, bypass=BYPASS)
    assert got == (None if waits_until is None else NOW + waits_until)
    assert settle_until(None, NOW + starts_in, NOW, window=window, bypass=BYPASS) is None


# --- host change: the policy and the planner -----------------------------------------------


def test_host_change_auto_falls_back_once_refused_and_move_does_not() -> None:
    refusal = PermanentError("PUT /sessionhost/{sessionId}: SecureVideo answered 400", status=400)
    auto = HostChange("auto")
    assert auto.may_move
    assert auto.refused(refusal) is True
    assert not auto.may_move
    move = HostChange("move")
    assert move.refused(refusal) is False
    assert move.may_move
    assert not HostChange("recreate").may_move


def booked(host: str) -> Appointment:
    guest = Guest("pt-1", full_name="Ann Canary", email="ann@phi.example", deliver="E")
    return Appointment(1, "A1", "A1", host, AppointmentStatus.BOOKED, STARTS, guests=(guest,))


def test_the_planner_moves_a_session_to_the_new_provider_when_allowed() -> None:
    ann = RemoteParticipant(11, "pt-1", "Ann Canary", email="ann@phi.example", deliver="E")
    observed = [remote(ann)]
    moved = plan(booked("prov-002"), None, observed, now=NOW, fingerprints=FP, move_host=True)
    assert moved == (MoveSession("A1", 50001, "prov-002"),)
    recreated = plan(booked("prov-002"), None, observed, now=NOW, fingerprints=FP)
    assert [op.kind for op in recreated] == ["cancel", "create"]
    # A visit whose time has passed is not moved: held, like its cancel.
    late = plan(
        booked("prov-002"),
        None,
        observed,
        now=STARTS + timedelta(minutes=5),
        fingerprints=FP,
        move_host=True,
    )
    assert not any(isinstance(op, MoveSession) for op in late)


def test_no_reschedule_when_securevideo_already_shows_the_new_time() -> None:
    """A reschedule whose answer was lost took effect: sending it again would repeat the notice."""
    ann = RemoteParticipant(11, "pt-1", "Ann Canary", email="ann@phi.example", deliver="E")
    later = STARTS + timedelta(hours=1)
    shows_new = [
        RemoteSession(
            50001, "A1", 1001, later, "Rescheduled", "prov-001", False, remote(ann).participants
        )
    ]
    sent_old = AppliedState(session_id=50001, external_session_id="A1", schedule_ts=STARTS)
    desired = replace(booked("prov-001"), starts_at=later)
    assert plan(desired, sent_old, shows_new, now=NOW, fingerprints=FP) == ()
    # Still a change when SecureVideo shows the old time.
    assert plan(desired, sent_old, [remote(ann)], now=NOW, fingerprints=FP) == (
        RescheduleSession("A1", 50001, later),
    )


def test_the_client_moves_a_session_and_reads_a_refusal_as_permanent(emu: Emulator) -> None:
    from syncd.adapters.securevideo import SecureVideoClient

    guest = Guest("pt-1", full_name="Zelda Canary", email="z@phi.example", deliver="E")
    op = CreateSession("A1", "A1", "prov-001", STARTS, None, False, (guest,))
    with SecureVideoClient(emu.base_url, "demo", "demo", read_timeout=2.0) as client:
        made = client.create_session(op)
        with pytest.raises(PermanentError) as refused:
            client.move_session(made.session_id, "prov-002")
        assert refused.value.status == 400
        emu.state.host_change = True
        # A 403 here is the account's answer about the option, not about the credentials.
        emu.faults.fail_next(1, status=403, methods=("PUT",))
        with pytest.raises(PermanentError) as forbidden:
            client.move_session(made.session_id, "prov-002")
        assert forbidden.value.status == 403
        moved = client.move_session(made.session_id, "prov-002")
    assert moved is not None
    assert (moved.session_id, moved.host_external_id, moved.user_id) == (
        made.session_id,
        "prov-002",
        1002,
    )
    assert moved.guests == made.guests
