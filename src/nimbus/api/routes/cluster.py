"""The cluster's status (admin): control planes, leader, nodes, queue."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus.api.auth import Admin
from nimbus.api.state import services_of
from nimbus.wire.cluster import ClusterStatus

router = APIRouter(tags=["cluster"])


@router.get("/cluster", response_model=ClusterStatus)
def cluster_status(principal: Admin, request: Request) -> ClusterStatus:
    """The control planes sharing this metadata store (which one leads the scheduler, when
    each last heartbeated), the executor, the nodes with their resources and the attempts
    running on each, and the queue depth per tenant."""
    return services_of(request).cluster.status()
