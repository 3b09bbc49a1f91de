"""The SecureVideo emulator, exercised over real sockets the way a client would use it."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from syncd.emulator import (
    DEFAULT_HOSTS,
    Emulator,
    EmulatorState,
    HostUser,
    InvalidRequestError,
    UnknownResourceError,
    request_identity,
    serve,
)
from syncd.emulator.persist import restore, snapshot
from syncd.emulator.server import _accept_queue_length
from syncd.testing.waiting import wait_until

NOW = datetime(2030, 3, 10, 12, 0, 0)
HOST = DEFAULT_HOSTS[0]
OTHER_HOST = DEFAULT_HOSTS[1]
PATIENT_NAME = "Pat Example"
PATIENT_EMAIL = "pat@example.org"

SESSION_KEYS = {
    "SessionId",
    "ScheduleTs",
    "BillableTs",
    "ConnectCode",
    "DurationMinutes",
    "WaitTime",
    "BillableStatusCd",
    "ScheduleType",
    "UserId",
    "IsRecorded",
    "ZoomMeetingId",
    "ExternalSessionId",
    "Topic",
    "Participants",
}
PARTICIPANT_KEYS = {
    "ParticipationId",
    "ParticipantFullName",
    "SecureVideoUserId",
    "ParticipantEmailAddress",
    "ParticipantSmsNumber",
    "ParticipantDefaultResolution",
    "ParticipantTimeZoneWindowsId",
    "ParticipantExternalId",
    "ConnectCode",
    "Passkey",
    "ShouldAutoDeliverCode",
    "ConnectionTs",
    "ExpiresTs",
    "RSVP",
    "SvcId",
    "DepositRequired",
}
HISTORY_KEYS = {
    "SessionId",
    "ScheduleTs",
    "BillableTs",
    "DurationMinutes",
    "WaitTime",
    "BillableStatusCd",
    "ScheduleType",
    "UserId",
    "UsageDescription",
    "CustomerId",
    "CustomerName",
    "ScheduledByUserId",
    "ReportableMeetingProvider",
}


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def message(self) -> str:
        message = self.json["Message"]
        assert isinstance(message, str)
        return message


def basic(key: str = "demo", secret: str = "demo") -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


class Api:
    """A keep-alive client on http.client, as thin as possible so the emulator is what's tested."""

    def __init__(self, emulator: Emulator, timeout: float = 5.0) -> None:
        self.emulator = emulator
        self.timeout = timeout
        self.connection = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.emulator.port, timeout=self.timeout)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        authorization: str | None = None,
    ) -> Reply:
        headers = {"Authorization": authorization or basic()}
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=payload, headers=headers)
            response = self.connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = self._connect()
            raise

    def close(self) -> None:
        self.connection.close()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(seed=7) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(emulator: Emulator) -> None:
    emulator.reset()
    emulator.state.set_clock(NOW)


@pytest.fixture
def api(emulator: Emulator) -> Iterator[Api]:
    client = Api(emulator)
    yield client
    client.close()


def guest(name: str = PATIENT_NAME, **fields: Any) -> dict[str, Any]:
    participant: dict[str, Any] = {
        "ParticipantFullName": name,
        "ParticipantEmailAddress": PATIENT_EMAIL,
        "ParticipantSmsNumber": "15550001111",
        "ParticipantDefaultResolution": "high",
        "ParticipantTimeZoneWindowsId": "Pacific Standard Time",
        "ParticipantExternalId": "pat-1",
        "ShouldAutoDeliverCode": "E",
        "PacketId": 12,
        "SvcId": None,
        "DepositRequired": None,
    }
    participant.update(fields)
    return participant


def new_session(
    schedule_ts: str | None = "2030-03-11T15:00:27",
    external_session_id: str | None = "appt-1",
    participants: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "ScheduleTs": schedule_ts,
        "IsRecorded": False,
        "ExternalSessionId": external_session_id,
        "Topic": "Follow-up",
        "Participants": participants if participants is not None else [guest()],
    }


def create(api: Api, path: str = f"/session/{HOST.user_id}", **kwargs: Any) -> dict[str, Any]:
    reply = api.call("POST", path, new_session(**kwargs))
    assert reply.status == 201, reply.raw
    session = reply.json
    assert isinstance(session, dict)
    return session


def guest_of(session: dict[str, Any]) -> dict[str, Any]:
    participant = session["Participants"][1]
    assert isinstance(participant, dict)
    return participant


