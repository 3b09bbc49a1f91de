"""A database failure as the one line an operator acts on: which database, what, and the fix.

The adapters say what failed (:mod:`syncd.adapters.dberrors`); this module knows the settings, so
the fix names the variable to change.  URLs are shown with the password masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from syncd.adapters import dberrors as db
from syncd.adapters.dburl import masked_url
from syncd.adapters.outbox import OutboxProblem
from syncd.core.errors import SyncdError
from syncd.runtime.settings import Settings

_URL_SETTING = {db.OUTBOX: "SYNCD_OUTBOX__URL", db.LEDGER: "SYNCD_LEDGER__URL"}

_WHAT = {
    db.CREDENTIALS: "the server refused syncd's login",
    db.UNREACHABLE: "the server cannot be reached",
    db.NO_DATABASE: "the server has no such database",
    db.NOT_FOUND: "the database file cannot be opened",
    db.PERMISSION: "permission denied",
    db.MISSING_TABLE: "the table or view is missing",
    db.MISSING_COLUMN: "a column is missing",
    db.READ_ONLY: "a write was refused",
    db.OUTAGE: "the database failed",
    db.OTHER: "the database reported an error",
}


@dataclass(frozen=True, slots=True)
class DatabaseHint:
    """A failure with its fix, as log fields or as one line."""

    database: str
    problem: str
    error: str
    fix: str

    def line(self) -> str:
        return f"{self.database} database: {_WHAT[self.problem]}: {self.error} — {self.fix}"


def database_hint(exc: BaseException, settings: Settings | None = None) -> DatabaseHint | None:
    """The hint for ``exc``; None when it is not a database error."""
    failure = db.failure_of(exc)
    if failure is None:
        return None
    return DatabaseHint(
        failure.database,
        failure.kind,
        failure.detail,
        _fix(failure.database, failure.kind, settings),
    )


def explain_database_error(exc: BaseException, settings: Settings | None = None) -> str | None:
    hint = database_hint(exc, settings)
    return None if hint is None else hint.line()


_MISSING_COLUMN_FIX = (
    "map the EHR's column names with SYNCD_OUTBOX__COLUMNS__<NAME>, or fix the view"
)


def _missing_table_fix(table: str | None) -> str:
    now = f" (now {table})" if table else ""
    return (
        f"check SYNCD_OUTBOX__TABLE{now}: the table or view must exist and be visible to syncd's "
        "database user"
    )


def _fix(database: str, kind: str, settings: Settings | None) -> str:
    setting = _URL_SETTING[database]
    url = ""
    if settings is not None:
        value = settings.outbox.url if database == db.OUTBOX else settings.ledger.url
        url = f" (now {masked_url(value)})" if value else ""
    outbox = database == db.OUTBOX
    table = settings.outbox.table if settings is not None else "the outbox table or view"
    named = settings.outbox.table if settings is not None else None
    fixes = {
        db.CREDENTIALS: f"check the user name and password in {setting}{url}",
        db.UNREACHABLE: f"check the host and port in {setting}{url}, that the server is running "
        "and that the network lets syncd through",
        db.NO_DATABASE: f"check the database name in {setting}{url}",
        db.NOT_FOUND: f"check the file path in {setting}{url}",
        db.PERMISSION: (
            f"grant syncd's database user SELECT on {table} (GRANT SELECT ON {table} TO ...)"
            if outbox
            else "syncd's ledger user must be able to read and write the ledger's tables"
        ),
        db.MISSING_TABLE: _missing_table_fix(named) if outbox else "run `syncd migrate`",
        db.MISSING_COLUMN: _MISSING_COLUMN_FIX if outbox else "run `syncd migrate`",
        db.READ_ONLY: (
            "syncd only reads the EHR: this is a bug, please report it"
            if outbox
            else f"the ledger must be writable: point {setting} at a primary, not a replica"
        ),
    }
    return fixes.get(kind, f"check {setting}{url}, the server and the network")


class OutboxShapeError(SyncdError):
    """The outbox lacks its table or columns: ``syncd run`` does not start, ``check`` fails."""


def outbox_shape_error(problems: Sequence[OutboxProblem], settings: Settings) -> OutboxShapeError:
    """The problems of ``OutboxReader.check_shape`` as one line with the fix of their kind."""
    missing_table = any(p.kind == db.MISSING_TABLE for p in problems)
    fix = _missing_table_fix(settings.outbox.table) if missing_table else _MISSING_COLUMN_FIX
    return OutboxShapeError(f"{db.OUTBOX}: " + "; ".join(p.message for p in problems) + f" — {fix}")
