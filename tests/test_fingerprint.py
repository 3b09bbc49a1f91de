"""Keyed fingerprints: stable under one key, unrelated under another, never the value itself."""

from __future__ import annotations

import pytest

from syncd.core.fingerprint import KEY_BYTES, Fingerprints, normalized_name

KEY = bytes(range(KEY_BYTES))


def test_same_value_same_key_same_fingerprint_and_another_key_another() -> None:
    one, other = Fingerprints(KEY), Fingerprints(bytes(KEY_BYTES))
    assert one.participant("MRN-0042") == one.participant("MRN-0042")
    assert one.participant("MRN-0042") != other.participant("MRN-0042")
    assert one.participant("MRN-0042") != one.participant("MRN-0043")
    assert "0042" not in one.participant("MRN-0042")
    assert len(one.participant("MRN-0042")) == len("g-") + 10


def test_kinds_are_kept_apart() -> None:
    prints = Fingerprints(KEY)
    assert prints.digest("name", "x") != prints.digest("contact", "x")


@pytest.mark.parametrize(
    ("a", "b"),
    [("zelda canary", "Zelda Canary"), ("Zelda  Canary ", " zelda canary"), ("STRASSE", "straße")],
)
def test_names_equal_under_case_folding_and_collapsed_spaces(a: str, b: str) -> None:
    assert normalized_name(a) == normalized_name(b)
    assert Fingerprints(KEY).name(a) == Fingerprints(KEY).name(b)


def test_a_different_name_is_different() -> None:
    assert Fingerprints(KEY).name("Zelda Canary") != Fingerprints(KEY).name("Zelda Canaries")


def test_contacts_ignore_case_and_surrounding_space_and_keep_none() -> None:
    prints = Fingerprints(KEY)
    assert prints.contact(" Zelda@Example.org") == prints.contact("zelda@example.org")
    assert prints.contact(None) is None


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Fingerprints(b"short")
