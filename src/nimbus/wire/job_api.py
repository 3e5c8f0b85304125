"""The job API on the wire (docs/api.md, "Job API routes"): what a job's process reads and
sends with its job token, under ``/api/v1/job-api/{attempt_id}``.

The job runtime imports this module too (to read the spec and heartbeat replies): it
holds pydantic models only, and the runtime loads pydantic already.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nimbus.names import MAX_INT64
from nimbus.wire.base import Request, Response
from nimbus.wire.jobs import Artifact, Resources

__all__ = [
    "Artifact",
    "AttemptSpec",
    "CodeInput",
    "HeartbeatReply",
    "MetricsRequest",
    "Ok",
    "ProgressRequest",
    "Resources",
    "ResultRequest",
    "StoredCheckpoint",
]


class CodeInput(Response):
    """The code a job runs instead of a built-in model: a blob, and what to run in it."""

    key: str
    entry: str
    format: str
    size: int


class AttemptSpec(Response):
    """``GET spec``: what the runtime needs to run the attempt. ``dataset`` is the dataset
    version object as it was when the job was submitted (docs/api.md, "Datasets")."""

    job_id: str
    attempt_id: str
    attempt: int
    model: str
    params: dict[str, Any]
    seed: int | None
    workers: int
    resources: Resources
    dataset: dict[str, Any] | None
    code: CodeInput | None


class HeartbeatReply(Response):
    """``POST heartbeat``: whether the job was cancelled (the runtime then stops)."""

    cancel: bool


class Ok(Response):
    """The answer of a report that has nothing else to say."""

    ok: bool = True


class StoredCheckpoint(Response):
    """``PUT checkpoints/{step}``: the checkpoint, recorded once its bytes were stored whole."""

    step: int
    key: str
    size: int


class MetricsRequest(Request):
    """``POST metrics``: values of ``step``, by metric name."""

    step: int = Field(ge=0, le=MAX_INT64)
    metrics: dict[str, float]


class ProgressRequest(Request):
    """``POST progress``: batch ``batch`` of ``batches`` in epoch ``epoch`` of ``epochs``."""

    epoch: int = Field(ge=0, le=MAX_INT64)
    epochs: int = Field(ge=0, le=MAX_INT64)
    batch: int = Field(ge=0, le=MAX_INT64)
    batches: int = Field(ge=0, le=MAX_INT64)


class ResultRequest(Request):
    """``POST result``: the job's evaluation."""

    evaluation: dict[str, Any]
