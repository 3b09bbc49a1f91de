"""Join links for guests the clinic invites itself.

With ``ShouldAutoDeliverCode`` "N" SecureVideo sends the guest nothing: "the Session host, or your
system, will be responsible for providing invites and reminders".  The guest joins at
``https://hub.securevideo.com/Pass/Join/<ConnectCode>`` (``?passkey=`` when SecureVideo gives a
Passkey), and the connect code is only in SecureVideo's answer, so it is read at that moment:

* :func:`read_links` answers ``syncd links APPOINTMENT_ID``: every managed guest of the
  appointment's live session by the EHR's guest index and fingerprint, with its URL;
* :class:`LinkPublisher` keeps the ledger's ``join_link`` table (the EHR reads the
  ``guest_join_link`` view) to the delivery-N guests of active sessions, when enabled.

A connect code is an access credential: it is never logged, never in an exception's text, and
the records carrying it keep it out of ``repr``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from syncd.core.errors import AuthenticationError, InvalidRowError, PermanentError, TemporaryError
from syncd.core.fingerprint import Fingerprints
from syncd.ports.clock import Clock, SystemClock
from syncd.ports.ledger import Ledger, OutcomeTarget
from syncd.ports.links import GuestCode, JoinLinkRecord, LinkGateway
from syncd.ports.outbox import OutboxSource
from syncd.sync.load import RowReading

__all__ = ["GuestLink", "LinkPublisher", "Links", "PublishReport", "read_links"]

log = structlog.get_logger("syncd.links")


class UnknownAppointmentError(LookupError):
    """``syncd links`` was given an appointment the ledger does not know."""


@dataclass(frozen=True, slots=True)
class GuestLink:
    """One managed guest: where it is in the EHR's row, how it is shown, and its way in."""

    #: the 0-based position in the outbox row's participants; None when the row no longer has it
    index: int | None
    fingerprint: str
    #: E, S or N as SecureVideo has it; "" when the guest is not in the session
    deliver: str
    url: str | None = field(default=None, repr=False)
    #: why there is no URL
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Links:
    appointment_id: str
    session_id: int | None
    guests: tuple[GuestLink, ...] = ()
    #: why no guest can be given a link (no live session, cancelled, no longer listed)
    problem: str | None = None
    #: guests in the session without a ParticipantExternalId (added in SecureVideo by hand)
    unmanaged: int = 0


def read_links(
    *,
    ledger: Ledger,
    outbox: OutboxSource,
    reading: RowReading,
    gateway: LinkGateway,
    fingerprints: Fingerprints,
    appointment_id: str,
) -> Links:
    """The appointment's guests and their join URLs, read from SecureVideo now.  Raises
    :class:`UnknownAppointmentError`, and the gateway's errors."""
    with ledger.begin() as tx:
        record = tx.appointments.get(appointment_id)
    if record is None:
        raise UnknownAppointmentError(f"appointment {appointment_id!r} is not in the ledger")
    if record.session_id is None or record.host_external_id is None:
        problem = "no live SecureVideo session (not synced yet, or cancelled)"
        return Links(appointment_id, None, problem=problem)
    order = _ehr_order(outbox, reading, record.last_event_id)
    codes = [
        c for c in gateway.guest_codes(record.host_external_id) if c.session_id == record.session_id
    ]
    if not codes:
        problem = f"SecureVideo does not list session {record.session_id} (over a day past?)"
        return Links(appointment_id, record.session_id, problem=problem)
    if any(c.cancelled for c in codes):
        return Links(appointment_id, record.session_id, problem="the session is cancelled")
    managed = {c.external_id: c for c in codes if c.external_id is not None}
    guests = [
        GuestLink(order.get(ext), fingerprints.participant(ext), c.deliver, c.url)
        for ext, c in managed.items()
    ]
    missing = (ext for ext in order if ext not in managed)
    guests += [
        GuestLink(order[ext], fingerprints.participant(ext), "", problem="not in the session yet")
        for ext in missing
    ]
    guests.sort(key=lambda g: (g.index is None, g.index or 0, g.fingerprint))
    unmanaged = len(codes) - len(managed)
    return Links(appointment_id, record.session_id, tuple(guests), unmanaged=unmanaged)


