"""``nimbus cluster status``'s tables, without a server: the local and the Ray layouts."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from nimbus.cli.cluster import cluster_tables
from nimbus.wire.cluster import ClusterStatus, NodeAttempt, NodeResources, NodeView

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def render(status: ClusterStatus) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=240, color_system=None).print(cluster_tables(status))
    return buffer.getvalue()


def share(job: str, ranks: list[int]) -> NodeAttempt:
    n = len(ranks)
    return NodeAttempt(
        job_id=job,
        attempt_id="att1",
        tenant="acme",
        cpus=n,
        gpus=0,
        memory_bytes=0,
        workers=n,
        ranks=ranks,
    )


def status(executor: str, nodes: list[NodeView], waiting: list[NodeAttempt]) -> ClusterStatus:
    return ClusterStatus(
        leader=None,
        epoch=3,
        lease_expires_at=NOW,
        executor=executor,
        control_planes=[],
        nodes=nodes,
        queue=[],
        waiting=waiting,
        nodes_listed_at=NOW if executor == "ray" else None,
    )


def test_ray_nodes_show_custom_resources_availability_ranks_and_the_waiting() -> None:
    offer = NodeResources(cpus=2, gpus=0, memory_bytes=0, custom={"node_a": 1.0})
    node = NodeView(
        name="f" * 56,
        control_plane="cp-1",
        resources=offer,
        used=NodeResources(cpus=1, gpus=0, memory_bytes=0, custom={"node_a": 1.0}),
        running=[share("job-x", [0, 1])],
        address="10.0.0.1",
        head=True,
        available=NodeResources(cpus=1, gpus=0, memory_bytes=0, custom={"node_a": 0.0}),
    )
    text = render(status("ray", [node], [share("job-y", [1])]))
    assert "Ray nodes, listed 12:00:00 UTC" in text and "ffffffffffff (head)" in text
    assert "2 CPU, 0 GPU, 0 bytes, 1 node_a" in text and "1 CPU, 0 GPU, 0 bytes, 0 node_a" in text
    assert "job-x/att1 (acme) worker 0,1" in text
    assert "Waiting for a node" in text and "job-y/att1 (acme) worker 1" in text


def test_the_local_executors_nodes_keep_their_table() -> None:
    node = NodeView(
        name="host-1",
        control_plane="cp-1",
        resources=NodeResources(cpus=4, gpus=0, memory_bytes=0),
        used=NodeResources(cpus=1, gpus=0, memory_bytes=0),
        running=[share("job-x", [])],
    )
    text = render(status("forkserver", [node], []))
    assert "Nodes" in text and "host-1" in text and "job-x (acme)" in text
    assert "Ray nodes" not in text and "Waiting" not in text
