"""Real faults on the Ray cluster: the node running a job loses its raylet (kill -9); the
head is killed, then started anew."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

from nimbus.client import Client
from nimbus.jobs.domain import AttemptState, ExitReason
from tests.e2e.conftest import QUICK_CNN, SLOW_CNN, Store, logs_text, steps_by_attempt, wait_for
from tests.helpers import ServerProcess
from tests.helpers_ray import RayTestCluster, submit_once_placeable


@pytest.fixture
def store(ray_server: ServerProcess) -> Iterator[Store]:
    found = Store(ray_server.home)
    yield found
    found.close()


@pytest.fixture
def movable_nodes(ray_cluster: RayTestCluster) -> Iterator[RayTestCluster]:
    """A node ``node_c`` for the test: with ``node_b``, the nodes with the resource
    ``movable``. Afterwards ``node_c`` is gone, and ``node_b`` may be dead: the tests
    that need it say so (the ``ray_cluster_whole`` fixture) and this module runs last."""
    ray_cluster.start_workers({"node_c": 25000}, movable=True)
    yield ray_cluster
    ray_cluster.nodes.pop("node_c").kill()


def _nodes(text: str) -> list[str]:
    return re.findall(r"\[nimbus\] worker 0 on Ray node (\w+)", text)


def test_a_job_whose_node_dies_resumes_on_another_node(
    ray_api: Client, ray_digits: str, store: Store, movable_nodes: RayTestCluster
) -> None:
    epochs = int(SLOW_CNN["epochs"])
    job_id = ray_api.submit_job(
        ray_digits, "cnn", params=SLOW_CNN, seed=2, resources={"movable": 1}
    ).id
    checkpointed = wait_for("the first checkpoint", lambda: store.checkpoint_step(job_id), 120)
    first_node = _nodes(logs_text(ray_api, job_id))[0]
    victim = next(n for n in movable_nodes.nodes.values() if n.node_id() == first_node)
    os.kill(victim.raylet_pid(), signal.SIGKILL)
    killed_at = time.monotonic()

    wait_for(
        "the attempt lost",
        lambda: store.attempts(job_id)[0].state is AttemptState.LOST,
        30,
    )
    assert time.monotonic() - killed_at <= 30
    job = ray_api.wait_job(job_id, timeout=180)
    text = logs_text(ray_api, job_id)
    assert job.state == "succeeded", text
    first, second = store.attempts(job_id)
    assert (first.state, first.exit_reason) == (AttemptState.LOST, ExitReason.LOST)
    assert second.state is AttemptState.SUCCEEDED
    assert first.ended_at is not None and first.ended_at <= second.started_at  # never two
    nodes = _nodes(text)
    assert nodes[0] == first_node and nodes[-1] != first_node, nodes
    assert [(w.attempt, w.node) for w in job.workers] == [(1, nodes[0]), (2, nodes[-1])]

    steps = steps_by_attempt(ray_api.job_metrics(job_id), "train_loss")
    before, after = steps[1], steps[2]
    resumed_at = min(after)
    assert resumed_at > checkpointed >= 1
    assert max(before) <= resumed_at <= max(before) + 1
    assert after == list(range(resumed_at, epochs + 1))


def test_the_head_killed_and_back_loses_no_job(
    ray_api: Client,
    ray_digits: str,
    store: Store,
    ray_cluster: RayTestCluster,
    ray_server: ServerProcess,
) -> None:
    """kill -9 of every process of the head: the control plane goes on serving (submits
    too), and once a new head is up its attempts end lost and resume from checkpoints."""
    ray_cluster.ensure_node_b()
    epochs = int(SLOW_CNN["epochs"])
    running = submit_once_placeable(
        ray_api, ray_digits, "cnn", params=SLOW_CNN, seed=4, resources={"node_b": 1}
    ).id
    checkpointed = wait_for("the first checkpoint", lambda: store.checkpoint_step(running), 120)
    ray_cluster.nodes["node_a"].kill()
    queued = ray_api.submit_job(ray_digits, "cnn", params=QUICK_CNN, seed=5).id  # head down
    assert ray_server.proc is not None and ray_server.proc.poll() is None

    ray_cluster.nodes["node_b"].kill()
    ray_cluster.start()  # a new head at the same address, and node_b joined to it
    for job_id in (running, queued):
        job = ray_api.wait_job(job_id, timeout=240)
        assert job.state == "succeeded", logs_text(ray_api, job_id)
    assert ray_server.proc.poll() is None

    attempts = store.attempts(running)
    assert attempts[0].state is AttemptState.LOST and attempts[-1].state is AttemptState.SUCCEEDED
    for earlier, later in itertools.pairwise(attempts):
        assert earlier.ended_at is not None and earlier.ended_at <= later.started_at
    steps = steps_by_attempt(ray_api.job_metrics(running), "train_loss")
    last = steps[max(steps)]
    assert min(last) > checkpointed and last[-1] == epochs
