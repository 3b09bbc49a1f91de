"""The views of the health state that leave the process: the heartbeat file ``syncd
healthcheck`` reads, and the optional HTTP listener for ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from syncd.core.errors import ConfigError
from syncd.runtime.health import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_STALE_AFTER,
    HealthState,
    heartbeat_path,
)
from syncd.runtime.settings import Settings

__all__ = ["HealthServer", "maybe_serve_health", "read_heartbeat"]

log = structlog.get_logger("syncd.health")


# --- the HTTP listener -------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    health: HealthState


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "syncd"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                verdict = self.server.health.readiness()
                body = json.dumps(verdict.as_dict(), indent=1).encode()
                self._send(200 if verdict.ok else 503, "application/json", body)
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, self.server.health.metrics_text())
            else:
                self._send(
                    404, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n"
                )
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the listener
            log.error("health_request_failed", path=path, error_type=type(exc).__name__)
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Every scrape would be a line on stderr in another format; the metrics count enough.
        pass


class HealthServer:
    """``/healthz`` and ``/metrics`` on a daemon thread; ``close()`` stops it and frees the port."""

    def __init__(self, health: HealthState, host: str, port: int) -> None:
        server_class: type[_Server] = _Server
        if ":" in host:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self._httpd = server_class((host, port), _Handler)
        except OSError as exc:
            raise _listen_error(host, port, exc) from None
        self._httpd.health = health
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="syncd-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


def _listen_error(host: str, port: int, exc: OSError) -> ConfigError:
    """A listener that cannot start, as the setting to change: one line and exit 2."""
    shown = f"[{host}]" if ":" in host else host
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            "SYNCD_HEALTH__PORT",
            f"health port {shown}:{port} is in use (another syncd, or another service): "
            "choose a free port",
        )
    if exc.errno == errno.EACCES:
        return ConfigError(
            "SYNCD_HEALTH__PORT", f"may not listen on {shown}:{port} (ports below 1024 need root)"
        )
    return ConfigError(
        "SYNCD_HEALTH__HOST",
        f"cannot listen on {shown}:{port} ({exc.strerror or type(exc).__name__}): use an address "
        "of this machine, e.g. 127.0.0.1 or 0.0.0.0",
    )


class _HeartbeatWriter:
    """Rewrites the heartbeat file every HEARTBEAT_INTERVAL and right after each pass."""

    def __init__(
        self, health: HealthState, path: Path, interval: float = HEARTBEAT_INTERVAL
    ) -> None:
        self._health = health
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="syncd-heartbeat", daemon=True)

    def start(self) -> _HeartbeatWriter:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._health.changed().set()
        self._thread.join(timeout=5)
        # A heartbeat left behind would tell `syncd healthcheck` a stopped daemon is fine.
        self._path.unlink(missing_ok=True)

    def _run(self) -> None:
        due = self._health.changed()
        while not self._stop.is_set():
            due.clear()
            self._write()
            due.wait(self._interval)

    def _write(self) -> None:
        try:
            self._health.write_heartbeat(self._path)
        except OSError as exc:
            if not self._failing:
                # Once per outage: the file is rewritten every few seconds.
                log.warning("heartbeat_failed", path=str(self._path), error_type=type(exc).__name__)
            self._failing = True
        else:
            self._failing = False


@contextmanager
def maybe_serve_health(settings: Settings, health: HealthState) -> Iterator[HealthServer | None]:
    """Around ``run_daemon``: keep the heartbeat file, and serve HTTP when enabled.

    ``health`` must already be wired (the composition root does it): reported to by the client and
    the runner, and attached to its probes.  This only starts the threads that read it.
    """
    heartbeat = _HeartbeatWriter(health, heartbeat_path(settings)).start()
    server: HealthServer | None = None
    try:
        if settings.health.enabled:
            server = HealthServer(health, settings.health.host, settings.health.port).start()
            log.info("health_listening", host=settings.health.host, port=server.port)
        yield server
    finally:
        if server is not None:
            server.close()
            log.info("health_stopped")
        heartbeat.close()


# --- ``syncd healthcheck`` ---------------------------------------------------------------------


def read_heartbeat(path: Path, *, now: float | None = None) -> tuple[bool, str]:
    """The container's health check: (healthy, one line saying why)."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        written_at = float(body["written_at"])
        status = str(body["status"])
        reasons = [str(r) for r in body.get("reasons", [])]
    except FileNotFoundError:
        return False, f"no heartbeat at {path}: is `syncd run` running with this data dir?"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"unreadable heartbeat at {path} ({type(exc).__name__})"
    age = (time.time() if now is None else now) - written_at
    if age > HEARTBEAT_STALE_AFTER:
        return False, f"heartbeat is {age:.0f} s old: the daemon is stopped or hung"
    if status != "ok":
        return False, "; ".join(reasons) or "failing"
    last = body.get("last_success_age_seconds")
    state = (body.get("pass") or {}).get("state")
    if state == "standby":
        return True, "ok: standby (another instance holds the leader lease)"
    if state == "running" and (last is None or last > body.get("stale_after_seconds", 0)):
        return True, "ok: a long pass is making progress"
    return True, f"ok: last successful pass {last} s ago"
