"""The control planes sharing one metadata store: registration, the scheduler's leader
election, the dead ones, and the cluster's status (``GET /cluster``).

Every server registers itself and, every round of its :class:`~.leadership.Election`,
heartbeats and runs one round of the election (:func:`nimbus.db.control_planes.elect`).
A control plane that has not heartbeated for one leader lease is *dead*: a live one on its
machine adopts its deployments, and the leader reaps and requeues its attempts there.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from nimbus.db import control_planes as repo
from nimbus.db.blobrefs import ClaimHolder
from nimbus.db.engine import Database
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Fence
from nimbus.jobs.ray_cluster import RayNode
from nimbus.wire.cluster import (
    ClusterStatus,
    ControlPlaneView,
    NodeAttempt,
    NodeResources,
    NodeView,
    TenantQueueView,
)


class RayListing(Protocol):
    """The Ray cluster as a control plane sees it (its Ray bridge)."""

    def listing(self) -> tuple[list[RayNode], float]:
        """The alive nodes, and when (``time.time()``) the head last listed them."""
        ...

    def capacity(self) -> Capacity:
        """What the scheduler may claim for now."""
        ...


@dataclass(frozen=True)
class Identity:
    """What a control plane says of itself when it registers."""

    id: str
    url: str
    executor: str
    capacity: Capacity
    jobs_dir: str
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


class ClusterService:
    """This control plane's membership (``me``) in the cluster of ``db``."""

    def __init__(
        self,
        db: Database,
        me: Identity,
        *,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
        ray: RayListing | None = None,
    ) -> None:
        self.db, self.me, self.lease_seconds, self.clock = db, me, lease_seconds, clock
        self.ray = ray  # the Ray cluster's nodes, when this control plane uses Ray
        self._started = self.now()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def register(self) -> None:
        """Insert or refresh this control plane's row (at start, and after a heartbeat
        found it gone)."""
        me, now = self.me, self.now()
        plane = repo.ControlPlane(
            id=me.id,
            url=me.url,
            hostname=me.hostname,
            pid=me.pid,
            executor=me.executor,
            capacity={
                "cpus": me.capacity.cpus,
                "gpus": me.capacity.gpus,
                "memory_bytes": me.capacity.memory_bytes,
            },
            jobs_dir=me.jobs_dir,
            started_at=self._started,
            heartbeat_at=now,
        )
        with self.db.session(write=True) as s:
            repo.register(s, plane)

    def round(self, held: Fence | None, candidate: bool = True) -> Fence | None:
        """Heartbeat, then (a ``candidate``: one that can schedule) one election round:
        the fence this control plane holds after it, or None."""
        now = self.now()
        with self.db.session(write=True) as s:
            alive = repo.heartbeat(s, self.me.id, now)
        if not alive:
            self.register()
        if not candidate:
            return None
        with self.db.session(write=True) as s:
            return repo.elect(s, self.me.id, held, now, self.lease_seconds)

    def resign(self, fence: Fence) -> None:
        with self.db.session(write=True) as s:
            repo.resign(s, fence)

    def unregister(self) -> None:
        with self.db.session(write=True) as s:
            repo.unregister(s, self.me.id)

    def dead_here(self) -> list[repo.ControlPlane]:
        """Dead control planes of this machine: silent for a lease, their process gone."""
        with self.db.session() as s:
            planes = repo.list_planes(s)
        return [
            plane
            for plane in planes
            if plane.id != self.me.id
            and plane.hostname == self.me.hostname
            and not self._alive(plane)
            and not _process_exists(plane.pid)
        ]

    def forget(self, plane_id: str) -> None:
        """Remove a dead control plane's row once what it held was taken over."""
        with self.db.session(write=True) as s:
            repo.unregister(s, plane_id)

    def holder(self) -> ClaimHolder:
        """This control plane as the holder of the claims it takes."""
        return ClaimHolder(self.me.id, self.me.hostname, self.me.pid)

    def holder_dead(self, holder: ClaimHolder) -> bool:
        """Whether ``holder`` (a claim's) is provably dead: see :func:`provably_dead`."""
        with self.db.session() as s:
            plane = repo.get_plane(s, holder.plane_id)
        return provably_dead(
            holder, plane, self.me.hostname, self.now(), self.lease_seconds, _process_exists
        )

    def _alive(self, plane: repo.ControlPlane) -> bool:
        return self.now() - plane.heartbeat_at <= timedelta(seconds=self.lease_seconds)

    def status(self) -> ClusterStatus:
        """``GET /cluster``: the control planes, the leader, the nodes and the queue."""
        with self.db.session() as s:
            planes = repo.list_planes(s)
            lease = repo.leader(s)
            running = repo.running_attempts(s)
            depth = repo.queue_depth(s)
        leading = lease.holder if lease.expires_at > self.now() else None
        by_id = {plane.id: plane for plane in planes}
        views = [
            ControlPlaneView(
                id=plane.id,
                url=plane.url,
                hostname=plane.hostname,
                executor=plane.executor,
                leader=plane.id == leading,
                alive=self._alive(plane),
                started_at=plane.started_at,
                heartbeat_at=plane.heartbeat_at,
            )
            for plane in planes
        ]
        lead = by_id.get(leading) if leading is not None else None
        executor = lead.executor if lead is not None else self.me.executor
        nodes, pending, listed = [], [], None
        if executor != "ray":
            nodes = _nodes(planes, running, leading)
        elif self.ray is not None:
            found, listed_at = self.ray.listing()
            nodes, pending = ray_nodes(found, running, leading), waiting(running)
            listed = datetime.fromtimestamp(listed_at, UTC) if listed_at else None
        return ClusterStatus(
            leader=leading,
            epoch=lease.epoch,
            lease_expires_at=lease.expires_at,
            executor=executor,
            control_planes=views,
            nodes=nodes,
            queue=[
                TenantQueueView(tenant=q.tenant, queued=q.queued, running=q.running) for q in depth
            ],
            waiting=pending,
            nodes_listed_at=listed,
        )


