"""Tells a database outage from a bug, for code that must not import SQLAlchemy itself."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from syncd.core.errors import TemporaryError
from syncd.core.redact import without_quoted_values

_OUTAGE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)


def classify(exc: BaseException) -> str | None:
    """ "database" for a database that is down or unreachable, "securevideo" for an API outage."""
    if isinstance(exc, _OUTAGE) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return "database"
    if isinstance(exc, TemporaryError):
        return "securevideo"
    return None


def describe_database_error(exc: BaseException) -> str | None:
    """One line for the operator when a database cannot be reached at start; None otherwise.

    The driver's own first line is kept (it says "connection refused", "unknown database"...);
    engines are created with ``hide_parameters`` so no bound value can appear in it.
    """
    if not isinstance(exc, DBAPIError | DisconnectionError | PoolTimeoutError):
        return None
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    first = without_quoted_values(lines[0][:300]) if lines else type(original).__name__
    return f"database unavailable: {first}"
