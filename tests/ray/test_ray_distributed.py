"""Several workers of one job on the Ray executor: a placement group over the two nodes,
torch.distributed (gloo) between them, the same model as one worker trains."""

from __future__ import annotations

import re

from nimbus.client import Client
from tests.e2e.conftest import QUICK_CNN, logs_text
from tests.helpers_ray import RayTestCluster


def _nodes(text: str) -> dict[int, str]:
    return {
        int(rank): node
        for rank, node in re.findall(r"\[nimbus\] worker (\d+) on Ray node (\w+)", text)
    }


def test_two_workers_spread_over_two_nodes_train_the_one_worker_model(
    ray_api: Client, ray_digits: str, ray_cluster_whole: RayTestCluster
) -> None:
    one = ray_api.submit_job(ray_digits, "cnn", params=QUICK_CNN, seed=11)
    two = ray_api.submit_job(ray_digits, "cnn", params=QUICK_CNN, seed=11, workers=2, spread=True)
    one, two = ray_api.wait_job(one.id, timeout=240), ray_api.wait_job(two.id, timeout=240)
    text = logs_text(ray_api, two.id)
    assert one.state == "succeeded", logs_text(ray_api, one.id)
    assert two.state == "succeeded", text
    assert two.resources.workers == 2 and two.resources.spread
    expected = {ray_cluster_whole.nodes[name].node_id() for name in ("node_a", "node_b")}
    assert set(_nodes(text)) == {0, 1} and set(_nodes(text).values()) == expected, text
    placed = {(w.attempt, w.rank): w.node for w in two.workers}  # what jobs show reports
    assert placed == {(1, rank): node for rank, node in _nodes(text).items()}
    assert [(w.attempt, w.rank) for w in one.workers] == [(1, 0)]

    single, double = ray_api.job_metrics(one.id), ray_api.job_metrics(two.id)
    assert single.keys() == double.keys()
    for name, points in single.items():
        got = [p.value for p in double[name]]
        want = [p.value for p in points]
        assert len(got) == len(want), name
        for a, b in zip(got, want, strict=True):
            assert a is not None and b is not None and abs(a - b) <= 1e-5, (name, got, want)
    assert one.evaluation and two.evaluation
    for key, value in one.evaluation.items():
        if isinstance(value, float):
            assert abs(two.evaluation[key] - value) <= 1e-5, key
