"""Database URLs as SQLAlchemy reads them, for settings that must not import SQLAlchemy itself.

:func:`engine_url` is what both engine factories connect with: the URL an operator wrote, with the
spellings SQLAlchemy does not know (``postgres://``) read as what they mean, and a driver chosen
from the installed ones when the URL names none.  Every problem is one sentence that never
repeats the URL (it may hold the password).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from syncd.core.errors import SyncdError

MASK = "***"

#: Backends spelt in ways SQLAlchemy does not load: Heroku, libpq and most docs write postgres://.
_BACKEND_ALIASES = {"postgres": "postgresql"}
#: (SQLAlchemy driver name, the module it imports), in order of preference, for a URL naming none.
_DRIVERS: dict[str, tuple[tuple[str, str], ...]] = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2"), ("pg8000", "pg8000")),
    "mysql": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql"), ("mariadbconnector", "mariadb")),
    "mariadb": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql"), ("mariadbconnector", "mariadb")),
}
#: What to install for a backend whose driver is missing: syncd's extras pull in these.
_INSTALL = {
    "postgresql": "psycopg (pip install 'psycopg[binary]', or syncd's [postgres] extra)",
    "mysql": "PyMySQL (pip install pymysql, or syncd's [mysql] extra)",
    "mariadb": "PyMySQL (pip install pymysql, or syncd's [mysql] extra)",
}


class UnusableUrlError(SyncdError):
    """The URL is well formed but cannot be connected with: no such dialect, no driver."""


def is_valid_url(value: str) -> bool:
    try:
        make_url(value)
    except (ArgumentError, ValueError):
        return False
    return True


def masked_url(value: str | URL) -> str:
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


def engine_url(value: str | URL, *, importable: Callable[[str], bool] | None = None) -> URL:
    """The URL to create an engine with; raises :class:`UnusableUrlError` naming the fix.
    ``importable``: whether a driver's module is installed (tests stand in for a bare machine)."""
    importable = importable or _importable
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise UnusableUrlError(
            "is not a valid SQLAlchemy URL (expected dialect+driver://user:password@host/db)"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    backend = _BACKEND_ALIASES.get(backend, backend)
    if not driver and backend in _DRIVERS:
        installed = [name for name, module in _DRIVERS[backend] if importable(module)]
        if not installed:
            raise UnusableUrlError(
                f"no {backend} driver is installed: install {_INSTALL[backend]}, or name the "
                f"driver in the URL ({backend}+DRIVER://...)"
            )
        driver = installed[0]
    url = url.set(drivername=f"{backend}+{driver}" if driver else backend)
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise UnusableUrlError(
            f"SQLAlchemy has no database dialect {url.drivername!r} (expected e.g. "
            "postgresql+psycopg, mysql+pymysql, sqlite, mssql+pyodbc)"
        ) from None
    except ImportError as exc:
        others = [
            f"{backend}+{name}://"
            for name, module in _DRIVERS.get(backend, ())
            if name != driver and importable(module)
        ]
        instead = f"use {' or '.join(others)} instead" if others else "install it"
        if not others and backend in _INSTALL:
            instead = f"install {_INSTALL[backend]}"
        raise UnusableUrlError(
            f"the {driver or 'default'} driver for {backend} is not installed "
            f"(no module {exc.name or 'to import'}): {instead}"
        ) from None
    return url


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
