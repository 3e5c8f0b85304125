"""Deployments: serve a model version (OIP v2 endpoint), read, roll, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from nimbus.api.auth import Member, Viewer
from nimbus.api.state import services_of
from nimbus.services.deployments import CreateDeployment, UpdateDeployment

router = APIRouter(tags=["deployments"])


@router.post("/deployments", status_code=201)
def create_deployment(
    body: CreateDeployment, principal: Member, request: Request
) -> dict[str, Any]:
    return services_of(request).deployments.create(principal, body)


@router.get("/deployments")
def list_deployments(principal: Viewer, request: Request) -> dict[str, Any]:
    return {"deployments": services_of(request).deployments.list_deployments(principal)}


@router.get("/deployments/{name}")
def get_deployment(name: str, principal: Viewer, request: Request) -> dict[str, Any]:
    return services_of(request).deployments.get(principal, name)


@router.patch("/deployments/{name}")
def update_deployment(
    name: str, body: UpdateDeployment, principal: Member, request: Request
) -> dict[str, Any]:
    return services_of(request).deployments.update(principal, name, body)


@router.delete("/deployments/{name}")
def delete_deployment(name: str, principal: Member, request: Request) -> dict[str, Any]:
    return services_of(request).deployments.delete(principal, name)
