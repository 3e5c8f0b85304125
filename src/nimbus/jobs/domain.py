"""Domain objects of training jobs: states, the job spec, resources and stored records.

Plain dataclasses: no HTTP, no SQL. A *job* is what the user asked for; an *attempt* is one
execution of it, with its own lease. See ``docs/glossary.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any

from nimbus.errors import Conflict, InvalidInput
from nimbus.names import MAX_INT64

# The runtime exits with this code when the user's code raised: the job fails at once,
# without burning retries (running it again would raise again).
USER_ERROR_EXIT_CODE = 3


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class AttemptState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the process failed, or the job failed around it (deadline)
    LOST = "lost"  # the lease expired: the scheduler running it vanished or hung
    CANCELLED = "cancelled"


class ExitReason(StrEnum):
    """Why an attempt ended; decides between success, retry and failure."""

    SUCCEEDED = "succeeded"
    USER_ERROR = "user_error"  # exit code USER_ERROR_EXIT_CODE: not retried
    EXIT_ERROR = "exit_error"  # any other non-zero exit code: retried
    SIGNALED = "signaled"  # killed by a signal (OOM killer, SIGKILL): retried
    LOST = "lost"  # heartbeat lost, lease expired: retried
    INFRA = "infrastructure"  # could not start, executor failure: retried
    CANCELLED = "cancelled"
    DEADLINE = "deadline_exceeded"
    OUT_OF_MEMORY = "out_of_memory"  # the cgroup's memory limit (--memory) hit: not retried
    DISK_LIMIT = "disk_limit"  # wrote past the work directory's size limit: not retried
    # The job's environment (--requirements) could not be built: not retried.
    ENVIRONMENT_BUILD_FAILED = "environment_build_failed"


class Fenced(Conflict):
    """A write named an attempt that is no longer the job's current running attempt."""

    code = "fenced"


class Deposed(Fenced):
    """A scheduler write carried a leader epoch that is no longer the current one: another
    control plane leads now, and this one's writes are refused."""

    code = "deposed"


@dataclass(frozen=True)
class Fence:
    """The fencing token of the leading scheduler: its holder and the epoch it won."""

    holder: str
    epoch: int


