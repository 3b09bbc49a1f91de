"""One SIU message → the outbox contract's whole-appointment row, or why it is refused.

The row is validated by the same parser as an outbox row (``syncd.core.rows.parse_row``), so what
is stored is what the engine accepts; a parser error is turned back into the HL7 location of the
field it came from (``PID^1^13``).  Nothing here quotes a value of the message in an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import hl7

from syncd.core.domain import Appointment, AppointmentStatus
from syncd.core.errors import InvalidRowError
from syncd.core.rows import WindowsZone, parse_row

__all__ = ["TRIGGERS", "Hl7Mapping", "Mapped", "Refused", "map_message"]

#: the trigger events syncd takes, and the status each implies (None: booked unless SCH-25 says)
TRIGGERS: Final[dict[str, AppointmentStatus | None]] = {
    "S12": None,
    "S13": None,
    "S14": None,
    "S15": AppointmentStatus.CANCELLED,
    "S17": AppointmentStatus.CANCELLED,
    "S26": AppointmentStatus.NOSHOW,
}
VERSIONS: Final = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})

#: HL7 table 0278 (filler status codes), lower-cased, to FHIR Appointment.status
FILLER_STATUS: Final[dict[str, AppointmentStatus]] = {
    "booked": AppointmentStatus.BOOKED,
    "overbook": AppointmentStatus.BOOKED,
    "started": AppointmentStatus.BOOKED,
    "pending": AppointmentStatus.PENDING,
    "waitlist": AppointmentStatus.WAITLIST,
    "complete": AppointmentStatus.FULFILLED,
    "cancelled": AppointmentStatus.CANCELLED,
    "canceled": AppointmentStatus.CANCELLED,
    "dc": AppointmentStatus.CANCELLED,
    "deleted": AppointmentStatus.CANCELLED,
    "blocked": AppointmentStatus.CANCELLED,
    "noshow": AppointmentStatus.NOSHOW,
}

_TS = re.compile(
    r"(?P<y>[0-9]{4})(?P<mo>[0-9]{2})(?P<d>[0-9]{2})"
    r"(?:(?P<h>[0-9]{2})(?P<mi>[0-9]{2})(?:(?P<s>[0-9]{2})(?:\.[0-9]{1,4})?)?)?"
    r"(?P<z>[+-][0-9]{4})?"
)
_INTERNET = frozenset({"internet", "x.400"})

AckCode = Literal["AE", "AR"]


@dataclass(frozen=True, slots=True)
class Hl7Mapping:
    """What differs between clinics: the zone of times without an offset, which id comes first."""

    zone: ZoneInfo
    windows_zone: WindowsZone
    #: "filler": SCH-2.1, else SCH-1.1; "placer": the other way round
    appointment_id: Literal["filler", "placer"] = "filler"


@dataclass(frozen=True, slots=True)
class Mapped:
    """An acceptable message: ids and type for the inbox, the row (patient data) as JSON."""

    control_id: str
    appointment_id: str
    message_type: str
    message_at: datetime
    row: str
    appointment: Appointment
    version: str
    #: MSH-3.1/4.1 and MSH-5.1/6.1: who sent it (the ACK's receiver) and to whom
    sender: tuple[str, str]
    receiver: tuple[str, str]


@dataclass(frozen=True, slots=True)
class Refused:
    """A message not to store: AE (a field is missing or invalid) or AR (not one syncd takes)."""

    code: AckCode
    #: the HL7 location of the field (``PID^1^13``), or None for the whole message
    location: str | None
    problem: str
    control_id: str | None
    message_type: str | None
    version: str | None
    #: HL7 table 0357: 101 required field missing, 102 data type error, 200 unsupported type
    error_code: str
    sender: tuple[str, str] = ("", "")
    receiver: tuple[str, str] = ("", "")


class _RefusedError(Exception):
    def __init__(self, code: AckCode, location: str | None, problem: str, error: str) -> None:
        super().__init__(problem)
        self.code, self.location, self.problem, self.error = code, location, problem, error


def parse(text: str) -> Any:
    """The library's message, or None when the text is not HL7 at all."""
    if not text.startswith("MSH") or len(text) < 8:
        return None
    try:
        return hl7.parse(text)
    except Exception:  # noqa: BLE001 - IndexError and the library's own errors alike on garbage
        return None


