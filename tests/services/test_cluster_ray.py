"""The cluster view with the Ray executor: Ray's nodes, what each offers and has available,
and which attempt's workers run where (or still wait for a node)."""

from __future__ import annotations

import dataclasses

from nimbus.db.control_planes import RunningAttempt
from nimbus.db.engine import Database
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.ray_cluster import RayNode
from nimbus.services.cluster import ClusterService, Identity, ray_nodes, waiting

A, B = "a" * 56, "b" * 56
NODES = [
    RayNode(
        B,
        "10.0.0.2",
        {"CPU": 4.0, "GPU": 1.0, "memory": 8e9, "object_store_memory": 1e9, "node:10.0.0.2": 1.0},
        {"CPU": 1.0, "GPU": 0.5, "memory": 8e9, "CPU_group_0_abc": 1.0},
    ),
    RayNode(
        A,
        "10.0.0.1",
        {"CPU": 2.0, "node_a": 1.0, "node:__internal_head__": 1.0, "memory": 4e9},
        {"CPU": 2.0, "node_a": 1.0, "memory": 4e9},
    ),
]


def attempt(job: str, workers: int, placed: dict[int, str], **custom: float) -> RunningAttempt:
    return RunningAttempt(
        job_id=job,
        attempt_id=job + "-1",
        tenant="default",
        owner="cp-1",
        cpus=1.0,
        gpus=0,
        memory_bytes=0,
        workers=workers,
        lease_expires_at=None,
        custom=custom,
        placed=placed,
    )


def test_ray_nodes_show_totals_availability_and_what_runs_where() -> None:
    running = [
        attempt("spread", 2, {0: A, 1: B}),
        attempt("packed", 2, {0: B, 1: B}, node_b=1.0),
        attempt("queued", 1, {}),
    ]
    head, other = ray_nodes(NODES, running, "cp-1")
    assert (head.name, head.head, head.address, other.head) == (A, True, "10.0.0.1", False)
    assert head.control_plane == "cp-1"
    assert head.resources.custom == {"node_a": 1.0}  # Ray's own markers left out
    assert other.resources.model_dump() == {
        "cpus": 4.0,
        "gpus": 1,
        "memory_bytes": 8_000_000_000,
        "custom": {},
    }
    assert other.available is not None and other.available.gpus == 0  # half a GPU: not one
    assert other.available.custom == {}  # a placement group's resources are not offered
    shares = [(a.job_id, a.ranks, a.workers, a.cpus) for a in head.running]
    assert shares == [("spread", [0], 1, 1.0)]
    assert [(a.job_id, a.ranks) for a in other.running] == [("spread", [1]), ("packed", [0, 1])]
    assert other.used.cpus == 3.0 and other.used.custom == {"node_b": 2.0}
    assert head.used.cpus == 1.0 and head.used.custom == {}


def test_waiting_lists_the_workers_no_node_took_yet() -> None:
    running = [attempt("queued", 2, {1: A}), attempt("placed", 1, {0: B})]
    (only,) = waiting(running)
    assert (only.job_id, only.ranks, only.workers, only.cpus) == ("queued", [0], 1, 1.0)


class Listed:
    """The Ray bridge's face to the cluster view: nodes as its child last listed them."""

    def listing(self) -> tuple[list[RayNode], float]:
        return NODES, 1_796_300_000.0

    def capacity(self) -> Capacity:
        return Capacity(cpus=6.0, gpus=1, memory_bytes=0)


def test_the_status_of_a_ray_control_plane_lists_ray_nodes(db: Database) -> None:
    me = Identity("cp-1", "http://127.0.0.1:1", "ray", Capacity(6.0, 1, 0), "/tmp/jobs")
    service = ClusterService(db, me, lease_seconds=5.0, ray=Listed())
    service.register()
    assert service.round(None) is not None  # the leader
    status = service.status()
    assert status.executor == "ray" and [n.name for n in status.nodes] == [A, B]
    assert status.waiting == [] and status.nodes_listed_at is not None
    assert status.nodes_listed_at.timestamp() == 1_796_300_000.0
    local = ClusterService(db, dataclasses.replace(me, executor="local"), lease_seconds=5.0)
    assert local.status().nodes_listed_at is None  # the leader's executor decides: still ray
