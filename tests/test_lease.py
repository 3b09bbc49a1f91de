"""The leader lease's rules on every ledger backend: expiry by the database's clock, whatever the
hosts' clocks say, and a holder that is provably dead taken over at once.

Nothing here ages a lease row or moves a clock the lease reads: host clocks are skewed (the lease
must not care), waits are real and short (a TTL of 2 s, each wait clearing its bound by a
second), and dead holders are real processes that were started and killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from syncd.adapters.ledger import SqlLedger
from syncd.ports.ledger import LeaseHolder
from syncd.sync.lease import LeaderLease, describe_holder
from syncd.sync.liveness import holder_is_dead, process_start, this_process
from syncd.testing.ledger import InMemoryLedger

TTL = 2.0


def skewed(minutes: float) -> datetime:
    return datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=minutes)


@contextmanager
def child(seconds: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def holder_of(proc: subprocess.Popen[bytes], *, host: str | None = None) -> LeaseHolder:
    """The identity a syncd in ``proc`` would have written, read while it runs."""
    me = this_process()
    start = process_start(proc.pid)
    assert start is not None
    return LeaseHolder(f"{host or me.host}:{proc.pid}:t0ken", host or me.host, proc.pid, start)


def test_skewed_host_clocks_never_both_lead(ledger: SqlLedger) -> None:
    """A's clock ten minutes slow, B's ten minutes fast: by host clocks A's lease ran out ten
    minutes ago as B sees it.  By the database's clock neither may take the other's lease early,
    and at every moment at most one of them may act."""
    a = LeaderLease(ledger, ttl_seconds=TTL, wall=lambda: skewed(-10))
    b = LeaderLease(ledger, ttl_seconds=TTL, wall=lambda: skewed(+10))
    with capture_logs() as events:
        assert a.acquire()
        assert not b.acquire()
        assert b.other is not None and b.other.holder == a.me
    assert [e["event"] for e in events] == ["clock_skew"]
    assert a.may_act() and not b.may_act()
    # A stops renewing (as if frozen).  B tries every tenth of a second until it takes over.
    deadline = time.monotonic() + TTL + 3.0
    while not b.acquire():
        assert time.monotonic() < deadline, "B never took over an expired lease"
        assert not (a.may_act() and b.may_act())
        time.sleep(0.1)
    assert b.may_act() and not a.may_act()
    assert not a.acquire()  # back too late: B holds it
    assert not (a.may_act() and b.may_act())
    # And the other way round: B's fast clock does not make its own lease look longer to A.
    b.release()
    assert a.acquire()
    assert not b.acquire()


def test_a_holder_whose_process_is_gone_is_taken_over_at_once(ledger: SqlLedger) -> None:
    with child() as proc:
        dead = holder_of(proc)
    # Killed and reaped: the pid is gone, and its lease has most of ten minutes to run.
    with ledger.begin() as tx:
        assert tx.leases.try_acquire("syncd.leader", dead, 600)
    me = LeaderLease(ledger, ttl_seconds=30)
    with capture_logs() as events:
        started = time.monotonic()
        assert me.acquire()
    assert time.monotonic() - started < 1.0
    assert me.may_act()
    (taken,) = events
    assert taken["event"] == "lease_taken_over"
    assert taken["holder_pid"] == dead.pid
    with ledger.begin() as tx:
        record = tx.leases.current("syncd.leader")
    assert record is not None and record.holder == me.me


def test_a_zombie_is_dead_too() -> None:
    with child() as proc:
        holder = holder_of(proc)
        proc.kill()
        # Not reaped yet: /proc still lists it, as a zombie.
        deadline = time.monotonic() + 10
        while process_start(proc.pid) is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert holder_is_dead(holder, this_process())


def test_a_reused_pid_is_another_start() -> None:
    """A restarted container: the new process is pid 1 again (here: this pid), but it did not
    start when the holder on file did."""
    me = this_process()
    assert me.process_start is not None
    boot, _, ticks = me.process_start.partition("/")
    earlier = LeaseHolder(f"{me.host}:{me.pid}:0ld", me.host, me.pid, f"{boot}/{int(ticks) - 1}")
    assert holder_is_dead(earlier, me)
    # The same start is this very process: alive.
    assert not holder_is_dead(LeaseHolder("other-token", me.host, me.pid, me.process_start), me)


def test_a_live_holder_waits_for_expiry_and_once_can_name_it(ledger: SqlLedger) -> None:
    with child() as proc:
        live = holder_of(proc)
        with ledger.begin() as tx:
            assert tx.leases.try_acquire("syncd.leader", live, 600)
        me = LeaderLease(ledger, ttl_seconds=30)
        assert not me.acquire()
        assert not me.may_act()
        said = describe_holder(me.other)
    assert said.startswith(f"host {live.host}, pid {proc.pid}, since ")
    assert " UTC, until " in said


@pytest.mark.parametrize(
    "holder",
    [
        pytest.param(
            lambda d: LeaseHolder(d.holder, "another-host", d.pid, d.process_start), id="host"
        ),
        pytest.param(lambda d: LeaseHolder(d.holder, d.host, d.pid, "another-boot/1"), id="boot"),
        pytest.param(lambda d: LeaseHolder(d.holder), id="an older syncd's row"),
    ],
)
def test_a_holder_this_process_cannot_judge_is_left_to_expire(holder: object) -> None:
    with child() as proc:
        dead = holder_of(proc)
    assert holder_is_dead(dead, this_process())  # the control: judged here, it is dead
    other = holder(dead)  # type: ignore[operator]
    ledger = InMemoryLedger()
    with ledger.begin() as tx:
        assert tx.leases.try_acquire("syncd.leader", other, 600)
    assert not LeaderLease(ledger, ttl_seconds=30).acquire()


def test_this_process_identity() -> None:
    me = this_process()
    assert me.pid == os.getpid()
    assert me.holder.startswith(f"{me.host}:{me.pid}:")
    assert this_process().holder != me.holder  # a random token per start
    assert me.process_start == process_start(os.getpid())
