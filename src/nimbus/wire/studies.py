"""The studies resource on the wire: a study's request, the study, its trials.

``params`` holds each parameter as a fixed value or a space (``{"type": "float"|"int",
"low", "high", "log"}`` or ``{"type": "choice", "options": [...]}``): nimbus.studies.space's
JSON form, which the CLI's ``--param k=loguniform(a,b)`` words become.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nimbus.wire.base import Request, Response, Timestamp
from nimbus.wire.jobs import MAX_SEED

MAX_TRIALS = 1000
MAX_PARALLEL = 64


class StudyRequest(Request):
    """The body of ``POST /api/v1/studies``: the search, and the job every trial runs."""

    dataset: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(min_length=1)
    metric: str = Field("val_accuracy", min_length=1, max_length=100)
    direction: str = "maximize"
    trials: int = Field(20, ge=1, le=MAX_TRIALS)
    parallel: int = Field(1, ge=1, le=MAX_PARALLEL)
    sampler: str = "tpe"
    pruner: str = "asha"
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    timeout: str | float | None = None  # the study's whole run: "1h", seconds
    register_as: str | None = Field(None, max_length=63)  # a model name for the best trial
    # Each trial's job, as for POST /api/v1/jobs.
    cpus: float = Field(1.0, gt=0, allow_inf_nan=False)
    gpus: int = Field(0, ge=0)
    memory: str | int = "1G"
    workers: int = Field(1, ge=1, le=256)
    resources: dict[str, float] = Field(default_factory=dict)
    priority: int = Field(0, ge=-1000, le=1000)
    max_retries: int = Field(2, ge=0, le=100)


class Trial(Response):
    number: int
    job: str
    params: dict[str, Any]
    state: str  # running, complete, pruned, failed
    value: float | None = None  # complete: its score; pruned: where it was stopped
    pruned_step: int | None = None
    created_at: Timestamp
    ended_at: Timestamp | None = None


class Study(Response):
    id: str
    state: str  # running, succeeded, failed, cancelled
    dataset: str
    model: str
    params: dict[str, Any]
    metric: str
    direction: str
    trials: int
    parallel: int
    sampler: str
    pruner: str
    seed: int | None = None
    timeout_seconds: float | None = None
    register_as: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)  # trials by state
    best: Trial | None = None
    reason: str | None = None
    created_at: Timestamp
    ended_at: Timestamp | None = None


class StudyList(Response):
    studies: list[Study]


class TrialList(Response):
    trials: list[Trial]


class Importances(Response):
    """How much of the metric's variance each searched parameter explains (fANOVA over the
    complete trials; shares summing to 1, most important first); empty until ``needed``
    trials are complete."""

    importances: dict[str, float]
    complete: int  # the complete trials it was computed over
    needed: int
