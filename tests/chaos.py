"""Tools of the reliability scenarios (docs/reliability.md): a model of the EHR that changes at
random, SecureVideo compared with it, the PHI canary search, and syncd as a real process.

Nothing here stands in for a part of syncd: the model only writes outbox rows, the comparison only
reads the emulator, and the processes run the real CLI.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog
from harness import ZONE, World, row

from syncd.adapters.windows_zones import windows_zone_id
from syncd.emulator import Emulator
from syncd.runtime.log import configure_logging
from syncd.testing.waiting import wait_until

# --- the PHI canary -----------------------------------------------------------------------------

#: What the canary patients of ``harness.guest``/``harness.row`` are made of: their names, e-mail
#: domain, phone prefix and the appointment topic.  None of it may leave the EHR and SecureVideo.
CANARIES: tuple[str, ...] = ("Zelda", "Canary", "phi.example", "1555777", "canary topic")


def canary_hits(data: str | bytes, where: str) -> list[str]:
    """One line per canary found in ``data``: where, which, and the text around the first hit."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    hits = []
    for canary in CANARIES:
        # Case-insensitive for the ASCII canaries: "ZELDA" in a log is a leak too.
        at = raw.lower().find(canary.lower().encode())
        if at >= 0:
            around = raw[max(0, at - 60) : at + 60].decode("utf-8", "replace")
            hits.append(f"{where}: {canary!r} in …{around}…")
    return hits


def sqlite_dump(path: Path) -> str:
    """Every row of every table of a SQLite file, as text."""
    import sqlite3

    out = []
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        for table in sorted(tables):
            for values in conn.execute(f'select * from "{table}"'):
                out.append(f"{table}: {values!r}")
    return "\n".join(out)


# --- a model of the EHR -------------------------------------------------------------------------

PROVIDERS = ("prov-001", "prov-002", "prov-003")
ZONES = ("America/New_York", "America/Chicago", "America/Los_Angeles", "Europe/London")
#: A Monday in 2027: always in the future of the emulator's clock, and on no DST change.
FIRST_DAY = datetime(2027, 2, 1)


@dataclass
class Booking:
    """One appointment as the EHR holds it now."""

    appointment_id: str
    provider: str
    starts: datetime  # naive, in ``harness.ZONE``
    guests: list[dict[str, Any]]
    status: str = "booked"
    topic: str = "Canary topic"

    def row(self) -> dict[str, Any]:
        return row(
            self.appointment_id,
            starts=self.starts,
            provider=self.provider,
            status=self.status,
            guests=self.guests,
            topic=self.topic,
        )


