"""Time zone names: IANA for the EHR's clock, Windows ids for SecureVideo's participants.

SecureVideo's ``ParticipantTimeZoneWindowsId`` takes Windows ids only.  The mapping comes from the
CLDR windowsZones table as shipped by ``tzlocal.windows_tz``: hand-written tables are a known source
of bugs (Saskatchewan, for one, has no DST and its own Windows id).

Error messages never repeat the rejected value: a time zone in an outbox row sits next to patient
data, and a garbage value may well *be* patient data typed into the wrong column.
"""

from __future__ import annotations

import functools
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from tzlocal.windows_tz import tz_win, win_tz

__all__ = ["windows_zone_id", "zone"]

# tzlocal's table carries an empty-string key (a CLDR artifact): never let "" map to a zone.
_TZ_WIN: dict[str, str] = {k: v for k, v in tz_win.items() if k}
_WIN_IDS: frozenset[str] = frozenset(win_tz)
# Spreadsheet-typed ids arrive in any case ("central standard time"); answer with CLDR's spelling.
_TZ_WIN_FOLDED: dict[str, str] = {k.casefold(): v for k, v in _TZ_WIN.items()}
_WIN_FOLDED: dict[str, str] = {k.casefold(): k for k in _WIN_IDS}

# Only the shape of a tz database name: rules out paths ("../", absolute), NULs and surrogates
# before anything touches the file system.
_IANA_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]{0,63}(?:/[A-Za-z0-9_+\-]{1,64}){0,3}")
# Present in the tz database but not zones a clinic can be in: "localtime" is whatever the host
# machine is set to, "Factory" is a placeholder with the abbreviation "-00".
_NOT_A_PLACE = frozenset({"localtime", "Factory", "posixrules"})


def windows_zone_id(zone: str) -> str:
    """The Windows time zone id for an IANA name, or a Windows id returned as CLDR spells it.

    Raises ``ValueError`` for anything else, including IANA names that CLDR gives no Windows id
    (``Antarctica/Troll``, the POSIX-style ``EST5EDT``/``CST6CDT``/..., ``GMT``, ``Factory``, and a
    few retired aliases such as ``Europe/Uzhgorod``).
    """
    if not isinstance(zone, str):
        raise ValueError("time zone must be a string")
    name = zone.strip()
    if not name:
        raise ValueError("time zone is empty")
    found = _TZ_WIN.get(name)
    if found is not None:
        return found
    if name in _WIN_IDS:
        return name
    folded = name.casefold()
    found = _TZ_WIN_FOLDED.get(folded) or _WIN_FOLDED.get(folded)
    if found is not None:
        return found
    raise ValueError("not an IANA time zone with a Windows id, nor a Windows time zone id")


def zone(name: str) -> ZoneInfo:
    """The IANA zone of this name; ``ValueError`` if it is not one (e.g. for a setting's check)."""
    if not isinstance(name, str) or not _IANA_SHAPE.fullmatch(name) or name in _NOT_A_PLACE:
        raise ValueError("not an IANA time zone name")
    if name not in _available():
        raise ValueError("unknown IANA time zone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError("unknown IANA time zone") from None


@functools.cache
def _available() -> frozenset[str]:
    # ZoneInfo alone would also load "right/..." (leap-second clocks) and "posix/..." copies
    # from the system tz directory; the curated list excludes them.
    return frozenset(available_timezones())
