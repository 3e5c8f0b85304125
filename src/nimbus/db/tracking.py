"""Repository of MLflow-compatible tracking: experiments and runs with their params, tags,
metric points and artifacts (tables in :mod:`nimbus.db.tracking_tables`).

Every function takes a :class:`~sqlalchemy.orm.Session`; reads are scoped by tenant, so
another tenant's experiment or run is simply not found."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nimbus.db.tracking_tables import (
    ExperimentRow,
    RunArtifactRow,
    RunMetricRow,
    RunParamRow,
    RunRow,
    RunTagRow,
)
from nimbus.errors import Conflict, InvalidInput

ACTIVE = "active"
DELETED = "deleted"


def new_run_id() -> str:
    """32 hex characters, the shape of MLflow's own run ids."""
    return secrets.token_hex(16)


@contextmanager
def conflict_on_race(session: Session, message: str) -> Iterator[None]:
    """The writes inside in a savepoint; a unique constraint they break (another writer got
    there first) is a Conflict saying ``message``, and the session goes on."""
    try:
        with session.begin_nested():
            yield
    except IntegrityError:
        raise Conflict(message) from None


def create_experiment(
    session: Session, tenant_id: int, name: str, tags: dict[str, str], now: datetime
) -> ExperimentRow:
    """A new experiment; Conflict when the tenant has one of that name (even deleted)."""
    row = ExperimentRow(
        tenant_id=tenant_id,
        name=name,
        lifecycle_stage=ACTIVE,
        tags=tags,
        created_at=now,
        updated_at=now,
    )
    with conflict_on_race(session, f"experiment {name!r} already exists"):
        session.add(row)
    return row


def experiment(session: Session, tenant_id: int, experiment_id: int) -> ExperimentRow | None:
    row = session.get(ExperimentRow, experiment_id)
    return row if row is not None and row.tenant_id == tenant_id else None


def experiment_by_name(session: Session, tenant_id: int, name: str) -> ExperimentRow | None:
    return session.scalars(
        select(ExperimentRow).where(
            ExperimentRow.tenant_id == tenant_id, ExperimentRow.name == name
        )
    ).first()


def experiments(session: Session, tenant_id: int, stages: Sequence[str]) -> list[ExperimentRow]:
    """The tenant's experiments in those lifecycle stages, newest first."""
    return list(
        session.scalars(
            select(ExperimentRow)
            .where(ExperimentRow.tenant_id == tenant_id, ExperimentRow.lifecycle_stage.in_(stages))
            .order_by(ExperimentRow.id.desc())
        )
    )


@dataclass(frozen=True)
class NewRun:
    experiment_id: int
    name: str
    user_id: str
    start_time: int
    created_by: str | None


def create_run(session: Session, tenant_id: int, new: NewRun, tags: dict[str, str]) -> RunRow:
    row = RunRow(
        id=new_run_id(),
        tenant_id=tenant_id,
        experiment_id=new.experiment_id,
        name=new.name,
        status="RUNNING",
        user_id=new.user_id,
        start_time=new.start_time,
        end_time=None,
        lifecycle_stage=ACTIVE,
        created_by=new.created_by,
    )
    session.add(row)
    session.flush()
    set_tags(session, row.id, tags)
    return row


def run(session: Session, tenant_id: int, run_id: str) -> RunRow | None:
    row = session.get(RunRow, run_id)
    return row if row is not None and row.tenant_id == tenant_id else None


def runs(
    session: Session,
    tenant_id: int,
    experiment_ids: Sequence[int] | None,
    stages: Sequence[str],
    limit: int | None = None,
) -> list[RunRow]:
    """The tenant's runs (of those experiments, when given) in those lifecycle stages,
    newest first (``limit`` at most)."""
    query = select(RunRow).where(RunRow.tenant_id == tenant_id, RunRow.lifecycle_stage.in_(stages))
    if experiment_ids is not None:
        query = query.where(RunRow.experiment_id.in_(experiment_ids))
    return list(session.scalars(query.order_by(RunRow.start_time.desc(), RunRow.id).limit(limit)))


def log_params(session: Session, run_id: str, params: dict[str, str]) -> None:
    """Record params; logging a key again is allowed only with the same value (as MLflow)."""
    if not params:
        return
    stored = {
        r.key: r.value
        for r in session.scalars(
            select(RunParamRow).where(RunParamRow.run_id == run_id, RunParamRow.key.in_(params))
        )
    }
    for key, value in params.items():
        if key in stored and stored[key] != value:
            raise InvalidInput(
                f"param {key!r} of run {run_id} was already logged with value "
                f"{stored[key]!r}; a param cannot change (new value {value!r})"
            )
    with conflict_on_race(session, f"params of run {run_id} were logged concurrently; try again"):
        session.add_all(
            RunParamRow(run_id=run_id, key=k, value=v) for k, v in params.items() if k not in stored
        )


