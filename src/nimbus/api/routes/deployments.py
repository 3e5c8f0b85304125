"""Deployments: serve a model version (OIP v2 endpoint), read, roll, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus.api.auth import Member, Viewer
from nimbus.api.state import services_of
from nimbus.wire.deployments import (
    CreateDeployment,
    Deployment,
    DeploymentList,
    UpdateDeployment,
)

router = APIRouter(tags=["deployments"])


@router.post("/deployments", status_code=201, response_model=Deployment)
def create_deployment(body: CreateDeployment, principal: Member, request: Request) -> Deployment:
    return services_of(request).deployments.create(principal, body)


@router.get("/deployments", response_model=DeploymentList)
def list_deployments(principal: Viewer, request: Request) -> DeploymentList:
    return DeploymentList(deployments=services_of(request).deployments.list_deployments(principal))


@router.get("/deployments/{name}", response_model=Deployment)
def get_deployment(name: str, principal: Viewer, request: Request) -> Deployment:
    return services_of(request).deployments.get(principal, name)


@router.patch("/deployments/{name}", response_model=Deployment)
def update_deployment(
    name: str, body: UpdateDeployment, principal: Member, request: Request
) -> Deployment:
    return services_of(request).deployments.update(principal, name, body)


@router.post("/deployments/{name}/rollback", response_model=Deployment)
def rollback_deployment(name: str, principal: Member, request: Request) -> Deployment:
    return services_of(request).deployments.rollback(principal, name)


@router.delete("/deployments/{name}", response_model=Deployment)
def delete_deployment(name: str, principal: Member, request: Request) -> Deployment:
    return services_of(request).deployments.delete(principal, name)
