"""A sandboxed job's network, for real: a root server runs every attempt in a network
namespace of its own, and the job reaches the control plane's job API only through a unix
socket bound into its sandbox. A hostile script tries the control plane's whole API on its
TCP port, another service on the host's loopback and the host's non-loopback address; all
fail, while its own reporting (logs, metrics, checkpoints) arrives, and the workers of a
data-parallel job still find each other. Fails on the code before (jobs then shared the
host's network)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import API
from tests.api.test_jobs_isolation import FAST, Tenant, line, wait
from tests.helpers import ServerProcess, passable_dir

PROBE = b"""\
import json, socket
from nimbus import runtime as nr
def reach(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=3) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\\r\\n\\r\\n")
            return "reached: " + conn.recv(64).decode(errors="replace")
    except OSError as exc:
        return type(exc).__name__
found = {name: reach(*target.split(":")) for name, target in nr.params.items()}
print("reach " + json.dumps(found), flush=True)
nr.log(1, probe=1.5)
nr.checkpoint({"step": 1}, step=1)
print("reported", flush=True)
"""


def outward_address() -> str | None:
    """This machine's non-loopback address (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A TCP server on every address of the host that answers anyone who connects."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello from the host\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        done.set()
        thread.join()
        server.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with passable_dir() as base:
        env = {**FAST, "NIMBUS_CAPACITY_CPUS": "4"}
        with ServerProcess(base / "home", env=env) as running:
            health = running.client().get("/healthz").json()
            if not health["job_isolation"]["runs_jobs"]:
                pytest.fail(f"the sandbox cannot engage here: {health}")
            yield running


def test_a_job_reaches_nothing_on_the_network_but_reports_through_its_socket(
    server: ServerProcess,
) -> None:
    tenant = Tenant(server, "netprobe")
    with listening() as port:
        targets = {
            "control_plane": f"127.0.0.1:{server.port}",
            "host_loopback": f"127.0.0.1:{port}",
        }
        if (outward := outward_address()) is not None:
            targets["host_address"] = f"{outward}:{port}"
        # The same probe outside the sandbox reaches them all: the targets are real.
        for target in targets.values():
            host, number = target.split(":")
            with socket.create_connection((host, int(number)), timeout=3):
                pass
        job = tenant.run(PROBE, params=targets)
    logs = tenant.logs(job["id"])
    assert job["state"] == "succeeded", logs
    reached = json.loads(line(logs, "reach "))
    assert set(reached) == set(targets)
    assert not any(result.startswith("reached") for result in reached.values()), reached
    assert "reported" in logs
    metrics = tenant.client.get(f"{API}/jobs/{job['id']}/metrics").json()["metrics"]
    assert [point["value"] for point in metrics["probe"]] == [1.5]
    health = server.client().get("/healthz").json()["job_isolation"]
    assert health["network"] == "isolated" and "unix socket" in health["detail"], health


@pytest.mark.slow
def test_the_workers_of_a_data_parallel_job_still_train_together(server: ServerProcess) -> None:
    tenant = Tenant(server, "parallel")
    body = {"dataset": "reviews", "model": "text", "params": {"epochs": "2"}, "workers": 2}
    job_id = tenant.client.post(f"{API}/jobs", json=body).json()["id"]
    job = wait(tenant.client, job_id, server)
    logs = tenant.logs(job_id)
    assert job["state"] == "succeeded", logs
    assert "[1] " in logs  # the second worker ran beside the first
    assert {a["name"] for a in job["artifacts"]} >= {"spec.json", "weights.safetensors"}
    assert tenant.client.get(f"{API}/jobs/{job_id}/metrics").json()["metrics"]


def test_the_job_api_socket_serves_only_the_job_api(server: ServerProcess) -> None:
    socket_path = server.home / "run" / "job-api.sock"
    assert socket_path.is_socket()
    assert Path(socket_path).stat().st_mode & 0o777 == 0o666
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://nimbus"
    ) as client:
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        assert client.get(f"{API}/tokens", headers=admin).status_code == 404
        assert client.get("/healthz").status_code == 404
        # The job API answers (401: no job holds this token).
        assert client.get(f"{API}/job-api/att_x/spec", headers=admin).status_code == 401
