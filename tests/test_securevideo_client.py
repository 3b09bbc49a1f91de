"""The SecureVideo client: narrow cases on httpx.MockTransport, the whole API on the emulator.

MockTransport tests pin what no real peer would do on demand (every status class, odd Retry-After
values, garbled answers, transport failures of each kind) and run on a fake clock.  Emulator tests
exercise every endpoint by id and by external id over real HTTP, plus the faults that matter:
throttling, lost answers, slow answers.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx  # noqa: TID251 - tests drive the client through httpx.MockTransport
import pytest

from syncd.adapters.securevideo import (
    SecureVideoClient,
    parse_retry_after,
    remote_session,
)
from syncd.adapters.securevideo.transport import LANE_TAKEN_AT, LaneTransport
from syncd.adapters.securevideo.wire import (
    SESSIONS,
    NewParticipant,
    NewSession,
    SessionJson,
)
from syncd.core.domain import CreateSession, Guest
from syncd.core.errors import (
    AmbiguousError,
    AuthenticationError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)
from syncd.emulator import Emulator

BASE = "https://api.securevideo.test/"
KEY = "key-1234"
SECRET = "s3cr3t-do-not-print"
PATIENT_EMAIL = "anna.canary@example.test"


# --- fakes ---------------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Answer = httpx.Response | Exception


class Script:
    """A MockTransport handler: answers in order, records each request with the fake time."""

    def __init__(self, clock: FakeClock, *answers: Answer) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.seen: list[tuple[float, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.seen.append((self.clock(), request))
        answer = self.answers.pop(0) if self.answers else httpx.Response(200, json=[])
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def requests(self) -> list[httpx.Request]:
        return [r for _, r in self.seen]

    @property
    def times(self) -> list[float]:
        return [t for t, _ in self.seen]


def scripted(*answers: Answer, **options: Any) -> tuple[SecureVideoClient, Script, FakeClock]:
    clock = FakeClock()
    script = Script(clock, *answers)
    client = SecureVideoClient(
        BASE,
        KEY,
        SECRET,
        transport=httpx.MockTransport(script),
        clock=clock,
        sleep=clock.sleep,
        **options,
    )
    return client, script, clock


def error(status: int, message: str | None = None, **headers: str) -> httpx.Response:
    body = {} if message is None else {"Message": message}
    return httpx.Response(status, json=body, headers=headers)


def participant_payload(participation_id: int, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "ParticipationId": participation_id,
        "ParticipantFullName": "Anna Canary",
        "SecureVideoUserId": None,
        "ParticipantEmailAddress": PATIENT_EMAIL,
        "ParticipantSmsNumber": "",
        "ParticipantDefaultResolution": "high",
        "ParticipantTimeZoneWindowsId": "Eastern Standard Time",
        "ParticipantExternalId": "pat-1",
        "ConnectCode": 378174671,
        "Passkey": "9943b942-064d-4fcf-98b4-fbf3859ccc9c",
        "ShouldAutoDeliverCode": "E",
        "ConnectionTs": None,
        "ExpiresTs": None,
        "RSVP": "Unknown",
        "SvcId": None,
        "DepositRequired": None,
    }
    payload.update(fields)
    return payload


def session_payload(session_id: int = 9636, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "SessionId": session_id,
        "ScheduleTs": "2030-04-16T15:00:00",
        "BillableTs": None,
        "ConnectCode": 981342223,
        "DurationMinutes": None,
        "WaitTime": None,
        "BillableStatusCd": None,
        "ScheduleType": "Scheduled",
        "UserId": 1001,
        "IsRecorded": False,
        "ZoomMeetingId": 260326794,
        "ExternalSessionId": "ehr-1",
        "Topic": "Follow-up",
        "Participants": [
            participant_payload(
                18619,
                ParticipantFullName="Demo Provider",
                SecureVideoUserId=1001,
                ParticipantExternalId="prov-001",
                Passkey="",
            ),
            participant_payload(18620),
        ],
    }
    payload.update(fields)
    return payload


# --- HTTP status → typed errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected", "not_expected"),
    [
        (400, PermanentError, NotFoundError),
        (404, NotFoundError, None),
        (409, PermanentError, NotFoundError),
        (401, AuthenticationError, None),
        (403, AuthenticationError, None),
        (429, TemporaryError, AmbiguousError),
        (500, TemporaryError, AmbiguousError),
        (502, TemporaryError, AmbiguousError),
        (503, TemporaryError, AmbiguousError),
        (302, TemporaryError, AmbiguousError),
        (418, TemporaryError, AmbiguousError),
    ],
)
def test_a_read_maps_each_status_class_to_its_error(
    status: int, expected: type[Exception], not_expected: type[Exception] | None
) -> None:
    client, script, _ = scripted(error(status, "Something went wrong."))
    with client, pytest.raises(expected) as caught:
        client.list_sessions(host_external_id="prov-001", participant_email=PATIENT_EMAIL)
    if not_expected is not None:
        assert not isinstance(caught.value, not_expected)
    text = str(caught.value)
    assert "GET /session/0?externalId=…&participantEmail=…" in text
    assert f"({status})" in text or f" {status}" in text
    assert PATIENT_EMAIL not in text and "prov-001" not in text
    assert len(script.seen) == 1


def test_a_refusal_carries_securevideos_message_and_status() -> None:
    client, _, _ = scripted(error(400, "ParticipantFullName must be at least 2 characters"))
    with client, pytest.raises(PermanentError) as caught:
        client.add_participant_raw(
            NewParticipant(participant_full_name="A"), external_session_id="ehr-1"
        )
    assert caught.value.status == 400
    assert str(caught.value) == (
        "POST /participant/0?externalSessionId=…: SecureVideo answered 400: "
        "ParticipantFullName must be at least 2 characters"
    )


def test_not_found_names_the_endpoint_template_not_the_id_value() -> None:
    client, _, _ = scripted(error(404, "Session 225 was not found"))
    with client, pytest.raises(NotFoundError) as caught:
        client.reschedule(datetime(2030, 1, 1, 9, 0), session_id=225)
    assert caught.value.status == 404
    assert str(caught.value).startswith("PUT /session/{sessionId}: SecureVideo answered 404")


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_server_failure_on_a_change_is_ambiguous(status: int) -> None:
    # The server may have committed before failing (sending the invitation, a gateway timeout).
    client, _, _ = scripted(error(status, "An error has occurred."))
    with client, pytest.raises(AmbiguousError) as caught:
        client.cancel(session_id=225)
    assert "may have been applied" in str(caught.value)


@pytest.mark.parametrize("status", [429, 503])
def test_a_declined_change_is_temporary_not_ambiguous(status: int) -> None:
    client, _, _ = scripted(error(status, "Too many requests."))
    with client, pytest.raises(TemporaryError) as caught:
        client.cancel(session_id=225)
    assert not isinstance(caught.value, AmbiguousError)


def test_credentials_rejected_says_so_without_the_credentials() -> None:
    client, _, _ = scripted(error(401, "Authorization has been denied for this request."))
    with client, pytest.raises(AuthenticationError) as caught:
        client.probe()
    text = str(caught.value)
    assert "SecureVideo rejected the API credentials (401)" in text
    assert SECRET not in text and KEY not in text
    assert base64.b64encode(f"{KEY}:{SECRET}".encode()).decode() not in text


def test_a_garbled_error_body_still_maps_by_status() -> None:
    client, _, _ = scripted(
        httpx.Response(502, text="<html>Bad gateway</html>"),
        httpx.Response(400, text="not json"),
    )
    with client:
        with pytest.raises(TemporaryError) as temporary:
            client.list_users()
        assert str(temporary.value) == "GET /user: SecureVideo answered 502"
        with pytest.raises(PermanentError) as permanent:
            client.list_users()
        assert str(permanent.value) == "GET /user: SecureVideo answered 400"


def test_a_long_message_is_cut_short() -> None:
    client, _, _ = scripted(error(400, "x" * 5000))
    with client, pytest.raises(PermanentError) as caught:
        client.list_users()
    assert len(str(caught.value)) < 400


def test_redirects_are_not_followed() -> None:
    client, script, _ = scripted(
        httpx.Response(302, headers={"Location": "https://elsewhere.test/session"})
    )
    with client, pytest.raises(TemporaryError):
        client.list_sessions()
    assert len(script.seen) == 1


# --- transport failures: clean vs ambiguous ----------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("busy")],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_a_request_that_never_left_is_a_clean_temporary_failure(
    failure: Exception, method: str
) -> None:
    client, _, _ = scripted(failure)
    calls: dict[str, Callable[[], object]] = {
        "GET": lambda: client.list_sessions(),
        "POST": lambda: client.create_session_raw(_new_session(), host_external_id="prov-001"),
        "PUT": lambda: client.reschedule(None, session_id=5),
        "DELETE": lambda: client.cancel(session_id=5),
    }
    with client, pytest.raises(TemporaryError) as caught:
        calls[method]()
    assert not isinstance(caught.value, AmbiguousError)
    assert "not sent" in str(caught.value)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("slow"),
        httpx.WriteTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_change_whose_answer_was_lost_is_ambiguous(failure: Exception) -> None:
    client, _, _ = scripted(failure, failure, failure, failure)
    with client:
        for call in (
            lambda: client.create_session_raw(_new_session(), user_id=1001),
            lambda: client.reschedule(datetime(2030, 1, 1, 9), external_session_id="ehr-1"),
            lambda: client.remove_participant_raw(participation_id=7),
            lambda: client.set_rsvp(7, "Confirmed"),
        ):
            with pytest.raises(AmbiguousError) as caught:
                call()
            assert "answer lost" in str(caught.value)
            assert "may have been applied" in str(caught.value)


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("eof"), httpx.ReadError("reset")],
    ids=lambda e: type(e).__name__,
)
def test_a_read_whose_answer_was_lost_is_temporary_not_ambiguous(failure: Exception) -> None:
    client, _, _ = scripted(failure)
    with client, pytest.raises(TemporaryError) as caught:
        client.list_sessions(participant_email=PATIENT_EMAIL)
    assert not isinstance(caught.value, AmbiguousError)
    assert (
        str(caught.value)
        == f"GET /session?participantEmail=…: no answer ({type(failure).__name__})"
    )


def test_transport_failures_do_not_chain_httpx_text() -> None:
    # httpx's exception carries the request, whose URL holds the query values.
    client, _, _ = scripted(httpx.ReadTimeout("timed out"))
    with client, pytest.raises(TemporaryError) as caught:
        client.list_sessions(participant_email=PATIENT_EMAIL)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


# --- Retry-After and the shared gate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0.2", 0.2),
        ("3", 3.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("-4", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_as_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now) == 90.0
    assert parse_retry_after(earlier, now=now) == 0.0


def test_429_reports_retry_after_and_holds_back_the_next_request() -> None:
    client, script, clock = scripted(error(429, "Too many requests.", **{"Retry-After": "0.2"}))
    with client:
        with pytest.raises(TemporaryError) as caught:
            client.list_users()
        assert caught.value.retry_after == pytest.approx(0.2)
        client.list_users()
    assert script.times[1] - script.times[0] >= 0.2
    assert clock.sleeps == [pytest.approx(0.2)]


def test_429_with_an_http_date_holds_back_too() -> None:
    until = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    client, script, _ = scripted(
        error(429, None, **{"Retry-After": until}), max_wait_in_client=60.0
    )
    with client:
        with pytest.raises(TemporaryError) as caught:
            client.list_users()
        assert caught.value.retry_after is not None and 25 < caught.value.retry_after <= 30
        client.list_users()
    assert script.times[1] - script.times[0] >= caught.value.retry_after - 1e-6


def test_503_retry_after_is_honoured() -> None:
    client, script, _ = scripted(error(503, None, **{"Retry-After": "2"}), max_wait_in_client=60.0)
    with client:
        with pytest.raises(TemporaryError) as caught:
            client.cancel(session_id=3)
        assert caught.value.retry_after == 2.0
        client.list_users()
    assert script.times[1] - script.times[0] >= 2.0


def test_429_without_retry_after_does_not_wait() -> None:
    client, script, clock = scripted(error(429))
    with client:
        with pytest.raises(TemporaryError) as caught:
            client.list_users()
        assert caught.value.retry_after is None
        client.list_users()
    assert clock.sleeps == []
    assert len(script.seen) == 2


def test_a_retry_after_beyond_the_limit_fails_fast_without_sending() -> None:
    client, script, clock = scripted(
        error(429, None, **{"Retry-After": "3600"}), max_wait_in_client=60.0
    )
    with client:
        with pytest.raises(TemporaryError):
            client.list_users()
        with pytest.raises(TemporaryError) as caught:
            client.create_session_raw(_new_session(), user_id=1001)
    assert not isinstance(caught.value, AmbiguousError)
    assert caught.value.retry_after == pytest.approx(3600)
    assert "not sent" in str(caught.value)
    assert len(script.seen) == 1
    assert clock.sleeps == []


def test_by_default_a_wait_over_a_second_is_handed_back_to_the_caller() -> None:
    client, script, clock = scripted(error(503, None, **{"Retry-After": "2"}))
    with client:
        with pytest.raises(TemporaryError):
            client.list_users()
        with pytest.raises(TemporaryError) as caught:
            client.list_users()
    assert caught.value.retry_after == pytest.approx(2.0)
    assert "not sent" in str(caught.value)
    assert len(script.seen) == 1
    assert clock.sleeps == []


def test_the_rate_limit_spaces_requests() -> None:
    client, script, _ = scripted(rate_limit_per_second=10)
    with client:
        for _ in range(5):
            client.list_users()
    gaps = [b - a for a, b in zip(script.times, script.times[1:], strict=False)]
    assert gaps == [pytest.approx(0.1)] * 4


def test_the_rate_limit_and_retry_after_combine() -> None:
    client, script, _ = scripted(error(429, None, **{"Retry-After": "1"}), rate_limit_per_second=4)
    with client:
        with pytest.raises(TemporaryError):
            client.list_users()
        client.list_users()
        client.list_users()
    assert script.times[1] - script.times[0] >= 1.0
    assert script.times[2] - script.times[1] == pytest.approx(0.25)


def test_the_hook_sees_each_request_by_template() -> None:
    seen: list[tuple[str, str, int | None, float]] = []
    client, _, _ = scripted(
        httpx.Response(200, json=[]),
        httpx.ReadTimeout("slow"),
        on_response=lambda *event: seen.append(event),
    )
    with client:
        client.list_sessions(host_external_id="prov-001")
        with pytest.raises(AmbiguousError):
            client.cancel(external_session_id="ehr-1")
    assert seen == [
        ("GET", "/session/0?externalId=…", 200, 0.0),
        ("DELETE", "/session/0?externalSessionId=…", None, 0.0),
    ]


# --- requests on the wire ----------------------------------------------------------------------


def test_credentials_travel_only_in_the_authorization_header() -> None:
    client, script, _ = scripted()
    with client:
        client.list_users()
        assert SECRET not in repr(client) and KEY not in repr(client)
    (request,) = script.requests
    expected = "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == expected
    assert SECRET not in str(request.url)


def test_query_values_are_url_encoded() -> None:
    client, script, _ = scripted(httpx.Response(200, json=[]), httpx.Response(204))
    with client:
        client.list_sessions(host_external_id="prov 1&x=y", participant_email="a+b@example.test")
        client.remove_participant_raw(external_session_id="ehr/1?", external_id="pat#1")
    first, second = script.requests
    assert first.url.path == "/session/0"
    assert first.url.params["externalId"] == "prov 1&x=y"
    assert first.url.params["participantEmail"] == "a+b@example.test"
    assert b"a%2Bb%40example.test" in first.url.query
    assert second.method == "DELETE" and second.url.path == "/participant/0"
    assert dict(second.url.params) == {"externalSessionId": "ehr/1?", "externalId": "pat#1"}


@pytest.mark.parametrize("bad", [0, -3, True])
def test_path_ids_must_be_positive_integers(bad: int) -> None:
    client, script, _ = scripted()
    with client, pytest.raises(ValueError, match="positive integers"):
        client.cancel(session_id=bad)
    assert script.seen == []


def test_addressing_needs_exactly_one_of_id_and_external_id() -> None:
    client, script, _ = scripted()
    with client:
        with pytest.raises(ValueError, match="exactly one"):
            client.cancel()
        with pytest.raises(ValueError, match="exactly one"):
            client.cancel(session_id=1, external_session_id="ehr-1")
        with pytest.raises(ValueError, match="at most one"):
            client.list_sessions(user_id=1, host_external_id="prov-001")
        with pytest.raises(ValueError, match="participation_id or"):
            client.update_participant_raw(NewParticipant(), external_session_id="ehr-1")
        with pytest.raises(ValueError, match="month or start"):
            client.history(month=date(2030, 1, 1), start=date(2030, 1, 2))
        with pytest.raises(ValueError, match="Unknown, Confirmed or Declined"):
            client.set_rsvp(7, "Maybe")
    assert script.seen == []


def test_create_session_sends_the_documented_body() -> None:
    client, script, _ = scripted(httpx.Response(201, json=session_payload()))
    op = CreateSession(
        appointment_id="apt-1",
        external_session_id="ehr-1",
        host_external_id="prov-001",
        schedule_ts=datetime(2030, 4, 16, 15, 0),
        topic="Follow-up",
        is_recorded=False,
        guests=(
            Guest(
                external_id="pat-1",
                full_name="Trevor",
                email="trevor@example.test",
                sms="13334446666",
                time_zone_windows_id="Eastern Standard Time",
                deliver="S",
                packet_id=1215,
                svc_id=1037,
                deposit=Decimal("20.00"),
            ),
            Guest(external_id="nurse-7", securevideo_user_id="12", packet_id=-1),
        ),
    )
    with client:
        created = client.create_session(op)
    (request,) = script.requests
    assert request.method == "POST"
    assert request.url.path == "/session/0"
    assert dict(request.url.params) == {"externalId": "prov-001"}
    assert json.loads(request.content) == {
        "ScheduleTs": "2030-04-16T15:00:00",
        "IsRecorded": False,
        "ExternalSessionId": "ehr-1",
        "Topic": "Follow-up",
        "Participants": [
            {
                "ParticipantFullName": "Trevor",
                "ParticipantEmailAddress": "trevor@example.test",
                "ParticipantSmsNumber": "13334446666",
                "ParticipantDefaultResolution": "high",
                "ParticipantTimeZoneWindowsId": "Eastern Standard Time",
                "ParticipantExternalId": "pat-1",
                "ShouldAutoDeliverCode": "S",
                "PacketId": 1215,
                "SvcId": 1037,
                "DepositRequired": 20.0,
            },
            {"SecureVideoUserId": "12", "PacketId": -1, "SvcId": None, "DepositRequired": None},
        ],
    }
    assert created.host_external_id == "prov-001"
    assert created.session_id == 9636


def test_a_session_without_guests_is_refused_before_sending() -> None:
    client, script, _ = scripted()
    op = CreateSession("apt-1", "ehr-1", "prov-001", datetime(2030, 1, 1), None, False, ())
    with client, pytest.raises(PermanentError, match="apt-1"):
        client.create_session(op)
    assert script.seen == []


def test_schedule_ts_is_utc_without_offset_and_seconds() -> None:
    eastern = timezone(timedelta(hours=-5))
    client, script, _ = scripted(
        httpx.Response(200, json=session_payload()), httpx.Response(200, json=session_payload())
    )
    with client:
        client.reschedule_session(225, datetime(2030, 1, 2, 9, 30, 42, tzinfo=eastern))
        client.reschedule(None, external_session_id="ehr-1")
    first, second = script.requests
    assert first.url.path == "/session/225"
    assert json.loads(first.content) == {"ScheduleTs": "2030-01-02T14:30:00"}
    assert second.url.params["externalSessionId"] == "ehr-1"
    assert json.loads(second.content) == {"ScheduleTs": None}


def test_updating_a_securevideo_user_sends_only_session_fields() -> None:
    client, script, _ = scripted(
        httpx.Response(200, json=session_payload()), httpx.Response(200, json=session_payload())
    )
    with client:
        client.update_participant(
            18620, Guest(external_id="nurse-7", securevideo_user_id="12", packet_id=3)
        )
        client.update_participant(18620, Guest(external_id="pat-1", full_name="Anna Canary"))
    first, second = script.requests
    assert first.method == "PUT" and first.url.path == "/participant/18620"
    assert json.loads(first.content) == {"PacketId": 3, "SvcId": None, "DepositRequired": None}
    body = json.loads(second.content)
    assert body["ParticipantFullName"] == "Anna Canary"
    assert body["ParticipantEmailAddress"] == ""
    assert body["ParticipantDefaultResolution"] == "high"
    assert "SecureVideoUserId" not in body


def test_a_guest_without_a_packet_is_sent_packet_id_minus_one_on_every_call() -> None:
    """Defect 2: a null PacketId shows no documents to POST /session but all of them to
    POST /participant (and PUT), so "no packet" must travel as -1 on every call."""
    answers = [httpx.Response(201, json=session_payload())] + [
        httpx.Response(200, json=session_payload()) for _ in range(4)
    ]
    client, script, _ = scripted(*answers)
    patient = Guest(external_id="pat-1", full_name="Anna Canary")
    colleague = Guest(external_id="nurse-7", securevideo_user_id="12")
    op = CreateSession(
        "apt-1", "ehr-1", "prov-001", datetime(2030, 4, 16, 15, 0), None, False, (patient,)
    )
    with client:
        client.create_session(op)
        client.add_participant(9636, patient)
        client.add_participant(9636, colleague)
        client.update_participant(18620, patient)
        client.update_participant(18620, colleague)
    create, *changes = script.requests
    sent = [p["PacketId"] for p in json.loads(create.content)["Participants"]]
    sent += [json.loads(r.content)["PacketId"] for r in changes]
    assert sent == [-1, -1, -1, -1, -1]


def test_history_sends_month_as_its_first_day_and_dates_as_iso() -> None:
    client, script, _ = scripted()
    with client:
        client.history(month=date(2030, 2, 17))
        client.history(start=date(2030, 2, 4), end=date(2030, 2, 5), host_user_id=5)
        client.history(participant_email=PATIENT_EMAIL)
    first, second, third = script.requests
    assert (first.url.path, dict(first.url.params)) == ("/history", {"month": "2030-02-01"})
    assert second.url.path == "/history/5"
    assert dict(second.url.params) == {"startDt": "2030-02-04", "endDt": "2030-02-05"}
    assert dict(third.url.params) == {"participantEmail": PATIENT_EMAIL}


def test_base_url_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="credentials"):
        SecureVideoClient("https://key:secret@api.securevideo.test/", KEY, SECRET)


def test_requests_carry_json_headers_and_no_cookies() -> None:
    client, script, _ = scripted(
        httpx.Response(200, json=[], headers={"Set-Cookie": "track=1; Path=/"}),
        httpx.Response(200, json=session_payload()),
    )
    with client:
        client.list_users()
        client.reschedule(None, session_id=5)
    first, second = script.requests
    for request in (first, second):
        assert request.headers["Accept"] == "application/json"
        assert request.headers["Accept-Encoding"] == "gzip, deflate"
        assert request.headers["User-Agent"] == "syncd"
        assert "Cookie" not in request.headers  # an answer's Set-Cookie is not kept
    assert "Content-Type" not in first.headers
    assert second.headers["Content-Type"] == "application/json"
    assert second.headers["Content-Length"] == str(len(second.content))


def test_a_base_path_is_kept() -> None:
    clock = FakeClock()
    script = Script(clock)
    client = SecureVideoClient(
        "https://gateway.test/securevideo", KEY, SECRET, transport=httpx.MockTransport(script)
    )
    with client:
        client.list_users()
    assert script.requests[0].url.path == "/securevideo/user"


# --- answers: parsing, tolerance, no patient data in failures ---------------------------------


def test_the_documented_session_json_parses() -> None:
    (parsed,) = SESSIONS.validate_python([session_payload()])
    host, guest = parsed.participants
    assert host.secure_video_user_id == "1001"
    assert parsed.zoom_meeting_id == "260326794"
    assert guest.participant_email_address == PATIENT_EMAIL
    assert PATIENT_EMAIL not in repr(parsed)
    assert "Anna Canary" not in repr(parsed)


def test_timestamps_become_naive_utc() -> None:
    parsed = SessionJson.model_validate(
        session_payload(
            ScheduleTs="2016-11-03T21:45:09.467",
            BillableTs="2016-11-03T21:46:16.1+02:00",
            Participants=[participant_payload(1, ConnectionTs="", ExpiresTs=None)],
        )
    )
    assert parsed.schedule_ts == datetime(2016, 11, 3, 21, 45, 9, 467000)
    assert parsed.billable_ts == datetime(2016, 11, 3, 19, 46, 16, 100000)
    assert parsed.participants[0].connection_ts is None


def test_unknown_fields_and_nulls_are_tolerated() -> None:
    parsed = SessionJson.model_validate(
        {
            "SessionId": 1,
            "UserId": 2,
            "ScheduleTs": None,
            "ScheduleType": None,
            "IsRecorded": None,
            "Participants": None,
            "SomethingNew": {"a": 1},
        }
    )
    mapped = remote_session(parsed)
    assert mapped.participants == () and mapped.host_external_id == ""
    assert mapped.schedule_type == "" and mapped.is_recorded is False


def test_session_json_maps_to_the_domain() -> None:
    payload = session_payload(ExternalSessionId="")
    payload["Participants"].append(
        participant_payload(
            18621,
            ParticipantEmailAddress=None,
            ParticipantSmsNumber=None,
            ShouldAutoDeliverCode=None,
            PacketId=1215,
            SvcId=1037,
            DepositRequired=20.00,
            RSVP=None,
            ConnectionTs="2030-04-16T14:58:00",
        )
    )
    session = remote_session(SessionJson.model_validate(payload), "prov-001")
    assert session.external_session_id is None
    assert session.host_external_id == "prov-001"
    host, anna, other = session.participants
    assert host.securevideo_user_id == "1001" and host.external_id == "prov-001"
    assert anna.email == PATIENT_EMAIL and anna.deliver == "E"
    assert anna.packet_id is None and anna.packet_known is False
    assert other.email == "" and other.sms == "" and other.deliver == "N"
    assert other.packet_id == 1215 and other.packet_known is True
    assert other.deposit == Decimal("20") and other.svc_id == 1037
    assert other.rsvp == "Unknown"
    assert other.connection_ts == datetime(2030, 4, 16, 14, 58)


def test_a_change_answer_takes_the_host_from_the_first_participant() -> None:
    client, _, _ = scripted(httpx.Response(200, json=session_payload()))
    with client:
        session = client.add_participant(9636, Guest(external_id="pat-2", full_name="Ben"))
    assert session.host_external_id == "prov-001"


def test_an_unparseable_answer_names_fields_but_never_values() -> None:
    bad = session_payload(SessionId=PATIENT_EMAIL)
    bad["Participants"][1]["ParticipationId"] = "Anna Canary"
    client, _, _ = scripted(httpx.Response(200, json=[bad]))
    with client, pytest.raises(PermanentError) as caught:
        client.list_sessions(host_external_id="prov-001")
    text = str(caught.value)
    assert "GET /session/0?externalId=…" in text
    assert "0.SessionId (int_parsing)" in text
    assert "0.Participants.1.ParticipationId (int_parsing)" in text
    assert PATIENT_EMAIL not in text and "Anna Canary" not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_non_json_success_is_permanent() -> None:
    client, _, _ = scripted(httpx.Response(200, text="<html>portal login</html>"))
    with client, pytest.raises(PermanentError, match=r"\(root\) \(json_invalid\)"):
        client.list_users()


def test_get_user_accepts_an_object_or_a_list() -> None:
    user = {"SystemUserId": "1001", "FullName": "Demo", "ExternalId": "prov-001"}
    client, _, _ = scripted(
        httpx.Response(200, json=user),
        httpx.Response(200, json=[user]),
        httpx.Response(200, json=[]),
    )
    with client:
        assert client.get_user(user_id=1001).system_user_id == "1001"
        assert client.get_user(external_id="prov-001").external_id == "prov-001"
        with pytest.raises(NotFoundError):
            client.get_user(external_id="prov-404")


# --- against the emulator ----------------------------------------------------------------------


def _future(days: int = 2, hour: int = 15) -> datetime:
    day = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=days)
    return day.replace(hour=hour, minute=0, second=0, microsecond=0)


def _new_session(
    external_session_id: str = "ehr-1", *guests: NewParticipant, when: datetime | None = None
) -> NewSession:
    return NewSession(
        schedule_ts=when or _future(),
        external_session_id=external_session_id,
        topic="Follow-up",
        participants=guests
        or (
            NewParticipant(
                participant_full_name="Anna Canary",
                participant_email_address=PATIENT_EMAIL,
                participant_external_id="pat-1",
                should_auto_deliver_code="E",
            ),
        ),
    )


ANNA = Guest(
    external_id="pat-1",
    full_name="Anna Canary",
    email=PATIENT_EMAIL,
    time_zone_windows_id="Pacific Standard Time",
    deliver="E",
    packet_id=12,
)
BEN = Guest(external_id="pat-2", full_name="Ben Canary", sms="15550001111", deliver="S")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, api_secret=SECRET) as running:
        yield running


@pytest.fixture
def emu(emulator: Emulator) -> Iterator[Emulator]:
    emulator.reset()
    yield emulator
    emulator.faults.clear()


@pytest.fixture
def client(emu: Emulator) -> Iterator[SecureVideoClient]:
    with SecureVideoClient(emu.base_url, KEY, SECRET, read_timeout=2.0) as c:
        yield c


def test_emulator_sessions_by_host_id_and_external_id(
    emu: Emulator, client: SecureVideoClient
) -> None:
    first = client.create_session_raw(_new_session("ehr-1"), host_external_id="prov-001")
    second = client.create_session_raw(_new_session("ehr-2"), user_id=1002)
    assert [c.status for c in emu.calls_matching("POST", "/session")] == [201, 201]
    assert first.user_id == 1001 and second.user_id == 1002
    assert first.topic == "Follow-up"

    assert {s.session_id for s in client.list_sessions()} == {first.session_id, second.session_id}
    assert [s.session_id for s in client.list_sessions(user_id=1002)] == [second.session_id]
    by_host = client.list_sessions(host_external_id="prov-001")
    assert [s.session_id for s in by_host] == [first.session_id]
    by_email = client.list_sessions(participant_email=PATIENT_EMAIL)
    assert len(by_email) == 2
    assert client.list_sessions(user_id=1002, participant_email="nobody@example.test") == []


def test_emulator_reschedule_and_cancel_by_id_and_external_id(
    emu: Emulator, client: SecureVideoClient
) -> None:
    one = client.create_session_raw(_new_session("ehr-1"), host_external_id="prov-001")
    two = client.create_session_raw(_new_session("ehr-2"), host_external_id="prov-001")
    later = _future(days=3, hour=16)

    moved = client.reschedule(later, session_id=one.session_id)
    assert moved.schedule_ts == later and moved.schedule_type == "Rescheduled"
    moved = client.reschedule(later + timedelta(minutes=15), external_session_id="ehr-2")
    assert moved.session_id == two.session_id
    assert moved.schedule_ts == later + timedelta(minutes=15)

    client.cancel(session_id=one.session_id)
    client.cancel(external_session_id="ehr-2")
    listed = client.list_host_sessions("prov-001")
    assert {s.session_id: s.is_cancelled for s in listed} == {
        one.session_id: True,
        two.session_id: True,
    }
    assert [c.status for c in emu.calls_matching("DELETE")] == [204, 204]


def test_emulator_participants_by_id_and_external_id(
    emu: Emulator, client: SecureVideoClient
) -> None:
    session = client.create_session_raw(_new_session("ehr-1"), host_external_id="prov-001")
    ben = NewParticipant(
        participant_full_name="Ben Canary",
        participant_sms_number="15550001111",
        participant_external_id="pat-2",
        should_auto_deliver_code="S",
    )
    cara = NewParticipant(participant_full_name="Cara Canary", participant_external_id="pat-3")
    after = client.add_participant_raw(ben, session_id=session.session_id)
    after = client.add_participant_raw(cara, external_session_id="ehr-1")
    colleague = client.add_participant_raw(
        NewParticipant(secure_video_user_id="1003", packet_id=-1), session_id=session.session_id
    )
    by_ext = {p.participant_external_id: p for p in colleague.participants}
    # A SecureVideo user's participation has its own ParticipantExternalId: none was sent.
    assert set(by_ext) == {"prov-001", "pat-1", "pat-2", "pat-3", None}
    assert by_ext[None].secure_video_user_id == "1003"

    quiet = ben.model_copy(update={"should_auto_deliver_code": "N"})
    after = client.update_participant_raw(quiet, participation_id=by_ext["pat-2"].participation_id)
    updated = {p.participant_external_id: p for p in after.participants}
    assert updated["pat-2"].should_auto_deliver_code == "N"
    timed = cara.model_copy(update={"participant_time_zone_windows_id": "Pacific Standard Time"})
    after = client.update_participant_raw(timed, external_session_id="ehr-1", external_id="pat-3")
    updated = {p.participant_external_id: p for p in after.participants}
    assert updated["pat-3"].participant_time_zone_windows_id == "Pacific Standard Time"

    client.set_rsvp(by_ext["pat-1"].participation_id, "Confirmed")
    client.remove_participant_raw(participation_id=by_ext["pat-2"].participation_id)
    client.remove_participant_raw(external_session_id="ehr-1", external_id="pat-3")
    (left,) = client.list_sessions(host_external_id="prov-001")
    remaining = {p.participant_external_id: p for p in left.participants}
    assert set(remaining) == {"prov-001", "pat-1", None}
    assert remaining["pat-1"].rsvp == "Confirmed"


def test_emulator_users(emu: Emulator, client: SecureVideoClient) -> None:
    users = client.list_users()
    assert [u.external_id for u in users][:2] == ["prov-001", "prov-002"]
    assert client.get_user(user_id=1002).external_id == "prov-002"
    assert client.get_user(external_id="prov-003").system_user_id == "1003"
    with pytest.raises(NotFoundError):
        client.get_user(external_id="prov-404")
    client.probe()


def test_emulator_history(emu: Emulator, client: SecureVideoClient) -> None:
    one = client.create_session_raw(_new_session("ehr-1"), host_external_id="prov-001")
    two = client.create_session_raw(_new_session("ehr-2"), host_external_id="prov-002")
    emu.set_billing(one.session_id, datetime(2030, 2, 4, 15, 1), duration_minutes=25, wait_time=1)
    emu.set_billing(two.session_id, datetime(2030, 3, 9, 15, 2))

    (feb,) = client.history(month=date(2030, 2, 20))
    assert (feb.session_id, feb.billable_status_cd, feb.duration_minutes) == (
        one.session_id,
        "BILL",
        25,
    )
    assert feb.scheduled_by_user_id == -1
    ranged = client.history(start=date(2030, 3, 9), end=date(2030, 3, 9))
    assert [h.session_id for h in ranged] == [two.session_id]
    assert [h.session_id for h in client.history(host_user_id=1001)] == [one.session_id]
    assert len(client.history(participant_email=PATIENT_EMAIL)) == 2


def test_emulator_gateway_round_trip(emu: Emulator, client: SecureVideoClient) -> None:
    op = CreateSession(
        appointment_id="apt-1",
        external_session_id="ehr-1",
        host_external_id="prov-001",
        schedule_ts=_future(),
        topic="Follow-up",
        is_recorded=True,
        guests=(ANNA,),
    )
    created = client.create_session(op)
    assert created.host_external_id == "prov-001"
    assert created.schedule_ts == op.schedule_ts and created.is_recorded
    host, anna = created.participants
    assert host.external_id == "prov-001"
    assert (anna.external_id, anna.full_name, anna.email, anna.deliver) == (
        "pat-1",
        "Anna Canary",
        PATIENT_EMAIL,
        "E",
    )
    assert anna.time_zone_windows_id == "Pacific Standard Time"
    assert anna.packet_known is False  # the emulator, like SecureVideo, does not report it

    (listed,) = client.list_host_sessions("prov-001")
    assert listed == created

    with_ben = client.add_participant(created.session_id, BEN)
    ben = next(p for p in with_ben.guests if p.external_id == "pat-2")
    assert (ben.sms, ben.deliver) == ("15550001111", "S")
    quieter = client.update_participant(ben.participation_id, Guest("pat-2", "Ben Canary"))
    assert next(p for p in quieter.guests if p.external_id == "pat-2").deliver == "N"
    client.remove_participant(ben.participation_id)

    later = _future(days=4)
    moved = client.reschedule_session(created.session_id, later)
    assert moved.schedule_ts == later and moved.host_external_id == "prov-001"
    client.cancel_session(created.session_id)
    (tombstone,) = client.list_host_sessions("prov-001")
    assert tombstone.is_cancelled and [g.external_id for g in tombstone.guests] == ["pat-1"]


def test_emulator_wrong_secret_is_an_authentication_error(emu: Emulator) -> None:
    wrong = "wrong-" + SECRET
    with SecureVideoClient(emu.base_url, KEY, wrong) as bad:
        with pytest.raises(AuthenticationError) as caught:
            bad.probe()
        assert "(401)" in str(caught.value)
        assert wrong not in str(caught.value) and wrong not in repr(bad)


def test_emulator_bad_request_carries_the_message(emu: Emulator, client: SecureVideoClient) -> None:
    client.create_session_raw(_new_session("ehr-1"), host_external_id="prov-001")
    with pytest.raises(PermanentError) as caught:
        client.add_participant_raw(
            NewParticipant(participant_full_name="Anna Canary"), external_session_id="ehr-1"
        )
    assert caught.value.status == 400
    assert "already in the session" in str(caught.value)
    assert str(caught.value).startswith("POST /participant/0?externalSessionId=…: ")


def test_emulator_unknown_host_is_not_found(emu: Emulator, client: SecureVideoClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.list_host_sessions("prov-404")
    assert caught.value.status == 404
    assert "prov-404" not in str(caught.value)
    with pytest.raises(NotFoundError):
        client.create_session_raw(_new_session(), host_external_id="prov-404")


def reads_in_threads(client: SecureVideoClient, threads: int) -> list[BaseException]:
    """One host read on each of ``threads`` threads at once; what they raised."""
    failures: list[BaseException] = []

    def read() -> None:
        try:
            client.list_sessions(host_external_id="prov-001")
        except BaseException as exc:
            failures.append(exc)

    started = [threading.Thread(target=read) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join(timeout=5)
    return failures


def test_emulator_throttle_holds_every_thread_until_retry_after(
    emu: Emulator, client: SecureVideoClient
) -> None:
    emu.faults.throttle_next(1, retry_after=0.2)
    with pytest.raises(TemporaryError) as caught:
        client.list_users()
    assert caught.value.retry_after == pytest.approx(0.2)

    assert reads_in_threads(client, 6) == []

    throttled, *rest = emu.calls
    assert throttled.status == 429 and len(rest) == 6
    assert all(call.received_at - throttled.received_at >= 0.2 for call in rest)


@pytest.mark.parametrize(("max_in_flight", "peak"), [(3, 3), (None, 8)])
def test_max_in_flight_bounds_the_requests_on_the_wire(
    emu: Emulator, max_in_flight: int | None, peak: int
) -> None:
    emu.faults.latency(0.05)
    with SecureVideoClient(
        emu.base_url, KEY, SECRET, read_timeout=2.0, max_in_flight=max_in_flight
    ) as bounded:
        assert reads_in_threads(bounded, 8) == []
    assert len(emu.calls) == 8
    assert emu.in_flight_peak == peak


@pytest.mark.timeout(10)
def test_a_failed_exchange_gives_its_turn_back() -> None:
    failures: list[Answer] = [httpx.ConnectError("refused"), httpx.ReadError("reset"), error(503)]
    client, script, _ = scripted(*failures, max_in_flight=1)
    with client:
        for _ in failures:
            with pytest.raises(TemporaryError):
                client.list_sessions()
        assert client.list_sessions() == []  # would wait for ever on a lost turn
    assert len(script.requests) == 4


def test_a_lane_transport_stamps_when_a_request_got_its_lane() -> None:
    # The hook's duration starts there: the wait for a lane is not SecureVideo's latency.
    shared = httpx.MockTransport(lambda request: httpx.Response(200, json=[]))
    with LaneTransport(2, transport=shared, clock=lambda: 42.0) as lanes:
        request = httpx.Request("GET", BASE + "user")
        response = lanes.handle_request(request)
        assert request.extensions[LANE_TAKEN_AT] == 42.0
        assert response.is_closed and response.json() == []  # read within the turn


@pytest.mark.timeout(10)
def test_a_lane_transport_gives_a_lane_back_when_the_exchange_fails() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("reset")

    with LaneTransport(1, transport=httpx.MockTransport(handler)) as lanes:
        for _ in range(3):  # the second would wait for ever on a lost lane
            with pytest.raises(httpx.ReadError):
                lanes.handle_request(httpx.Request("GET", BASE + "user"))


def test_a_lane_transport_needs_a_lane() -> None:
    with pytest.raises(ValueError, match="at least one lane"):
        LaneTransport(0)


def test_max_in_flight_keeps_one_connection_per_turn(emu: Emulator) -> None:
    with SecureVideoClient(emu.base_url, KEY, SECRET, read_timeout=2.0, max_in_flight=3) as c:
        for _ in range(6):
            c.list_users()
        # Turns rotate over three lanes, each keeping its one connection alive.
        assert emu.open_connections == 3


def test_max_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        SecureVideoClient("https://api.securevideo.com", KEY, SECRET, max_in_flight=0)


def test_emulator_unavailable_is_temporary(emu: Emulator, client: SecureVideoClient) -> None:
    emu.faults.fail_next(1, status=503)
    with pytest.raises(TemporaryError) as caught:
        client.create_session_raw(_new_session(), host_external_id="prov-001")
    assert not isinstance(caught.value, AmbiguousError)
    assert client.list_sessions() == []


def test_emulator_dropped_answer_on_create_is_ambiguous_and_applied(
    emu: Emulator, client: SecureVideoClient
) -> None:
    emu.faults.drop_after_apply_next(1)
    with pytest.raises(AmbiguousError):
        client.create_session_raw(_new_session("ehr-9"), host_external_id="prov-001")
    (created,) = client.list_sessions(host_external_id="prov-001")
    assert created.external_session_id == "ehr-9"


def test_emulator_slow_answer_on_reschedule_is_ambiguous_and_applied(emu: Emulator) -> None:
    with SecureVideoClient(emu.base_url, KEY, SECRET, read_timeout=0.2) as impatient:
        session = impatient.create_session_raw(_new_session(), host_external_id="prov-001")
        later = _future(days=5)
        emu.faults.delay_after_apply_next(1, seconds=0.6)
        with pytest.raises(AmbiguousError):
            impatient.reschedule(later, session_id=session.session_id)
        (moved,) = impatient.list_sessions(host_external_id="prov-001")
        assert moved.schedule_ts == later


def test_emulator_slow_read_is_temporary_not_ambiguous(emu: Emulator) -> None:
    with SecureVideoClient(emu.base_url, KEY, SECRET, read_timeout=0.2) as impatient:
        emu.faults.latency(0.6)
        with pytest.raises(TemporaryError) as caught:
            impatient.list_sessions()
        assert not isinstance(caught.value, AmbiguousError)
        assert "ReadTimeout" in str(caught.value)
        emu.faults.clear()
        assert impatient.list_sessions() == []


def test_emulator_refused_connection_is_clean(emu: Emulator) -> None:
    stopped = Emulator(api_key=KEY, api_secret=SECRET).start()
    url = stopped.base_url
    stopped.stop()
    with (
        SecureVideoClient(url, KEY, SECRET, connect_timeout=0.5) as client,
        pytest.raises(TemporaryError) as caught,
    ):
        client.create_session_raw(_new_session(), host_external_id="prov-001")
    assert not isinstance(caught.value, AmbiguousError)


def test_emulator_proxy_variables_are_ignored(
    emu: Emulator, client: SecureVideoClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with SecureVideoClient(emu.base_url, KEY, SECRET) as fresh:
        assert fresh.list_sessions() == []
