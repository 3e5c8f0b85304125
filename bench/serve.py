"""Serving benchmark: prints figures, asserts nothing.

The seed CNN (28x28x1 images, 10 classes; random weights: throughput does not depend on them)
is exported with ``export_model`` to a temporary model directory and served by

  (a) Nimbus: one replica, started through the Supervisor (the real deployment path);
  (b) the peer: bench/serve_peer_fastapi.py, FastAPI + one PyTorch forward per request.

wrk, in its own process, drives each in closed loop at 1, 16 and 64 connections with the same
OIP v2 JSON infer request (one 28x28 UINT8 image); Nimbus also with the binary tensor extension.
Reported: req/s, p50, p99, peak server RSS, and the Nimbus/peer ratio at each concurrency.
Then two figures of the supervisor under load: errors during a rolling update, and how long
the endpoint is down when its only replica is SIGKILLed.

The load generator shares the machine's cores with the servers, and the machine is shared:
compare the ratios, measured in the same run, more than the absolute figures.

Run: .venv/bin/python bench/serve.py [--quick] [--duration S] [--concurrency 1,16,64]
Needs wrk (Debian/Ubuntu: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import torch
from _common import ROOT, RssSampler

from nimbus.modelformat.export import export_model
from nimbus.runtime.architectures import build_model
from nimbus.serving.fleet.deployment import DeploymentSpec
from nimbus.serving.fleet.supervisor import Supervisor
from nimbus.system import free_port

NAME = "cnn"
INFER = f"/v2/models/{NAME}/infer"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
JSON = {"Content-Type": "application/json"}


def seed_cnn_spec() -> dict[str, Any]:
    signature = {"name": "input", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}
    return {
        "format_version": 1,
        "task": "image-classification",
        "architecture": "cnn",
        "arch_params": {
            "in_channels": 1,
            "height": 28,
            "width": 28,
            "num_classes": 10,
            "conv_channels": 32,
            "hidden": 128,
        },
        "classes": [str(i) for i in range(10)],
        "input": signature,
        "onnx_input": signature,
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "preprocessing": {
            "kind": "image",
            "scale": 1 / 255,
            "mean": [0.1307],
            "std": [0.3081],
            "height": 28,
            "width": 28,
            "channels": 1,
        },
    }


def build_model_dir(out: Path) -> Path:
    torch.manual_seed(0)
    spec = seed_cnn_spec()
    example = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    export_model(build_model(spec), spec, example, out)
    return out


def request_bodies(image: np.ndarray) -> tuple[bytes, bytes, int]:
    """The JSON infer body, and the binary-extension body with its JSON header's length."""
    tensor = {"name": "input", "datatype": "UINT8", "shape": [1, 28, 28, 1]}
    json_body = orjson.dumps({"inputs": [{**tensor, "data": image.reshape(-1).tolist()}]})
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": image.size}}],
            "parameters": {"binary_data_output": True},
        }
    )
    return json_body, header + image.tobytes(), len(header)


