"""Jobs: resolved inputs and latest progress; code artifacts (uploaded training code).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("inputs", sa.JSON))
    op.add_column("jobs", sa.Column("progress", sa.JSON))
    op.create_table(
        "code_artifacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("blob_key", sa.String(80), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("entry", sa.String(255), nullable=False),
        sa.Column("created_by", sa.String(32)),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "blob_key"),
    )
    op.create_index("ix_code_artifacts_tenant_id", "code_artifacts", ["tenant_id"])


def downgrade() -> None:
    op.drop_table("code_artifacts")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress")
        batch.drop_column("inputs")
