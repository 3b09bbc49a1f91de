"""Drift detection: each new read of the account compared with what syncd applied.

Once per drift interval (``AccountSessions``), every synced appointment with a managed session is
compared with what the account shows (``core.drift.detect``).  A kind seen for the first time is
noted in the ledger and logged once as ``drift_detected`` (ids and kinds only); a kind no longer
seen is cleared and logged as ``drift_resolved``.  Under ``restore`` the drifted appointments are
made due, so the next pass plans them against what SecureVideo shows and makes the restoring
calls, with the planner's guards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import structlog

from syncd.core.drift import DriftPolicy, detect
from syncd.core.errors import AuthenticationError, PermanentError, TemporaryError
from syncd.core.fingerprint import Fingerprints
from syncd.core.planner import HELD_BY_DRIFT
from syncd.ports.clock import Clock
from syncd.ports.ledger import (
    SKIPPED,
    SYNCED,
    AppointmentRecord,
    DriftRecord,
    Ledger,
    LedgerTransaction,
)
from syncd.sync.account import AccountSessions, AccountSnapshot
from syncd.sync.applied import applied_of

__all__ = ["DriftCheck", "DriftWatch"]

log = structlog.get_logger("syncd.drift")

#: Enough to hold every row on file: what is no longer seen is cleared, so the table stays small.
_ALL = 1_000_000


@dataclass(slots=True)
class DriftCheck:
    """What one look at a new account read found."""

    examined: int = 0
    detected: list[DriftRecord] = field(default_factory=list)
    resolved: list[tuple[str, str]] = field(default_factory=list)
    #: appointments made due to restore them
    restoring: list[str] = field(default_factory=list)


class DriftWatch:
    """Looks at each account read once; run by the pass (leader only), after its own work."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        account: AccountSessions,
        clock: Clock,
        fingerprints: Fingerprints,
        policy: DriftPolicy = DriftPolicy.REPORT,
    ) -> None:
        self._ledger = ledger
        self._account = account
        self._clock = clock
        self._fp = fingerprints
        self._policy = policy
        self._seen = 0

    def check(self) -> DriftCheck | None:
        """None when there is no new read to look at (within the interval, or it failed).
        Raises ``AuthenticationError`` once when the interval's read was refused."""
        try:
            snapshot = self._account.current()
        except (TemporaryError, PermanentError, AuthenticationError) as exc:
            # The interval's read failed: said once, by the first pass that meets it.
            if self._account.reads == self._seen:
                return None
            self._seen = self._account.reads
            if isinstance(exc, AuthenticationError):
                raise
            log.warning("drift_unread", error=str(exc))
            return None
        if snapshot.number == self._seen:
            return None
        self._seen = snapshot.number
        found = DriftCheck()
        with self._ledger.begin() as tx:
            self._compare(tx, snapshot, found)
        for d in found.detected:
            log.warning(
                "drift_detected",
                appointment_id=d.appointment_id,
                kind=d.kind,
                session_id=d.session_id,
                policy=self._policy.value,
            )
        for aid, kind in found.resolved:
            log.info("drift_resolved", appointment_id=aid, kind=kind)
        return found

    def _compare(self, tx: LedgerTransaction, snapshot: AccountSnapshot, found: DriftCheck) -> None:
        ids = [t.appointment_id for t in tx.visits.targets()]
        records = tx.appointments.get_many(ids)
        people = tx.participants.of_appointments(ids)
        on_file: dict[str, dict[str, DriftRecord]] = {}
        for d in tx.drift.current(_ALL):
            on_file.setdefault(d.appointment_id, {})[d.kind] = d
        for aid in sorted(set(on_file) - records.keys()):
            # No managed session any more (the EHR cancelled it, or it is final): nothing drifts.
            tx.drift.clear(aid)
            found.resolved += [(aid, kind) for kind in sorted(on_file[aid])]
        now = self._clock.now()
        for aid, record in records.items():
            if not _comparable(record, snapshot.read_at):
                continue
            found.examined += 1
            applied = applied_of(record, people.get(aid, {}))
            listed = list(snapshot.by_external_id.get(applied.external_session_id or "", ()))
            mine = snapshot.by_id.get(record.session_id or 0)
            if mine is not None and mine not in listed:
                listed.append(mine)
            seen = {
                d.kind.value: d.session_id
                for d in detect(applied, listed, now=snapshot.read_at, fingerprints=self._fp)
            }
            kept = on_file.get(aid, {})
            for kind, session_id in seen.items():
                if kind not in kept:
                    row = DriftRecord(aid, kind, session_id, now)
                    tx.drift.note(row)
                    found.detected.append(row)
            gone = sorted(set(kept) - seen.keys())
            if gone:
                tx.drift.clear(aid, gone)
                found.resolved += [(aid, kind) for kind in gone]
            if seen and self._policy is DriftPolicy.RESTORE:
                self._make_due(tx, record, sorted(seen), now)
                found.restoring.append(aid)

    def _make_due(
        self, tx: LedgerTransaction, record: AppointmentRecord, kinds: list[str], now: datetime
    ) -> None:
        tx.appointments.schedule_retry(
            record.appointment_id,
            attempts=0,
            next_attempt_at=now,
            reason=f"drift: {', '.join(kinds)}: restoring",
            now=now,
            event_id=record.last_event_id,
        )


def _comparable(record: AppointmentRecord, read_at: datetime) -> bool:
    """Synced (or held by drift a pass saw first) and unchanged since the read: what syncd did
    after it, the read cannot show.  Pending ones are the pass's; other skips and parked ones
    keep what is on file."""
    settled = record.state == SYNCED or (
        record.state == SKIPPED and (record.reason or "").startswith(HELD_BY_DRIFT)
    )
    return settled and record.session_id is not None and record.updated_at < read_at