# --- transport and auth --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, basic("demo", "wrong"), basic("wrong", "demo"), "Bearer demo", "Basic !!!"],
)
def test_bad_or_missing_credentials_are_401(emulator: Emulator, authorization: str | None) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=5)
    headers = {} if authorization is None else {"Authorization": authorization}
    connection.request("GET", "/session", headers=headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 401
    assert json.loads(body) == {"Message": "Authorization has been denied for this request."}
    assert response.headers["Content-Length"] == str(len(body))


def test_configured_credentials_and_context_manager() -> None:
    with Emulator(api_key="key-1", api_secret="secret-1") as custom:
        client = Api(custom)
        assert client.call("GET", "/user").status == 401
        assert client.call("GET", "/user", authorization=basic("key-1", "secret-1")).status == 200
        client.close()
        assert custom.base_url == f"http://127.0.0.1:{custom.port}"
    assert not custom.running


def test_every_answer_has_content_length_and_keeps_the_connection(api: Api) -> None:
    session = create(api)
    replies = [
        api.call("GET", "/session"),
        api.call("DELETE", f"/session/{session['SessionId']}"),
        api.call("GET", "/nowhere"),
        api.call("POST", f"/session/{HOST.user_id}", raw=b"{not json"),
    ]
    assert [r.status for r in replies] == [200, 204, 404, 400]
    for reply in replies:
        assert reply.headers["Content-Length"] == str(len(reply.raw))
    assert replies[1].raw == b""
    # All of the above went over one kept-alive socket.
    assert api.connection.sock is not None


def test_paths_and_query_keys_are_case_insensitive(api: Api) -> None:
    create(api, path="/SESSION/0?EXTERNALID=prov-001")
    reply = api.call("GET", "/Session/0?externalid=prov-001")
    assert reply.status == 200
    assert len(reply.json) == 1


def test_unknown_route_is_404_and_wrong_method_405(api: Api) -> None:
    assert api.call("GET", "/appointments").status == 404
    assert api.call("GET", "/session/abc").status == 404
    assert api.call("PUT", "/session", {"ScheduleTs": None}).status == 405
    assert api.call("POST", "/user", {}).status == 405
    assert api.call("PATCH", "/session/1", {}).status == 405


def test_malformed_or_missing_body_is_400(api: Api) -> None:
    path = f"/session/{HOST.user_id}"
    assert api.call("POST", path, raw=b'{"ScheduleTs": ').status == 400
    assert api.call("POST", path).message == "The request body is required"
    assert api.call("POST", path, ["not", "an", "object"]).status == 400
    assert api.call("GET", "/user").status == 200


# --- users ---------------------------------------------------------------------------------------


def test_users_list_by_id_and_by_external_id(api: Api) -> None:
    users = api.call("GET", "/user").json
    assert [u["ExternalId"] for u in users] == [f"prov-00{i}" for i in range(1, 6)]
    first = users[0]
    assert first == {
        "SystemUserId": str(HOST.user_id),
        "FullName": HOST.full_name,
        "EmailAddress": HOST.email,
        "ExternalId": "prov-001",
        "TimeZoneWindowsId": "Eastern Standard Time",
    }
    assert isinstance(first["SystemUserId"], str)
    assert api.call("GET", f"/user/{HOST.user_id}").json == first
    assert api.call("GET", "/user/0?externalId=prov-001").json == first
    assert api.call("GET", "/user/999").status == 404
    assert api.call("GET", "/user/0?externalId=nobody").status == 404


def test_hosts_added_at_runtime_serve_until_reset(emulator: Emulator, api: Api) -> None:
    emulator.add_host(HostUser(2001, "prov-020", "Extra Provider", "extra@clinic.example"))
    assert api.call("GET", "/user/0?externalId=prov-020").json["SystemUserId"] == "2001"
    create(api, path="/session/0?externalId=prov-020")
    with pytest.raises(ValueError, match="already exists"):
        emulator.add_host(HostUser(2001, "prov-021", "Another Provider", "a@clinic.example"))
    emulator.reset()
    assert api.call("GET", "/user/2001").status == 404


# --- sessions ------------------------------------------------------------------------------------


def test_a_removed_host_is_404_and_its_sessions_stay(emulator: Emulator, api: Api) -> None:
    session = create(api)
    emulator.remove_host(HOST.external_id)
    assert api.call("GET", f"/session/0?externalId={HOST.external_id}").status == 404
    assert api.call("GET", f"/user/{HOST.user_id}").status == 404
    assert api.call("POST", f"/session/{HOST.user_id}", new_session()).status == 404
    listed = api.call("GET", "/session").json
    assert [s["SessionId"] for s in listed] == [session["SessionId"]]
    added = api.call("POST", f"/participant/{session['SessionId']}", guest("Ben Sample"))
    assert added.status == 200
    emulator.reset()
    assert api.call("GET", f"/session/0?externalId={HOST.external_id}").status == 200


def test_packets_cancels_and_departed_hosts_survive_the_state_file() -> None:
    state = EmulatorState(seed=1)
    body = new_session(participants=[guest(PacketId=None)])
    sid = state.create_session(body, host_user_id=HOST.user_id)["SessionId"]
    live = state.create_session(new_session(), host_user_id=HOST.user_id)["SessionId"]
    state.set_billing(sid, datetime(2030, 3, 11, 15, 2))
    state.cancel_session(session_id=sid)
    state.remove_host(HOST.external_id)
    again = EmulatorState(seed=1)
    restore(again, json.loads(json.dumps(snapshot(state))))
    assert [(g.sent, g.shown) for g in again.packets(sid).values()] == [(None, -1)]
    assert again.session(sid).reported_type == "Scheduled"
    with pytest.raises(UnknownResourceError):
        again.list_sessions_json(host_external_id=HOST.external_id)
    # The departed host's live session can still be changed: its host is remembered.
    assert again.add_participant(guest("Ben Sample"), session_id=live)["UserId"] == HOST.user_id


def test_create_session_by_user_id(emulator: Emulator, api: Api) -> None:
    session = create(api)
    assert set(session) == SESSION_KEYS
    assert session["ScheduleTs"] == "2030-03-11T15:00:00"
    assert session["ScheduleType"] == "Scheduled"
    assert session["UserId"] == HOST.user_id
    assert session["ExternalSessionId"] == "appt-1"
    assert session["Topic"] == "Follow-up"
    assert session["BillableTs"] is None
    assert len(str(session["ConnectCode"])) == 9
    host, patient = session["Participants"]
    for participant in (host, patient):
        assert set(participant) == PARTICIPANT_KEYS
    assert host["SecureVideoUserId"] == HOST.user_id
    assert host["ParticipantFullName"] == HOST.full_name
    assert host["ParticipantExternalId"] == HOST.external_id
    assert patient["SecureVideoUserId"] is None
    assert patient["ParticipantFullName"] == PATIENT_NAME
    assert patient["ParticipantTimeZoneWindowsId"] == "Pacific Standard Time"
    assert patient["RSVP"] == "Unknown"
    assert patient["ParticipationId"] != host["ParticipationId"]
    # PacketId is stored although Session JSON never shows it.
    stored = emulator.sessions()[0]
    assert stored.participants[1].packet_id == 12
    assert stored.scheduled_by_user_id == -1


def test_create_session_by_host_external_id(api: Api) -> None:
    session = create(api, path="/session/0?externalId=prov-002")
    assert session["UserId"] == OTHER_HOST.user_id
    assert session["Participants"][0]["SecureVideoUserId"] == OTHER_HOST.user_id


def test_create_session_for_unknown_host_is_404(api: Api) -> None:
    assert api.call("POST", "/session/4242", new_session()).status == 404
    assert api.call("POST", "/session/0?externalId=nobody", new_session()).status == 404
    assert api.call("POST", "/session/0", new_session()).status == 404


def test_null_schedule_ts_is_an_on_demand_session_now(emulator: Emulator, api: Api) -> None:
    emulator.state.set_clock(NOW.replace(second=41))
    session = create(api, schedule_ts=None)
    assert session["ScheduleType"] == "OnDemand"
    assert session["ScheduleTs"] == "2030-03-10T12:00:41"


def test_schedule_ts_with_offset_is_stored_as_utc(api: Api) -> None:
    session = create(api, schedule_ts="2030-03-11T10:30:15-05:00")
    assert session["ScheduleTs"] == "2030-03-11T15:30:00"


def test_securevideo_user_participant(api: Api) -> None:
    colleague = {"SecureVideoUserId": str(OTHER_HOST.user_id), "PacketId": -1}
    session = create(api, participants=[colleague, guest()])
    user = session["Participants"][1]
    assert user["SecureVideoUserId"] == OTHER_HOST.user_id
    assert user["ParticipantFullName"] == OTHER_HOST.full_name
    unknown = api.call(
        "POST", f"/session/{HOST.user_id}", new_session(participants=[{"SecureVideoUserId": 77}])
    )
    assert unknown.status == 400


def test_duplicate_external_session_id_is_accepted(emulator: Emulator, api: Api) -> None:
    first = create(api)
    second = create(api)
    assert first["SessionId"] != second["SessionId"]
    assert emulator.live_sessions_by_external_id() == {
        "appt-1": [first["SessionId"], second["SessionId"]]
    }
    assert emulator.duplicate_external_session_ids() == {
        "appt-1": [first["SessionId"], second["SessionId"]]
    }


def test_list_sessions_all_by_host_and_by_host_external_id(api: Api) -> None:
    mine = create(api, external_session_id="a")
    theirs = create(api, path=f"/session/{OTHER_HOST.user_id}", external_session_id="b")
    all_ids = [s["SessionId"] for s in api.call("GET", "/session").json]
    assert all_ids == [mine["SessionId"], theirs["SessionId"]]
    by_id = api.call("GET", f"/session/{HOST.user_id}").json
    assert [s["SessionId"] for s in by_id] == [mine["SessionId"]]
    by_external = api.call("GET", "/session/0?externalId=prov-002").json
    assert [s["SessionId"] for s in by_external] == [theirs["SessionId"]]
    assert api.call("GET", f"/session/{DEFAULT_HOSTS[4].user_id}").json == []
    assert api.call("GET", "/session/0?externalId=nobody").status == 404
    assert api.call("GET", "/session/31337").status == 404


def test_list_sessions_by_participant_email(api: Api) -> None:
    create(api, external_session_id="a")
    other = create(
        api,
        external_session_id="b",
        participants=[guest("Sam Sample", ParticipantEmailAddress="sam@example.org")],
    )
    found = api.call("GET", "/session?participantEmail=SAM@example.org").json
    assert [s["SessionId"] for s in found] == [other["SessionId"]]
    on_host = api.call("GET", f"/session/{HOST.user_id}?participantEmail=sam@example.org").json
    assert [s["SessionId"] for s in on_host] == [other["SessionId"]]
    assert api.call("GET", "/session?participantEmail=none@example.org").json == []


def test_only_active_sessions_are_listed(emulator: Emulator, api: Api) -> None:
    recent = create(api, schedule_ts="2030-03-09T12:30:00", external_session_id="recent")
    old = create(api, schedule_ts="2030-03-09T11:45:00", external_session_id="old")
    listed = {s["SessionId"] for s in api.call("GET", "/session").json}
    assert recent["SessionId"] in listed
    assert old["SessionId"] not in listed
    emulator.state.advance(timedelta(hours=1))
    assert api.call("GET", "/session").json == []
    # Deactivated sessions still exist (history, duplicate counting).
    assert len(emulator.sessions()) == 2


def test_reschedule_by_id(api: Api) -> None:
    session = create(api)
    reply = api.call(
        "PUT", f"/session/{session['SessionId']}", {"ScheduleTs": "2030-03-12T09:15:59"}
    )
    assert reply.status == 200
    assert reply.json["ScheduleTs"] == "2030-03-12T09:15:00"
    assert reply.json["ScheduleType"] == "Rescheduled"
    assert set(reply.json) == SESSION_KEYS


def test_reschedule_by_external_session_id_acts_on_newest_live(api: Api) -> None:
    older = create(api)
    newer = create(api)
    reply = api.call(
        "PUT", "/session/0?externalSessionId=appt-1", {"ScheduleTs": "2030-03-13T08:00:00"}
    )
    assert reply.status == 200
    assert reply.json["SessionId"] == newer["SessionId"]
    assert api.call("DELETE", f"/session/{newer['SessionId']}").status == 204
    reply = api.call(
        "PUT", "/session/0?externalSessionId=appt-1", {"ScheduleTs": "2030-03-14T08:00:00"}
    )
    assert reply.json["SessionId"] == older["SessionId"]


def test_reschedule_errors(api: Api) -> None:
    session = create(api)
    path = f"/session/{session['SessionId']}"
    assert api.call("PUT", "/session/0?externalSessionId=nope", {"ScheduleTs": None}).status == 404
    assert api.call("PUT", "/session/999", {"ScheduleTs": None}).status == 404
    assert api.call("PUT", path, {}).message == "ScheduleTs is required"
    assert api.call("PUT", path, {"ScheduleTs": "tomorrow"}).status == 400
    assert api.call("DELETE", path).status == 204
    cancelled = api.call("PUT", path, {"ScheduleTs": "2030-03-12T09:00:00"})
    assert cancelled.status == 400
    assert "cancelled" in cancelled.message


def test_cancel_leaves_a_tombstone(emulator: Emulator, api: Api) -> None:
    session = create(api)
    reply = api.call("DELETE", f"/session/{session['SessionId']}")
    assert (reply.status, reply.raw) == (204, b"")
    listed = api.call("GET", "/session").json
    assert [(s["SessionId"], s["ScheduleType"]) for s in listed] == [
        (session["SessionId"], "Cancelled")
    ]
    again = api.call("DELETE", f"/session/{session['SessionId']}")
    assert again.status == 400
    assert "already cancelled" in again.message
    assert emulator.live_sessions_by_external_id() == {}


def test_cancel_by_external_session_id_and_reinstate(emulator: Emulator, api: Api) -> None:
    first = create(api)
    assert api.call("DELETE", "/session/0?externalSessionId=appt-1").status == 204
    assert api.call("DELETE", "/session/0?externalSessionId=appt-1").status == 404
    reinstated = create(api)
    assert emulator.live_sessions_by_external_id() == {"appt-1": [reinstated["SessionId"]]}
    types = {s["SessionId"]: s["ScheduleType"] for s in api.call("GET", "/session").json}
    assert types == {first["SessionId"]: "Cancelled", reinstated["SessionId"]: "Scheduled"}
    assert api.call("DELETE", "/session/98765").status == 404


# --- participants --------------------------------------------------------------------------------


def test_add_participant_by_session_id_and_by_external_session_id(api: Api) -> None:
    session = create(api)
    reply = api.call("POST", f"/participant/{session['SessionId']}", guest("Sam Sample"))
    assert reply.status == 200
    assert [p["ParticipantFullName"] for p in reply.json["Participants"]] == [
        HOST.full_name,
        PATIENT_NAME,
        "Sam Sample",
    ]
    reply = api.call("POST", "/participant/0?externalSessionId=appt-1", guest("Kim Kase"))
    assert reply.status == 200
    assert len(reply.json["Participants"]) == 4
    assert api.call("POST", "/participant/424242", guest("Lee Lane")).status == 404
    assert (
        api.call("POST", "/participant/0?externalSessionId=nope", guest("Lee Lane")).status == 404
    )


def test_update_participant_by_participation_id(api: Api) -> None:
    patient = guest_of(create(api))
    change = {
        "ParticipantFullName": PATIENT_NAME,
        "ParticipantSmsNumber": "15550002222",
        "ShouldAutoDeliverCode": "S",
        "SvcId": 1037,
        "DepositRequired": 20.0,
    }
    reply = api.call("PUT", f"/participant/{patient['ParticipationId']}", change)
    assert reply.status == 200
    updated = guest_of(reply.json)
    assert updated["ParticipantSmsNumber"] == "15550002222"
    assert updated["ShouldAutoDeliverCode"] == "S"
    assert (updated["SvcId"], updated["DepositRequired"]) == (1037, 20.0)
    assert updated["ParticipantEmailAddress"] == PATIENT_EMAIL


def test_update_participant_by_external_ids(api: Api) -> None:
    create(api)
    reply = api.call(
        "PUT",
        "/participant/0?externalSessionId=appt-1&externalId=pat-1",
        {"ParticipantTimeZoneWindowsId": "Central Standard Time"},
    )
    assert reply.status == 200
    assert guest_of(reply.json)["ParticipantTimeZoneWindowsId"] == "Central Standard Time"
    missing = "/participant/0?externalSessionId=appt-1&externalId=nobody"
    assert api.call("PUT", missing, {"ParticipantSmsNumber": ""}).status == 404
    no_session = "/participant/0?externalSessionId=nope&externalId=pat-1"
    assert api.call("PUT", no_session, {"ParticipantSmsNumber": ""}).status == 404
    assert api.call("PUT", "/participant/555", {"ParticipantSmsNumber": ""}).status == 404


def test_participant_name_cannot_change_through_put(api: Api) -> None:
    patient = guest_of(create(api))
    path = f"/participant/{patient['ParticipationId']}"
    renamed = api.call("PUT", path, {"ParticipantFullName": "Pat Renamed"})
    assert renamed.status == 400
    assert "ParticipantFullName cannot be changed" in renamed.message
    assert "Pat" not in renamed.message
    assert api.call("PUT", path, {"ParticipantFullName": PATIENT_NAME}).status == 200
    assert api.call("PUT", path, {"ParticipantSmsNumber": "1"}).status == 200


def test_host_cannot_be_updated_and_a_securevideo_user_only_in_session_fields(api: Api) -> None:
    colleague = {"SecureVideoUserId": OTHER_HOST.user_id}
    session = create(api, participants=[guest(), colleague])
    host, _, user = session["Participants"]
    assert api.call("PUT", f"/participant/{host['ParticipationId']}", {}).status == 400
    assert (
        api.call("PUT", "/participant/0?externalSessionId=appt-1&externalId=prov-001", {}).status
        == 400
    )
    assert api.call("DELETE", f"/participant/{host['ParticipationId']}").status == 400
    # "If updating a User ... include only Session-specific properties (e.g., PacketId, SvcId,
    # and DepositRequired), not User-specified properties ... maintained using the User API."
    route = f"/participant/{user['ParticipationId']}"
    refused = api.call("PUT", route, {"ParticipantEmailAddress": "x@clinic.example"})
    assert refused.status == 400
    assert "User API" in refused.json["Message"]
    answer = api.call("PUT", route, {"PacketId": 1215, "SvcId": 1037, "DepositRequired": 20.0})
    assert answer.status == 200
    updated = answer.json["Participants"][2]
    assert (updated["SvcId"], updated["DepositRequired"]) == (1037, 20.0)


def test_remove_participant_by_id_and_by_external_ids(api: Api) -> None:
    session = create(
        api, participants=[guest(), guest("Sam Sample", ParticipantExternalId="pat-2")]
    )
    sam = session["Participants"][2]
    reply = api.call("DELETE", f"/participant/{sam['ParticipationId']}")
    assert (reply.status, reply.raw) == (204, b"")
    assert api.call("DELETE", f"/participant/{sam['ParticipationId']}").status == 404
    assert (
        api.call("DELETE", "/participant/0?externalSessionId=appt-1&externalId=pat-1").status == 204
    )
    remaining = api.call("GET", "/session").json[0]["Participants"]
    assert [p["ParticipantFullName"] for p in remaining] == [HOST.full_name]
    # A removed name may be added again (the documented way to rename).
    assert api.call("POST", "/participant/0?externalSessionId=appt-1", guest()).status == 200


def test_participant_changes_on_a_cancelled_session_are_400(api: Api) -> None:
    session = create(api)
    patient = guest_of(session)
    assert api.call("DELETE", f"/session/{session['SessionId']}").status == 204
    assert (
        api.call("POST", f"/participant/{session['SessionId']}", guest("Sam Sample")).status == 400
    )
    assert api.call("PUT", f"/participant/{patient['ParticipationId']}", {}).status == 400
    assert api.call("DELETE", f"/participant/{patient['ParticipationId']}").status == 400
    assert (
        api.call("PUT", f"/rsvp/{patient['ParticipationId']}", {"RSVP": "Confirmed"}).status == 400
    )


INVALID_PARTICIPANTS: list[tuple[str, list[dict[str, Any]], str]] = [
    ("short name", [guest("P")], "ParticipantFullName must be at least 2 characters"),
    ("no name", [{"ShouldAutoDeliverCode": "N"}], "ParticipantFullName must be at least 2"),
    (
        "E without e-mail",
        [guest(ParticipantEmailAddress="")],
        "ParticipantEmailAddress is required",
    ),
    (
        "S without SMS",
        [guest(ShouldAutoDeliverCode="S", ParticipantSmsNumber=None)],
        "ParticipantSmsNumber is required",
    ),
    (
        "unknown delivery",
        [guest(ShouldAutoDeliverCode="X")],
        "ShouldAutoDeliverCode must be E, S or N",
    ),
    ("SvcId alone", [guest(SvcId=1037)], "SvcId and DepositRequired"),
    ("deposit alone", [guest(DepositRequired=20.0)], "SvcId and DepositRequired"),
    ("same name twice", [guest(), guest(PATIENT_NAME.upper())], "already in the session"),
    (
        "same user twice",
        [{"SecureVideoUserId": 1002}, {"SecureVideoUserId": "1002"}],
        "already in the session",
    ),
    ("host by id", [{"SecureVideoUserId": HOST.user_id}], "host cannot be added"),
    ("host by name", [guest(HOST.full_name)], "host cannot be added"),
    ("no participants", [], "at least one participant"),
    ("wrong type", [guest(SvcId="many", DepositRequired=1)], "SvcId must be an integer"),
    ("odd user id", [{"SecureVideoUserId": "--1"}], "SecureVideoUserId must be an integer"),
]


@pytest.mark.parametrize(
    ("participants", "expected"),
    [(p, e) for _, p, e in INVALID_PARTICIPANTS],
    ids=[name for name, _, _ in INVALID_PARTICIPANTS],
)
def test_invalid_new_session_is_400_without_names(
    emulator: Emulator, api: Api, participants: list[dict[str, Any]], expected: str
) -> None:
    reply = api.call("POST", f"/session/{HOST.user_id}", new_session(participants=participants))
    assert reply.status == 400
    assert expected in reply.message
    for secret in (PATIENT_NAME, PATIENT_EMAIL, HOST.full_name, "15550001111"):
        assert secret.lower() not in reply.message.lower()
    assert emulator.sessions() == []


@pytest.mark.parametrize(
    ("participant", "expected"),
    [
        (guest(), "already in the session"),
        (guest(" pat  EXAMPLE "), "already in the session"),
        (guest(HOST.full_name), "host cannot be added"),
        ({"SecureVideoUserId": HOST.user_id}, "host cannot be added"),
        (guest("Sam Sample", ShouldAutoDeliverCode="S", ParticipantSmsNumber=""), "SmsNumber"),
        (guest("x"), "at least 2 characters"),
    ],
)
def test_invalid_added_participant_is_400(
    api: Api, participant: dict[str, Any], expected: str
) -> None:
    session = create(api)
    reply = api.call("POST", f"/participant/{session['SessionId']}", participant)
    assert reply.status == 400
    assert expected in reply.message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ParticipantEmailAddress": None}, "ParticipantEmailAddress is required"),
        ({"ShouldAutoDeliverCode": "S", "ParticipantSmsNumber": ""}, "SmsNumber is required"),
        ({"ShouldAutoDeliverCode": "Q"}, "E, S or N"),
        ({"SvcId": 5}, "SvcId and DepositRequired"),
        ({"SecureVideoUserId": 1002}, "SecureVideoUserId cannot be changed"),
    ],
)
def test_invalid_participant_update_is_400(api: Api, change: dict[str, Any], expected: str) -> None:
    patient = guest_of(create(api))
    reply = api.call("PUT", f"/participant/{patient['ParticipationId']}", change)
    assert reply.status == 400
    assert expected in reply.message


