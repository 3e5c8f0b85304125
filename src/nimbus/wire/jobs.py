"""The jobs resource on the wire (docs/api.md, "Jobs"): a job, its logs and their events,
its metrics, the submit body, and the code artifacts a job may run.

``params`` and ``evaluation`` stay JSON objects: a script's parameters are its own, and an
evaluation is recorded as the job reported it (NaN and infinities as null).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from nimbus.jobs.domain import JobState
from nimbus.wire.base import Request, Response, Timestamp

MAX_SEED = 2**32 - 1


class JobEnvironment(Request):
    """Packages a job adds to the platform's (docs/environments.md): a requirements
    file's lines, each a package name with optional version specifiers."""

    requirements: list[str] = Field(default_factory=list, max_length=1000)


class SubmitRequest(Request):
    """The body of ``POST /api/v1/jobs``; only ``model`` is required, and ``dataset`` for
    every model but a notebook (which may run without one)."""

    dataset: str | None = Field(None, min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    cpus: float = Field(1.0, gt=0, allow_inf_nan=False)
    gpus: int = Field(0, ge=0)
    memory: str | int = "1G"
    workers: int = Field(1, ge=1, le=256)
    # Custom resources of a cluster's nodes per worker (Ray executor), e.g. {"accel_a100": 1}.
    resources: dict[str, float] = Field(default_factory=dict)
    spread: bool = False  # each worker on a different node
    priority: int = Field(0, ge=-1000, le=1000)
    max_retries: int = Field(2, ge=0, le=100)
    deadline: str | float | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    environment: JobEnvironment | None = None  # built with uv, cached by content hash


class Environment(Response):
    """A job's environment as stored: its requirements, normalised (canonical names,
    sorted), and the pins they resolved to (its lock), once an attempt resolved them."""

    requirements: list[str]
    lock: list[str] | None = None


class JobDataset(Response):
    """The dataset version a job trains on, resolved at submit."""

    name: str
    version: int
    content_hash: str


class Resources(Response):
    """What each worker of a job asks for; ``memory`` in bytes."""

    cpus: float
    gpus: int
    memory: int
    workers: int
    custom: dict[str, float] = Field(default_factory=dict)
    spread: bool = False


class WorkerNode(Response):
    """Where one worker of an attempt ran (executors that place workers on nodes: Ray)."""

    attempt: int
    rank: int
    node: str
    address: str


class Progress(Response):
    """Where a running job is: batch ``batch`` of ``batches`` in epoch ``epoch`` of
    ``epochs``. Also the data of a ``progress`` log event."""

    event: ClassVar[str] = "progress"

    epoch: int
    epochs: int
    batch: int
    batches: int


class Artifact(Response):
    """An output file of a job (the model's files among them), as a blob."""

    name: str
    key: str
    size: int


class Job(Response):
    """A job: what was asked, where it stands, and what it produced."""

    id: str
    state: JobState
    model: str
    dataset: JobDataset | None
    params: dict[str, Any]
    resources: Resources
    priority: int
    max_retries: int
    attempts: int
    deadline_at: Timestamp | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    exit_reason: str | None
    cancel_requested: bool
    progress: Progress | None
    evaluation: dict[str, Any] | None
    artifacts: list[Artifact]
    seed: int | None
    isolation: str | None = None  # how this server runs jobs: "sandbox" or "none"
    environment: Environment | None = None  # its requirements, normalised
    workers: list[WorkerNode] = Field(default_factory=list)  # per attempt, each worker's node


class JobList(Response):
    """``GET /jobs`` (newest first) and ``GET /jobs/compare`` (in the order asked)."""

    jobs: list[Job]


class MetricPoint(Response):
    """One value of a metric series; null when it was not finite."""

    step: int
    value: float | None
    attempt: int


class JobMetrics(Response):
    """Every metric series of a job, by name."""

    metrics: dict[str, list[MetricPoint]]


class LogChunk(Response):
    """Output of an attempt, in order of ``seq``; also the data of a ``log`` event."""

    event: ClassVar[str] = "log"

    seq: int
    attempt: int
    data: str


class LogPage(Response):
    """``GET /jobs/{id}/logs``: chunks after ``after``; ``done`` once the job ended and none
    is left."""

    chunks: list[LogChunk]
    next: int
    done: bool


class LogEnd(Response):
    """The data of the last event of a log stream: how the job ended."""

    event: ClassVar[str] = "end"

    state: JobState
    exit_reason: str | None


LogEvent = LogChunk | Progress | LogEnd
"""An event of a followed job's log stream; its ``event`` is the SSE event type."""

LOG_EVENTS: dict[str, type[LogChunk] | type[Progress] | type[LogEnd]] = {
    kind.event: kind for kind in (LogChunk, Progress, LogEnd)
}
"""The model of each SSE event type a log stream carries."""
