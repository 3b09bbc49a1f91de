"""The executor: one operation as intent → call → result.

The intent is committed before the request leaves and the result after a definite answer, so a
crash or a lost answer leaves an open intent that the next attempt resolves by reading
SecureVideo again, never by sending the same POST blindly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

import structlog

from syncd.core.applied import (
    NOTHING_APPLIED,
    AppliedState,
    applied_after,
    is_schedule_drift,
    participation_of,
    sent_guest,
)
from syncd.core.domain import (
    AddParticipant,
    Appointment,
    CancelSession,
    CreateSession,
    Guest,
    MoveSession,
    Operation,
    RemoteSession,
    RemoveParticipant,
    RescheduleSession,
    UpdateParticipant,
    describe,
)
from syncd.core.errors import AmbiguousError, AuthenticationError, PermanentError, TemporaryError
from syncd.core.fingerprint import Fingerprints
from syncd.core.redact import redact
from syncd.core.view import session_id_of
from syncd.ports.clock import Clock
from syncd.ports.ledger import APPLIED, Ledger, LedgerTransaction, ParticipantRecord
from syncd.ports.securevideo import SessionGateway
from syncd.sync.applied import participant_record, write_applied
from syncd.sync.book import Write
from syncd.sync.report import PassReport

log = structlog.get_logger("syncd.engine")

#: Given a call's answer: the writes that settle the appointment in the same commit as the
#: call's result, or None when SecureVideo does not match yet.
Finish = Callable[[RemoteSession | None], Write | None]
#: Called at the instants whose crash behaviour matters (see ``syncd.testing.crashpoints``).
Checkpoint = Callable[[str], None]


def no_checkpoint(_name: str) -> None:
    pass


def ledger_fingerprints(ledger: Ledger) -> Fingerprints:
    """Fingerprints under this ledger's key: how participants are shown and journalled."""
    with ledger.begin() as tx:
        return Fingerprints(tx.cursor.fingerprint_key())


@dataclass(frozen=True, slots=True)
class Applied:
    """SecureVideo's answer (None for a cancel or removal), and whether the appointment was
    settled in the same commit."""

    result: RemoteSession | None
    settled: bool


def call(gateway: SessionGateway, op: Operation) -> RemoteSession | None:
    match op:
        case CreateSession():
            return gateway.create_session(op)
        case RescheduleSession():
            return gateway.reschedule_session(op.session_id, op.schedule_ts)
        case CancelSession():
            gateway.cancel_session(op.session_id)
            return None
        case MoveSession():
            return gateway.move_session(op.session_id, op.host_external_id)
        case AddParticipant():
            return gateway.add_participant(op.session_id, op.guest)
        case UpdateParticipant():
            return gateway.update_participant(op.participation_id, op.guest)
        case RemoveParticipant():
            gateway.remove_participant(op.participation_id)
            return None


