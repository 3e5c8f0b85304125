"""Bootstrap (NIMBUS_HOME, admin token) and the server process's life cycle."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nimbus.config import Settings
from nimbus.jobs.sandbox import NodeSandboxConfig
from nimbus.server import bootstrap, job_isolation, main, ray_node_sandbox
from tests.api.conftest import API, csv_bytes
from tests.helpers import ServerProcess


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bootstrap_writes_the_admin_token_to_its_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(home=tmp_path / "fresh" / "home")
    secret = bootstrap(settings)
    assert secret is not None and secret.startswith("nbt_")
    out = capsys.readouterr().out
    assert secret not in out and str(settings.home / "admin-token") in out
    assert mode(settings.home) == 0o700
    token_file = settings.home / "admin-token"
    assert token_file.read_text().strip() == secret and mode(token_file) == 0o600
    assert bootstrap(settings) is None
    assert "admin token" not in capsys.readouterr().out
    assert token_file.read_text().strip() == secret
    assert [p.name for p in settings.home.iterdir() if p.name.startswith(".admin")] == []


def test_bootstrap_removes_only_stale_temporary_files(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    bootstrap(settings)
    stale, fresh = settings.tmp_dir / "ingest-old", settings.tmp_dir / "upload-new"
    stale.mkdir()
    (stale / "x.npy").write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    bootstrap(settings)
    assert not stale.exists() and fresh.exists()


def test_main_parses_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--port" in capsys.readouterr().out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "home")
    proc.start()
    yield proc
    proc.stop()


def test_the_ray_executor_runs_jobs_in_each_nodes_sandbox_unless_none(tmp_path: Path) -> None:
    ray = Settings(home=tmp_path, executor="ray", ray_address="127.0.0.1:1")
    sandboxed = ray.model_copy(
        update={"job_uid_first": 3000, "job_disk_limit": "1G", "ray_warm": False}
    )
    isolation = job_isolation(sandboxed)  # nothing to try here: each node tries its own
    assert isolation.runs_jobs and isolation.ray_nodes and isolation.mode == "sandbox"
    assert "sandboxed on the Ray nodes" in isolation.summary()
    assert isolation.network == "isolated-single"
    config = ray_node_sandbox(sandboxed)
    assert config == NodeSandboxConfig(3000, 65_536, 2**30, 4096, 86_400.0, warm=0)
    unsandboxed = ray.model_copy(update={"job_isolation": "none"})
    assert job_isolation(unsandboxed).mode == "none" and ray_node_sandbox(unsandboxed) is None
    assert "UNISOLATED" in job_isolation(unsandboxed).summary()


def test_restart_keeps_the_admin_token_and_data(server: ServerProcess) -> None:
    secret = server.admin_token
    with server.client() as admin:
        assert (
            admin.post(
                f"{API}/datasets/kept/versions",
                params={"filename": "k.csv"},
                content=csv_bytes("kept"),
            ).status_code
            == 201
        )
    server.stop()
    assert server.log().count("admin token created") == 1
    server.start()
    assert server.admin_token == secret and server.log().count("admin token created") == 1
    assert secret not in server.log() and "nbt_" not in server.log()
    with server.client() as admin:
        assert admin.get(f"{API}/datasets/kept/versions/1").status_code == 200


def test_sigterm_finishes_the_request_in_flight_then_exits(server: ServerProcess) -> None:
    data = csv_bytes("slow")
    results: dict[str, object] = {}

    def slow_body() -> Iterator[bytes]:
        for i in range(0, len(data), 256):
            yield data[i : i + 256]
            time.sleep(0.1)

    def send() -> None:
        with server.client() as admin:
            results["response"] = admin.post(
                f"{API}/datasets/slow/versions", params={"filename": "s.csv"}, content=slow_body()
            )

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.3)
    proc = server.proc
    assert proc is not None
    server.stop()
    sender.join(10)
    assert proc.returncode == 0, server.log()
    response = results["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 201, server.log()


def test_the_api_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "pg-home", env={"NIMBUS_DATABASE_URL": pg_url}) as server:
        with server.client() as admin:
            created = admin.post(
                f"{API}/datasets/pg/versions", params={"filename": "p.csv"}, content=csv_bytes("pg")
            )
            assert created.status_code == 201, created.text
            assert admin.get(f"{API}/datasets").json()["datasets"][0]["latest_version"] == 1
            assert admin.delete(f"{API}/datasets/pg").json()["deleted_versions"] == [1]
            actions = [
                (e["action"], e["status"]) for e in admin.get(f"{API}/audit").json()["events"]
            ]
            assert actions[:2] == [("DELETE", 200), ("POST", 201)]
        assert [p for p in (server.home / "blobs" / "sha256").rglob("*") if p.is_file()] == []
