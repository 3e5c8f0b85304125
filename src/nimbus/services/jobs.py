"""Training jobs as users see them: submit (validated up front), read, cancel, logs,
metrics, compare.

Submit resolves everything a job reads once: the dataset reference becomes a version
(a snapshot of it is kept with the job), a code reference becomes the tenant's code
artifact, and the parameters are checked against the model and the dataset's task.
What the job's own process sends while it runs goes through :mod:`.job_api`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from nimbus.db import automl as automl_repo
from nimbus.db import job_details, job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.job_details import JobDetail, JobFilter, ListedJob, MetricChoice
from nimbus.db.job_outputs import LogChunk as LogChunkRow
from nimbus.errors import InvalidInput, NotFound
from nimbus.jobs.capacity import Capacity, check_request, detect_capacity
from nimbus.jobs.domain import JobSpec, JobState, Resources, parse_duration, parse_memory
from nimbus.jobs.requirements import normalise
from nimbus.names import parse_reference, whole_number
from nimbus.runtime.hyperparams import (
    AUTOML_MODEL,
    PARAM_SCHEMAS,
    validate_automl_params,
    validate_params,
)
from nimbus.security import Principal, Role, require_role
from nimbus.services.blobs import FileDownload, verified_download
from nimbus.services.code import IPYNB, CodeService, is_code_ref
from nimbus.services.datasets import DatasetService
from nimbus.services.quotas import QuotaService
from nimbus.wire import jobs as wire
from nimbus.wire.base import dump
from nimbus.wire.jobs import MAX_SEED, SubmitRequest

MAX_LIST = 1000
MAX_PAGE = 100  # rows of the console's jobs list
BUILTIN_MODELS = tuple(PARAM_SCHEMAS)  # cnn, text, mlp
_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "perplexity")
MAX_COMPARE = 50
LOG_BATCH = 1000
_CODE_PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_MAX_CODE_PARAMS = 200


@dataclass(frozen=True)
class LogPoll:
    """One look at a job for a log follower: its state (read first), then new chunks."""

    state: JobState
    exit_reason: str | None
    progress: wire.Progress | None
    chunks: list[LogChunkRow]
    done: bool  # terminal, and every chunk up to now was returned


def node_capacity(cpus: float | None, gpus: int | None, memory: str | None) -> Capacity:
    """This node's capacity, each value detected unless given."""
    return detect_capacity(
        cpus=cpus,
        gpus=gpus,
        memory_bytes=parse_memory(memory) if memory is not None else None,
    )


def split_dataset_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` (latest), ``NAME:V`` or ``NAME:latest``."""
    found = parse_reference(ref, "dataset")
    return found.name, found.version if isinstance(found.version, int) else None


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities (anywhere inside) replaced by None: JSON has none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def job_view(detail: JobDetail) -> wire.Job:
    """A job as docs/api.md shows it."""
    job, inputs = detail.job, detail.inputs
    dataset = inputs.get("dataset")
    res = job.spec.resources
    result = job.result or {}
    return wire.Job(
        id=job.id,
        state=job.state,
        model=job.spec.model,
        dataset=(
            wire.JobDataset(
                name=dataset["dataset"],
                version=dataset["version"],
                content_hash=dataset["content_hash"],
            )
            if dataset
            else None
        ),
        params=job.spec.params,
        resources=wire.Resources(
            cpus=res.cpus,
            gpus=res.gpus,
            memory=res.memory_bytes,
            workers=res.workers,
            custom=dict(res.custom),
            spread=res.spread,
        ),
        priority=job.priority,
        max_retries=job.max_retries,
        attempts=job.attempts,
        deadline_at=job.deadline_at,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        exit_reason=job.exit_reason,
        cancel_requested=job.cancel_requested,
        progress=progress_view(detail.progress),
        evaluation=finite(result.get("evaluation")),
        artifacts=[
            wire.Artifact(name=a.name, key=a.blob_key, size=a.size) for a in detail.artifacts
        ],
        seed=job.spec.seed,
        environment=(
            wire.Environment(
                requirements=list(job.spec.requirements),
                lock=list(job.environment_lock) if job.environment_lock else None,
            )
            if job.spec.requirements
            else None
        ),
        workers=[
            wire.WorkerNode(attempt=number, **worker)
            for number, placed in sorted(detail.workers.items())
            for worker in placed
        ],
    )


def progress_view(progress: dict[str, Any] | None) -> wire.Progress | None:
    """A job's stored progress (written by the job API as a ``ProgressRequest``)."""
    return None if progress is None else wire.Progress.model_validate(progress)


def _code_params(raw: dict[str, Any]) -> dict[str, Any]:
    """A script's parameters are its own business; only their shape is checked."""
    if len(raw) > _MAX_CODE_PARAMS:
        raise InvalidInput(f"at most {_MAX_CODE_PARAMS} parameters", field="params")
    for key, value in raw.items():
        if not _CODE_PARAM_RE.match(key):
            raise InvalidInput(f"invalid parameter name {key[:80]!r}", key=key)
        if isinstance(value, dict):
            raise InvalidInput(f"invalid parameter {key!r}: objects are not accepted", key=key)
    return dict(raw)


@dataclass(frozen=True)
class JobPage:
    """A page of the console's jobs list: its rows and how many jobs match."""

    jobs: list[ListedJob]
    total: int


def lower_is_better(metric: str) -> bool:
    """Whether a metric's best value is its lowest (a loss, an error), by its name."""
    return any(word in metric.lower() for word in _LOWER_IS_BETTER)


def metric_choice(value: str | None) -> MetricChoice | None:
    """``best:NAME`` or ``last:NAME`` (a bare NAME is its best)."""
    if not value:
        return None
    kind, sep, name = value.partition(":")
    if not sep:
        kind, name = "best", value
    if kind not in ("best", "last") or not name or len(name) > 128:
        raise InvalidInput(
            f"invalid metric {value[:80]!r}: use best:NAME or last:NAME", field="metric"
        )
    return MetricChoice(name, last=kind == "last", lowest=lower_is_better(name))


def job_filter(
    *,
    state: str = "",
    model: str = "",
    dataset: str = "",
    study: str = "",
    metric: str = "",
    sort: str = "created",
    order: str = "",
    page: int = 1,
    per_page: int = 50,
) -> JobFilter:
    """The jobs list's query (as its address carries it) checked: each bad value a 400
    naming it. ``order`` defaults to newest first, states A-Z, and a metric's best first."""
    states: tuple[JobState, ...] = ()
    if state:
        try:
            states = tuple(JobState(s.strip()) for s in state.split(",") if s.strip())
        except ValueError:
            known = ", ".join(s.value for s in JobState)
            raise InvalidInput(
                f"invalid state {state[:80]!r}: use {known}", field="state"
            ) from None
    name, version = split_dataset_ref(dataset) if dataset else (None, None)
    choice = metric_choice(metric)
    if sort not in ("created", "state", "metric"):
        raise InvalidInput(
            f"invalid sort {sort[:80]!r}: use created, state or metric", field="sort"
        )
    if order not in ("", "asc", "desc"):
        raise InvalidInput(f"invalid order {order[:80]!r}: use asc or desc", field="order")
    if not order:
        best_first_asc = sort == "metric" and choice is not None and choice.lowest
        order = "asc" if sort == "state" or best_first_asc else "desc"
    if page < 1 or page > 1_000_000:
        raise InvalidInput(f"invalid page {page}: pages start at 1", field="page")
    if not 1 <= per_page <= MAX_PAGE:
        raise InvalidInput(f"invalid per_page {per_page}: use 1-{MAX_PAGE}", field="per_page")
    return JobFilter(
        states=states,
        model=model.strip() or None,
        dataset=name,
        dataset_version=version,
        study=study.strip() or None,
        metric=choice,
        sort=sort,  # type: ignore[arg-type]  # checked above
        descending=order == "desc",
        offset=(page - 1) * per_page,
        limit=per_page,
    )


@dataclass(frozen=True)
class PreparedJob:
    """A job checked and resolved, not yet queued (:meth:`JobService.prepare`)."""

    spec: JobSpec
    inputs: dict[str, Any]


class JobService:
    """Jobs of every tenant; each method acts for one principal, within its tenant."""

    def __init__(
        self,
        db: Database,
        datasets: DatasetService,
        code: CodeService,
        capacity: Capacity,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        quotas: QuotaService | None = None,
    ) -> None:
        self.db = db
        self.datasets = datasets
        self.code = code
        self.capacity = capacity
        self.clock = clock
        self.quotas = quotas
        # Called after a job is queued: the node's scheduler starts it without waiting
        # for its next tick (a scheduler on another node still finds it at its tick).
        self.on_submit: Callable[[], object] | None = None
        # Refuses at submit what no node could ever run (400 naming the resource): this
        # node's capacity, or the Ray cluster's nodes (nimbus.jobs.ray_cluster).
        self.check_resources: Callable[[Resources], None] = functools.partial(
            check_request, capacity=capacity
        )

    # -- submit -------------------------------------------------------------------------

    def submit(self, principal: Principal, request: SubmitRequest) -> wire.Job:
        """Validate, resolve and queue a job; every refusal is a 400 naming the field (or a
        404 for a dataset or code artifact the tenant does not have)."""
        prepared = self.prepare(principal, request)
        with self.db.session(write=True) as session:
            job_id = self.queue(session, principal, prepared)
            view = self._view(session, principal, job_id)
        self.queued()
        return view

    def prepare(self, principal: Principal, request: SubmitRequest) -> PreparedJob:
        """What :meth:`submit` checks and resolves before it writes: the job's spec and
        what it reads. A study prepares each trial so, then queues it with its trial row."""
        require_role(principal, Role.MEMBER)
        code = self.code.resolve(principal, request.model) if is_code_ref(request.model) else None
        if request.dataset is None and (code is None or code.format != IPYNB):
            raise InvalidInput(
                "a dataset is required (dataset: NAME or NAME:VERSION): cnn, text, mlp, "
                f"{AUTOML_MODEL}, a script and a directory train on one; only a notebook "
                "(.ipynb) may run without one",
                field="dataset",
            )
        version = None
        if request.dataset is not None:
            name, number = split_dataset_ref(request.dataset)
            version = self.datasets.get_version(principal, name, number)
        if code is not None:
            params = _code_params(request.params)
            if code.format == IPYNB and request.workers != 1:
                raise InvalidInput(
                    f"a notebook runs in one worker: workers must be 1, not {request.workers}",
                    field="workers",
                )
        elif request.model in PARAM_SCHEMAS:
            assert version is not None  # required above
            params = validate_params(request.model, version.task, request.params)
            if params.get("dp_epsilon") is not None and request.workers > 1:
                raise InvalidInput(
                    "differentially private training (dp_epsilon) runs on one worker: "
                    f"workers must be 1, not {request.workers}",
                    field="workers",
                )
        elif request.model == AUTOML_MODEL:  # a search over the built-ins, in one process
            params = validate_automl_params(request.params)
            if request.workers != 1:
                raise InvalidInput("an automl job runs in one worker", field="workers")
        else:
            raise InvalidInput(
                f"unknown model {request.model[:100]!r}: use {', '.join(PARAM_SCHEMAS)}, "
                f"{AUTOML_MODEL} or a "
                "code reference (code:sha256/...)",
                field="model",
            )
        seed = self._seed(request, params)
        if "seed" in params or code is None:
            params["seed"] = seed
        resources = Resources(
            cpus=request.cpus,
            gpus=request.gpus,
            memory_bytes=parse_memory(request.memory),
            workers=request.workers,
            custom=dict(request.resources),
            spread=request.spread,
        )
        self.check_resources(resources)  # before the write transaction begins
        spec = JobSpec(
            model=request.model,
            dataset=f"{version.dataset}:{version.version}" if version is not None else None,
            params=params,
            resources=resources,
            priority=request.priority,
            max_retries=request.max_retries,
            deadline_seconds=(
                parse_duration(request.deadline) if request.deadline is not None else None
            ),
            seed=seed,
            requirements=(
                normalise(request.environment.requirements) if request.environment else ()
            ),
        )
        inputs = {
            "dataset": dump(version) if version is not None else None,
            "code": code.to_dict() if code else None,
        }
        return PreparedJob(spec, inputs)

    def queue(self, session: Session, principal: Principal, prepared: PreparedJob) -> str:
        """Queue a prepared job in the caller's write transaction (the tenant's quota
        checked in it); its id. Call :meth:`queued` after the commit."""
        if self.quotas is not None:
            self.quotas.check_jobs(session, principal.tenant_id, principal.tenant)
        job = repo.submit(
            session,
            principal.tenant_id,
            prepared.spec,
            self.clock(),
            created_by=principal.token_id,
            inputs=prepared.inputs,
        )
        register = prepared.spec.params.get("register")
        if prepared.spec.model == AUTOML_MODEL and register:  # the server registers its winner
            automl_repo.add(session, job.id, principal.tenant_id, str(register), self.clock())
        return job.id

    def queued(self) -> None:
        """After a commit that queued jobs: the node's scheduler starts them now."""
        if self.on_submit is not None:
            self.on_submit()

    @staticmethod
    def _seed(request: SubmitRequest, params: dict[str, Any]) -> int:
        """The job's seed: the request's, else a ``seed`` parameter, else 0; both must agree."""
        param = params.get("seed") if "seed" in request.params else None
        if isinstance(param, str) and (number := whole_number(param.strip())) is not None:
            param = number  # --param seed=7 from the CLI
        if request.seed is not None and param is not None and param != request.seed:
            raise InvalidInput(
                f"seed {request.seed} and parameter seed {param!r} disagree; give one", field="seed"
            )
        if request.seed is not None:
            return request.seed
        if isinstance(param, int) and not isinstance(param, bool) and 0 <= param <= MAX_SEED:
            return param
        if param is not None:
            raise InvalidInput(
                f"invalid parameter 'seed' = {param!r}: use 0-{MAX_SEED}", key="seed"
            )
        return 0

    # -- read ---------------------------------------------------------------------------

    def _view(self, session: Any, principal: Principal, job_id: str) -> wire.Job:
        detail = job_details.get(session, job_id, principal.tenant_id)
        if detail is None:
            raise NotFound(f"job {job_id[:80]!r} not found")
        return job_view(detail)

    def get(self, principal: Principal, job_id: str) -> wire.Job:
        with self.db.session() as session:
            return self._view(session, principal, job_id)

    def list_jobs(
        self, principal: Principal, state: str | None = None, limit: int = 100
    ) -> wire.JobList:
        """Newest first; ``state`` one state or several, comma-separated."""
        if not 1 <= limit <= MAX_LIST:
            raise InvalidInput(f"invalid limit {limit}: use 1-{MAX_LIST}", field="limit")
        states = None
        if state:
            try:
                states = [JobState(s.strip()) for s in state.split(",") if s.strip()]
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise InvalidInput(
                    f"invalid state {state[:80]!r}: use {known}", field="state"
                ) from None
        with self.db.session() as session:
            details = job_details.list_page(
                session, principal.tenant_id, states=states, limit=limit
            )
            return wire.JobList(jobs=[job_view(d) for d in details])

    def list_page(self, principal: Principal, wanted: JobFilter) -> JobPage:
        """A page of the tenant's jobs as the console lists them: filtered, sorted (by
        creation, state, or a metric's best or last value) and paged in SQL."""
        if not 1 <= wanted.limit <= MAX_PAGE or wanted.offset < 0:
            raise InvalidInput(f"invalid page: use 1-{MAX_PAGE} rows per page", field="limit")
        if wanted.sort == "metric" and wanted.metric is None:
            raise InvalidInput("sorting by a metric needs one: metric=best:NAME", field="sort")
        with self.db.session() as session:
            return JobPage(
                jobs=job_details.list_sorted(session, principal.tenant_id, wanted),
                total=job_details.count(session, principal.tenant_id, wanted),
            )

    def metric_names(self, principal: Principal) -> list[str]:
        """The metrics the tenant's recent jobs reported: what the jobs list may sort by."""
        with self.db.session() as session:
            return job_details.metric_names(session, principal.tenant_id)

    def compare(self, principal: Principal, ids: list[str]) -> wire.JobList:
        """Several jobs side by side, in the order asked; any unknown id is a 404."""
        if not 1 <= len(ids) <= MAX_COMPARE:
            raise InvalidInput(f"give 1-{MAX_COMPARE} job ids", field="ids")
        with self.db.session() as session:
            return wire.JobList(jobs=[self._view(session, principal, job_id) for job_id in ids])

    def cancel(self, principal: Principal, job_id: str) -> wire.Job:
        """A queued job ends at once; a running one is stopped by its scheduler."""
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            try:
                repo.request_cancel(session, job_id, self.clock(), principal.tenant_id)
            except NotFound:
                raise NotFound(f"job {job_id[:80]!r} not found") from None
            return self._view(session, principal, job_id)

    def download_artifact(self, principal: Principal, job_id: str, name: str) -> FileDownload:
        """A job's artifact (an executed notebook, ``leaderboard.json``, a model file) by
        name: 404 for another tenant's job or a name it lacks; verified against its hash
        before the first byte goes out, and again as it streams."""
        job = self.get(principal, job_id)
        found = next((a for a in job.artifacts if a.name == name), None)
        if found is None:
            raise NotFound(f"job {job.id} has no artifact {name[:80]!r}")
        # Job artifacts live in the blob store every tenant's code and datasets live in.
        return verified_download(self.code.blobs, found.key, found.size, found.name)

    def metrics(self, principal: Principal, job_id: str) -> wire.JobMetrics:
        """Every series by name, in step order (non-finite values null)."""
        self.get(principal, job_id)
        with self.db.session() as session:
            series: dict[str, list[wire.MetricPoint]] = {}
            for m in job_outputs.read_metrics(session, job_id):
                series.setdefault(m.name, []).append(
                    wire.MetricPoint(step=m.step, value=finite(m.value), attempt=m.attempt_number)
                )
            return wire.JobMetrics(metrics=series)

    # -- logs ---------------------------------------------------------------------------

    def logs(
        self, principal: Principal, job_id: str, after: int = 0, limit: int = LOG_BATCH
    ) -> wire.LogPage:
        """Chunks after ``after``; ``done`` once the job ended and nothing is left."""
        if after < 0 or not 1 <= limit <= LOG_BATCH:
            raise InvalidInput(f"use after >= 0 and a limit of 1-{LOG_BATCH}", field="after")
        self.get(principal, job_id)
        poll = self.poll(job_id, after, limit)
        return wire.LogPage(
            chunks=[chunk_view(c) for c in poll.chunks],
            next=poll.chunks[-1].seq if poll.chunks else after,
            done=poll.done,
        )

    def poll(self, job_id: str, after: int, limit: int = LOG_BATCH) -> LogPoll:
        """The job's state, then its chunks after ``after``: read in that order, a terminal
        state means no chunk written before it ended can be missed. Callers check access."""
        with self.db.session() as session:
            state = job_details.poll_state(session, job_id)
            if state is None:
                raise NotFound(f"job {job_id[:80]!r} not found")
            chunks = job_outputs.read_logs(session, job_id, after, limit)
        job_state, exit_reason, progress = state
        return LogPoll(
            job_state,
            exit_reason,
            progress_view(progress),
            chunks,
            done=job_state.terminal and len(chunks) < limit,
        )


def chunk_view(chunk: LogChunkRow) -> wire.LogChunk:
    """A stored log chunk as the API shows it."""
    return wire.LogChunk(seq=chunk.seq, attempt=chunk.attempt_number, data=chunk.data)
