"""Request bodies of the MLflow-compatible tracking API (``/api/2.0/mlflow/...``), with the
field names of MLflow's REST API, and Nimbus's own view of tracked runs (``/api/v1/runs``).

Unlike Nimbus's own request bodies, an unknown field is ignored: MLflow clients of
different versions send fields this server has no use for (``model_id``, ``dataset_name``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nimbus.names import MAX_INT64
from nimbus.wire.base import Response, Timestamp

MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000


def has_nul(value: Any) -> bool:
    """Whether a NUL character is anywhere in ``value`` (PostgreSQL's text cannot hold one)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


class MlflowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if has_nul(data):
            raise ValueError("text may not contain NUL characters")
        return data


class KeyValue(MlflowRequest):
    key: str = Field(min_length=1, max_length=MAX_KEY)
    value: str = Field(default="", max_length=MAX_TAG_VALUE)


class CreateExperiment(MlflowRequest):
    name: str = Field(min_length=1, max_length=256)
    artifact_location: str | None = None
    tags: list[KeyValue] = Field(default_factory=list, max_length=100)


class SetExperimentTag(MlflowRequest):
    experiment_id: str
    key: str = Field(min_length=1, max_length=MAX_KEY)
    value: str = Field(default="", max_length=MAX_TAG_VALUE)


class ExperimentId(MlflowRequest):
    experiment_id: str


class SearchExperiments(MlflowRequest):
    max_results: int = Field(default=1000, ge=1, le=50000)
    page_token: str | None = None
    filter: str | None = None
    order_by: list[str] = Field(default_factory=list)
    view_type: str | int | None = None


class CreateRun(MlflowRequest):
    experiment_id: str = "0"
    user_id: str = Field(default="", max_length=256)
    run_name: str | None = Field(default=None, max_length=256)
    start_time: int | None = Field(default=None, ge=0, le=MAX_INT64)
    tags: list[KeyValue] = Field(default_factory=list, max_length=100)


class RunRef(MlflowRequest):
    run_id: str | None = None
    run_uuid: str | None = None

    @property
    def id(self) -> str:
        return self.run_id or self.run_uuid or ""


class UpdateRun(RunRef):
    status: str | int | None = None
    end_time: int | None = Field(default=None, ge=0, le=MAX_INT64)
    run_name: str | None = Field(default=None, max_length=256)


class LogParam(RunRef):
    key: str = Field(min_length=1, max_length=MAX_KEY)
    value: str = Field(default="", max_length=MAX_PARAM_VALUE)


class SetTag(RunRef):
    key: str = Field(min_length=1, max_length=MAX_KEY)
    value: str = Field(default="", max_length=MAX_TAG_VALUE)


class DeleteTag(RunRef):
    key: str = Field(min_length=1, max_length=MAX_KEY)


class LoggedMetric(MlflowRequest):
    key: str = Field(min_length=1, max_length=MAX_KEY)
    value: float
    timestamp: int | None = Field(default=None, ge=0, le=MAX_INT64)
    step: int = Field(default=0, ge=-MAX_INT64, le=MAX_INT64)


class LogMetric(RunRef, LoggedMetric):
    pass


class LogBatch(RunRef):
    metrics: list[LoggedMetric] = Field(default_factory=list, max_length=1000)
    params: list[KeyValue] = Field(default_factory=list, max_length=100)
    tags: list[KeyValue] = Field(default_factory=list, max_length=100)


class SearchRuns(MlflowRequest):
    experiment_ids: list[str] = Field(default_factory=list)
    filter: str | None = None
    run_view_type: str | int | None = None
    max_results: int = Field(default=1000, ge=1, le=50000)
    order_by: list[str] = Field(default_factory=list)
    page_token: str | None = None


class CreateRegisteredModel(MlflowRequest):
    name: str = Field(min_length=1, max_length=256)
    tags: list[KeyValue] = Field(default_factory=list, max_length=100)
    description: str = Field(default="", max_length=MAX_TAG_VALUE)


class CreateModelVersion(MlflowRequest):
    name: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=4096)
    run_id: str | None = Field(default=None, max_length=64)
    tags: list[KeyValue] = Field(default_factory=list, max_length=100)
    description: str = Field(default="", max_length=MAX_TAG_VALUE)


class RegisteredModelAlias(MlflowRequest):
    name: str = Field(min_length=1, max_length=256)
    alias: str = Field(min_length=1, max_length=256)
    version: str


class LatestVersions(MlflowRequest):
    name: str = Field(min_length=1, max_length=256)
    stages: list[str] = Field(default_factory=list)


class TrackedRun(Response):
    """A run logged through the MLflow API, as Nimbus lists it beside its jobs."""

    id: str
    name: str
    experiment: str
    status: str
    user: str
    started_at: Timestamp
    ended_at: Timestamp | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    artifacts: list[str]


class TrackedRunList(Response):
    runs: list[TrackedRun]