# [0-9], not \d: \d also matches other scripts' digits.
_MEMORY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd])", re.IGNORECASE)
# Past these a size or a duration is a typo, and would overflow a column or a timestamp.
MAX_MEMORY_BYTES = MAX_INT64
MAX_DURATION_SECONDS = 100 * 366 * 86400.0
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_memory(text: str | int) -> int:
    """Bytes from ``"512M"``, ``"4G"``, ``"4GiB"``, ``"1.5g"`` or a plain number of bytes.

    Suffixes are binary (K = 1024), as with ``docker run -m``.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise InvalidInput(f"memory must not be negative: {text}")
        size: float | int = text
    else:
        match = _MEMORY_RE.match(str(text))
        if not match:
            raise InvalidInput(f"invalid memory size {text!r}: use e.g. 512M, 4G or a byte count")
        number, unit = float(match.group(1)), match.group(2).lower()
        size = number * 1024 ** ("kmgtp".index(unit) + 1) if unit else number
    if not size <= MAX_MEMORY_BYTES:  # also refuses inf, from a number too long for a float
        shown = str(text) if len(str(text)) <= 40 else f"{str(text)[:40]}..."
        raise InvalidInput(f"invalid memory size {shown!r}: at most {MAX_MEMORY_BYTES} bytes")
    return text if isinstance(text, int) else int(size)


def parse_duration(text: str | float) -> float:
    """Seconds from ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` or a number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = math.inf if abs(text) > MAX_DURATION_SECONDS else float(text)
    else:
        raw = str(text).strip().replace(" ", "")
        try:
            seconds = float(raw)
        except ValueError:
            parts = _DURATION_RE.findall(raw)
            if not parts or "".join(n + u for n, u in parts).lower() != raw.lower():
                raise InvalidInput(f"invalid duration {text!r}: use e.g. 90s, 30m, 2h") from None
            seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
    if math.isnan(seconds) or seconds <= 0:
        raise InvalidInput(f"duration must be positive: {text!r}")
    if seconds > MAX_DURATION_SECONDS:  # inf too
        shown = str(text) if len(str(text)) <= 40 else f"{str(text)[:40]}..."
        raise InvalidInput(f"duration {shown!r} is over the limit of 100 years")
    return seconds


# A custom resource's name, as Ray's node resources allow (e.g. accelerator_type:H100).
_RESOURCE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:/-]{0,99}$")
# Names Ray gives its own resources: asked through --cpus, --gpus, --memory instead.
RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def parse_resource(text: str) -> tuple[str, float]:
    """``NAME=AMOUNT`` (a custom resource of a cluster's nodes, e.g. ``accel_a100=1``)."""
    name, sep, amount = text.partition("=")
    if not sep:
        raise InvalidInput(f"invalid resource {text!r}: use NAME=AMOUNT, e.g. accel_a100=1")
    try:
        value = float(amount)
    except ValueError:
        raise InvalidInput(f"invalid amount in resource {text!r}: a number") from None
    return name.strip(), value


def check_custom(custom: Mapping[str, float]) -> None:
    """Refuse malformed custom resources, naming the bad one."""
    if len(custom) > 16:
        raise InvalidInput(f"at most 16 custom resources, got {len(custom)}")
    for name, amount in custom.items():
        if not isinstance(name, str) or not _RESOURCE_NAME_RE.match(name):
            raise InvalidInput(
                f"invalid resource name {name!r}: a letter, then letters, digits, _ . : / -",
                resource=str(name)[:100],
            )
        if name in RESERVED_RESOURCES:
            raise InvalidInput(
                f"resource {name!r} is asked with --cpus, --gpus or --memory", resource=name
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise InvalidInput(f"resource {name!r} needs a number", resource=name)
        if not (math.isfinite(amount) and 0 < amount <= 1_000_000):
            raise InvalidInput(
                f"resource {name!r} must be positive and at most 1000000, got {amount}",
                resource=name,
            )


@dataclass(frozen=True)
class Resources:
    """What one worker needs; ``workers`` processes each get that much.

    ``custom`` names other resources a node may offer (an accelerator type, a licence: a Ray
    cluster's custom resources), with the amount one worker needs of each; ``spread`` puts
    each worker on a different node (else packed on as few nodes as possible).
    """

    cpus: float = 1.0
    gpus: int = 0
    memory_bytes: int = 1024**3
    workers: int = 1
    custom: Mapping[str, float] = field(default_factory=dict)
    spread: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.custom, Mapping):
            raise InvalidInput("custom resources must be an object of NAME: AMOUNT")
        check_custom(self.custom)
        if not (math.isfinite(self.cpus) and self.cpus > 0):
            raise InvalidInput(f"cpus must be positive, got {self.cpus}")
        if self.gpus < 0:
            raise InvalidInput(f"gpus must not be negative, got {self.gpus}")
        if self.memory_bytes < 0:
            raise InvalidInput(f"memory must not be negative, got {self.memory_bytes}")
        if not 1 <= self.workers <= 256:
            raise InvalidInput(f"workers must be between 1 and 256, got {self.workers}")

    @property
    def total_cpus(self) -> float:
        return self.cpus * self.workers

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.workers

    @property
    def total_memory_bytes(self) -> int:
        return self.memory_bytes * self.workers

    @cached_property
    def total_custom(self) -> dict[str, float]:
        return {name: amount * self.workers for name, amount in sorted(self.custom.items())}


@dataclass(frozen=True)
class JobSpec:
    """What the user asked to run; stored as JSON on the job."""

    model: str
    dataset: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    priority: int = 0
    max_retries: int = 2
    deadline_seconds: float | None = None
    seed: int | None = None
    # Packages added to the platform's for this job (normalised: nimbus.jobs.requirements).
    requirements: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.requirements, tuple):  # from JSON: a list
            object.__setattr__(self, "requirements", tuple(self.requirements))
        if not self.model or not isinstance(self.model, str):
            raise InvalidInput("a job needs a model")
        if not -1000 <= self.priority <= 1000:
            raise InvalidInput(f"priority must be between -1000 and 1000, got {self.priority}")
        if not 0 <= self.max_retries <= 100:
            raise InvalidInput(f"max_retries must be between 0 and 100, got {self.max_retries}")
        if self.deadline_seconds is not None and not self.deadline_seconds > 0:
            raise InvalidInput(f"deadline must be positive, got {self.deadline_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Rebuild a spec from :meth:`to_dict` output (or a user's JSON); unknown keys are a 400."""
        known = {
            "model",
            "dataset",
            "params",
            "resources",
            "priority",
            "max_retries",
            "deadline_seconds",
            "seed",
            "requirements",
        }
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"unknown job fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        res = values.pop("resources", None) or {}
        if not isinstance(res, dict):
            raise InvalidInput("resources must be an object")
        try:
            resources = Resources(**res)
            return cls(resources=resources, **values)
        except TypeError as exc:
            raise InvalidInput(f"invalid job spec: {exc}") from None


@dataclass(frozen=True)
class Job:
    """A job as stored in the metadata store."""

    id: str
    tenant_id: int
    spec: JobSpec
    state: JobState
    priority: int
    attempts: int  # attempts started so far
    current_attempt_id: str | None
    max_retries: int
    deadline_at: datetime | None
    not_before: datetime | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_reason: str | None
    result: dict[str, Any] | None
    created_by: str | None
    # The pins its requirements resolved to (nimbus.jobs.envlock), once an attempt did.
    environment_lock: tuple[str, ...] = ()

    @property
    def resources(self) -> Resources:
        return self.spec.resources


@dataclass(frozen=True)
class Attempt:
    """One execution of a job, as stored."""

    id: str
    job_id: str
    number: int  # 1-based
    state: AttemptState
    lease_owner: str | None
    lease_expires_at: datetime | None
    started_at: datetime
    ended_at: datetime | None
    exit_code: int | None
    exit_signal: int | None
    exit_reason: ExitReason | None


@dataclass(frozen=True)
class Claim:
    """An attempt a scheduler has just claimed, with its job-scoped token (shown once)."""

    job: Job
    attempt: Attempt
    token: str


@dataclass(frozen=True)
class Lease:
    """A renewed lease; ``cancel_requested`` tells the attempt to stop."""

    attempt_id: str
    expires_at: datetime
    cancel_requested: bool
