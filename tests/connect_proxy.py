"""A minimal HTTP CONNECT proxy for tests: it tunnels bytes and counts the tunnels it opened.

Like an egress proxy in a clinic: it sees the target host and port of each CONNECT, never what
goes through the tunnel (TLS runs end to end between the client and the server).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType
from typing import Self

_HEAD_LIMIT = 64 * 1024


class ConnectProxy:
    """``with ConnectProxy() as proxy:`` listens on 127.0.0.1; ``proxy.url`` is its address."""

    def __init__(self, *, refuse: bytes | None = None) -> None:
        """``refuse``: a status line (b"407 Proxy Authentication Required") to answer every
        CONNECT with, instead of opening the tunnel."""
        self._refuse = refuse
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._targets: list[str] = []
        self._refused: list[str] = []
        self._open: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="proxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def connects(self) -> list[str]:
        """``host:port`` of every CONNECT tunnel opened, in order."""
        with self._lock:
            return list(self._targets)

    @property
    def refused(self) -> list[str]:
        """Request lines of anything that was not a CONNECT (plain proxied requests)."""
        with self._lock:
            return list(self._refused)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        # shutdown, not just close: close leaves the accepting thread blocked in accept().
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        upstream: socket.socket | None = None
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < _HEAD_LIMIT:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, _, rest = request_line.partition(" ")
            target = rest.split(" ", 1)[0]
            if method.upper() != "CONNECT":
                with self._lock:
                    self._refused.append(request_line)
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            if self._refuse is not None:
                with self._lock:
                    self._refused.append(request_line)
                client.sendall(b"HTTP/1.1 " + self._refuse + b"\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
            self._track(upstream)
            with self._lock:
                self._targets.append(target)
            client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            # Whatever the client sent after the head is already the tunnel's.
            leftover = head.split(b"\r\n\r\n", 1)[1]
            if leftover:
                upstream.sendall(leftover)
            self._pipe(client, upstream)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        a.settimeout(None)
        b.settimeout(None)
        while not self._stopped.is_set():
            readable, _, _ = select.select([a, b], [], [], 0.2)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
