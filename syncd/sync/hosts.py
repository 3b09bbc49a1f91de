"""One read of each host's sessions per pass, shared by that host's appointments."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, wait
from dataclasses import replace
from functools import partial

from syncd.core.domain import Appointment, RemoteSession
from syncd.core.errors import AuthenticationError, NotFoundError, PermanentError, TemporaryError
from syncd.ports.securevideo import SessionGateway

#: one host's sessions by ExternalSessionId, or what reading them raised
HostIndex = dict[str, list[RemoteSession]] | Exception
Submit = Callable[[Callable[[], HostIndex]], "Future[HostIndex]"]


def hosts_of(appt: Appointment, recorded_host: str | None) -> list[str]:
    """The hosts whose lists can hold this appointment's session: today's, and the one before."""
    hosts = [appt.provider_external_id]
    if recorded_host and recorded_host != appt.provider_external_id:
        hosts.append(recorded_host)
    return hosts


def read_sessions(
    gateway: SessionGateway, hosts: Sequence[str], external_session_id: str
) -> list[RemoteSession]:
    """This appointment's sessions, read afresh (after an answer that may have changed them)."""
    return [
        replace(s, host_external_id=host)
        for host in hosts
        for s in gateway.list_host_sessions(host)
        if s.external_session_id == external_session_id
    ]


class HostSessions:
    """Per-pass cache of ``GET /session/0?externalId=host``: one read per host per pass.

    Reads are queued in the worker pool ahead of the appointments that need them, and an
    appointment waits only for its own hosts.  The pool takes work in order, so a read an
    appointment waits for is already running on another worker."""

    def __init__(self, gateway: SessionGateway, submit: Submit) -> None:
        self._gateway = gateway
        self._submit = submit
        self._lock = threading.Lock()
        self._reads: dict[str, Future[HostIndex]] = {}
        #: hosts SecureVideo answered 404 for in this pass (a provider who left SecureVideo)
        self._gone: set[str] = set()
        #: reads made, fresh ones included (``count_read``)
        self.reads = 0

    def request(self, hosts: Iterable[str]) -> None:
        """Queue a read of each of these hosts not read yet in this pass."""
        with self._lock:
            for host in sorted(set(hosts) - self._reads.keys()):
                self._reads[host] = self._submit(partial(self._read, host))

    def wait(self) -> None:
        with self._lock:
            reads = list(self._reads.values())
        wait(reads)

    def count_read(self, n: int = 1) -> None:
        with self._lock:
            self.reads += n

    def _read(self, host: str) -> HostIndex:
        try:
            sessions = self._gateway.list_host_sessions(host)
        except (TemporaryError, PermanentError, AuthenticationError) as exc:
            result: HostIndex = exc
        else:
            index: dict[str, list[RemoteSession]] = {}
            for s in sessions:
                if s.external_session_id:
                    index.setdefault(s.external_session_id, []).append(
                        replace(s, host_external_id=host)
                    )
            result = index
        self.count_read()
        return result

    def sessions(self, hosts: Sequence[str], external_session_id: str) -> list[RemoteSession]:
        """This appointment's sessions on these hosts; raises what a failed host read raised.

        Every host must have been requested.  A previous host (any but the first) that
        SecureVideo no longer knows is left out, and named by ``gone``: its sessions went with it,
        and the appointment's current host must not be held up by it."""
        out: list[RemoteSession] = []
        for index, host in enumerate(hosts):
            with self._lock:
                read = self._reads[host]
            entry = read.result()
            if isinstance(entry, NotFoundError) and index > 0:
                self._note_gone(host)
                continue
            if isinstance(entry, Exception):
                raise entry
            out += entry.get(external_session_id, [])
        return out

    def gone(self, hosts: Sequence[str]) -> list[str]:
        """Those of these hosts that SecureVideo answered 404 for in this pass."""
        with self._lock:
            return [h for h in hosts if h in self._gone]

    def _note_gone(self, host: str) -> None:
        with self._lock:
            self._gone.add(host)

    def fresh(self, hosts: Sequence[str], external_session_id: str) -> list[RemoteSession]:
        """Read these hosts again for one appointment (after an answer that may have changed
        what they hold)."""
        out: list[RemoteSession] = []
        for index, host in enumerate(hosts):
            self.count_read()
            try:
                out += read_sessions(self._gateway, [host], external_session_id)
            except NotFoundError:
                if index == 0:
                    raise
                self._note_gone(host)
        return out
