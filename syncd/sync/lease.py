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
residual risk — SecureVideo has no fencing token that would let it refuse a stale holder.  Wall
clocks of the instances must agree to well within the margin (NTP), because the row's expiry is
written with the holder's clock and compared with the taker's.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final

import structlog

from syncd.ports.ledger import Ledger

log = structlog.get_logger("syncd.lease")

#: One syncd deployment, one ledger, one lease.
LEASE_NAME: Final = "syncd.leader"


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def default_holder() -> str:
    """Who holds the lease, for an operator reading the ledger: host, pid and a random tag
    (a restarted container can reuse a pid)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaderLease:
    def __init__(
        self,
        ledger: Ledger,
        *,
        ttl_seconds: float,
        name: str = LEASE_NAME,
        holder: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.ledger = ledger
        self.ttl = ttl_seconds
        self.name = name
        self.holder = holder or default_holder()
        self.margin = ttl_seconds / 4
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._valid_until = float("-inf")

    def acquire(self) -> bool:
        """Take the lease, or renew it if this process holds it.  False while another holds it.

        Database errors propagate: the caller treats them as an outage.
        """
        sent = self._monotonic()
        with self.ledger.begin() as tx:
            taken = tx.leases.try_acquire(self.name, self.holder, self.ttl, self._wall())
        with self._lock:
            self._valid_until = sent + self.ttl if taken else float("-inf")
        return taken

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
