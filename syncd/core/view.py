"""What syncd knows SecureVideo shows, worked out from answers instead of read again.

Pure functions over ``RemoteSession``s: after a call succeeds its answer (or, for a cancel or a
removal, the call itself) tells how the sessions now stand, so the next plan needs no new read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from syncd.core.domain import (
    AddParticipant,
    CancelSession,
    CreateSession,
    Guest,
    MoveSession,
    Operation,
    RemoteParticipant,
    RemoteSession,
    RemoveParticipant,
    UpdateParticipant,
)


def session_id_of(op: Operation) -> int | None:
    """The session an operation acts on; None for a create (the session does not exist yet)."""
    return None if isinstance(op, CreateSession) else getattr(op, "session_id", None)


def after(
    view: Sequence[RemoteSession], op: Operation, result: RemoteSession | None
) -> list[RemoteSession]:
    """The observed sessions as they stand after ``op`` succeeded with answer ``result``."""
    sid = session_id_of(op)
    out = list(view)
    if result is not None:
        if isinstance(op, CreateSession | MoveSession):
            host = op.host_external_id
        else:
            host = next((s.host_external_id for s in view if s.session_id == sid), "")
        answered = _with_sent_packets(replace(result, host_external_id=host), op)
        return [s for s in out if s.session_id != answered.session_id] + [answered]
    if isinstance(op, CancelSession):
        return [replace(s, schedule_type="Cancelled") if s.session_id == sid else s for s in out]
    if isinstance(op, MoveSession):
        # No answer to read: the session is now in the new host's list, its guests unchanged.
        return [
            replace(s, host_external_id=op.host_external_id) if s.session_id == sid else s
            for s in out
        ]
    if isinstance(op, RemoveParticipant):
        return [
            replace(
                s,
                participants=tuple(
                    p for p in s.participants if p.participation_id != op.participation_id
                ),
            )
            if s.session_id == sid
            else s
            for s in out
        ]
    return out


def _with_sent_packets(result: RemoteSession, op: Operation) -> RemoteSession:
    """SecureVideo's answer does not report PacketIds: mark the ones this call just sent."""
    if isinstance(op, AddParticipant | UpdateParticipant):
        sent = {op.guest.external_id: op.guest}
    elif isinstance(op, CreateSession):
        sent = {g.external_id: g for g in op.guests}
    else:
        return result
    host, *guests = result.participants
    # The host is the first participant and never one of the guests sent.
    marked = [_sent(p, sent) for p in guests]
    if isinstance(op, AddParticipant | UpdateParticipant):
        marked = [_sent(host, sent), *marked]
    else:
        marked = [host, *marked]
    return replace(result, participants=tuple(marked))


def _sent(p: RemoteParticipant, sent: Mapping[str, Guest]) -> RemoteParticipant:
    guest = sent.get(p.external_id) if p.external_id else None
    if guest is None:
        return p
    return replace(p, packet_id=guest.packet_id, packet_known=True)
