"""Model versions imported from an ONNX file (``nimbus models import``) were trained by no
job: ``model_versions.job_id`` becomes nullable (null = imported).

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:  # SQLite rebuilds the table
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM model_versions WHERE job_id IS NULL")
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=False)
