"""How many messages SecureVideo will send patients for a plan: the cost ``syncd plan`` shows.

SecureVideo e-mails or texts every guest whose delivery is "E" or "S": an invitation when a
session is created with them or they are added (or, on the emulator's reading, when their address
changes), a reschedule notice when the time changes, a cancellation when the session is cancelled
or they are removed.  A host move (``PUT /sessionhost``) sends nothing.  Counts only: who gets
them is never shown.
"""

from __future__ import annotations

from collections.abc import Sequence

from syncd.core.domain import (
    AddParticipant,
    CancelSession,
    CreateSession,
    Guest,
    Operation,
    RemoteParticipant,
    RemoteSession,
    RemoveParticipant,
    RescheduleSession,
    UpdateParticipant,
)
from syncd.core.view import after

__all__ = ["DELIVERING", "notices_of", "notices_per_op"]

#: the deliveries SecureVideo sends notices on ("N": the clinic sends its own)
DELIVERING = frozenset({"E", "S"})


def notices_per_op(ops: Sequence[Operation], observed: Sequence[RemoteSession]) -> list[int]:
    """The messages each operation sends, applied in order to what SecureVideo shows."""
    view = list(observed)
    counts: list[int] = []
    for op in ops:
        counts.append(notices_of(op, view))
        view = after(view, op, None)
    return counts


def notices_of(op: Operation, observed: Sequence[RemoteSession]) -> int:
    """The messages one operation sends, given the sessions as they stand before it."""
    session = next((s for s in observed if s.session_id == getattr(op, "session_id", None)), None)
    guests: tuple[RemoteParticipant, ...] = () if session is None else session.guests
    match op:
        case CreateSession():
            return sum(g.deliver in DELIVERING for g in op.guests)
        case RescheduleSession() | CancelSession():
            return sum(p.deliver in DELIVERING for p in guests)
        case AddParticipant():
            return int(op.guest.deliver in DELIVERING)
        case RemoveParticipant():
            return sum(
                p.deliver in DELIVERING for p in guests if p.participation_id == op.participation_id
            )
        case UpdateParticipant():
            shown = next((p for p in guests if p.participation_id == op.participation_id), None)
            return int(shown is not None and _address_changed(shown, op.guest))
    return 0


def _address_changed(shown: RemoteParticipant, guest: Guest) -> bool:
    """The address SecureVideo delivers to changes: another method, or a new e-mail or number."""
    if guest.deliver not in DELIVERING:
        return False
    if guest.deliver != shown.deliver:
        return True
    if guest.deliver == "E":
        return guest.email.strip().casefold() != shown.email.strip().casefold()
    return guest.sms.strip() != shown.sms.strip()
