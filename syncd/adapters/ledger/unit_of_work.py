"""The unit of work: ``with ledger.begin() as tx:`` is one transaction, its repositories on it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from syncd.adapters.ledger.appointments import SqlAppointments
from syncd.adapters.ledger.cursor import SqlCursor
from syncd.adapters.ledger.drift import SqlDrift
from syncd.adapters.ledger.inbox import SqlInbox
from syncd.adapters.ledger.leases import SqlLeases
from syncd.adapters.ledger.links import SqlLinks
from syncd.adapters.ledger.operations import SqlOperations
from syncd.adapters.ledger.participants import SqlParticipants
from syncd.adapters.ledger.sql import Sql
from syncd.adapters.ledger.sqlite import FastPath, end_transaction
from syncd.adapters.ledger.visits import SqlVisits

__all__ = ["SqlLedger", "SqlTransaction"]


class SqlTransaction:
    """One transaction's repositories, on a connection whose transaction the caller frames.

    ``fast_path``: run prepared statements on SQLite's driver cursor (the SQLite ledger's shared
    connection, whose transaction :class:`SqlLedger` ends itself).
    """

    __slots__ = (
        "_appointments",
        "_cursor",
        "_drift",
        "_inbox",
        "_leases",
        "_links",
        "_operations",
        "_participants",
        "_visits",
    )

    def __init__(self, connection: Connection, fast_path: FastPath | None = None) -> None:
        sql = Sql(connection, fast_path)
        self._cursor = SqlCursor(sql)
        self._appointments = SqlAppointments(sql)
        self._operations = SqlOperations(sql)
        self._participants = SqlParticipants(sql)
        self._leases = SqlLeases(sql)
        self._visits = SqlVisits(sql)
        self._links = SqlLinks(sql)
        self._inbox = SqlInbox(sql)
        self._drift = SqlDrift(sql)

    @property
    def cursor(self) -> SqlCursor:
        return self._cursor

    @property
    def appointments(self) -> SqlAppointments:
        return self._appointments

    @property
    def operations(self) -> SqlOperations:
        return self._operations

    @property
    def participants(self) -> SqlParticipants:
        return self._participants

    @property
    def leases(self) -> SqlLeases:
        return self._leases

    @property
    def visits(self) -> SqlVisits:
        return self._visits

    @property
    def links(self) -> SqlLinks:
        return self._links

    @property
    def inbox(self) -> SqlInbox:
        return self._inbox

    @property
    def drift(self) -> SqlDrift:
        return self._drift


class SqlLedger:
    """The ledger database.  ``with ledger.begin() as tx:`` is one transaction, framed by the
    caller: it commits when the block ends and rolls back if it raises.

    ``fast_path=False`` runs every statement through SQLAlchemy on SQLite too (to compare, or to
    measure what the fast path saves); server databases never use it.
    """

    def __init__(self, engine: Engine, *, fast_path: bool = True) -> None:
        self.engine = engine
        # SQLite has one writer at a time; threads that collide wait in its busy handler, which
        # sleeps 1, 2, 5, 10… ms between tries.  Taking turns on a lock in this process instead
        # hands the database over at once (16 workers spent ~0.7 ms more CPU per appointment
        # than one did), and lets the turns share one connection: a pool checkout and return
        # per transaction cost more than the statements.  Other processes are still held off by
        # the busy timeout.  A server database keeps its pool and its concurrency.
        self._sqlite = engine.dialect.name == "sqlite"
        #: the SQLite driver-cursor path of the shared connection; None when not used
        self.fast_path: FastPath | None = FastPath() if self._sqlite and fast_path else None
        self._turn = threading.RLock()
        self._shared: Connection | None = None
        #: a transaction of the shared connection is open (in the thread holding the turn)
        self._open = False

    @contextmanager
    def begin(self) -> Iterator[SqlTransaction]:
        # A Core connection, not an ORM Session: the repositories only run Core statements, and
        # the Session's unit-of-work machinery cost more per statement than SQLite itself.
        if not self._sqlite:
            with self.engine.begin() as connection:
                yield SqlTransaction(connection)
            return
        with self._turn:
            if self._open:
                # A transaction inside another one of the same thread: its own connection.
                with self.engine.begin() as nested:
                    yield SqlTransaction(nested)
                return
            if self._shared is None or self._shared.closed or self._shared.invalidated:
                self._shared = self.engine.connect()
            connection = self._shared
            self._open = True
            try:
                yield SqlTransaction(connection, self.fast_path)
            except BaseException:
                end_transaction(connection, commit=False)
                raise
            else:
                end_transaction(connection, commit=True)
            finally:
                self._open = False

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        with self._turn:
            if self._shared is not None:
                self._shared.close()
                self._shared = None
        self.engine.dispose()
