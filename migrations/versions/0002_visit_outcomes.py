"""Visit outcomes: the appointment's scheduled time, what SecureVideo reports, and a view of both.

``appointment.schedule_ts`` is the managed session's time (UTC), set by the engine when it settles
an appointment; the outcome collector and the billing report select by it.  ``session_outcome``
holds one row per appointment (its managed session's billing values), ``participant_outcome`` one
row per appointment and managed participant (RSVP, first connection).  ``visit_outcome`` joins them
for clinic IT: one row per appointment and participant.  Ids, codes and timestamps only.

Revision ID: 0002_visit_outcomes
Revises: 0001_initial
Create Date: 2025-02-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002_visit_outcomes"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types are spelled out here rather than imported from the models: a migration must keep meaning
# what it meant when it was written, whatever the models become.

MYSQL_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def identifier(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def timestamp() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


# One row per appointment and managed participant; an appointment whose session has no managed
# participant still shows once, with the participant columns null.  CASE rather than GREATEST:
# SQLite has no GREATEST.
VIEW_SQL = """
CREATE VIEW visit_outcome AS
SELECT
    s.appointment_id AS appointment_id,
    s.session_id AS session_id,
    s.host_external_id AS host_external_id,
    s.schedule_ts AS schedule_ts,
    s.schedule_type AS schedule_type,
    p.participant_external_id AS participant_external_id,
    p.participation_id AS participation_id,
    p.rsvp AS rsvp,
    p.connection_ts AS connection_ts,
    s.billable_ts AS billable_ts,
    s.duration_minutes AS duration_minutes,
    s.wait_time AS wait_time,
    s.billable_status_cd AS billable_status_cd,
    s.final_at AS final_at,
    CASE
        WHEN p.changed_at IS NOT NULL AND p.changed_at > s.changed_at THEN p.changed_at
        ELSE s.changed_at
    END AS changed_at
FROM session_outcome s
LEFT JOIN participant_outcome p
    ON p.appointment_id = s.appointment_id AND p.session_id = s.session_id
"""


def upgrade() -> None:
    with op.batch_alter_table("appointment") as batch:
        batch.add_column(sa.Column("schedule_ts", timestamp(), nullable=True))
        batch.create_index(op.f("ix_appointment_schedule_ts"), ["schedule_ts"])
    op.create_table(
        "session_outcome",
        sa.Column("appointment_id", identifier(96), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("host_external_id", identifier(64), nullable=True),
        sa.Column("schedule_ts", timestamp(), nullable=True),
        sa.Column("schedule_type", sa.String(16), nullable=True),
        sa.Column("billable_ts", timestamp(), nullable=True),
        sa.Column("duration_minutes", sa.Integer(), nullable=True),
        sa.Column("wait_time", sa.Integer(), nullable=True),
        sa.Column("billable_status_cd", sa.String(16), nullable=True),
        sa.Column("final_at", timestamp(), nullable=True),
        sa.Column("changed_at", timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("appointment_id", name=op.f("pk_session_outcome")),
        **MYSQL_OPTIONS,
    )
    op.create_index(op.f("ix_session_outcome_session_id"), "session_outcome", ["session_id"])
    op.create_table(
        "participant_outcome",
        sa.Column("appointment_id", identifier(96), nullable=False),
        sa.Column("participant_external_id", identifier(64), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("participation_id", sa.BigInteger(), nullable=True),
        sa.Column("rsvp", sa.String(16), nullable=True),
        sa.Column("connection_ts", timestamp(), nullable=True),
        sa.Column("changed_at", timestamp(), nullable=False),
        sa.PrimaryKeyConstraint(
            "appointment_id", "participant_external_id", name=op.f("pk_participant_outcome")
        ),
        **MYSQL_OPTIONS,
    )
    op.execute(VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW visit_outcome")
    op.drop_table("participant_outcome")
    op.drop_index(op.f("ix_session_outcome_session_id"), table_name="session_outcome")
    op.drop_table("session_outcome")
    with op.batch_alter_table("appointment") as batch:
        batch.drop_index(op.f("ix_appointment_schedule_ts"))
        batch.drop_column("schedule_ts")
