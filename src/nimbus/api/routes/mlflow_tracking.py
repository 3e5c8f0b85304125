"""MLflow's tracking REST API (``/api/2.0/mlflow/...``): experiments, runs, params, tags,
metrics and metric histories, for the real MLflow client with ``MLFLOW_TRACKING_URI`` set to
this server and ``MLFLOW_TRACKING_TOKEN`` to a Nimbus token. Errors in MLflow's shape
(:mod:`nimbus.api.mlflow_errors`). GET requests take their fields as query parameters, the
others as a JSON body, as MLflow's client sends them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from nimbus.api.auth import Member, Viewer
from nimbus.api.mlflow_errors import no_nul_in_query
from nimbus.api.state import services_of
from nimbus.db.tracking import ACTIVE, DELETED
from nimbus.wire import tracking as wire

PREFIX = "/api/2.0/mlflow"
router = APIRouter(prefix=PREFIX, tags=["mlflow"], dependencies=[Depends(no_nul_in_query)])

Text = Annotated[str, Query(max_length=512)]


@router.post("/experiments/create")
def create_experiment(body: wire.CreateExperiment, principal: Member, request: Request) -> Any:
    return {"experiment_id": services_of(request).tracking.create_experiment(principal, body)}


@router.get("/experiments/get")
def get_experiment(experiment_id: Text, principal: Viewer, request: Request) -> Any:
    return {"experiment": services_of(request).tracking.get_experiment(principal, experiment_id)}


@router.get("/experiments/get-by-name")
def get_experiment_by_name(experiment_name: Text, principal: Viewer, request: Request) -> Any:
    tracking = services_of(request).tracking
    return {"experiment": tracking.experiment_by_name(principal, experiment_name)}


@router.post("/experiments/search")
def search_experiments(body: wire.SearchExperiments, principal: Viewer, request: Request) -> Any:
    return services_of(request).tracking.search_experiments(principal, body)


@router.post("/experiments/set-experiment-tag")
def set_experiment_tag(body: wire.SetExperimentTag, principal: Member, request: Request) -> Any:
    services_of(request).tracking.set_experiment_tag(principal, body)
    return {}


@router.post("/experiments/delete")
def delete_experiment(body: wire.ExperimentId, principal: Member, request: Request) -> Any:
    services_of(request).tracking.set_experiment_stage(principal, body.experiment_id, DELETED)
    return {}


@router.post("/experiments/restore")
def restore_experiment(body: wire.ExperimentId, principal: Member, request: Request) -> Any:
    services_of(request).tracking.set_experiment_stage(principal, body.experiment_id, ACTIVE)
    return {}


@router.post("/runs/create")
def create_run(body: wire.CreateRun, principal: Member, request: Request) -> Any:
    return {"run": services_of(request).tracking.create_run(principal, body)}


@router.get("/runs/get")
def get_run(principal: Viewer, request: Request, run_id: Text = "", run_uuid: Text = "") -> Any:
    return {"run": services_of(request).tracking.get_run(principal, run_id or run_uuid)}


@router.post("/runs/update")
def update_run(body: wire.UpdateRun, principal: Member, request: Request) -> Any:
    return {"run_info": services_of(request).tracking.update_run(principal, body)}


@router.post("/runs/delete")
def delete_run(body: wire.RunRef, principal: Member, request: Request) -> Any:
    services_of(request).tracking.set_run_stage(principal, body.id, DELETED)
    return {}


@router.post("/runs/restore")
def restore_run(body: wire.RunRef, principal: Member, request: Request) -> Any:
    services_of(request).tracking.set_run_stage(principal, body.id, ACTIVE)
    return {}


@router.post("/runs/search")
def search_runs(body: wire.SearchRuns, principal: Viewer, request: Request) -> Any:
    return services_of(request).tracking.search_runs(principal, body)


@router.post("/runs/log-parameter")
def log_param(body: wire.LogParam, principal: Member, request: Request) -> Any:
    param = wire.KeyValue(key=body.key, value=body.value)
    services_of(request).tracking.log_batch(principal, body.id, [], [param], [])
    return {}


@router.post("/runs/log-metric")
def log_metric(body: wire.LogMetric, principal: Member, request: Request) -> Any:
    point = wire.LoggedMetric(
        key=body.key, value=body.value, timestamp=body.timestamp, step=body.step
    )
    services_of(request).tracking.log_batch(principal, body.id, [point], [], [])
    return {}


@router.post("/runs/set-tag")
def set_tag(body: wire.SetTag, principal: Member, request: Request) -> Any:
    tag = wire.KeyValue(key=body.key, value=body.value)
    services_of(request).tracking.log_batch(principal, body.id, [], [], [tag])
    return {}


@router.post("/runs/delete-tag")
def delete_tag(body: wire.DeleteTag, principal: Member, request: Request) -> Any:
    services_of(request).tracking.delete_tag(principal, body.id, body.key)
    return {}


@router.post("/runs/log-batch")
def log_batch(body: wire.LogBatch, principal: Member, request: Request) -> Any:
    services_of(request).tracking.log_batch(
        principal, body.id, body.metrics, body.params, body.tags
    )
    return {}


@router.get("/metrics/get-history")
def metric_history(
    metric_key: Annotated[str, Query(min_length=1, max_length=250)],
    principal: Viewer,
    request: Request,
    run_id: Text = "",
    run_uuid: Text = "",
    max_results: Annotated[int | None, Query(ge=1, le=25000)] = None,
    page_token: Text | None = None,
) -> Any:
    tracking = services_of(request).tracking
    return tracking.metric_history(
        principal, run_id or run_uuid, metric_key, max_results, page_token
    )


@router.post("/logged-models/search")
def search_logged_models(principal: Viewer) -> Any:
    """MLflow 3's logged models are not kept (a run's files are its artifacts): none. The
    client's ``mlflow.search_runs`` asks for them beside the runs."""
    return {"models": []}
