"""Job environments (``--requirements``, issue 15) on the Ray executor, on the real
two-node cluster: the control plane resolves the requirements once into the job's lock;
the agent of each node a worker runs on builds that lock with uv (never resolving), as a
job uid (sandboxed), into the node's own cache; a job of several workers starts its
workers once every one of their nodes has it; a later job on a node reuses it; a resolve
that fails ends the job ``environment_build_failed``, not retried.

``tomli==2.0.1``: tiny, pure Python, and not one of the platform's packages (``six`` is:
the platform's version would be the one imported, or a pin of another one would conflict).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from nimbus.client import Client
from tests.e2e.conftest import logs_text, script
from tests.helpers_ray import RayTestCluster, submit_once_placeable

TOMLI = """
import os, tomli
print("tomli", tomli.__file__, flush=True)
print("job-env", os.environ.get("NIMBUS_JOB_ENV"), flush=True)
"""
PINNED = ["tomli==2.0.1"]


def test_requirements_reach_every_ray_worker_built_once_per_node(
    ray_api: Client,
    ray_digits: str,
    ray_cluster_whole: RayTestCluster,
    ray_sandboxed: bool,
    tmp_path: Path,
) -> None:
    if os.geteuid() == 0 and not ray_sandboxed:
        pytest.skip("environments are never built as root, and the sandbox needs bwrap")
    cluster = ray_cluster_whole
    code = str(script(tmp_path, "tomli_job", TOMLI))
    envs = {
        name: cluster.jobs_dir / f".envs-{node.node_id()[:16]}"
        for name, node in cluster.nodes.items()
    }
    # Two workers, one per node: both nodes build it before either worker starts.
    two = submit_once_placeable(
        ray_api, ray_digits, code, workers=2, spread=True, requirements=PINNED
    )
    two = ray_api.wait_job(two.id, timeout=240)
    text = logs_text(ray_api, two.id)
    assert two.state == "succeeded", (two.exit_reason, text)
    first_worker = text.index("[nimbus] worker ")
    # Resolved once, by the control plane (no rank: before any node), recorded with the
    # job; each node installs that lock and resolves nothing.
    assert text.count("nimbus: environment: resolving as uid") == 1, text
    assert text.index("nimbus: environment: locked to tomli==2.0.1") < text.index("[0] "), text
    assert two.environment is not None and two.environment.lock == ["tomli==2.0.1"]
    for rank in (0, 1):
        assert f"[{rank}] [nimbus] environment of worker {rank} on Ray node" in text, text
        installed = text.index(f"[{rank}] nimbus: environment: installing the lock tomli==2.0.1")
        assert installed < first_worker, text
        built = re.search(rf"\[{rank}\] nimbus: environment (\w+) built in", text)
        assert built is not None and built.start() < first_worker, text
    if ray_sandboxed:  # built by a job uid, never the Ray node's root
        for uid in re.findall(r"building as uid (\d+)", text):
            assert 2_000_000_000 <= int(uid) < 2_000_000_000 + 65_536, text
    imported = set(re.findall(r"\[\d\] tomli (\S+)", text))
    assert len(imported) == 2, text  # each worker its own node's copy
    assert {str(Path(path).parents[2]) for path in imported} == {str(p) for p in envs.values()}
    for root in envs.values():  # the node's (its agent's user), read-only to jobs
        (built_env,) = [p for p in root.iterdir() if not p.name.startswith(".")]
        assert built_env.stat().st_uid == os.geteuid()
        assert built_env.stat().st_mode & 0o777 == 0o755

    # A later job on node_a reuses that node's environment, and no job's build is retried.
    again = ray_api.submit_job(ray_digits, code, resources={"node_a": 1}, requirements=PINNED)
    broken = ray_api.submit_job(
        ray_digits, code, resources={"node_a": 1}, requirements=["nonexistent-pkg-xyz==1"]
    )
    again = ray_api.wait_job(again.id, timeout=120)
    said = logs_text(ray_api, again.id)
    assert again.state == "succeeded", said
    # Resolved by the control plane within its TTL: no resolve, and the node's build.
    assert "found: reused, not rebuilt" in said and "resolving" not in said, said
    assert "tomli==2.0.1 resolved here" in said, said
    assert f"tomli {envs['node_a']}/" in said, said
    broken = ray_api.wait_job(broken.id, timeout=120)
    assert broken.state == "failed", logs_text(ray_api, broken.id)
    assert broken.exit_reason is not None
    assert broken.exit_reason.startswith("environment_build_failed: the resolve failed")
    assert "nonexistent-pkg-xyz" in broken.exit_reason and broken.attempts == 1
    assert "nonexistent-pkg-xyz was not found" in logs_text(ray_api, broken.id)  # uv's words
