"""The sandbox a Ray node makes for its attempts (nimbus.jobs.executors.ray_sandbox), its
job API relay and its uid locks, here without Ray: the node side is plain processes. The
attacks on the real cluster are in tests/ray/test_ray_sandbox.py."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from nimbus.jobs.environments import EnvironmentLimits
from nimbus.jobs.executors.base import Program
from nimbus.jobs.executors.job_api_relay import (
    JobApiRelay,
    is_job_api,
    sandbox_url,
    socket_name,
    upstream_of,
)
from nimbus.jobs.executors.ray_remote import AgentConfig, WorkerOrder, agent_name, node_launch
from nimbus.jobs.executors.ray_sandbox import (
    LockedUidPool,
    NodeSandboxConfig,
    NodeSandboxes,
    SandboxRefused,
)
from nimbus.jobs.sandbox import JOB_API_DIR
from tests.helpers import passable_dir
from tests.jobs.conftest import Run

MiB = 2**20
CONFIG = NodeSandboxConfig(
    uid_first=2_000_100_000,
    uid_count=100,
    disk_limit_bytes=64 * MiB,
    pids_per_worker=64,
    keep_failed_seconds=3600,
    warm=0,  # cold: the warm start is tests/jobs/test_warm.py's
)


class _Pong(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections alive, as the control plane does

    def do_GET(self) -> None:
        if "Transfer-Encoding" in self.headers or "Content-Length" in self.headers:
            self._answer(400, "a GET with a body: its bytes would be left on the connection")
        else:
            self._answer(200, f"pong {self.path}")

    def do_POST(self) -> None:
        got = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(201, f"got {len(got)} with {self.headers['Authorization']}")

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def control_plane() -> Iterator[tuple[str, int]]:
    """A stand-in for the control plane's TCP port: (its URL, its port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pong)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_relay_urls_and_paths() -> None:
    assert upstream_of("http://cp.example:8600/") == "http://cp.example:8600"
    assert upstream_of("https://cp.example") == "https://cp.example"
    assert socket_name("http://a:1") != socket_name("http://a:2")
    assert socket_name("http://a:1/") == socket_name("http://a:1")
    assert sandbox_url("http://a:1") == f"unix:{JOB_API_DIR}/{socket_name('http://a:1')}"
    for bad in ("unix:/run/x.sock", "ftp://a:1", "http://"):
        with pytest.raises(ValueError, match="http"):
            upstream_of(bad)
    assert is_job_api("/api/v1/job-api/att_1/metrics")
    for other in ("/api/v1/jobs", "/api/v1/job-api/../datasets", "/api/v1/job-api/a/./b", "/"):
        assert not is_job_api(other), other


def test_the_relay_passes_the_job_api_on_and_nothing_else(tmp_path: Path) -> None:
    relay = JobApiRelay(tmp_path)
    try:
        with control_plane() as (url, _):
            inside = relay.socket_for(url)
            assert relay.socket_for(url) == inside  # one socket per control plane
            path = tmp_path / inside.rsplit("/", 1)[1]
            with httpx.Client(
                base_url="http://nimbus", transport=httpx.HTTPTransport(uds=str(path))
            ) as client:
                for n in range(3):  # one kept-alive connection, several requests
                    got = client.get(f"/api/v1/job-api/a%20b/{n}", params={"x": 1}).text
                    assert got == f"pong /api/v1/job-api/a%20b/{n}?x=1"
                sent = client.post(
                    "/api/v1/job-api/a/checkpoint",
                    content=b"x" * 3_000_000,
                    headers={"Authorization": "Bearer njt_1"},
                )
                assert (sent.status_code, sent.text) == (201, "got 3000000 with Bearer njt_1")
                for other in (
                    "/api/v1/jobs",
                    "/api/v1/job-api/../datasets",
                    "/api/v1/job-api/%2e%2e/x",
                ):
                    refused = client.get(other, headers={"Authorization": "Bearer admin"})
                    assert refused.status_code == 404, other
                    assert "only the job API" in refused.json()["error"]["message"]
    finally:
        relay.close()
    assert list(tmp_path.iterdir()) == []  # its sockets removed


def test_locked_uids_are_never_given_out_twice_on_one_machine(tmp_path: Path) -> None:
    one, two = LockedUidPool(10, 2, tmp_path), LockedUidPool(10, 2, tmp_path)
    first = one.acquire()
    second = two.acquire()  # the other pool's first choice is locked: it takes the next
    assert {first, second} == {10, 11}
    with pytest.raises(RuntimeError, match="in use"):
        two.acquire()
    one.release(first)
    assert two.acquire() == first


