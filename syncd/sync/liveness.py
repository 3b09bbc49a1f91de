"""Whether a lease holder is provably dead: this process's per-start identity, and the check.

A holder is judged dead only by a process on the same machine (same host name and same kernel
boot id) that can look it up: its pid is gone, or the pid now belongs to a process that started
at another moment (a reused pid; or a restarted container, where every start is pid 1).  The
start moment is the process's start time in clock ticks since boot (``/proc/<pid>/stat`` field
22), which the kernel fixes for the process's life.  Anything that cannot be read — another
machine, no ``/proc``, a row an older syncd wrote — is not provably dead: its lease must expire.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Final

from syncd.ports.ledger import LeaseHolder

__all__ = ["holder_is_dead", "this_process"]

_PROC: Final = Path("/proc")
_BOOT_ID: Final = _PROC / "sys/kernel/random/boot_id"


def this_process(proc: Path = _PROC) -> LeaseHolder:
    """This start of this process: host name, pid, per-start identity and a random token (the
    holder string, so that even two starts with equal ticks are two holders)."""
    host = socket.gethostname()[:80]
    pid = os.getpid()
    token = uuid.uuid4().hex[:12]
    return LeaseHolder(
        holder=f"{host}:{pid}:{token}",
        host=host,
        pid=pid,
        process_start=process_start(pid, proc),
    )


def process_start(pid: int, proc: Path = _PROC) -> str | None:
    """``<boot id>/<start ticks>`` of a running process, or None if it is not running (or a
    zombie) or ``/proc`` cannot be read."""
    boot = _boot_id(proc)
    ticks = _start_ticks(pid, proc)
    if boot is None or ticks is None:
        return None
    return f"{boot}/{ticks}"


def holder_is_dead(holder: LeaseHolder, me: LeaseHolder, proc: Path = _PROC) -> bool:
    """True only when ``holder`` is shown to be gone; False when alive or when it cannot tell."""
    if holder.holder == me.holder or holder.pid is None or holder.process_start is None:
        return False
    if me.process_start is None or holder.host != me.host:
        return False
    boot, _, _ = holder.process_start.partition("/")
    if boot != me.process_start.partition("/")[0]:
        # Another boot of this machine, or another machine of the same name: cannot tell.
        return False
    return process_start(holder.pid, proc) != holder.process_start


def _boot_id(proc: Path) -> str | None:
    try:
        return (proc / _BOOT_ID.relative_to(_PROC)).read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def _start_ticks(pid: int, proc: Path) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last.
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None  # a zombie has exited: only its exit status is left to collect
    try:
        return int(fields[19])
    except ValueError:
        return None
