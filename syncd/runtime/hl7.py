"""The HL7 feed in ``syncd run``: each MLLP message mapped, stored durably, then acknowledged.

AA only after the ledger committed the message (or already held it); AE names the field that is
missing or invalid; AR is a message syncd does not take; a storage failure sends no ACK at all.
Logs and metrics carry control ids, appointment ids, types and ACK codes, never segment content.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from syncd.adapters.hl7 import (
    Hl7Mapping,
    Mapped,
    MllpListener,
    Outcome,
    Refused,
    ack_message,
    map_message,
)
from syncd.adapters.hl7.mapping import TRIGGERS
from syncd.adapters.hl7.mllp import server_context
from syncd.adapters.windows_zones import windows_zone_id
from syncd.core.errors import ConfigError
from syncd.ports.inbox import InboxMessage, InboxOutcome
from syncd.runtime.settings import Settings

__all__ = ["Hl7Service", "decode"]

log = structlog.get_logger("syncd.hl7")

_TOO_LONG = Refused("AR", None, "longer than SYNCD_HL7__MAX_MESSAGE_BYTES", None, None, None, "100")

ACK_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def decode(body: bytes) -> str:
    """The message text: UTF-8, else ISO 8859-1 (HL7's usual default); segments end with CR."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("latin-1")
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


@dataclass(frozen=True, slots=True)
class ListenerCheck:
    ok: bool
    details: dict[str, Any]
    problem: str | None


class Hl7Service:
    """The listener and what it does with a message.  ``store`` commits or raises."""

    def __init__(
        self,
        settings: Settings,
        store: Callable[[InboxMessage], InboxOutcome],
        *,
        registry: CollectorRegistry | None = None,
        checkpoint: Callable[[str], None] = lambda _name: None,
    ) -> None:
        """``checkpoint`` is called as ``hl7_after_commit`` between the commit and the ACK (the
        crash test kills the process there)."""
        hl7 = settings.hl7
        self._store = store
        self._checkpoint = checkpoint
        self._mapping = Hl7Mapping(
            zone=settings.hl7_zone(),
            windows_zone=windows_zone_id,
            appointment_id=hl7.appointment_id,
        )
        tls = None
        if hl7.tls_cert_file is not None and hl7.tls_key_file is not None:
            try:
                tls = server_context(str(hl7.tls_cert_file), str(hl7.tls_key_file))
            except (OSError, ValueError) as exc:
                problem = f"cannot load the certificate and key: {type(exc).__name__}"
                raise ConfigError("SYNCD_HL7__TLS_CERT_FILE", problem) from None
        try:
            self.listener = MllpListener(
                hl7.host,
                hl7.port,
                self.handle,
                tls=tls,
                max_message_bytes=hl7.max_message_bytes,
                idle_seconds=hl7.idle_seconds,
            )
        except OSError as exc:
            raise ConfigError(
                "SYNCD_HL7__PORT", f"cannot listen on {hl7.host}:{hl7.port}: {exc.strerror}"
            ) from None
        self._lock = threading.Lock()
        self._last_store_failed = False
        registry = registry or CollectorRegistry()
        self.messages = Counter(
            "syncd_hl7_messages",
            "HL7 messages received, by trigger event (other: not one syncd takes) and ACK code "
            "(none: not stored, no ACK sent)",
            ["type", "ack"],
            registry=registry,
        )
        self.ack_latency = Histogram(
            "syncd_hl7_ack_seconds",
            "From a whole HL7 message received to its ACK ready (stored first when accepted)",
            buckets=ACK_LATENCY_BUCKETS,
            registry=registry,
        )

    def start(self) -> None:
        self.listener.start()
        host, port = self.listener.address
        log.info("hl7_listening", host=host, port=port, tls=self.listener.tls is not None)

    def stop(self) -> None:
        self.listener.stop()

    def handle(self, body: bytes) -> Outcome:
        started = time.perf_counter()
        # The listener hands over an over-long message as no bytes at all.
        result = map_message(decode(body), self._mapping) if body else _TOO_LONG
        if isinstance(result, Mapped):
            return self._accept(result, started)
        log.warning(
            "hl7_refused",
            ack=result.code,
            control_id=result.control_id,
            type=result.message_type,
            field=result.location,
            problem=result.problem,
        )
        # Only the triggers syncd takes become labels: a sender's own codes are unbounded.
        trigger = result.message_type
        self.messages.labels(trigger if trigger in TRIGGERS else "other", result.code).inc()
        ack = ack_message(
            result.code,
            control_id=result.control_id,
            trigger=trigger,
            version=result.version,
            sender=result.sender,
            receiver=result.receiver,
            location=result.location,
            error_code=result.error_code,
            text=f"{result.location or 'MSH'}: {result.problem}",
        )
        self.ack_latency.observe(time.perf_counter() - started)
        return Outcome(ack)

    def _accept(self, mapped: Mapped, started: float) -> Outcome:
        message = InboxMessage(
            control_id=mapped.control_id,
            appointment_id=mapped.appointment_id,
            message_type=mapped.message_type,
            message_at=mapped.message_at,
            row=mapped.row,
        )
        try:
            outcome = self._store(message)
        except Exception as exc:  # noqa: BLE001 - whatever the ledger raised, the sender resends
            with self._lock:
                self._last_store_failed = True
            log.warning(
                "hl7_not_stored",
                control_id=mapped.control_id,
                appointment_id=mapped.appointment_id,
                type=mapped.message_type,
                error=type(exc).__name__,
            )
            self.messages.labels(mapped.message_type, "none").inc()
            return Outcome(None)
        with self._lock:
            self._last_store_failed = False
        self._checkpoint("hl7_after_commit")
        log.info(
            "hl7_accepted",
            ack="AA",
            control_id=mapped.control_id,
            appointment_id=mapped.appointment_id,
            type=mapped.message_type,
            outcome=outcome,
        )
        self.messages.labels(mapped.message_type, "AA").inc()
        ack = ack_message(
            "AA",
            control_id=mapped.control_id,
            trigger=mapped.message_type,
            version=mapped.version,
            sender=mapped.sender,
            receiver=mapped.receiver,
        )
        self.ack_latency.observe(time.perf_counter() - started)
        return Outcome(ack)

    def check(self) -> ListenerCheck:
        """``/healthz``'s view of the listener: running, where, and whether storing works."""
        host, port = self.listener.address
        with self._lock:
            failing = self._last_store_failed
        running = self.listener.running
        details = {
            "listening": running,
            "address": f"{host}:{port}",
            "connections": self.listener.connections,
            "storing": not failing,
        }
        problem = None
        if not running:
            problem = "hl7: the MLLP listener is not running"
        elif failing:
            problem = "hl7: the last accepted message could not be stored (no ACK was sent)"
        return ListenerCheck(problem is None, details, problem)
