"""Drift: what clinic staff changed directly in SecureVideo, per appointment and kind.

One row per appointment and kind of drift (``syncd.core.drift``): the session it was seen on and
when it was first seen.  Ids and times only.  Downgrade drops the table; the older code does not
look for drift.

Revision ID: 0011_drift
Revises: 0010_hl7_inbox
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0011_drift"
down_revision: str | Sequence[str] | None = "0010_hl7_inbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _identifier(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
    timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    op.create_table(
        "drift",
        sa.Column("appointment_id", _identifier(96), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=True),
        sa.Column("detected_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("appointment_id", "kind", name=op.f("pk_drift")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    op.drop_table("drift")
