"""The jobs list at scale: a job's model and dataset (name, version) as columns, filled from
its spec, with indexes for the console's filters (state, model, dataset) in creation order,
and an index on a job's metrics by name (its best or last value of one metric by seek).

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BATCH = 1000


def dataset_of(reference: str) -> tuple[str | None, int | None]:
    """``NAME:V`` (what a job's spec holds) as (name, version)."""
    name, sep, version = reference.rpartition(":")
    if sep and version.isdigit():
        return name, int(version)
    return (reference or None), None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model", sa.String(255)))
        batch.add_column(sa.Column("dataset_name", sa.String(255)))
        batch.add_column(sa.Column("dataset_version", sa.Integer))
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("model", sa.String),
        sa.column("dataset_name", sa.String),
        sa.column("dataset_version", sa.Integer),
    )
    bind = op.get_bind()
    after = ""
    while True:  # the existing jobs, a batch at a time in id order
        rows = bind.execute(
            sa.select(jobs.c.id, jobs.c.spec)
            .where(jobs.c.id > after)
            .order_by(jobs.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        for job_id, spec in rows:
            name, version = dataset_of(str((spec or {}).get("dataset") or ""))
            bind.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(model=(spec or {}).get("model"), dataset_name=name, dataset_version=version)
            )
        after = rows[-1][0]
    op.create_index("ix_jobs_tenant_state", "jobs", ["tenant_id", "state", "created_at"])
    op.create_index("ix_jobs_tenant_model", "jobs", ["tenant_id", "model", "created_at"])
    op.create_index("ix_jobs_tenant_dataset", "jobs", ["tenant_id", "dataset_name", "created_at"])
    op.create_index(
        "ix_job_metrics_job_name",
        "job_metrics",
        ["job_id", "name", "attempt_number", "step", "value"],
    )


def downgrade() -> None:
    op.drop_index("ix_job_metrics_job_name", "job_metrics")
    for name in ("ix_jobs_tenant_dataset", "ix_jobs_tenant_model", "ix_jobs_tenant_state"):
        op.drop_index(name, "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("dataset_version")
        batch.drop_column("dataset_name")
        batch.drop_column("model")
