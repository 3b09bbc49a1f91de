from __future__ import annotations

import contextlib
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.adapters.windows_zones import windows_zone_id
from syncd.core.zones import zone

_FIXED_MESSAGES = {
    "time zone must be a string",
    "time zone is empty",
    "not an IANA time zone with a Windows id, nor a Windows time zone id",
}


@pytest.mark.parametrize(
    ("iana", "windows"),
    [
        ("America/Chicago", "Central Standard Time"),
        # Saskatchewan stays on standard time all year: not "Central Standard Time"
        ("America/Regina", "Canada Central Standard Time"),
        ("Asia/Kolkata", "India Standard Time"),
        ("Asia/Calcutta", "India Standard Time"),
        ("Europe/London", "GMT Standard Time"),
        ("America/New_York", "Eastern Standard Time"),
        ("America/Phoenix", "US Mountain Standard Time"),
        ("UTC", "UTC"),
        ("  America/Chicago ", "Central Standard Time"),
        ("america/chicago", "Central Standard Time"),
    ],
)
def test_iana_names_map_to_windows_ids(iana: str, windows: str) -> None:
    assert windows_zone_id(iana) == windows


@pytest.mark.parametrize(
    ("given_id", "expected"),
    [
        ("Central Standard Time", "Central Standard Time"),
        ("Canada Central Standard Time", "Canada Central Standard Time"),
        ("W. Europe Standard Time", "W. Europe Standard Time"),
        ("eastern standard time", "Eastern Standard Time"),
    ],
)
def test_windows_ids_pass_through(given_id: str, expected: str) -> None:
    assert windows_zone_id(given_id) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Nowhere/Special",
        "",
        "   ",
        "Central Time",
        # IANA names that CLDR gives no Windows id
        "Antarctica/Troll",
        "EST5EDT",
        "Factory",
        "GMT",
        "'; DROP TABLE x; --",
        "\udcff",
        "Central Standard Time\x00",
    ],
)
def test_unknown_zones_raise_value_error(value: str) -> None:
    with pytest.raises(ValueError) as err:
        windows_zone_id(value)
    assert str(err.value) in _FIXED_MESSAGES


def test_non_string_raises_value_error() -> None:
    with pytest.raises(ValueError):
        windows_zone_id(42)  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_windows_zone_id_only_raises_value_error(value: str) -> None:
    try:
        result = windows_zone_id(value)
    except ValueError as exc:
        # fixed wording only: nothing of the input is echoed
        assert str(exc) in _FIXED_MESSAGES
    else:
        assert result


def test_zone_loads_iana_names() -> None:
    assert zone("America/Chicago") == ZoneInfo("America/Chicago")
    assert zone("UTC") == ZoneInfo("UTC")
    assert zone("America/Argentina/Buenos_Aires").key == "America/Argentina/Buenos_Aires"


@pytest.mark.parametrize(
    "value",
    [
        "Nowhere/Special",
        "",
        "America",
        "../../etc/passwd",
        "/usr/share/zoneinfo/UTC",
        "localtime",
        "Factory",
        "right/UTC",
        "posix/America/Chicago",
        "Central Standard Time",
        "UTC\x00",
        "\udcff",
    ],
)
def test_zone_rejects_non_iana(value: str) -> None:
    with pytest.raises(ValueError):
        zone(value)


@given(st.text(max_size=60))
def test_zone_only_raises_value_error(value: str) -> None:
    with contextlib.suppress(ValueError):
        zone(value)
