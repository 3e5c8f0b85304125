"""``nimbus serve MODEL_DIR``: a standalone server, public by default, that tritonclient talks to
unchanged and SIGTERM stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton

from nimbus.security import hash_token
from nimbus.system import free_port
from tests.cli.conftest import Nimbus
from tests.helpers import wait_http
from tests.serving.conftest import write_model_dir

CLASSES = ["no", "yes"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tabular model directory (docs/model-format.md)."""
    signature = {"name": "features", "datatype": "FP32", "shape": [-1, 3]}
    spec = {
        "format_version": 1,
        "task": "tabular-classification",
        "architecture": "mlp",
        "arch_params": {"in_features": 3, "num_classes": 2, "hidden": [4]},
        "classes": CLASSES,
        "input": signature,
        "onnx_input": signature,
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "preprocessing": {
            "kind": "tabular",
            "features": ["a", "b", "c"],
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        },
    }
    directory = tmp_path_factory.mktemp("serve") / "tab"
    return write_model_dir(directory, spec, torch.zeros((1, 3), dtype=torch.float32))


@contextmanager
def nimbus_serve(*args: str) -> Iterator[tuple[dict[str, Any], subprocess.Popen[bytes]]]:
    """``nimbus serve ARGS --json`` in a process; yields its JSON line once it is ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from nimbus.cli.app import main; main()", "serve", *args, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        info = json.loads(line)
        wait_http(f"{info['url']}/v2/health/ready", 60, proc)
        yield info, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)


def test_serve_answers_tritonclient_until_sigterm(model_dir: Path) -> None:
    port = free_port()
    with nimbus_serve(str(model_dir), "--port", str(port), "--name", "tab") as (info, proc):
        assert info == {
            "url": f"http://127.0.0.1:{port}",
            "model": "tab",
            "version": "1",
            "infer": f"http://127.0.0.1:{port}/v2/models/tab/infer",
            "public": True,
        }
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready("tab")
        x = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -0.5]], dtype=np.float32)
        inp = triton.InferInput("features", list(x.shape), "FP32").set_data_from_numpy(x)
        result = client.infer("tab", [inp])
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (2, 2) and np.allclose(probabilities.sum(axis=1), 1.0)
        labels = [label.decode() for label in result.as_numpy("label")]
        assert labels == [CLASSES[i] for i in probabilities.argmax(axis=1)]
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode in (0, -signal.SIGTERM)


def test_serve_with_a_token_file_requires_a_token(model_dir: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(hash_token("edge-token") + "\n")
    tokens.chmod(0o600)
    port = free_port()
    with nimbus_serve(str(model_dir), "--port", str(port), "--token-file", str(tokens)) as (
        info,
        _,
    ):
        assert info["public"] is False and info["model"] == "tab"
        body = {
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [0.0, 1.0, 2.0]}
            ]
        }
        assert httpx.post(info["infer"], json=body).status_code == 401
        authorized = httpx.post(
            info["infer"], json=body, headers={"Authorization": "Bearer edge-token"}
        )
        assert authorized.status_code == 200


def test_serve_refuses_a_wrong_directory_or_an_unsafe_token_file(
    nimbus: Nimbus, model_dir: Path, tmp_path: Path
) -> None:
    assert "not a model directory" in nimbus("serve", str(tmp_path), code=2).stderr
    tokens = tmp_path / "tokens"
    tokens.write_text(hash_token("t"))
    tokens.chmod(0o644)
    refused = nimbus("serve", str(model_dir), "--token-file", str(tokens), code=2)
    assert "mode 0600" in refused.stderr


def test_serve_caps_requests_and_cuts_off_slow_clients(model_dir: Path) -> None:
    port = free_port()
    options = ("--max-batch-rows", "2", "--header-timeout", "0.5")
    with nimbus_serve(str(model_dir), "--port", str(port), "--name", "tab", *options) as (
        info,
        _,
    ):
        rows = [[0.0, 1.0, 2.0]] * 3
        tensor = {"name": "features", "datatype": "FP32", "shape": [3, 3], "data": rows}
        refused = httpx.post(info["infer"], json={"inputs": [tensor]}, timeout=30)
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            slow.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            cut_off = slow.recv(4096)
        finally:
            slow.close()
    assert refused.status_code == 413
    assert "limit of 2 rows per request (max_batch_rows)" in refused.json()["error"]
    assert cut_off.startswith(b"HTTP/1.1 408")