@dataclass
class EhrModel:
    """The EHR's appointments, changed at random the way front-desk staff change them: book,
    reschedule, cancel, re-book, participants added, changed, renamed and removed, provider moved.

    Every guest is a canary patient with unique values (a PHI check can search for them).
    """

    rng: random.Random
    size: int = 12
    prefix: str = "C"
    #: how guests' external ids begin (an MRN-like prefix lets a PHI check search for them)
    guest_id_prefix: str = "pat-"
    bookings: dict[str, Booking] = field(default_factory=dict)
    changes: int = 0
    _guests: int = 0
    _renames: int = 0

    def change(self) -> dict[str, Any]:
        """Make one change; returns the outbox row that records it."""
        self.changes += 1
        if len(self.bookings) < self.size:
            return self._book(f"{self.prefix}{len(self.bookings) + 1:03d}").row()
        b = self.rng.choice(list(self.bookings.values()))
        if b.status == "cancelled":
            b.status = "booked"
            if self.rng.random() < 0.5:
                b.starts = self._time()
            return b.row()
        kinds = ["reschedule", "cancel", "add", "remove", "update", "rename", "provider"]
        weights = [25, 10, 14, 10, 22, 9, 6]
        kind = self.rng.choices(kinds, weights)[0]
        if kind == "reschedule":
            b.starts = self._time(not_equal=b.starts)
        elif kind == "cancel":
            b.status = "cancelled"
        elif kind == "add" or (kind == "remove" and len(b.guests) == 1):
            if len(b.guests) < 3:
                b.guests.append(self._guest())
            else:
                b.guests.pop(self.rng.randrange(len(b.guests)))
        elif kind == "remove":
            b.guests.pop(self.rng.randrange(len(b.guests)))
        elif kind == "update":
            g = self.rng.choice(b.guests)
            n = int(g["external_id"].removeprefix(self.guest_id_prefix))
            what = self.rng.choice(["email", "sms", "time_zone", "deliver"])
            if what == "email":
                g["email"] = f"canary{n}.{self.rng.randrange(10**6)}@phi.example"
            elif what == "sms":
                g["sms"] = f"1555777{self.rng.randrange(10**4):04d}"
            elif what == "time_zone":
                g["time_zone"] = self.rng.choice([z for z in ZONES if z != g["time_zone"]])
            else:
                g["deliver"] = self.rng.choice([d for d in "ESN" if d != g["deliver"]])
        elif kind == "rename":
            g = self.rng.choice(b.guests)
            self._renames += 1
            g["full_name"] = f"{g['full_name'].split(' Mc')[0]} Mc{self._renames}"
        else:
            b.provider = self.rng.choice([p for p in PROVIDERS if p != b.provider])
        return b.row()

    def rows(self, n: int) -> list[dict[str, Any]]:
        return [self.change() for _ in range(n)]

    def _book(self, appointment_id: str) -> Booking:
        booking = Booking(
            appointment_id,
            provider=self.rng.choice(PROVIDERS),
            starts=self._time(),
            guests=[self._guest() for _ in range(self.rng.randint(1, 2))],
        )
        self.bookings[appointment_id] = booking
        return booking

    def _guest(self) -> dict[str, Any]:
        self._guests += 1
        n = self._guests
        return {
            "external_id": f"{self.guest_id_prefix}{n}",
            "full_name": f"Zelda Canary{n}",
            "email": f"canary{n}@phi.example",
            "sms": f"1555777{n % 10**4:04d}",
            "time_zone": self.rng.choice(ZONES),
            "deliver": self.rng.choice("ESN"),
        }

    def _time(self, not_equal: datetime | None = None) -> datetime:
        while True:
            day = FIRST_DAY + timedelta(days=self.rng.randrange(40))
            moment = day.replace(hour=self.rng.randrange(8, 18), minute=15 * self.rng.randrange(4))
            if moment != not_equal:
                return moment


def remote_differences(emulator: Emulator, model: EhrModel) -> list[str]:
    """How SecureVideo differs from what the EHR says; empty when they agree.

    Per appointment: a booked one has exactly one live session, on its provider, at its time, with
    exactly its guests (by external id) and their fields; a cancelled one has no live session.
    No live session exists for an appointment the EHR does not have.  The lines name ids and
    fields, never values.
    """
    zone = ZoneInfo(ZONE)
    user_of = {h.external_id: h.user_id for h in emulator.state.hosts()}
    live: dict[str, list[Any]] = {}
    for s in emulator.state.sessions():
        if not s.cancelled:
            live.setdefault(s.external_session_id, []).append(s)
    problems = []
    for aid, b in sorted(model.bookings.items()):
        sessions = live.pop(aid, [])
        if b.status == "cancelled":
            if sessions:
                problems.append(f"{aid}: cancelled in the EHR, {len(sessions)} live session(s)")
            continue
        if len(sessions) != 1:
            problems.append(f"{aid}: booked in the EHR, {len(sessions)} live sessions")
            continue
        s = sessions[0]
        if s.user_id != user_of[b.provider]:
            problems.append(f"{aid}: host {s.user_id}, EHR says {b.provider}")
        starts = b.starts.replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
        if s.schedule_ts != starts:
            problems.append(f"{aid}: ScheduleTs {s.schedule_ts}, EHR says {starts}")
        remote = {p.external_id: p for p in s.participants[1:] if p.external_id}
        wanted = {g["external_id"]: g for g in b.guests}
        if set(remote) != set(wanted):
            problems.append(f"{aid}: guests {sorted(remote)}, EHR says {sorted(wanted)}")
        for pid in sorted(set(remote) & set(wanted)):
            p, g = remote[pid], wanted[pid]
            fields = {
                "full_name": (p.full_name, g["full_name"]),
                "email": (p.email, g["email"]),
                "sms": (p.sms, g["sms"]),
                "time_zone": (p.time_zone_windows_id, windows_zone_id(g["time_zone"])),
                "deliver": (p.should_auto_deliver_code, g["deliver"]),
            }
            differ = sorted(k for k, (have, want) in fields.items() if have != want)
            if differ:
                problems.append(f"{aid}: guest {pid} differs in {', '.join(differ)}")
    for aid, sessions in sorted(live.items()):
        problems.append(f"{aid}: {len(sessions)} live session(s) for an appointment not in the EHR")
    return problems


