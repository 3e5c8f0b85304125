"""GPU checks: a job that asks for GPUs trains on them, on the local executor and on a Ray
cluster (where it lands on a node that has them), a job that asks for none gets none, and
two workers with a GPU each train over nccl.

They need NVIDIA GPUs and are skipped elsewhere (CI has none); run them where there are:
``python -m pytest -p no:cacheprovider tests/gpu`` (tests/gpu/device.sh does it on a machine
whose Python lacks Nimbus's packages). nccl with two workers needs two GPUs: on a machine
with one, those tests are skipped and say so.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from nimbus.client import Client
from nimbus.errors import InvalidInput
from nimbus.jobs.gpus import machine_gpus
from tests.e2e.conftest import FAST, QUICK_CNN, client_for, logs_text, upload_digits
from tests.helpers import ServerProcess, passable_dir, sandbox_runs_here
from tests.helpers_ray import RayTestCluster

GPUS = len(machine_gpus())
pytestmark = [pytest.mark.slow, pytest.mark.skipif(GPUS == 0, reason="needs an NVIDIA GPU")]
two_gpus = pytest.mark.skipif(GPUS < 2, reason=f"nccl with 2 workers needs 2 GPUs; {GPUS} here")
# In the job sandbox where it can run (root, bubblewrap), as CI runs the other tests: the
# sandbox must hand an attempt with GPUs their device nodes.
SANDBOXED = sandbox_runs_here()
ON_GPU = re.compile(r"nimbus: worker (\d): cuda:0 \((.+?)\)(, torch.distributed (\w+))?$", re.M)


def trained_on(
    api: Client, job_id: str, server: ServerProcess, timeout: float = 300
) -> tuple[str, str]:
    """The job's log once it succeeded, and what its workers trained on (else the job's
    end, its log and the server's)."""
    job = api.wait_job(job_id, timeout=timeout)
    text = logs_text(api, job_id)
    server_log = "\n".join(server.log().splitlines()[-80:])
    assert job.state == "succeeded", f"{job.exit_reason}\n{text}\nserver:\n{server_log}"
    assert job.evaluation and job.evaluation["accuracy"] > 0.5, job.evaluation
    devices = re.findall(r"nimbus: worker \d: ([^\n]+)", text)
    return text, "; ".join(devices)


def home(stack: contextlib.ExitStack, tmp: pytest.TempPathFactory, name: str) -> Path:
    """A server's home: one the job uids reach when sandboxed (pytest's tmp dirs are 0700)."""
    return (stack.enter_context(passable_dir()) if SANDBOXED else tmp.mktemp(name)) / "home"


ISOLATION = {"NIMBUS_JOB_ISOLATION": "sandbox" if SANDBOXED else "none"}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Client, str]]:
    """A server with the local executor on this machine, and the digits on it."""
    with contextlib.ExitStack() as stack:
        where = home(stack, tmp_path_factory, "gpu")
        env = {**FAST, "NIMBUS_CAPACITY_CPUS": "4", **ISOLATION}
        server = ServerProcess(where, env=env).start()
        stack.callback(server.stop)
        with client_for(server) as api:
            yield server, api, upload_digits(api, tmp_path_factory.mktemp("digits"))


def test_a_job_asking_for_a_gpu_trains_on_it(local: tuple[ServerProcess, Client, str]) -> None:
    server, api, digits = local
    # The CPU job first: it tells a sandbox that runs no job from one that keeps GPUs out.
    cpu = api.submit_job(digits, "cnn", params=QUICK_CNN)
    assert trained_on(api, cpu.id, server)[1] == "cpu"
    job = api.submit_job(digits, "cnn", params=QUICK_CNN, gpus=1, seed=3)
    text, devices = trained_on(api, job.id, server)
    assert ON_GPU.search(text), devices


def test_more_gpus_than_the_machine_has_are_refused_at_submit(
    local: tuple[ServerProcess, Client, str],
) -> None:
    server, _, digits = local
    body = {"dataset": digits, "model": "cnn", "gpus": GPUS + 1}
    reply = server.client().post("/api/v1/jobs", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["details"]["resource"] == "gpus"


@two_gpus
def test_two_workers_train_over_nccl_a_gpu_each(local: tuple[ServerProcess, Client, str]) -> None:
    server, api, digits = local
    job = api.submit_job(digits, "cnn", params=QUICK_CNN, gpus=1, workers=2, seed=3)
    text, devices = trained_on(api, job.id, server)
    found = ON_GPU.findall(text)
    assert sorted(rank for rank, *_ in found) == ["0", "1"], devices
    assert {backend for *_, backend in found} == {"nccl"}, devices


class RaySetup(NamedTuple):
    cluster: RayTestCluster
    server: ServerProcess
    api: Client
    digits: str


@pytest.fixture(scope="module")
def ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaySetup]:
    """A two-node Ray cluster where only the head (``node_a``) has the GPUs, a server using
    it, and the digits."""
    cluster = RayTestCluster(tmp_path_factory.mktemp("ray"), gpus={"node_a": GPUS})
    with contextlib.ExitStack() as stack:
        if SANDBOXED:
            cluster.jobs_dir = stack.enter_context(passable_dir()) / "jobs"
        cluster.start()
        stack.callback(cluster.stop)
        env = {**FAST, **cluster.server_env(), **ISOLATION}
        server = ServerProcess(home(stack, tmp_path_factory, "ray-server"), env=env).start()
        stack.callback(server.stop)
        with client_for(server) as api:
            yield RaySetup(
                cluster, server, api, upload_digits(api, tmp_path_factory.mktemp("digits"))
            )


def test_a_gpu_job_lands_on_the_gpu_node_of_the_ray_cluster(
    ray: RaySetup,
) -> None:
    head = ray.cluster.nodes["node_a"].node_id()
    # A job that asks for no GPU gets none, on the GPU node too.
    cpu = ray.api.submit_job(ray.digits, "cnn", params=QUICK_CNN, resources={"node_a": 1})
    text, devices = trained_on(ray.api, cpu.id, ray.server)
    assert f"on Ray node {head}" in text and devices == "cpu", devices
    gpu = ray.api.submit_job(ray.digits, "cnn", params=QUICK_CNN, gpus=1)
    text, devices = trained_on(ray.api, gpu.id, ray.server)
    assert f"on Ray node {head}" in text and ON_GPU.search(text), devices


@two_gpus
def test_two_ray_workers_train_over_nccl_a_gpu_each(
    ray: RaySetup,
) -> None:
    job = ray.api.submit_job(ray.digits, "cnn", params=QUICK_CNN, gpus=1, workers=2, seed=3)
    text, devices = trained_on(ray.api, job.id, ray.server)
    found = ON_GPU.findall(text)
    assert sorted(rank for rank, *_ in found) == ["0", "1"], devices
    assert {backend for *_, backend in found} == {"nccl"}, devices


def test_the_ray_cluster_refuses_more_gpus_than_a_node_has(
    ray: RaySetup,
) -> None:
    with pytest.raises(InvalidInput, match="gpus"):
        ray.api.submit_job(ray.digits, "cnn", gpus=GPUS + 1)
