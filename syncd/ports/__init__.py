"""What the sync layer needs from the outside world, as protocols and the records they carry.

Adapters (``syncd.adapters``) implement them against SQLAlchemy and httpx; ``syncd.testing`` has
in-memory fakes.  Nothing here imports a third-party library.
"""

from syncd.ports.clock import Clock
from syncd.ports.ledger import Ledger, LedgerTransaction
from syncd.ports.outbox import CONTRACT_COLUMNS, OutboxRef, OutboxRow, OutboxSource
from syncd.ports.securevideo import (
    HistoryPage,
    HistoryRecord,
    OutcomeGateway,
    RejectedRecord,
    SessionGateway,
)

__all__ = [
    "CONTRACT_COLUMNS",
    "Clock",
    "HistoryPage",
    "HistoryRecord",
    "Ledger",
    "LedgerTransaction",
    "OutboxRef",
    "OutboxRow",
    "OutboxSource",
    "OutcomeGateway",
    "RejectedRecord",
    "SessionGateway",
]
