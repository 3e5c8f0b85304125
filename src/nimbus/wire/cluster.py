"""The cluster as the control planes see it: ``GET /cluster`` (admin)."""

from __future__ import annotations

from pydantic import Field

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
    # A Ray node's custom resources (``--resource NAME=N`` asks for them), by name.
    custom: dict[str, float] = Field(default_factory=dict)


class NodeAttempt(Response):
    """An attempt running on a node, and what its job holds there."""

    job_id: str
    attempt_id: str
    tenant: str
    cpus: float
    gpus: int
    memory_bytes: int
    workers: int  # how many of its workers run on this node
    ranks: list[int] = Field(default_factory=list)  # which ones (Ray executor)


class NodeView(Response):
    """A machine jobs run on: with the local executor a control plane's own machine, with
    the Ray executor a node of the Ray cluster."""

    name: str  # the host name; Ray: the node's id
    control_plane: str | None  # the control plane whose executor runs its attempts
    resources: NodeResources  # what it offers jobs
    used: NodeResources  # what its running attempts hold
    running: list[NodeAttempt]
    # Ray executor only:
    address: str | None = None  # the node's IP address
    head: bool = False  # the Ray head
    available: NodeResources | None = None  # what Ray has not given out (any user's work)


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
    # Ray executor: running attempts with workers no node took yet (waiting in Ray's queue
    # for room), and when the head last listed the nodes (long ago: it is unreachable).
    waiting: list[NodeAttempt] = Field(default_factory=list)
    nodes_listed_at: Timestamp | None = None
