"""Tenant quotas: concurrent jobs, deployments, replicas and stored bytes per tenant.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("jobs", sa.Integer),
        sa.Column("deployments", sa.Integer),
        sa.Column("replicas", sa.Integer),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(32)),
    )


def downgrade() -> None:
    op.drop_table("tenant_quotas")
