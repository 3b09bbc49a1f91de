"""Drop the fingerprint columns no code reads.

``appointment.desired_fingerprint`` was never written, and ``appointment.applied_fingerprint`` and
``participant.fingerprint`` were written and never read: columns that look like a record of what
was sent, and are not, mislead the next reader.  Downgrade adds them back empty.

Revision ID: 0003_drop_unread_fingerprints
Revises: 0002_visit_outcomes
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_drop_unread_fingerprints"
down_revision: str | Sequence[str] | None = "0002_visit_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("appointment") as batch:
        batch.drop_column("desired_fingerprint")
        batch.drop_column("applied_fingerprint")
    with op.batch_alter_table("participant") as batch:
        batch.drop_column("fingerprint")


def downgrade() -> None:
    with op.batch_alter_table("participant") as batch:
        # Rows written after the upgrade have no fingerprint: the column comes back with a
        # default so that they fit the old NOT NULL.
        batch.add_column(sa.Column("fingerprint", sa.String(64), nullable=False, server_default=""))
    with op.batch_alter_table("appointment") as batch:
        batch.add_column(sa.Column("applied_fingerprint", sa.String(64), nullable=True))
        batch.add_column(sa.Column("desired_fingerprint", sa.String(64), nullable=True))
