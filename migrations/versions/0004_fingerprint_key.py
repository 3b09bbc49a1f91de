"""A per-ledger key for fingerprints of PHI.

syncd must remember and show participants and contact details without holding them: it keeps an
HMAC of each under a key that only this ledger has.  The upgrade makes the key; downgrade drops it
(and with it the meaning of every fingerprint written under it).

Revision ID: 0004_fingerprint_key
Revises: 0003_drop_unread_fingerprints
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_fingerprint_key"
down_revision: str | Sequence[str] | None = "0003_drop_unread_fingerprints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_cursor") as batch:
        batch.add_column(sa.Column("fingerprint_key", sa.String(64), nullable=True))
    cursor = sa.table("sync_cursor", sa.column("id"), sa.column("fingerprint_key"))
    op.execute(
        cursor.update()
        .where(cursor.c.id == 1, cursor.c.fingerprint_key.is_(None))
        .values(fingerprint_key=secrets.token_hex(32))
    )


def downgrade() -> None:
    with op.batch_alter_table("sync_cursor") as batch:
        batch.drop_column("fingerprint_key")
