"""Who holds a claim on a blob key: the control plane, its machine and its process, so a
claim left by a control plane that provably died is dropped at once (services/blobs.py).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blob_refs") as batch:
        batch.add_column(sa.Column("holder_plane", sa.String(128), nullable=True))
        batch.add_column(sa.Column("holder_host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("holder_pid", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blob_refs") as batch:
        batch.drop_column("holder_pid")
        batch.drop_column("holder_host")
        batch.drop_column("holder_plane")
