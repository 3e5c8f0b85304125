"""Deployments: the per-request caps of their replicas (rows, elements per tensor).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Null: the replica's defaults (serving.protocol.RequestLimits), as before this column.
    op.add_column("deployments", sa.Column("max_batch_rows", sa.Integer, nullable=True))
    op.add_column("deployments", sa.Column("max_tensor_elements", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("max_tensor_elements")
        batch.drop_column("max_batch_rows")
