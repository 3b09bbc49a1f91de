"""A provider change: move the session (``PUT /sessionhost``) or cancel it and create another.

``SYNCD_SECUREVIDEO__HOST_CHANGE``: ``recreate`` never moves; ``move`` always does, and a refusal
parks the appointment (the operator asked for moves, so a cancellation is not sent instead);
``auto`` (the default) tries a move, and once SecureVideo refuses one — the account lacks the
option it needs — falls back to cancel + create for the rest of the process's life.

The refusal is kept in process memory, not the ledger: it costs one call that messages nobody,
once per start, and a clinic that enables the option later gets moves after the next restart
without an operator having to clear anything.
"""

from __future__ import annotations

import threading
from typing import Final, Literal

import structlog

from syncd.core.errors import PermanentError

log = structlog.get_logger("syncd.engine")

HostChangeMode = Literal["auto", "move", "recreate"]
HOST_CHANGE_MODES: Final = ("auto", "move", "recreate")


class HostChange:
    """How this process changes a session's host, and what SecureVideo said about moves."""

    def __init__(self, mode: HostChangeMode = "auto") -> None:
        self.mode = mode
        self._refused = False
        self._lock = threading.Lock()

    @property
    def may_move(self) -> bool:
        if self.mode == "recreate":
            return False
        with self._lock:
            return self.mode == "move" or not self._refused

    def refused(self, exc: PermanentError) -> bool:
        """SecureVideo refused a move: True to plan cancel + create instead (``auto``), False to
        treat it as any refusal (``move``).  Logged once per process."""
        if self.mode != "auto":
            return False
        with self._lock:
            first = not self._refused
            self._refused = True
        if first:
            log.warning(
                "host_change_refused",
                status=exc.status,
                reason=exc.message,
                fallback="cancel and create",
            )
        return True
