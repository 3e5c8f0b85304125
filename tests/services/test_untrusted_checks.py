"""The control plane never runs untrusted work in its own process (issue 8, finding 5): a
real server, a hostile 16 MiB script and an ONNX model that loops for as long as its job
chose, while a thread keeps calling ``/healthz``; with checks unsandboxed
(``NIMBUS_JOB_ISOLATION=none``) and in the job sandbox (the default on a root server)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nimbus.services.code import MAX_SCRIPT_BYTES
from tests.api.conftest import API, error_of, make_token
from tests.helpers import ServerProcess, passable_dir
from tests.helpers_models import API_ONLY, image_model_dir, insert_job
from tests.helpers_untrusted import Prober, hostile_script, peak_rss, slow_model_dir

HEALTH_BOUND = 1.0  # generous: every health call answers within a second
SLOW_TRIPS = 12_000_000  # ~24 s of ONNX Runtime in the control plane before the fix


@pytest.fixture(scope="module", params=["none", "sandbox"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    settings = {
        "NIMBUS_CHECK_MEMORY_BYTES": str(1024**3),
        "NIMBUS_CODE_CHECK_SECONDS": "30",
        "NIMBUS_MODEL_CHECK_SECONDS": "3",
        "NIMBUS_JOB_ISOLATION": request.param,
    }
    with contextlib.ExitStack() as stack:
        if request.param == "sandbox":
            root = stack.enter_context(passable_dir())
        else:
            root = tmp_path_factory.mktemp("untrusted")
        server = ServerProcess(root / "home", env={**API_ONLY, **settings}).start()
        stack.callback(server.stop)
        yield server


@pytest.fixture(scope="module")
def member(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(make_token(server)) as client:
        client.timeout = httpx.Timeout(120)
        yield client


def test_a_hostile_script_is_compiled_out_of_the_servers_process(
    server: ServerProcess, member: httpx.Client
) -> None:
    assert server.proc is not None
    script = hostile_script(MAX_SCRIPT_BYTES)
    with Prober(f"{server.url}/healthz") as health:
        started = time.monotonic()
        response = member.post(f"{API}/code", params={"filename": "big.py"}, content=script)
        took = time.monotonic() - started
    print(
        f"16 MiB script: {response.status_code} in {took:.1f} s; /healthz p99 "
        f"{health.percentile(99) * 1000:.0f} ms over {len(health.latencies)} calls"
    )
    assert response.status_code == 400, response.text
    assert "memory limit of 1024 MiB" in error_of(response)["message"]
    assert health.latencies and health.failures == 0
    assert max(health.latencies) < HEALTH_BOUND
    assert peak_rss(server.proc.pid) < 1024**3  # before the fix: 6.9 GB
    ok = member.post(f"{API}/code", params={"filename": "ok.py"}, content=b"print('hi')\n")
    assert ok.status_code == 201, ok.text


def test_a_script_over_the_cap_is_refused_with_413(member: httpx.Client) -> None:
    response = member.post(
        f"{API}/code", params={"filename": "huge.py"}, content=b"#" * (MAX_SCRIPT_BYTES + 1)
    )
    assert response.status_code == 413, response.text
    assert str(MAX_SCRIPT_BYTES) in error_of(response)["message"]


def test_a_slow_onnx_model_is_refused_at_its_time_limit(
    server: ServerProcess, member: httpx.Client, tmp_path: Path
) -> None:
    base = image_model_dir(tmp_path / "base", 1)
    slow = slow_model_dir(tmp_path / "slow", base, SLOW_TRIPS)
    job = insert_job(server.home, "default", slow)
    with Prober(f"{server.url}/healthz") as health:
        started = time.monotonic()
        response = member.post(f"{API}/models/slow/versions", json={"job": job})
        took = time.monotonic() - started
    print(
        f"slow ONNX: {response.status_code} in {took:.1f} s; /healthz p99 "
        f"{health.percentile(99) * 1000:.0f} ms over {len(health.latencies)} calls"
    )
    assert response.status_code == 400, response.text
    message = error_of(response)["message"]
    assert "model.onnx" in message and "limit of 3 s" in message, message
    assert took < 20
    assert health.latencies and health.failures == 0
    assert max(health.latencies) < HEALTH_BOUND
    fine = member.post(
        f"{API}/models/fine/versions", json={"job": insert_job(server.home, "default", base)}
    )
    assert fine.status_code == 201, fine.text