def test_time_zone_must_be_a_windows_id_and_defaults_to_the_host(api: Api) -> None:
    session = create(
        api,
        participants=[
            guest(ParticipantTimeZoneWindowsId="Canada Central Standard Time"),
            guest("Sam Sample", ParticipantTimeZoneWindowsId=None),
            guest("Ada Sample", ParticipantTimeZoneWindowsId=" "),
        ],
    )
    zones = [p["ParticipantTimeZoneWindowsId"] for p in session["Participants"]]
    assert zones == [
        "Eastern Standard Time",
        "Canada Central Standard Time",
        "Eastern Standard Time",
        "Eastern Standard Time",
    ]
    sid, patient = session["SessionId"], guest_of(session)
    for zone in ("Mars Standard Time", "America/Chicago", "eastern standard time"):
        refused = [
            api.call(
                "POST",
                f"/session/{HOST.user_id}",
                new_session(participants=[guest(ParticipantTimeZoneWindowsId=zone)]),
            ),
            api.call(
                "POST",
                f"/participant/{sid}",
                guest("Ben Sample", ParticipantTimeZoneWindowsId=zone),
            ),
            api.call(
                "PUT",
                f"/participant/{patient['ParticipationId']}",
                {"ParticipantTimeZoneWindowsId": zone},
            ),
        ]
        assert [r.status for r in refused] == [400, 400, 400], zone
        assert all("Windows time zone id" in r.message for r in refused)
    moved = api.call(
        "PUT",
        f"/participant/{patient['ParticipationId']}",
        {"ParticipantTimeZoneWindowsId": None},
    )
    assert guest_of(moved.json)["ParticipantTimeZoneWindowsId"] == "Eastern Standard Time"


