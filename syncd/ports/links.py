"""Join links: how a guest the clinic invites itself (delivery "N") gets into the session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol
from urllib.parse import quote

__all__ = [
    "JOIN_URL_BASE",
    "GuestCode",
    "JoinLinkRecord",
    "LinkGateway",
    "LinkRepository",
    "join_url",
]

#: Where a guest joins with a connect code (SecureVideo's documents; NOTES.md).
JOIN_URL_BASE: Final = "https://hub.securevideo.com/Pass/Join/"


def join_url(connect_code: str, passkey: str | None) -> str:
    """The guest's join URL, with ``?passkey=`` when SecureVideo gave the guest a Passkey."""
    url = JOIN_URL_BASE + quote(connect_code.strip(), safe="")
    if passkey and passkey.strip():
        url += "?passkey=" + quote(passkey.strip(), safe="")
    return url


@dataclass(frozen=True, slots=True)
class JoinLinkRecord:
    """A guest's join URL while its session is active.  The URL carries the connect code, an
    access credential: it is kept out of ``repr`` and never logged."""

    appointment_id: str
    participant_external_id: str = field(repr=False)
    session_id: int
    participation_id: int
    join_url: str = field(repr=False)
    changed_at: datetime


class LinkRepository(Protocol):
    """Join links for guests the clinic invites itself (``SYNCD_LINKS__ENABLED``)."""

    def all(self) -> list[JoinLinkRecord]:
        """Every row, by appointment and participant."""
        ...

    def put(self, record: JoinLinkRecord) -> None:
        """Insert or replace the row of the record's appointment and participant."""
        ...

    def delete(self, appointment_id: str, participant_external_id: str) -> bool:
        """Remove one row; whether it was there."""
        ...


@dataclass(frozen=True, slots=True)
class GuestCode:
    """A guest's connect code (and Passkey) in one active session, as SecureVideo reports it.

    The code is an access credential: it is kept out of ``repr``, and only ``syncd links`` and the
    ``guest_join_link`` view ever show it."""

    session_id: int
    schedule_ts: datetime | None
    #: ScheduleType "Cancelled": a tombstone, never a way in
    cancelled: bool
    participation_id: int
    external_id: str | None = field(repr=False)
    #: ShouldAutoDeliverCode: E, S or N
    deliver: str
    connect_code: str = field(repr=False)
    passkey: str | None = field(repr=False)

    @property
    def url(self) -> str:
        return join_url(self.connect_code, self.passkey)


class LinkGateway(Protocol):
    """What join links read from SecureVideo.  Raises ``syncd.core.errors``."""

    def guest_codes(self, host_external_id: str) -> list[GuestCode]:
        """The guests (never the host) of the host's active sessions, with their codes."""
        ...
