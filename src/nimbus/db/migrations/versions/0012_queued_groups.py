"""The queued jobs by group (tenant, resources), each in the scheduling policy's order: the
claim reads the first jobs of each group by index seeks (nimbus.db.queue_read).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    op.create_index(
        "ix_jobs_queued_groups",
        "jobs",
        [
            "state",
            "tenant_id",
            "cpus",
            "gpus",
            "memory_bytes",
            "workers",
            sa.text("priority DESC"),
            "created_at",
            "id",
        ],
        sqlite_where=_QUEUED,
        postgresql_where=_QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_groups", "jobs")
