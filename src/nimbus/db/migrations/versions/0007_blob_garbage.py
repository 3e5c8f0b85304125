"""Blob garbage: when each reference was added (so an upload's pin left by a crash can
expire), and when each blob of the store was first seen with no reference.

Revision ID: 0007
Revises: 0006
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("blob_refs", sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    # References recorded before this column are dated now: an upload pin among them (left
    # by a crash) expires one grace period after the upgrade.
    refs = sa.table("blob_refs", sa.column("created_at", sa.DateTime(timezone=True)))
    op.execute(refs.update().values(created_at=datetime.now(UTC)))
    op.create_table(
        "blob_orphans",
        sa.Column("blob_key", sa.String(80), primary_key=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("blob_orphans")
    with op.batch_alter_table("blob_refs") as batch:
        batch.drop_column("created_at")
