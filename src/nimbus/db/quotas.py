"""Tenant quotas repository: the limits set per tenant, and what a tenant holds now.

A tenant's stored bytes are the sizes of the blobs its records hold: every file of its
dataset versions (source and prepared arrays), its code artifacts and its jobs' artifacts.
A blob two records share is counted for each (what the tenant would store on its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nimbus.db import jobs, tracking
from nimbus.db.tables import (
    CodeArtifactRow,
    Dataset,
    DatasetVersion,
    DeploymentRow,
    JobArtifactRow,
    JobRow,
    Tenant,
    TenantQuotaRow,
)

FIELDS = ("jobs", "deployments", "replicas", "bytes")


@dataclass(frozen=True)
class Usage:
    """What a tenant holds now, in the units of its quotas."""

    jobs: int
    deployments: int
    replicas: int
    bytes: int


def get(session: Session, tenant_id: int) -> TenantQuotaRow | None:
    return session.get(TenantQuotaRow, tenant_id)


def list_all(session: Session) -> list[tuple[Tenant, TenantQuotaRow | None]]:
    """Every tenant with its quota row (None where none was set), by name."""
    query = (
        select(Tenant, TenantQuotaRow)
        .outerjoin(TenantQuotaRow, TenantQuotaRow.tenant_id == Tenant.id)
        .order_by(Tenant.name)
    )
    return [(tenant, row) for tenant, row in session.execute(query).tuples()]


def put(
    session: Session,
    tenant_id: int,
    limits: dict[str, int | None],
    now: datetime,
    by: str | None,
) -> TenantQuotaRow:
    """Set the given limits (a None value: no limit); the others are kept."""
    row = session.get(TenantQuotaRow, tenant_id)
    if row is None:
        row = TenantQuotaRow(tenant_id=tenant_id, updated_at=now)
        session.add(row)
    for name, value in limits.items():
        if name not in FIELDS:
            raise ValueError(f"unknown quota {name!r}")
        setattr(row, name, value)
    row.updated_at, row.updated_by = now, by
    session.flush()
    return row


def lock_tenant(session: Session, tenant_id: int) -> None:
    """Hold the tenant's row until this transaction ends (``SELECT ... FOR UPDATE`` on
    PostgreSQL), so that a quota check and the insert it allows are one step for the
    tenant: a concurrent request's check waits, then counts what this one added. SQLite
    needs none: its write transactions already run one at a time."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def stored_bytes(session: Session, tenant_id: int) -> int:
    """The bytes of the tenant's dataset versions, code artifacts, job artifacts and
    tracking runs' artifacts."""
    files = session.scalars(
        select(DatasetVersion.files)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(Dataset.tenant_id == tenant_id)
    )
    datasets = sum(
        int(entry.get("size", 0))
        for version_files in files
        for entry in version_files.values()
        if isinstance(entry, dict)
    )
    code = session.scalar(
        select(func.coalesce(func.sum(CodeArtifactRow.size), 0)).where(
            CodeArtifactRow.tenant_id == tenant_id
        )
    )
    artifacts = session.scalar(
        select(func.coalesce(func.sum(JobArtifactRow.size), 0))
        .join(JobRow, JobRow.id == JobArtifactRow.job_id)
        .where(JobRow.tenant_id == tenant_id)
    )
    runs = tracking.artifact_bytes(session, tenant_id)
    return datasets + int(code or 0) + int(artifacts or 0) + runs


def deployments(session: Session, tenant_id: int) -> tuple[int, int]:
    """How many deployments the tenant has, and their replicas in all."""
    count, replicas = session.execute(
        select(func.count(), func.coalesce(func.sum(DeploymentRow.replicas), 0)).where(
            DeploymentRow.tenant_id == tenant_id
        )
    ).one()
    return int(count), int(replicas)


def usage(session: Session, tenant_id: int) -> Usage:
    """Everything the tenant's quotas count, now."""
    count, replicas = deployments(session, tenant_id)
    return Usage(
        jobs=jobs.count_active(session, tenant_id),
        deployments=count,
        replicas=replicas,
        bytes=stored_bytes(session, tenant_id),
    )
