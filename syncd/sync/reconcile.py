"""The reconciler: one appointment's turn in a pass.

Plan from what the EHR wants, what syncd applied (the ledger) and what SecureVideo shows; apply
the plan one operation at a time, and after an answer that may or may not have been applied, look
again before planning again.  Rounds are bounded: a plan that does not converge parks the
appointment rather than loop and message the patient.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from syncd.core.applied import AppliedState, applied_after, kept_session_id
from syncd.core.domain import (
    Appointment,
    CreateSession,
    MoveSession,
    Operation,
    Presence,
    RemoteSession,
)
from syncd.core.drift import DriftKind, detect, kinds_of
from syncd.core.errors import (
    AmbiguousError,
    AuthenticationError,
    NotFoundError,
    PermanentError,
    TemporaryError,
)
from syncd.core.fingerprint import Fingerprints
from syncd.core.planner import PAST_VISIT_GRACE, Plan, is_outside_active_window, plan_in_full
from syncd.core.redact import redact
from syncd.core.retry import RetryPolicy, counts_as_failure
from syncd.core.view import after
from syncd.ports.clock import Clock
from syncd.ports.ledger import AppointmentRecord, DriftRecord
from syncd.sync.book import AppointmentBook, Write
from syncd.sync.execute import Executor
from syncd.sync.host_change import HostChange
from syncd.sync.hosts import HostSessions, hosts_of
from syncd.sync.report import Disposition, PassReport

log = structlog.get_logger("syncd.engine")

#: After this many plan → apply rounds without converging, something disagrees with the planner
#: (an API that silently ignores a field, say): park rather than loop and spam the patient.
MAX_ROUNDS = 3

_KINDS = frozenset(k.value for k in DriftKind)


@dataclass(slots=True)
class PassScope:
    """What the appointments of one pass share."""

    report: PassReport
    hosts: HostSessions
    #: shutdown asked for, or this process may no longer act (its leader lease lapsed)
    halted: Callable[[], bool]
    auth_failed: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stopped(self) -> bool:
        return self.halted() or self.auth_failed.is_set()

    def reject_credentials(self, exc: AuthenticationError) -> Disposition:
        """SecureVideo refused the credentials: the pass stops, and says so once."""
        with self._lock:
            first = not self.auth_failed.is_set()
            self.auth_failed.set()
        if first:
            self.report.auth_error = str(exc)
            log.error("credentials_rejected", error=str(exc))
        return Disposition.INTERRUPTED


@dataclass(slots=True)
class _Turn:
    """One appointment's state while the reconciler works on it."""

    appt: Appointment
    hosts: list[str]
    #: what syncd applied, as the ledger had it and as this turn's calls changed it
    applied: AppliedState
    #: what the ledger had: the applied state is written again only when it differs
    loaded: AppliedState
    #: calls whose answer was lost are on file: resolve them once SecureVideo matches
    unresolved: bool
    #: the session the ledger says syncd manages
    managed: int | None
    deadline: float
    #: failures in a row of each step; a success of that step starts its count again
    read_failures: int
    call_failures: int
    fresh_read: bool = False
    #: what the synced appointment still tells an operator (its previous host is gone)
    note: str | None = None
    rounds: int = 0
    #: drift on file for it (kind → session id), and what its first read shows
    on_file: Mapping[DriftKind, int | None] = field(default_factory=dict)
    drift: Mapping[DriftKind, int | None] | None = None
    #: a call was made: the disposition is "synced", not "unchanged"
    acted: bool = False
    progressed: set[Operation] = field(default_factory=set)


def _never() -> bool:
    return False


#: What one step of a turn says: the turn ends with this disposition, or goes on (None).
Step = Disposition | None


