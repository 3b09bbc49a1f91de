"""A test seam for the crash sweep: die by SIGKILL at a named point of the apply protocol.

The engine calls ``crashpoint(name)`` at the instants whose crash behaviour matters (see
docs/reliability.md).  Nothing happens unless the environment variable ``SYNCDTEST_CRASHPOINT``
was set when the process started, as ``name:n``: the n-th time (counted from 1, over all threads)
that point is reached, the process sends itself SIGKILL — no handler, no ``finally``, no flush, the
same as a power cut or the OOM killer.  Unset, a call is one comparison.

The variable is read once, on the first call rather than at import, so that a process forked from
an already-importing parent (the crash sweep's fork server) still sees its own environment.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["ENV", "HL7_POINTS", "POINTS", "crashpoint"]

#: Not ``SYNCD_…``: settings refuse unknown variables with that prefix, as misspelt settings.
ENV = "SYNCDTEST_CRASHPOINT"

#: Where the executor calls ``crashpoint`` (``syncd.sync.execute.Executor.apply``):
#: ``before_call`` the intent is committed, the request has not left;
#: ``after_call`` SecureVideo answered, the outcome is not committed yet;
#: ``after_commit`` the outcome and its effects are committed.
POINTS = ("before_call", "after_call", "after_commit")
#: Where the HL7 listener calls it (``syncd.runtime.hl7``): the message is committed to the
#: inbox, its ACK not sent.  Apart from ``POINTS``, which the crash sweep goes through.
HL7_POINTS = ("hl7_after_commit",)

_read = False
_target: tuple[str, int] | None = None
_count = 0
_lock = threading.Lock()


def crashpoint(name: str) -> None:
    global _read, _target, _count
    if not _read:
        _target, _read = _parse(os.environ.get(ENV)), True
    if _target is None or _target[0] != name:
        return
    with _lock:
        _count += 1
        reached = _count == _target[1]
    if reached:
        os.kill(os.getpid(), signal.SIGKILL)


def armed() -> bool:
    """Whether this process was started with a crash point to reach."""
    return bool(os.environ.get(ENV))


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    if name not in POINTS + HL7_POINTS:
        known = ", ".join(POINTS + HL7_POINTS)
        raise ValueError(f"{ENV}: unknown crash point {name!r} (one of {known})")
    try:
        n = int(count or "1")
    except ValueError:
        raise ValueError(f"{ENV}: {count!r} is not a whole number") from None
    if n < 1:
        raise ValueError(f"{ENV}: the count must be at least 1")
    return name, n
