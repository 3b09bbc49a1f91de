"""Lanes: at most C requests on the wire at once, each on a keep-alive connection of its own.

``LaneTransport`` is an ``httpx.BaseTransport`` for an ``httpx.Client``: it hands each request to
a free lane and takes the lane back when the exchange is over, however it ended.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Final

import httpx

__all__ = ["LANE_TAKEN_AT", "LaneTransport", "http_transport"]

#: Request extension the transport sets to its clock's reading when the request got a lane: the
#: moment from which its time is SecureVideo's (and the network's) rather than a wait for a turn.
LANE_TAKEN_AT: Final = "syncd.lane_taken_at"


def http_transport(connections: int) -> httpx.HTTPTransport:
    """An HTTP transport keeping up to ``connections`` connections alive."""
    # trust_env=False: nothing from the environment (proxies, .netrc, SSL_CERT_FILE).
    return httpx.HTTPTransport(
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
    """

    def __init__(
        self,
        lanes: int,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lanes < 1:
            raise ValueError("a LaneTransport needs at least one lane")
        self._lanes: list[httpx.BaseTransport]
        if transport is None:
            self._lanes = [http_transport(1) for _ in range(lanes)]
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
