"""The control plane's responsiveness while it checks hostile input (issue 8, finding 5),
before and after the checks moved to a limited child, in the same run; and what
re-verifying cached blobs costs a job (finding 2).

Not a test (no timed asserts): ``python bench/untrusted_checks.py [--baseline REV]``.
"Before" is a server run from ``REV``'s source (default: the merge base with ``main``),
"after" one from this checkout. For each, ``/healthz`` and ``GET /api/v1/jobs`` are called
every 50 ms from threads while (1) nothing happens, (2) a member uploads a 16 MiB script
that is costly to compile, (3) a member registers a job whose ONNX model loops 10^9 times
(the job picks the count; ~2000 s of ONNX Runtime; the bench waits 45 s for an answer).
Printed: each call's p50/p99/max, the hostile request's answer and time, the CPU seconds
the server process itself spent meanwhile (not its children), and its own peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT, ServerProcess, cpu_seconds
from tests.api.conftest import API, make_token
from tests.helpers_models import API_ONLY, image_model_dir, insert_job
from tests.helpers_untrusted import Prober, hostile_script, peak_rss, slow_model_dir

from nimbus.runtime.job_api import _cached

SLOW_TRIPS = 1_000_000_000  # ~2000 s of ONNX Runtime: the job chooses
REGISTER_WAIT = 45.0  # seconds the bench waits for the registration's answer


def baseline_source(rev: str, into: Path) -> Path:
    """``rev``'s ``src/`` unpacked under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def figures(name: str, probe: Prober) -> str:
    return (
        f"{name} p50 {probe.percentile(50) * 1000:7.1f} ms  p99 {probe.percentile(99) * 1000:8.1f}"
        f" ms  max {max(probe.latencies or [0]) * 1000:8.1f} ms  ({len(probe.latencies)} calls)"
    )


def during(
    server: ServerProcess, token: str, what: str, act: Callable[[], httpx.Response | str]
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with (
        Prober(f"{server.url}/healthz") as health,
        Prober(f"{server.url}{API}/jobs", headers=headers) as api,
    ):
        time.sleep(0.5)
        assert server.proc is not None
        cpu = cpu_seconds(server.proc.pid)
        started = time.monotonic()
        response = act()
        took = time.monotonic() - started
        cpu = cpu_seconds(server.proc.pid) - cpu
        time.sleep(0.5)
    answer = response if isinstance(response, str) else f"HTTP {response.status_code}"
    print(f"  {what}: {answer} after {took:.1f} s; {cpu:.1f} s of the server process's CPU")
    print(f"    {figures('/healthz     ', health)}")
    print(f"    {figures('GET /jobs    ', api)}")
    print(f"    server peak RSS so far {peak_rss(server.proc.pid) / 1024**3:.2f} GiB")


def measure(label: str, root: Path, pythonpath: Path | None, script_mib: int) -> None:
    env = dict(API_ONLY)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    server = ServerProcess(root / "home", env=env).start()
    try:
        token = make_token(server)
        print(f"{label}:")
        client = httpx.Client(
            base_url=server.url, timeout=600, headers={"Authorization": f"Bearer {token}"}
        )
        during(server, token, "idle", lambda: client.get("/healthz"))
        script = hostile_script(script_mib * 1024**2)
        during(
            server,
            token,
            f"hostile {script_mib} MiB script",
            lambda: client.post(f"{API}/code", params={"filename": "big.py"}, content=script),
        )
        base = image_model_dir(root / "base", 1)
        job = insert_job(server.home, "default", slow_model_dir(root / "slow", base, SLOW_TRIPS))

        def register() -> httpx.Response | str:
            try:
                return client.post(
                    f"{API}/models/slow/versions", json={"job": job}, timeout=REGISTER_WAIT
                )
            except httpx.TimeoutException:
                return f"no answer within {REGISTER_WAIT:.0f} s"

        during(server, token, "hostile ONNX registration", register)
        client.close()
    finally:
        server.stop()


def cache_cost(root: Path) -> None:
    """What a job's reuse of a cached blob costs: before, a stat; now, a hash."""
    from sklearn.datasets import load_digits  # the bundled digits, as ingest prepares them

    digits = load_digits()
    sets = {
        "digits (1797 x 8x8)": [digits.images.astype(np.uint8), digits.target],
        "MNIST-size (60000 x 28x28)": [
            np.zeros((60000, 28, 28, 1), np.uint8),
            np.zeros(60000, np.int64),
        ],
    }
    print("cached-blob reuse (hash before every reuse), median of 20:")
    for name, arrays in sets.items():
        paths = []
        for i, array in enumerate(arrays):
            path = root / f"{name[:5]}-{i}.npy"
            np.save(path, array)
            paths.append(path)
        digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
        size = sum(p.stat().st_size for p in paths)
        stat_times, hash_times = [], []
        for _ in range(20):
            started = time.perf_counter()
            for p in paths:
                p.is_file()
            stat_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            for p, d in zip(paths, digests, strict=True):
                assert _cached(p, d)
            hash_times.append(time.perf_counter() - started)
        print(
            f"  {name}: {size / 1024**2:.1f} MiB, before {np.median(stat_times) * 1e6:.0f} us,"
            f" now {np.median(hash_times) * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default=None, help="git revision (default: merge-base main)")
    parser.add_argument("--script-mib", type=int, default=16)
    args = parser.parse_args()
    rev = (
        args.baseline
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with tempfile.TemporaryDirectory(prefix="bench-untrusted-") as tmp:
        root = Path(tmp)
        cache_cost(root)
        print(f"cpus {os.cpu_count()}; baseline {rev[:10]}")
        measure(
            f"before ({rev[:10]})",
            root / "before",
            baseline_source(rev, root / "rev"),
            args.script_mib,
        )
        measure("after (this checkout)", root / "after", None, args.script_mib)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
