"""Who holds the leader lease, precisely enough to tell that it is dead, and since when.

``lease.host`` and ``lease.pid`` name the holder's machine and process; ``process_start`` is that
process's per-start identity (the kernel's boot id and the process's start time in clock ticks,
from ``/proc``), so that a restarted container's new pid 1 can tell that the pid-1 holder on file
was an earlier start, now dead; ``acquired_at`` is when this holder took the lease (renewals keep
it).  All nullable: a row written by an older syncd is judged by its expiry alone.

Revision ID: 0005_lease_holder
Revises: 0004_fingerprint_key
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005_lease_holder"
down_revision: str | Sequence[str] | None = "0004_fingerprint_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _identifier(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
    timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    with op.batch_alter_table("lease") as batch:
        batch.add_column(sa.Column("host", _identifier(80), nullable=True))
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("process_start", _identifier(64), nullable=True))
        batch.add_column(sa.Column("acquired_at", timestamp, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lease") as batch:
        batch.drop_column("acquired_at")
        batch.drop_column("process_start")
        batch.drop_column("pid")
        batch.drop_column("host")