def lua_script(path: Path, body: Path, headers: dict[str, str]) -> Path:
    lines = [
        f'local f = assert(io.open("{body}", "rb"))',
        "wrk.body = f:read('*a')",
        "f:close()",
        'wrk.method = "POST"',
        *(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def parse_wrk(text: str) -> WrkResult:
    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return float(match.group(1)) * UNITS[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        rps=float(rps.group(1)) if rps else 0.0,
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        requests=int(total.group(1)) if total else 0,
        errors=errors + (int(non2xx.group(1)) if non2xx else 0),
    )


def wrk(url: str, script: Path, connections: int, seconds: float) -> WrkResult:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def wait_answering(url: str, body: bytes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, content=body, headers=JSON, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


def rolling_update_under_load(
    sup: Supervisor, spec: DeploymentSpec, url: str, script: Path, seconds: float
) -> tuple[WrkResult, float]:
    """wrk at 16 connections while the replica is rolled to a new version."""
    result: list[WrkResult] = []
    load = threading.Thread(target=lambda: result.append(wrk(url, script, 16, seconds)))
    load.start()
    time.sleep(min(1.0, seconds / 4))
    start = time.perf_counter()
    sup.update(NAME, DeploymentSpec(**{**spec.__dict__, "version": "2"}), wait=60)
    took = time.perf_counter() - start
    load.join()
    return result[0], took


def restart_gap(sup: Supervisor, url: str, body: bytes) -> tuple[float, int]:
    """SIGKILL the only replica under a client loop; seconds until the endpoint answers
    again, and requests that failed."""
    stop = threading.Event()
    successes: list[float] = []
    failures = [0]

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    if c.post(url, content=body, headers=JSON).status_code == 200:
                        successes.append(time.perf_counter())
                        continue
                except httpx.HTTPError:
                    pass
                failures[0] += 1

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.5)
    pid = sup.status(NAME).pids[0]
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    deadline = time.perf_counter() + 30
    while not any(t > killed for t in successes) and time.perf_counter() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join()
    back = next((t for t in successes if t > killed), float("nan"))
    return back - killed, failures[0]


def fmt_row(label: str, c: int, r: WrkResult, rss: int, ratio: str) -> str:
    return (
        f"| {label:<22} | {c:>4} | {r.rps:>9.0f} | {r.p50_ms:>8.2f} | {r.p99_ms:>8.2f} | "
        f"{r.errors:>6} | {rss / 2**20:>7.0f} | {ratio:>11} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Nimbus serving vs a FastAPI peer (wrk).")
    parser.add_argument("--quick", action="store_true", help="3 s per run")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--concurrency", default="1,16,64")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.duration
    levels = [int(c) for c in args.concurrency.split(",")]
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-serve-"))
    sup = Supervisor(log_dir=work / "logs")
    peer: subprocess.Popen[bytes] | None = None
    try:
        model_dir = build_model_dir(work / "model")
        image = np.random.default_rng(1).integers(0, 256, (28, 28, 1), dtype=np.uint8)
        json_body, binary_body, header_len = request_bodies(image)
        (work / "json.body").write_bytes(json_body)
        (work / "binary.body").write_bytes(binary_body)
        json_lua = lua_script(
            work / "json.lua", work / "json.body", {"Content-Type": "application/json"}
        )
        binary_lua = lua_script(
            work / "binary.lua",
            work / "binary.body",
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(header_len),
            },
        )

        spec = DeploymentSpec(NAME, model_dir, "1", replicas=1, public=True)
        nimbus_url = sup.start(spec, wait=60)
        peer_port = free_port()
        peer = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "serve_peer_fastapi.py"),
                str(model_dir),
                "--port",
                str(peer_port),
                "--name",
                NAME,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        peer_url = f"http://127.0.0.1:{peer_port}"
        wait_answering(nimbus_url + INFER, json_body)
        wait_answering(peer_url + INFER, json_body)
        ours = httpx.post(nimbus_url + INFER, content=json_body, headers=JSON).json()["outputs"][0][
            "data"
        ]
        theirs = httpx.post(peer_url + INFER, content=json_body, headers=JSON).json()["outputs"][0][
            "data"
        ]
        assert np.allclose(ours, theirs, atol=1e-4), "the two servers disagree"
        replica_pid = sup.status(NAME).pids[0]

        targets = [
            ("nimbus JSON", nimbus_url + INFER, json_lua, replica_pid),
            ("nimbus binary ext.", nimbus_url + INFER, binary_lua, replica_pid),
            ("peer FastAPI JSON", peer_url + INFER, json_lua, peer.pid),
        ]
        for _, url, script, _ in targets:  # warm-up
            wrk(url, script, 16, 1)
        print(
            f"seed CNN 28x28x1, 10 classes (random init); wrk -t1, {seconds:.0f} s per run; "
            f"Nimbus: 1 replica, ONNX Runtime, 1 thread, max batch 32, 2 ms"
        )
        print(
            "| server                 |    c |     req/s |  p50 ms  |  p99 ms  | errors |"
            " RSS MiB | Nimbus/peer |"
        )
        print("|" + "|".join("-" * w for w in (24, 6, 11, 10, 10, 8, 9, 13)) + "|")
        for c in levels:
            rows = []
            for label, url, script, pid in targets:
                with RssSampler(pid) as rss:
                    result = wrk(url, script, c, seconds)
                rows.append((label, result, rss.peak))
            peer_rps = rows[-1][1].rps
            for label, result, peak in rows:
                ratio = "-" if label.startswith("peer") else f"{result.rps / peer_rps:.2f}x"
                print(fmt_row(label, c, result, peak, ratio))

        result, took = rolling_update_under_load(
            sup, spec, nimbus_url + INFER, json_lua, max(seconds, 4.0)
        )
        print(
            f"\nrolling update 1 -> 2 (1 replica) under wrk -c16: took {took:.2f} s; "
            f"{result.requests} requests, {result.errors} errors, p99 {result.p99_ms:.1f} ms"
        )
        stop = threading.Event()
        ticker = threading.Thread(target=sup.run, args=(stop, 0.5))
        ticker.start()
        gap, failed = restart_gap(sup, nimbus_url + INFER, json_body)
        stop.set()
        ticker.join()
        print(
            f"SIGKILL of the only replica (supervisor ticking every 0.5 s): endpoint answered "
            f"again after {gap:.2f} s; {failed} request(s) failed (the one in flight)"
        )
    finally:
        if peer is not None:
            peer.terminate()
            peer.wait(10)
        sup.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