def _ehr_order(outbox: OutboxSource, reading: RowReading, event_id: int) -> dict[str, int]:
    """The guests' positions in the appointment's newest outbox row; empty if it cannot be read
    (the links still come from SecureVideo, only without an index)."""
    rows = outbox.rows([event_id])
    if not rows:
        return {}
    try:
        appointment = reading.parse(rows[0])
    except InvalidRowError:
        return {}
    return {g.external_id: i for i, g in enumerate(appointment.guests)}


# --- the ledger's join_link table -----------------------------------------------------------------


@dataclass(slots=True)
class PublishReport:
    hosts_read: int = 0
    host_failures: int = 0
    put: int = 0
    removed: int = 0


class LinkPublisher:
    """Keeps ``join_link`` to the delivery-N guests of the managed sessions that are active.

    A row is removed when its session is cancelled, no longer listed, no longer the
    appointment's, the guest left it or changed delivery, or ``keep_after`` has passed since the
    session's time.  A host that cannot be read keeps its rows until the next refresh.  Disabled,
    it empties the table, so turning the setting off withdraws every code.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        gateway: LinkGateway,
        enabled: bool,
        keep_after: timedelta,
        clock: Clock | None = None,
    ) -> None:
        self.ledger = ledger
        self.gateway = gateway
        self.enabled = enabled
        self.keep_after = keep_after
        self.clock = clock or SystemClock()

    def publish(self) -> PublishReport:
        """One refresh.  Raises ``AuthenticationError``; other failed host reads are counted."""
        report = PublishReport()
        now = self.clock.now()
        with self.ledger.begin() as tx:
            existing = {(r.appointment_id, r.participant_external_id): r for r in tx.links.all()}
            targets = tx.visits.targets() if self.enabled else []
        live = [
            t for t in targets if t.schedule_ts is None or t.schedule_ts + self.keep_after > now
        ]
        codes, unread = self._read(sorted({t.host_external_id for t in live}), report)
        wanted = _wanted(live, codes, now)
        host_of = {t.appointment_id: t.host_external_id for t in live}
        keep = {k for k, r in existing.items() if host_of.get(r.appointment_id) in unread}
        with self.ledger.begin() as tx:
            for key, record in wanted.items():
                old = existing.get(key)
                if old is None or _moved(old, record):
                    tx.links.put(record)
                    report.put += 1
            for key in existing.keys() - wanted.keys() - keep:
                report.removed += tx.links.delete(*key)
        if report.put or report.removed or report.host_failures:
            log.info("links_refreshed", **_fields(report))
        return report

    def _read(
        self, hosts: Iterable[str], report: PublishReport
    ) -> tuple[dict[str, list[GuestCode]], set[str]]:
        codes: dict[str, list[GuestCode]] = {}
        unread: set[str] = set()
        for host in hosts:
            try:
                codes[host] = self.gateway.guest_codes(host)
            except AuthenticationError:
                raise
            except (TemporaryError, PermanentError) as exc:
                report.host_failures += 1
                unread.add(host)
                # Kind and status only: SecureVideo's free-text Message could quote anything.
                log.warning(
                    "links_host_unread",
                    provider_external_id=host,
                    error_type=type(exc).__name__,
                    status=getattr(exc, "status", None),
                )
                continue
            report.hosts_read += 1
        return codes, unread


def _wanted(
    live: Iterable[OutcomeTarget], codes: Mapping[str, list[GuestCode]], now: datetime
) -> dict[tuple[str, str], JoinLinkRecord]:
    wanted: dict[tuple[str, str], JoinLinkRecord] = {}
    for t in live:
        for c in codes.get(t.host_external_id, ()):
            if c.session_id != t.session_id or c.cancelled or c.deliver != "N":
                continue
            if c.external_id is None:
                continue  # not a guest syncd invited
            record = JoinLinkRecord(
                t.appointment_id, c.external_id, c.session_id, c.participation_id, c.url, now
            )
            wanted[(t.appointment_id, c.external_id)] = record
    return wanted


def _moved(old: JoinLinkRecord, new: JoinLinkRecord) -> bool:
    return (old.session_id, old.participation_id, old.join_url) != (
        new.session_id,
        new.participation_id,
        new.join_url,
    )


def _fields(report: PublishReport) -> dict[str, int]:
    return {
        "hosts_read": report.hosts_read,
        "host_failures": report.host_failures,
        "put": report.put,
        "removed": report.removed,
    }
