"""How far the outbox has been read: one row, moved forward only."""

from __future__ import annotations

import secrets
from typing import Final

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from syncd.adapters.ledger.schema import cursor_table
from syncd.adapters.ledger.sql import Sql, utcnow
from syncd.core.fingerprint import KEY_BYTES

__all__ = ["SqlCursor"]

_CURSOR_ID: Final = 1


class SqlCursor:
    """:class:`syncd.ports.ledger.CursorRepository` on the ``sync_cursor`` table."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def get(self) -> int:
        c = cursor_table.c
        value = self._sql.rows(
            select(c.last_event_id).where(c.id == _CURSOR_ID)
        ).scalar_one_or_none()
        return 0 if value is None else int(value)

    def advance(self, event_id: int) -> None:
        c = cursor_table.c
        stamp = utcnow()
        moved = self._sql.write(
            update(cursor_table)
            .where(c.id == _CURSOR_ID, c.last_event_id < event_id)
            .values(last_event_id=event_id, updated_at=stamp)
        )
        if moved or self._sql.exists(c.id == _CURSOR_ID):
            return
        # The migration seeds the row; this covers a table emptied by hand.  The UPDATE above
        # already opened the transaction, which SQLite's driver needs for a correct SAVEPOINT.
        try:
            with self._sql.savepoint():
                self._sql.write(
                    insert(cursor_table).values(
                        id=_CURSOR_ID, last_event_id=event_id, updated_at=stamp
                    )
                )
        except IntegrityError:
            self.advance(event_id)  # another writer seeded it first: move that row instead

    def fingerprint_key(self) -> bytes:
        c = cursor_table.c
        key = self._sql.rows(
            select(c.fingerprint_key).where(c.id == _CURSOR_ID)
        ).scalar_one_or_none()
        if key is None:
            key = self._make_key()
        return bytes.fromhex(key)

    def _make_key(self) -> str:
        # The migration makes the key; this covers a row emptied or re-created by hand.
        c = cursor_table.c
        fresh = secrets.token_hex(KEY_BYTES)
        made = self._sql.write(
            update(cursor_table)
            .where(c.id == _CURSOR_ID, c.fingerprint_key.is_(None))
            .values(fingerprint_key=fresh)
        )
        if made:
            return fresh
        if not self._sql.exists(c.id == _CURSOR_ID):
            try:
                with self._sql.savepoint():
                    self._sql.write(
                        insert(cursor_table).values(
                            id=_CURSOR_ID,
                            last_event_id=0,
                            updated_at=utcnow(),
                            fingerprint_key=fresh,
                        )
                    )
                return fresh
            except IntegrityError:
                pass
        # Another writer made it first.  A locking read: InnoDB's snapshot would still show NULL.
        return str(
            self._sql.rows(
                select(c.fingerprint_key).where(c.id == _CURSOR_ID).with_for_update()
            ).scalar_one()
        )
