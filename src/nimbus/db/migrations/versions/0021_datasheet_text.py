"""Datasheets: what only a person knows about a dataset version (motivation, composition,
collection process, uses, licence), editable after upload; the rest of the datasheet is
generated when it is read.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # {"motivation", "composition", "collection_process", "uses", "license", "updated_at",
    # "updated_by"}; null until someone writes one.
    op.add_column("dataset_versions", sa.Column("datasheet", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:  # SQLite rebuilds the table
        batch.drop_column("datasheet")
