"""Tracking records as MLflow's REST API writes them (the JSON form of its protobuf
messages): ``{"info": ..., "data": ...}`` for a run, ``[{"key", "value"}]`` for tags, ids
and version numbers as strings, times as milliseconds since the epoch."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nimbus.db.tracking import Point
from nimbus.db.tracking_tables import ExperimentRow, ModelVersionRow, RegisteredModelRow, RunRow

ARTIFACT_SCHEME = "mlflow-artifacts:/"
JOBS_EXPERIMENT = "jobs"  # the experiment id Nimbus jobs carry when read as runs


def millis(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def pairs(values: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in sorted(values.items())]


def experiment_view(row: ExperimentRow) -> dict[str, Any]:
    return {
        "experiment_id": str(row.id),
        "name": row.name,
        "artifact_location": f"{ARTIFACT_SCHEME}{row.id}",
        "lifecycle_stage": row.lifecycle_stage,
        "creation_time": millis(row.created_at),
        "last_update_time": millis(row.updated_at),
        "tags": pairs(row.tags),
    }


def run_artifact_root(experiment_id: int, run_id: str) -> str:
    """Where a run's files live under ``/api/2.0/mlflow-artifacts/artifacts/``."""
    return f"{experiment_id}/{run_id}/artifacts"


def run_info(row: RunRow) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_id": row.id,
        "run_uuid": row.id,
        "run_name": row.name,
        "experiment_id": str(row.experiment_id),
        "user_id": row.user_id,
        "status": row.status,
        "start_time": row.start_time,
        "artifact_uri": ARTIFACT_SCHEME + run_artifact_root(row.experiment_id, row.id),
        "lifecycle_stage": row.lifecycle_stage,
    }
    if row.end_time is not None:
        info["end_time"] = row.end_time
    return info


def metric_view(point: Point) -> dict[str, Any]:
    return {
        "key": point.key,
        "value": point.value,
        "timestamp": point.timestamp,
        "step": point.step,
    }


def run_view(
    info: dict[str, Any],
    metrics: Mapping[str, Point],
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> dict[str, Any]:
    return {
        "info": info,
        "data": {
            "metrics": [metric_view(metrics[k]) for k in sorted(metrics)],
            "params": pairs(params),
            "tags": pairs(tags),
        },
        "inputs": {},
        "outputs": {},
    }


def version_view(model: RegisteredModelRow, row: ModelVersionRow) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": model.name,
        "version": str(row.version),
        "creation_timestamp": millis(row.created_at),
        "last_updated_timestamp": millis(row.updated_at),
        "current_stage": "None",
        "description": row.description,
        "source": row.source,
        "status": "READY",  # the files stay where the client put them: nothing to wait for
        "tags": pairs(row.tags),
        "aliases": sorted(a for a, v in model.aliases.items() if int(v) == row.version),
    }
    if row.run_id:
        view["run_id"] = row.run_id
    return view


def model_view(model: RegisteredModelRow, latest: ModelVersionRow | None) -> dict[str, Any]:
    return {
        "name": model.name,
        "creation_timestamp": millis(model.created_at),
        "last_updated_timestamp": millis(model.updated_at),
        "description": model.description,
        "latest_versions": [] if latest is None else [version_view(model, latest)],
        "tags": pairs(model.tags),
        "aliases": [{"alias": a, "version": str(v)} for a, v in sorted(model.aliases.items())],
    }