def map_message(text: str, mapping: Hl7Mapping) -> Mapped | Refused:
    """The message's row, or why it is refused; never raises on any text."""
    try:
        return _map_text(text, mapping)
    except Exception:  # noqa: BLE001 - a shape the library trips on is still not ours to take
        return Refused("AR", None, "not a readable HL7 v2 message", None, None, None, "100")


def _map_text(text: str, mapping: Hl7Mapping) -> Mapped | Refused:
    message = parse(text)
    if message is None:
        return Refused("AR", None, "not an HL7 v2 message", None, None, None, "100")
    reader = _Reader(message)
    control_id = reader.get("MSH", 10) or None
    trigger = reader.get("MSH", 9, 2) or None
    version = reader.get("MSH", 12, 1) or None
    sender = (reader.get("MSH", 3, 1), reader.get("MSH", 4, 1))
    receiver = (reader.get("MSH", 5, 1), reader.get("MSH", 6, 1))
    try:
        mapped = _map(reader, mapping, control_id, trigger, version)
    except _RefusedError as r:
        return Refused(
            r.code, r.location, r.problem, control_id, trigger, version, r.error, sender, receiver
        )
    return replace(mapped, sender=sender, receiver=receiver)


def _map(
    reader: _Reader,
    mapping: Hl7Mapping,
    control_id: str | None,
    trigger: str | None,
    version: str | None,
) -> Mapped:
    if reader.get("MSH", 9, 1) != "SIU" or trigger not in TRIGGERS:
        raise _RefusedError("AR", "MSH^1^9", "not a supported message type", "200")
    if version not in VERSIONS:
        raise _RefusedError("AR", "MSH^1^12", "not a supported HL7 version (2.3 to 2.5.1)", "203")
    if control_id is None:
        raise _RefusedError("AE", "MSH^1^10", "missing", "101")
    if len(control_id) > 199 or not control_id.isprintable():
        raise _RefusedError("AE", "MSH^1^10", "not a usable message control id", "102")
    message_at = _timestamp(reader.get("MSH", 7), "MSH^1^7", mapping, need_time=False)
    first, second = (2, 1) if mapping.appointment_id == "filler" else (1, 2)
    id_field = first if reader.get("SCH", first, 1) else second
    appointment_id = reader.get("SCH", id_field, 1)
    if not appointment_id:
        raise _RefusedError(
            "AE", f"SCH^1^{first}", "missing (and so is the other appointment id)", "101"
        )
    start_at, start_location = _start(reader)
    starts_at = _timestamp(start_at, start_location, mapping, need_time=True)
    status = _status(reader, trigger)
    values: dict[str, object] = {
        "event_id": 0,
        "appointment_id": appointment_id,
        "provider_external_id": reader.get("AIP", 3, 1) or None,
        "status": status.value,
        "starts_at": starts_at.isoformat() + "+00:00",
        "topic": None,
        "is_recorded": False,
        "participants": _guests(reader),
    }
    locations = {
        "appointment_id": f"SCH^1^{id_field}",
        "provider_external_id": "AIP^1^3",
        "starts_at": start_location,
        "participants": "PID^1",
    }
    try:
        appointment = parse_row(values, zone=mapping.zone, windows_zone=mapping.windows_zone)
    except InvalidRowError as err:
        raise _RefusedError("AE", _location(err.field, locations), err.problem, "102") from None
    del values["event_id"]
    return Mapped(
        control_id=control_id,
        appointment_id=appointment_id,
        message_type=trigger,
        message_at=message_at,
        row=json.dumps(values, separators=(",", ":")),
        appointment=appointment,
        version=version,
        sender=("", ""),
        receiver=("", ""),
    )


def _location(field: str, locations: dict[str, str]) -> str:
    if field.startswith("participants[0]."):
        part = field.removeprefix("participants[0].")
        return {"external_id": "PID^1^3", "full_name": "PID^1^5"}.get(part, "PID^1^13")
    return locations.get(field, "SCH^1")


def _start(reader: _Reader) -> tuple[str, str]:
    for value, location in (
        (reader.get("AIS", 4), "AIS^1^4"),
        (reader.get("AIP", 6), "AIP^1^6"),
        (reader.get("SCH", 11, 4), "SCH^1^11"),
    ):
        if value:
            return value, location
    raise _RefusedError("AE", "AIS^1^4", "missing (and so are AIP-6 and SCH-11.4)", "101")


