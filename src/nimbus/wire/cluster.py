"""The cluster as the control planes see it: ``GET /cluster`` (admin)."""

from __future__ import annotations

from nimbus.wire.base import Response, Timestamp


class ControlPlaneView(Response):
    """One ``nimbus server`` sharing the metadata store."""

    id: str  # its instance id
    url: str
    hostname: str
    executor: str
    leader: bool
    alive: bool  # it heartbeated within the leader lease
    started_at: Timestamp
    heartbeat_at: Timestamp


class NodeResources(Response):
    cpus: float
    gpus: int
    memory_bytes: int


class NodeAttempt(Response):
    """An attempt running on a node, and what its job holds there."""

    job_id: str
    attempt_id: str
    tenant: str
    cpus: float
    gpus: int
    memory_bytes: int
    workers: int


class NodeView(Response):
    """A machine jobs run on (with the local executor: a control plane's own machine)."""

    name: str
    control_plane: str | None  # the control plane whose executor runs its attempts
    resources: NodeResources  # what it offers jobs
    used: NodeResources  # what its running attempts hold
    running: list[NodeAttempt]


class TenantQueueView(Response):
    tenant: str
    queued: int
    running: int


class ClusterStatus(Response):
    """``GET /cluster``: who leads, the control planes, the nodes and the queue."""

    leader: str | None  # the control plane holding the scheduler's lease
    epoch: int  # the lease's fencing token
    lease_expires_at: Timestamp
    executor: str  # the leader's (or, with none, this server's)
    control_planes: list[ControlPlaneView]
    nodes: list[NodeView]
    queue: list[TenantQueueView]
