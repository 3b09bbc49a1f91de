"""MLLP: HL7 messages framed as ``<VT> message <FS><CR>`` on a TCP (optionally TLS) connection.

Each connection is served by its own thread and may carry any number of messages; a malformed one
is answered and the next read as usual.  When the handler has no answer (the message could not be
stored), the connection is closed without an ACK: the sender resends it.  The framing is written
here rather than taken from a library: python-hl7's MLLP server is asyncio, hl7apy's answers one
message per connection and drops a frame that is not HL7 without an AR.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["MllpListener", "Outcome", "frame"]

START: Final = b"\x0b"
END: Final = b"\x1c\r"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the handler answers: the ACK's text, or None to close without one."""

    ack: str | None


Handler = Callable[[bytes], Outcome]


def frame(message: str | bytes) -> bytes:
    body = message.encode("utf-8") if isinstance(message, str) else message
    return START + body + END


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    # Threads are joined by ``shutdown`` only for requests still open; connections are closed.
    block_on_close = False

    def __init__(self, listener: MllpListener, address: tuple[str, int]) -> None:
        self.listener = listener
        super().__init__(address, _Connection)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        context = self.listener.tls
        if context is not None:
            sock.settimeout(self.listener.idle_seconds)
            # The handshake happens on the first read, in the connection's own thread.
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        listener = self.server.listener
        sock: socket.socket = self.request
        sock.settimeout(listener.idle_seconds)
        listener.opened(sock)
        try:
            self._serve(sock, listener)
        except (OSError, ssl.SSLError):
            return  # the peer went away or idled out: nothing to answer
        finally:
            listener.closed(sock)

    def _serve(self, sock: socket.socket, listener: MllpListener) -> None:
        buffer = b""
        while not listener.stopping.is_set():
            start = buffer.find(START)
            end = buffer.find(END, start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0:
                body, buffer = buffer[start + 1 : end], buffer[end + len(END) :]
                # An over-long message is answered as no message at all: AR.
                too_long = len(body) > listener.max_message_bytes
                outcome = listener.handler(b"" if too_long else body)
                if outcome.ack is None:
                    return  # no ACK: close, and the sender resends
                sock.sendall(frame(outcome.ack))
                continue
            if start < 0:
                buffer = b""  # bytes outside a frame are no message
            elif len(buffer) - start > listener.max_message_bytes:
                # Too long to be a scheduling message: answer AR once its end arrives.
                buffer = self._skip(sock, buffer[end if end >= 0 else len(buffer) :])
                sock.sendall(frame(listener.handler(b"").ack or ""))
                continue
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk

    def _skip(self, sock: socket.socket, rest: bytes) -> bytes:
        """Discard up to the frame's end; what follows it."""
        while True:
            end = rest.find(END)
            if end >= 0:
                return rest[end + len(END) :]
            tail = rest[-1:]
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside an over-long message")
            rest = tail + chunk


class MllpListener:
    """Serves MLLP on ``host:port`` in its own threads until :meth:`stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        tls: ssl.SSLContext | None = None,
        max_message_bytes: int = 1 << 20,
        idle_seconds: float = 600.0,
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.max_message_bytes = max_message_bytes
        self.idle_seconds = idle_seconds
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server = _Server(self, (host, port))
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._open)

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="syncd-hl7-listener", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS for the listener: the certificate and key an operator names."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context
