"""The notices SecureVideo sends to a session's guests, counted — never their content.

The Sessions and Participants articles say when SecureVideo e-mails or texts a participant whose
ShouldAutoDeliverCode is "E" or "S": an invitation when a session is created with them or they are
added, a reschedule notice when the session's time changes, a cancellation when the session is
cancelled or an invited participant is removed.  Each is one message on one channel; the emulator
counts them per participation and channel so that tests and the benchmark can say how many
messages a patient got for each EHR change.

A participant whose e-mail, SMS number or delivery method is changed (``PUT /participant``) is
counted as getting an invitation at the new address: the articles do not say, and without one the
patient would hold no connect code at the address on file.  *Unconfirmed*; syncd's behaviour does
not depend on it (it makes one update either way).

Over HTTP: ``GET /emulator/notices`` (optionally ``?sessionId=N``) answers
``{"Total": n, "ByKind": {...}, "Repeats": r, "Notices": [{"Kind", "SessionId",
"ParticipationId", "Channel", "Repeat"}]}`` (a repeat: a reschedule to the time the session
already had); ``DELETE /emulator/notices`` forgets them.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CANCELLATION",
    "DELIVERING",
    "INVITATION",
    "KINDS",
    "RESCHEDULE",
    "Notice",
    "NoticeLog",
    "notices_json",
]

INVITATION: Final = "invitation"
RESCHEDULE: Final = "reschedule"
CANCELLATION: Final = "cancellation"
KINDS: Final = (INVITATION, RESCHEDULE, CANCELLATION)
#: the ShouldAutoDeliverCode values that make SecureVideo send notices ("N": the clinic does)
DELIVERING: Final = ("E", "S")


@dataclass(frozen=True, slots=True)
class Notice:
    """One message SecureVideo sent: which kind, to which participation, on which channel."""

    kind: str
    session_id: int
    participation_id: int
    #: "E" (e-mail) or "S" (text message)
    channel: str
    #: a reschedule to the time the session already had: a notice that told the patient nothing
    #: (what a blindly repeated call after a lost answer would cost)
    repeat: bool = False


class NoticeLog:
    """The notices sent so far, in order.  Thread-safe on its own; the state also holds its lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: list[Notice] = []

    def send(
        self,
        kind: str,
        session_id: int,
        participation_id: int,
        channel: str,
        *,
        repeat: bool = False,
    ) -> bool:
        """Record a notice if ``channel`` delivers (E or S); True when one was sent."""
        if channel not in DELIVERING:
            return False
        with self._lock:
            self._sent.append(Notice(kind, session_id, participation_id, channel, repeat))
        return True

    def all(self, session_id: int | None = None) -> list[Notice]:
        with self._lock:
            return [n for n in self._sent if session_id is None or n.session_id == session_id]

    def counts(self, session_id: int | None = None) -> Counter[tuple[int, str]]:
        """Notices per (participation, channel)."""
        return Counter((n.participation_id, n.channel) for n in self.all(session_id))

    def clear(self) -> None:
        with self._lock:
            self._sent.clear()


def notices_json(notices: list[Notice]) -> dict[str, Any]:
    by_kind = Counter(n.kind for n in notices)
    return {
        "Total": len(notices),
        "ByKind": {kind: by_kind.get(kind, 0) for kind in KINDS},
        "Repeats": sum(n.repeat for n in notices),
        "Notices": [
            {
                "Kind": n.kind,
                "SessionId": n.session_id,
                "ParticipationId": n.participation_id,
                "Channel": n.channel,
                "Repeat": n.repeat,
            }
            for n in notices
        ],
    }
