"""How far the outbox has been read: one row, moved forward only — but for a rewind."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Final

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from syncd.adapters.ledger.schema import cursor_table
from syncd.adapters.ledger.sql import Sql, utc, utcnow
from syncd.core.fingerprint import KEY_BYTES
from syncd.ports.ledger import OutboxRewind

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

    def position(self) -> tuple[int, OutboxRewind | None]:
        c = cursor_table.c
        row = self._sql.rows(
            select(
                c.last_event_id,
                c.rewound_at,
                c.rewound_from_event_id,
                c.rewound_newest_event_id,
                c.rewind_applied_at,
            ).where(c.id == _CURSOR_ID)
        ).one_or_none()
        if row is None:
            return 0, None
        rewind = None
        if row.rewound_at is not None:
            rewind = OutboxRewind(
                at=row.rewound_at,
                from_event_id=int(row.rewound_from_event_id or 0),
                newest_event_id=int(row.rewound_newest_event_id or 0),
                applied_at=row.rewind_applied_at,
            )
        return int(row.last_event_id), rewind

    def rewind(self, *, newest_event_id: int, now: datetime) -> OutboxRewind:
        c = cursor_table.c
        was = self.get()
        self.advance(0)  # the row exists afterwards, whatever was done to the table by hand
        rewind = OutboxRewind(
            at=utc(now), from_event_id=was, newest_event_id=newest_event_id, applied_at=None
        )
        self._sql.write(
            update(cursor_table)
            .where(c.id == _CURSOR_ID)
            .values(
                last_event_id=0,
                updated_at=rewind.at,
                rewound_at=rewind.at,
                rewound_from_event_id=was,
                rewound_newest_event_id=newest_event_id,
                rewind_applied_at=None,
            )
        )
        return rewind

    def rewind_applied(self, now: datetime) -> bool:
        c = cursor_table.c
        return bool(
            self._sql.write(
                update(cursor_table)
                .where(c.id == _CURSOR_ID, c.rewound_at.is_not(None), c.rewind_applied_at.is_(None))
                .values(rewind_applied_at=utc(now))
            )
        )

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
