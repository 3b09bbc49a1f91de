"""Join links (``join_link``): guests' join URLs while their session is active."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from syncd.adapters.ledger.schema import join_link_table
from syncd.adapters.ledger.sql import Sql, records
from syncd.ports.links import JoinLinkRecord

__all__ = ["SqlLinks"]

_links = join_link_table


class SqlLinks:
    """:class:`syncd.ports.links.LinkRepository` on ``join_link``."""

    __slots__ = ("_sql",)

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def all(self) -> list[JoinLinkRecord]:
        c = _links.c
        query = select(_links).order_by(c.appointment_id, c.participant_external_id)
        return records(JoinLinkRecord, self._sql.rows(query))

    def put(self, record: JoinLinkRecord) -> None:
        c = _links.c
        where = (
            c.appointment_id == record.appointment_id,
            c.participant_external_id == record.participant_external_id,
        )
        values = {
            "session_id": record.session_id,
            "participation_id": record.participation_id,
            "join_url": record.join_url,
            "changed_at": record.changed_at,
        }
        if self._sql.write(update(_links).where(*where).values(**values)):
            return
        key = {
            "appointment_id": record.appointment_id,
            "participant_external_id": record.participant_external_id,
        }
        try:
            with self._sql.savepoint():
                self._sql.write(insert(_links).values(**key, **values))
        except IntegrityError:
            # Another writer inserted it meanwhile: both read SecureVideo, the later one wins.
            self._sql.write(update(_links).where(*where).values(**values))

    def delete(self, appointment_id: str, participant_external_id: str) -> bool:
        c = _links.c
        statement = delete(_links).where(
            c.appointment_id == appointment_id,
            c.participant_external_id == participant_external_id,
        )
        return bool(self._sql.write(statement))
