"""One real two-node Ray cluster for tests/ray (tests/helpers_ray.py), and one Nimbus server
using it (each takes seconds to start on 2 cores; both stop when tests/ray ends)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

pytest.importorskip("ray")

from nimbus.client import Client
from tests.e2e.conftest import FAST, client_for, upload_digits
from tests.helpers import ServerProcess, passable_dir, sandbox_runs_here
from tests.helpers_ray import RayTestCluster


@pytest.fixture(scope="session")
def ray_sandboxed() -> bool:
    """Whether the nodes sandbox attempts (the default: where the sandbox can run, as root
    with bubblewrap); elsewhere the tests run them unsandboxed (NIMBUS_JOB_ISOLATION=none)."""
    return sandbox_runs_here()


@pytest.fixture(scope="package")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, ray_sandboxed: bool
) -> Iterator[RayTestCluster]:
    cluster = RayTestCluster(tmp_path_factory.mktemp("ray"))
    with contextlib.ExitStack() as stack:
        if ray_sandboxed:  # pytest's tmp dirs are 0700: out of the job uids' reach
            cluster.jobs_dir = stack.enter_context(passable_dir()) / "jobs"
        cluster.start()
        yield cluster
        cluster.stop()


@pytest.fixture
def ray_cluster_whole(ray_cluster: RayTestCluster) -> RayTestCluster:
    """The cluster with both its nodes up (a fault test may have killed ``node_b``)."""
    ray_cluster.ensure_node_b()
    return ray_cluster


@pytest.fixture(scope="package")
def ray_server(
    ray_cluster: RayTestCluster, tmp_path_factory: pytest.TempPathFactory, ray_sandboxed: bool
) -> Iterator[ServerProcess]:
    isolation = "sandbox" if ray_sandboxed else "none"
    with contextlib.ExitStack() as stack:
        # The control plane resolves job requirements in its sandbox, as a job uid, below
        # its NIMBUS_HOME: a pytest tmp dir (0700) would be out of that uid's reach.
        base = stack.enter_context(passable_dir()) if ray_sandboxed else None
        server = ServerProcess(
            (base or tmp_path_factory.mktemp("ray-server")) / "home",
            env={**FAST, **ray_cluster.server_env(), "NIMBUS_JOB_ISOLATION": isolation},
        ).start()
        yield server
        server.stop()


@pytest.fixture(scope="package")
def ray_api(ray_server: ServerProcess) -> Iterator[Client]:
    with client_for(ray_server) as client:
        yield client


@pytest.fixture(scope="package")
def ray_digits(ray_api: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_digits(ray_api, tmp_path_factory.mktemp("digits"))