# --- logs of an in-process engine ---------------------------------------------------------------


@contextmanager
def captured_logs(level: str = "DEBUG") -> Iterator[io.StringIO]:
    """syncd's log pipeline (JSON, PHI guard and all) writing into a buffer."""
    root = logging.getLogger()
    handlers, root_level, config = root.handlers[:], root.level, structlog.get_config()
    buffer = io.StringIO()
    configure_logging("json", level, stream=buffer)
    try:
        yield buffer
    finally:
        # As it was: later tests must not log into this buffer, nor at this level.
        root.handlers[:] = handlers
        root.setLevel(root_level)
        structlog.configure(**config)


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines in ``text`` (other output, such as ``status --json``, is skipped)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{") and line.endswith("}"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append(event)
    return events


# --- syncd as a real process --------------------------------------------------------------------


def syncd_env(w: World, **settings: object) -> dict[str, str]:
    """The environment of a syncd process: the world's settings plus ``SYNCD_…`` overrides given
    as keyword arguments (``SYNC__POLL_INTERVAL_SECONDS=1``); nothing inherited from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env |= w.env()
    env |= {f"SYNCD_{k}": str(v) for k, v in settings.items()}
    return env


class Child(Protocol):
    pid: int

    def kill(self) -> None:
        """SIGKILL, and return once the process is dead."""

    def signal(self, signum: int) -> None: ...

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: the signal that ended it), or None if still running."""


class _Process:
    """A child by its pidfd: signalled and awaited without a pid-reuse race, whoever its parent.

    ``kill`` may come from another thread (the emulator's hook); only the owner's ``wait`` closes
    the pidfd, under the same lock, so a kill never signals through a recycled descriptor.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = os.pidfd_open(pid)
        self._lock = threading.Lock()

    def signal(self, signum: int) -> None:
        with self._lock:
            if self._fd is not None:
                signal.pidfd_send_signal(self._fd, signum)

    def kill(self) -> None:
        with self._lock:
            if self._fd is None:
                return  # already reaped
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._fd, signal.SIGKILL)
            if not self._ended(10.0):
                raise RuntimeError(f"process {self.pid} survived SIGKILL")

    def _ended(self, timeout: float) -> bool:
        assert self._fd is not None
        readable, _, _ = select.select([self._fd], [], [], timeout)
        return bool(readable)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class ExecChild(_Process):
    """``python -m syncd.testing.control ARGS``: the CLI in a brand-new interpreter, wired by the
    control entry point, which arms the crash points from the environment."""

    def __init__(self, argv: list[str], env: Mapping[str, str], output: Path) -> None:
        with output.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "syncd.testing.control", *argv],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        super().__init__(self.popen.pid)

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.close()
        return code


#: Runs in the fork server: pays for importing syncd once, then forks one child per request.  A
#: child is the CLI's own ``python -m syncd`` entry point (``runpy``), with its own environment,
#: its own stdout/stderr file and nothing of the server's but the imported modules.
_FORK_SERVER = r"""
import json, os, runpy, sys, traceback
# the slow part, once
import syncd.runtime.app, syncd.runtime.cli, syncd.runtime.daemon, syncd.runtime.status
import syncd.sync.passes
import httpx._transports.default as transport

