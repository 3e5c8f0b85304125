"""Several control planes: each one's registration and heartbeat, and the scheduler's
leader lease (one row, its epoch the fencing token of every scheduler write).

Revision ID: 0009
Revises: 0008
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "control_planes",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("url", sa.String(300), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("executor", sa.String(32), nullable=False),
        sa.Column("capacity", sa.JSON, nullable=False),
        sa.Column("jobs_dir", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    leases = op.create_table(
        "leader_leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(128)),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    # The one row every election updates (never inserted by a server: no insert race).
    op.bulk_insert(
        leases,
        [
            {
                "name": "scheduler",
                "holder": None,
                "epoch": 0,
                "acquired_at": None,
                "expires_at": datetime(1970, 1, 1, tzinfo=UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("leader_leases")
    op.drop_table("control_planes")
