"""A stand-in EHR that writes outbox rows: for the demo, the tests and the benchmarks only.

syncd itself never writes to an EHR database; this module plays the EHR's part, so that the real
outbox reader reads real rows from a real database.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from syncd.adapters.outbox import DEFAULT_TABLE, create_outbox_engine, outbox_table_ddl


class SampleEhr:
    """Appends outbox rows, as an EHR trigger would."""

    def __init__(self, engine: sa.Engine, table: str = DEFAULT_TABLE, zone: str = "UTC") -> None:
        self.engine = engine
        # An EHR writes naive local times, in the zone syncd is told (SYNCD_OUTBOX__TIMEZONE).
        self.zone = ZoneInfo(zone)
        metadata = sa.MetaData()
        self.table = outbox_table_ddl(metadata, table)
        metadata.create_all(engine)

    def append(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert rows (contract column names) in order; returns their event ids."""
        ids: list[int] = []
        with self.engine.begin() as conn:
            for row in rows:
                values = {"created_at": self._now(), **row}
                result = conn.execute(sa.insert(self.table).values(**values))
                key = result.inserted_primary_key
                ids.append(int(key[0]) if key else 0)
        return ids

    def append_many(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Bulk insert (executemany) for backlogs in tests and benchmarks."""
        now = self._now()
        with self.engine.begin() as conn:
            conn.execute(sa.insert(self.table), [{"created_at": now, **r} for r in rows])

    def append_raw(self, row: Mapping[str, Any]) -> None:
        """Insert exactly these values, untyped: e.g. a malformed timestamp text on SQLite, the
        kind of value a loosely typed EHR column can hold."""
        values = {"created_at": self._now().isoformat(sep=" "), **row}
        untyped = sa.table(
            self.table.name, *(sa.column(name) for name in values), schema=self.table.schema
        )
        with self.engine.begin() as conn:
            conn.execute(sa.insert(untyped).values(**values))

    def _now(self) -> datetime:
        return datetime.now(self.zone).replace(tzinfo=None)

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def demo_outbox(url: str, table: str = DEFAULT_TABLE, zone: str = "UTC") -> Iterator[SampleEhr]:
    ehr = SampleEhr(create_outbox_engine(url, writable=True), table, zone)
    try:
        yield ehr
    finally:
        ehr.dispose()
