"""Serving benchmark: prints figures, asserts nothing.

The seed CNN (28x28x1 images, 10 classes; random weights: throughput does not depend on them)
is exported with ``export_model`` to a temporary model directory and served by

  (a) Nimbus: one replica (``--replicas``), started through the Supervisor (the real
      deployment path), public unless ``--token``; JSON and binary-extension bodies;
  (b) the weak peer: bench/serve_peer_fastapi.py, a sync FastAPI handler validating the body
      with pydantic, one PyTorch forward per request;
  (c) the strong peer: bench/serve_peer_async.py, an ``async def`` handler doing
      ``await request.json()`` and the forward on the event loop with one torch thread;
  (d) TorchServe with batching (batch 16, 5 ms, one worker), when it is installed
      (bench/serve_peer_torchserve.py says how); otherwise the table says why not;
  (e) the ceiling: bench/serve_ceiling.py, a raw ASGI app under the same uvicorn settings
      (httptools, uvloop) that reads the body and answers a fixed ~200-byte JSON; the same
      under the replica's own HTTP protocol (``ceiling, nimbus http``); and the same answer
      from the replica's fast path, below ASGI (``ceiling, fast path``: what a replica's
      inference requests would cost with no model and no parsing).

wrk -t1, in its own process, drives each in closed loop at 1, 16 and 64 connections with the
same OIP v2 JSON infer request (one 28x28 UINT8 image). Every target is measured once per
round, rounds interleave the targets (in a rotating order), and each figure is the median
over the rounds; each ratio is the median of the ratios within a round (same moment, same
load). Reported: req/s, p50, p99, peak server RSS (process and children), and Nimbus's ratio
to each peer and to the ceiling, with the load average before and after. Then two figures
of the supervisor under load: errors during a rolling update, and how long the endpoint is
down when its only replica is SIGKILLed.

The load generator shares the machine's cores with the servers, and the machine is shared:
compare the ratios, measured in the same run, more than the absolute figures.

Run: .venv/bin/python bench/serve.py [--quick] [--duration S] [--rounds N] [--concurrency 1,16,64]
         [--replicas R] [--token] [--no-torchserve] [--no-fleet]
Needs wrk (Debian/Ubuntu: apt-get install wrk).
To profile a replica under this load: pip install py-spy, then
py-spy record -p PID -r 1000 --nonblocking -d 10 -f raw -o profile.txt
"""

from __future__ import annotations

import argparse
import contextlib
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
import serve_peer_torchserve as ts_peer
import torch
from _common import ROOT, RssSampler, cpu_seconds, descendants

from nimbus.modelformat.export import export_model
from nimbus.runtime.architectures import build_model
from nimbus.security import hash_token
from nimbus.serving.fleet.deployment import DeploymentSpec
from nimbus.serving.fleet.supervisor import Supervisor
from nimbus.system import free_port
from nimbus.ticker import Ticker

NAME = "cnn"
INFER = f"/v2/models/{NAME}/infer"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
JSON = {"Content-Type": "application/json"}
TOKEN = "bench-token-" + "0" * 32


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
    cpu_us: float = float("nan")  # the server's CPU time per request (all its processes)


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


def wait_answering(
    url: str, body: bytes, headers: dict[str, str] = JSON, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, content=body, headers=headers, timeout=2).status_code == 200:
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


def restart_gap(
    sup: Supervisor, url: str, body: bytes, headers: dict[str, str] = JSON
) -> tuple[float, int]:
    """SIGKILL the only replica under a client loop; seconds until the endpoint answers
    again, and requests that failed."""
    stop = threading.Event()
    successes: list[float] = []
    failures = [0]

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    if c.post(url, content=body, headers=headers).status_code == 200:
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


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by some processes and all their children."""
    total = 0.0
    for pid in pids:
        for p in [pid, *descendants(pid)]:
            with contextlib.suppress(OSError):
                total += cpu_seconds(p)
    return total


class PeakRss:
    """Peak of the summed RSS of some processes and their children, sampled in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.samplers = [RssSampler(pid) for pid in pids]

    def __enter__(self) -> PeakRss:
        for sampler in self.samplers:
            sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for sampler in self.samplers:
            sampler.__exit__()

    @property
    def peak(self) -> int:
        return sum(sampler.peak for sampler in self.samplers)


@dataclass
class Target:
    label: str
    url: str
    script: Path
    pids: list[int]