class Executor:
    def __init__(
        self,
        ledger: Ledger,
        gateway: SessionGateway,
        clock: Clock,
        *,
        checkpoint: Checkpoint = no_checkpoint,
        fingerprints: Fingerprints | None = None,
    ) -> None:
        """``fingerprints``: by default the ledger's own (``ledger_fingerprints``)."""
        self._ledger = ledger
        self._gateway = gateway
        self._clock = clock
        self._checkpoint = checkpoint
        self._fingerprints = fingerprints or ledger_fingerprints(ledger)

    def apply(
        self,
        op: Operation,
        appt: Appointment,
        attempt: int,
        report: PassReport,
        *,
        finish: Finish | None = None,
    ) -> Applied:
        """Raises what the call raised, after journalling it as failed or ambiguous."""
        op_id = self._record_intent(op, appt, attempt)
        started = self._clock.monotonic()
        self._checkpoint("before_call")
        try:
            result = call(self._gateway, op)
        except (TemporaryError, PermanentError, AuthenticationError) as exc:
            self._record_failure(op, appt, attempt, op_id, exc, started, report)
            raise
        duration_ms = int((self._clock.monotonic() - started) * 1000)
        report.operations[f"{op.kind}:{APPLIED}"] += 1
        self._checkpoint("after_call")
        session_id = result.session_id if result is not None else session_id_of(op)
        settle = finish(result) if finish is not None else None
        effects = self._effects(op, appt, result, settling=settle is not None)
        with self._ledger.begin() as tx:
            tx.operations.record_result(
                op_id, state=APPLIED, detail=None, session_id=session_id, now=self._clock.now()
            )
            effects(tx)
            if settle is not None:
                settle(tx)
        self._checkpoint("after_commit")
        log.info(
            "operation",
            appointment_id=appt.appointment_id,
            op=op.kind,
            session_id=session_id,
            participant=self._participant(op),
            outcome=APPLIED,
            attempt=attempt,
            duration_ms=duration_ms,
        )
        return Applied(result, settled=settle is not None)

    def _participant(self, op: Operation) -> str | None:
        """The fingerprint of the participant a call is about, for the log."""
        shown = describe(op, self._fingerprints).get("participant_external_id")
        return None if shown is None else str(shown)

    def _record_intent(self, op: Operation, appt: Appointment, attempt: int) -> int:
        # The journal keeps the participant's fingerprint, never the external id (often an MRN).
        participant = describe(op, self._fingerprints).get("participant_external_id")
        now = self._clock.now()
        with self._ledger.begin() as tx:
            op_id = tx.operations.record_intent(
                appointment_id=appt.appointment_id,
                event_id=appt.event_id,
                op=op.kind,
                session_id=session_id_of(op),
                participant_external_id=str(participant) if participant else None,
                attempt=attempt,
                now=now,
                pid=os.getpid(),
            )
            if isinstance(op, CreateSession):
                # With the intent, not the result: a crash after SecureVideo created the session
                # must not leave it under a host the ledger never heard of, where no later pass
                # looks once the provider changes again.  Every other live session was cancelled,
                # and that committed, before a create is planned.
                tx.appointments.set_session(
                    appt.appointment_id,
                    session_id=None,
                    host_external_id=op.host_external_id,
                    now=now,
                )
                # The ExternalSessionId too: a new prefix must not give this appointment a
                # second one after a crash here.
                tx.appointments.record_applied(
                    appt.appointment_id,
                    external_session_id=op.external_session_id,
                    sent_schedule_ts=None,
                    now=now,
                )
                tx.participants.replace(
                    appt.appointment_id, [self._pending(appt, g, now) for g in op.guests]
                )
            elif isinstance(op, AddParticipant):
                tx.participants.put(self._pending(appt, op.guest, now))
        return op_id

    def _pending(self, appt: Appointment, guest: Guest, now: datetime) -> ParticipantRecord:
        """Ownership claimed before the call: if its answer is lost and the EHR then drops the
        guest, the participation the call made is still known as syncd's (by key), and removed.
        No participation id yet and no fields: the planner adopts what SecureVideo shows."""
        sent = sent_guest(guest, None, self._fingerprints)
        return replace(participant_record(appt.appointment_id, 0, sent, now), deliver=None)

    def _record_failure(
        self,
        op: Operation,
        appt: Appointment,
        attempt: int,
        op_id: int,
        exc: Exception,
        started: float,
        report: PassReport,
    ) -> None:
        duration_ms = int((self._clock.monotonic() - started) * 1000)
        if isinstance(exc, AmbiguousError):
            state, detail = "ambiguous", redact(exc.message, appt)
        else:
            state, detail = "failed", redact(str(exc), appt)
        report.operations[f"{op.kind}:{state}"] += 1
        with self._ledger.begin() as tx:
            tx.operations.record_result(op_id, state=state, detail=detail, now=self._clock.now())
        log.warning(
            "operation",
            appointment_id=appt.appointment_id,
            op=op.kind,
            session_id=session_id_of(op),
            participant=self._participant(op),
            outcome=state,
            attempt=attempt,
            duration_ms=duration_ms,
            reason=detail,
        )

    def _effects(
        self, op: Operation, appt: Appointment, result: RemoteSession | None, *, settling: bool
    ) -> Write:
        """What syncd applied, which SecureVideo won't tell later (the time and PacketIds sent,
        fingerprints of what else was sent), worked out here, outside the transaction: it is
        committed with the call's result.  ``settling``: the appointment is marked synced in the
        same transaction, which records the session too."""
        now = self._clock.now()
        aid = appt.appointment_id
        fp = self._fingerprints
        match op:
            case CreateSession() if result is not None:
                made = applied_after(NOTHING_APPLIED, op, result, fp)
                return partial(_created, aid, op, made, now, not settling)
            case RescheduleSession() if result is None or not is_schedule_drift(
                result.schedule_ts, op.schedule_ts
            ):
                return partial(_rescheduled, aid, appt.external_session_id, op, now)
            case AddParticipant() | UpdateParticipant() if result is not None:
                pid = (
                    op.participation_id
                    if isinstance(op, UpdateParticipant)
                    else participation_of(op.guest, result)
                )
                sent = sent_guest(op.guest, pid, fp)
                return partial(_remembered, participant_record(aid, result.session_id, sent, now))
            case RemoveParticipant() if op.key:
                return partial(_removed, aid, op.key)
            case CancelSession():
                return partial(_cancelled, aid, appt.external_session_id, op.session_id, now)
            case MoveSession():
                return partial(_moved, aid, op, now)
            case _:
                return _nothing


def _created(
    aid: str,
    op: CreateSession,
    made: AppliedState,
    now: datetime,
    record_session: bool,
    tx: LedgerTransaction,
) -> None:
    if record_session:
        tx.appointments.set_session(
            aid, session_id=made.session_id, host_external_id=op.host_external_id, now=now
        )
    write_applied(tx, aid, made, now)


def _rescheduled(
    aid: str, esid: str, op: RescheduleSession, now: datetime, tx: LedgerTransaction
) -> None:
    tx.appointments.record_applied(
        aid, external_session_id=esid, sent_schedule_ts=op.schedule_ts, now=now
    )


def _remembered(p: ParticipantRecord, tx: LedgerTransaction) -> None:
    tx.participants.put(p)


def _removed(aid: str, key: str, tx: LedgerTransaction) -> None:
    tx.participants.delete(aid, key)


def _cancelled(aid: str, esid: str, session_id: int, now: datetime, tx: LedgerTransaction) -> None:
    if tx.appointments.forget_session(aid, session_id, now=now):
        tx.participants.delete_all_of(aid)
        tx.appointments.record_applied(
            aid, external_session_id=esid, sent_schedule_ts=None, now=now
        )


def _moved(aid: str, op: MoveSession, now: datetime, tx: LedgerTransaction) -> None:
    # The new host's list is where the session is read from now on.
    tx.appointments.set_session(
        aid, session_id=op.session_id, host_external_id=op.host_external_id, now=now
    )


def _nothing(_tx: LedgerTransaction) -> None:
    pass
