"""Database URLs as SQLAlchemy reads them, for settings that must not import SQLAlchemy itself."""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"


def is_valid_url(value: str) -> bool:
    try:
        make_url(value)
    except (ArgumentError, ValueError):
        return False
    return True


def masked_url(value: str) -> str:
    """The URL with its password, and any query parameter that looks like one, masked."""
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        return MASK
    # Drivers also accept a password as a query parameter, which hide_password does not cover.
    query = {
        key: (MASK if re.search("pass|secret|token|key", key, re.IGNORECASE) else val)
        for key, val in url.query.items()
    }
    return url.set(query=query).render_as_string(hide_password=True)