NIMBUS_JSON, NIMBUS_BINARY = "nimbus JSON", "nimbus binary ext."
WEAK, STRONG, TORCHSERVE = "peer FastAPI sync", "peer FastAPI async", "peer TorchServe"
CEILING, CEILING_NIMBUS = "ceiling (uvicorn)", "ceiling, nimbus http"
CEILING_FAST = "ceiling, fast path"
RATIO_TO = [
    (STRONG, "strong"),
    (WEAK, "weak"),
    (TORCHSERVE, "TS"),
    (CEILING, "ceil"),
    (CEILING_FAST, "c.fast"),
]


def median(values: list[float]) -> float:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def start_python(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / script), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def measure(
    targets: list[Target], levels: list[int], seconds: float, rounds: int
) -> dict[tuple[str, int], list[tuple[WrkResult, int]]]:
    """wrk on every target at every level, ``rounds`` times, interleaved."""
    runs: dict[tuple[str, int], list[tuple[WrkResult, int]]] = {}
    for r in range(rounds):
        load = os.getloadavg()[0]
        for c in levels:
            shift = (r + levels.index(c)) % len(targets)
            for t in targets[shift:] + targets[:shift]:
                cpu = tree_cpu_seconds(t.pids)
                with PeakRss(t.pids) as rss:
                    result = wrk(t.url, t.script, c, seconds)
                result.cpu_us = (tree_cpu_seconds(t.pids) - cpu) / max(result.requests, 1) * 1e6
                runs.setdefault((t.label, c), []).append((result, rss.peak))
        print(
            f"round {r + 1}/{rounds}: load average {load:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after",
            flush=True,
        )
    return runs


nan = float("nan")


