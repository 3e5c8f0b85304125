"""One real two-node Ray cluster for the whole session (tests/helpers_ray.py), and one
Nimbus server using it, also for the session (each takes seconds to start on 2 cores)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("ray")

from nimbus.client import Client
from tests.e2e.conftest import FAST, client_for, upload_digits
from tests.helpers import ServerProcess
from tests.helpers_ray import RayTestCluster


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayTestCluster]:
    cluster = RayTestCluster(tmp_path_factory.mktemp("ray")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def ray_cluster_whole(ray_cluster: RayTestCluster) -> RayTestCluster:
    """The cluster with both its nodes up (a fault test may have killed ``node_b``)."""
    ray_cluster.ensure_node_b()
    return ray_cluster


@pytest.fixture(scope="package")
def ray_server(
    ray_cluster: RayTestCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("ray-server") / "home", env={**FAST, **ray_cluster.server_env()}
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