class Reconciler:
    def __init__(
        self,
        *,
        book: AppointmentBook,
        executor: Executor,
        clock: Clock,
        retry: RetryPolicy,
        stop: threading.Event,
        retry_budget_seconds: float,
        fingerprints: Fingerprints,
        past_visit_grace: timedelta = PAST_VISIT_GRACE,
        wait: Callable[[float], bool] | None = None,
        outage: Callable[[], bool] | None = None,
        host_change: HostChange | None = None,
        restore_drift: bool = False,
    ) -> None:
        """``host_change``: whether a provider change moves the session (default: never).
        ``restore_drift``: undo what staff changed in SecureVideo (``SYNCD_SYNC__DRIFT``).
        ``wait(seconds)`` waits out a back-off and says whether a shutdown ended it (default:
        ``stop.wait``; a test on a hand-moved clock moves the clock instead).  ``outage()``: True
        while SecureVideo is known to be down, when a failed appointment is left to a later pass
        at once rather than hold a worker through its back-off."""
        self._book = book
        self._wait = wait or stop.wait
        self._outage = outage or _never
        self._executor = executor
        self._clock = clock
        self._retry = retry
        self._stop = stop
        self._budget = retry_budget_seconds
        self._fingerprints = fingerprints
        self._grace = past_visit_grace
        self._host_change = host_change or HostChange("recreate")
        self._restore = restore_drift

    def reconcile(
        self,
        record: AppointmentRecord,
        appt: Appointment,
        applied: AppliedState,
        scope: PassScope,
        *,
        unresolved: bool,
        drift: Sequence[DriftRecord] = (),
    ) -> Disposition:
        if appt.presence is Presence.LEAVE_ALONE:
            return self._book.skipped(appt, "status leaves SecureVideo alone")
        appt = kept_session_id(appt, applied)
        turn = _Turn(
            appt=appt,
            hosts=hosts_of(appt, record.host_external_id),
            applied=applied,
            loaded=applied,
            unresolved=unresolved,
            managed=record.session_id,
            deadline=self._clock.monotonic() + self._budget,
            read_failures=record.attempts,
            call_failures=record.attempts,
            on_file={DriftKind(d.kind): d.session_id for d in drift if d.kind in _KINDS},
        )
        while True:
            if scope.stopped():
                return Disposition.INTERRUPTED
            observed = self._observe(turn, scope)
            if isinstance(observed, Disposition):
                return observed
            if observed is None:
                continue
            decided = self._plan_and_apply(turn, observed, scope)
            if decided is not None:
                return decided

    def _observe(self, turn: _Turn, scope: PassScope) -> list[RemoteSession] | Step:
        """The appointment's sessions as SecureVideo shows them; a disposition when the turn
        ends here, None to try again after a back-off."""
        appt = turn.appt
        aid = appt.appointment_id
        try:
            if turn.fresh_read:
                observed = scope.hosts.fresh(turn.hosts, appt.external_session_id)
            else:
                observed = scope.hosts.sessions(turn.hosts, appt.external_session_id)
        except AuthenticationError as exc:
            return scope.reject_credentials(exc)
        except NotFoundError as exc:
            # Only the current host's read raises it: a previous host's 404 is left out.
            return self._park(
                appt,
                f"appointment {aid}: field 'provider_external_id': SecureVideo does not "
                f"know host {appt.provider_external_id!r} ({exc.message})",
                field_name="provider_external_id",
            )
        except PermanentError as exc:
            return self._park(appt, f"appointment {aid}: {exc.message}")
        except TemporaryError as exc:
            turn.read_failures += counts_as_failure(exc)
            turn.fresh_read = True
            return self._back_off(turn, max(turn.read_failures, turn.call_failures), exc)
        turn.read_failures = 0
        self._note_gone_hosts(turn, scope.hosts.gone(turn.hosts[1:]))
        return observed

    def _note_gone_hosts(self, turn: _Turn, gone: list[str]) -> None:
        """A previous host SecureVideo no longer knows: its session cannot be cancelled, so
        an operator is told, once per turn."""
        if not gone or turn.note is not None:
            return
        appt = turn.appt
        turn.note = (
            f"appointment {appt.appointment_id}: previous host {gone[0]!r} is unknown to "
            f"SecureVideo; its session, if any, could not be cancelled"
        )
        log.warning(
            "previous_host_gone",
            appointment_id=appt.appointment_id,
            provider_external_id=appt.provider_external_id,
            previous_host_external_id=gone[0],
            reason=turn.note,
        )

    def _plan_and_apply(self, turn: _Turn, observed: list[RemoteSession], scope: PassScope) -> Step:
        appt = turn.appt
        now = self._clock.now()
        if (
            appt.presence is Presence.LIVE
            and is_outside_active_window(appt, now)
            and all(s.is_cancelled for s in observed)
        ):
            return self._book.skipped(appt, "starts before SecureVideo's active window")
        if turn.drift is None:
            turn.drift = self._drift_of(turn, observed)
        planned = self._plan(turn, observed, turn.applied, turn.managed)
        turn.applied = planned.applied
        ops = planned.ops
        if not ops:
            state = turn.applied if turn.applied != turn.loaded else None
            if planned.held:
                # Logged as appointment_skipped, with the reason that names what was held.
                return self._book.skipped(appt, "; ".join(planned.held), state=state)
            return self._book.synced(
                appt,
                observed,
                applied=turn.acted,
                unresolved=turn.unresolved,
                note=turn.note,
                state=state,
            )
        turn.rounds += 1
        turn.acted = True
        if turn.rounds > MAX_ROUNDS:
            kinds = ", ".join(sorted({op.kind for op in ops}))
            return self._park(
                appt,
                f"appointment {appt.appointment_id}: does not converge after {MAX_ROUNDS} "
                f"rounds ({kinds})",
            )
        return self._apply_round(turn, ops, observed, scope)

    def _apply_round(
        self, turn: _Turn, ops: Sequence[Operation], observed: list[RemoteSession], scope: PassScope
    ) -> Step:
        """Apply one plan in order.  None: plan again (from a fresh read)."""
        appt = turn.appt
        view = observed
        for index, op in enumerate(ops):
            if scope.halted():
                return Disposition.INTERRUPTED
            # After the last call, if its answer shows SecureVideo matching, the appointment is
            # settled in the same commit as that call's result.
            last = index == len(ops) - 1
            finish = self._finisher(turn, view, op) if last else None
            try:
                applied = self._executor.apply(
                    op, appt, turn.call_failures + 1, scope.report, finish=finish
                )
            except AuthenticationError as exc:
                return scope.reject_credentials(exc)
            except PermanentError as exc:
                if isinstance(op, MoveSession) and self._host_change.refused(exc):
                    # The account cannot move sessions: plan again, as cancel + create.
                    turn.rounds -= 1
                    turn.fresh_read = True
                    return None
                msg = redact(exc.message, appt)
                return self._park(
                    appt, f"appointment {appt.appointment_id}: SecureVideo refused {op.kind}: {msg}"
                )
            except TemporaryError as exc:
                return self._after_failed_call(turn, exc)
            turn.applied = applied_after(turn.applied, op, applied.result, self._fingerprints)
            if applied.settled:
                return Disposition.SYNCED
            view = after(view, op, applied.result)
            if op not in turn.progressed:
                # Progress.  An op applied a second time is not (an API ignoring it): that loop
                # stays bounded by MAX_ROUNDS.
                turn.progressed.add(op)
                turn.call_failures = 0
            if isinstance(op, CreateSession) and applied.result is not None:
                turn.managed = applied.result.session_id
        turn.fresh_read = True
        return None

    def _after_failed_call(self, turn: _Turn, exc: TemporaryError) -> Step:
        turn.unresolved = turn.unresolved or isinstance(exc, AmbiguousError)
        turn.call_failures += counts_as_failure(exc)
        # Whatever was known may be stale now (an ambiguous call may have applied): look again
        # before planning again.
        turn.fresh_read = True
        # A round cut short by a failed call says nothing about convergence: it is retried, not
        # counted.
        turn.rounds -= 1
        return self._back_off(turn, turn.call_failures, exc)

    def _finisher(
        self, turn: _Turn, view: list[RemoteSession], op: Operation
    ) -> Callable[[RemoteSession | None], Write | None]:
        def finish(result: RemoteSession | None) -> Write | None:
            now_shows = after(view, op, result)
            managed = (
                result.session_id
                if isinstance(op, CreateSession) and result is not None
                else turn.managed
            )
            state = applied_after(turn.applied, op, result, self._fingerprints)
            # The answers carry the new state: plan against them to confirm convergence.
            planned = self._plan(turn, now_shows, state, managed)
            if planned.ops or planned.held:
                return None
            return self._book.synced_write(
                turn.appt,
                now_shows,
                unresolved=turn.unresolved,
                note=turn.note,
                state=planned.applied,
            )

        return finish

    def _drift_of(
        self, turn: _Turn, observed: list[RemoteSession]
    ) -> Mapping[DriftKind, int | None]:
        """Drift on file, and what this turn's first read shows of it (unless a call whose answer
        was lost may explain the difference)."""
        if turn.unresolved:
            return turn.on_file
        seen = detect(
            turn.applied, observed, now=self._clock.now(), fingerprints=self._fingerprints
        )
        # Gone from a host's list is not gone from the account (the host may have left): only
        # the account-wide read (``sync.drift``) says so.
        seen = tuple(d for d in seen if d.kind is not DriftKind.SESSION_GONE)
        return {**turn.on_file, **kinds_of(seen)}

    def _plan(
        self,
        turn: _Turn,
        observed: list[RemoteSession],
        applied: AppliedState,
        managed: int | None,
    ) -> Plan:
        return plan_in_full(
            turn.appt,
            applied,
            observed,
            now=self._clock.now(),
            fingerprints=self._fingerprints,
            managed_session_id=managed,
            past_grace=self._grace,
            move_host=self._host_change.may_move,
            drift=turn.drift,
            restore=self._restore,
        )

    def _back_off(self, turn: _Turn, attempts: int, exc: TemporaryError) -> Step:
        """Wait and return None to try again in this turn, or a disposition to stop here.

        A temporary failure never parks: it is retried, with capped and jittered back-off, across
        as many passes as it lasts (an outage ends; an operator should not have to notice it)."""
        appt = turn.appt
        reason = f"appointment {appt.appointment_id}: {redact(exc.message, appt)}"
        if self._retry.turns_long(attempts):
            log.warning(
                "retrying_long",
                appointment_id=appt.appointment_id,
                attempts=attempts,
                reason=reason,
            )
        delay = self._retry.delay(attempts, retry_after=exc.retry_after)
        until = self._clock.now() + timedelta(seconds=delay)
        later = self._clock.monotonic() + delay > turn.deadline
        if later or self._stop.is_set() or self._outage():
            self._book.deferred(appt, attempts, until, reason)
            log.warning(
                "appointment_deferred",
                appointment_id=appt.appointment_id,
                attempts=attempts,
                reason=reason,
                delay_seconds=round(delay, 3),
            )
            return Disposition.RETRY
        # The wait outlives a shutdown: the next start must not send before SecureVideo's
        # Retry-After has passed.  A wait that a shutdown request ends at once, not a sleep.
        if self._wait(delay):
            self._book.deferred(appt, attempts, until, reason)
            return Disposition.INTERRUPTED
        return None

    def _park(
        self,
        appt: Appointment,
        reason: str,
        *,
        field_name: str | None = None,
        attempts: int | None = None,
    ) -> Disposition:
        return self._book.parked(
            appt.appointment_id, appt.event_id, reason, field_name=field_name, attempts=attempts
        )
