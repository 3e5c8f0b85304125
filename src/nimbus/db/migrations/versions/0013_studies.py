"""Studies: hyperparameter searches and their trials (each trial a job; its number unique in
its study).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("search", sa.JSON, nullable=False),
        sa.Column("job", sa.JSON, nullable=False),
        sa.Column("best_trial", sa.Integer),
        sa.Column("created_by", sa.String(32)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.Column("reason", sa.Text),
    )
    op.create_index("ix_studies_tenant_created", "studies", ["tenant_id", "created_at"])
    op.create_table(
        "study_trials",
        sa.Column("study_id", sa.String(32), sa.ForeignKey("studies.id"), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, unique=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("pruned_step", sa.Integer),
        sa.Column("system_attrs", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("ended_at", TS),
    )


def downgrade() -> None:
    op.drop_table("study_trials")
    op.drop_index("ix_studies_tenant_created", "studies")
    op.drop_table("studies")
