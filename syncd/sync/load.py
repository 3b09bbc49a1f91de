"""Loading due appointments: the latest outbox row of each, parsed into an ``Appointment``.

The ledger keeps ids only, so the appointment itself is always re-read from the outbox: nothing of
a patient is copied out of the EHR.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from syncd.core.domain import Appointment
from syncd.core.errors import InvalidRowError
from syncd.core.rows import WindowsZone, parse_row
from syncd.ports.ledger import AppointmentRecord
from syncd.ports.outbox import OutboxRow, OutboxSource

Work = tuple[AppointmentRecord, Appointment]


@dataclass(frozen=True, slots=True)
class RowReading:
    """How outbox rows are read: the EHR's zone, the session id prefix, the Windows zone table."""

    zone: ZoneInfo
    windows_zone: WindowsZone
    session_id_prefix: str = ""

    def parse(self, row: OutboxRow) -> Appointment:
        return parse_row(
            row.values,
            zone=self.zone,
            windows_zone=self.windows_zone,
            session_id_prefix=self.session_id_prefix,
        )

    def created_at(self, row: OutboxRow) -> datetime | None:
        """The row's ``created_at`` as naive UTC, or None when absent or unreadable."""
        value = row.values.get("created_at")
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                return None
        if not isinstance(value, datetime):
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.zone)
        return value.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class BadRow:
    """A due appointment whose row cannot be worked on: it is parked with this reason."""

    record: AppointmentRecord
    reason: str
    field: str


def rows_of(outbox: OutboxSource, event_ids: Sequence[int]) -> Mapping[int, OutboxRow]:
    return {r.event_id: r for r in outbox.rows(list(event_ids))}


def load(
    records: Sequence[AppointmentRecord],
    outbox: OutboxSource,
    reading: RowReading,
    *,
    on_row: Callable[[OutboxRow], None] = lambda _row: None,
) -> tuple[list[Work], list[BadRow]]:
    """Each record's latest row, parsed; the ones that cannot be worked on apart, with why."""
    rows = rows_of(outbox, [r.last_event_id for r in records])
    work: list[Work] = []
    bad: list[BadRow] = []
    for record in records:
        aid = record.appointment_id
        row = rows.get(record.last_event_id)
        if row is None:
            reason = (
                f"appointment {aid}: outbox row for event {record.last_event_id} is no longer there"
            )
            bad.append(BadRow(record, reason, "event_id"))
            continue
        try:
            appt = reading.parse(row)
        except InvalidRowError as err:
            bad.append(BadRow(record, str(err), err.field))
            continue
        if appt.appointment_id != aid:
            # The row is keyed differently from how it was ingested (null id at ingest).
            reason = f"appointment {aid}: field 'appointment_id': changed"
            bad.append(BadRow(record, reason, "appointment_id"))
            continue
        on_row(row)
        work.append((record, appt))
    return work, bad
