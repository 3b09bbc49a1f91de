"""The HL7 inbox: accepted scheduling messages, one whole-appointment row each."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, update

from syncd.adapters.ledger.schema import hl7_inbox_table as _t
from syncd.adapters.ledger.sql import Sql, chunks, utc
from syncd.ports.inbox import SUPERSEDED_KEPT_SECONDS, InboxMessage, InboxOutcome

__all__ = ["SqlInbox"]


class SqlInbox:
    """:class:`syncd.ports.inbox.InboxRepository` on the ``hl7_inbox`` table."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def accept(self, message: InboxMessage, *, now: datetime) -> tuple[InboxOutcome, int | None]:
        c = _t.c
        now, at = utc(now), utc(message.message_at)
        if self._sql.exists(c.control_id == message.control_id):
            return "duplicate", None
        newest = self._sql.rows(
            select(func.max(c.message_at)).where(c.appointment_id == message.appointment_id)
        ).scalar_one()
        if newest is not None and at < newest:
            return "stale", None
        result = self._sql.connection.execute(
            insert(_t).values(
                control_id=message.control_id,
                appointment_id=message.appointment_id,
                message_type=message.message_type,
                message_at=at,
                received_at=now,
                row_json=message.row,
            )
        )
        key = result.inserted_primary_key
        assert key is not None  # a single-row INSERT always reports its key
        inbox_id = int(key[0])
        self._sql.write(
            update(_t)
            .where(
                c.appointment_id == message.appointment_id,
                c.id != inbox_id,
                c.superseded_at.is_(None),
            )
            .values(superseded_at=now)
        )
        self._sql.write(
            delete(_t).where(c.superseded_at < now - timedelta(seconds=SUPERSEDED_KEPT_SECONDS))
        )
        return "stored", inbox_id

    def rows(self, inbox_ids: Sequence[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for chunk in chunks(sorted(set(inbox_ids))):
            query = select(_t.c.id, _t.c.row_json).where(_t.c.id.in_(chunk))
            found.update({int(i): str(row) for i, row in self._sql.rows(query)})
        return found

    def count(self) -> int:
        return int(self._sql.rows(select(func.count()).select_from(_t)).scalar_one())
