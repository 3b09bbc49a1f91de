"""The error tree of syncd.

Every error says what a caller should do with it: retry later (`TemporaryError`), give up on this
appointment (`PermanentError`), stop the pass (`AuthenticationError`) or stop the program
(`ConfigError`).  Messages never carry patient data: they name ids and fields, not people.
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""


class TemporaryError(SyncdError):
    """Worth retrying later: 5xx, 429, timeouts, connection failures, a database outage."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: seconds the peer asked us to wait (``Retry-After``), if it said so
        self.retry_after = retry_after


class AmbiguousError(TemporaryError):
    """A mutating request was sent but its answer was lost: it may or may not have been applied.

    Never retried blindly: the next attempt reads the remote state first and adopts what it finds.
    """


class PermanentError(SyncdError):
    """Retrying the same request cannot succeed: SecureVideo said 400/404/409, or the row is bad."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotFoundError(PermanentError):
    """SecureVideo answered 404 (unknown host, session or participant)."""


class AuthenticationError(SyncdError):
    """SecureVideo refused the credentials (401/403): nothing will work until an operator acts."""


class InvalidRowError(PermanentError):
    """An outbox row cannot be turned into an appointment. Names the appointment and the field."""

    def __init__(self, appointment_id: str, field: str, problem: str) -> None:
        super().__init__(f"appointment {appointment_id}: field {field!r}: {problem}")
        self.appointment_id = appointment_id
        self.field = field
        self.problem = problem


class ConfigError(SyncdError):
    """A setting is missing or invalid. The message is the one line an operator sees."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem
