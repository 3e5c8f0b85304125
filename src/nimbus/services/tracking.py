"""MLflow-compatible tracking: experiments and runs logged by the MLflow client, each in
the caller's tenant, answered in MLflow's JSON (:mod:`nimbus.services.tracking_views`).

A Nimbus job is a run too: its id is a run id that ``get_run`` and ``metric_history``
answer, with the job's params and the metrics its process logged with ``nr.log``; it is
read-only through this API. Files of runs are in :mod:`nimbus.services.tracking_files`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from nimbus.db import job_outputs
from nimbus.db import jobs as job_repo
from nimbus.db import tracking as repo
from nimbus.db.engine import Database
from nimbus.db.tables import utcnow
from nimbus.db.tracking import ACTIVE, DELETED, NewRun, Point
from nimbus.db.tracking_tables import ExperimentRow, RunRow
from nimbus.errors import Conflict, InvalidInput, NotFound
from nimbus.jobs.domain import Job, JobState
from nimbus.security import Principal, Role, require_role
from nimbus.services import tracking_search as search
from nimbus.services.tracking_views import (
    JOBS_EXPERIMENT,
    experiment_view,
    metric_view,
    millis,
    run_info,
    run_view,
)
from nimbus.wire import tracking as wire

DEFAULT_EXPERIMENT = "Default"  # what MLflow's experiment "0" is in each tenant
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
_STATUS_NUMBERS = dict(enumerate(RUN_STATUSES, start=1))
_JOB_STATUS = {
    JobState.QUEUED: "SCHEDULED",
    JobState.RUNNING: "RUNNING",
    JobState.SUCCEEDED: "FINISHED",
    JobState.FAILED: "FAILED",
    JobState.CANCELLED: "KILLED",
}
_JOB_ID = re.compile(r"^job_[0-9a-f]{24}$")
_VIEWS = {"ACTIVE_ONLY": (ACTIVE,), "DELETED_ONLY": (DELETED,), "ALL": (ACTIVE, DELETED)}
_VIEW_NUMBERS = {1: "ACTIVE_ONLY", 2: "DELETED_ONLY", 3: "ALL"}
MAX_HISTORY_PAGE = 25000
MAX_JOBS_SEARCHED = 1000  # a search of the "jobs" experiment reads the newest jobs only


def stages_of(view_type: str | int | None) -> tuple[str, ...]:
    """The lifecycle stages a ``view_type`` (name or protobuf number) selects."""
    if view_type is None or view_type == "":
        return _VIEWS["ACTIVE_ONLY"]
    name = _VIEW_NUMBERS.get(view_type, "") if isinstance(view_type, int) else view_type
    if name not in _VIEWS:
        raise InvalidInput(f"invalid view type {view_type!r}: use {', '.join(_VIEWS)}")
    return _VIEWS[name]


def status_of(value: str | int) -> str:
    name = _STATUS_NUMBERS.get(value, "") if isinstance(value, int) else value
    if name not in RUN_STATUSES:
        raise InvalidInput(f"invalid run status {value!r}: use {', '.join(RUN_STATUSES)}")
    return name


def parse_experiment_id(text: str) -> int:
    if not text.isdigit() or len(text) > 10 or int(text) > 2**31 - 1:
        raise NotFound(f"no experiment with id {text[:40]!r}")
    return int(text)


def _finite(value: float, key: str) -> float:
    if not math.isfinite(value):
        raise InvalidInput(f"metric {key!r} has the value {value}: only finite values are stored")
    return value


class TrackingService:
    """Experiments and runs of the MLflow API, tenant-isolated by the caller's token: another
    tenant's experiment or run is not found, and writing needs the member role."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def now_ms(self) -> int:
        return int(self.clock().timestamp() * 1000)

    # experiments

    def _experiment(
        self, session: Session, principal: Principal, experiment_id: str
    ) -> ExperimentRow:
        if experiment_id == "0":
            found = repo.experiment_by_name(session, principal.tenant_id, DEFAULT_EXPERIMENT)
            if found is None and principal.role.includes(Role.MEMBER):
                try:
                    found = repo.create_experiment(
                        session, principal.tenant_id, DEFAULT_EXPERIMENT, {}, self.clock()
                    )
                except Conflict:  # created meanwhile by another request
                    found = repo.experiment_by_name(
                        session, principal.tenant_id, DEFAULT_EXPERIMENT
                    )
        else:
            found = repo.experiment(
                session, principal.tenant_id, parse_experiment_id(experiment_id)
            )
        if found is None:
            raise NotFound(f"no experiment with id {experiment_id!r}")
        return found

    def create_experiment(self, principal: Principal, body: wire.CreateExperiment) -> str:
        require_role(principal, Role.MEMBER)
        if body.artifact_location:
            raise InvalidInput(
                "artifact_location is not supported: a run's files go to Nimbus's blob store "
                "(leave it unset)"
            )
        tags = {t.key: t.value for t in body.tags}
        with self.db.session(write=True) as session:
            row = repo.create_experiment(
                session, principal.tenant_id, body.name, tags, self.clock()
            )
            return str(row.id)

    def get_experiment(self, principal: Principal, experiment_id: str) -> dict[str, Any]:
        if experiment_id == JOBS_EXPERIMENT:
            return jobs_experiment_view()
        with self.db.session(write=experiment_id == "0") as session:
            return experiment_view(self._experiment(session, principal, experiment_id))

    def experiment_by_name(self, principal: Principal, name: str) -> dict[str, Any]:
        with self.db.session() as session:
            found = repo.experiment_by_name(session, principal.tenant_id, name)
            if found is None:
                raise NotFound(f"no experiment named {name[:256]!r}")
            return experiment_view(found)

    def set_experiment_tag(self, principal: Principal, body: wire.SetExperimentTag) -> None:
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            row = self._experiment(session, principal, body.experiment_id)
            row.tags = {**row.tags, body.key: body.value}
            row.updated_at = self.clock()

    def set_experiment_stage(self, principal: Principal, experiment_id: str, stage: str) -> None:
        """Delete (``deleted``) or restore (``active``) an experiment; its runs stay."""
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            row = self._experiment(session, principal, experiment_id)
            row.lifecycle_stage = stage
            row.updated_at = self.clock()

    def search_experiments(
        self, principal: Principal, body: wire.SearchExperiments
    ) -> dict[str, Any]:
        clauses = search.parse_filter(body.filter)
        orders = search.parse_order(body.order_by) or [search.Order("attributes", "id", True)]
        with self.db.session() as session:
            rows = repo.experiments(session, principal.tenant_id, stages_of(body.view_type))
            views = [experiment_view(r) for r in rows]

        def of(view: dict[str, Any]) -> search.Searchable:
            tags = {t["key"]: t["value"] for t in view["tags"]}
            attributes = {
                "name": view["name"],
                "id": int(view["experiment_id"]),
                "creation_time": view["creation_time"],
                "last_update_time": view["last_update_time"],
            }
            return search.Searchable(attributes, tags=tags)

        found = search.sort([v for v in views if search.matches(of(v), clauses)], orders, of)
        chosen, token = search.page(found, body.max_results, body.page_token)
        answer: dict[str, Any] = {"experiments": chosen}
        if token:
            answer["next_page_token"] = token
        return answer

    # runs

    def _run(self, session: Session, principal: Principal, run_id: str) -> RunRow:
        found = repo.run(session, principal.tenant_id, run_id) if run_id else None
        if found is None:
            if _JOB_ID.match(run_id) and job_repo.get(session, run_id, principal.tenant_id):
                raise InvalidInput(
                    f"run {run_id} is a Nimbus job: it is read-only here (its process logs "
                    "metrics with nr.log)"
                )
            raise NotFound(f"no run with id {run_id[:64]!r}")
        return found

    def _writable(self, session: Session, principal: Principal, run_id: str) -> RunRow:
        require_role(principal, Role.MEMBER)
        found = self._run(session, principal, run_id)
        if found.lifecycle_stage != ACTIVE:
            raise InvalidInput(f"run {run_id} is deleted: restore it before logging to it")
        return found

    def _views(self, session: Session, rows: list[RunRow]) -> list[dict[str, Any]]:
        ids = [r.id for r in rows]
        metrics = repo.latest_metrics(session, ids)
        params = repo.params_of(session, ids)
        tags = repo.tags_of(session, ids)
        return [run_view(run_info(r), metrics[r.id], params[r.id], tags[r.id]) for r in rows]

    def create_run(self, principal: Principal, body: wire.CreateRun) -> dict[str, Any]:
        require_role(principal, Role.MEMBER)
        tags = {t.key: t.value for t in body.tags}
        name = body.run_name or tags.get("mlflow.runName") or ""
        with self.db.session(write=True) as session:
            exp = self._experiment(session, principal, body.experiment_id)
            if exp.lifecycle_stage != ACTIVE:
                raise InvalidInput(f"experiment {exp.name!r} is deleted: restore it first")
            new = NewRun(
                experiment_id=exp.id,
                name=name,
                user_id=body.user_id or principal.token_name,
                start_time=body.start_time if body.start_time is not None else self.now_ms(),
                created_by=principal.token_id,
            )
            row = repo.create_run(session, principal.tenant_id, new, tags)
            if not row.name:
                row.name = row.id[:8]
                repo.set_tags(session, row.id, {"mlflow.runName": row.name})
            elif "mlflow.runName" not in tags:
                repo.set_tags(session, row.id, {"mlflow.runName": row.name})
            return self._views(session, [row])[0]

    def get_run(self, principal: Principal, run_id: str) -> dict[str, Any]:
        with self.db.session() as session:
            found = repo.run(session, principal.tenant_id, run_id) if run_id else None
            if found is not None:
                return self._views(session, [found])[0]
            job = (
                job_repo.get(session, run_id, principal.tenant_id)
                if _JOB_ID.match(run_id)
                else None
            )
            if job is None:
                raise NotFound(f"no run with id {run_id[:64]!r}")
            return self._job_view(session, job)

    def _job_view(self, session: Session, job: Job) -> dict[str, Any]:
        latest: dict[str, Point] = {}
        for m in job_outputs.read_metrics(session, job.id):
            if m.value is not None and math.isfinite(m.value):
                latest[m.name] = Point(m.name, m.value, millis(m.created_at) or 0, m.step)
        info: dict[str, Any] = {
            "run_id": job.id,
            "run_uuid": job.id,
            "run_name": job.id,
            "experiment_id": JOBS_EXPERIMENT,
            "user_id": job.created_by or "",
            "status": _JOB_STATUS[job.state],
            "start_time": millis(job.started_at or job.created_at),
            "artifact_uri": "",
            "lifecycle_stage": ACTIVE,
        }
        if job.finished_at is not None:
            info["end_time"] = millis(job.finished_at)
        spec = job.spec
        tags = {"mlflow.runName": job.id, "nimbus.job": job.id, "nimbus.model": spec.model}
        if spec.dataset:
            tags["nimbus.dataset"] = spec.dataset
        params = {k: str(v) for k, v in spec.params.items()}
        return run_view(info, latest, params, tags)

    def update_run(self, principal: Principal, body: wire.UpdateRun) -> dict[str, Any]:
        with self.db.session(write=True) as session:
            row = self._writable(session, principal, body.id)
            if body.status is not None:
                row.status = status_of(body.status)
            if body.end_time is not None:
                row.end_time = body.end_time
            if body.run_name:
                row.name = body.run_name
                repo.set_tags(session, row.id, {"mlflow.runName": body.run_name})
            session.flush()
            return run_info(row)

    def set_run_stage(self, principal: Principal, run_id: str, stage: str) -> None:
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            self._run(session, principal, run_id).lifecycle_stage = stage

    def log_batch(
        self,
        principal: Principal,
        run_id: str,
        metrics: list[wire.LoggedMetric],
        params: list[wire.KeyValue],
        tags: list[wire.KeyValue],
    ) -> None:
        """Params, tags and metric points of one run in one transaction (all or nothing)."""
        now = self.now_ms()
        points = [
            Point(m.key, _finite(m.value, m.key), m.timestamp or now, m.step) for m in metrics
        ]
        values: dict[str, str] = {}
        for p in params:
            if values.setdefault(p.key, p.value) != p.value:
                raise InvalidInput(f"param {p.key!r} is given twice with different values")
            if len(p.value) > wire.MAX_PARAM_VALUE:
                raise InvalidInput(f"param {p.key!r} is over {wire.MAX_PARAM_VALUE} characters")
        with self.db.session(write=True) as session:
            self._writable(session, principal, run_id)
            repo.log_params(session, run_id, values)
            repo.set_tags(session, run_id, {t.key: t.value for t in tags})
            repo.log_metrics(session, run_id, points)

    def delete_tag(self, principal: Principal, run_id: str, key: str) -> None:
        with self.db.session(write=True) as session:
            self._writable(session, principal, run_id)
            if not repo.delete_tag(session, run_id, key):
                raise NotFound(f"run {run_id} has no tag {key!r}")

    def metric_history(
        self,
        principal: Principal,
        run_id: str,
        key: str,
        max_results: int | None,
        page_token: str | None,
    ) -> dict[str, Any]:
        limit = min(max_results or MAX_HISTORY_PAGE, MAX_HISTORY_PAGE)
        offset = int(page_token) if page_token and page_token.isdigit() else 0
        if page_token and not page_token.isdigit():
            raise InvalidInput(f"invalid page_token {page_token[:40]!r}")
        with self.db.session() as session:
            found = repo.run(session, principal.tenant_id, run_id) if run_id else None
            if found is not None:
                points = repo.metric_history(session, run_id, key, offset, limit + 1)
            else:
                job = (
                    job_repo.get(session, run_id, principal.tenant_id)
                    if _JOB_ID.match(run_id)
                    else None
                )
                if job is None:
                    raise NotFound(f"no run with id {run_id[:64]!r}")
                every = [
                    Point(m.name, m.value, millis(m.created_at) or 0, m.step)
                    for m in job_outputs.read_metrics(session, run_id, key)
                    if m.value is not None and math.isfinite(m.value)
                ]
                points = every[offset : offset + limit + 1]
        answer: dict[str, Any] = {"metrics": [metric_view(p) for p in points[:limit]]}
        if len(points) > limit:
            answer["next_page_token"] = str(offset + limit)
        return answer

    def search_runs(self, principal: Principal, body: wire.SearchRuns) -> dict[str, Any]:
        clauses = search.parse_filter(body.filter)
        orders = search.parse_order(body.order_by) or [
            search.Order("attributes", "start_time", True)
        ]
        with self.db.session() as session:
            ids = []
            for text in body.experiment_ids:
                if text == JOBS_EXPERIMENT:
                    continue
                found = (
                    repo.experiment_by_name(session, principal.tenant_id, DEFAULT_EXPERIMENT)
                    if text == "0"
                    else repo.experiment(session, principal.tenant_id, parse_experiment_id(text))
                )
                if found is not None:
                    ids.append(found.id)
            stages = stages_of(body.run_view_type)
            rows = repo.runs(session, principal.tenant_id, ids, stages)
            views = self._views(session, rows)
            if JOBS_EXPERIMENT in body.experiment_ids and ACTIVE in stages:
                jobs = job_repo.list_jobs(session, principal.tenant_id, limit=MAX_JOBS_SEARCHED)
                views += [self._job_view(session, job) for job in jobs]
        found_views = [v for v in views if search.matches(searchable(v), clauses)]
        chosen, token = search.page(
            search.sort(found_views, orders, searchable), body.max_results, body.page_token
        )
        answer: dict[str, Any] = {"runs": chosen}
        if token:
            answer["next_page_token"] = token
        return answer

    def list_runs(
        self, principal: Principal, experiment: str | None, limit: int
    ) -> list[wire.TrackedRun]:
        """The tenant's active runs (of one experiment, by name), newest first: Nimbus's
        own listing of what MLflow clients logged."""
        with self.db.session() as session:
            ids = None
            if experiment is not None:
                found = repo.experiment_by_name(session, principal.tenant_id, experiment)
                if found is None:
                    raise NotFound(f"no experiment named {experiment[:256]!r}")
                ids = [found.id]
            rows = repo.runs(session, principal.tenant_id, ids, (ACTIVE,), limit)
            return [
                self._tracked(session, principal, row.id, view)
                for row, view in zip(rows, self._views(session, rows), strict=True)
            ]

    def tracked_runs(self, principal: Principal, run_ids: list[str]) -> list[wire.TrackedRun]:
        """Runs by id, MLflow runs and Nimbus jobs alike, side by side (404 for any not
        found in the tenant)."""
        with self.db.session() as session:
            return [
                self._tracked(session, principal, run_id, self.get_run(principal, run_id))
                for run_id in run_ids
            ]

    def _tracked(
        self, session: Session, principal: Principal, run_id: str, view: dict[str, Any]
    ) -> wire.TrackedRun:
        info, data = view["info"], view["data"]
        experiment, files = JOBS_EXPERIMENT, []
        if info["experiment_id"] != JOBS_EXPERIMENT:
            found = repo.experiment(session, principal.tenant_id, int(info["experiment_id"]))
            experiment = found.name if found is not None else ""
            files = [a.path for a in repo.artifacts(session, run_id)]
        end = info.get("end_time")
        return wire.TrackedRun(
            id=run_id,
            name=info["run_name"],
            experiment=experiment,
            status=info["status"],
            user=info["user_id"],
            started_at=from_millis(info["start_time"]),
            ended_at=None if end is None else from_millis(end),
            params={p["key"]: p["value"] for p in data["params"]},
            tags={t["key"]: t["value"] for t in data["tags"]},
            metrics={m["key"]: m["value"] for m in data["metrics"]},
            artifacts=files,
        )


def from_millis(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def jobs_experiment_view() -> dict[str, Any]:
    """The experiment Nimbus jobs belong to when read as runs (it holds no MLflow run)."""
    return {
        "experiment_id": JOBS_EXPERIMENT,
        "name": "Nimbus jobs",
        "artifact_location": "",
        "lifecycle_stage": ACTIVE,
        "tags": [{"key": "nimbus.kind", "value": "jobs"}],
    }


def searchable(view: dict[str, Any]) -> search.Searchable:
    """What MLflow's search syntax reads of a run view."""
    info, data = view["info"], view["data"]
    attributes = {
        "status": info["status"],
        "run_name": info["run_name"],
        "run_id": info["run_id"],
        "user_id": info["user_id"],
        "start_time": info["start_time"],
        "end_time": info.get("end_time"),
    }
    return search.Searchable(
        attributes,
        metrics={m["key"]: m["value"] for m in data["metrics"]},
        params={p["key"]: p["value"] for p in data["params"]},
        tags={t["key"]: t["value"] for t in data["tags"]},
    )
