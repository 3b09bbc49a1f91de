"""Acknowledgements (original mode): MSA with the message's control id, ERR naming the field."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Final

__all__ = ["ack_message"]

_ESCAPES: Final = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"))
_ERROR_TEXT: Final = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "203": "Unsupported version id",
}
_counter = itertools.count(1)


def _escape(value: str) -> str:
    for raw, escaped in _ESCAPES:
        value = value.replace(raw, escaped)
    return value.replace("\r", " ").replace("\n", " ")


def ack_message(
    code: str,
    *,
    control_id: str | None,
    trigger: str | None,
    version: str | None,
    sender: tuple[str, str] = ("", ""),
    receiver: tuple[str, str] = ("", ""),
    location: str | None = None,
    error_code: str | None = None,
    text: str | None = None,
    now: datetime | None = None,
) -> str:
    """The ACK's segments, ``\\r``-separated.  ``sender`` is the original's MSH-3/4 (the ACK's
    receiver), ``receiver`` its MSH-5/6.  ``text`` must carry no value of the message."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    version = version or "2.5.1"
    ack_id = f"SYNCD{stamp}{next(_counter):06d}"
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            _escape(receiver[0]),
            _escape(receiver[1]),
            _escape(sender[0]),
            _escape(sender[1]),
            stamp,
            "",
            f"ACK^{_escape(trigger)}^ACK" if trigger else "ACK",
            ack_id,
            "P",
            _escape(version),
        ]
    )
    segments = [msh, "|".join(["MSA", code, _escape(control_id or ""), _escape(text or "")])]
    if location is not None or error_code is not None:
        segments.append(_err(location, error_code or "207", version))
    return "\r".join(segments) + "\r"


def _err(location: str | None, error_code: str, version: str) -> str:
    what = _ERROR_TEXT.get(error_code, "Application internal error")
    parts = (location or "").split("^")
    if version.startswith(("2.3", "2.4")):
        # ERR-1 (ELD): segment^sequence^field^code&text&table
        padded = [*parts, "", "", ""][:3]
        eld = "^".join([*padded, f"{error_code}&{what}&HL70357"])
        return f"ERR|{eld}"
    # ERR-2 (ERL) the location, ERR-3 the HL7 error code, ERR-4 the severity
    return f"ERR||{location or ''}|{error_code}^{what}^HL70357|E"
