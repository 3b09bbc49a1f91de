"""The ledger port in memory, for unit tests that need no database.

:class:`InMemoryLedger` follows ``syncd.adapters.ledger.SqlLedger`` statement for statement (the
event guards, what a guarded write still changes when it loses, which writes clip their text, the
orderings), and ``tests/test_ledger_contract.py`` runs the same assertions on both.

A transaction works on its own copy of the tables and, on a clean exit, writes the rows it changed
back; when the block raises, the copy is dropped.  One lock serialises transactions, as SQLite's
single writer does.  A transaction begun inside another one of the same thread is a separate
transaction, as on the SQL ledger (its own connection there): it does not see the outer one's
uncommitted writes, and each commits only the rows it changed.

Test controls, without ``mock.patch``: :meth:`InMemoryLedger.fail_next` makes the next
transactions raise a given exception (at ``begin`` or at commit), :meth:`InMemoryLedger.outage`
makes every one raise until :meth:`InMemoryLedger.restore`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from syncd.testing.memory_appointments import MemoryAppointments, MemoryCursor
from syncd.testing.memory_drift import MemoryDrift
from syncd.testing.memory_inbox import MemoryInbox
from syncd.testing.memory_records import (
    MemoryLeases,
    MemoryLinks,
    MemoryOperations,
    MemoryParticipants,
    MemoryVisits,
)
from syncd.testing.memory_tables import Tables, Work

__all__ = ["InMemoryLedger", "InMemoryTransaction"]

#: An exception to raise, or a function making a fresh one for each raise.
ErrorSource = BaseException | Callable[[], BaseException]


class InMemoryTransaction:
    """One transaction's view of the in-memory ledger, through the port's repositories."""

    def __init__(self, work: Work) -> None:
        self.cursor = MemoryCursor(work)
        self.appointments = MemoryAppointments(work)
        self.operations = MemoryOperations(work)
        self.participants = MemoryParticipants(work)
        self.leases = MemoryLeases(work)
        self.visits = MemoryVisits(work)
        self.links = MemoryLinks(work)
        self.inbox = MemoryInbox(work)
        self.drift = MemoryDrift(work)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# --- the ledger ----------------------------------------------------------------------------------

FailurePoint = Literal["begin", "commit"]


@dataclass(slots=True)
class _Failure:
    error: ErrorSource
    at: FailurePoint

    def make(self) -> BaseException:
        return self.error() if callable(self.error) else self.error


class InMemoryLedger:
    """Implements ``syncd.ports.ledger.Ledger`` in memory.  ``with ledger.begin() as tx:`` commits
    on a clean exit and drops every write when the block raises."""

    def __init__(self, *, database_clock: Callable[[], datetime] | None = None) -> None:
        """``database_clock``: the "server's" clock that lease expiry is reckoned by (default the
        real one, naive UTC); a test gives a hand-moved one."""
        self._database_clock = database_clock or _utcnow
        # Reentrant: a transaction begun inside another one of the same thread must not deadlock.
        self._lock = threading.RLock()
        self._committed = Tables()
        # Outside the tables and never rolled back, like a database sequence: an id is not reused.
        self._next_operation_id = 1
        self._failures: deque[_Failure] = deque()
        self._outage: _Failure | None = None
        #: transactions committed and rolled back (failed ones included), for tests to assert on
        self.commits = 0
        self.rollbacks = 0

    @contextmanager
    def begin(self) -> Iterator[InMemoryTransaction]:
        with self._lock:
            failure = self._take_failure()
            if failure is not None and failure.at == "begin":
                self.rollbacks += 1
                raise failure.make()
            work = Work(self._committed, self._take_operation_id, self._database_clock)
            try:
                yield InMemoryTransaction(work)
            except BaseException:
                self.rollbacks += 1
                raise
            if failure is not None:
                # The block ran, the commit is lost: as a database that dies at COMMIT.
                self.rollbacks += 1
                raise failure.make()
            work.write_back(self._committed)
            self.commits += 1

    def _take_operation_id(self) -> int:
        with self._lock:
            op_id = self._next_operation_id
            self._next_operation_id += 1
            return op_id

    def _take_failure(self) -> _Failure | None:
        if self._outage is not None:
            return self._outage
        return self._failures.popleft() if self._failures else None

    # --- test controls -------------------------------------------------------------------

    def fail_next(self, error: ErrorSource, *, times: int = 1, at: FailurePoint = "begin") -> None:
        """The next ``times`` transactions raise ``error``: at ``begin`` (nothing runs), or at
        ``commit`` (the block runs, then its writes are dropped).  Queued after earlier ones."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._failures.extend(_Failure(error, at) for _ in range(times))

    def outage(self, error: ErrorSource, *, at: FailurePoint = "begin") -> None:
        """Every transaction raises ``error`` until :meth:`restore`."""
        with self._lock:
            self._outage = _Failure(error, at)

    def restore(self) -> None:
        """End an :meth:`outage` and forget queued failures."""
        with self._lock:
            self._outage = None
            self._failures.clear()
