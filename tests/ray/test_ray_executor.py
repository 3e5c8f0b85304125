"""Jobs on the Ray executor, on a real two-node cluster: end to end, placement by custom
resource, refusals at submit."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimbus.client import Client
from tests.e2e.conftest import QUICK_CNN, client_for, logs_text, start_server, upload_digits
from tests.helpers import ServerProcess
from tests.helpers_ray import RayTestCluster, submit_once_placeable


def test_a_job_runs_on_ray_end_to_end_with_the_local_executors_answer(
    ray_api: Client, ray_digits: str, tmp_path: Path
) -> None:
    """Same answer everywhere: the seeded job trains the same model on a server with the
    local executor (one process on this machine) as on Ray."""
    job = ray_api.submit_job(ray_digits, "cnn", params=QUICK_CNN, seed=3)
    local = start_server(tmp_path / "home", NIMBUS_EXECUTOR="local")
    try:
        with client_for(local) as api:
            here = api.submit_job(upload_digits(api, tmp_path), "cnn", params=QUICK_CNN, seed=3)
            here = api.wait_job(here.id, timeout=180)
            assert here.state == "succeeded", logs_text(api, here.id)
            local_metrics = api.job_metrics(here.id)
    finally:
        local.stop()
    job = ray_api.wait_job(job.id, timeout=180)
    assert job.state == "succeeded", logs_text(ray_api, job.id)
    assert job.evaluation and job.evaluation["accuracy"] > 0.5
    assert "[nimbus] worker 0 on Ray node" in logs_text(ray_api, job.id)

    ray_metrics = ray_api.job_metrics(job.id)
    assert ray_metrics["train_loss"] and ray_metrics.keys() == local_metrics.keys()
    for name, points in local_metrics.items():
        want = [(p.step, p.value) for p in points]
        got = [(p.step, p.value) for p in ray_metrics[name]]
        assert len(got) == len(want), name
        for (step, a), (wanted_step, b) in zip(got, want, strict=True):
            assert step == wanted_step and a is not None and b is not None, (name, got, want)
            assert abs(a - b) <= 1e-6, (name, got, want)
    assert here.evaluation is not None and here.evaluation.keys() == job.evaluation.keys()
    for key, value in here.evaluation.items():
        if isinstance(value, float):
            assert abs(job.evaluation[key] - value) <= 1e-6, key
        else:
            assert job.evaluation[key] == value, key


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
