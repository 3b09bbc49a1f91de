"""Join links for guests the clinic invites itself (``SYNCD_LINKS__ENABLED``).

``join_link`` holds one row per appointment and managed guest whose delivery is "N" while its
session is active: the URL the guest joins by, which carries the connect code (an access
credential).  ``guest_join_link`` is the view the EHR reads with its own database account, granted
on the view alone.  The table stays empty unless the setting is on.  Downgrade drops both.

Revision ID: 0009_join_links
Revises: 0008_applied_state
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0009_join_links"
down_revision: str | Sequence[str] | None = "0008_applied_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _identifier(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def _timestamp() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


VIEW_SQL = """
CREATE VIEW guest_join_link AS
SELECT
    appointment_id,
    participant_external_id,
    session_id,
    join_url,
    changed_at
FROM join_link
"""


def upgrade() -> None:
    op.create_table(
        "join_link",
        sa.Column("appointment_id", _identifier(96), nullable=False),
        sa.Column("participant_external_id", _identifier(64), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("participation_id", sa.BigInteger(), nullable=False),
        sa.Column("join_url", sa.String(500), nullable=False),
        sa.Column("changed_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint(
            "appointment_id", "participant_external_id", name=op.f("pk_join_link")
        ),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.execute(VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW guest_join_link")
    op.drop_table("join_link")
