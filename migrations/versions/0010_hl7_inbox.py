"""The HL7 inbox: scheduling messages accepted over MLLP, one whole-appointment row each.

A message is committed here before it is acknowledged; the engine reads the rows as it reads the
outbox's.  The table holds patient data (the appointment's guest), which is why superseded rows
are deleted.  Downgrade drops the table and whatever it held.

Revision ID: 0010_hl7_inbox
Revises: 0009_join_links
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0010_hl7_inbox"
down_revision: str | Sequence[str] | None = "0009_join_links"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _identifier(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
    op.create_table(
        "hl7_inbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("control_id", _identifier(199), nullable=False),
        sa.Column("appointment_id", _identifier(96), nullable=False),
        sa.Column("message_type", sa.String(8), nullable=False),
        sa.Column("message_at", _timestamp(), nullable=False),
        sa.Column("received_at", _timestamp(), nullable=False),
        sa.Column("superseded_at", _timestamp(), nullable=True),
        sa.Column("row_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hl7_inbox"),
        sa.UniqueConstraint("control_id", name="uq_hl7_inbox_control_id"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_hl7_inbox_appointment_id", "hl7_inbox", ["appointment_id", "message_at"])
    op.create_index("ix_hl7_inbox_superseded_at", "hl7_inbox", ["superseded_at"])


def downgrade() -> None:
    op.drop_index("ix_hl7_inbox_superseded_at", table_name="hl7_inbox")
    op.drop_index("ix_hl7_inbox_appointment_id", table_name="hl7_inbox")
    op.drop_table("hl7_inbox")
