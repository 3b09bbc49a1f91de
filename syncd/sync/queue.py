"""The work queue: appointments fed to a pool of workers, and the pass's progress.

Appointments are independent and run concurrently; one appointment's calls run in order on one
worker.  An appointment that must wait (a back-off, a Retry-After) is requeued through the ledger:
it becomes due again at its ``next_attempt_at``.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TypeVar

import structlog

from syncd.ports.clock import Clock
from syncd.sync.report import PassProgress

log = structlog.get_logger("syncd.engine")

R = TypeVar("R")


class WorkQueue:
    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="syncd-apply")

    def submit(self, fn: Callable[[], R]) -> Future[R]:
        """Run ``fn`` on a worker, with the caller's log context (the pass id)."""
        return self._pool.submit(contextvars.copy_context().run, fn)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def results(futures: Sequence[Future[R]]) -> list[R]:
    """Every future's result once all are done; the first failure is raised after that."""
    wait(futures)
    return [f.result() for f in futures]


class ProgressLog:
    """Counts finished appointments for the health endpoint; logs ``backlog_progress`` at most
    once per interval while a backlog drains."""

    def __init__(self, clock: Clock, interval_seconds: float) -> None:
        self._clock = clock
        self._interval = interval_seconds
        self._lock = threading.Lock()
        #: the running (or last) pass's progress; read by the health endpoint from another thread
        self.current: PassProgress | None = None

    def start(self, pass_id: str) -> PassProgress:
        now = self._clock.monotonic()
        self.current = PassProgress(pass_id, started_at=now, updated_at=now, logged_at=now)
        return self.current

    def begin_apply(self, total: int) -> None:
        with self._lock:
            if self.current is not None:
                self.current.total = total
                self.current.apply_started_at = self._clock.monotonic()

    def advance(self, count: int) -> None:
        progress = self.current
        if progress is None or count <= 0:
            return
        now = self._clock.monotonic()
        with self._lock:
            progress.done += count
            progress.updated_at = now
            if now - progress.logged_at < self._interval:
                return
            progress.logged_at = now
            done, total = progress.done, progress.total
            elapsed = now - (progress.apply_started_at or progress.started_at)
        rate = done / elapsed if elapsed > 0 else None
        left = None if total is None else max(0, total - done)
        log.info(
            "backlog_progress",
            done=done,
            total=total,
            rate_per_second=None if rate is None else round(rate, 2),
            eta_seconds=None if not rate or left is None else round(left / rate),
        )
