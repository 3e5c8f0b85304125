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


_IMPORTED = "SELECT id FROM model_versions WHERE job_id IS NULL"


def downgrade() -> None:
    # A version without a job cannot be kept: imported versions go, with their blob
    # references and aliases (a deployment serving one must be deleted first: its foreign
    # key refuses the downgrade otherwise).
    op.execute(
        f"DELETE FROM blob_refs WHERE owner_kind = 'model_version' AND owner_id IN ({_IMPORTED})"
    )
    op.execute(
        "DELETE FROM model_aliases WHERE EXISTS (SELECT 1 FROM model_versions v WHERE "
        "v.model_id = model_aliases.model_id AND v.version = model_aliases.version AND "
        "v.job_id IS NULL)"
    )
    op.execute("DELETE FROM model_versions WHERE job_id IS NULL")
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=False)
