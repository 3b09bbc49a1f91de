"""The leader lease: of several syncd processes on one ledger, only the holder applies changes.

Two daemons working the same backlog would each read SecureVideo, each find no session, and each
create one.  So every pass starts by taking (or renewing) one named lease row in the ledger, which
the ledger hands to one holder at a time (``LedgerTransaction.try_acquire_lease``); a process that
does not get it skips the pass.  During the pass a heartbeat thread renews the lease every third
of its time to live, and the engine asks :meth:`LeaderLease.may_act` before every mutating call.

``may_act`` is judged on this process's own monotonic clock, from when the last successful
renewal was *sent*: the row says the lease runs until at least that moment plus the TTL, so no
other process can take it over before then.  A margin of a quarter of the TTL is kept, so a call
is only started while the lease still has that long to run; a request slower than the margin, or a
process frozen between the check and the call (a long GC pause, SIGSTOP, a suspended VM), is the
residual risk — SecureVideo has no fencing token that would let it refuse a stale holder.

The row's expiry is written and compared by the ledger database's clock, never a host's, so the
instances' clocks may disagree.  A holder that is provably dead (``syncd.sync.liveness``: same
machine, and its process is gone or is another start) is taken over at once rather than after
the TTL: a restart after ``kill -9`` or a crash resumes in the time a pass takes to begin.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final

import structlog

from syncd.ports.ledger import LeaseHolder, LeaseRecord, Ledger
from syncd.sync.liveness import holder_is_dead, this_process

log = structlog.get_logger("syncd.lease")

#: One syncd deployment, one ledger, one lease.
LEASE_NAME: Final = "syncd.leader"


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


#: The host clock may differ from the ledger database's by this much before it is worth a warning
#: (the lease does not depend on it; the ledger's other timestamps are the host's).
SKEW_WARNING_SECONDS: Final = 5.0


def describe_holder(record: LeaseRecord | None) -> str:
    """The holder for an operator: host, pid, since and until (ledger clock, UTC).  No PHI."""
    if record is None:
        return "unknown (the lease was just released)"
    h = record.holder
    since = record.acquired_at.isoformat(sep=" ", timespec="seconds") if record.acquired_at else "?"
    until = record.expires_at.isoformat(sep=" ", timespec="seconds")
    host = h.host or h.holder
    pid = "?" if h.pid is None else str(h.pid)
    return f"host {host}, pid {pid}, since {since} UTC, until {until} UTC unless renewed"


class LeaderLease:
    def __init__(
        self,
        ledger: Ledger,
        *,
        ttl_seconds: float,
        name: str = LEASE_NAME,
        holder: LeaseHolder | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utcnow,
        is_dead: Callable[[LeaseHolder, LeaseHolder], bool] = holder_is_dead,
    ) -> None:
        """``wall``: this host's clock, only compared with the database's to warn of skew;
        ``is_dead(holder, me)``: whether a holder on file is provably gone."""
        self.ledger = ledger
        self.ttl = ttl_seconds
        self.name = name
        self.me = holder or this_process()
        self.holder = self.me.holder
        self.margin = ttl_seconds / 4
        self._monotonic = monotonic
        self._wall = wall
        self._is_dead = is_dead
        self._lock = threading.Lock()
        self._valid_until = float("-inf")
        self._skew_warned = False
        #: the other instance's lease, as last seen when this one could not take it
        self.other: LeaseRecord | None = None

    def acquire(self) -> bool:
        """Take the lease, or renew it if this process holds it.  False while another live
        holder has it (then :attr:`other` says who, and until when).

        Database errors propagate: the caller treats them as an outage.
        """
        sent = self._monotonic()
        with self.ledger.begin() as tx:
            taken = tx.leases.try_acquire(self.name, self.me, self.ttl)
            current = None if taken else tx.leases.current(self.name)
            if not taken and current is None:
                # Released between the two statements: it is free now.
                taken = tx.leases.try_acquire(self.name, self.me, self.ttl)
            dead = current is not None and self._is_dead(current.holder, self.me)
            if current is not None and dead:
                taken = tx.leases.take_over(self.name, current.holder.holder, self.me, self.ttl)
        if current is not None and dead and taken:
            log.warning(
                "lease_taken_over",
                reason="the holder's process on this machine is gone (or is another start)",
                holder_host=current.holder.host,
                holder_pid=current.holder.pid,
                expires_at=current.expires_at.isoformat(),
            )
        self.other = None if taken else current
        if current is not None:
            self._check_skew(current)
        with self._lock:
            self._valid_until = sent + self.ttl if taken else float("-inf")
        return taken

    def _check_skew(self, seen: LeaseRecord) -> None:
        skew = (self._wall() - seen.database_now).total_seconds()
        if abs(skew) > SKEW_WARNING_SECONDS and not self._skew_warned:
            self._skew_warned = True
            log.warning("clock_skew", seconds=round(skew, 1), against="ledger database")

    def may_act(self) -> bool:
        """Whether a mutating call may start now: the lease is held and has the margin to run."""
        with self._lock:
            valid_until = self._valid_until
        return self._monotonic() + self.margin < valid_until

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Renew the lease every third of its TTL while the block runs."""
        done = threading.Event()
        thread = threading.Thread(
            target=self._beat, args=(done,), name="syncd-lease-heartbeat", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _beat(self, done: threading.Event) -> None:
        while not done.wait(self.ttl / 3):
            try:
                if not self.acquire():
                    # Another process took it (this one was too slow to renew): stop acting.
                    log.warning("lease_lost", pid=os.getpid())
                    return
            except Exception as exc:  # noqa: BLE001 - a failed renewal only lets the lease lapse
                # may_act() turns false by itself once the margin is reached.
                log.warning("lease_renewal_failed", error_type=type(exc).__name__)

    def release(self) -> None:
        """Give the lease up (graceful shutdown), so a standby need not wait for the TTL.

        Best effort: if the ledger is unreachable the lease simply expires.
        """
        with self._lock:
            self._valid_until = float("-inf")
        try:
            with self.ledger.begin() as tx:
                tx.leases.release(self.name, self.holder)
        except Exception as exc:  # noqa: BLE001 - expiry covers a release that could not be made
            log.warning("lease_release_failed", error_type=type(exc).__name__)
