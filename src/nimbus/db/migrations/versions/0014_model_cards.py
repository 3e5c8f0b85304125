"""Model cards: what only a person knows about a model version (description, intended use,
limitations, ethical considerations), editable after registration; the rest of the card is
generated when it is read.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # {"description", "intended_use", "limitations", "ethical_considerations", "updated_at",
    # "updated_by"}; null until someone writes one.
    op.add_column("model_versions", sa.Column("card", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:  # SQLite rebuilds the table
        batch.drop_column("card")
