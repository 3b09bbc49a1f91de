"""Every rule of the SIU → whole-appointment-row mapping, as a table (docs/hl7.md's table)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hl7_samples import siu
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.adapters.hl7 import Hl7Mapping, Mapped, Refused, ack_message, map_message
from syncd.adapters.windows_zones import windows_zone_id

NEW_YORK = Hl7Mapping(zone=ZoneInfo("America/New_York"), windows_zone=windows_zone_id)
PLACER_FIRST = Hl7Mapping(
    zone=ZoneInfo("America/New_York"), windows_zone=windows_zone_id, appointment_id="placer"
)


def row_of(text: str, mapping: Hl7Mapping = NEW_YORK) -> dict[str, Any]:
    result = map_message(text, mapping)
    assert isinstance(result, Mapped), result
    values: dict[str, Any] = json.loads(result.row)
    guests = values["participants"]
    values["guest"] = guests[0] if guests else {}
    return values


ACCEPTED = [
    # appointment id
    ("filler id SCH-2.1", {}, "appointment_id", "APT-1"),
    ("no filler id: placer SCH-1.1", {"filler_id": None}, "appointment_id", "PL-1"),
    # start
    ("AIS-4 with its offset", {}, "starts_at", "2026-12-10T14:30:00+00:00"),
    (
        "no AIS: AIP-6",
        {"ais_start": None, "aip_start": "20261210100000-0500"},
        "starts_at",
        "2026-12-10T15:00:00+00:00",
    ),
    (
        "no AIS, no AIP-6: SCH-11.4",
        {"ais_start": None, "sch_start": "20261210110000-0500"},
        "starts_at",
        "2026-12-10T16:00:00+00:00",
    ),
    (
        "AIS first even when AIP-6 differs",
        {"aip_start": "20261210100000-0500"},
        "starts_at",
        "2026-12-10T14:30:00+00:00",
    ),
    (
        "no offset: the configured zone (EST in December)",
        {"ais_start": "202612100930"},
        "starts_at",
        "2026-12-10T14:30:00+00:00",
    ),
    (
        "no offset: the configured zone (EDT in July)",
        {"ais_start": "20260710093000"},
        "starts_at",
        "2026-07-10T13:30:00+00:00",
    ),
    # provider
    ("provider AIP-3.1", {}, "provider_external_id", "prov-001"),
    # status
    ("S12 booked", {}, "status", "booked"),
    ("S13 booked", {"trigger": "S13"}, "status", "booked"),
    ("S14 booked", {"trigger": "S14"}, "status", "booked"),
    ("S12 without SCH-25: booked", {"filler_status": ""}, "status", "booked"),
    (
        "S14 SCH-25 Cancelled",
        {"trigger": "S14", "filler_status": "Cancelled"},
        "status",
        "cancelled",
    ),
    ("S14 SCH-25 Deleted", {"trigger": "S14", "filler_status": "Deleted"}, "status", "cancelled"),
    ("S14 SCH-25 Noshow", {"trigger": "S14", "filler_status": "Noshow"}, "status", "noshow"),
    ("S14 SCH-25 Complete", {"trigger": "S14", "filler_status": "Complete"}, "status", "fulfilled"),
    ("S15 cancelled whatever SCH-25", {"trigger": "S15"}, "status", "cancelled"),
    ("S17 cancelled", {"trigger": "S17"}, "status", "cancelled"),
    ("S26 noshow", {"trigger": "S26"}, "status", "noshow"),
    # the patient as the guest
    ("guest external id PID-3.1", {}, "guest.external_id", "pat-1"),
    ("guest name given family", {}, "guest.full_name", "Zelda Canary"),
    ("e-mail: equipment type Internet", {}, "guest.email", "canary1@phi.example"),
    ("e-mail: use code NET", {"email_as": "use"}, "guest.email", "canary1@phi.example"),
    ("SMS: equipment type CP", {}, "guest.sms", "15557770001"),
    ("delivery E with an e-mail", {}, "guest.deliver", "E"),
    ("delivery S with a cell number only", {"email": None}, "guest.deliver", "S"),
    ("delivery N with neither", {"email": None, "cell": None}, "guest.deliver", "N"),
    ("a cancel needs no patient", {"trigger": "S15", "pid": False}, "participants", []),
    # no topic: a reason can be a diagnosis
    ("no topic, whatever SCH-7 says", {}, "topic", None),
    # versions
    (
        "2.3 reads the same",
        {"version": "2.3", "email_as": "use"},
        "guest.email",
        "canary1@phi.example",
    ),
    ("2.3 start", {"version": "2.3"}, "starts_at", "2026-12-10T14:30:00+00:00"),
]


@pytest.mark.parametrize(
    ("rule", "kwargs", "key", "expected"), ACCEPTED, ids=[c[0] for c in ACCEPTED]
)
def test_mapping_rule(rule: str, kwargs: dict[str, Any], key: str, expected: object) -> None:
    values = row_of(siu(**kwargs))
    if key.startswith("guest."):
        assert values["guest"][key.removeprefix("guest.")] == expected
    else:
        assert values[key] == expected


def test_placer_first_when_configured() -> None:
    assert row_of(siu(), PLACER_FIRST)["appointment_id"] == "PL-1"
    assert row_of(siu(placer_id=None), PLACER_FIRST)["appointment_id"] == "APT-1"


def test_the_message_time_is_utc_and_the_ids_are_kept() -> None:
    result = map_message(siu(control_id="C-9", sent="20261205083000"), NEW_YORK)
    assert isinstance(result, Mapped)
    assert (result.control_id, result.message_type) == ("C-9", "S12")
    assert result.message_at == datetime(2026, 12, 5, 13, 30)
    assert result.sender == ("EHR", "CLINIC")


REFUSED = [
    ("no appointment id", {"filler_id": None, "placer_id": None}, "AE", "SCH^1^2"),
    ("no start anywhere", {"ais_start": None}, "AE", "AIS^1^4"),
    ("a start that is no time", {"ais_start": "tomorrow"}, "AE", "AIS^1^4"),
    ("a start without hours", {"ais_start": "20261210"}, "AE", "AIS^1^4"),
    ("a local time skipped by DST", {"ais_start": "202603080230"}, "AE", "AIS^1^4"),
    ("no provider", {"provider": None}, "AE", "AIP^1^3"),
    ("an unknown SCH-25", {"filler_status": "Maybe"}, "AE", "SCH^1^25"),
    ("no patient id", {"patient_id": None}, "AE", "PID^1^3"),
    ("no patient name", {"family": "", "given": ""}, "AE", "PID^1^5"),
    ("a bad e-mail", {"email": "not-an-address"}, "AE", "PID^1^13"),
    ("a booking without a patient", {"pid": False}, "AE", "PID^1"),
    ("no control id", {"control_id": ""}, "AE", "MSH^1^10"),
    ("no message time", {"sent": ""}, "AE", "MSH^1^7"),
    ("an unsupported trigger", {"trigger": "S18"}, "AR", "MSH^1^9"),
    ("an unsupported version", {"version": "2.6"}, "AR", "MSH^1^12"),
]


@pytest.mark.parametrize(
    ("rule", "kwargs", "code", "location"), REFUSED, ids=[c[0] for c in REFUSED]
)
def test_refused(rule: str, kwargs: dict[str, Any], code: str, location: str) -> None:
    result = map_message(siu(**kwargs), NEW_YORK)
    assert isinstance(result, Refused), result
    assert (result.code, result.location) == (code, location)
    # Never a value of the message in the problem.
    assert "canary" not in result.problem.lower() and "zelda" not in result.problem.lower()


@pytest.mark.parametrize(
    "text", ["", "hello", "MSH|", "PID|1||x", "\x00\x01\x02", "ADT^A01", "MSH|^~\\&"]
)
def test_not_hl7_is_ar(text: str) -> None:
    result = map_message(text, NEW_YORK)
    assert isinstance(result, Refused) and result.code == "AR"


def test_other_message_types_are_ar() -> None:
    adt = siu().replace("SIU^S12^SIU_S12", "ADT^A04^ADT_A01")
    result = map_message(adt, NEW_YORK)
    assert isinstance(result, Refused) and (result.code, result.location) == ("AR", "MSH^1^9")


@pytest.mark.parametrize(
    ("version", "err"),
    [("2.5.1", "ERR||PID^1^13|102^Data type error^HL70357|E"), ("2.3", "ERR|PID^1^13^102&")],
)
def test_ae_names_the_field_in_err(version: str, err: str) -> None:
    ack = ack_message(
        "AE",
        control_id="M1",
        trigger="S12",
        version=version,
        location="PID^1^13",
        error_code="102",
        text="PID^1^13: not an e-mail address",
    )
    lines = ack.strip("\r").split("\r")
    # MSA-3 is text: the location in it is escaped
    assert lines[1] == "MSA|AE|M1|PID\\S\\1\\S\\13: not an e-mail address"
    assert lines[2].startswith(err)
    assert lines[0].split("|")[8] == "ACK^S12^ACK"


def test_ack_escapes_what_it_echoes() -> None:
    ack = ack_message("AA", control_id="A|B^C", trigger="S12", version="2.5.1")
    assert "MSA|AA|A\\F\\B\\S\\C|" in ack


@pytest.mark.parametrize(
    "text",
    [
        siu().replace("PID|1||", "PID|1||^~&\\E\\^&&&|||"),
        siu().replace("|^~\\&|", "|^|"),
        "MSH|^~\\&|" + "|" * 5000,
        siu() + "ZZZ|" + "^" * 1000,
    ],
)
def test_odd_shapes_are_answered_not_raised(text: str) -> None:
    assert isinstance(map_message(text, NEW_YORK), Mapped | Refused)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(list(siu().split("|"))), min_size=1, max_size=40),
    st.text(max_size=30),
)
def test_any_rearrangement_of_a_message_is_answered(parts: list[str], noise: str) -> None:
    text = "MSH|^~\\&|" + "|".join(parts) + noise
    assert isinstance(map_message(text, NEW_YORK), Mapped | Refused)
