"""The Ray cluster's pure decisions: whether some alive node could still run a job."""

from __future__ import annotations

from nimbus.jobs.domain import Resources
from nimbus.jobs.ray_cluster import RayNode, gone_for, placeable

HEAD = RayNode(
    "a" * 56, "10.0.0.1", {"CPU": 2.0, "memory": 4e9, "node_a": 1.0, "node:__internal_head__": 1.0}
)
GPU = RayNode(
    "b" * 56, "10.0.0.2", {"CPU": 8.0, "GPU": 2.0, "memory": 3e10, "accelerator_type:H100": 1.0}
)


def test_placeable_says_why_no_alive_node_could_run_a_job() -> None:
    assert placeable(Resources(cpus=1, custom={"node_a": 1}), [HEAD, GPU]) is None
    assert placeable(Resources(cpus=2, gpus=2), [HEAD, GPU]) is None
    gone = placeable(Resources(cpus=1, custom={"node_a": 1}), [GPU])  # its node left
    assert gone == "no node of the Ray cluster has 1 node_a for a worker (the most any node has: 0)"
    both = placeable(Resources(cpus=1, gpus=1, custom={"node_a": 1}), [HEAD, GPU])
    assert both is not None and "all of" in both
    assert placeable(Resources(cpus=1), []) is not None  # no node at all
    assert HEAD.head and not GPU.head


def test_a_node_counts_as_gone_only_after_a_lease_away() -> None:
    need = Resources(cpus=1, custom={"node_a": 1})
    assert gone_for(need, [(HEAD, 3.0), (GPU, 0.0)], 60.0, 15.0) is None  # just left: may be back
    reason = gone_for(need, [(HEAD, 16.0), (GPU, 0.0)], 60.0, 15.0)
    assert reason is not None and reason.endswith("has: 0), none for 15 s")
    assert gone_for(need, [(GPU, 0.0)], 59.0, 15.0) is None  # nodes may still be rejoining
