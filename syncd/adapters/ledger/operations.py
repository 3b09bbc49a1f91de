"""The operation journal: intent, then result, of every call that may have reached SecureVideo."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update

from syncd.adapters.ledger.schema import operation_table
from syncd.adapters.ledger.sql import Prepared, Sql, chunks, clip, records, utc
from syncd.ports.ledger import (
    INTENT,
    OPEN_OPERATION_STATES,
    OPERATION_STATES,
    RESOLVED,
    OperationRecord,
)

__all__ = ["SqlOperations"]

_t = operation_table

_INSERT_INTENT = Prepared(insert(_t))
_CLOSE_STATEMENT = (
    update(_t)
    .where(_t.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), detail=bindparam("b_detail"), finished_at=bindparam("b_at"))
)
_CLOSE = Prepared(_CLOSE_STATEMENT)
_CLOSE_CREATE = Prepared(_CLOSE_STATEMENT.values(session_id=bindparam("b_session_id")))
_RESOLVE_OPEN = (
    update(_t)
    .where(_t.c.appointment_id == bindparam("b_aid"), _t.c.state.in_(OPEN_OPERATION_STATES))
    .values(state=RESOLVED, finished_at=bindparam("b_at"))
)


class SqlOperations:
    """:class:`syncd.ports.ledger.OperationJournal` on the ``operation`` table."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def record_intent(
        self,
        *,
        appointment_id: str,
        event_id: int,
        op: str,
        session_id: int | None,
        participant_external_id: str | None,
        attempt: int,
        now: datetime,
        pid: int | None,
    ) -> int:
        return self._sql.insert_one(
            _INSERT_INTENT,
            {
                "appointment_id": appointment_id,
                "event_id": event_id,
                "op": op,
                "session_id": session_id,
                "participant_external_id": participant_external_id,
                "state": INTENT,
                "attempt": attempt,
                "started_at": utc(now),
                "pid": pid,
            },
        )

    def record_result(
        self,
        op_id: int,
        *,
        state: str,
        detail: str | None,
        session_id: int | None = None,
        now: datetime,
    ) -> None:
        """``session_id`` fills in the session a create produced; None keeps what the intent
        said."""
        if state not in OPERATION_STATES or state == INTENT:
            raise ValueError(f"not an operation outcome: {state!r}")
        params = {"b_id": op_id, "b_state": state, "b_detail": clip(detail), "b_at": utc(now)}
        statement = _CLOSE
        if session_id is not None:
            statement = _CLOSE_CREATE
            params["b_session_id"] = session_id
        if not self._sql.write(statement, params):
            raise LookupError(f"operation {op_id} is not in the ledger")

    def open_intents(self) -> list[OperationRecord]:
        query = select(_t).where(_t.c.state.in_(OPEN_OPERATION_STATES)).order_by(_t.c.id)
        return records(OperationRecord, self._sql.rows(query))

    def of_appointment(self, appointment_id: str) -> list[OperationRecord]:
        query = select(_t).where(_t.c.appointment_id == appointment_id).order_by(_t.c.id)
        return records(OperationRecord, self._sql.rows(query))

    def with_open(self, appointment_ids: Collection[str]) -> set[str]:
        out: set[str] = set()
        for chunk in chunks(appointment_ids):
            rows = self._sql.rows(
                select(_t.c.appointment_id)
                .where(_t.c.appointment_id.in_(chunk), _t.c.state.in_(OPEN_OPERATION_STATES))
                .distinct()
            )
            out.update(aid for (aid,) in rows)
        return out

    def resolve_open(self, appointment_id: str, now: datetime) -> int:
        return self._sql.write(_RESOLVE_OPEN, {"b_aid": appointment_id, "b_at": utc(now)})
