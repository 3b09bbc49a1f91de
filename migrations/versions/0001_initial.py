"""The initial ledger: cursor, appointments, operation journal, participants, leases.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types are spelled out here rather than imported from the models: a migration must keep meaning
# what it meant when it was written, whatever the models become.

#: InnoDB for transactions and utf8mb4 for any error text, whatever the server's defaults are.
MYSQL_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def identifier(length: int) -> sa.types.TypeEngine[str]:
    """Ids compare exactly: MariaDB's default collation would fold case."""
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def timestamp() -> sa.types.TypeEngine[datetime]:
    """Naive UTC; microseconds on MariaDB too, whose DATETIME drops them by default."""
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    cursor = op.create_table(
        "sync_cursor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_sync_cursor_singleton")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_cursor")),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "appointment",
        sa.Column("appointment_id", identifier(96), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("applied_event_id", sa.BigInteger(), nullable=True),
        sa.Column("desired_fingerprint", sa.String(64), nullable=True),
        sa.Column("applied_fingerprint", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reason", sa.String(1000), nullable=True),
        sa.Column("next_attempt_at", timestamp(), nullable=True),
        sa.Column("session_id", sa.BigInteger(), nullable=True),
        sa.Column("host_external_id", identifier(64), nullable=True),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.Column("parked_at", timestamp(), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'synced', 'parked', 'skipped')", name=op.f("ck_appointment_state")
        ),
        sa.PrimaryKeyConstraint("appointment_id", name=op.f("pk_appointment")),
        **MYSQL_OPTIONS,
    )
    op.create_index(
        op.f("ix_appointment_state_next_attempt_at"), "appointment", ["state", "next_attempt_at"]
    )
    op.create_table(
        "operation",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("appointment_id", identifier(96), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.String(32), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=True),
        sa.Column("participant_external_id", identifier(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(1000), nullable=True),
        sa.Column("started_at", timestamp(), nullable=True),
        sa.Column("finished_at", timestamp(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "state IN ('intent', 'applied', 'failed', 'ambiguous', 'resolved')",
            name=op.f("ck_operation_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operation")),
        **MYSQL_OPTIONS,
    )
    op.create_index(op.f("ix_operation_appointment_id"), "operation", ["appointment_id"])
    op.create_index(op.f("ix_operation_state"), "operation", ["state"])
    op.create_table(
        "participant",
        sa.Column("appointment_id", identifier(96), nullable=False),
        sa.Column("external_id", identifier(64), nullable=False),
        sa.Column("session_id", sa.BigInteger(), nullable=False),
        sa.Column("participation_id", sa.BigInteger(), nullable=True),
        sa.Column("packet_id", sa.Integer(), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("appointment_id", "external_id", name=op.f("pk_participant")),
        **MYSQL_OPTIONS,
    )
    op.create_table(
        "lease",
        sa.Column("name", identifier(64), nullable=False),
        sa.Column("holder", identifier(128), nullable=False),
        sa.Column("expires_at", timestamp(), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_lease")),
        **MYSQL_OPTIONS,
    )
    # The one cursor row exists from the start, so advancing it is a plain guarded UPDATE.
    op.bulk_insert(
        cursor,
        [{"id": 1, "last_event_id": 0, "updated_at": datetime.now(UTC).replace(tzinfo=None)}],
    )


def downgrade() -> None:
    op.drop_table("lease")
    op.drop_table("participant")
    op.drop_index(op.f("ix_operation_state"), table_name="operation")
    op.drop_index(op.f("ix_operation_appointment_id"), table_name="operation")
    op.drop_table("operation")
    op.drop_index(op.f("ix_appointment_state_next_attempt_at"), table_name="appointment")
    op.drop_table("appointment")
    op.drop_table("sync_cursor")
