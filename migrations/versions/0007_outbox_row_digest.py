"""Row digests and the last outbox rewind: so that an outbox that goes back loses nothing.

An outbox restored from a backup starts its event ids again; the ids syncd holds then mean
nothing.  Content does: per appointment, the keyed digest of the newest row read
(``last_digest``) and of the row last synced or skipped (``applied_digest``), and on the cursor
when the last rewind was noticed and whether its re-read has been applied.  Existing ledgers get
NULL digests, which never count as a rewind.  Downgrade drops the columns and the index.

Revision ID: 0007_outbox_row_digest
Revises: 0005_lease_holder
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007_outbox_row_digest"
down_revision: str | Sequence[str] | None = "0005_lease_holder"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("appointment") as batch:
        batch.add_column(sa.Column("last_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("applied_digest", sa.String(64), nullable=True))
        batch.create_index("ix_appointment_last_event_id", ["last_event_id"])
    with op.batch_alter_table("sync_cursor") as batch:
        batch.add_column(sa.Column("rewound_at", _timestamp(), nullable=True))
        batch.add_column(sa.Column("rewound_from_event_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("rewound_newest_event_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("rewind_applied_at", _timestamp(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_cursor") as batch:
        batch.drop_column("rewind_applied_at")
        batch.drop_column("rewound_newest_event_id")
        batch.drop_column("rewound_from_event_id")
        batch.drop_column("rewound_at")
    with op.batch_alter_table("appointment") as batch:
        batch.drop_index("ix_appointment_last_event_id")
        batch.drop_column("applied_digest")
        batch.drop_column("last_digest")
