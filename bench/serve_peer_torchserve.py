"""TorchServe as a peer: the same seed CNN behind TorchServe's batching (one worker).

Two roles in one file: it is the TorchServe handler (``handle``, run by TorchServe's Python
worker), and :class:`TorchServePeer` packs the model with torch-model-archiver, starts the
Java frontend in the foreground, and registers the model with batching
(``batch_size``, ``max_batch_delay`` ms, one worker, one torch thread).

Needs Java 11+ (Debian: ``apt-get install openjdk-17-jre-headless``) and, in the same
environment as Nimbus, ``pip install torchserve torch-model-archiver``. The request body is
the OIP v2 JSON infer body the other servers take, POSTed to ``/predictions/cnn``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

_model: Any = None
_DTYPES = {"UINT8": "uint8", "FP32": "float32", "INT64": "int64"}


def _load(model_dir: Path) -> Any:
    import torch
    from safetensors.torch import load_file

    from nimbus.runtime.architectures import build_model

    torch.set_num_threads(1)
    spec = json.loads((model_dir / "spec.json").read_text())
    model = build_model(spec).eval()
    model.load_state_dict(load_file(str(model_dir / "weights.safetensors")))
    return model


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    """TorchServe's entry point: a batch of requests in, one answer per request out."""
    global _model
    if data is None:
        return None
    import torch

    if _model is None:
        _model = _load(Path(context.system_properties["model_dir"]))
    tensors = []
    for row in data:
        body = row.get("body") if row.get("body") is not None else row.get("data")
        request = json.loads(body) if isinstance(body, bytes | bytearray | str) else body
        tensor = request["inputs"][0]
        dtype = getattr(torch, _DTYPES[tensor["datatype"]])
        tensors.append(torch.tensor(tensor["data"], dtype=dtype).reshape(tensor["shape"]))
    with torch.inference_mode():
        probs = torch.softmax(_model(torch.cat(tensors)), dim=-1)
    answers, start = [], 0
    for t in tensors:
        rows = probs[start : start + t.shape[0]]
        start += t.shape[0]
        answers.append(
            {
                "model_name": "cnn",
                "outputs": [
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": list(rows.shape),
                        "data": rows.flatten().tolist(),
                    }
                ],
            }
        )
    return answers


def available() -> str | None:
    """None when TorchServe can run here, else why not."""
    if shutil.which("java") is None:
        return "no java (Debian: apt-get install openjdk-17-jre-headless)"
    try:
        import ts  # noqa: F401
    except ImportError:
        return "torchserve is not installed (pip install torchserve torch-model-archiver)"
    if shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent)) is None:
        return "torch-model-archiver is not installed (pip install torch-model-archiver)"
    return None


class TorchServePeer:
    """TorchServe serving ``model_dir`` as ``cnn``; use as a context manager."""

    def __init__(
        self,
        model_dir: Path,
        work: Path,
        port: int,
        management_port: int,
        metrics_port: int,
        batch_size: int = 16,
        max_batch_delay_ms: int = 5,
    ) -> None:
        self.model_dir = model_dir
        self.work = work
        self.port = port
        self.management_port = management_port
        self.metrics_port = metrics_port
        self.batch_size = batch_size
        self.max_batch_delay_ms = max_batch_delay_ms
        self.url = f"http://127.0.0.1:{port}/predictions/cnn"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TorchServePeer:
        store = self.work / "store"
        store.mkdir(parents=True)
        archiver = Path(sys.executable).parent / "torch-model-archiver"
        subprocess.run(
            [
                str(archiver),
                "--model-name",
                "cnn",
                "--version",
                "1.0",
                "--handler",
                str(Path(__file__).resolve()),
                "--extra-files",
                f"{self.model_dir / 'spec.json'},{self.model_dir / 'weights.safetensors'}",
                "--export-path",
                str(store),
                "--archive-format",
                "no-archive",
            ],
            check=True,
        )
        config = self.work / "config.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{self.port}\n"
            f"management_address=http://127.0.0.1:{self.management_port}\n"
            f"metrics_address=http://127.0.0.1:{self.metrics_port}\n"
            "disable_token_authorization=true\n"
            "enable_model_api=true\n"
            "enable_envvars_config=false\n"
            "default_workers_per_model=1\n"
            "number_of_netty_threads=1\n"
            "netty_client_threads=1\n"
            "vmargs=-Xmx512m -XX:+UseSerialGC -XX:ActiveProcessorCount=2\n"
        )
        import ts

        home = Path(ts.__file__).resolve().parent.parent
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
        self.proc = subprocess.Popen(
            [
                "java",
                f"-Dmodel_server_home={home}",
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-cp",
                f".:{home / 'ts' / 'frontend' / '*'}",
                "org.pytorch.serve.ModelServer",
                "--python",
                sys.executable,
                "-f",
                str(config),
                "-s",
                str(store),
                "-ncs",
                "--disable-token-auth",
            ],
            cwd=self.work,
            env=env,
            stdout=(self.work / "torchserve.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._register()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _register(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 120
        management = f"http://127.0.0.1:{self.management_port}"
        while True:
            try:
                httpx.get(f"{management}/models", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("TorchServe did not start; see torchserve.log") from None
                time.sleep(0.5)
        reply = httpx.post(
            f"{management}/models",
            params={
                "url": "cnn",
                "batch_size": self.batch_size,
                "max_batch_delay": self.max_batch_delay_ms,
                "initial_workers": 1,
                "synchronous": "true",
            },
            timeout=120,
        )
        reply.raise_for_status()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
