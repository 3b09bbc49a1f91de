"""The outbox row parser: every rejection names the field and never quotes patient data."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.adapters.windows_zones import windows_zone_id
from syncd.core.domain import Appointment, AppointmentStatus, Guest
from syncd.core.errors import InvalidRowError
from syncd.core.rows import parse_row

CHICAGO = ZoneInfo("America/Chicago")
NEW_YORK = ZoneInfo("America/New_York")

# Values that stand for patient data: none may ever appear in an error message.
NAME = "Zelda Canaryfield"
EMAIL = "zelda.canaryfield@example.org"
PHONE = "+1 (555) 013-7788"
PHONE_DIGITS = "15550137788"
NAME_2 = "Yusuf Birdsong"
EMAIL_2 = "yusuf.birdsong@example.net"
TOPIC = "Canary follow-up: left knee"
CANARIES = (NAME, EMAIL, PHONE, PHONE_DIGITS, NAME_2, EMAIL_2, TOPIC, "Canaryfield", "Birdsong")

Row = dict[str, object]
Guests = list[dict[str, object]]


def base_guests() -> Guests:
    return [
        {
            "external_id": "PAT-1",
            "full_name": NAME,
            "email": EMAIL,
            "sms": PHONE,
            "time_zone": "America/Chicago",
            "deliver": "E",
            "packet_id": 1215,
            "svc_id": 1037,
            "deposit": Decimal("20.00"),
        },
        {
            "external_id": "PAT-2",
            "full_name": NAME_2,
            "email": EMAIL_2,
            "deliver": "N",
        },
    ]


def base_row() -> Row:
    return {
        "event_id": 7,
        "appointment_id": "APT-100",
        "provider_external_id": "DR-9",
        "status": "booked",
        "starts_at": "2027-06-01 09:30:00",
        "topic": TOPIC,
        "is_recorded": 1,
        "participants": base_guests(),
        "created_at": "2027-05-01 12:00:00",
    }


def make(mutate: Callable[[Row, Guests], object] | None = None) -> Row:
    """The good base row with one change, its participants rendered as JSON text."""
    values = base_row()
    guests = values["participants"]
    assert isinstance(guests, list)
    if mutate is not None:
        mutate(values, guests)
    if isinstance(values["participants"], list):
        values["participants"] = json.dumps(values["participants"], default=str)
    return values


def parse(values: Row, zone: ZoneInfo = CHICAGO, prefix: str = "") -> Appointment:
    return parse_row(values, windows_zone=windows_zone_id, zone=zone, session_id_prefix=prefix)


def assert_phi_free(err: InvalidRowError) -> None:
    for text in (str(err), repr(err), err.problem, err.field, err.appointment_id):
        for canary in CANARIES:
            assert canary not in text


# --- the good row ------------------------------------------------------------------------------


def test_base_row_parses_into_the_appointment() -> None:
    appt = parse(make(), prefix="clinicA-")
    assert appt.event_id == 7
    assert appt.appointment_id == "APT-100"
    assert appt.external_session_id == "clinicA-APT-100"
    assert appt.provider_external_id == "DR-9"
    assert appt.status is AppointmentStatus.BOOKED
    assert appt.starts_at == datetime(2027, 6, 1, 14, 30)  # CDT is UTC-5
    assert appt.starts_at.tzinfo is None
    assert appt.topic == TOPIC
    assert appt.is_recorded is True
    first, second = appt.guests
    assert first == Guest(
        external_id="PAT-1",
        full_name=NAME,
        email=EMAIL,
        sms=PHONE_DIGITS,
        time_zone_windows_id="Central Standard Time",
        deliver="E",
        packet_id=1215,
        svc_id=1037,
        deposit=Decimal("20.00"),
    )
    assert second == Guest(external_id="PAT-2", full_name=NAME_2, email=EMAIL_2, deliver="N")


def test_default_prefix_is_none() -> None:
    assert parse(make()).external_session_id == "APT-100"


@pytest.mark.parametrize(
    "participants",
    [
        pytest.param(lambda g: json.dumps(g, default=str), id="str"),
        pytest.param(lambda g: json.dumps(g, default=str).encode(), id="bytes"),
        pytest.param(lambda g: bytearray(json.dumps(g, default=str).encode()), id="bytearray"),
        pytest.param(lambda g: memoryview(json.dumps(g, default=str).encode()), id="memoryview"),
        pytest.param(lambda g: g, id="decoded-list"),
        pytest.param(tuple, id="decoded-tuple"),
    ],
)
def test_participants_accept_every_driver_shape(participants: Callable[[Guests], object]) -> None:
    values = base_row()
    values["participants"] = participants(base_guests())
    assert [g.external_id for g in parse(values).guests] == ["PAT-1", "PAT-2"]


def test_decoded_json_with_float_deposit() -> None:
    guests = base_guests()
    guests[0]["deposit"] = 20.5
    values = base_row()
    values["participants"] = guests
    assert parse(values).guests[0].deposit == Decimal("20.50")


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        pytest.param(
            lambda v, g: v.update(status="  Checked-In "),
            lambda a: a.status is AppointmentStatus.CHECKED_IN,
            id="status-trimmed-case-insensitive",
        ),
        pytest.param(
            lambda v, g: v.update(status="CANCELLED", participants=[]),
            lambda a: a.status is AppointmentStatus.CANCELLED and a.guests == (),
            id="cancelled-without-guests",
        ),
        pytest.param(
            lambda v, g: v.update(status="entered-in-error", participants=None),
            lambda a: a.guests == (),
            id="null-participants-when-not-live",
        ),
        pytest.param(
            lambda v, g: v.update(status="noshow", participants=[]),
            lambda a: a.status is AppointmentStatus.NOSHOW,
            id="noshow-without-guests",
        ),
        pytest.param(
            lambda v, g: v.update(event_id="42"), lambda a: a.event_id == 42, id="id-text"
        ),
        pytest.param(
            lambda v, g: v.update(event_id=Decimal(42)), lambda a: a.event_id == 42, id="id-decimal"
        ),
        pytest.param(lambda v, g: v.update(topic=None), lambda a: a.topic is None, id="topic-null"),
        pytest.param(
            lambda v, g: v.update(topic="   "), lambda a: a.topic is None, id="topic-blank"
        ),
        pytest.param(
            lambda v, g: v.update(topic="x" * 500), lambda a: a.topic == "x" * 500, id="topic-500"
        ),
        pytest.param(
            lambda v, g: v.update(topic="line one\nline two"),
            lambda a: a.topic == "line one\nline two",
            id="topic-newline",
        ),
        pytest.param(
            lambda v, g: v.update(appointment_id="A" * 64),
            lambda a: a.appointment_id == "A" * 64,
            id="appointment-id-64",
        ),
        pytest.param(
            lambda v, g: g[0].update(deliver="e"),
            lambda a: a.guests[0].deliver == "E",
            id="deliver-e",
        ),
        pytest.param(
            lambda v, g: g[1].pop("deliver"),
            lambda a: a.guests[1].deliver == "N",
            id="deliver-default",
        ),
        pytest.param(
            lambda v, g: g[1].update(deliver=None),
            lambda a: a.guests[1].deliver == "N",
            id="deliver-null",
        ),
        pytest.param(
            lambda v, g: g[0].update(deliver="S", email=None),
            lambda a: a.guests[0].deliver == "S" and a.guests[0].email == "",
            id="deliver-s",
        ),
        pytest.param(
            lambda v, g: g[0].update(sms="555-013-7788"),
            lambda a: a.guests[0].sms == "5550137788",
            id="sms-dashes",
        ),
        pytest.param(
            lambda v, g: g[0].update(sms=15550137788),
            lambda a: a.guests[0].sms == PHONE_DIGITS,
            id="sms-json-number",
        ),
        pytest.param(
            lambda v, g: g[0].update(time_zone="Central Standard Time"),
            lambda a: a.guests[0].time_zone_windows_id == "Central Standard Time",
            id="tz-windows-id",
        ),
        pytest.param(
            lambda v, g: g[0].update(time_zone="America/Regina"),
            lambda a: a.guests[0].time_zone_windows_id == "Canada Central Standard Time",
            id="tz-saskatchewan",
        ),
        pytest.param(
            lambda v, g: g[0].update(time_zone=None),
            lambda a: a.guests[0].time_zone_windows_id is None,
            id="tz-null",
        ),
        pytest.param(
            lambda v, g: g[0].update(packet_id=-1),
            lambda a: a.guests[0].packet_id == -1,
            id="packet-none",
        ),
        pytest.param(
            lambda v, g: g[0].update(packet_id=0),
            lambda a: a.guests[0].packet_id == 0,
            id="packet-all",
        ),
        pytest.param(
            lambda v, g: g[0].pop("packet_id"),
            lambda a: a.guests[0].packet_id == -1,
            id="packet-absent-is-none-never-null",
        ),
        pytest.param(
            lambda v, g: g[0].update(packet_id=None),
            lambda a: a.guests[0].packet_id == -1,
            id="packet-null-is-none-never-null",
        ),
        pytest.param(
            lambda v, g: g[0].update(svc_id=None, deposit=None),
            lambda a: a.guests[0].svc_id is None and a.guests[0].deposit is None,
            id="no-payment",
        ),
        pytest.param(
            lambda v, g: g[0].update(deposit=20),
            lambda a: a.guests[0].deposit == Decimal("20.00"),
            id="deposit-int",
        ),
        pytest.param(
            lambda v, g: g[0].update(deposit="0"),
            lambda a: a.guests[0].deposit == Decimal("0.00"),
            id="deposit-zero-text",
        ),
        pytest.param(
            lambda v, g: g[0].update(deposit=Decimal("12.500")),
            lambda a: a.guests[0].deposit == Decimal("12.50"),
            id="deposit-trailing-zero",
        ),
        pytest.param(
            lambda v, g: g[0].update(full_name="  Al  "),
            lambda a: a.guests[0].full_name == "Al",
            id="name-stripped",
        ),
        pytest.param(
            lambda v, g: g[1].update(full_name="Zoë Ångström-Łukasz 李"),
            lambda a: a.guests[1].full_name == "Zoë Ångström-Łukasz 李",
            id="name-unicode",
        ),
        pytest.param(
            lambda v, g: g.append({"external_id": "DR-2", "securevideo_user_id": "0012"}),
            lambda a: a.guests[2] == Guest(external_id="DR-2", securevideo_user_id="12"),
            id="sv-user-text",
        ),
        pytest.param(
            lambda v, g: g.append(
                {
                    "external_id": "DR-2",
                    "securevideo_user_id": 1122,
                    "full_name": NAME,  # ignored: a user's name lives on the user record
                    "email": "not an e-mail",
                    "deliver": "Q",
                    "packet_id": -1,
                }
            ),
            lambda a: (
                a.guests[2] == Guest(external_id="DR-2", securevideo_user_id="1122", packet_id=-1)
            ),
            id="sv-user-ignores-person-fields",
        ),
        pytest.param(
            lambda v, g: g[1].update(unknown_key="whatever"),
            lambda a: len(a.guests) == 2,
            id="unknown-keys-ignored",
        ),
    ],
)
def test_accepted_variants(
    mutate: Callable[[Row, Guests], object], check: Callable[[Appointment], bool]
) -> None:
    assert check(parse(make(mutate)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (None, False),
        (0, False),
        (1, True),
        ("true", True),
        ("FALSE", False),
        (" t ", True),
        ("f", False),
        ("1", True),
        ("0", False),
        (b"\x01", True),
        (b"\x00", False),
    ],
)
def test_is_recorded_spellings(value: object, expected: bool) -> None:
    assert parse(make(lambda v, g: v.update(is_recorded=value))).is_recorded is expected


# --- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "local", "utc"),
    [
        # New York, spring forward on 2027-03-14 at 02:00 EST -> 03:00 EDT
        (NEW_YORK, "2027-03-14 01:30", datetime(2027, 3, 14, 6, 30)),
        (NEW_YORK, "2027-03-14 03:30", datetime(2027, 3, 14, 7, 30)),
        # fall back on 2027-11-07: 01:30 happens twice; the first (EDT) is taken
        (NEW_YORK, "2027-11-07 01:30", datetime(2027, 11, 7, 5, 30)),
        (NEW_YORK, "2027-11-07 02:30", datetime(2027, 11, 7, 7, 30)),
        # London: BST from 2027-03-28 01:00 UTC to 2027-10-31 01:00 UTC
        (ZoneInfo("Europe/London"), "2027-03-28 00:30", datetime(2027, 3, 28, 0, 30)),
        (ZoneInfo("Europe/London"), "2027-07-01 10:00", datetime(2027, 7, 1, 9, 0)),
        (ZoneInfo("Europe/London"), "2027-10-31 01:30", datetime(2027, 10, 31, 0, 30)),
        (ZoneInfo("Europe/London"), "2027-12-01 10:00", datetime(2027, 12, 1, 10, 0)),
        # no DST: Saskatchewan and India keep one offset all year
        (ZoneInfo("America/Regina"), "2027-03-14 02:30", datetime(2027, 3, 14, 8, 30)),
        (ZoneInfo("America/Regina"), "2027-07-01 02:30", datetime(2027, 7, 1, 8, 30)),
        (ZoneInfo("Asia/Kolkata"), "2027-03-14 10:00", datetime(2027, 3, 14, 4, 30)),
        (ZoneInfo("UTC"), "2027-03-14 10:00", datetime(2027, 3, 14, 10, 0)),
    ],
)
def test_local_times_convert_to_utc(zone: ZoneInfo, local: str, utc: datetime) -> None:
    assert parse(make(lambda v, g: v.update(starts_at=local)), zone=zone).starts_at == utc


@pytest.mark.parametrize(
    ("zone", "local"),
    [
        (NEW_YORK, "2027-03-14 02:30"),
        (NEW_YORK, "2027-03-14 02:00"),
        (ZoneInfo("Europe/London"), "2027-03-28 01:30"),
    ],
)
def test_nonexistent_local_time_is_invalid(zone: ZoneInfo, local: str) -> None:
    with pytest.raises(InvalidRowError) as err:
        parse(make(lambda v, g: v.update(starts_at=local)), zone=zone)
    assert err.value.field == "starts_at"
    assert err.value.appointment_id == "APT-100"


@pytest.mark.parametrize(
    ("value", "utc"),
    [
        ("2027-06-01T09:30", datetime(2027, 6, 1, 14, 30)),
        ("2027-06-01 09:30:59.999999", datetime(2027, 6, 1, 14, 30)),
        (" 2027-06-01 09:30:42 ", datetime(2027, 6, 1, 14, 30)),
        (datetime(2027, 6, 1, 9, 30, 42, 123), datetime(2027, 6, 1, 14, 30)),
        # aware values are taken as they are, whatever the configured zone
        (datetime(2027, 6, 1, 9, 30, tzinfo=UTC), datetime(2027, 6, 1, 9, 30)),
        (
            datetime(2027, 6, 1, 9, 30, tzinfo=timezone(timedelta(hours=2))),
            datetime(2027, 6, 1, 7, 30),
        ),
        (datetime(2027, 3, 14, 2, 30, tzinfo=NEW_YORK), datetime(2027, 3, 14, 7, 30)),
        ("2027-06-01T09:30:00Z", datetime(2027, 6, 1, 9, 30)),
        ("2027-06-01 09:30:00+02:00", datetime(2027, 6, 1, 7, 30)),
        ("2027-06-01 09:30-0500", datetime(2027, 6, 1, 14, 30)),
    ],
)
def test_starts_at_shapes(value: object, utc: datetime) -> None:
    appt = parse(make(lambda v, g: v.update(starts_at=value)))
    assert appt.starts_at == utc
    assert appt.starts_at.tzinfo is None


# --- rejections ----------------------------------------------------------------------------------


def _set(key: str, value: object) -> Callable[[Row, Guests], object]:
    return lambda v, g: v.update({key: value})


def _drop(key: str) -> Callable[[Row, Guests], object]:
    return lambda v, g: v.pop(key)


def _guest(index: int, **changes: object) -> Callable[[Row, Guests], object]:
    return lambda v, g: g[index].update(changes)


def _guest_drop(index: int, key: str) -> Callable[[Row, Guests], object]:
    return lambda v, g: g[index].pop(key)


def _raw_participants(value: object) -> Callable[[Row, Guests], object]:
    return _set("participants", value)


INVALID: list[tuple[str, Callable[[Row, Guests], object], str]] = [
    # JSON
    ("json-unparseable", _raw_participants(f'[{{"full_name": "{NAME}"'), "participants"),
    ("json-not-utf8", _raw_participants(b'[{"full_name": "\xff\xfe"}]'), "participants"),
    ("json-object", _raw_participants(json.dumps({"full_name": NAME})), "participants"),
    ("json-number", _raw_participants("5"), "participants"),
    ("json-element-string", _raw_participants(json.dumps([NAME])), "participants[0]"),
    (
        "json-element-list",
        _raw_participants(json.dumps([{"external_id": "P", "full_name": NAME}, [EMAIL]])),
        "participants[1]",
    ),
    ("json-nan", _raw_participants('[{"packet_id": NaN}]'), "participants"),
    ("json-duplicate-key", _raw_participants('[{"a": 1, "a": 2}]'), "participants"),
    ("json-deep", _raw_participants("[" * 100_000), "participants"),
    ("json-empty-text", _raw_participants(""), "participants"),
    ("participants-int", _raw_participants(12), "participants"),
    ("decoded-dict", _raw_participants({"external_id": "P"}), "participants"),
    # event_id
    ("event-id-missing", _drop("event_id"), "event_id"),
    ("event-id-text", _set("event_id", "seven"), "event_id"),
    ("event-id-bool", _set("event_id", True), "event_id"),
    ("event-id-fraction", _set("event_id", 1.5), "event_id"),
    ("event-id-huge", _set("event_id", 2**80), "event_id"),
    # appointment_id
    ("aid-missing", _drop("appointment_id"), "appointment_id"),
    ("aid-empty", _set("appointment_id", ""), "appointment_id"),
    ("aid-int", _set("appointment_id", 100), "appointment_id"),
    ("aid-long", _set("appointment_id", "A" * 65), "appointment_id"),
    ("aid-control", _set("appointment_id", "A\x00B"), "appointment_id"),
    ("aid-newline", _set("appointment_id", "A\nB"), "appointment_id"),
    ("aid-padded", _set("appointment_id", "A1 "), "appointment_id"),
    ("aid-surrogate", _set("appointment_id", "A\ud800"), "appointment_id"),
    # provider_external_id
    ("provider-missing", _drop("provider_external_id"), "provider_external_id"),
    ("provider-empty", _set("provider_external_id", ""), "provider_external_id"),
    ("provider-long", _set("provider_external_id", "D" * 65), "provider_external_id"),
    ("provider-int", _set("provider_external_id", 9), "provider_external_id"),
    # status
    ("status-missing", _drop("status"), "status"),
    ("status-unknown", _set("status", "scheduled"), "status"),
    ("status-hl7", _set("status", "S12"), "status"),
    ("status-int", _set("status", 3), "status"),
    # starts_at
    ("starts-missing", _drop("starts_at"), "starts_at"),
    ("starts-garbage", _set("starts_at", f"{NAME} at noon"), "starts_at"),
    ("starts-month-13", _set("starts_at", "2027-13-01 10:00"), "starts_at"),
    ("starts-feb-30", _set("starts_at", "2027-02-30 10:00"), "starts_at"),
    ("starts-date-only", _set("starts_at", "2027-06-01"), "starts_at"),
    ("starts-date-object", _set("starts_at", date(2027, 6, 1)), "starts_at"),
    ("starts-epoch-int", _set("starts_at", 1_800_000_000), "starts_at"),
    ("starts-arabic-digits", _set("starts_at", "٢٠٢٧-06-01 10:00"), "starts_at"),
    ("starts-gap", _set("starts_at", "2027-03-14 02:30"), "starts_at"),
    ("starts-overflow", _set("starts_at", datetime(9999, 12, 31, 23, 59)), "starts_at"),
    # topic
    ("topic-long", _set("topic", "x" * 501), "topic"),
    ("topic-int", _set("topic", 5), "topic"),
    ("topic-control", _set("topic", f"{TOPIC}\x1b[31m"), "topic"),
    ("topic-surrogate", _set("topic", f"{TOPIC}\udc80"), "topic"),
    # is_recorded
    ("recorded-word", _set("is_recorded", "maybe"), "is_recorded"),
    ("recorded-two", _set("is_recorded", 2), "is_recorded"),
    ("recorded-float", _set("is_recorded", 1.0), "is_recorded"),
    # participants: live status needs a guest
    ("live-no-guests", _raw_participants("[]"), "participants"),
    ("live-null-guests", _raw_participants(None), "participants"),
    ("arrived-no-guests", lambda v, g: v.update(status="arrived", participants=[]), "participants"),
    # participants: external_id
    ("ext-missing", _guest_drop(0, "external_id"), "participants[0].external_id"),
    ("ext-empty", _guest(1, external_id=""), "participants[1].external_id"),
    ("ext-long", _guest(1, external_id="P" * 65), "participants[1].external_id"),
    ("ext-int", _guest(1, external_id=5), "participants[1].external_id"),
    ("ext-duplicate", _guest(1, external_id="PAT-1"), "participants[1].external_id"),
    # participants: full_name
    ("name-missing", _guest_drop(1, "full_name"), "participants[1].full_name"),
    ("name-one-char", _guest(1, full_name="Z"), "participants[1].full_name"),
    ("name-one-char-padded", _guest(1, full_name="  Z  "), "participants[1].full_name"),
    ("name-int", _guest(1, full_name=42), "participants[1].full_name"),
    ("name-control", _guest(1, full_name=f"{NAME_2}\x07"), "participants[1].full_name"),
    ("name-long", _guest(1, full_name="N" * 256), "participants[1].full_name"),
    ("name-duplicate", _guest(1, full_name=f" {NAME.upper()} "), "participants[1].full_name"),
    # participants: deliver, e-mail, sms
    ("deliver-x", _guest(1, deliver="X"), "participants[1].deliver"),
    ("deliver-word", _guest(1, deliver="email"), "participants[1].deliver"),
    ("deliver-int", _guest(1, deliver=1), "participants[1].deliver"),
    ("deliver-e-no-email", _guest(0, email=None), "participants[0].email"),
    ("deliver-e-blank-email", _guest(0, email="  "), "participants[0].email"),
    ("email-no-at", _guest(0, email=NAME), "participants[0].email"),
    ("email-no-dot", _guest(0, email="zelda@localhost"), "participants[0].email"),
    ("email-space", _guest(0, email="zelda canary@example.org"), "participants[0].email"),
    ("email-two-ats", _guest(0, email="a@b@example.org"), "participants[0].email"),
    ("email-int", _guest(0, email=5), "participants[0].email"),
    ("deliver-s-no-sms", _guest(1, deliver="S"), "participants[1].sms"),
    ("sms-short", _guest(0, sms="555-0137"[:-2]), "participants[0].sms"),
    ("sms-letters", _guest(0, sms="555-CALL-NOW"), "participants[0].sms"),
    ("sms-too-long", _guest(0, sms="+1234567890123456"), "participants[0].sms"),
    ("sms-plus-inside", _guest(0, sms="1+5550137788"), "participants[0].sms"),
    ("sms-list", _guest(0, sms=[PHONE]), "participants[0].sms"),
    # participants: time zone
    ("tz-unknown", _guest(0, time_zone="Mars/Olympus_Mons"), "participants[0].time_zone"),
    ("tz-no-windows-id", _guest(0, time_zone="Antarctica/Troll"), "participants[0].time_zone"),
    ("tz-int", _guest(0, time_zone=-6), "participants[0].time_zone"),
    # participants: packet, service, deposit
    ("packet-below", _guest(0, packet_id=-2), "participants[0].packet_id"),
    ("packet-text", _guest(0, packet_id="first"), "participants[0].packet_id"),
    ("packet-fraction", _guest(0, packet_id=1.5), "participants[0].packet_id"),
    ("packet-bool", _guest(0, packet_id=True), "participants[0].packet_id"),
    ("packet-int32", _guest(0, packet_id=2**31), "participants[0].packet_id"),
    ("svc-without-deposit", _guest(0, deposit=None), "participants[0].deposit"),
    ("deposit-without-svc", _guest(0, svc_id=None), "participants[0].svc_id"),
    ("svc-zero", _guest(0, svc_id=0), "participants[0].svc_id"),
    ("svc-text", _guest(0, svc_id="svc"), "participants[0].svc_id"),
    ("deposit-negative", _guest(0, deposit=-1), "participants[0].deposit"),
    ("deposit-three-places", _guest(0, deposit=1.005), "participants[0].deposit"),
    ("deposit-text", _guest(0, deposit="twenty"), "participants[0].deposit"),
    ("deposit-nan-text", _guest(0, deposit="NaN"), "participants[0].deposit"),
    ("deposit-inf-text", _guest(0, deposit="Infinity"), "participants[0].deposit"),
    ("deposit-huge", _guest(0, deposit="1e30"), "participants[0].deposit"),
    ("deposit-bool", _guest(0, deposit=True), "participants[0].deposit"),
    # participants: SecureVideo users
    (
        "sv-user-text",
        lambda v, g: g.append({"external_id": "DR-2", "securevideo_user_id": "abc"}),
        "participants[2].securevideo_user_id",
    ),
    (
        "sv-user-zero",
        lambda v, g: g.append({"external_id": "DR-2", "securevideo_user_id": 0}),
        "participants[2].securevideo_user_id",
    ),
    (
        "sv-user-negative",
        lambda v, g: g.append({"external_id": "DR-2", "securevideo_user_id": -5}),
        "participants[2].securevideo_user_id",
    ),
    (
        "sv-user-bool",
        lambda v, g: g.append({"external_id": "DR-2", "securevideo_user_id": True}),
        "participants[2].securevideo_user_id",
    ),
    (
        "sv-user-duplicate",
        lambda v, g: g.extend(
            [
                {"external_id": "DR-2", "securevideo_user_id": "1122"},
                {"external_id": "DR-3", "securevideo_user_id": 1122},
            ]
        ),
        "participants[3].securevideo_user_id",
    ),
    (
        "sv-user-missing-external-id",
        lambda v, g: g.append({"securevideo_user_id": "1122"}),
        "participants[2].external_id",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field"), [pytest.param(m, f, id=name) for name, m, f in INVALID]
)
def test_invalid_rows_name_the_field_and_no_patient_data(
    mutate: Callable[[Row, Guests], object], field: str
) -> None:
    values = make(mutate)
    with pytest.raises(InvalidRowError) as caught:
        parse(values)
    err = caught.value
    assert err.field == field, str(err)
    assert f"field {field!r}" in str(err)
    assert_phi_free(err)
    # the chain is cut: a traceback cannot show a codec error holding the raw bytes
    assert err.__cause__ is None
    assert err.__suppress_context__


@pytest.mark.parametrize(
    ("mutate", "label"),
    [
        pytest.param(_drop("appointment_id"), "event 7", id="missing"),
        pytest.param(_set("appointment_id", ""), "event 7", id="empty"),
        pytest.param(_set("appointment_id", 100), "event 7", id="int"),
        pytest.param(_set("appointment_id", NAME + "\x00"), "event 7", id="control"),
        pytest.param(
            lambda v, g: v.update(appointment_id=None, event_id="x"), "event ?", id="no-ids"
        ),
        pytest.param(_set("status", "nope"), "APT-100", id="valid-id"),
    ],
)
def test_error_label_falls_back_to_the_event(
    mutate: Callable[[Row, Guests], object], label: str
) -> None:
    with pytest.raises(InvalidRowError) as caught:
        parse(make(mutate))
    assert caught.value.appointment_id == label
    assert str(caught.value).startswith(f"appointment {label}: ")


def test_status_value_is_not_echoed() -> None:
    with pytest.raises(InvalidRowError) as caught:
        parse(make(_set("status", NAME)))
    assert_phi_free(caught.value)


# --- properties ----------------------------------------------------------------------------------

NASTY_TEXT = st.sampled_from(
    [
        "'; DROP TABLE x; --",
        "Robert'); DROP TABLE Students;--",
        "\ud800",
        "\udfff tail",
        "\x00",
        "\u202e",
        "",
        " ",
        "null",
        "[]",
        "{}",
        "[{}]",
        '[{"external_id": "X"}]',
        "2027-03-14 02:30",
        "2027-11-07 01:30",
        "9999-12-31 23:59",
        "0001-01-01 00:00",
        "booked",
        "Central Standard Time",
        "America/Regina",
        "Antarctica/Troll",
        "../../etc/passwd",
        "E",
        "S",
        "1e999999",
        "NaN",
        "-1",
    ]
)
TEXT = st.one_of(
    st.text(max_size=80),
    st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=20),
    NASTY_TEXT,
    st.integers(100_000, 100_001).map(lambda n: "x" * n),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.just(5000).map(lambda n: 10**n),  # too long for str(): int() limits bite
    st.floats(),
    st.decimals(),
    TEXT,
    st.binary(max_size=40),
    st.just(b"\xff\xfe\x00"),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
GUEST_KEYS = st.sampled_from(
    [
        "external_id",
        "full_name",
        "email",
        "sms",
        "time_zone",
        "deliver",
        "packet_id",
        "svc_id",
        "deposit",
        "securevideo_user_id",
    ]
)
JUNK_GUEST = st.dictionaries(GUEST_KEYS, JUNK, max_size=10)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
JSON_GUESTS = st.lists(st.dictionaries(GUEST_KEYS, JSON_VALUE, max_size=10), max_size=4)
PARTICIPANTS = st.one_of(
    JUNK,
    st.lists(JUNK_GUEST, max_size=4),
    JSON_GUESTS.map(json.dumps),
    JSON_GUESTS.map(lambda g: json.dumps(g, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)
COLUMNS = (
    "event_id",
    "appointment_id",
    "provider_external_id",
    "status",
    "starts_at",
    "topic",
    "is_recorded",
    "created_at",
)
# patient data made invalid: what a leaky message would quote
SPOILT = st.tuples(
    st.sampled_from(CANARIES), st.sampled_from([" ", "\x00", "@", "\ud800", "\n", ""]), TEXT
).map(lambda t: t[0] + t[1] + t[2])
ZONES = st.one_of(st.timezones(), st.just(NEW_YORK), st.just(ZoneInfo("Pacific/Chatham")))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    values=st.fixed_dictionaries({}, optional=dict.fromkeys(COLUMNS, JUNK))
    | st.dictionaries(TEXT, JUNK, max_size=3),
    participants=PARTICIPANTS,
    zone=ZONES,
    prefix=st.text(max_size=10),
)
def test_junk_rows_parse_or_raise_invalid_row(
    values: Row, participants: object, zone: ZoneInfo, prefix: str
) -> None:
    values = {**values, "participants": participants}
    try:
        appt = parse_row(values, windows_zone=windows_zone_id, zone=zone, session_id_prefix=prefix)
    except InvalidRowError as err:
        assert err.field
    else:
        assert isinstance(appt, Appointment)


@FUZZ
@given(
    replace=st.dictionaries(st.sampled_from(COLUMNS), JUNK, max_size=4),
    # every column but appointment_id, which errors name on purpose
    spoilt=st.dictionaries(st.sampled_from(COLUMNS[2:]), SPOILT, max_size=2),
    guest_changes=st.lists(st.tuples(st.integers(0, 1), GUEST_KEYS, JUNK | SPOILT), max_size=4),
    zone=ZONES,
)
def test_junk_around_patient_data_never_reaches_the_message(
    replace: Row, spoilt: Row, guest_changes: list[tuple[int, str, object]], zone: ZoneInfo
) -> None:
    def mutate(values: Row, guests: Guests) -> None:
        values.update(copy.deepcopy(replace))
        values.update(spoilt)
        for index, key, value in guest_changes:
            guests[index][key] = value

    try:
        values = make(mutate)
    except (TypeError, ValueError):
        # json.dumps refused the junk (e.g. a dict with non-string keys): feed the list instead
        values = base_row()
        mutate(values, base_guests())
    try:
        parse_row(values, windows_zone=windows_zone_id, zone=zone)
    except InvalidRowError as err:
        assert_phi_free(err)


@FUZZ
@given(
    target=st.sampled_from(COLUMNS[2:]) | st.tuples(st.integers(0, 1), GUEST_KEYS),
    value=SPOILT | JUNK,
    zone=ZONES,
)
def test_one_spoilt_value_never_reaches_the_message(
    target: str | tuple[int, str], value: object, zone: ZoneInfo
) -> None:
    def mutate(values: Row, guests: Guests) -> None:
        if isinstance(target, str):
            values[target] = value
        else:
            guests[target[0]][target[1]] = value

    values = base_row()
    guests = values["participants"]
    assert isinstance(guests, list)
    mutate(values, guests)
    try:
        parse_row(values, windows_zone=windows_zone_id, zone=zone)
    except InvalidRowError as err:
        assert_phi_free(err)


@FUZZ
@given(
    names=st.lists(
        st.text(st.characters(categories=["L", "N", "Zs", "P"]), min_size=2, max_size=40).filter(
            lambda s: len(s.strip()) >= 2
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda s: s.strip().casefold(),
    ),
    local=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    zone=ZONES,
)
def test_well_formed_rows_keep_their_guests(
    names: list[str], local: datetime, zone: ZoneInfo
) -> None:
    guests = [
        {"external_id": f"P{i}", "full_name": name, "deliver": "N"} for i, name in enumerate(names)
    ]
    values = make(lambda v, g: v.update(participants=guests, starts_at=local))
    try:
        appt = parse_row(values, windows_zone=windows_zone_id, zone=zone)
    except InvalidRowError as err:
        # only a time in a DST gap is refused here
        assert err.field == "starts_at"
        return
    assert [g.full_name for g in appt.guests] == [n.strip() for n in names]
    assert appt.starts_at.second == 0
    assert appt.starts_at.microsecond == 0