def test_securevideo_user_participations_carry_their_own_external_id(api: Api) -> None:
    """As in the Session JSON article: one user, a different ParticipantExternalId (or null)
    in each session; the host's participation keeps the host's ExternalId."""
    colleague = {"SecureVideoUserId": str(OTHER_HOST.user_id), "PacketId": -1}
    first = create(api, participants=[colleague | {"ParticipantExternalId": "EMR123456"}, guest()])
    second = create(api, external_session_id="appt-2", participants=[colleague, guest()])
    third = create(api, external_session_id="appt-3", participants=[guest()])
    added = api.call(
        "POST",
        f"/participant/{third['SessionId']}",
        colleague | {"ParticipantExternalId": "Provider_AMG"},
    )
    assert added.status == 200
    ids = [
        [(p["SecureVideoUserId"], p["ParticipantExternalId"]) for p in s["Participants"]]
        for s in (first, second, added.json)
    ]
    assert ids == [
        [(HOST.user_id, HOST.external_id), (OTHER_HOST.user_id, "EMR123456"), (None, "pat-1")],
        [(HOST.user_id, HOST.external_id), (OTHER_HOST.user_id, None), (None, "pat-1")],
        [(HOST.user_id, HOST.external_id), (None, "pat-1"), (OTHER_HOST.user_id, "Provider_AMG")],
    ]