def set_tags(session: Session, run_id: str, tags: dict[str, str]) -> None:
    """Set tags (a later value replaces an earlier one)."""
    if not tags:
        return
    with conflict_on_race(session, f"tags of run {run_id} were set concurrently; try again"):
        session.execute(
            delete(RunTagRow).where(RunTagRow.run_id == run_id, RunTagRow.key.in_(tags))
        )
        session.add_all(RunTagRow(run_id=run_id, key=k, value=v) for k, v in tags.items())


def delete_tag(session: Session, run_id: str, key: str) -> bool:
    done = session.execute(
        delete(RunTagRow).where(RunTagRow.run_id == run_id, RunTagRow.key == key)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Point:
    key: str
    value: float
    timestamp: int
    step: int


def log_metrics(session: Session, run_id: str, points: Iterable[Point]) -> None:
    session.add_all(
        RunMetricRow(run_id=run_id, key=p.key, value=p.value, timestamp=p.timestamp, step=p.step)
        for p in points
    )
    session.flush()


def params_of(session: Session, run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {r: {} for r in run_ids}
    for row in session.scalars(select(RunParamRow).where(RunParamRow.run_id.in_(run_ids))):
        found[row.run_id][row.key] = row.value
    return found


def tags_of(session: Session, run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {r: {} for r in run_ids}
    for row in session.scalars(select(RunTagRow).where(RunTagRow.run_id.in_(run_ids))):
        found[row.run_id][row.key] = row.value
    return found


def latest_metrics(session: Session, run_ids: Sequence[str]) -> dict[str, dict[str, Point]]:
    """Each run's latest point of every metric: the highest step, then the latest
    timestamp, then the last logged (MLflow's rule). Chosen by the database (a window over
    each run's series), so a run of a million points reads one row per metric."""
    found: dict[str, dict[str, Point]] = {r: {} for r in run_ids}
    rank = (
        func.row_number()
        .over(
            partition_by=(RunMetricRow.run_id, RunMetricRow.key),
            order_by=(
                RunMetricRow.step.desc(),
                RunMetricRow.timestamp.desc(),
                RunMetricRow.id.desc(),
            ),
        )
        .label("rank")
    )
    ranked = (
        select(
            RunMetricRow.run_id,
            RunMetricRow.key,
            RunMetricRow.value,
            RunMetricRow.timestamp,
            RunMetricRow.step,
            rank,
        )
        .where(RunMetricRow.run_id.in_(run_ids))
        .subquery()
    )
    query = select(
        ranked.c.run_id, ranked.c.key, ranked.c.value, ranked.c.timestamp, ranked.c.step
    ).where(ranked.c.rank == 1)
    for run_id, key, value, timestamp, step in session.execute(query):
        found[run_id][key] = Point(key, value, timestamp, step)
    return found


def metric_history(session: Session, run_id: str, key: str, offset: int, limit: int) -> list[Point]:
    """Points of one metric in the order they were logged, ``limit`` from ``offset``."""
    query = (
        select(RunMetricRow)
        .where(RunMetricRow.run_id == run_id, RunMetricRow.key == key)
        .order_by(RunMetricRow.id)
        .offset(offset)
        .limit(limit)
    )
    return [Point(r.key, r.value, r.timestamp, r.step) for r in session.scalars(query)]


def artifacts(session: Session, run_id: str) -> list[RunArtifactRow]:
    return list(
        session.scalars(
            select(RunArtifactRow)
            .where(RunArtifactRow.run_id == run_id)
            .order_by(RunArtifactRow.path)
        )
    )


def artifact(session: Session, run_id: str, path: str) -> RunArtifactRow | None:
    return session.scalars(
        select(RunArtifactRow).where(RunArtifactRow.run_id == run_id, RunArtifactRow.path == path)
    ).first()


def put_artifact(
    session: Session, run_id: str, path: str, blob_key: str, size: int, now: datetime
) -> tuple[int, int | None]:
    """Record a file at ``path`` of the run, replacing one there: the new row's id and the
    replaced row's id (whose blob reference the caller releases)."""
    old = artifact(session, run_id, path)
    replaced = None
    if old is not None:
        replaced = old.id
        session.delete(old)
        session.flush()
    row = RunArtifactRow(run_id=run_id, path=path, blob_key=blob_key, size=size, created_at=now)
    session.add(row)
    session.flush()
    return row.id, replaced


def artifact_bytes(session: Session, tenant_id: int) -> int:
    """What a tenant's run artifacts take in the blob store (for its storage quota)."""
    total = session.execute(
        select(func.coalesce(func.sum(RunArtifactRow.size), 0))
        .join(RunRow, RunRow.id == RunArtifactRow.run_id)
        .where(RunRow.tenant_id == tenant_id)
    ).scalar()
    return int(total or 0)
