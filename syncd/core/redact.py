"""Keep an appointment's patient data out of text that syncd stores or logs.

SecureVideo's error messages are free text and may quote what we sent (a name, an address).  Before
such a message becomes a parking reason or a log field, every PHI value of the appointment it
concerns is replaced, and e-mail- and phone-shaped runs are masked as a second line of defence.
"""

from __future__ import annotations

import re

from syncd.core.domain import Appointment

_EMAIL = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")
MAX_REASON = 500
#: A driver may quote the value it choked on ("invalid input syntax for type timestamp: '…'").
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


#: A connect code ("the 9 digit code used by the participant to join") and a Passkey (an RFC 4122
#: GUID): access credentials, masked wherever SecureVideo's free text might quote them.
_CONNECT_CODE = re.compile(r"(?<![0-9])[0-9]{9}(?![0-9])")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def without_credentials(text: str) -> str:
    """Text with anything shaped like a connect code or a Passkey masked."""
    return _CONNECT_CODE.sub("[code]", _GUID.sub("[passkey]", text))


def without_quoted_values(text: str) -> str:
    """A database driver's message with whatever stands between quotes dropped: the sentence says
    what went wrong, the quoted part is where a row's value (a patient's) would appear."""
    return _QUOTED.sub("'…'", text)


def redact(text: str, appointment: Appointment | None = None) -> str:
    if appointment is not None:
        secrets = {appointment.topic or ""}
        for g in appointment.guests:
            secrets |= {g.full_name, g.email, g.sms}
        # Longest first, so a full name is replaced before a part of it could be.
        for value in sorted((s for s in secrets if len(s) >= 2), key=len, reverse=True):
            text = re.sub(re.escape(value), "[redacted]", text, flags=re.IGNORECASE)
        # Participant external ids are often MRNs; only whole ids, so "12" leaves "1215" alone.
        ids = {g.external_id for g in appointment.guests if len(g.external_id) >= 2}
        for value in sorted(ids, key=len, reverse=True):
            whole = rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])"
            text = re.sub(whole, "[redacted]", text, flags=re.IGNORECASE)
    text = _EMAIL.sub("[redacted]", text)
    text = _PHONE.sub("[redacted]", text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"
