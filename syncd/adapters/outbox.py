"""The EHR's appointment outbox, read through SQLAlchemy Core.  The only module that touches it.

The outbox is somebody else's database: syncd only ever SELECTs from it.  Table and column names
are configurable (the EHR's view may call ``event_id`` something else), so they are validated
against a plain identifier pattern and handed to ``sqlalchemy.table()``/``column()``, which quote
them for the dialect; no name is ever formatted into SQL text.

Values come back as the driver returns them, keyed by the *contract's* column names, and every
column is declared without a SQL type: a type would attach SQLAlchemy's result processors, and the
SQLite ``DateTime`` processor raises on one malformed timestamp for the whole result.  Parsing and
validation happen per row in ``syncd.core.rows``.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, unquote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from syncd.adapters.dberrors import (
    MISSING_COLUMN,
    MISSING_TABLE,
    OUTBOX,
    DatabaseFailure,
    failure_of,
    mark,
)
from syncd.adapters.dburl import engine_url
from syncd.core.errors import ConfigError, SyncdError
from syncd.ports import CONTRACT_COLUMNS, OutboxRef, OutboxRow

__all__ = [
    "CONTRACT_COLUMNS",
    "DEFAULT_TABLE",
    "IN_LIST_CHUNK",
    "EhrDatabaseNotFoundError",
    "OutboxProblem",
    "OutboxReader",
    "create_outbox_engine",
    "outbox_table_ddl",
]

DEFAULT_TABLE = "appointment_outbox"
#: the most ids in one ``IN (...)`` list: far below every driver's bound-parameter limit
#: (SQL Server 2100, SQLite 32766, older SQLite 999 is the tightest at 999)
IN_LIST_CHUNK = 500

#: EHR keys are often integers or UUIDs; the contract's ids are text, as ``refs_after`` gives them
_ID_COLUMNS = ("appointment_id", "provider_external_id")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,19}")


class EhrDatabaseNotFoundError(SyncdError):
    """A SQLite EHR file that does not exist: opened read-only, it is never created."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"EHR database not found at {path}")
        self.path = path


