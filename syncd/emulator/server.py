"""SecureVideo's REST API over HTTP, backed by `EmulatorState`, with fault injection.

Standard library only: the emulator must run where syncd runs, and it is the test peer of the one
module allowed to use httpx.  Keep-alive HTTP/1.1 with a Content-Length on every answer, because
that is what a pooled client meets in production.

Nothing here prints or logs request bodies or URLs: query strings carry e-mail addresses.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import random
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from types import FrameType, TracebackType
from typing import Any, Final, Self, cast
from urllib.parse import parse_qsl, unquote

from syncd.emulator.notices import Notice
from syncd.emulator.persist import StateFile
from syncd.emulator.state import (
    DEFAULT_HOSTS,
    ApiError,
    EmulatorState,
    HostUser,
    InvalidRequestError,
    PacketGiven,
    SessionRecord,
    UnknownResourceError,
)
from syncd.emulator.visits import ADMIN_PATH, admin_request

MUTATING_METHODS: Final = ("POST", "PUT", "DELETE")
FAULT_KINDS: Final = ("latency", "fail", "throttle", "drop", "delay")

#: ``hook(phase, method, path)``, phase "before_apply" or "after_apply"; True drops the call there.
RequestHook = Callable[[str, str, str], bool]

_UNAUTHORIZED: Final = "Authorization has been denied for this request."
_NO_ROUTE: Final = "No HTTP resource was found that matches the request URI."
_MAX_BODY_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One request as the emulator saw it. `status` is None when the answer was dropped."""

    method: str
    path: str
    query: dict[str, str]
    status: int | None
    received_at: float
    wall: datetime
    body: Any
    fault: str | None

    @property
    def mutating(self) -> bool:
        return self.method in MUTATING_METHODS


# --- fault injection ---------------------------------------------------------------------------


#: a fault's Message made from the request it answers: (method, path, JSON body) → text
Quote = Callable[[str, str, Any], str]


@dataclass(frozen=True, slots=True)
class PreFault:
    """Answer without applying the request."""

    kind: str
    status: int
    message: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class PostFault:
    """Apply the request, then drop the answer (`delay` None) or hold it for `delay` seconds."""

    kind: str
    delay: float | None = None


#: (method, resource) -> the kind of emulator-assigned id in the path; other ids (host user ids,
#: 0 with an external id in the query) do not depend on the order requests arrived in.
_ASSIGNED_IDS: Final = {
    ("PUT", "session"): "session",
    ("DELETE", "session"): "session",
    ("POST", "participant"): "session",
    ("PUT", "participant"): "participation",
    ("DELETE", "participant"): "participation",
    ("PUT", "rsvp"): "participation",
    ("PUT", "sessionhost"): "session",
}


def request_identity(
    method: str,
    path: str,
    query: Mapping[str, str],
    body: Any,
    name_of: Callable[[str, int], str | None] | None = None,
) -> str:
    """What a request is, as far as a rate-based fault plan is concerned: method, path, query and
    JSON body, with a SessionId or ParticipationId in the path replaced by ``name_of(kind, id)``
    (``EmulatorState.order_free_name``), because which session got which id depends on the order
    concurrent creates arrived in.  Hashed, never logged or stored: bodies carry patient data."""
    segments = [s for s in path.lower().split("/") if s]
    if len(segments) == 2 and segments[1].isdigit() and name_of is not None:
        kind = _ASSIGNED_IDS.get((method.upper(), segments[0]))
        ident = int(segments[1])
        name = name_of(kind, ident) if kind is not None and ident != 0 else None
        if name is not None:
            segments[1] = f"<{name}>"
    params = sorted((k.lower(), v) for k, v in query.items())
    if body is _BODY_MISSING:
        content = ""
    elif body is _BODY_MALFORMED:
        content = "<malformed>"
    else:
        content = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return json.dumps([method.upper(), "/".join(segments), params, content])


