"""IANA time zones for the EHR's clock, checked before anything touches the file system."""

from __future__ import annotations

import functools
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

__all__ = ["zone"]

# Only the shape of a tz database name: rules out paths ("../", absolute), NULs and surrogates
# before anything touches the file system.
_IANA_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]{0,63}(?:/[A-Za-z0-9_+\-]{1,64}){0,3}")
# Present in the tz database but not zones a clinic can be in: "localtime" is whatever the host
# machine is set to, "Factory" is a placeholder with the abbreviation "-00".
_NOT_A_PLACE = frozenset({"localtime", "Factory", "posixrules"})


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