@dataclass(frozen=True, slots=True)
class OutboxProblem:
    """Something wrong with the outbox's shape: ``kind`` is ``dberrors.MISSING_TABLE`` or
    ``MISSING_COLUMN``, each with its own fix; ``message`` says which, in words."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


class OutboxReader:
    """``OutboxSource`` over a SQLAlchemy engine.  Read-only; one SELECT per call.

    Database failures propagate as SQLAlchemy's own exceptions, marked as the EHR outbox's
    (``dberrors.mark``): the daemon classifies them (``syncd.adapters.dberrors``) and retries on
    the next tick.  The engine should come from ``create_outbox_engine`` so bound values stay out
    of their text and a SQLite file is opened read-only.
    """

    def __init__(
        self,
        engine: sa.Engine,
        table: str = DEFAULT_TABLE,
        columns: Mapping[str, str] | None = None,
    ) -> None:
        schema, name = _split_table_name(table)
        self._engine = engine
        self._display_name = table
        self._actual: dict[str, str] = {c: c for c in CONTRACT_COLUMNS}
        for contract_name, actual_name in (columns or {}).items():
            if contract_name not in CONTRACT_COLUMNS:
                raise ValueError(f"unknown outbox contract column {contract_name!r}")
            _require_identifier(actual_name, f"column for {contract_name}")
            self._actual[contract_name] = actual_name
        self._schema = schema
        self._table_name = name
        # One ColumnClause per distinct actual column: two contract names may share one.
        distinct = dict.fromkeys(self._actual.values())
        self._table = sa.table(name, *(sa.column(a) for a in distinct), schema=schema)
        self._col = {c: self._table.c[a] for c, a in self._actual.items()}

    # --- OutboxSource -------------------------------------------------------------------------

    def refs_after(self, event_id: int, limit: int) -> list[OutboxRef]:
        event_col = self._col["event_id"]
        stmt = (
            sa.select(event_col.label("event_id"), self._col["appointment_id"].label("aid"))
            .where(event_col > event_id)
            .order_by(event_col)
            .limit(limit)
        )
        return [
            OutboxRef(
                event_id=self._event_id(row.event_id),
                appointment_id=None if row.aid is None else str(_id_as_text(row.aid)),
            )
            for row in self._fetch(stmt)
        ]

    def rows(self, event_ids: Sequence[int]) -> list[OutboxRow]:
        wanted = sorted(set(event_ids))
        selected = [col.label(contract) for contract, col in self._col.items()]
        event_col = self._col["event_id"]
        out: list[OutboxRow] = []
        for chunk in _chunks(wanted, IN_LIST_CHUNK):
            stmt = sa.select(*selected).where(event_col.in_(chunk)).order_by(event_col)
            for row in self._fetch(stmt):
                values = dict(row._mapping)
                for name in _ID_COLUMNS:
                    values[name] = _id_as_text(values[name])
                out.append(OutboxRow(event_id=self._event_id(values["event_id"]), values=values))
        return out

    # --- for the engine's lag metric and ``syncd check`` --------------------------------------

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    def max_event_id(self) -> int | None:
        rows = self._fetch(sa.select(sa.func.max(self._col["event_id"])))
        value = rows[0][0] if rows else None
        return None if value is None else self._event_id(value)

    def check_shape(self) -> list[OutboxProblem]:
        """What is wrong with the outbox's shape, in words for an operator; [] if nothing.

        A database that cannot be reached or read at all (a login, a permission) raises, marked,
        as every error of this reader does: that is not the shape's fault.
        """
        try:
            return self._check_shape()
        except sa_exc.SQLAlchemyError as exc:
            mark(exc, OUTBOX)
            raise

    def _check_shape(self) -> list[OutboxProblem]:
        missing_table = OutboxProblem(
            MISSING_TABLE, f"outbox table or view {self._display_name!r} does not exist"
        )
        with self._engine.connect() as conn:
            try:
                found = sa.inspect(conn).get_columns(self._table_name, schema=self._schema)
            except sa_exc.NoSuchTableError:
                return [missing_table]
            except sa_exc.DBAPIError:
                # MySQL and MariaDB describe a view only to accounts with SHOW VIEW, and
                # syncd's has SELECT alone: what the catalogue will not say, SELECTs will.
                found = None
        if found is None:
            broken = self._probe(
                sa.select(sa.literal(1)).select_from(self._table).where(sa.false())
            )
            if broken is not None:
                # No table, or a view that cannot be read at all (it names a column gone).
                return [missing_table if broken.kind == MISSING_TABLE else self._unreadable(broken)]
            present = {
                actual.casefold()
                for actual in self._actual.values()
                if self._probe(sa.select(self._table.c[actual]).where(sa.false())) is None
            }
        else:
            # Case-insensitive on purpose: SQLite, MySQL and SQL Server fold unquoted names;
            # where case does matter (PostgreSQL), the probe below catches the mismatch.
            present = {str(c["name"]).casefold() for c in found}
        problems = [
            OutboxProblem(
                MISSING_COLUMN,
                f"outbox column {contract!r} (configured as {actual!r}) is missing"
                if contract != actual
                else f"outbox column {contract!r} is missing",
            )
            for contract, actual in self._actual.items()
            if actual.casefold() not in present
        ]
        if problems:
            return problems
        probe = sa.select(*[c.label(n) for n, c in self._col.items()]).where(sa.false()).limit(1)
        broken = self._probe(probe)
        return [] if broken is None else [self._unreadable(broken)]

    def _probe(self, stmt: sa.Select[Any]) -> DatabaseFailure | None:
        """None if ``stmt`` runs; the failure if a table or column is missing; raises otherwise."""
        try:
            self._fetch(stmt)
        except sa_exc.SQLAlchemyError as exc:
            failure = failure_of(exc)
            if failure is None or failure.kind not in (MISSING_TABLE, MISSING_COLUMN):
                raise
            return failure
        return None

    @staticmethod
    def _unreadable(failure: DatabaseFailure) -> OutboxProblem:
        return OutboxProblem(failure.kind, f"cannot read the outbox: {failure.detail}")

    def dispose(self) -> None:
        """Close the engine's pooled connections (at shutdown, or after a one-off check)."""
        self._engine.dispose()

    # --- internals ----------------------------------------------------------------------------

    def _fetch(self, stmt: sa.Select[Any]) -> list[sa.Row[Any]]:
        # connect() without commit: the transaction SQLAlchemy begins is rolled back on close, so
        # nothing this reader does can ever write.
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(stmt))
        except sa_exc.SQLAlchemyError as exc:
            mark(exc, OUTBOX)
            raise

    def _event_id(self, value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # Oracle NUMBER and some views' casts hand integers over as Decimal or text.
        if isinstance(value, Decimal) and value.is_finite() and abs(value) < 2**63:
            integral = value.to_integral_value()
            return int(integral) if integral == value else self._not_integers()
        if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
            return int(value)
        return self._not_integers()

    def _not_integers(self) -> NoReturn:
        raise ConfigError(
            "outbox.columns.event_id",
            f"column {self._actual['event_id']!r} of the outbox does not hold integers",
        )


def create_outbox_engine(url: str, *, writable: bool = False) -> sa.Engine:
    """An engine for the EHR's database, tuned for a long-lived poller.

    A SQLite file is opened read-only (``mode=ro``), so that not even opening it can write: a
    missing file raises :class:`EhrDatabaseNotFoundError` instead of being created empty.  A
    server database is read-only through the grants of syncd's account (SELECT only).
    ``writable``: for the stand-in EHR of the demo, the tests and the benchmarks only.
    """
    parsed = engine_url(url)
    if parsed.get_backend_name() == "sqlite" and not writable:
        parsed = _read_only_sqlite(parsed)
    engine = sa.create_engine(
        parsed,
        # Bound values (ids today, maybe more tomorrow) stay out of logs and error text.
        hide_parameters=True,
        # EHR databases sit behind firewalls and failovers that drop idle connections silently.
        pool_pre_ping=True,
        pool_recycle=1800,
    )
    if engine.dialect.driver == "psycopg":
        sa.event.listen(engine, "connect", _lenient_psycopg_dates)
    return engine


def _read_only_sqlite(url: sa.URL) -> sa.URL:
    """The SQLite URL as a read-only URI (``file:PATH?mode=ro``); the file must exist."""
    database = url.database or ""
    query = dict(url.query)
    if database in ("", ":memory:") or query.get("mode") == "memory":
        return url  # nothing on disk to write to or to create
    if str(query.get("uri", "")).lower() in ("true", "1"):
        path = _uri_path(database)
    else:
        path = Path(database).expanduser()
        # Percent-encoded: '?', '#' and '%' in a path would otherwise end or alter the URI.
        database = "file:" + quote(path.as_posix())
        query["uri"] = "true"
    if not path.is_file():
        raise EhrDatabaseNotFoundError(path)
    query["mode"] = "ro"
    return url.set(database=database, query=query)


def _uri_path(database: str) -> Path:
    """The file of a SQLite URI filename: ``file:/a/b``, ``file:///a/b``, ``file:rel``."""
    rest = database.removeprefix("file:")
    if rest.startswith("//"):
        rest = rest[2:]
        rest = rest[rest.find("/") :] if "/" in rest else ""
    return Path(unquote(rest))


def _lenient_psycopg_dates(dbapi_connection: Any, _record: Any) -> None:
    """Dates Python cannot hold ('infinity', year 10000, BC) come back as their text.

    psycopg raises on them while fetching, which fails the whole SELECT: one such row would stop
    the outbox for every appointment, and the error text would quote the value.  As text, the
    row reaches ``syncd.core.rows``, which parks that one appointment.
    """
    # Imported here: syncd needs psycopg only when the EHR is on PostgreSQL.
    from psycopg.pq import Format

    adapters = dbapi_connection.adapters
    for name in ("date", "timestamp", "timestamptz"):
        info = adapters.types.get(name)
        strict = None if info is None else adapters.get_loader(info.oid, Format.TEXT)
        if info is not None and strict is not None:
            adapters.register_loader(info.oid, _lenient_loader(strict))


@functools.cache
def _lenient_loader(strict: type[Any]) -> type[Any]:
    import psycopg
    from psycopg.abc import AdaptContext, Buffer
    from psycopg.adapt import Loader

    class LenientLoader(Loader):
        def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
            super().__init__(oid, context)
            self._strict = strict(oid, context)

        def load(self, data: Buffer) -> Any:
            try:
                return self._strict.load(data)
            except psycopg.DataError:
                return bytes(data).decode("utf-8", "replace")

    return LenientLoader


def outbox_table_ddl(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    """The contract as a table, for tests, the demo and benchmarks (the EHR owns the real one)."""
    schema, table_name = _split_table_name(name)
    return sa.Table(
        table_name,
        metadata,
        sa.Column(
            "event_id",
            # INTEGER exactly on SQLite, so the column aliases the rowid.
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("appointment_id", sa.String(64), nullable=False, index=True),
        sa.Column("provider_external_id", sa.String(64)),
        sa.Column("status", sa.String(32)),
        sa.Column("starts_at", sa.DateTime()),
        sa.Column("topic", sa.String(500), nullable=True),
        sa.Column("is_recorded", sa.Boolean(), nullable=True),
        sa.Column("participants", sa.Text()),
        sa.Column(
            "created_at", sa.DateTime(), nullable=False, server_default=sa.func.current_timestamp()
        ),
        schema=schema,
        # Without AUTOINCREMENT SQLite reuses the id of a deleted newest row, and a reused id at
        # or below syncd's cursor would never be read.
        sqlite_autoincrement=True,
    )


def _split_table_name(table: str) -> tuple[str | None, str]:
    if not isinstance(table, str):
        raise ValueError("outbox table name must be a string")
    parts = table.split(".")
    if len(parts) > 2:
        raise ValueError("outbox table name must be 'table' or 'schema.table'")
    for part in parts:
        _require_identifier(part, "outbox table name")
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, parts[0]


def _require_identifier(value: object, what: str) -> None:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        # The value is not echoed: a misconfiguration could have pasted anything here.
        raise ValueError(
            f"{what} must be a letter or underscore followed by up to 62 letters, digits or "
            "underscores"
        )


def _id_as_text(value: object) -> object:
    """An integer, integral decimal or UUID key as the text the ledger and SecureVideo know it by;
    anything else as the driver gave it, for ``syncd.core.rows`` to judge."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return str(int(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