# Each child would parse the CA bundle again (0.2 s) for a TLS context that plain http to the
# loopback emulator never uses: build it once, before forking.
_tls = transport.create_ssl_context(verify=True, cert=None, trust_env=False)
transport.create_ssl_context = lambda **_: _tls

for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "wait":
        _, status = os.waitpid(request["pid"], 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
        continue
    pid = os.fork()
    if pid:
        print(json.dumps({"pid": pid}), flush=True)
        continue
    code = 70
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["syncd", *request["argv"]]
        try:
            runpy.run_module("syncd.testing.control", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
"""


class ForkServer:
    """Starts ``syncd`` processes in ~10 ms instead of a second of imports.

    Each child is a real process — its own pid, memory, sockets and database connections, killed
    by a real SIGKILL — forked from a parent that has only imported syncd (no thread, no
    connection, no configuration).  It runs the same entry point as ``python -m syncd``.
    """

    def __init__(self) -> None:
        self._server = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._server.stdin is not None and self._server.stdout is not None
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        answer = self._server.stdout.readline()
        if not answer:
            raise RuntimeError("the fork server died")
        result: dict[str, Any] = json.loads(answer)
        return result

    def spawn(self, argv: list[str], env: Mapping[str, str], output: Path) -> ForkedChild:
        pid = self._ask({"op": "spawn", "argv": argv, "env": dict(env), "output": str(output)})
        return ForkedChild(self, int(pid["pid"]))

    def reap(self, pid: int) -> int:
        return int(self._ask({"op": "wait", "pid": pid})["code"])

    def close(self) -> None:
        if self._server.stdin is not None:
            self._server.stdin.close()
        try:
            self._server.wait(10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
        if self._server.stdout is not None:
            self._server.stdout.close()


_shared: ForkServer | None = None


def fork_server() -> ForkServer:
    """One fork server for the whole test session (it costs a second of imports to start)."""
    global _shared
    if _shared is None:
        _shared = ForkServer()
        atexit.register(_shared.close)
    return _shared


class ForkedChild(_Process):
    def __init__(self, server: ForkServer, pid: int) -> None:
        super().__init__(pid)
        self._server = server
        self.code: int | None = None

    def wait(self, timeout: float) -> int | None:
        if self.code is None:
            if not self._ended(timeout):
                return None
            self.code = self._server.reap(self.pid)
            self.close()
        return self.code


def wait_or_kill(child: Child, timeout: float) -> int:
    code = child.wait(timeout)
    if code is None:
        child.kill()
        code = child.wait(10.0)
        assert code is not None
        raise AssertionError(f"syncd (pid {child.pid}) still running after {timeout} s")
    return code


def run_syncd(argv: list[str], env: Mapping[str, str], output: Path, timeout: float = 60) -> int:
    """``python -m syncd.testing.control ARGS`` to its end; returns the exit code."""
    return wait_or_kill(ExecChild(argv, env, output), timeout)


def settle(emulator: Emulator, timeout: float = 30.0) -> None:
    """Let the emulator finish what a killed client had already sent (a request on its way when
    it died is applied after its death), so that the next process does not race it.

    Call it once the client is dead and reaped: from then on nothing new can arrive, and every
    connection it made is either waiting in the listen queue or being served.  (It slept 10 ms
    and hoped the queue was empty by then.)"""
    wait_until(
        lambda: emulator.unfinished_connections == 0,
        timeout=timeout,
        what="the emulator to finish a dead client's requests",
    )


def _ledger_sql(w: World, statement: str) -> int:
    import sqlite3

    path = str(w.settings.ledger.url).removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        return conn.execute(statement).rowcount


def let_waits_pass(w: World) -> int:
    """Make every pending appointment due now, as if its back-off (a ``Retry-After`` of 30 s,
    say) had run out; returns how many were waiting.  Tests use it after checking the wait was
    recorded, instead of sleeping through it."""
    return _ledger_sql(
        w,
        "UPDATE appointment SET next_attempt_at = '2000-01-01 00:00:00.000000' "
        "WHERE state = 'pending' AND next_attempt_at IS NOT NULL",
    )
