"""What happens to a deployment's replicas when their control plane stops, with real server
and replica processes: Ctrl+C on a server in a terminal stops them (and the next start starts
them again), ``keep_deployments`` leaves them for the next start to adopt, and a replica whose
home is deleted and whose server is gone exits on its own."""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nimbus.serving.fleet.sockets import port_in_use
from tests.api.conftest import API, make_token
from tests.api.test_deployments import deploy, infer, ready, register, wait_for
from tests.helpers import ServerProcess
from tests.helpers_models import API_ONLY, image_model_dir, images
from tests.serving.helpers import alive

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def terminal() -> Iterator[int]:
    """A pseudo-terminal: a server whose stdin is its slave end runs "in a terminal"."""
    master, slave = pty.openpty()
    try:
        yield slave
    finally:
        os.close(slave)
        os.close(master)


def interrupt(server: ServerProcess, timeout: float = 30.0) -> None:
    """Ctrl+C: SIGINT to the server's process group, as a terminal sends it; wait for the end."""
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGINT)
    server.proc.wait(timeout)
    server.proc = None
    for client in server.clients:
        client.close()
    server.clients.clear()


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def start_deployed(
    home: Path, models: Path, stdin: int | None = None, **env: str
) -> tuple[ServerProcess, str, dict[str, Any]]:
    """A server (stdin: a terminal, when given) with one ready deployment ``web``."""
    server = ServerProcess(home, env={**API_ONLY, **env})
    if stdin is not None:
        server.stdin = stdin
    server.start()
    token = make_token(server, "member")
    with server.client(token) as client:
        register(server, client, "default", image_model_dir(models, 1))
        deploy(client, "web")
        shown = wait_for(client, "web", ready(1))
    return server, token, shown


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_in_a_terminal_stops_the_replicas_and_the_next_start_starts_them(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    pids: list[int] = []
    with terminal() as tty:
        server, token, first = start_deployed(home, tmp_path / "m", stdin=tty)
        try:
            pids = [r["pid"] for r in first["replicas"]]
            endpoint = str(first["endpoint"])
            assert all(alive(pid) for pid in pids)
            interrupt(server)
            assert not any(alive(pid) for pid in pids)
            assert not port_in_use("127.0.0.1", port_of(endpoint))
            assert "stops the deployments' replicas too" in server.log()
        finally:
            server.kill()
            kill_all(pids)

    server = ServerProcess(home, env=API_ONLY, port=server.port).start()  # not a terminal
    try:
        with server.client(token) as client:
            again = wait_for(client, "web", ready(1))
            assert again["endpoint"] == endpoint  # the deployment stayed, on its port
            assert not {r["pid"] for r in again["replicas"]} & set(pids)
            assert infer(endpoint, "web", token, images(2)).status_code == 200
            assert client.delete(f"{API}/deployments/web").status_code == 200
    finally:
        server.stop()


def test_keep_deployments_leaves_them_serving_for_the_next_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pids: list[int] = []
    with terminal() as tty:
        server, token, first = start_deployed(
            home, tmp_path / "m", stdin=tty, NIMBUS_KEEP_DEPLOYMENTS="true"
        )
        try:
            pids = [r["pid"] for r in first["replicas"]]
            endpoint = str(first["endpoint"])
            interrupt(server)
            assert all(alive(pid) for pid in pids)
            assert infer(endpoint, "web", token, images(2)).status_code == 200
        finally:
            server.kill()
    server = ServerProcess(home, env=API_ONLY, port=server.port).start()
    try:
        with server.client(token) as client:
            adopted = wait_for(client, "web", ready(1))
            assert [r["pid"] for r in adopted["replicas"]] == pids
            assert client.delete(f"{API}/deployments/web").status_code == 200
        assert not any(alive(pid) for pid in pids)
    finally:
        server.stop()
        kill_all(pids)


def test_a_replica_whose_home_and_server_are_gone_exits(tmp_path: Path) -> None:
    grace = 1.5
    home = tmp_path / "home"
    server, token, first = start_deployed(
        home, tmp_path / "m", NIMBUS_REPLICA_ORPHAN_SECONDS=str(grace)
    )
    pids = [r["pid"] for r in first["replicas"]]
    endpoint = str(first["endpoint"])
    try:
        server.stop()  # not a terminal: the replicas are kept for the next start
        time.sleep(3 * grace)  # a server down for longer than the grace: its home is there
        assert all(alive(pid) for pid in pids)
        assert infer(endpoint, "web", token, images(2)).status_code == 200

        shutil.rmtree(home)
        deadline = time.monotonic() + grace + 15
        while any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "the orphaned replicas still run"
            time.sleep(0.1)
        assert not port_in_use("127.0.0.1", port_of(endpoint))
    finally:
        server.kill()
        kill_all(pids)
