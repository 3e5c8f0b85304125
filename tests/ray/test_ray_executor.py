"""Jobs on the Ray executor, on a real two-node cluster: end to end, placement by custom
resource, refusals at submit."""

from __future__ import annotations

import pytest

from nimbus.client import Client
from tests.e2e.conftest import QUICK_CNN, logs_text
from tests.helpers import ServerProcess
from tests.helpers_ray import RayTestCluster, submit_once_placeable


def test_a_job_runs_on_ray_end_to_end(ray_api: Client, ray_digits: str) -> None:
    job = ray_api.submit_job(ray_digits, "cnn", params=QUICK_CNN, seed=3)
    job = ray_api.wait_job(job.id, timeout=180)
    assert job.state == "succeeded", logs_text(ray_api, job.id)
    assert job.evaluation and job.evaluation["accuracy"] > 0.5
    assert ray_api.job_metrics(job.id)["train_loss"]
    assert "[nimbus] worker 0 on Ray node" in logs_text(ray_api, job.id)


@pytest.mark.parametrize("node", ["node_a", "node_b"])
def test_a_custom_resource_places_the_job_on_its_node(
    ray_api: Client, ray_digits: str, ray_cluster_whole: RayTestCluster, node: str
) -> None:
    job = submit_once_placeable(
        ray_api, ray_digits, "cnn", params={"epochs": "1", "batch_size": "64"}, resources={node: 1}
    )
    assert job.resources.custom == {node: 1.0}
    job = ray_api.wait_job(job.id, timeout=120)
    text = logs_text(ray_api, job.id)
    assert job.state == "succeeded", text
    assert f"on Ray node {ray_cluster_whole.nodes[node].node_id()}" in text


@pytest.mark.parametrize(
    ("asked", "resource"),
    [
        ({"resources": {"node_c": 1}}, "node_c"),
        ({"resources": {"node_a": 2}}, "node_a"),
        ({"cpus": 3}, "cpus"),
        ({"gpus": 1}, "gpus"),
        ({"workers": 3, "spread": True}, "workers"),
        ({"workers": 5, "cpus": 1}, "workers"),
    ],
)
def test_a_job_no_node_could_run_is_refused_at_submit(
    ray_server: ServerProcess, ray_digits: str, asked: dict[str, object], resource: str
) -> None:
    body = {"dataset": ray_digits, "model": "cnn", **asked}
    reply = ray_server.client().post("/api/v1/jobs", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["details"]["resource"] == resource, error
    assert resource in error["message"]
