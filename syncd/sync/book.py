"""The appointment book: what a pass decided for each appointment, written to the ledger and
logged.  One place for synced, skipped, parked and deferred, so every caller writes them alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog

from syncd.core.applied import AppliedState
from syncd.core.domain import Appointment, Presence, RemoteSession
from syncd.ports.clock import Clock
from syncd.ports.ledger import Ledger, LedgerTransaction
from syncd.sync.applied import write_applied
from syncd.sync.report import Disposition

log = structlog.get_logger("syncd.engine")

#: what to write in a transaction the caller opens
Write = Callable[[LedgerTransaction], None]


class AppointmentBook:
    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self._ledger = ledger
        self._clock = clock

    def synced_write(
        self,
        appt: Appointment,
        observed: Sequence[RemoteSession],
        *,
        unresolved: bool,
        state: AppliedState | None = None,
        note: str | None = None,
    ) -> Write:
        """Marks the appointment synced with the session it now has, and ``state`` (when given:
        it differs from what is on file) as what syncd applied.  What it writes is worked out
        here, so that the transaction it runs in holds the ledger for the writes only."""
        live = [
            s
            for s in observed
            if not s.is_cancelled and s.host_external_id == appt.provider_external_id
        ]
        session = live[0] if live and appt.presence is Presence.LIVE else None
        aid, event_id = appt.appointment_id, appt.event_id

        def write(tx: LedgerTransaction) -> None:
            now = self._clock.now()
            tx.appointments.mark_synced(
                aid,
                event_id=event_id,
                session_id=session.session_id if session else None,
                host_external_id=session.host_external_id if session else None,
                now=now,
                # what the outcome collector and the billing report select by
                schedule_ts=session.schedule_ts if session else None,
                reason=note,
            )
            if state is not None:
                write_applied(tx, aid, state, now)
            if unresolved:
                # Calls whose answer was lost are settled now that SecureVideo was read and
                # matches.
                tx.operations.resolve_open(aid, now)

        return write

    def synced(
        self,
        appt: Appointment,
        observed: Sequence[RemoteSession],
        *,
        applied: bool,
        unresolved: bool,
        note: str | None = None,
        state: AppliedState | None = None,
    ) -> Disposition:
        write = self.synced_write(appt, observed, unresolved=unresolved, note=note, state=state)
        with self._ledger.begin() as tx:
            write(tx)
        return Disposition.SYNCED if applied else Disposition.UNCHANGED

    def skipped(
        self, appt: Appointment, reason: str, *, state: AppliedState | None = None
    ) -> Disposition:
        """``state``: what syncd applied, when it differs from what is on file."""
        with self._ledger.begin() as tx:
            now = self._clock.now()
            tx.appointments.mark_skipped(
                appt.appointment_id, event_id=appt.event_id, reason=reason, now=now
            )
            if state is not None:
                write_applied(tx, appt.appointment_id, state, now)
        log.info("appointment_skipped", appointment_id=appt.appointment_id, reason=reason)
        return Disposition.SKIPPED

    def parked(
        self,
        appointment_id: str,
        event_id: int,
        reason: str,
        *,
        field_name: str | None = None,
        attempts: int | None = None,
    ) -> Disposition:
        """Stop trying until a newer row or ``syncd retry``."""
        with self._ledger.begin() as tx:
            tx.appointments.park(
                appointment_id,
                reason=reason,
                attempts=attempts,
                now=self._clock.now(),
                event_id=event_id,
            )
        log.warning(
            "appointment_parked",
            appointment_id=appointment_id,
            reason=reason,
            field=field_name,
            event_id=event_id,
        )
        return Disposition.PARKED

    def deferred(self, appt: Appointment, attempts: int, until: datetime, reason: str) -> None:
        """Leave the appointment pending until ``until`` (naive UTC), when its back-off ends."""
        with self._ledger.begin() as tx:
            tx.appointments.schedule_retry(
                appt.appointment_id,
                attempts=attempts,
                next_attempt_at=until,
                reason=reason,
                now=self._clock.now(),
                event_id=appt.event_id,
            )
