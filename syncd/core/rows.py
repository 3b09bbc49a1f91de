"""Outbox row → ``Appointment``: validation and normalisation, no I/O.

The reader hands over the values exactly as the database driver returned them (keyed by the
contract's column names), so this module accepts the spread of shapes drivers produce: timestamps
as ``datetime`` or text, booleans as ``bool``/int/text, the participants JSON as text, bytes or an
already-decoded list.

Every rejection is an ``InvalidRowError`` naming the appointment and the field
(``participants[1].email``; participant indexes are 0-based positions in the JSON array) and what
is wrong with it.  The messages never quote a value from the row: names, e-mails, phone numbers and
topics are patient data, and a value in the wrong column may be too.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import NoReturn
from zoneinfo import ZoneInfo

from syncd.core.domain import (
    NO_DOCUMENTS,
    PRESENCE,
    Appointment,
    AppointmentStatus,
    Delivery,
    Guest,
    Presence,
)
from syncd.core.errors import InvalidRowError

#: An IANA name (or a Windows id) to the Windows id SecureVideo takes; ``ValueError`` if none.
WindowsZone = Callable[[str], str]

__all__ = ["parse_row"]

MAX_ID_LENGTH = 64
MAX_TOPIC_LENGTH = 500
MAX_NAME_LENGTH = 255
MAX_EMAIL_LENGTH = 254
#: SecureVideo is an ASP.NET service: PacketId and SvcId are 32-bit ints there
MAX_INT32 = 2**31 - 1
#: a deposit is a card payment in US dollars; anything this large is a data error
MAX_DEPOSIT = Decimal("1000000")

_BIGINT = (-(2**63), 2**63 - 1)
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
_TIMESTAMP_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}:?[0-9]{2})?"
)
_EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_SMS_SEPARATORS = re.compile(r"[\s\-().]")
_SMS_SHAPE = re.compile(r"\+?([0-9]{7,15})")
_DIGITS = re.compile(r"[0-9]{1,18}")
_TRUE = frozenset({"true", "t", "1"})
_FALSE = frozenset({"false", "f", "0"})
_STATUSES: dict[str, AppointmentStatus] = {s.value: s for s in AppointmentStatus}
_DELIVERIES: dict[str, Delivery] = {"E": "E", "S": "S", "N": "N"}
_CENT = Decimal("0.01")


def parse_row(
    values: Mapping[str, object],
    *,
    zone: ZoneInfo,
    windows_zone: WindowsZone,
    session_id_prefix: str = "",
) -> Appointment:
    """Validate one outbox row and turn it into the appointment it describes.

    ``starts_at`` without a time zone is wall-clock time in ``zone``.  A wall time that does not
    exist there (skipped by a spring-forward change) is invalid input.  A wall time that occurs
    twice (repeated by a fall-back change) is read as its *first* occurrence (``fold=0``, still on
    daylight time): an EHR that stores naive local times has already lost which one was meant, and
    the earlier one keeps the patient from missing the visit.  A time-zone-aware value is converted
    to UTC as it is.  The result is naive UTC with seconds and microseconds dropped, as
    SecureVideo's ``ScheduleTs`` reports it.

    ``windows_zone`` turns a participant's zone into a Windows id (``ValueError`` when there is
    none); the table behind it is an adapter's.

    Raises ``InvalidRowError``; when the appointment id itself is unusable the error names the row
    as ``"event <event_id>"``.
    """
    event_id = _int_or_none(values.get("event_id"))
    raw_appointment_id = values.get("appointment_id")
    label = f"event {event_id}" if event_id is not None else "event ?"
    if isinstance(raw_appointment_id, str) and _id_problem(raw_appointment_id) is None:
        label = raw_appointment_id
    row = _Row(label, windows_zone)

    if event_id is None:
        row.fail("event_id", "missing or not an integer")
    appointment_id = row.identifier("appointment_id", raw_appointment_id)
    provider_external_id = row.identifier(
        "provider_external_id", values.get("provider_external_id")
    )
    status = row.status(values.get("status"))
    starts_at = row.starts_at(values.get("starts_at"), zone)
    topic = row.topic(values.get("topic"))
    is_recorded = row.flag("is_recorded", values.get("is_recorded"))
    guests = row.guests(values.get("participants"))
    if not guests and PRESENCE[status] is Presence.LIVE:
        row.fail("participants", "a live session needs at least one guest")

    return Appointment(
        event_id=event_id,
        appointment_id=appointment_id,
        external_session_id=session_id_prefix + appointment_id,
        provider_external_id=provider_external_id,
        status=status,
        starts_at=starts_at,
        topic=topic,
        is_recorded=is_recorded,
        guests=guests,
    )


class _Row:
    """The checks, bound to the label that every error of this row carries."""

    def __init__(self, label: str, windows_zone: WindowsZone) -> None:
        self.label = label
        self._windows_zone = windows_zone

    def fail(self, field: str, problem: str) -> NoReturn:
        # ``from None`` everywhere below: a chained driver/codec exception can carry the raw value
        # (UnicodeDecodeError keeps the bytes), and tracebacks print the chain.
        raise InvalidRowError(self.label, field, problem) from None

    # --- scalar columns ---------------------------------------------------------------------

    def identifier(self, field: str, value: object) -> str:
        if value is None:
            self.fail(field, "missing")
        if not isinstance(value, str):
            self.fail(field, "must be text")
        problem = _id_problem(value)
        if problem is not None:
            self.fail(field, problem)
        return value

    def status(self, value: object) -> AppointmentStatus:
        if value is None:
            self.fail("status", "missing")
        if not isinstance(value, str):
            self.fail("status", "must be text")
        found = _STATUSES.get(value.strip().lower())
        if found is None:
            self.fail("status", "not a FHIR Appointment.status value")
        return found

    def starts_at(self, value: object, zone: ZoneInfo) -> datetime:
        if value is None:
            self.fail("starts_at", "missing")
        if isinstance(value, str):
            value = self._timestamp_text(value)
        if not isinstance(value, datetime):
            self.fail("starts_at", "must be a timestamp")
        try:
            if value.utcoffset() is not None:
                utc = value.astimezone(UTC)
            else:
                utc = self._local_to_utc(value, zone)
        except (OverflowError, ValueError, TypeError):
            self.fail("starts_at", "out of range")
        return utc.replace(tzinfo=None, second=0, microsecond=0)

    def _timestamp_text(self, text: str) -> datetime:
        text = text.strip()
        if len(text) > 40 or not _TIMESTAMP_TEXT.fullmatch(text):
            self.fail("starts_at", "not a timestamp of the form YYYY-MM-DD HH:MM[:SS[.ffffff]]")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            self.fail("starts_at", "not a valid date and time")

    def _local_to_utc(self, naive: datetime, zone: ZoneInfo) -> datetime:
        local = naive.replace(tzinfo=zone, fold=0)
        utc = local.astimezone(UTC)
        # A wall time inside a spring-forward gap does not survive the round trip.
        if utc.astimezone(zone).replace(tzinfo=None, fold=0) != naive.replace(fold=0):
            self.fail("starts_at", "this local time does not exist in the configured time zone")
        return utc

    def topic(self, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail("topic", "must be text")
        if len(value) > MAX_TOPIC_LENGTH:
            self.fail("topic", f"longer than {MAX_TOPIC_LENGTH} characters")
        if not _is_clean_text(value, allow_newlines=True):
            self.fail("topic", "contains control characters or invalid Unicode")
        return value.strip() or None

    def flag(self, field: str, value: object) -> bool:
        parsed = _bool_or_none(value)
        if parsed is None:
            self.fail(field, "not a boolean (expected true/false, t/f, 1/0)")
        return parsed

    # --- participants -----------------------------------------------------------------------

    def guests(self, value: object) -> tuple[Guest, ...]:
        items = self._participant_list(value)
        guests: list[Guest] = []
        seen_ids: dict[str, int] = {}
        seen_names: dict[str, int] = {}
        seen_users: dict[str, int] = {}
        for index, item in enumerate(items):
            where = f"participants[{index}]"
            if not isinstance(item, Mapping):
                self.fail(where, "not a JSON object")
            guest = self._guest(where, item)
            self._unique(seen_ids, guest.external_id, index, f"{where}.external_id")
            if guest.securevideo_user_id is not None:
                user_id = guest.securevideo_user_id
                self._unique(seen_users, user_id, index, f"{where}.securevideo_user_id")
            else:
                # SecureVideo answers 400 to a second participant with the same name.
                self._unique(seen_names, guest.full_name.casefold(), index, f"{where}.full_name")
            guests.append(guest)
        return tuple(guests)

    def _unique(self, seen: dict[str, int], key: str, index: int, field: str) -> None:
        first = seen.setdefault(key, index)
        if first != index:
            self.fail(field, f"duplicate of participants[{first}]")

    def _participant_list(self, value: object) -> list[object] | tuple[object, ...]:
        if value is None:
            return []
        if isinstance(value, list | tuple):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                self.fail("participants", "not valid UTF-8")
        if not isinstance(value, str):
            self.fail("participants", "must be a JSON array")
        try:
            decoded = json.loads(
                value,
                parse_float=Decimal,
                parse_constant=_reject_constant,
                object_pairs_hook=_object_without_duplicate_keys,
            )
        except json.JSONDecodeError as exc:
            self.fail("participants", f"not valid JSON (line {exc.lineno} column {exc.colno})")
        except _DuplicateKeyError:
            self.fail("participants", "not valid JSON (an object repeats a key)")
        except (ValueError, RecursionError):
            # NaN/Infinity, integers too long to convert, nesting deeper than the parser's stack
            self.fail("participants", "not valid JSON")
        if not isinstance(decoded, list):
            self.fail("participants", "must be a JSON array")
        return decoded

    def _guest(self, where: str, item: Mapping[object, object]) -> Guest:
        external_id = self.identifier(f"{where}.external_id", item.get("external_id"))
        packet_id = self._packet_id(where, item.get("packet_id"))
        svc_id, deposit = self._payment(where, item.get("svc_id"), item.get("deposit"))

        sv_user = item.get("securevideo_user_id")
        if sv_user is not None:
            # A SecureVideo user's name, e-mail, phone, time zone and delivery belong to the user
            # record (the User API), not to the session: ignore what the row says about them.
            return Guest(
                external_id=external_id,
                packet_id=packet_id,
                svc_id=svc_id,
                deposit=deposit,
                securevideo_user_id=self._user_id(f"{where}.securevideo_user_id", sv_user),
            )

        full_name = self._full_name(f"{where}.full_name", item.get("full_name"))
        deliver = self._deliver(f"{where}.deliver", item.get("deliver"))
        email = self._email(f"{where}.email", item.get("email"))
        sms = self._sms(f"{where}.sms", item.get("sms"))
        if deliver == "E" and not email:
            self.fail(f"{where}.email", "required when deliver is E")
        if deliver == "S" and not sms:
            self.fail(f"{where}.sms", "required when deliver is S")
        return Guest(
            external_id=external_id,
            full_name=full_name,
            email=email,
            sms=sms,
            time_zone_windows_id=self._time_zone(f"{where}.time_zone", item.get("time_zone")),
            deliver=deliver,
            packet_id=packet_id,
            svc_id=svc_id,
            deposit=deposit,
        )

    def _full_name(self, field: str, value: object) -> str:
        if value is None:
            self.fail(field, "missing")
        if not isinstance(value, str):
            self.fail(field, "must be text")
        name = value.strip()
        if len(name) < 2:
            self.fail(field, "must be at least 2 characters")
        if len(name) > MAX_NAME_LENGTH:
            self.fail(field, f"longer than {MAX_NAME_LENGTH} characters")
        if not _is_clean_text(name, allow_newlines=False):
            self.fail(field, "contains control characters or invalid Unicode")
        return name

    def _deliver(self, field: str, value: object) -> Delivery:
        if value is None:
            return "N"
        if not isinstance(value, str):
            self.fail(field, "must be E, S or N")
        text = value.strip().upper()
        if not text:
            return "N"
        found = _DELIVERIES.get(text)
        if found is None:
            self.fail(field, "must be E, S or N")
        return found

    def _email(self, field: str, value: object) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            self.fail(field, "must be text")
        email = value.strip()
        if not email:
            return ""
        if (
            len(email) > MAX_EMAIL_LENGTH
            or not _is_clean_text(email, allow_newlines=False)
            or not _EMAIL_SHAPE.fullmatch(email)
        ):
            self.fail(field, "not an e-mail address")
        return email

    def _sms(self, field: str, value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**16:
            value = str(value)
        if not isinstance(value, str):
            self.fail(field, "must be text")
        if len(value) > 40:
            self.fail(field, "not a phone number of 7 to 15 digits")
        compact = _SMS_SEPARATORS.sub("", value)
        if not compact:
            return ""
        match = _SMS_SHAPE.fullmatch(compact)
        if match is None:
            self.fail(field, "not a phone number of 7 to 15 digits")
        return match.group(1)

    def _time_zone(self, field: str, value: object) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            self.fail(field, "must be text")
        try:
            return self._windows_zone(value)
        except ValueError:
            self.fail(field, "not an IANA time zone with a Windows id, nor a Windows time zone id")

    def _packet_id(self, where: str, value: object) -> int:
        if value is None:
            # No packet named is no documents, whichever endpoint the guest is sent to.
            return NO_DOCUMENTS
        number = _int_or_none(value)
        if number is None or not -1 <= number <= MAX_INT32:
            self.fail(f"{where}.packet_id", "must be an integer of at least -1")
        return number

    def _payment(
        self, where: str, svc_value: object, deposit_value: object
    ) -> tuple[int | None, Decimal | None]:
        if svc_value is None and deposit_value is None:
            return None, None
        if svc_value is None:
            self.fail(f"{where}.svc_id", "svc_id and deposit must both be set or both be empty")
        if deposit_value is None:
            self.fail(f"{where}.deposit", "svc_id and deposit must both be set or both be empty")
        svc_id = _int_or_none(svc_value)
        if svc_id is None or not 1 <= svc_id <= MAX_INT32:
            self.fail(f"{where}.svc_id", "must be a positive integer")
        return svc_id, self._deposit(f"{where}.deposit", deposit_value)

    def _deposit(self, field: str, value: object) -> Decimal:
        amount: Decimal | None = None
        if isinstance(value, Decimal):
            amount = value
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18:
            amount = Decimal(value)
        elif isinstance(value, float):
            # repr() is the shortest text that round-trips: 20.1 stays 20.1, not 20.1000000000000014
            amount = _decimal_or_none(repr(value))
        elif isinstance(value, str) and len(value) <= 40:
            amount = _decimal_or_none(value.strip())
        if amount is None or not amount.is_finite():
            self.fail(field, "must be a decimal amount")
        if amount < 0:
            self.fail(field, "must not be negative")
        if amount >= MAX_DEPOSIT:
            self.fail(field, f"must be less than {MAX_DEPOSIT}")
        cents = amount.quantize(_CENT)
        if cents != amount:
            self.fail(field, "more than 2 decimal places")
        return cents

    def _user_id(self, field: str, value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
            text = str(value)
        elif isinstance(value, str):
            text = value.strip()
        else:
            self.fail(field, "must be a number or a string of digits")
        if not _DIGITS.fullmatch(text) or int(text) < 1:
            self.fail(field, "must be a positive number")
        # SecureVideo reports SystemUserId as "1122": drop leading zeros so the two compare equal.
        return str(int(text))


def _id_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if not value.isprintable():
        return "contains control or unprintable characters"
    if value != value.strip():
        # An id is matched byte for byte (ledger, SecureVideo ExternalId): " A1" is not "A1".
        return "must not start or end with whitespace"
    return None


def _is_clean_text(value: str, *, allow_newlines: bool) -> bool:
    try:
        # Lone surrogates would blow up the JSON encoder on the way to SecureVideo.
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    allowed = "\t\n\r" if allow_newlines else ""
    return not any(
        unicodedata.category(ch) == "Cc" and ch not in allowed
        for ch in value
        if not ch.isprintable()
    )


def _bool_or_none(value: object) -> bool | None:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return {0: False, 1: True}.get(value)
    if isinstance(value, bytes):
        # MySQL BIT(1) columns arrive as one byte
        return {b"\x00": False, b"\x01": True, b"0": False, b"1": True}.get(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _int_or_none(value: object) -> int | None:
    number: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, Decimal | float):
        # Oracle NUMBER and some views hand integers over as Decimal/float.  The range check comes
        # first: int(Decimal("1e999999999")) would build a gigantic integer.
        try:
            magnitude = float(value)
            if math.isfinite(magnitude) and abs(magnitude) < 2.0**63 and value == int(value):
                number = int(value)
        except (ValueError, OverflowError, InvalidOperation):
            return None
    if number is None or not _BIGINT[0] <= number <= _BIGINT[1]:
        return None
    return number


def _decimal_or_none(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except (InvalidOperation, ValueError):
        return None


class _DuplicateKeyError(ValueError):
    pass


def _object_without_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKeyError
    return result


def _reject_constant(name: str) -> object:
    raise ValueError("NaN and Infinity are not JSON")
