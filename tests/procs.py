"""A real ``syncd`` process for tests: started with an environment, its output read as it comes.

Tests wait for what the process says (a log event) or does (calls seen by the emulator), never
for a fixed time: on a loaded machine a Python start alone can take seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from syncd.testing.waiting import wait_until


def wait_showing(
    condition: Callable[[], object], what: str, *daemons: Syncd, timeout: float = 60
) -> None:
    """``wait_until``, and on a timeout the end of each daemon's output in the failure: what the
    processes said is what explains why the condition never came true."""
    try:
        wait_until(condition, timeout=timeout, what=what)
    except AssertionError as exc:
        said = "\n".join(f"--- syncd {' '.join(d.args)}:\n{d.tail()}" for d in daemons)
        raise AssertionError(f"{exc}\n{said}") from None


class Syncd:
    """``python -m syncd <args>`` with stdout and stderr collected by reader threads.

    ``module``: another entry point with syncd's command line (``syncd.testing.control``)."""

    def __init__(self, env: dict[str, str], *args: str, module: str = "syncd") -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._lock = threading.Lock()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def out(self) -> str:
        with self._lock:
            return "".join(self._out)

    @property
    def err(self) -> str:
        with self._lock:
            return "".join(self._err)

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.out.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by SIGKILL
        return out

    def names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events()]

    def tail(self, chars: int = 3000) -> str:
        """The end of stdout and of stderr."""
        return f"stdout: …{self.out[-chars:]}\nstderr: …{self.err[-chars:]}"

    def wait_event(self, name: str, seconds: float = 60, count: int = 1) -> bool:
        """Whether ``name`` was logged ``count`` times, waiting until it is or the process ends;
        a process still silent after ``seconds`` fails the test with its output."""
        wait_showing(
            lambda: self.names().count(name) >= count or not self.alive(),
            f"{count} x {name!r}",
            self,
            timeout=seconds,
        )
        return self.names().count(name) >= count

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, seconds: float = 30) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(seconds)

    def kill(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        return self.wait(30)

    def wait(self, seconds: float = 60) -> int:
        try:
            code = self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=30)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def __enter__(self) -> Syncd:
        return self

    def __exit__(self, *_: object) -> None:
        if self.alive():
            self.kill()
