"""MLflow's model registry REST API (``/api/2.0/mlflow/registered-models/...`` and
``/model-versions/...``): create, get and search registered models and versions, and
aliases. A version is READY as soon as it is created."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from nimbus.api.auth import Member, Viewer
from nimbus.api.mlflow_errors import no_nul_in_query
from nimbus.api.state import services_of
from nimbus.wire import tracking as wire

router = APIRouter(
    prefix="/api/2.0/mlflow", tags=["mlflow"], dependencies=[Depends(no_nul_in_query)]
)

Name = Annotated[str, Query(min_length=1, max_length=256)]
Results = Annotated[int, Query(ge=1, le=10000)]
Token = Annotated[str | None, Query(max_length=64)]
Filter = Annotated[str | None, Query(max_length=4096)]


class AliasRef(wire.MlflowRequest):
    name: str
    alias: str


@router.post("/registered-models/create")
def create_model(body: wire.CreateRegisteredModel, principal: Member, request: Request) -> Any:
    return {
        "registered_model": services_of(request).tracking_registry.create_model(principal, body)
    }


@router.get("/registered-models/get")
def get_model(name: Name, principal: Viewer, request: Request) -> Any:
    return {"registered_model": services_of(request).tracking_registry.get_model(principal, name)}


@router.get("/registered-models/search")
def search_models(
    principal: Viewer,
    request: Request,
    filter: Filter = None,
    max_results: Results = 100,
    page_token: Token = None,
) -> Any:
    registry = services_of(request).tracking_registry
    return registry.search_models(principal, filter, max_results, page_token)


@router.post("/registered-models/get-latest-versions")
def latest_versions(body: wire.LatestVersions, principal: Viewer, request: Request) -> Any:
    return services_of(request).tracking_registry.latest_versions(principal, body.name)


@router.post("/registered-models/alias")
def set_alias(body: wire.RegisteredModelAlias, principal: Member, request: Request) -> Any:
    services_of(request).tracking_registry.set_alias(principal, body)
    return {}


@router.delete("/registered-models/alias")
def delete_alias(body: AliasRef, principal: Member, request: Request) -> Any:
    services_of(request).tracking_registry.delete_alias(principal, body.name, body.alias)
    return {}


@router.get("/registered-models/alias")
def by_alias(
    name: Name,
    alias: Annotated[str, Query(min_length=1, max_length=256)],
    principal: Viewer,
    request: Request,
) -> Any:
    return {
        "model_version": services_of(request).tracking_registry.by_alias(principal, name, alias)
    }


@router.post("/model-versions/create")
def create_version(body: wire.CreateModelVersion, principal: Member, request: Request) -> Any:
    return {"model_version": services_of(request).tracking_registry.create_version(principal, body)}


@router.get("/model-versions/get")
def get_version(
    name: Name,
    version: Annotated[str, Query(min_length=1, max_length=16)],
    principal: Viewer,
    request: Request,
) -> Any:
    registry = services_of(request).tracking_registry
    return {"model_version": registry.get_version(principal, name, version)}


@router.get("/model-versions/search")
def search_versions(
    principal: Viewer,
    request: Request,
    filter: Filter = None,
    max_results: Results = 100,
    page_token: Token = None,
) -> Any:
    registry = services_of(request).tracking_registry
    return registry.search_versions(principal, filter, max_results, page_token)