def test_passkey_is_null_unless_the_account_option_is_on() -> None:
    colleague = {"SecureVideoUserId": str(OTHER_HOST.user_id), "PacketId": -1}
    body = new_session(participants=[guest(), colleague])
    plain = EmulatorState(seed=1).create_session(body, host_user_id=HOST.user_id)
    assert [p["Passkey"] for p in plain["Participants"]] == [None, None, None]
    with Emulator(seed=1, passkeys=True) as emulator:
        api = Api(emulator)
        try:
            session = api.call("POST", f"/session/{HOST.user_id}", body).json
        finally:
            api.close()
    host, patient, user = (p["Passkey"] for p in session["Participants"])
    # Registered users never have one; a guest made through the API has an RFC 4122 GUID.
    assert (host, user) == (None, None)
    assert isinstance(patient, str) and len(patient) == 36 and patient.count("-") == 4


def test_a_cancelled_session_reads_cancelled_only_while_billable_ts_is_null(
    emulator: Emulator, api: Api
) -> None:
    connected = create(api)
    never = create(api, external_session_id="appt-2")
    emulator.mark_connected(connected["SessionId"], at=datetime(2030, 3, 11, 15, 1))
    emulator.mark_connected(
        connected["SessionId"],
        guest_of(connected)["ParticipationId"],
        at=datetime(2030, 3, 11, 15, 2),
    )
    for s in (connected, never):
        assert api.call("DELETE", f"/session/{s['SessionId']}").status == 204
    listed = {s["SessionId"]: s for s in api.call("GET", "/session").json}
    assert listed[never["SessionId"]]["ScheduleType"] == "Cancelled"
    assert listed[connected["SessionId"]]["ScheduleType"] == "Scheduled"
    assert listed[connected["SessionId"]]["BillableTs"] == "2030-03-11T15:02:00"
    (history,) = api.call("GET", "/history").json
    assert history["ScheduleType"] == "Scheduled"
    # The other reading: SecureVideo refuses to cancel a session that has connected.
    strict = EmulatorState(seed=1, refuse_cancelling_connected=True)
    sid = strict.create_session(new_session(), host_user_id=HOST.user_id)["SessionId"]
    strict.set_billing(sid, datetime(2030, 3, 11, 15, 2))
    with pytest.raises(InvalidRequestError, match="has connected"):
        strict.cancel_session(session_id=sid)
    assert strict.session(sid).reported_type == "Scheduled"


def test_the_packet_each_participation_was_given_is_recorded_as_sent(
    emulator: Emulator, api: Api
) -> None:
    """A null or missing PacketId shows no documents at session creation, all of them when a
    participant is added or updated; tests read what each patient is shown."""
    names = ["Ann", "Bob", "Cy", "Di", "Ed"]
    packets: list[dict[str, Any]] = [
        {"PacketId": -1},
        {"PacketId": 0},
        {"PacketId": 12},
        {"PacketId": None},
        {},
    ]
    participants = []
    for name, packet in zip(names, packets, strict=True):
        body = guest(f"{name} Sample", ParticipantExternalId=name) | packet
        if not packet:
            del body["PacketId"]
        participants.append(body)
    session = create(api, participants=participants)
    sid = session["SessionId"]
    later = guest("Fay Sample", ParticipantExternalId="Fay")
    del later["PacketId"]
    assert api.call("POST", f"/participant/{sid}", later).status == 200
    none_later = guest("Gus Sample", ParticipantExternalId="Gus", PacketId=-1)
    assert api.call("POST", f"/participant/{sid}", none_later).status == 200
    given = {g.external_id: (g.sent, g.shown) for g in emulator.packets(sid).values()}
    assert given == {
        "Ann": (-1, -1),
        "Bob": (0, 0),
        "Cy": (12, 12),
        "Di": (None, -1),
        "Ed": (None, -1),
        "Fay": (None, 0),
        "Gus": (-1, -1),
    }
    by_name = {g.external_id: g.participation_id for g in emulator.packets(sid).values()}
    changes = {
        "Ann": {"PacketId": None},
        "Bob": {"PacketId": 7},
        "Cy": {"ParticipantSmsNumber": ""},
    }
    for name, change in changes.items():
        assert api.call("PUT", f"/participant/{by_name[name]}", change).status == 200
    given = {g.external_id: (g.sent, g.shown) for g in emulator.packets(sid).values()}
    assert (given["Ann"], given["Bob"], given["Cy"]) == ((None, 0), (7, 7), (12, 12))
    refused = api.call("PUT", f"/participant/{by_name['Ann']}", {"PacketId": -2})
    assert refused.status == 400 and "PacketId" in refused.message
    # Session JSON still does not report it.
    assert all("PacketId" not in p for p in api.call("GET", "/session").json[0]["Participants"])


