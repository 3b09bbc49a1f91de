"""The ledger: syncd's own small database of progress, on SQLite, PostgreSQL or MariaDB.

It makes every step idempotent: the outbox cursor, which event of each appointment is pending and
which was applied, the intent → outcome journal of every remote call, and what SecureVideo will not
tell us later (the session we manage, the packet ids we sent).  It holds ids, states, attempt
counts, redacted reasons and timestamps — never patient data.

:class:`SqlLedger` implements the port (:mod:`syncd.ports.ledger`): ``with ledger.begin() as tx:``
frames one transaction, and ``tx.appointments``, ``tx.operations`` … are small repositories on it
(one module each).  :mod:`.schema` holds the tables, :mod:`.sql` the one helper every repository
runs its statements through, :mod:`.sqlite` the SQLite driver-cursor fast path behind that helper,
and :mod:`.migrate` the Alembic helpers (the schema belongs to ``migrations/``).  Every timestamp is
naive UTC.
"""

from __future__ import annotations

from syncd.adapters.ledger.engine import create_ledger_engine, make_sessionmaker
from syncd.adapters.ledger.migrate import (
    current_revision,
    downgrade,
    head_revision,
    is_at_head,
    migrate,
    script_location,
)
from syncd.adapters.ledger.schema import metadata
from syncd.adapters.ledger.unit_of_work import SqlLedger, SqlTransaction
from syncd.ports.ledger import (
    APPOINTMENT_STATES,
    OPERATION_STATES,
    AppointmentRecord,
    BookedAppointment,
    OperationRecord,
    OutcomeTarget,
    ParticipantOutcomeRecord,
    ParticipantRecord,
    SessionOutcomeRecord,
)

__all__ = [
    "APPOINTMENT_STATES",
    "OPERATION_STATES",
    "AppointmentRecord",
    "BookedAppointment",
    "OperationRecord",
    "OutcomeTarget",
    "ParticipantOutcomeRecord",
    "ParticipantRecord",
    "SessionOutcomeRecord",
    "SqlLedger",
    "SqlTransaction",
    "create_ledger_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_at_head",
    "make_sessionmaker",
    "metadata",
    "migrate",
    "script_location",
]