def test_a_worker_of_several_has_a_cgroup_and_work_dir_of_its_own() -> None:
    order = WorkerOrder(
        job_id="j1",
        attempt_id="a1",
        attempt_number=1,
        token="t",
        program=Program(code="pass"),
        workdir="/jobs/j1/a1",
        nimbus_url="http://cp:8600",
        cpus=1,
        gpus=1,
        memory_bytes=0,
        rank=1,
        env={"RANK": "1"},
        world=2,
        requirements=("tomli==2.0.1",),
    )
    launch = node_launch(order, "3", None, nimbus_url="unix:/run/nimbus/x.sock", own_dirs=True)
    assert (launch.attempt_id, str(launch.workdir)) == ("a1.1", "/jobs/j1/a1.1")
    assert launch.requirements == ("tomli==2.0.1",)  # built on the node before it starts
    assert launch.extra_env == {"RANK": "1", "CUDA_VISIBLE_DEVICES": "3", "NIMBUS_ATTEMPT_ID": "a1"}
    assert launch.nimbus_url == "unix:/run/nimbus/x.sock"
    alone = node_launch(dataclasses.replace(order, world=1), None, None, own_dirs=True)
    assert (alone.attempt_id, str(alone.workdir), alone.nimbus_url) == (
        "a1",
        "/jobs/j1/a1",
        "http://cp:8600",
    )


def test_control_planes_with_other_settings_never_share_a_nodes_agent() -> None:
    sandboxed = AgentConfig("/jobs", ("torch",), 10.0, sandbox=CONFIG)
    assert sandboxed.key == AgentConfig("/jobs", ("torch",), 10.0, sandbox=CONFIG).key
    others = [
        dataclasses.replace(sandboxed, sandbox=None),
        dataclasses.replace(sandboxed, sandbox=dataclasses.replace(CONFIG, uid_first=5000)),
        dataclasses.replace(sandboxed, jobs_root="/elsewhere"),
        dataclasses.replace(sandboxed, environments=EnvironmentLimits(max_bytes=2**30)),
    ]
    assert len({sandboxed.key, *(c.key for c in others)}) == 5
    assert agent_name(sandboxed.key, "n1") != agent_name(others[0].key, "n1")


PROBE = """
import json, os, socket, httpx
path = os.environ["NIMBUS_URL"][len("unix:"):]
with httpx.Client(transport=httpx.HTTPTransport(uds=path)) as client:
    relayed = client.get("http://nimbus/api/v1/job-api/probe").text
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
    direct = "connected"
except OSError as exc:
    direct = type(exc).__name__
print(json.dumps({"relayed": relayed, "direct": direct, "uid": os.getuid()}))
"""


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with passable_dir() as path:
        yield path


def test_one_worker_reaches_only_the_job_api_a_worker_of_several_the_network(
    base: Path,
) -> None:
    jobs = base / "jobs"
    nodes = NodeSandboxes.start(
        CONFIG, jobs, "f00d" * 14, hidden=base / "ray", preload=(), grace_seconds=0.5
    )
    try:
        with control_plane() as (url, port):
            env = {"NIMBUS_URL": nodes.relay.socket_for(url)}
            code = PROBE.replace("PORT", str(port))
            alone = Run(nodes.executor_for(1), code, root=jobs, extra_env=env)
            several = Run(nodes.executor_for(2), code, root=jobs, extra_env=env)
            assert alone.wait().ok and several.wait().ok, alone.output + several.output
    finally:
        nodes.close()
    one, peer = json.loads(alone.output), json.loads(several.output)
    assert one["relayed"] == peer["relayed"] == "pong /api/v1/job-api/probe"
    assert one["direct"] == "ConnectionRefusedError"  # its own loopback: nothing listens
    assert peer["direct"] == "connected"  # the node's network: its peers are reachable
    assert CONFIG.uid_first <= one["uid"] < CONFIG.uid_first + CONFIG.uid_count
    assert one["uid"] != peer["uid"]


def test_a_node_whose_jobs_dir_job_uids_cannot_reach_refuses(base: Path, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    with pytest.raises(SandboxRefused, match="cannot reach the jobs directory"):
        NodeSandboxes.start(
            CONFIG, tmp_path / "jobs", "beef" * 14, hidden=base, preload=(), grace_seconds=0.5
        )