# --- RSVP ----------------------------------------------------------------------------------------


def test_rsvp_object_and_bare_string(emulator: Emulator, api: Api) -> None:
    session = create(api)
    host, patient = session["Participants"]
    path = f"/rsvp/{patient['ParticipationId']}"
    reply = api.call("PUT", path, {"RSVP": "Confirmed"})
    assert reply.status == 200
    assert guest_of(reply.json)["RSVP"] == "Confirmed"
    assert guest_of(api.call("PUT", path, "Declined").json)["RSVP"] == "Declined"
    assert api.call("PUT", path, {"RSVP": "Maybe"}).status == 400
    assert api.call("PUT", f"/rsvp/{host['ParticipationId']}", {"RSVP": "Confirmed"}).status == 400
    assert api.call("PUT", "/rsvp/31337", {"RSVP": "Confirmed"}).status == 404
    emulator.set_rsvp(patient["ParticipationId"], "Unknown")
    assert guest_of(api.call("GET", "/session").json[0])["RSVP"] == "Unknown"


# --- history and billing -------------------------------------------------------------------------


def test_mark_connected_makes_a_session_billable(emulator: Emulator, api: Api) -> None:
    session = create(api)
    patient = guest_of(session)
    emulator.mark_connected(session["SessionId"], at=datetime(2030, 3, 11, 15, 1, 0))
    assert api.call("GET", "/history").json == []
    emulator.mark_connected(
        session["SessionId"], patient["ParticipationId"], at=datetime(2030, 3, 11, 15, 2, 30)
    )
    listed = api.call("GET", "/session").json[0]
    assert listed["BillableTs"] == "2030-03-11T15:02:30"
    assert listed["BillableStatusCd"] == "BILL"
    assert listed["Participants"][0]["ConnectionTs"] == "2030-03-11T15:01:00"
    [entry] = api.call("GET", "/history").json
    assert set(entry) == HISTORY_KEYS
    assert entry["UsageDescription"] == f"Session #{session['SessionId']}"
    assert entry["ScheduledByUserId"] == -1
    assert entry["ReportableMeetingProvider"] == "Zoom"
    with pytest.raises(UnknownResourceError):
        emulator.mark_connected(session["SessionId"], participation_id=1)


def history_ids(api: Api, query: str) -> list[int]:
    reply = api.call("GET", f"/history{query}")
    assert reply.status == 200, reply.raw
    return [entry["SessionId"] for entry in reply.json]


def test_history_filters(emulator: Emulator, api: Api) -> None:
    feb_end = create(api, external_session_id="a")["SessionId"]
    mar_start = create(api, external_session_id="b")["SessionId"]
    mar_mid = create(
        api,
        path=f"/session/{OTHER_HOST.user_id}",
        external_session_id="c",
        participants=[guest("Sam Sample", ParticipantEmailAddress="sam@example.org")],
    )["SessionId"]
    create(api, external_session_id="never-connected")
    emulator.set_billing(feb_end, datetime(2030, 2, 28, 23, 59, 59), "BILL", 30, 2)
    emulator.set_billing(mar_start, datetime(2030, 3, 1, 0, 0, 0), "COMP", 20, 0)
    emulator.set_billing(mar_mid, datetime(2030, 3, 15, 10, 0, 0), "BILL", None, None)

    assert history_ids(api, "") == [feb_end, mar_start, mar_mid]
    assert history_ids(api, "?month=2030-03-01") == [mar_start, mar_mid]
    assert history_ids(api, "?month=2030-02-01") == [feb_end]
    # Month takes precedence over startDt/endDt.
    assert history_ids(api, "?month=2030-02-01&startDt=2030-03-01&endDt=2030-03-31") == [feb_end]
    # endDt includes its whole UTC day; startDt starts at midnight.
    assert history_ids(api, "?startDt=2030-02-28&endDt=2030-02-28") == [feb_end]
    assert history_ids(api, "?startDt=2030-03-01") == [mar_start, mar_mid]
    assert history_ids(api, "?endDt=2030-03-01") == [feb_end, mar_start]
    assert history_ids(api, "?participantEmail=sam@example.org") == [mar_mid]
    assert history_ids(api, f"/{OTHER_HOST.user_id}?month=2030-03-01") == [mar_mid]
    assert history_ids(api, f"/{HOST.user_id}?participantEmail=sam@example.org") == []
    assert api.call("GET", "/history/4242").status == 404
    assert api.call("GET", "/history?month=March").status == 400
    assert api.call("GET", "/history?startDt=2030-13-01").status == 400

    entry = api.call("GET", "/history?startDt=2030-02-28&endDt=2030-02-28").json[0]
    assert entry["DurationMinutes"] == 30
    assert entry["WaitTime"] == 2
    assert entry["BillableTs"] == "2030-02-28T23:59:59"


# --- state as a library --------------------------------------------------------------------------


def test_state_is_usable_without_http() -> None:
    state = EmulatorState(seed=1)
    state.set_clock(NOW)
    created = state.create_session(new_session(), host_external_id="prov-003")
    assert created["UserId"] == DEFAULT_HOSTS[2].user_id
    with pytest.raises(InvalidRequestError):
        state.create_session(new_session(participants=[]), host_user_id=HOST.user_id)
    with pytest.raises(UnknownResourceError):
        state.cancel_session(session_id=1)
    snapshot = state.sessions()
    snapshot[0].participants.clear()
    assert len(state.session(created["SessionId"]).participants) == 2


# --- fault injection -----------------------------------------------------------------------------


def test_fail_next_answers_without_applying(emulator: Emulator, api: Api) -> None:
    emulator.faults.fail_next(2, status=503)
    first = api.call("POST", f"/session/{HOST.user_id}", new_session())
    assert (first.status, first.json) == (503, {"Message": "The service is unavailable."})
    assert api.call("GET", "/session").status == 503
    assert emulator.sessions() == []
    assert api.call("POST", f"/session/{HOST.user_id}", new_session()).status == 201
    assert emulator.faults.injected["fail"] == 2


def test_fail_next_honours_methods_and_status(emulator: Emulator, api: Api) -> None:
    emulator.faults.fail_next(1, status=500, methods=["POST"])
    assert api.call("GET", "/session").status == 200
    assert api.call("POST", f"/session/{HOST.user_id}", new_session()).status == 500
    assert api.call("POST", f"/session/{HOST.user_id}", new_session()).status == 201


