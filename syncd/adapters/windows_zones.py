"""Windows zone ids for SecureVideo's ``ParticipantTimeZoneWindowsId``; the one owner of tzlocal.

The mapping comes from the CLDR windowsZones table as shipped by ``tzlocal.windows_tz``:
hand-written tables are a known source of bugs (Saskatchewan, for one, has no DST and its own
Windows id).  Error messages never repeat the rejected value: a time zone in an outbox row sits
next to patient data, and a garbage value may well *be* patient data typed into the wrong column.
"""

from __future__ import annotations

from tzlocal.windows_tz import tz_win, win_tz

__all__ = ["windows_zone_id"]

# tzlocal's table carries an empty-string key (a CLDR artifact): never let "" map to a zone.
_TZ_WIN: dict[str, str] = {k: v for k, v in tz_win.items() if k}
_WIN_IDS: frozenset[str] = frozenset(win_tz)
# Spreadsheet-typed ids arrive in any case ("central standard time"); answer with CLDR's spelling.
_TZ_WIN_FOLDED: dict[str, str] = {k.casefold(): v for k, v in _TZ_WIN.items()}
_WIN_FOLDED: dict[str, str] = {k.casefold(): k for k in _WIN_IDS}


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