def _draw(key: bytes, identity: str, seen: int) -> float:
    """A number in [0, 1) fixed by the plan's key, the request and how often the plan saw it."""
    digest = hashlib.blake2b(f"{seen}:{identity}".encode(), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") / 2**64


def _key(seed: int | None) -> bytes:
    # None: a key nobody can predict, as an unseeded plan was before.
    return random.Random(seed).getrandbits(256).to_bytes(32, "big")


@dataclass(slots=True)
class _Plan:
    """One configured fault: the next `remaining` matching calls, or a share `rate` of them."""

    methods: frozenset[str] | None
    remaining: int | None = None
    rate: float = 0.0
    key: bytes = b""
    status: int = 503
    retry_after: float | None = None
    seconds: float = 0.0
    message: str | Quote | None = None
    #: request identity -> how many times this plan was asked about it
    seen: dict[str, int] = field(default_factory=dict)

    def matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def fires(self, method: str, identity: str) -> bool:
        if not self.matches(method):
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True
        seen = self.seen[identity] = self.seen.get(identity, 0) + 1
        return _draw(self.key, identity, seen) < self.rate


def _methods(methods: Iterable[str] | None) -> frozenset[str] | None:
    return None if methods is None else frozenset(m.upper() for m in methods)


def _count(n: int) -> int:
    if n < 0:
        raise ValueError("a fault count cannot be negative")
    return n


def _rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ValueError("a fault rate must be between 0 and 1")
    return rate


def _fail_message(status: int) -> str:
    if status == 503:
        return "The service is unavailable."
    return "An error has occurred."


class Faults:
    """What the next calls should suffer.  Thread-safe; one plan per kind and mode.

    A counted plan ("next n") is consumed before the rate plan of the same kind. At most one
    fault is injected per call: latency, then fail, then throttle before the change; drop or
    delay after it, and only when the change succeeded (a 4xx applied nothing).

    A counted plan hits the next ``n`` calls in the order they arrive.  A rate plan decides per
    request, not per arrival: a request meets the fault when a hash, keyed by the plan's seed, of
    the request's identity (``request_identity``: method, path, query, body, emulator-assigned
    ids replaced by what they name) and of how many times the plan was asked about that same
    request lies below the rate.  So the same requests meet the same faults however concurrent
    clients interleave them, and a retry of a request is a fresh draw.  The one thing left to
    arrival order is which of two identical requests in flight at once is the first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency = 0.0
        self._plans: dict[str, _Plan] = {}
        self._injected = dict.fromkeys(FAULT_KINDS, 0)
        self._hook: RequestHook | None = None

    # configuration

    def latency(self, seconds: float) -> None:
        """Add `seconds` to every call (0 turns it off); concurrent calls wait in parallel."""
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        with self._lock:
            self._latency = seconds

    def fail_next(
        self,
        n: int,
        status: int = 503,
        methods: Iterable[str] | None = None,
        message: str | Quote | None = None,
    ) -> None:
        """``message``: the error's Message, e.g. one quoting what was sent, as servers do; a
        callable makes it from the request it answers (method, path, JSON body)."""
        plan = _Plan(_methods(methods), remaining=_count(n), status=status, message=message)
        self._set("fail:next", plan)

    def fail_rate(
        self,
        rate: float,
        status: int = 503,
        seed: int | None = None,
        methods: Iterable[str] | None = None,
    ) -> None:
        plan = _Plan(_methods(methods), rate=_rate(rate), key=_key(seed), status=status)
        self._set("fail:rate", plan)

    def throttle_next(
        self, n: int, retry_after: float | None = 1, methods: Iterable[str] | None = None
    ) -> None:
        """429 for the next `n` calls; `retry_after` None sends no Retry-After header."""
        plan = _Plan(_methods(methods), remaining=_count(n), status=429, retry_after=retry_after)
        self._set("throttle:next", plan)

    def throttle_rate(
        self,
        rate: float,
        retry_after: float | None = 1,
        seed: int | None = None,
        methods: Iterable[str] | None = None,
    ) -> None:
        plan = _Plan(
            _methods(methods),
            rate=_rate(rate),
            key=_key(seed),
            status=429,
            retry_after=retry_after,
        )
        self._set("throttle:rate", plan)

    def drop_after_apply_next(self, n: int, methods: Iterable[str] = MUTATING_METHODS) -> None:
        self._set("drop:next", _Plan(_methods(methods), remaining=_count(n)))

    def drop_after_apply_rate(
        self, rate: float, seed: int | None = None, methods: Iterable[str] = MUTATING_METHODS
    ) -> None:
        plan = _Plan(_methods(methods), rate=_rate(rate), key=_key(seed))
        self._set("drop:rate", plan)

    def delay_after_apply_next(
        self, n: int, seconds: float, methods: Iterable[str] = MUTATING_METHODS
    ) -> None:
        self._set("delay:next", _Plan(_methods(methods), remaining=_count(n), seconds=seconds))

    def delay_after_apply_rate(
        self,
        rate: float,
        seconds: float,
        seed: int | None = None,
        methods: Iterable[str] = MUTATING_METHODS,
    ) -> None:
        plan = _Plan(_methods(methods), rate=_rate(rate), key=_key(seed), seconds=seconds)
        self._set("delay:rate", plan)

    def clear(self) -> None:
        """Stop injecting. Counters survive, so a test can clear faults and still compare."""
        with self._lock:
            self._latency = 0.0
            self._plans.clear()
            self._hook = None

    def reset_counters(self) -> None:
        with self._lock:
            self._injected = dict.fromkeys(FAULT_KINDS, 0)

    @property
    def injected(self) -> dict[str, int]:
        """How many calls suffered each kind of fault so far."""
        with self._lock:
            return dict(self._injected)

    def on_request(self, hook: RequestHook | None) -> None:
        """Call ``hook(phase, method, path)`` for every authorised call: at "before_apply", and at
        "after_apply" when the change succeeded.  True drops the call at that phase, without an
        answer: not applied, or applied but unanswered.  The crash sweep kills the client from
        inside it, at the exact instant.  The hook runs on the handler's thread, outside any lock;
        None removes it."""
        with self._lock:
            self._hook = hook

    # used by the request handler

    @property
    def by_request(self) -> bool:
        """Whether a rate plan is set, i.e. whether a request's identity is needed at all."""
        with self._lock:
            return any(plan.remaining is None for plan in self._plans.values())

    def hook(self, phase: str, method: str, path: str) -> bool:
        with self._lock:
            hook = self._hook
        return hook is not None and hook(phase, method, path)

    def take_latency(self) -> float:
        with self._lock:
            if self._latency > 0:
                self._injected["latency"] += 1
            return self._latency

    def before_apply(
        self, method: str, path: str = "", body: Any = None, identity: str | None = None
    ) -> PreFault | None:
        """``identity``: the request's ``request_identity``, made from method, path and body when
        not given (without the emulator's state to name assigned ids by)."""
        if identity is None:
            identity = request_identity(method, path, {}, body)
        with self._lock:
            fired = None
            for kind in ("fail", "throttle"):
                plan = self._firing(kind, method, identity)
                if plan is not None:
                    self._injected[kind] += 1
                    fired = kind, plan
                    break
        if fired is None:
            return None
        kind, plan = fired
        if kind == "throttle":
            return PreFault(kind, 429, "Too many requests.", plan.retry_after)
        # Outside the lock: a quote may look at the emulator's state.
        message = plan.message(method, path, body) if callable(plan.message) else plan.message
        return PreFault(kind, plan.status, message or _fail_message(plan.status))

    def after_apply(self, method: str, identity: str | None = None) -> PostFault | None:
        if identity is None:
            identity = request_identity(method, "", {}, _BODY_MISSING)
        with self._lock:
            plan = self._firing("drop", method, identity)
            if plan is not None:
                self._injected["drop"] += 1
                return PostFault("drop")
            plan = self._firing("delay", method, identity)
            if plan is not None:
                self._injected["delay"] += 1
                return PostFault("delay", plan.seconds)
            return None

    def _firing(self, kind: str, method: str, identity: str) -> _Plan | None:
        for mode in ("next", "rate"):
            plan = self._plans.get(f"{kind}:{mode}")
            if plan is not None and plan.fires(method, identity):
                return plan
        return None

    def _set(self, key: str, plan: _Plan) -> None:
        with self._lock:
            self._plans[key] = plan


def format_retry_after(seconds: float) -> str:
    """Whole seconds as an integer, as HTTP specifies; fractions as-is for fast tests."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return repr(float(seconds))


# --- routing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    payload: Any = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return self.status == 204


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> _Answer:
    return _Answer(status, {"Message": message}, headers)


class _MethodNotAllowedError(ApiError):
    status = 405


_BODY_MISSING: Final = object()
_BODY_MALFORMED: Final = object()


def _require_body(body: Any) -> Any:
    if body is _BODY_MISSING:
        raise InvalidRequestError("The request body is required")
    if body is _BODY_MALFORMED:
        raise InvalidRequestError("The request body is not valid JSON")
    return body


def _parse_date(value: str | None, name: str) -> date | None:
    if value is None or not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        raise InvalidRequestError(f"{name} must be a date in the format yyyy-mm-dd") from None


def _dispatch(
    state: EmulatorState, method: str, path: str, query: dict[str, str], body: Any
) -> _Answer:
    """Route like SecureVideo's ASP.NET Web API: case-insensitive paths and query keys."""
    segments = [s for s in path.lower().split("/") if s]
    if not segments or len(segments) > 2:
        raise UnknownResourceError(_NO_ROUTE)
    resource = segments[0]
    ident: int | None = None
    if len(segments) == 2:
        try:
            ident = int(segments[1])
        except ValueError:
            raise UnknownResourceError(_NO_ROUTE) from None
    q = {k.lower(): v for k, v in reversed(list(query.items()))}
    handler = _ROUTES.get(resource)
    if handler is None:
        raise UnknownResourceError(_NO_ROUTE)
    return handler(state, method, ident, q, body)


def _not_allowed(method: str) -> _MethodNotAllowedError:
    return _MethodNotAllowedError(
        f"The requested resource does not support http method '{method}'."
    )


def _host_ref(ident: int | None, q: dict[str, str]) -> dict[str, Any]:
    if not ident and q.get("externalid") is not None:
        return {"host_external_id": q["externalid"]}
    if ident is None:
        return {}
    return {"host_user_id": ident}


def _session_ref(ident: int | None, q: dict[str, str]) -> dict[str, Any]:
    if ident == 0 and q.get("externalsessionid") is not None:
        return {"external_session_id": q["externalsessionid"]}
    return {"session_id": ident}


def _participation_ref(ident: int | None, q: dict[str, str]) -> dict[str, Any]:
    if ident == 0 and q.get("externalsessionid") is not None:
        return {
            "external_session_id": q["externalsessionid"],
            "participant_external_id": q.get("externalid"),
        }
    return {"participation_id": ident}


def _route_user(
    state: EmulatorState, method: str, ident: int | None, q: dict[str, str], body: Any
) -> _Answer:
    if method != "GET":
        raise _not_allowed(method)
    ref = _host_ref(ident, q)
    if not ref:
        return _Answer(200, state.users_json())
    return _Answer(
        200,
        state.user_json(user_id=ref.get("host_user_id"), external_id=ref.get("host_external_id")),
    )


def _route_session(
    state: EmulatorState, method: str, ident: int | None, q: dict[str, str], body: Any
) -> _Answer:
    if method == "GET":
        return _Answer(
            200,
            state.list_sessions_json(
                **_host_ref(ident, q), participant_email=q.get("participantemail")
            ),
        )
    if ident is None:
        raise _not_allowed(method)
    if method == "POST":
        return _Answer(201, state.create_session(_require_body(body), **_host_ref(ident, q)))
    if method == "PUT":
        return _Answer(200, state.reschedule_session(_require_body(body), **_session_ref(ident, q)))
    if method == "DELETE":
        state.cancel_session(**_session_ref(ident, q))
        return _Answer(204)
    raise _not_allowed(method)


def _route_participant(
    state: EmulatorState, method: str, ident: int | None, q: dict[str, str], body: Any
) -> _Answer:
    if ident is None:
        raise _not_allowed(method)
    if method == "POST":
        return _Answer(200, state.add_participant(_require_body(body), **_session_ref(ident, q)))
    if method == "PUT":
        return _Answer(
            200, state.update_participant(_require_body(body), **_participation_ref(ident, q))
        )
    if method == "DELETE":
        state.remove_participant(**_participation_ref(ident, q))
        return _Answer(204)
    raise _not_allowed(method)


def _route_session_host(
    state: EmulatorState, method: str, ident: int | None, q: dict[str, str], body: Any
) -> _Answer:
    if method != "PUT" or ident is None:
        raise _not_allowed(method)
    return _Answer(200, state.change_host(_require_body(body), **_session_ref(ident, q)))


def _route_rsvp(
    state: EmulatorState, method: str, ident: int | None, q: dict[str, str], body: Any
) -> _Answer:
    if method != "PUT" or ident is None:
        raise _not_allowed(method)
    return _Answer(200, state.respond_rsvp(ident, _require_body(body)))


def _route_history(
    state: EmulatorState, method: str, ident: int | None, q: dict[str, str], body: Any
) -> _Answer:
    if method != "GET":
        raise _not_allowed(method)
    month = _parse_date(q.get("month"), "month")
    return _Answer(
        200,
        state.history_json(
            **_host_ref(ident, q),
            month=month,
            # Month wins over startDt/endDt, so those are not even validated when it is given.
            start_dt=None if month else _parse_date(q.get("startdt"), "startDt"),
            end_dt=None if month else _parse_date(q.get("enddt"), "endDt"),
            participant_email=q.get("participantemail"),
        ),
    )


_Route = Callable[[EmulatorState, str, int | None, dict[str, str], Any], _Answer]
_ROUTES: Final[dict[str, _Route]] = {
    "user": _route_user,
    "session": _route_session,
    "participant": _route_participant,
    "sessionhost": _route_session_host,
    "rsvp": _route_rsvp,
    "history": _route_history,
}


# --- HTTP --------------------------------------------------------------------------------------


class _BadFramingError(Exception):
    """The request body cannot be delimited; the connection cannot be reused."""


class _EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], emulator: Emulator, tls: ssl.SSLContext | None = None
    ) -> None:
        self.emulator = emulator
        self.tls = tls
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup that can stall start-up for seconds.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (e.g. after its read timeout) is routine in chaos tests, not
        # worth a traceback on stderr; anything else is reported as usual.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        # Accepted and counted under one lock: a connection is always either in the listen
        # queue or among ours when ``unfinished_connection_count`` looks.
        with self._connections_lock:
            request, address = self.socket.accept()
            if self.tls is not None:
                # No handshake here, in the accepting thread: the handler's thread does it.
                request = self.tls.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
            self._connections.add(request)
        return request, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def open_connection_count(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def unfinished_connection_count(self) -> int:
        """Connections being served and those the kernel holds in the listen queue, not yet
        accepted (Linux reports that queue's length in ``TCP_INFO``; elsewhere it counts as 0)."""
        with self._connections_lock:
            return _accept_queue_length(self.socket) + len(self._connections)

    def close_connections(self) -> None:
        """End kept-alive connections, so a stopped emulator really stops answering."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def _accept_queue_length(listener: socket.socket) -> int:
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return 0
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, tcp_info, 104)
    except OSError:
        return 0
    # struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked; for a
    # listening socket Linux puts the accept queue's length in tcpi_unacked.
    (queued,) = struct.unpack_from("=I", info, 24)
    return int(queued)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SecureVideoEmulator/1.0"
    sys_version = ""
    # Buffered writes plus TCP_NODELAY send headers and body in one segment; otherwise Nagle and
    # delayed ACKs add ~40 ms to every keep-alive answer.
    wbufsize = -1
    disable_nagle_algorithm = True

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            # A failed handshake (a client that does not trust the certificate) raises an
            # OSError here, which the server drops without a traceback.
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines carry query strings with e-mail addresses."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Used by the stdlib for unparseable requests; answer in the API's JSON shape instead.
        self.close_connection = True
        self._send(_error(code, message or "The request is invalid."))

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    @property
    def _emulator(self) -> Emulator:
        return cast(_EmulatorHTTPServer, self.server).emulator

    def _handle(self) -> None:
        emulator = self._emulator
        emulator._arrived()
        try:
            self._answer()
        finally:
            emulator._answered()

    def _answer(self) -> None:
        emulator = self._emulator
        received_at = time.monotonic()
        wall = datetime.now(UTC)
        method = self.command.upper()
        raw_path, _, raw_query = self.path.partition("?")
        path = unquote(raw_path)
        query: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            query.setdefault(key, value)

        def record(status: int | None, body: Any, fault: str | None) -> None:
            logged_body = None if body is _BODY_MISSING or body is _BODY_MALFORMED else body
            emulator._record(
                RecordedCall(method, path, query, status, received_at, wall, logged_body, fault)
            )

        try:
            raw = self._read_body()
        except _BadFramingError as exc:
            self.close_connection = True
            record(400, None, None)
            self._send(_error(400, str(exc)))
            return
        body = _parse_json(raw)

        latency = emulator.faults.take_latency()
        if latency > 0:
            time.sleep(latency)

        # Named before the change: a removed participation can no longer be named after it.
        identity = (
            request_identity(method, path, query, body, emulator.state.order_free_name)
            if emulator.faults.by_request
            else ""
        )
        pre = emulator.faults.before_apply(method, path, body, identity)
        if pre is not None:
            headers: tuple[tuple[str, str], ...] = ()
            if pre.retry_after is not None:
                headers = (("Retry-After", format_retry_after(pre.retry_after)),)
            answer = _error(pre.status, pre.message, headers)
            record(answer.status, body, pre.kind)
            self._send(answer)
            return

        if not emulator._authorized(self.headers.get("Authorization")):
            answer = _error(401, _UNAUTHORIZED, (("WWW-Authenticate", 'Basic realm="api"'),))
            record(answer.status, body, None)
            self._send(answer)
            return

        if emulator.faults.hook("before_apply", method, path):
            record(None, body, "hook")
            self._drop()
            return
        answer = _answer(emulator.state, method, path, query, body)
        if answer.status < 400 and method in MUTATING_METHODS:
            emulator._changed()
        if answer.status < 400 and emulator.faults.hook("after_apply", method, path):
            record(None, body, "hook")
            self._drop()
            return
        post = emulator.faults.after_apply(method, identity) if answer.status < 400 else None
        if post is not None and post.delay is None:
            record(None, body, post.kind)
            self._drop()
            return
        record(answer.status, body, None if post is None else post.kind)
        if post is not None and post.delay:
            time.sleep(post.delay)
        self._send(answer)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BadFramingError("Content-Length is not a number") from None
        if length < 0 or length > _MAX_BODY_BYTES:
            raise _BadFramingError("Content-Length is out of range")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadFramingError("Malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY_BYTES:
                raise _BadFramingError("The request body is too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, answer: _Answer) -> None:
        data = b"" if answer.empty else json.dumps(answer.payload, separators=(",", ":")).encode()
        try:
            self.send_response(answer.status)
            if not answer.empty:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in answer.headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            # The client gave up (e.g. its read timeout fired during an injected delay).
            self.close_connection = True

    def _drop(self) -> None:
        """Close without a byte of answer: the client must see a connection error."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        return _BODY_MISSING
    try:
        return json.loads(raw)
    except ValueError:
        return _BODY_MALFORMED


def _answer(
    state: EmulatorState, method: str, path: str, query: dict[str, str], body: Any
) -> _Answer:
    try:
        if path.lower().startswith(ADMIN_PATH):
            given = None if body is _BODY_MISSING else _require_body(body)
            status, payload = admin_request(state, method, path[len(ADMIN_PATH) :], query, given)
            return _Answer(status, payload)
        return _dispatch(state, method, path, query, body)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    except Exception:  # noqa: BLE001 - any bug must still become an HTTP answer
        # Like ASP.NET: a 500 with a generic message; details would risk leaking patient data.
        return _error(500, "An error has occurred.")


# --- the emulator ------------------------------------------------------------------------------


class Emulator:
    """A SecureVideo API on a local port, with test controls and fault injection.

    ``with Emulator() as emulator:`` starts it; ``emulator.base_url`` is where to point the client.
    Stopping keeps the state and the port, so ``start()`` again simulates an outage that ends.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        hosts: Iterable[HostUser] = DEFAULT_HOSTS,
        api_key: str = "demo",
        api_secret: str = "demo",  # noqa: S107 - the demo account's documented secret
        *,
        seed: int | None = None,
        call_log_limit: int | None = None,
        tls: ssl.SSLContext | None = None,
        passkeys: bool = False,
        refuse_cancelling_connected: bool = False,
        round_to_quarter_hours: bool = False,
        host_change: bool = False,
    ) -> None:
        """`seed` makes generated codes reproducible; `call_log_limit` keeps only the newest
        calls, for long benchmark runs; `tls`, a server context (its certificate loaded), serves
        HTTPS instead of HTTP (see `tls_context`).  `passkeys`, `refuse_cancelling_connected` and
        `round_to_quarter_hours` choose between readings of what the documents leave open;
        `host_change` is the account option `PUT /sessionhost` needs (see `EmulatorState`)."""
        self.tls = tls
        self.state = EmulatorState(
            hosts,
            seed=seed,
            passkeys=passkeys,
            refuse_cancelling_connected=refuse_cancelling_connected,
            round_to_quarter_hours=round_to_quarter_hours,
            host_change=host_change,
        )
        self.faults = Faults()
        self.api_key = api_key
        self.api_secret = api_secret
        self._bind_host = host
        self._port = port
        self._server: _EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle_lock = threading.Lock()
        self._calls: deque[RecordedCall] = deque(maxlen=call_log_limit)
        self._change_hooks: list[Callable[[], object]] = []
        self._calls_lock = threading.Lock()
        self._in_flight = self._in_flight_peak = 0

    # lifecycle

    def start(self) -> Self:
        with self._lifecycle_lock:
            if self._server is not None:
                return self
            server = _EmulatorHTTPServer((self._bind_host, self._port), self, self.tls)
            self._port = int(server.server_address[1])
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"securevideo-emulator-{self._port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            return self

    def stop(self) -> None:
        with self._lifecycle_lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the emulator has no port until it is started")
        return self._port

    @property
    def base_url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self._bind_host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections being served now, kept-alive ones included: 0 once every request of a
        client that went away has been handled."""
        server = self._server
        return 0 if server is None else server.open_connection_count()

    @property
    def unfinished_connections(self) -> int:
        """``open_connections`` plus those connected but not yet accepted: 0 once everything a
        client that went away had sent has been handled, even a request it sent as it died."""
        server = self._server
        return 0 if server is None else server.unfinished_connection_count()

    # call log

    @property
    def calls(self) -> list[RecordedCall]:
        with self._calls_lock:
            return list(self._calls)

    def calls_clear(self) -> None:
        """Forget the calls made so far, and the peak of requests in flight."""
        with self._calls_lock:
            self._calls.clear()
            self._in_flight_peak = self._in_flight

    @property
    def in_flight_peak(self) -> int:
        """The most requests being handled at once since start or `calls_clear`."""
        with self._calls_lock:
            return self._in_flight_peak

    def mutating_calls(self) -> list[RecordedCall]:
        return [c for c in self.calls if c.mutating]

    def calls_matching(
        self, method: str | None = None, path_prefix: str | None = None
    ) -> list[RecordedCall]:
        """Calls by method and case-insensitive path prefix, e.g. ("POST", "/session")."""
        prefix = None if path_prefix is None else path_prefix.lower()
        return [
            c
            for c in self.calls
            if (method is None or c.method == method.upper())
            and (prefix is None or c.path.lower().startswith(prefix))
        ]

    # test controls, delegated to the state

    def add_host(self, host: HostUser) -> None:
        self.state.add_host(host)

    def remove_host(self, external_id: str) -> None:
        self.state.remove_host(external_id)

    def mark_connected(
        self, session_id: int, participation_id: int | None = None, at: datetime | None = None
    ) -> None:
        self.state.mark_connected(session_id, participation_id, at)

    def set_billing(
        self,
        session_id: int,
        billable_ts: datetime | None,
        status_cd: str | None = "BILL",
        duration_minutes: int | None = None,
        wait_time: int | None = None,
        provider: str | None = None,
    ) -> None:
        self.state.set_billing(
            session_id, billable_ts, status_cd, duration_minutes, wait_time, provider=provider
        )

    def set_rsvp(self, participation_id: int, rsvp: str) -> None:
        self.state.set_rsvp(participation_id, rsvp)

    def sessions(self) -> list[SessionRecord]:
        return self.state.sessions()

    def packets(self, session_id: int) -> dict[int, PacketGiven]:
        """What each guest of a session was given as PacketId, and is shown."""
        return self.state.packets(session_id)

    def notices(self, session_id: int | None = None) -> list[Notice]:
        """What SecureVideo e-mailed or texted the guests so far (kinds and ids, no content)."""
        return self.state.notices(session_id)

    def live_sessions_by_external_id(self) -> dict[str, list[int]]:
        return self.state.live_sessions_by_external_id()

    def duplicate_external_session_ids(self) -> dict[str, list[int]]:
        return self.state.duplicate_external_session_ids()

    def reset(self) -> None:
        """Fresh state, no faults, zero counters, empty call log. The server keeps running."""
        self.state.reset()
        self.faults.clear()
        self.faults.reset_counters()
        self.calls_clear()

    def on_change(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` after every request that changed the account (before it is answered)."""
        self._change_hooks.append(hook)

    # used by the handler

    def _changed(self) -> None:
        for hook in self._change_hooks:
            hook()

    def _arrived(self) -> None:
        with self._calls_lock:
            self._in_flight += 1
            self._in_flight_peak = max(self._in_flight_peak, self._in_flight)

    def _answered(self) -> None:
        with self._calls_lock:
            self._in_flight -= 1

    def _record(self, call: RecordedCall) -> None:
        # Recorded before the answer is written, so a client that has its answer sees the call.
        with self._calls_lock:
            self._calls.append(call)

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        key, separator, secret = decoded.partition(":")
        key_ok = hmac.compare_digest(key.encode(), self.api_key.encode())
        secret_ok = hmac.compare_digest(secret.encode(), self.api_secret.encode())
        return bool(separator) and key_ok and secret_ok


def tls_context(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """A server context for `Emulator(tls=...)` from a PEM certificate (chain) and its key
    (None: the key is in ``cert_file`` too)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


class _StopServing(BaseException):
    """Raised by the SIGTERM handler to leave `serve()` the way Ctrl-C does."""


def serve(
    port: int,
    host: str = "127.0.0.1",
    *,
    hosts: Sequence[HostUser] = DEFAULT_HOSTS,
    api_key: str = "demo",
    api_secret: str = "demo",  # noqa: S107 - the demo account's documented secret
    on_ready: Callable[[Emulator], None] | None = None,
    stop: threading.Event | None = None,
    round_to_quarter_hours: bool = False,
    tls: ssl.SSLContext | None = None,
    state_file: Path | None = None,
    passkeys: bool = False,
    host_change: bool = False,
) -> None:
    """Run an emulator in the foreground until Ctrl-C, SIGTERM or `stop` is set.

    `on_ready` gets the started emulator (e.g. to print its base URL).  `tls` serves HTTPS.
    `state_file` keeps the account across restarts: loaded before the port opens (a
    `StateFileError` when it cannot be), written after every change and at exit.  `passkeys`:
    the account option that gives API-made guests a Passkey.  `round_to_quarter_hours`: scheduled
    times on quarter hours (one reading of the documents).  `host_change`: the account option
    `PUT /sessionhost` needs.
    """
    emulator = Emulator(
        host,
        port,
        hosts,
        api_key,
        api_secret,
        tls=tls,
        passkeys=passkeys,
        round_to_quarter_hours=round_to_quarter_hours,
        host_change=host_change,
    )
    saved = None if state_file is None else StateFile(state_file, emulator.state)
    if saved is not None:
        # Before anything else: a file that cannot be loaded must not be overwritten at exit.
        saved.load()
        emulator.on_change(saved.save)
    stop_event = stop or threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler: Any = None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise _StopServing

    if in_main_thread:
        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        emulator.start()
        if on_ready is not None:
            on_ready(emulator)
        # A timed wait keeps the main thread responsive to signals.
        while not stop_event.wait(0.5):
            pass
    except (KeyboardInterrupt, _StopServing):
        pass
    finally:
        emulator.stop()
        if saved is not None:
            saved.save()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
