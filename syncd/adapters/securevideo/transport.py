"""Lanes: at most C requests on the wire at once, each on a keep-alive connection of its own.

``LaneTransport`` is an ``httpx.BaseTransport`` for an ``httpx.Client``: it hands each request to
a free lane and takes the lane back when the exchange is over, however it ended.
"""

from __future__ import annotations

import os
import queue
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import httpx

__all__ = ["LANE_TAKEN_AT", "Egress", "LaneTransport", "http_transport", "tls_failure"]

#: Request extension the transport sets to its clock's reading when the request got a lane: the
#: moment from which its time is SecureVideo's (and the network's) rather than a wait for a turn.
LANE_TAKEN_AT: Final = "syncd.lane_taken_at"


@dataclass(frozen=True, slots=True)
class Egress:
    """The way out: an optional proxy to tunnel through, and the CAs to trust.

    ``proxy_url``: an ``http://`` or ``https://`` proxy; requests to an https:// API go through
    it in a CONNECT tunnel, so TLS still runs end to end with SecureVideo (or with a
    TLS-inspecting proxy, whose CA ``ca_bundle_file`` then names).  ``ca_bundle_file``: a PEM
    file that replaces the built-in CA certificates, for the API and an https:// proxy alike.
    Verification is always on: there is no way to turn it off.
    """

    proxy_url: str | None = None
    ca_bundle_file: str | os.PathLike[str] | None = None

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies the server with: a context of the bundle, or its defaults."""
        if self.ca_bundle_file is None:
            return True
        # create_default_context: CERT_REQUIRED and hostname checks, and only this file's CAs.
        return ssl.create_default_context(cafile=os.fspath(self.ca_bundle_file))

    def proxy(self, verify: ssl.SSLContext | bool) -> httpx.Proxy | None:
        if self.proxy_url is None:
            return None
        # The bundle also verifies an https:// proxy; httpcore refuses a context for http://.
        https = self.proxy_url.startswith("https:")
        context = verify if https and isinstance(verify, ssl.SSLContext) else None
        return httpx.Proxy(self.proxy_url, ssl_context=context)


DIRECT: Final = Egress()


def tls_failure(exc: BaseException) -> str | None:
    """Why the TLS handshake failed, when that is what ``exc`` (httpx's, wrapping httpcore's,
    wrapping the ssl module's) comes from; None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError) and current.verify_message:
            return f"certificate not trusted: {current.verify_message}"
        if isinstance(current, ssl.SSLError):
            return " ".join(str(current.reason or current).split())
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def http_transport(connections: int, egress: Egress = DIRECT) -> httpx.HTTPTransport:
    """An HTTP transport keeping up to ``connections`` connections alive, through ``egress``."""
    verify = egress.verify()
    # trust_env=False: nothing from the environment (proxies, .netrc, SSL_CERT_FILE); the
    # settings say where requests go and what is trusted.
    return httpx.HTTPTransport(
        verify=verify,
        proxy=egress.proxy(verify),
        trust_env=False,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


class LaneTransport(httpx.BaseTransport):
    """``lanes`` HTTP transports of one keep-alive connection each; a request takes a free one.

    A turn covers the exchange only (the Client builds the request before and decodes the answer
    after it), so the turns follow SecureVideo's latency and nothing else.  One connection per
    lane, because httpcore's pool polls every idle connection of a pool at each request and answer,
    and waiting inside the pool costs far more CPU than waiting for a lane (a C queue).

    ``transport``, for tests: every lane is that one transport, so only the turns are bounded.
    ``egress``: the proxy and CAs of every lane's own transport (unused with ``transport``).
    """

    def __init__(
        self,
        lanes: int,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        egress: Egress = DIRECT,
    ) -> None:
        if lanes < 1:
            raise ValueError("a LaneTransport needs at least one lane")
        self._lanes: list[httpx.BaseTransport]
        if transport is None:
            self._lanes = [http_transport(1, egress) for _ in range(lanes)]
        else:
            self._lanes = [transport] * lanes
        self._clock = clock
        self._free: queue.SimpleQueue[httpx.BaseTransport] = queue.SimpleQueue()
        for lane in self._lanes:
            self._free.put(lane)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        lane = self._free.get()
        request.extensions[LANE_TAKEN_AT] = self._clock()
        try:
            response = lane.handle_request(request)
            try:
                # Read within the turn: until its body is read the answer holds the connection.
                response.read()
            except BaseException:
                response.close()
                raise
            return response
        finally:
            self._free.put(lane)
            # Give up the GIL for a moment: the thread waiting for this lane has its request
            # built and sends at once, instead of waiting while this one decodes its answer and
            # writes the ledger.  B / wall at C = 16, ten paired runs: 0.918 against 0.908.
            time.sleep(0)

    def close(self) -> None:
        for lane in {id(lane): lane for lane in self._lanes}.values():
            lane.close()