def report(
    runs: dict[tuple[str, int], list[tuple[WrkResult, int]]], labels: list[str], levels: list[int]
) -> None:
    present = [(label, short) for label, short in RATIO_TO if label in labels]
    print(
        "| server                 |    c |   req/s |  p50 ms |  p99 ms | errors | RSS MiB | "
        "CPU us/req | " + " | ".join(f"x {short:>6}" for _, short in present) + " |"
    )
    print("|" + "|".join("-" * w for w in (24, 6, 9, 9, 9, 8, 9, 12)) + "|---------" * len(present))
    for c in levels:
        for label in labels:
            results = runs[(label, c)]
            ratios = []
            for peer, _ in present:
                if label.startswith("nimbus"):
                    pairs = zip(results, runs[(peer, c)], strict=True)
                    ratio = median([a.rps / b.rps if b.rps else nan for (a, _), (b, _) in pairs])
                    ratios.append(f"{ratio:7.2f}x")
                else:
                    ratios.append(f"{'-':>8}")
            print(
                f"| {label:<22} | {c:>4} | {median([r.rps for r, _ in results]):>7.0f} | "
                f"{median([r.p50_ms for r, _ in results]):>7.2f} | "
                f"{median([r.p99_ms for r, _ in results]):>7.2f} | "
                f"{sum(r.errors for r, _ in results):>6} | "
                f"{max(rss for _, rss in results) / 2**20:>7.0f} | "
                f"{median([r.cpu_us for r, _ in results]):>10.0f} | " + " | ".join(ratios) + " |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description="Nimbus serving vs peers and the ceiling (wrk).")
    parser.add_argument("--quick", action="store_true", help="3 s per run, 1 round")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--token", action="store_true", help="Nimbus with a bearer token")
    parser.add_argument("--no-torchserve", action="store_true")
    parser.add_argument("--no-fleet", action="store_true", help="skip rolling update and kill")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.duration
    rounds = 1 if args.quick else args.rounds
    levels = [int(c) for c in args.concurrency.split(",")]
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-serve-"))
    sup = Supervisor(log_dir=work / "logs")
    procs: list[subprocess.Popen[bytes]] = []
    torchserve: Any = None
    try:
        model_dir = build_model_dir(work / "model")
        image = np.random.default_rng(1).integers(0, 256, (28, 28, 1), dtype=np.uint8)
        json_body, binary_body, header_len = request_bodies(image)
        (work / "json.body").write_bytes(json_body)
        (work / "binary.body").write_bytes(binary_body)
        auth = {"Authorization": f"Bearer {TOKEN}"} if args.token else {}
        plain_lua = lua_script(
            work / "plain.lua", work / "json.body", {"Content-Type": "application/json"}
        )
        json_lua = lua_script(
            work / "json.lua", work / "json.body", {"Content-Type": "application/json", **auth}
        )
        binary_lua = lua_script(
            work / "binary.lua",
            work / "binary.body",
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(header_len),
                **auth,
            },
        )

        spec = DeploymentSpec(
            NAME,
            model_dir,
            "1",
            replicas=args.replicas,
            public=not args.token,
            token_hashes=(hash_token(TOKEN),) if args.token else (),
        )
        nimbus_url = sup.start(spec, wait=60)
        ports = {
            key: free_port()
            for key in ("weak", "strong", "ceiling", "ceiling-nimbus", "ceiling-fast")
        }
        procs += [
            start_python("serve_peer_fastapi.py", str(model_dir), "--port", str(ports["weak"])),
            start_python("serve_peer_async.py", str(model_dir), "--port", str(ports["strong"])),
            start_python("serve_ceiling.py", "--port", str(ports["ceiling"])),
            start_python(
                "serve_ceiling.py", "--port", str(ports["ceiling-nimbus"]), "--protocol", "nimbus"
            ),
            start_python(
                "serve_ceiling.py", "--port", str(ports["ceiling-fast"]), "--protocol", "fast"
            ),
        ]
        weak, strong, ceiling, ceiling_nimbus, ceiling_fast = procs
        url = {key: f"http://127.0.0.1:{port}{INFER}" for key, port in ports.items()}
        headers = {**JSON, **auth}
        wait_answering(nimbus_url + INFER, json_body, headers)
        for key in ports:
            wait_answering(url[key], json_body)
        ours = httpx.post(nimbus_url + INFER, content=json_body, headers=headers).json()
        for key in ("weak", "strong"):
            theirs = httpx.post(url[key], content=json_body, headers=JSON).json()
            agree = np.allclose(ours["outputs"][0]["data"], theirs["outputs"][0]["data"], atol=1e-4)
            assert agree, f"Nimbus and the {key} peer disagree"
        replicas = sup.status(NAME).pids

        targets = [
            Target(NIMBUS_JSON, nimbus_url + INFER, json_lua, replicas),
            Target(NIMBUS_BINARY, nimbus_url + INFER, binary_lua, replicas),
            Target(STRONG, url["strong"], plain_lua, [strong.pid]),
            Target(WEAK, url["weak"], plain_lua, [weak.pid]),
            Target(CEILING, url["ceiling"], plain_lua, [ceiling.pid]),
            Target(CEILING_NIMBUS, url["ceiling-nimbus"], plain_lua, [ceiling_nimbus.pid]),
            Target(CEILING_FAST, url["ceiling-fast"], plain_lua, [ceiling_fast.pid]),
        ]
        why_not = "skipped (--no-torchserve)" if args.no_torchserve else ts_peer.available()
        if why_not is None:
            torchserve = ts_peer.TorchServePeer(
                model_dir, work / "torchserve", free_port(), free_port(), free_port()
            ).__enter__()
            wait_answering(torchserve.url, json_body)
            assert torchserve.proc is not None
            targets.insert(4, Target(TORCHSERVE, torchserve.url, plain_lua, [torchserve.proc.pid]))
        for t in targets:  # warm-up
            wrk(t.url, t.script, 16, 1)
        print(
            f"seed CNN 28x28x1, 10 classes (random init); wrk -t1, {seconds:.0f} s per run, "
            f"{rounds} interleaved round(s), medians; {os.cpu_count()} CPUs; Nimbus: "
            f"{args.replicas} replica(s), ONNX Runtime, 1 thread, max batch 32, 2 ms, "
            f"{'bearer token' if args.token else 'public'}; JSON body {len(json_body)} B, "
            f"binary {len(binary_body)} B"
        )
        if why_not is not None:
            print(f"TorchServe: {why_not}")
        runs = measure(targets, levels, seconds, rounds)
        report(runs, [t.label for t in targets], levels)

        if args.no_fleet:
            return
        result, took = rolling_update_under_load(
            sup, spec, nimbus_url + INFER, json_lua, max(seconds, 4.0)
        )
        print(
            f"\nrolling update 1 -> 2 (1 replica) under wrk -c16: took {took:.2f} s; "
            f"{result.requests} requests, {result.errors} errors, p99 {result.p99_ms:.1f} ms"
        )
        ticker = Ticker("supervisor", 0.5, sup.tick)
        ticker.start()
        gap, failed = restart_gap(sup, nimbus_url + INFER, json_body, headers)
        ticker.stop()
        print(
            f"SIGKILL of the only replica (supervisor ticking every 0.5 s): endpoint answered "
            f"again after {gap:.2f} s; {failed} request(s) failed (the one in flight)"
        )
    finally:
        if torchserve is not None:
            torchserve.__exit__()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        sup.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