def _status(reader: _Reader, trigger: str) -> AppointmentStatus:
    implied = TRIGGERS[trigger]
    if implied is not None:
        return implied
    filler = reader.get("SCH", 25, 1).strip().lower()
    if not filler:
        return AppointmentStatus.BOOKED
    found = FILLER_STATUS.get(filler)
    if found is None:
        raise _RefusedError("AE", "SCH^1^25", "not a filler status code of HL7 table 0278", "103")
    return found


def _guests(reader: _Reader) -> list[dict[str, object]]:
    if not reader.has("PID"):
        return []
    external_id = reader.get("PID", 3, 1)
    if not external_id:
        raise _RefusedError("AE", "PID^1^3", "missing", "101")
    family, given = reader.get("PID", 5, 1, 1), reader.get("PID", 5, 2)
    full_name = " ".join(p for p in (given.strip(), family.strip()) if p)
    if not full_name:
        raise _RefusedError("AE", "PID^1^5", "missing", "101")
    email, sms = "", ""
    for rep in range(1, reader.repetitions("PID", 13) + 1):
        use, equipment = reader.get("PID", 13, 2, rep=rep), reader.get("PID", 13, 3, rep=rep)
        if not email and (equipment.lower() in _INTERNET or use.upper() == "NET"):
            email = reader.get("PID", 13, 4, rep=rep)
        elif not sms and equipment.upper() == "CP":
            sms = _phone(reader, rep)
    deliver = "E" if email else "S" if sms else "N"
    return [
        {
            "external_id": external_id,
            "full_name": full_name,
            "email": email or None,
            "sms": sms or None,
            "deliver": deliver,
        }
    ]


def _phone(reader: _Reader, rep: int) -> str:
    unformatted = reader.get("PID", 13, 12, rep=rep)
    if unformatted:
        return unformatted
    parts = [reader.get("PID", 13, c, rep=rep) for c in (5, 6, 7)]
    return "".join(parts) if parts[2] else reader.get("PID", 13, 1, rep=rep)


def _timestamp(value: str, location: str, mapping: Hl7Mapping, *, need_time: bool) -> datetime:
    """An HL7 TS/DTM as naive UTC; without an offset it is read in the configured zone."""
    if not value:
        raise _RefusedError("AE", location, "missing", "101")
    match = _TS.fullmatch(value.strip())
    if match is None or (need_time and match["h"] is None):
        raise _RefusedError(
            "AE", location, "not an HL7 date and time (YYYYMMDDHHMM[SS][+ZZZZ])", "102"
        )
    try:
        moment = datetime(
            int(match["y"]),
            int(match["mo"]),
            int(match["d"]),
            int(match["h"] or 0),
            int(match["mi"] or 0),
            int(match["s"] or 0),
        )
        zone = match["z"]
        if zone is not None:
            sign = -1 if zone[0] == "-" else 1
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
            aware = moment.replace(tzinfo=timezone(sign * offset))
        else:
            aware = moment.replace(tzinfo=mapping.zone, fold=0)
            if aware.astimezone(UTC).astimezone(mapping.zone).replace(tzinfo=None) != moment:
                raise _RefusedError("AE", location, "this local time does not exist", "102")
        return aware.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise _RefusedError("AE", location, "not a valid date and time", "102") from None


class _Reader:
    """Field access that treats a missing segment, field or component as empty text."""

    def __init__(self, message: Any) -> None:
        self._message = message

    def has(self, segment: str) -> bool:
        return any(str(s[0]) == segment for s in self._message)

    def _segment(self, segment: str) -> Any:
        for s in self._message:
            if str(s[0]) == segment:
                return s
        return None

    def repetitions(self, segment: str, field: int) -> int:
        found = self._segment(segment)
        if found is None or len(found) <= field:
            return 0
        value = found[field]
        return len(value) if isinstance(value, hl7.Field) else 1

    def get(
        self, segment: str, field: int, component: int = 0, sub: int = 0, *, rep: int = 1
    ) -> str:
        """``SEG-field.component.sub`` of the first such segment, unescaped; 0 is the whole."""
        if self._segment(segment) is None:
            return ""
        key = f"{segment}.F{field}"
        if component:
            key += f".R{rep}.C{component}"
            if sub:
                key += f".S{sub}"
        elif rep != 1:
            key += f".R{rep}"
        try:
            value = self._message[key]
        except (IndexError, KeyError, ValueError, TypeError):
            return ""
        return _text(value)


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)
