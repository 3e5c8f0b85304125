"""Dataset and dataset version repository."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nimbus.db.tables import Dataset, DatasetVersion, JobRow


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    created_at: datetime
    latest_version: int | None
    versions: int


@dataclass(frozen=True)
class DatasetOverview:
    """A dataset as the console lists it: its latest version's task, format and size."""

    name: str
    created_at: datetime
    versions: int
    latest_version: int | None
    task: str | None
    format: str | None
    size_bytes: int | None
    updated_at: datetime | None  # when the latest version was uploaded


@dataclass(frozen=True)
class JobUse:
    """A job that read a dataset version."""

    id: str
    state: str
    model: str | None
    created_at: datetime
    finished_at: datetime | None


def get_dataset(session: Session, tenant_id: int, name: str) -> Dataset | None:
    query = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == name)
    return session.scalars(query).first()


def get_or_create_dataset(session: Session, tenant_id: int, name: str) -> Dataset:
    """The tenant's dataset called ``name``, created if missing (safe under races)."""
    dataset = get_dataset(session, tenant_id, name)
    if dataset is not None:
        return dataset
    try:
        with session.begin_nested():
            dataset = Dataset(tenant_id=tenant_id, name=name, last_version=0)
            session.add(dataset)
    except IntegrityError:
        dataset = get_dataset(session, tenant_id, name)
        if dataset is None:
            raise
    return dataset


def list_datasets(session: Session, tenant_id: int) -> list[DatasetSummary]:
    """The tenant's datasets by name, with their latest version number and version count."""
    query = (
        select(
            Dataset.name,
            Dataset.created_at,
            func.max(DatasetVersion.version),
            func.count(DatasetVersion.id),
        )
        .outerjoin(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
        .where(Dataset.tenant_id == tenant_id)
        .group_by(Dataset.id, Dataset.name, Dataset.created_at)
        .order_by(Dataset.name)
    )
    return [DatasetSummary(n, c, latest, count) for n, c, latest, count in session.execute(query)]


def list_overview(session: Session, tenant_id: int) -> list[DatasetOverview]:
    """The tenant's datasets by name, each with its latest version's row, in one query."""
    counts = (
        select(
            DatasetVersion.dataset_id,
            func.max(DatasetVersion.version).label("latest"),
            func.count(DatasetVersion.id).label("versions"),
        )
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(Dataset.tenant_id == tenant_id)
        .group_by(DatasetVersion.dataset_id)
        .subquery()
    )
    query = (
        select(
            Dataset.name,
            Dataset.created_at,
            counts.c.versions,
            counts.c.latest,
            DatasetVersion.task,
            DatasetVersion.format,
            DatasetVersion.size_bytes,
            DatasetVersion.created_at,
        )
        .outerjoin(counts, counts.c.dataset_id == Dataset.id)
        .outerjoin(
            DatasetVersion,
            and_(
                DatasetVersion.dataset_id == Dataset.id, DatasetVersion.version == counts.c.latest
            ),
        )
        .where(Dataset.tenant_id == tenant_id)
        .order_by(Dataset.name)
    )
    return [
        DatasetOverview(name, created, versions or 0, latest, task, fmt, size, updated)
        for name, created, versions, latest, task, fmt, size, updated in session.execute(query)
    ]


def jobs_using(
    session: Session, tenant_id: int, name: str, version: int, limit: int
) -> list[JobUse]:
    """The tenant's jobs that read ``name:version`` (as resolved at submit), newest first."""
    read = JobRow.inputs["dataset"]
    query = (
        select(
            JobRow.id,
            JobRow.state,
            JobRow.spec["model"].as_string(),
            JobRow.created_at,
            JobRow.finished_at,
        )
        .where(
            JobRow.tenant_id == tenant_id,
            read["dataset"].as_string() == name,
            read["version"].as_integer() == version,
        )
        .order_by(JobRow.created_at.desc(), JobRow.id)
        .limit(limit)
    )
    return [JobUse(*row) for row in session.execute(query).tuples()]


def list_versions(session: Session, dataset_id: int) -> list[DatasetVersion]:
    query = (
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset_id)
        .order_by(DatasetVersion.version)
    )
    return list(session.scalars(query))


def get_version(session: Session, dataset_id: int, version: int | None) -> DatasetVersion | None:
    """Version number ``version`` of the dataset, or its latest when ``version`` is None."""
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id)
    if version is None:
        query = query.order_by(DatasetVersion.version.desc()).limit(1)
    else:
        query = query.where(DatasetVersion.version == version)
    return session.scalars(query).first()


def find_by_content(session: Session, dataset_id: int, content_hash: str) -> DatasetVersion | None:
    """The version with this content hash, for dedupe."""
    query = select(DatasetVersion).where(
        DatasetVersion.dataset_id == dataset_id, DatasetVersion.content_hash == content_hash
    )
    return session.scalars(query).first()


def allocate_version_number(session: Session, dataset: Dataset) -> int:
    """Take the dataset's next version number.

    The UPDATE row-locks the dataset on PostgreSQL until the transaction ends, so
    concurrent uploads to one dataset take numbers one after another; a number given to a
    transaction that rolls back is simply given out again.
    """
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset.id)
        .values(last_version=Dataset.last_version + 1)
        .execution_options(synchronize_session=False)
    )
    session.refresh(dataset, ["last_version"])
    return dataset.last_version


def create_version(session: Session, **fields: Any) -> DatasetVersion:
    row = DatasetVersion(**fields)
    session.add(row)
    session.flush()
    return row


def delete_version(session: Session, row: DatasetVersion) -> None:
    session.execute(delete(DatasetVersion).where(DatasetVersion.id == row.id))
    session.flush()


def delete_dataset(session: Session, dataset: Dataset) -> None:
    """Delete the dataset row and its version rows (blob references are the caller's)."""
    session.execute(delete(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id))
    session.execute(delete(Dataset).where(Dataset.id == dataset.id))
    session.flush()
