"""The SecureVideo client: every documented endpoint, and the gateways the sync layer uses.

``SecureVideoClient`` offers every documented session, participant, user and history endpoint at
the wire level (``*_raw`` and friends, pydantic models in and out) and, on top of them, the
``SessionGateway`` and ``OutcomeGateway`` protocols of ``syncd.ports.securevideo`` in domain terms.

What callers can rely on:

* Every failure is one of ``syncd.core.errors``: ``AuthenticationError`` (401/403),
  ``PermanentError``/``NotFoundError`` (400, 404, 409, 410, 422, or an answer that does not parse),
  ``TemporaryError`` (429, 503, other statuses, a GET without an answer, a request never sent) and
  ``AmbiguousError`` (a change was sent and its answer lost, or a 500/502/504 answered it: the
  server may have applied it before failing).  The client never retries: the engine owns that.
* Messages name the method and the endpoint *template* (query values elided), the status and
  SecureVideo's ``Message``; never a full URL, a request body or the credentials.
* ``Retry-After`` on a 429 or 503 closes a gate shared by every thread using this client: nothing is
  sent before the moment has passed.  An optional client-side rate limit spaces requests evenly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from syncd.adapters.securevideo.gate import Gate, parse_retry_after
from syncd.adapters.securevideo.mapping import (
    guest_codes,
    new_participant,
    parse_history,
    remote_session,
)
from syncd.adapters.securevideo.routes import (
    Route,
    at_most_one,
    exactly_one,
    history_route,
    path_id,
)
from syncd.adapters.securevideo.transport import (
    DIRECT,
    LANE_TAKEN_AT,
    Egress,
    LaneTransport,
    http_transport,
    tls_failure,
)
from syncd.adapters.securevideo.wire import (
    HISTORY,
    SESSIONS,
    USERS,
    ErrorJson,
    HistoryJson,
    NewParticipant,
    NewSession,
    Reschedule,
    SessionJson,
    UserJson,
    describe_validation_error,
)
from syncd.core.domain import CreateSession, Guest, RemoteSession
from syncd.core.errors import (
    AmbiguousError,
    AuthenticationError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)
from syncd.core.redact import without_credentials
from syncd.ports.links import GuestCode
from syncd.ports.securevideo import HistoryPage

__all__ = ["ResponseHook", "SecureVideoClient", "TlsError"]

T = TypeVar("T")

#: ``on_response(method, endpoint_template, status, duration_s)``; status is None without an answer
ResponseHook = Callable[[str, str, int | None, float], None]

RSVP_ANSWERS: Final = frozenset({"Unknown", "Confirmed", "Declined"})

_SESSION: Final = TypeAdapter(SessionJson)
_USER: Final = TypeAdapter(UserJson | list[UserJson])

_MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PERMANENT: Final = frozenset({400, 404, 405, 409, 410, 422})
# A server that fails with these may have committed the change first (an exception while sending
# the invitation, a gateway that gave up waiting); 503 and 429 conventionally mean "not processed".
_MAYBE_APPLIED: Final = frozenset({500, 502, 504})
# Retry-After is defined for these; on them it closes the shared gate.
_GATING: Final = frozenset({429, 503})
_MESSAGE_LIMIT: Final = 300
_URL_MEMO: Final = 4096


class SecureVideoClient:
    """A thread-safe SecureVideo API client; implements the ports' ``SessionGateway`` and
    ``OutcomeGateway``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        rate_limit_per_second: float | None = None,
        max_wait_in_client: float = 1.0,
        max_in_flight: int | None = None,
        transport: httpx.BaseTransport | None = None,
        egress: Egress = DIRECT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_response: ResponseHook | None = None,
    ) -> None:
        """``max_wait_in_client``: the longest a request waits inside the client for the
        Retry-After gate or the rate limit; a longer wait is handed back as a ``TemporaryError``
        whose ``retry_after`` says how long is left, and the request is not sent.  The engine waits
        that out with ``stop.wait``, which a shutdown ends; inside the client a worker would sleep
        it out, deaf to SIGTERM.
        ``max_in_flight``: at most this many requests on the wire at once (None: as many as the
        caller's threads); a thread beyond it waits its turn before sending.  ``transport``
        replaces the HTTP transport (tests pass an ``httpx.MockTransport``).  ``egress``: the
        proxy to tunnel through and the CA bundle to trust (see ``Egress``)."""
        url = httpx.URL(base_url)
        if url.userinfo:
            raise ValueError("base_url must not carry credentials; pass api_key and api_secret")
        if url.query:
            raise ValueError("base_url must not carry a query")
        if rate_limit_per_second is not None and not rate_limit_per_second > 0:
            raise ValueError("rate_limit_per_second must be positive")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._base_url = str(url)
        self._clock = clock
        self._on_response = on_response
        self._gate = Gate(
            clock=clock,
            sleep=sleep,
            interval=None if rate_limit_per_second is None else 1.0 / rate_limit_per_second,
            max_wait=max_wait_in_client,
        )
        if max_in_flight is not None:
            lanes: httpx.BaseTransport = LaneTransport(
                max_in_flight, transport=transport, clock=clock, egress=egress
            )
        else:
            # ~16 engine threads, and room for a probe or a slow answer.
            lanes = transport or http_transport(32, egress)
        self._closed = False
        self._urls: dict[str, httpx.URL] = {}
        # trust_env=False: no proxy, .netrc or CA bundle from the environment; redirects are
        # never followed (a redirected change could land anywhere).
        self._http = _Client(
            transport=lanes,
            base_url=url.copy_with(fragment=None),
            auth=httpx.BasicAuth(api_key, api_secret),
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=read_timeout
            ),
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "gzip, deflate",
                "User-Agent": "syncd",
            },
            trust_env=False,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"SecureVideoClient(base_url={self._base_url!r})"

    def close(self) -> None:
        self._closed = True
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- SessionGateway --------------------------------------------------------------------------

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]:
        """Active sessions (cancelled ones included) of the host user with this ExternalId."""
        return [
            remote_session(s, host_external_id)
            for s in self.list_sessions(host_external_id=host_external_id)
        ]

    def guest_codes(self, host_external_id: str) -> list[GuestCode]:
        """The guests of the host's active sessions with their connect codes and Passkeys (an
        access credential each: never logged, and never in an exception's text)."""
        return guest_codes(self.list_sessions(host_external_id=host_external_id))

    def list_account_sessions(self) -> list[RemoteSession]:
        """``GET /session``: every host's active sessions, in one read."""
        return [remote_session(s) for s in self.list_sessions()]

    def create_session(self, op: CreateSession) -> RemoteSession:
        if not op.guests:
            raise PermanentError(
                f"appointment {op.appointment_id}: a session needs at least one guest"
            )
        body = NewSession(
            schedule_ts=op.schedule_ts,
            is_recorded=op.is_recorded,
            external_session_id=op.external_session_id,
            topic=op.topic,
            participants=tuple(new_participant(g) for g in op.guests),
        )
        created = self.create_session_raw(body, host_external_id=op.host_external_id)
        return remote_session(created, op.host_external_id)

    def reschedule_session(self, session_id: int, schedule_ts: datetime) -> RemoteSession:
        return remote_session(self.reschedule(schedule_ts, session_id=session_id))

    def cancel_session(self, session_id: int) -> None:
        self.cancel(session_id=session_id)

    def move_session(self, session_id: int, host_external_id: str) -> RemoteSession | None:
        """PUT /sessionhost, an account option: a 403 is its refusal (like a 400), not the keys'."""
        route = self._session_route("/sessionhost", session_id, None)
        try:
            response = self._send("PUT", route, {"ExternalUserId": host_external_id})
        except AuthenticationError:
            raise PermanentError(f"PUT {route.template}: answered 403", status=403) from None
        body = response.content.strip() and self._decode(_SESSION, response, "PUT", route)
        return remote_session(body, host_external_id) if body else None

    def add_participant(self, session_id: int, guest: Guest) -> RemoteSession:
        return remote_session(
            self.add_participant_raw(new_participant(guest), session_id=session_id)
        )

    def update_participant(self, participation_id: int, guest: Guest) -> RemoteSession:
        updated = self.update_participant_raw(
            new_participant(guest), participation_id=participation_id
        )
        return remote_session(updated)

    def remove_participant(self, participation_id: int) -> None:
        self.remove_participant_raw(participation_id=participation_id)

    def probe(self) -> None:
        """Check that SecureVideo is reachable and accepts the credentials, changing nothing.

        ``GET /user`` is the cheapest documented read that always needs valid credentials and
        never depends on a particular host or session existing; its answer is parsed too, so a
        wrong base URL that answers with something else fails here rather than mid-pass.
        """
        self.list_users()

    # --- sessions --------------------------------------------------------------------------------

    def list_sessions(
        self,
        *,
        user_id: int | None = None,
        host_external_id: str | None = None,
        participant_email: str | None = None,
    ) -> list[SessionJson]:
        """GET /session: the account's active sessions, or one host's (by id or ExternalId)."""
        at_most_one(user_id=user_id, host_external_id=host_external_id)
        if user_id is not None:
            route = Route("/session/{userId}", f"/session/{path_id(user_id)}")
        elif host_external_id is not None:
            route = Route("/session/0", "/session/0", {"externalId": host_external_id})
        else:
            route = Route("/session", "/session")
        if participant_email is not None:
            route = route.with_params(participantEmail=participant_email)
        return self._decode(SESSIONS, self._send("GET", route), "GET", route)

    def create_session_raw(
        self,
        body: NewSession,
        *,
        user_id: int | None = None,
        host_external_id: str | None = None,
    ) -> SessionJson:
        """POST /session for the host given by user id or ExternalId; SecureVideo answers 201."""
        route = self._host_route("/session", user_id, host_external_id)
        response = self._send("POST", route, body.to_wire())
        return self._decode(_SESSION, response, "POST", route)

    def reschedule(
        self,
        schedule_ts: datetime | None,
        *,
        session_id: int | None = None,
        external_session_id: str | None = None,
    ) -> SessionJson:
        """PUT /session: move a session (None: to right now).  Participants get a notice."""
        route = self._session_route("/session", session_id, external_session_id)
        response = self._send("PUT", route, Reschedule(schedule_ts=schedule_ts).to_wire())
        return self._decode(_SESSION, response, "PUT", route)

    def cancel(
        self, *, session_id: int | None = None, external_session_id: str | None = None
    ) -> None:
        """DELETE /session: the session stays listed with ScheduleType "Cancelled"."""
        self._send("DELETE", self._session_route("/session", session_id, external_session_id))

    # --- participants ----------------------------------------------------------------------------

    def add_participant_raw(
        self,
        body: NewParticipant,
        *,
        session_id: int | None = None,
        external_session_id: str | None = None,
    ) -> SessionJson:
        route = self._session_route("/participant", session_id, external_session_id)
        response = self._send("POST", route, body.to_wire())
        return self._decode(_SESSION, response, "POST", route)

    def update_participant_raw(
        self,
        body: NewParticipant,
        *,
        participation_id: int | None = None,
        external_session_id: str | None = None,
        external_id: str | None = None,
    ) -> SessionJson:
        route = self._participation_route(participation_id, external_session_id, external_id)
        response = self._send("PUT", route, body.to_wire(update=True))
        return self._decode(_SESSION, response, "PUT", route)

    def remove_participant_raw(
        self,
        *,
        participation_id: int | None = None,
        external_session_id: str | None = None,
        external_id: str | None = None,
    ) -> None:
        route = self._participation_route(participation_id, external_session_id, external_id)
        self._send("DELETE", route)

    def set_rsvp(self, participation_id: int, rsvp: str) -> None:
        """PUT /rsvp/{ParticipationId} with Unknown, Confirmed or Declined."""
        if rsvp not in RSVP_ANSWERS:
            raise ValueError("rsvp must be Unknown, Confirmed or Declined")
        route = Route("/rsvp/{participationId}", f"/rsvp/{path_id(participation_id)}")
        self._send("PUT", route, {"RSVP": rsvp})

    # --- users and history -----------------------------------------------------------------------

    def list_users(self) -> list[UserJson]:
        route = Route("/user", "/user")
        return self._decode(USERS, self._send("GET", route), "GET", route)

    def get_user(self, *, user_id: int | None = None, external_id: str | None = None) -> UserJson:
        route = self._host_route("/user", user_id, external_id)
        found = self._decode(_USER, self._send("GET", route), "GET", route)
        if isinstance(found, UserJson):
            return found
        # Tolerated: a lookup by ExternalId answered with a list, as the session lookup does.
        if len(found) == 1:
            return found[0]
        if not found:
            raise NotFoundError(f"GET {route.template}: no such user", status=200)
        raise PermanentError(f"GET {route.template}: {len(found)} users match", status=200)

    def history(
        self,
        *,
        month: date | None = None,
        start: date | None = None,
        end: date | None = None,
        host_user_id: int | None = None,
        participant_email: str | None = None,
    ) -> list[HistoryJson]:
        """GET /history: billable sessions by month (any day of it) or by a start/end range.

        Strict: one record that does not parse fails the whole answer (see :meth:`history_page`).
        """
        route = history_route(month, start, end, host_user_id, participant_email)
        return self._decode(HISTORY, self._send("GET", route), "GET", route)

    def history_page(
        self,
        *,
        month: date | None = None,
        start: date | None = None,
        end: date | None = None,
        host_user_id: int | None = None,
        participant_email: str | None = None,
    ) -> HistoryPage:
        """GET /history, record by record: a record that does not parse is set aside in
        ``rejected`` (with its SessionId when readable) and the others are returned.  Only an
        answer that is not a JSON array at all raises ``PermanentError``."""
        route = history_route(month, start, end, host_user_id, participant_email)
        response = self._send("GET", route)
        try:
            return parse_history(response.content)
        except ValidationError as exc:
            raise PermanentError(
                f"GET {route.template}: SecureVideo's answer ({response.status_code}) does not "
                f"parse: {describe_validation_error(exc)}",
                status=response.status_code,
            ) from None

    # --- routes ----------------------------------------------------------------------------------

    @staticmethod
    def _host_route(base: str, user_id: int | None, external_id: str | None) -> Route:
        exactly_one(user_id=user_id, external_id=external_id)
        if user_id is not None:
            return Route(base + "/{userId}", f"{base}/{path_id(user_id)}")
        assert external_id is not None
        return Route(base + "/0", base + "/0", {"externalId": external_id})

    @staticmethod
    def _session_route(base: str, session_id: int | None, external_session_id: str | None) -> Route:
        exactly_one(session_id=session_id, external_session_id=external_session_id)
        if session_id is not None:
            return Route(base + "/{sessionId}", f"{base}/{path_id(session_id)}")
        assert external_session_id is not None
        return Route(base + "/0", base + "/0", {"externalSessionId": external_session_id})

    @staticmethod
    def _participation_route(
        participation_id: int | None, external_session_id: str | None, external_id: str | None
    ) -> Route:
        if participation_id is not None:
            if external_session_id is not None or external_id is not None:
                raise ValueError("give participation_id or external_session_id + external_id")
            return Route(
                "/participant/{participationId}", f"/participant/{path_id(participation_id)}"
            )
        if external_session_id is None or external_id is None:
            raise ValueError("give participation_id or external_session_id + external_id")
        params = {"externalSessionId": external_session_id, "externalId": external_id}
        return Route("/participant/0", "/participant/0", params)

    # --- the one way out -------------------------------------------------------------------------

    def _send(
        self, method: str, route: Route, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        where = f"{method} {route.template}"
        if self._closed:
            raise RuntimeError("the SecureVideo client is closed")
        self._gate.wait_turn(where)
        relative = route.url
        # Parsing and merging a URL costs as much as a tenth of the rest of a request, and the
        # same URLs recur: a host's session list, creates for a host, a session changed twice.
        # So the Client merges an id-only URL once, and is given the merged one after that.
        known = self._urls.get(relative) if route.memoizable else None
        request = self._http.build_request(method, known or relative, json=body)
        if route.memoizable and known is None:
            self._remember(relative, request.url)
        sent = self._clock()
        try:
            response = self._http.send(request)
        except httpx.RequestError as exc:
            self._report(method, route, None, _started(request, sent))
            # ``from None``: httpx's own text and its request object carry the full URL.
            raise _transport_failure(method, where, exc) from None
        self._report(method, route, response.status_code, _started(request, sent))
        self._raise_for_status(method, where, response)
        return response

    def _remember(self, relative: str, url: httpx.URL) -> None:
        # Bounded, and ids and external ids only: a URL holding a patient's address is never kept.
        if len(self._urls) >= _URL_MEMO:
            self._urls.clear()
        self._urls[relative] = url

    def _report(self, method: str, route: Route, status: int | None, started: float) -> None:
        if self._on_response is not None:
            self._on_response(method, route.template, status, self._clock() - started)

    def _raise_for_status(self, method: str, where: str, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in (401, 403):
            raise AuthenticationError(
                f"SecureVideo rejected the API credentials ({status}) on {where}"
            )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status in _GATING and retry_after is not None:
            self._gate.hold_off(retry_after)
        said = _message_of(response)
        text = f"{where}: SecureVideo answered {status}" + (f": {said}" if said else "")
        if status == 404 or status == 410:
            raise NotFoundError(text, status=status)
        if status in _PERMANENT:
            raise PermanentError(text, status=status)
        if method in _MUTATING and status in _MAYBE_APPLIED:
            raise AmbiguousError(
                f"{text}; the change may have been applied", retry_after=retry_after
            )
        raise TemporaryError(text, retry_after=retry_after)

    @staticmethod
    def _decode(adapter: TypeAdapter[T], response: httpx.Response, method: str, route: Route) -> T:
        try:
            return adapter.validate_json(response.content)
        except ValidationError as exc:
            status = response.status_code
            problem = describe_validation_error(exc)
            # No input values, and no chaining: pydantic's own text quotes the offending values.
            raise PermanentError(
                f"{method} {route.template}: SecureVideo's answer ({status}) does not parse: "
                f"{problem}",
                status=status,
            ) from None


# --- helpers -------------------------------------------------------------------------------------


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.Client):
    """An ``httpx.Client`` without cookies: SecureVideo sets none, a stray ``Set-Cookie`` must not
    ride along with later requests, and reading every answer for cookies took a quarter of the
    Client's CPU per request (profiled on an in-process transport)."""

    _no_cookies: Final = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise AttributeError("the SecureVideo client keeps no cookies")


def _started(request: httpx.Request, sent: float) -> float:
    # With lanes, the time waiting for one is not SecureVideo's latency: count from the lane.
    taken = request.extensions.get(LANE_TAKEN_AT)
    return sent if taken is None else float(taken)


def _message_of(response: httpx.Response) -> str | None:
    try:
        message = ErrorJson.model_validate_json(response.content).message
    except ValidationError:
        return None
    if not message:
        return None
    # The Message is free text: it must not carry a guest's way into a session onwards.
    message = without_credentials(" ".join(message.split()))
    if len(message) > _MESSAGE_LIMIT:
        message = message[: _MESSAGE_LIMIT - 1] + "…"
    return message


class TlsError(TemporaryError):
    """The TLS handshake with SecureVideo (or the proxy) failed: most often a certificate no
    trusted CA signed, as behind a TLS-inspecting proxy.  Nothing was sent."""


def _transport_failure(method: str, where: str, exc: httpx.RequestError) -> TemporaryError:
    kind = type(exc).__name__
    tls = tls_failure(exc) if isinstance(exc, httpx.ConnectError) else None
    if tls is not None:
        return TlsError(f"{where}: not sent (TLS handshake failed: {tls})")
    if isinstance(exc, httpx.ProxyError):
        # The proxy refused the tunnel ("407 Proxy Authentication Required"): nothing reached
        # SecureVideo.  Its status line is the proxy's own words, with no URL in it.
        said = " ".join(str(exc).split())[:_MESSAGE_LIMIT]
        return TemporaryError(f"{where}: not sent (the egress proxy answered {said})")
    # These fail before a byte of the request leaves: nothing can have been applied.
    never_sent = isinstance(
        exc,
        httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.UnsupportedProtocol,
    )
    if never_sent:
        return TemporaryError(f"{where}: not sent ({kind})")
    if method in _MUTATING:
        return AmbiguousError(f"{where}: answer lost ({kind}); the change may have been applied")
    return TemporaryError(f"{where}: no answer ({kind})")
