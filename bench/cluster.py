"""The Ray executor against its references, on a real two-node Ray cluster on this machine
(prints figures; not a test). ``python bench/cluster.py [ROUNDS] [NOOP_JOBS] [ISOLATION]``.

NOOP_JOBS 0 skips part 2; ``NIMBUS_BENCH_CNN_ROUNDS=0`` skips part 3 (a quick run on a busy
machine). ISOLATION: ``sandbox`` (the default; both servers' attempts sandboxed, on the Ray nodes
and locally: needs root and bubblewrap) or ``none`` (unsandboxed).

1. Submit -> first training step (a script's one optimizer step done, by its own clock)
   on the Ray executor, next to the local fork-server executor, and to Ray Jobs' own
   submit -> script running and -> ``import torch`` done for a trivial script on the same
   cluster (``JobSubmissionClient``). Medians over ROUNDS (20), interleaved.
2. NOOP_JOBS (200) jobs whose script does nothing, drained through Ray and through the
   local executor: jobs per second from the first submit to the last end.
3. The built-in ``cnn`` on the digits, the same seeded job on each, 5 interleaved runs
   (medians): samples per second
   (epochs x batches x batch size over the attempt's wall time, start-up and scoring
   included alike).
Both servers use the default scheduler tick (0.5 s; a submit wakes the scheduler).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _common import ServerProcess
from tests.e2e.conftest import client_for, upload_digits
from tests.helpers_ray import RayTestCluster

from nimbus.client import Client

STEP = (
    "import time; t0 = time.time()\nimport torch\n"
    "m = torch.nn.Linear(8, 2); o = torch.optim.SGD(m.parameters(), lr=0.1)\n"
    "m(torch.randn(4, 8)).sum().backward(); o.step()\n"
    "print('first', t0, time.time(), flush=True)\n"
)
NOOP = "pass\n"
RAY_JOBS = "import time; t0 = time.time(); import torch; print('first', t0, time.time())"
CNN = {"epochs": "5", "batch_size": "32"}
CNN_ROUNDS = int(os.environ.get("NIMBUS_BENCH_CNN_ROUNDS", "5"))


def first_step(api: Client, script: str, dataset: str) -> float:
    t_submit = time.time()
    job = api.wait_job(api.submit_job(dataset, script).id, timeout=120)
    text = "".join(chunk.data for chunk in api.iter_logs(job.id))
    line = next((x for x in text.splitlines() if x.startswith("first")), None)
    assert job.state == "succeeded" and line is not None, text
    return float(line.split()[2]) - t_submit


def ray_jobs(cluster: RayTestCluster, rounds: int) -> tuple[list[float], list[float]]:
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    from ray.job_submission import JobStatus, JobSubmissionClient

    port = cluster.dashboard_port

    client = JobSubmissionClient(f"http://127.0.0.1:{port}")
    started, imported = [], []
    for _ in range(rounds):
        t_submit = time.time()
        job = client.submit_job(entrypoint=f'{sys.executable} -c "{RAY_JOBS}"')
        while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED}:
            time.sleep(0.05)
        line = next(x for x in client.get_job_logs(job).splitlines() if x.startswith("first"))
        _, t0, t1 = line.split()
        started.append(float(t0) - t_submit)
        imported.append(float(t1) - t_submit)
    return started, imported


def drain(api: Client, script: str, dataset: str, count: int) -> float:
    ref = api.upload_code(script).ref
    t0 = time.monotonic()
    ids = [api.submit_job(dataset, ref, max_retries=0).id for _ in range(count)]
    for job_id in ids:
        assert api.wait_job(job_id, timeout=600).state == "succeeded", job_id
    return count / (time.monotonic() - t0)


def cnn_rate(api: Client, dataset: str) -> float:
    job = api.wait_job(api.submit_job(dataset, "cnn", params=CNN, seed=1).id, timeout=600)
    assert job.state == "succeeded" and job.progress and job.started_at and job.finished_at
    seconds = (_at(job.finished_at) - _at(job.started_at)).total_seconds()
    return int(CNN["epochs"]) * job.progress.batches * int(CNN["batch_size"]) / seconds


def _at(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def main(rounds: int, noop_jobs: int, isolation: str) -> None:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    tmp = Path(tempfile.mkdtemp(prefix="nimbus-cluster-"))
    tmp.chmod(0o711)  # job uids pass through to their work directories
    cluster = RayTestCluster(tmp, dashboard=True)
    cluster.start()
    sandboxed = {"NIMBUS_JOB_ISOLATION": isolation}
    servers = {
        "ray": ServerProcess(tmp / "ray-home", env={**cluster.server_env(), **sandboxed}).start(),
        "local": ServerProcess(
            tmp / "local-home", env={"NIMBUS_EXECUTOR": "forkserver", **sandboxed}
        ).start(),
    }
    try:
        apis = {name: client_for(server) for name, server in servers.items()}
        data = {name: upload_digits(api, tmp / name) for name, api in apis.items()}
        scripts = {}
        for name, api in apis.items():
            (tmp / "step.py").write_text(STEP)
            scripts[name] = api.upload_code(tmp / "step.py").ref
            first_step(api, scripts[name], data[name])  # warm-up: each server's first job
        latency: dict[str, list[float]] = {"ray": [], "local": []}
        for _ in range(rounds):
            for name, api in apis.items():
                latency[name].append(first_step(api, scripts[name], data[name]))
        started, imported = ray_jobs(cluster, max(5, rounds // 4))
        (tmp / "noop.py").write_text(NOOP)
        rate = {
            name: drain(api, str(tmp / "noop.py"), data[name], noop_jobs)
            for name, api in apis.items()
            if noop_jobs
        }
        runs: dict[str, list[float]] = {"ray": [], "local": []}
        for _ in range(CNN_ROUNDS):  # interleaved: load on the machine hits both alike
            for name, api in apis.items():
                runs[name].append(cnn_rate(api, data[name]))
        cnn = {name: statistics.median(values) for name, values in runs.items() if values}
    finally:
        for server in servers.values():
            server.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = statistics.median
    print(f"job isolation: {isolation}; load average before: {load}")
    print(f"submit -> first training step, medians of {rounds} interleaved rounds:")
    print(f"  ray executor:        {med(latency['ray']):.3f} s (min {min(latency['ray']):.3f})")
    print(f"  local (forkserver):  {med(latency['local']):.3f} s (min {min(latency['local']):.3f})")
    print(
        f"Ray Jobs ({len(started)} jobs): submit -> script {med(started):.3f} s, "
        f"-> import torch done {med(imported):.3f} s"
    )
    if rate:
        print(
            f"{noop_jobs} no-op jobs: ray {rate['ray']:.2f} jobs/s, local {rate['local']:.2f} "
            f"jobs/s (ray/local {rate['ray'] / rate['local']:.2f})"
        )
    if cnn:
        print(
            f"cnn (median of {CNN_ROUNDS}): ray {cnn['ray']:.0f} samples/s, "
            f"local {cnn['local']:.0f} samples/s (ray/local {cnn['ray'] / cnn['local']:.2f})"
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 20,
        int(sys.argv[2]) if len(sys.argv) > 2 else 200,
        sys.argv[3] if len(sys.argv) > 3 else "sandbox",
    )