def test_fail_rate_is_seeded(emulator: Emulator, api: Api) -> None:
    emulator.faults.fail_rate(1.0, status=502, seed=3)
    assert {api.call("GET", "/user").status for _ in range(5)} == {502}
    emulator.faults.fail_rate(0.5, seed=3)
    first = [api.call("GET", "/user").status for _ in range(20)]
    emulator.faults.fail_rate(0.5, seed=3)
    second = [api.call("GET", "/user").status for _ in range(20)]
    assert first == second
    assert {200, 503} == set(first)
    with pytest.raises(ValueError, match="between 0 and 1"):
        emulator.faults.fail_rate(1.5)


def test_rate_faults_follow_the_request_not_the_order_requests_arrive_in() -> None:
    """Two accounts get the same twelve appointments' requests, one in order from one thread,
    the other in reverse from four threads (so every SessionId and ParticipationId differs):
    each request meets the same faults in both, retries included."""

    def outcomes(order: list[int], threads: int) -> dict[tuple[str, str], list[object]]:
        seen: dict[tuple[str, str], list[object]] = {}
        with Emulator(seed=7) as emulator:
            emulator.state.set_clock(NOW)
            emulator.faults.fail_rate(0.3, seed=11)
            emulator.faults.throttle_rate(0.1, retry_after=None, seed=12)
            emulator.faults.drop_after_apply_rate(0.2, seed=13)

            def attempt(api: Api, aid: str, step: str, method: str, path: str, body: Any) -> Any:
                """Up to four tries while the answer is a 503 or 429; None when it was lost."""
                for _ in range(4):
                    try:
                        reply = api.call(method, path, body)
                    except (OSError, http.client.HTTPException):
                        seen.setdefault((aid, step), []).append("lost")
                        return None
                    seen.setdefault((aid, step), []).append(reply.status)
                    if reply.status not in (429, 503):
                        return reply.json if reply.raw else {}
                return None

            def appointment(api: Api, n: int) -> None:
                aid = f"appt-{n}"
                body = new_session(external_session_id=aid, participants=[guest(f"Pat Ex{n}")])
                attempt(api, aid, "create", "POST", f"/session/{HOST.user_id}", body)
                live = emulator.state.live_sessions_by_external_id().get(aid)
                if not live:
                    return
                (sid,) = live
                move = {"ScheduleTs": "2030-03-12T15:00:00"}
                attempt(api, aid, "move", "PUT", f"/session/{sid}", move)
                attempt(api, aid, "add", "POST", f"/participant/{sid}", guest(f"Kim Ex{n}"))
                pid = emulator.state.session(sid).participants[-1].participation_id
                attempt(api, aid, "remove", "DELETE", f"/participant/{pid}", None)
                attempt(api, aid, "cancel", "DELETE", f"/session/{sid}", None)

            def worker(numbers: list[int]) -> None:
                api = Api(emulator)
                for n in numbers:
                    appointment(api, n)
                api.close()

            pool = [
                threading.Thread(target=worker, args=(order[i::threads],)) for i in range(threads)
            ]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
        return seen

    numbers = list(range(1, 13))
    forwards = outcomes(numbers, threads=1)
    backwards = outcomes(numbers[::-1], threads=4)
    assert forwards == backwards
    met = [o for tries in forwards.values() for o in tries]
    # every kind of fault was met, so the comparison compared something
    assert {503, 429, "lost"} <= set(met), met


def test_request_identity_names_assigned_ids_by_what_they_name(
    emulator: Emulator, api: Api
) -> None:
    created = api.call("POST", f"/session/{HOST.user_id}", new_session()).json
    sid, pid = created["SessionId"], created["Participants"][1]["ParticipationId"]
    name_of = emulator.state.order_free_name
    put = request_identity("PUT", f"/session/{sid}", {}, {"ScheduleTs": None}, name_of)
    assert str(sid) not in put
    assert f"session {HOST.user_id}/appt-1" in put
    remove = request_identity("DELETE", f"/participant/{pid}", {}, None, name_of)
    assert "participant pat-1" in remove
    # a host's user id is no order-dependent id; an unknown id stays as it is
    assert str(HOST.user_id) in request_identity("GET", f"/session/{HOST.user_id}", {}, None)
    assert "424242" in request_identity("PUT", "/session/424242", {}, None, name_of)


@pytest.mark.parametrize(("retry_after", "header"), [(2, "2"), (2.0, "2"), (0.2, "0.2")])
def test_throttle_next_sends_retry_after_without_applying(
    emulator: Emulator, api: Api, retry_after: float, header: str
) -> None:
    emulator.faults.throttle_next(1, retry_after=retry_after)
    reply = api.call("POST", f"/session/{HOST.user_id}", new_session())
    assert reply.status == 429
    assert reply.headers["Retry-After"] == header
    assert "Message" in reply.json
    assert emulator.sessions() == []
    assert api.call("POST", f"/session/{HOST.user_id}", new_session()).status == 201
    assert emulator.faults.injected["throttle"] == 1


def test_throttle_rate(emulator: Emulator, api: Api) -> None:
    emulator.faults.throttle_rate(1.0, retry_after=None)
    reply = api.call("GET", "/session")
    assert reply.status == 429
    assert reply.headers["Retry-After"] is None
    emulator.faults.clear()
    assert api.call("GET", "/session").status == 200


def test_drop_after_apply_applies_then_cuts_the_connection(emulator: Emulator, api: Api) -> None:
    emulator.faults.drop_after_apply_next(1)
    assert api.call("GET", "/session").status == 200  # reads are not dropped by default
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        api.call("POST", f"/session/{HOST.user_id}", new_session())
    assert emulator.live_sessions_by_external_id() == {
        "appt-1": [emulator.sessions()[0].session_id]
    }
    [dropped] = emulator.mutating_calls()
    assert (dropped.status, dropped.fault) == (None, "drop")
    assert emulator.faults.injected["drop"] == 1
    assert api.call("GET", "/session").status == 200


def test_drop_after_apply_skips_rejected_changes(emulator: Emulator, api: Api) -> None:
    emulator.faults.drop_after_apply_rate(1.0, seed=1)
    rejected = api.call("POST", f"/session/{HOST.user_id}", new_session(participants=[]))
    assert rejected.status == 400
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        api.call("POST", f"/session/{HOST.user_id}", new_session())
    assert len(emulator.sessions()) == 1


def test_delay_after_apply_outlasts_the_read_timeout(emulator: Emulator) -> None:
    # A second between the client's patience and the held answer (0.1 s against 0.4 s was a
    # race a loaded machine could lose).
    impatient = Api(emulator, timeout=0.5)
    emulator.faults.delay_after_apply_next(1, seconds=1.5)
    with pytest.raises(TimeoutError):
        impatient.call("POST", f"/session/{HOST.user_id}", new_session())
    impatient.close()
    assert len(emulator.sessions()) == 1
    assert emulator.mutating_calls()[0].fault == "delay"
    assert emulator.faults.injected["delay"] == 1