def _nodes(
    planes: list[repo.ControlPlane], running: list[repo.RunningAttempt], leading: str | None
) -> list[NodeView]:
    """With the local executor each control plane's machine is a node, running the
    attempts leased to that control plane: the leader's, and any a dead one left."""
    nodes: list[NodeView] = []
    for plane in planes:
        mine = [a for a in running if a.owner == plane.id]
        if plane.id != leading and not mine:
            continue
        attempts = [
            NodeAttempt(
                job_id=a.job_id,
                attempt_id=a.attempt_id,
                tenant=a.tenant,
                cpus=a.cpus * a.workers,
                gpus=a.gpus * a.workers,
                memory_bytes=a.memory_bytes * a.workers,
                workers=a.workers,
            )
            for a in mine
        ]
        cap = plane.capacity
        nodes.append(
            NodeView(
                name=plane.hostname,
                control_plane=plane.id,
                resources=NodeResources(
                    cpus=float(cap.get("cpus", 0)),
                    gpus=int(cap.get("gpus", 0)),
                    memory_bytes=int(cap.get("memory_bytes", 0)),
                ),
                used=NodeResources(
                    cpus=sum(a.cpus for a in attempts),
                    gpus=sum(a.gpus for a in attempts),
                    memory_bytes=sum(a.memory_bytes for a in attempts),
                ),
                running=attempts,
            )
        )
    return nodes


def provably_dead(
    holder: ClaimHolder,
    plane: repo.ControlPlane | None,
    hostname: str,
    now: datetime,
    lease_seconds: float,
    process_exists: Callable[[int], bool],
) -> bool:
    """Whether the control plane process ``holder`` names is gone for sure: it ran on this
    machine (``hostname``), no process has its pid, and no control plane heartbeats with
    that pid under its id (``plane``: the registry's row for it, None when it left the
    registry). The heartbeat guards against a machine name shared across pid namespaces
    (containers on the host's network). A holder on another machine is never provably
    dead: its claims wait for the garbage sweep's grace period."""
    if holder.hostname != hostname or process_exists(holder.pid):
        return False
    return not (
        plane is not None
        and plane.pid == holder.pid
        and now - plane.heartbeat_at <= timedelta(seconds=lease_seconds)
    )


def ray_nodes(
    nodes: list[RayNode], running: list[repo.RunningAttempt], leading: str | None
) -> list[NodeView]:
    """The Ray cluster's alive nodes: what each offers (Ray's total and available), and
    the workers of running attempts placed on it."""
    views = []
    for node in sorted(nodes, key=lambda n: (not n.head, n.address, n.node_id)):
        here = [
            _share(a, [rank for rank, on in sorted(a.placed.items()) if on == node.node_id])
            for a in running
        ]
        attempts = [a for a in here if a.ranks]
        views.append(
            NodeView(
                name=node.node_id,
                control_plane=leading,
                resources=_offer(node.resources),
                used=NodeResources(
                    cpus=sum(a.cpus for a in attempts),
                    gpus=sum(a.gpus for a in attempts),
                    memory_bytes=sum(a.memory_bytes for a in attempts),
                    custom=_summed(running, node.node_id),
                ),
                running=attempts,
                address=node.address,
                head=node.head,
                available=_offer(node.available),
            )
        )
    return views


def waiting(running: list[repo.RunningAttempt]) -> list[NodeAttempt]:
    """Running attempts with workers no node has taken yet: waiting in Ray's queue."""
    shares = [_share(a, [r for r in range(a.workers) if r not in a.placed]) for a in running]
    return [share for share in shares if share.ranks]


def _share(attempt: repo.RunningAttempt, ranks: list[int]) -> NodeAttempt:
    """What ``ranks`` of an attempt's workers hold."""
    n = len(ranks)
    return NodeAttempt(
        job_id=attempt.job_id,
        attempt_id=attempt.attempt_id,
        tenant=attempt.tenant,
        cpus=attempt.cpus * n,
        gpus=attempt.gpus * n,
        memory_bytes=attempt.memory_bytes * n,
        workers=n,
        ranks=ranks,
    )


def _summed(running: list[repo.RunningAttempt], node_id: str) -> dict[str, float]:
    """The custom resources the workers placed on ``node_id`` hold."""
    held: dict[str, float] = {}
    for attempt in running:
        n = sum(1 for on in attempt.placed.values() if on == node_id)
        for name, amount in attempt.custom.items():
            if n:
                held[name] = held.get(name, 0.0) + amount * n
    return held


# Ray's own resources that are no job's to ask for: the object store, a node's address
# marker (node:IP, node:__internal_head__) and placement groups' (CPU_group_ID, ...).
_NOT_OFFERED = ("object_store_memory",)


def _offer(resources: dict[str, float]) -> NodeResources:
    """Ray's resource names as Nimbus shows them (GPUs: whole ones)."""
    return NodeResources(
        cpus=resources.get("CPU", 0.0),
        gpus=int(resources.get("GPU", 0.0) + 1e-9),
        memory_bytes=int(resources.get("memory", 0.0)),
        custom={
            name: amount
            for name, amount in sorted(resources.items())
            if name not in ("CPU", "GPU", "memory", *_NOT_OFFERED)
            and not name.startswith("node:")
            and "_group_" not in name
        },
    )


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
