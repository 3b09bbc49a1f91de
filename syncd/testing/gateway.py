"""SecureVideo in memory, with scripted failures.

:class:`FakeSecureVideo` implements ``syncd.ports.securevideo.SessionGateway`` the way the real
client answers against the emulator (``syncd.emulator.state``): sessions per host, listed by the
host's ExternalId with cancelled ones included; a cancelled session stays listed and refuses
changes; participation ids are account-wide; PacketId is accepted but never reported.  It adds
scripted failures and a record of every call, so that a unit test can drive the engine through
timeouts, lost answers and refused credentials, then assert exactly which calls reached it.

Deterministic: ids are counted from fixed starts, nothing reads the wall clock or a random source.
Every error it raises names ids and fields, never a person.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Final

from syncd.core.domain import CreateSession, Guest, RemoteParticipant, RemoteSession
from syncd.core.errors import AmbiguousError, AuthenticationError, NotFoundError, PermanentError
from syncd.testing.fake_records import (
    KINDS,
    MUTATING_KINDS,
    Call,
    ErrorSource,
    FakeHost,
    Script,
    Session,
)

__all__ = [
    "DEFAULT_HOSTS",
    "KINDS",
    "MUTATING_KINDS",
    "Call",
    "FakeHost",
    "FakeSecureVideo",
]


# Distinct ranges, as in the emulator: a caller that confuses the two kinds of id fails loudly.
_FIRST_SESSION_ID: Final = 50001
_FIRST_PARTICIPATION_ID: Final = 700001
_FIRST_USER_ID: Final = 1001
#: The emulator's demo providers, so a test can move between the two without renaming hosts.
DEFAULT_HOSTS: Final = ("prov-001", "prov-002", "prov-003", "prov-004", "prov-005")


def _bad_request(message: str) -> PermanentError:
    return PermanentError(message, status=400)


def _same_name(left: str, right: str) -> bool:
    return " ".join(left.split()).casefold() == " ".join(right.split()).casefold()


class FakeSecureVideo:
    """An in-memory SecureVideo account behind the ``SessionGateway`` port.

    ``hosts`` are the ExternalIds of the account's users (user ids from 1001), by default
    ``prov-001`` … ``prov-005`` like the emulator's.  Thread-safe: one lock makes each call atomic,
    so a scripted "applied, answer lost" is either wholly applied or not at all.
    """

    def __init__(self, hosts: Iterable[str] = DEFAULT_HOSTS, *, host_change: bool = False) -> None:
        """``host_change``: the account option ``PUT /sessionhost`` needs (without it a 400)."""
        self._lock = threading.RLock()
        self.host_change = host_change
        self._hosts: dict[str, FakeHost] = {}
        self._sessions: dict[int, Session] = {}
        self._session_of_participation: dict[int, int] = {}
        self._next_session_id = _FIRST_SESSION_ID
        self._next_participation_id = _FIRST_PARTICIPATION_ID
        self._scripts: list[Script] = []
        self._credentials_refused = False
        #: every call that reached the fake, in order, scripted failures included
        self.calls: list[Call] = []
        #: ``list_host_sessions`` calls per host ExternalId
        self.reads: Counter[str] = Counter()
        #: ``list_account_sessions`` calls
        self.account_reads = 0
        for external_id in hosts:
            self.add_host(external_id)

    # --- the port ------------------------------------------------------------------------

    def list_host_sessions(self, host_external_id: str) -> list[RemoteSession]:
        with self._lock:
            self.reads[host_external_id] += 1
            call = Call("list", host_external_id=host_external_id)
            self._before(call)
            try:
                host = self._host(host_external_id)
            except NotFoundError as exc:
                self._record_failure(call, exc)
                raise
            found = [
                self._remote(s)
                for s in self._sessions.values()
                if s.host.external_id == host.external_id
            ]
            self.calls.append(call)
            return found

    def list_account_sessions(self) -> list[RemoteSession]:
        with self._lock:
            self.account_reads += 1
            call = Call("list_account")
            self._before(call)
            found = [self._remote(s) for s in self._sessions.values()]
            self.calls.append(call)
            return found

    def create_session(self, op: CreateSession) -> RemoteSession:
        with self._lock:
            call = Call(
                "create",
                host_external_id=op.host_external_id,
                external_session_id=op.external_session_id,
                schedule_ts=op.schedule_ts,
            )
            self._before(call)
            try:
                session = self._create(op)
            except PermanentError as exc:
                self._record_failure(call, exc)
                raise
            return self._after(dataclasses.replace(call, session_id=session.session_id), session)

    def reschedule_session(self, session_id: int, schedule_ts: datetime) -> RemoteSession:
        with self._lock:
            call = Call("reschedule", session_id=session_id, schedule_ts=schedule_ts)
            self._before(call)
            try:
                session = self._live_session(session_id)
            except PermanentError as exc:
                self._record_failure(call, exc)
                raise
            # SecureVideo keeps whole minutes, as the emulator does.
            session.schedule_ts = schedule_ts.replace(second=0, microsecond=0)
            session.schedule_type = "Rescheduled"
            return self._after(call, session)

    def cancel_session(self, session_id: int) -> None:
        with self._lock:
            call = Call("cancel", session_id=session_id)
            self._before(call)
            try:
                session = self._session(session_id)
                if session.cancelled:
                    raise _bad_request(f"Session {session_id} is already cancelled")
            except PermanentError as exc:
                self._record_failure(call, exc)
                raise
            session.schedule_type = "Cancelled"
            self._after(call, session)

    def move_session(self, session_id: int, host_external_id: str) -> RemoteSession:
        with self._lock:
            call = Call("move_host", session_id=session_id, host_external_id=host_external_id)
            self._before(call)
            try:
                if not self.host_change:
                    raise _bad_request(
                        "Changing a session's host requires the External ID Label account option"
                    )
                session = self._live_session(session_id)
                host = self._host(host_external_id)
            except PermanentError as exc:
                self._record_failure(call, exc)
                raise
            # The guests keep their participations; the host participation is the new host's.
            del self._session_of_participation[session.participants[0].participation_id]
            session.host = host
            pid = self._next_participation_id
            self._next_participation_id += 1
            session.participants[0] = dataclasses.replace(
                self._host_participant(host), participation_id=pid
            )
            self._session_of_participation[pid] = session.session_id
            return self._after(call, session)

    def add_participant(self, session_id: int, guest: Guest) -> RemoteSession:
        with self._lock:
            call = Call(
                "add_participant",
                session_id=session_id,
                participant_external_id=guest.external_id,
            )
            self._before(call)
            try:
                session = self._live_session(session_id)
                self._attach(session, self._participant(guest, session.host, session.participants))
            except PermanentError as exc:
                self._record_failure(call, exc)
                raise
            return self._after(call, session)

    def update_participant(self, participation_id: int, guest: Guest) -> RemoteSession:
        with self._lock:
            call = Call(
                "update_participant",
                participation_id=participation_id,
                participant_external_id=guest.external_id,
            )
            self._before(call)
            try:
                session, index = self._participation(participation_id)
                call = dataclasses.replace(call, session_id=session.session_id)
                session.participants[index] = self._updated(session, index, guest)
            except PermanentError as exc:
                self._record_failure(call, exc)
                raise
            return self._after(call, session)

    def remove_participant(self, participation_id: int) -> None:
        with self._lock:
            call = Call("remove_participant", participation_id=participation_id)
            self._before(call)
            try:
                session, index = self._participation(participation_id)
                call = dataclasses.replace(call, session_id=session.session_id)
                if index == 0:
                    raise _bad_request("The session host cannot be removed")
            except PermanentError as exc:
                self._record_failure(call, exc)
                raise
            removed = session.participants.pop(index)
            del self._session_of_participation[removed.participation_id]
            self._after(call, session)

    # --- scripted failures -----------------------------------------------------------------

    def fail_next(self, kind: str | None, error: ErrorSource, *, times: int = 1) -> None:
        """The next ``times`` calls of ``kind`` (None: of any kind) raise ``error`` and change
        nothing.  Scripts are used in the order they were given."""
        self._script(kind, error, after_apply=False, times=times)

    def lose_answer(
        self, kind: str | None, *, times: int = 1, error: ErrorSource | None = None
    ) -> None:
        """The next ``times`` mutating calls of ``kind`` (None: of any mutating kind) are applied,
        then raise ``error`` (by default an ``AmbiguousError``) as if the answer never came."""
        if kind is not None and kind not in MUTATING_KINDS:
            raise ValueError(f"only a change can be applied without an answer, not {kind!r}")
        lost = error or (lambda: AmbiguousError("the answer was lost (scripted)"))
        self._script(kind, lost, after_apply=True, times=times)

    def refuse_credentials(self, refused: bool = True) -> None:
        """Every call raises ``AuthenticationError`` until called again with False."""
        with self._lock:
            self._credentials_refused = refused

    def clear_scripts(self) -> None:
        with self._lock:
            self._scripts.clear()

    def _script(
        self, kind: str | None, error: ErrorSource, *, after_apply: bool, times: int
    ) -> None:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown call kind {kind!r} (one of {', '.join(KINDS)})")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._scripts.append(Script(kind, error, after_apply, times))

    def _take(self, kind: str, *, after_apply: bool) -> Script | None:
        for script in self._scripts:
            if script.after_apply == after_apply and script.matches(kind):
                script.remaining -= 1
                if not script.remaining:
                    self._scripts.remove(script)
                return script
        return None

    def _before(self, call: Call) -> None:
        """Refused credentials and scripted failures: raised before anything changes."""
        error: BaseException | None = None
        if self._credentials_refused:
            error = AuthenticationError("SecureVideo refused the credentials (401)")
        else:
            script = self._take(call.kind, after_apply=False)
            error = None if script is None else script.make()
        if error is not None:
            self._record_failure(call, error)
            # An instance scripted for several calls was raised before: drop its old traceback.
            raise error.with_traceback(None)

    def _after(self, call: Call, session: Session) -> RemoteSession:
        """Record an applied change; raise a scripted lost answer, else return the answer."""
        script = self._take(call.kind, after_apply=True)
        if script is not None:
            error = script.make()
            self.calls.append(
                dataclasses.replace(call, outcome="ambiguous", error=type(error).__name__)
            )
            raise error.with_traceback(None)
        self.calls.append(call)
        return self._remote(session)

    def _record_failure(self, call: Call, error: BaseException) -> None:
        self.calls.append(dataclasses.replace(call, outcome="failed", error=type(error).__name__))

    # --- what a test reads and sets --------------------------------------------------------

    def mutations(self) -> list[Call]:
        """The changing calls made, in order, failed ones included."""
        with self._lock:
            return [c for c in self.calls if c.kind in MUTATING_KINDS]

    def applied(self) -> list[Call]:
        """The changing calls that took effect (a lost answer took effect too)."""
        with self._lock:
            return [c for c in self.mutations() if c.outcome != "failed"]

    def remove_host(self, external_id: str) -> None:
        """The provider leaves SecureVideo: their session list answers 404 from now on."""
        with self._lock:
            del self._hosts[external_id]

    def add_host(self, external_id: str, *, user_id: int | None = None) -> FakeHost:
        with self._lock:
            if external_id in self._hosts:
                raise ValueError(f"host {external_id!r} already exists")
            taken = {h.user_id for h in self._hosts.values()}
            if user_id is None:
                user_id = max(taken, default=_FIRST_USER_ID - 1) + 1
            elif user_id in taken:
                raise ValueError(f"user id {user_id} already exists")
            host = FakeHost(user_id, external_id)
            self._hosts[external_id] = host
            return host

    def preload(self, op: CreateSession) -> RemoteSession:
        """A session that exists before the test starts (made by hand, or a duplicate): created
        without a call being recorded or a script being used."""
        with self._lock:
            return self._remote(self._create(op))

    def sessions(self, host_external_id: str | None = None) -> list[RemoteSession]:
        """Every session, cancelled ones included, oldest first; no call is recorded."""
        with self._lock:
            return [
                self._remote(s)
                for s in self._sessions.values()
                if host_external_id is None or s.host.external_id == host_external_id
            ]

    def session(self, session_id: int) -> RemoteSession:
        with self._lock:
            return self._remote(self._session(session_id))

    def live_by_external_session_id(self) -> dict[str, list[int]]:
        """ExternalSessionId -> ids of its sessions not cancelled; more than one is a duplicate."""
        with self._lock:
            live: dict[str, list[int]] = {}
            for s in self._sessions.values():
                if not s.cancelled and s.external_session_id:
                    live.setdefault(s.external_session_id, []).append(s.session_id)
            return live

    def set_billing(
        self,
        session_id: int,
        *,
        billable_ts: datetime | None,
        status_cd: str | None = "BILL",
        duration_minutes: int | None = None,
        wait_time: int | None = None,
    ) -> None:
        with self._lock:
            session = self._session(session_id)
            session.billable_ts = billable_ts
            session.billable_status_cd = status_cd
            session.duration_minutes = duration_minutes
            session.wait_time = wait_time

    def set_attendance(
        self,
        participation_id: int,
        *,
        rsvp: str | None = None,
        connection_ts: datetime | None = None,
    ) -> None:
        """A participant's RSVP and first connection, as SecureVideo would later report them."""
        with self._lock:
            session, index = self._participation(participation_id)
            current = session.participants[index]
            session.participants[index] = dataclasses.replace(
                current,
                rsvp=current.rsvp if rsvp is None else rsvp,
                connection_ts=current.connection_ts if connection_ts is None else connection_ts,
            )

    # --- the account (callers hold the lock) -----------------------------------------------

    def _host(self, external_id: str) -> FakeHost:
        host = self._hosts.get(external_id)
        if host is None:
            raise NotFoundError("No user has this externalId", status=404)
        return host

    def _session(self, session_id: int) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFoundError(f"Session {session_id} was not found", status=404)
        return session

    def _live_session(self, session_id: int) -> Session:
        session = self._session(session_id)
        if session.cancelled:
            raise _bad_request(f"Session {session_id} is cancelled and cannot be changed")
        return session

    def _participation(self, participation_id: int) -> tuple[Session, int]:
        session_id = self._session_of_participation.get(participation_id)
        if session_id is None:
            raise NotFoundError(f"Participation {participation_id} was not found", status=404)
        session = self._sessions[session_id]
        if session.cancelled:
            raise _bad_request(f"Session {session_id} is cancelled and cannot be changed")
        for index, p in enumerate(session.participants):
            if p.participation_id == participation_id:
                return session, index
        raise NotFoundError(f"Participation {participation_id} was not found", status=404)

    def _create(self, op: CreateSession) -> Session:
        host = self._host(op.host_external_id)
        if not op.guests:
            # The real client refuses this before sending anything.
            raise PermanentError(
                f"appointment {op.appointment_id}: a session needs at least one guest"
            )
        members = [self._host_participant(host)]
        for guest in op.guests:
            members.append(self._participant(guest, host, members))
        session = Session(
            session_id=self._next_session_id,
            external_session_id=op.external_session_id,
            host=host,
            schedule_ts=op.schedule_ts.replace(second=0, microsecond=0),
            schedule_type="Scheduled",
            is_recorded=op.is_recorded,
            participants=[],
        )
        self._next_session_id += 1
        for member in members:
            self._attach(session, member)
        self._sessions[session.session_id] = session
        return session

    def _attach(self, session: Session, participant: RemoteParticipant) -> None:
        participation_id = self._next_participation_id
        self._next_participation_id += 1
        session.participants.append(
            dataclasses.replace(participant, participation_id=participation_id)
        )
        self._session_of_participation[participation_id] = session.session_id

    def _host_participant(self, host: FakeHost) -> RemoteParticipant:
        return RemoteParticipant(
            participation_id=0,
            external_id=host.external_id,
            full_name=host.full_name,
            time_zone_windows_id=host.time_zone_windows_id,
            deliver="E",
            securevideo_user_id=str(host.user_id),
        )

    def _participant(
        self, guest: Guest, host: FakeHost, members: Iterable[RemoteParticipant]
    ) -> RemoteParticipant:
        """A guest as SecureVideo would list it; its participation id is set on attach."""
        _check_deposit(guest.svc_id, guest.deposit)
        if guest.is_securevideo_user:
            user = next(
                (h for h in self._hosts.values() if str(h.user_id) == guest.securevideo_user_id),
                None,
            )
            if user is None:
                raise _bad_request(
                    f"SecureVideoUserId {guest.securevideo_user_id} is not a user of this account"
                )
            candidate = dataclasses.replace(
                self._host_participant(user), svc_id=guest.svc_id, deposit=guest.deposit
            )
        else:
            name = guest.full_name.strip()
            if len(name) < 2:
                raise _bad_request("ParticipantFullName must be at least 2 characters")
            _check_delivery(guest.deliver, guest.email, guest.sms)
            candidate = RemoteParticipant(
                participation_id=0,
                external_id=guest.external_id or None,
                full_name=name,
                email=guest.email.strip(),
                sms=guest.sms.strip(),
                time_zone_windows_id=guest.time_zone_windows_id or host.time_zone_windows_id,
                deliver=guest.deliver,
                svc_id=guest.svc_id,
                deposit=guest.deposit,
            )
        if candidate.securevideo_user_id == str(host.user_id) or _same_name(
            candidate.full_name, host.full_name
        ):
            raise _bad_request("The session host cannot be added as a participant")
        for member in members:
            if (
                candidate.securevideo_user_id is not None
                and member.securevideo_user_id == candidate.securevideo_user_id
            ):
                raise _bad_request(
                    f"SecureVideoUserId {candidate.securevideo_user_id} is already in the session"
                )
            if _same_name(candidate.full_name, member.full_name):
                raise _bad_request(
                    "A participant with this ParticipantFullName is already in the session"
                )
        return candidate

    def _updated(self, session: Session, index: int, guest: Guest) -> RemoteParticipant:
        current = session.participants[index]
        if index == 0:
            raise _bad_request("The session host participation cannot be changed")
        if current.securevideo_user_id is not None:
            # Only the session-specific properties of a SecureVideo user's participation.
            if guest.securevideo_user_id != current.securevideo_user_id:
                raise _bad_request("SecureVideoUserId cannot be changed")
            _check_deposit(guest.svc_id, guest.deposit)
            return dataclasses.replace(current, svc_id=guest.svc_id, deposit=guest.deposit)
        if guest.is_securevideo_user:
            raise _bad_request("SecureVideoUserId cannot be changed")
        if guest.full_name.strip() and guest.full_name.strip() != current.full_name:
            raise _bad_request(
                "ParticipantFullName cannot be changed; remove the participant and add it again"
            )
        _check_delivery(guest.deliver, guest.email, guest.sms)
        _check_deposit(guest.svc_id, guest.deposit)
        return dataclasses.replace(
            current,
            external_id=guest.external_id or None,
            email=guest.email.strip(),
            sms=guest.sms.strip(),
            time_zone_windows_id=guest.time_zone_windows_id or session.host.time_zone_windows_id,
            deliver=guest.deliver,
            svc_id=guest.svc_id,
            deposit=guest.deposit,
        )

    def _remote(self, session: Session) -> RemoteSession:
        return RemoteSession(
            session_id=session.session_id,
            external_session_id=session.external_session_id or None,
            user_id=session.host.user_id,
            schedule_ts=session.schedule_ts,
            schedule_type=session.schedule_type,
            host_external_id=session.host.external_id,
            is_recorded=session.is_recorded,
            participants=tuple(session.participants),
            billable_ts=session.billable_ts,
            duration_minutes=session.duration_minutes,
            wait_time=session.wait_time,
            billable_status_cd=session.billable_status_cd,
        )


def _check_delivery(code: str, email: str, sms: str) -> None:
    if code not in ("E", "S", "N"):
        raise _bad_request("ShouldAutoDeliverCode must be E, S or N")
    if code == "E" and not email.strip():
        raise _bad_request("ParticipantEmailAddress is required when ShouldAutoDeliverCode is E")
    if code == "S" and not sms.strip():
        raise _bad_request("ParticipantSmsNumber is required when ShouldAutoDeliverCode is S")


def _check_deposit(svc_id: int | None, deposit: Decimal | None) -> None:
    if (svc_id is None) != (deposit is None):
        raise _bad_request("SvcId and DepositRequired must both be null or both be set")