def test_delay_after_apply_rate_still_answers(emulator: Emulator, api: Api) -> None:
    emulator.faults.delay_after_apply_rate(1.0, seconds=0.05, seed=2)
    started = time.monotonic()
    assert api.call("POST", f"/session/{HOST.user_id}", new_session()).status == 201
    assert time.monotonic() - started >= 0.05


def test_latency_overlaps_across_connections(emulator: Emulator) -> None:
    emulator.faults.latency(0.3)
    statuses: list[int] = []

    def one_call() -> None:
        client = Api(emulator)
        statuses.append(client.call("GET", "/user").status)
        client.close()

    threads = [threading.Thread(target=one_call) for _ in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert statuses == [200] * 6
    # Served one after another the six calls would take 1.8 s: overlap, not speed, is asserted.
    assert 0.3 <= elapsed < 1.5
    assert emulator.faults.injected["latency"] == 6


def test_clear_stops_faults_but_keeps_counters(emulator: Emulator, api: Api) -> None:
    emulator.faults.fail_next(5)
    assert api.call("GET", "/user").status == 503
    emulator.faults.clear()
    assert api.call("GET", "/user").status == 200
    assert emulator.faults.injected == {
        "latency": 0,
        "fail": 1,
        "throttle": 0,
        "drop": 0,
        "delay": 0,
    }
    emulator.reset()
    assert emulator.faults.injected["fail"] == 0


# --- call log ------------------------------------------------------------------------------------


def test_call_log(emulator: Emulator, api: Api) -> None:
    session = create(api)
    api.call("GET", f"/session/0?externalId=prov-001&participantEmail={PATIENT_EMAIL}")
    api.call("DELETE", f"/session/{session['SessionId']}")
    calls = emulator.calls
    assert [(c.method, c.path, c.status) for c in calls] == [
        ("POST", f"/session/{HOST.user_id}", 201),
        ("GET", "/session/0", 200),
        ("DELETE", f"/session/{session['SessionId']}", 204),
    ]
    assert calls[0].body == new_session()
    assert calls[1].query == {"externalId": "prov-001", "participantEmail": PATIENT_EMAIL}
    assert calls[1].body is None
    assert calls[0].received_at <= calls[1].received_at <= calls[2].received_at
    assert calls[0].wall.tzinfo is not None
    assert all(c.fault is None for c in calls)
    assert [c.method for c in emulator.mutating_calls()] == ["POST", "DELETE"]
    assert len(emulator.calls_matching("get", "/SESSION")) == 1
    emulator.calls_clear()
    assert emulator.calls == []


def test_call_log_limit_keeps_the_newest_calls() -> None:
    with Emulator(call_log_limit=3) as limited:
        client = Api(limited)
        for user in DEFAULT_HOSTS:
            client.call("GET", f"/user/{user.user_id}")
        client.close()
        assert [c.path for c in limited.calls] == [f"/user/{u.user_id}" for u in DEFAULT_HOSTS[-3:]]


def test_call_log_records_rejections_and_faults(emulator: Emulator, api: Api) -> None:
    api.call("GET", "/user", authorization=basic("demo", "nope"))
    emulator.faults.throttle_next(1)
    api.call("GET", "/user")
    assert [(c.status, c.fault) for c in emulator.calls] == [(401, None), (429, "throttle")]


# --- throughput and lifecycle --------------------------------------------------------------------


def test_sixteen_keep_alive_clients(emulator: Emulator, api: Api) -> None:
    create(api)
    errors: list[BaseException] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        client = Api(emulator)
        try:
            for n in range(25):
                provider = DEFAULT_HOSTS[(index + n) % len(DEFAULT_HOSTS)]
                if n % 5 == 0:
                    body = new_session(external_session_id=f"w{index}-{n}")
                    status = client.call("POST", f"/session/{provider.user_id}", body).status
                else:
                    path = f"/session/0?externalId={provider.external_id}"
                    status = client.call("GET", path).status
                with lock:
                    statuses.append(status)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(statuses) == 400
    assert set(statuses) == {200, 201}
    assert len(emulator.live_sessions_by_external_id()) == 1 + 16 * 5


def test_stop_closes_kept_alive_connections_and_restart_keeps_state() -> None:
    emulator = Emulator().start()
    client = Api(emulator)
    create(client)
    port = emulator.port
    emulator.stop()
    with pytest.raises((http.client.HTTPException, OSError)):
        client.call("GET", "/session")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    emulator.start()
    assert emulator.port == port
    assert len(client.call("GET", "/session").json) == 1
    client.close()
    emulator.stop()
    emulator.stop()


def test_unfinished_connections_count_the_listen_queue_too() -> None:
    """A connection the server has not accepted yet holds a request a dead client may have sent:
    settling after a SIGKILL must wait for it as for one being served."""
    with Emulator() as emulator:
        assert emulator.unfinished_connections == 0
        server = emulator._server
        assert server is not None
        with server._connections_lock:  # the accept loop waits on this lock, and so would
            # unfinished_connections: read the queue as it does
            queued = socket.create_connection(("127.0.0.1", emulator.port), timeout=5)
            wait_until(lambda: _accept_queue_length(server.socket) == 1, what="a queued connection")
            assert len(server._connections) == 0
        wait_until(lambda: emulator.open_connections == 1, what="the connection accepted")
        assert emulator.unfinished_connections == 1
        queued.close()
        wait_until(lambda: emulator.unfinished_connections == 0, what="the connection closed")


def test_serve_runs_until_stopped() -> None:
    stop = threading.Event()
    ready: list[Emulator] = []
    runner = threading.Thread(
        target=serve, args=(0,), kwargs={"on_ready": ready.append, "stop": stop}
    )
    runner.start()
    wait_until(lambda: ready, what="the emulator to be ready")
    client = Api(ready[0])
    assert client.call("GET", "/user").status == 200
    client.close()
    stop.set()
    runner.join(timeout=5)
    assert not runner.is_alive()
    assert not ready[0].running


def test_serve_returns_on_sigterm() -> None:
    program = (
        "from syncd.emulator import serve\n"
        "serve(0, on_ready=lambda emulator: print(emulator.port, flush=True))\n"
        "print('stopped', flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stdout.read().strip() == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("asked", "exact", "rounded"),
    [
        ("2030-03-11T09:07:30", "09:07", "09:00"),
        ("2030-03-11T09:08:00", "09:08", "09:15"),
        ("2030-03-11T09:53:00", "09:53", "10:00"),
        ("2030-03-11T09:45:00", "09:45", "09:45"),
    ],
)
def test_quarter_hour_rounding_is_an_option(asked: str, exact: str, rounded: str) -> None:
    """Only one edition of the documents says scheduled times sit on quarter hours: the emulator
    does either, so syncd's tests can run against both readings."""
    for rounding, expected in ((False, exact), (True, rounded)):
        state = EmulatorState(round_to_quarter_hours=rounding)
        body = {"ScheduleTs": asked, "Participants": [{"ParticipantFullName": "Sam Sample"}]}
        made = state.create_session(body, host_user_id=HOST.user_id)
        assert made["ScheduleTs"][11:16] == expected
        moved = state.reschedule_session({"ScheduleTs": asked}, session_id=made["SessionId"])
        assert moved["ScheduleTs"][11:16] == expected
