"""Applied state: what syncd last sent, so a change is the EHR versus that, not versus SecureVideo.

``appointment`` gains the ExternalSessionId the appointment got (kept when the configured prefix
changes) and the ScheduleTs syncd sent.  ``participant`` gains the fields sent to each owned
participation — name, e-mail and SMS as keyed fingerprints only — and is keyed by the participant's
fingerprint instead of its raw external id (often an MRN): existing rows are converted with the
ledger's fingerprint key.  Rows from before have no fields (``deliver`` NULL): the first pass takes
what SecureVideo shows as applied, with no call.

Downgrade drops the new columns and the participant rows (a fingerprint cannot be turned back into
the id it came from); the older code then treats each participant's PacketId as unknown.

Revision ID: 0008_applied_state
Revises: 0007_outbox_row_digest
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from syncd.core.fingerprint import Fingerprints

revision: str = "0008_applied_state"
down_revision: str | Sequence[str] | None = "0007_outbox_row_digest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARTICIPANT_COLUMNS = (
    "deliver",
    "securevideo_user_id",
    "name_fp",
    "email_fp",
    "sms_fp",
    "time_zone_windows_id",
    "svc_id",
    "deposit",
)


def identifier(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def timestamp() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("appointment") as batch:
        batch.add_column(sa.Column("external_session_id", identifier(128), nullable=True))
        batch.add_column(sa.Column("sent_schedule_ts", timestamp(), nullable=True))
    with op.batch_alter_table("participant") as batch:
        batch.add_column(sa.Column("deliver", sa.String(1), nullable=True))
        batch.add_column(sa.Column("securevideo_user_id", identifier(64), nullable=True))
        batch.add_column(sa.Column("name_fp", sa.String(16), nullable=True))
        batch.add_column(sa.Column("email_fp", sa.String(16), nullable=True))
        batch.add_column(sa.Column("sms_fp", sa.String(16), nullable=True))
        batch.add_column(sa.Column("time_zone_windows_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("svc_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("deposit", sa.String(32), nullable=True))
    _key_participants_by_fingerprint()


def _key_participants_by_fingerprint() -> None:
    bind = op.get_bind()
    cursor = sa.table("sync_cursor", sa.column("id"), sa.column("fingerprint_key"))
    key = bind.execute(sa.select(cursor.c.fingerprint_key).where(cursor.c.id == 1)).scalar()
    participant = sa.table("participant", sa.column("appointment_id"), sa.column("external_id"))
    if key is None:
        # No key, no fingerprint: the rows go, and the first pass adopts what SecureVideo shows.
        op.execute(participant.delete())
        return
    fp = Fingerprints(bytes.fromhex(key))
    rows = bind.execute(sa.select(participant.c.appointment_id, participant.c.external_id)).all()
    for appointment_id, external_id in rows:
        bind.execute(
            participant.update()
            .where(
                participant.c.appointment_id == appointment_id,
                participant.c.external_id == external_id,
            )
            .values(external_id=fp.participant(external_id))
        )


def downgrade() -> None:
    op.execute(sa.table("participant").delete())
    with op.batch_alter_table("participant") as batch:
        for name in reversed(_PARTICIPANT_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("appointment") as batch:
        batch.drop_column("sent_schedule_ts")
        batch.drop_column("external_session_id")
