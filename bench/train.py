"""Training benchmarks: prints figures, asserts nothing.

1. Throughput: the built-in ``cnn`` on a generated 60,000-sample 28x28 dataset, trained as a
   Nimbus job, against a plain PyTorch loop over the same tensors (the train split the job
   trained on, downloaded from the server) with the same model (built by
   ``nimbus.runtime.architectures``), batch size, optimizer and thread count, measured in the same
   run. Each epoch of both is one pass over the train split, keeping the train loss and
   accuracy the job reports, plus the val split's loss and accuracy. The
   job's epoch times are the ones its log lines carry (``epoch k/E ... (W s, C s CPU)``),
   read after it ended (nothing follows its log while it trains). Plain runs and jobs
   alternate (P J P J ... P) and the ratio is the median over every adjacent (plain, job)
   pair, so drift in the machine's load during the run moves both sides of a ratio; on a
   machine shared with bursty load the ratio of the fastest epochs (each side's least
   disturbed) is printed too.
   Target: ratio >= 0.95.
2. Latency: submit -> first training step, median of N jobs run one after another. The
   job is a user script that does one optimizer step on a batch of the digits and logs
   ``time.time()`` then; the figure is that minus the time just before ``submit``.
   Target: <= 0.5 s.
3. Queue: N no-op jobs (a script that is just ``pass``) submitted at once: submit rate,
   drain rate (jobs/s) and the scheduler's share per job: the gap between a job ending and
   the next one starting in the freed slot, and slot time not spent running job processes.

Run: .venv/bin/python bench/train.py [--samples 60000] [--epochs 3] [--threads 2] [--rounds 3]
     [--latency-jobs 20] [--noop-jobs 500] [--skip throughput,latency,queue]
     [--executor forkserver|local] [--isolation sandbox|none] [--server-env NIMBUS_X=V]...

The job asks for ``cpus=threads``; the runtime sets its torch threads to that, whether the
attempt was forked from a zygote that imported torch earlier or started fresh.
Jobs run unsandboxed by default (``--isolation none``: no bubblewrap, no cgroup, as the
bench's server is started); ``--isolation sandbox`` (as root, with bubblewrap) runs each in
its sandbox with its cgroup's limits, as a production server does: the two separate the
sandbox's cost from the runtime's. A job keeps freed tensor memory for its next step
(:mod:`nimbus.runtime.allocator`, no page faults a step); the plain loop is a plain
process (glibc returning that memory and faulting it in again each step) unless
``--tune-plain-allocator`` gives it the same settings.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import ServerProcess, cpu_seconds, median, spread, wait_quiet
from plain_loop import plain_epochs

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.demo_data import write_digits_zip
from nimbus.runtime.allocator import keep_freed_memory
from nimbus.runtime.api import load_local_dataset
from nimbus.wire.jobs import MetricPoint

# One run's epochs: wall seconds of each epoch after the first, and their median CPU seconds.
Run = tuple[list[float], float]

LATENCY_SCRIPT = """\
import time

script_start_at = time.time()
import torch

from nimbus import runtime as nr

data = nr.dataset()
dataset_at = time.time()
x = torch.from_numpy(data.train.x[:64]).float().flatten(1)
y = torch.from_numpy(data.train.y[:64])
model = torch.nn.Linear(x.shape[1], len(data.classes))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss = torch.nn.functional.cross_entropy(model(x), y)
loss.backward()
optimizer.step()
first_step_at = time.time()
nr.log(1, first_step_at=first_step_at, script_start_at=script_start_at, dataset_at=dataset_at)
"""
NOOP_SCRIPT = "pass\n"


# -- 1. throughput ----------------------------------------------------------------------------


def write_images(path: Path, n: int, seed: int = 0) -> None:
    """A learnable 10-class 28x28 uint8 dataset: a random template per class plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    x = np.empty((n, 28, 28), dtype=np.uint8)
    for start in range(0, n, 10_000):
        part = slice(start, min(start + 10_000, n))
        noise = rng.normal(0, 60, size=(part.stop - part.start, 28, 28))
        x[part] = np.clip(templates[y[part]] * 0.5 + noise + 64, 0, 255).astype(np.uint8)
    np.savez(path, x=x, y=y)


EPOCH_TIME = re.compile(r"\((\d+(?:\.\d+)?) s, (\d+(?:\.\d+)?) s CPU\)\s*$")


def job_epoch_seconds(api: Client, job_id: str) -> tuple[list[float], float]:
    """Wall seconds of each epoch 2..E of a finished job (train pass + val scoring) and its
    median CPU seconds per epoch, as its log lines say (``epoch k/E ... (W s, C s CPU)``).
    Read once the job has ended: a log follower would make the server work (and take CPU
    from the job) while it trains."""
    walls: dict[int, float] = {}
    cpus: dict[int, float] = {}
    for chunk in api.iter_logs(job_id):
        for line in chunk.data.splitlines():
            head = line.split()[:2]
            found = EPOCH_TIME.search(line)
            if len(head) == 2 and head[0] == "epoch" and found:
                epoch = int(head[1].split("/")[0])
                walls[epoch], cpus[epoch] = float(found.group(1)), float(found.group(2))
    later = sorted(e for e in walls if e > 1)
    if not later:
        raise RuntimeError(f"job {job_id}: no timed epoch after the first in its log")
    return [walls[e] for e in later], median([cpus[e] for e in later])


def plain_epoch_seconds(
    data_dir: Path, params: dict[str, Any], epochs: int
) -> tuple[list[float], float]:
    """The same work in a plain PyTorch loop (bench/plain_loop.py): wall seconds of each
    epoch after the first, and their median CPU seconds."""
    runs = plain_epochs(load_local_dataset(data_dir), {**params, "epochs": str(epochs)})
    later = runs[1:] or runs
    return [wall for wall, _ in later], median([cpu for _, cpu in later])


PLAIN_JOB_CALL = """

from nimbus import runtime as nr
from nimbus.runtime.api import session

for epoch, (wall, cpu) in enumerate(plain_epochs(session().data, PARAMS), 1):
    nr.log(epoch, epoch_seconds=wall, epoch_cpu_seconds=cpu)
"""


def plain_job_seconds(api: Client, job_id: str) -> tuple[list[float], float]:
    """Like :func:`job_epoch_seconds`, for the plain loop run as a custom script job."""
    metrics = api.job_metrics(job_id)
    walls = [p.value for p in metrics["epoch_seconds"] if p.step > 1 and p.value is not None]
    cpus = [p.value for p in metrics["epoch_cpu_seconds"] if p.step > 1 and p.value is not None]
    if not walls or not cpus:
        raise RuntimeError(f"job {job_id}: no timed epoch after the first in its metrics")
    return walls, median(cpus)


def run_job(
    api: Client, server_pid: int, submit: Callable[[], str], read: Callable[[str], Run]
) -> tuple[Run, float]:
    """Run one job to its end once the server is quiet: its epochs, and the server's CPU
    share (of one core) meanwhile."""
    wait_quiet(server_pid)
    server_cpu, began = cpu_seconds(server_pid), time.perf_counter()
    job_id = submit()
    # Polled seldom: every request is server work taking CPU from the job's threads.
    done = api.wait_job(job_id, timeout=3600, poll=5.0)
    share = (cpu_seconds(server_pid) - server_cpu) / (time.perf_counter() - began)
    if done.state != "succeeded":
        tail = "".join(chunk.data for chunk in api.iter_logs(job_id))[-2000:]
        raise RuntimeError(f"job {job_id} {done.state}: {done.exit_reason}\n{tail}")
    return read(job_id), share


def throughput(
    api: Client,
    server_pid: int,
    work: Path,
    samples: int,
    epochs: int,
    threads: int,
    rounds: int,
    plain_in_job: bool,
) -> None:
    """Plain loop and job interleaved (P J P J ... P): each job is compared with the plain
    runs just before and after it, so a machine whose load drifts during the run moves both
    sides of every ratio alike; the figure is the median of those adjacent-pair ratios.
    With ``plain_in_job``, each round also runs the plain loop as a custom script job
    (P J Q P ...), compared the same way."""
    path = work / "images.npz"
    write_images(path, samples)
    version = api.upload_dataset("bench-images", path)
    ref = f"{version.dataset}:{version.version}"
    n_train = version.splits["train"].size
    params = {"epochs": str(epochs), "batch_size": "64"}
    data_dir = work / "images-data"
    api.download_dataset(ref, data_dir)
    torch.set_num_threads(threads)

    # Each run starts with the server's process tree quiet (the previous job's model
    # stored, a warm sandbox's imports done), so neither side inherits the other's work.
    wait_quiet(server_pid)
    plain_runs = [plain_epoch_seconds(data_dir, params, epochs)]
    job_runs: list[Run] = []
    plain_job_runs: list[Run] = []
    server_shares = []
    code = ""
    if plain_in_job:
        script = work / "plain_loop_job.py"
        script.write_text(
            (Path(__file__).parent / "plain_loop.py").read_text()
            + f"\nPARAMS = {params!r}\n"
            + PLAIN_JOB_CALL
        )
        code = api.upload_code(script).ref
    for round_ in range(rounds):
        (walls, cpu), share = run_job(
            api,
            server_pid,
            lambda: api.submit_job(ref, "cnn", params=params, cpus=threads, seed=0).id,
            lambda job_id: job_epoch_seconds(api, job_id),
        )
        job_runs.append((walls, cpu))
        server_shares.append(share)
        line = f"   round {round_ + 1}: plain {median(plain_runs[-1][0]):.2f} s, job "
        line += f"{median(walls):.2f} s"
        if plain_in_job:
            run, _ = run_job(
                api,
                server_pid,
                lambda: api.submit_job(ref, code, cpus=threads, seed=0).id,
                lambda job_id: plain_job_seconds(api, job_id),
            )
            plain_job_runs.append(run)
            line += f", plain loop as a job {median(run[0]):.2f} s"
        wait_quiet(server_pid)
        plain_runs.append(plain_epoch_seconds(data_dir, params, epochs))
        print(f"{line}, plain {median(plain_runs[-1][0]):.2f} s per epoch", flush=True)
    plains = [(median(walls), cpu) for walls, cpu in plain_runs]
    jobs = [(median(walls), cpu) for walls, cpu in job_runs]
    wall_ratios = [p[0] / j[0] for i, j in enumerate(jobs) for p in plains[i : i + 2]]
    cpu_ratios = [p[1] / j[1] for i, j in enumerate(jobs) for p in plains[i : i + 2]]
    # Other processes only ever slow an epoch down: the fastest epoch of each side is the
    # nearest to its uncontended cost, whatever the load did in between.
    fastest_plain = min(w for walls, _ in plain_runs for w in walls)
    fastest_job = min(w for walls, _ in job_runs for w in walls)
    job_wall, job_cpu = median([j[0] for j in jobs]), median([j[1] for j in jobs])
    plain_wall, plain_cpu = median([p[0] for p in plains]), median([p[1] for p in plains])
    print(
        f"1. cnn on {samples:,} generated 28x28 images ({n_train:,} train), batch 64, "
        f"{epochs} epochs, {threads} thread(s), job cpus={threads}, {rounds} jobs between "
        f"{rounds + 1} plain runs:"
    )
    print(
        f"   job: median {job_wall:.2f} s/epoch ({n_train / job_wall:,.0f} samples/s; "
        f"{spread([j[0] for j in jobs])}), from its log lines; CPU {job_cpu:.2f} s/epoch "
        f"(parallelism {job_cpu / job_wall:.2f})"
    )
    print(
        f"   plain PyTorch loop: median {plain_wall:.2f} s/epoch ({n_train / plain_wall:,.0f} "
        f"samples/s; {spread([p[0] for p in plains])}); CPU {plain_cpu:.2f} s/epoch "
        f"(parallelism {plain_cpu / plain_wall:.2f})"
    )
    print(
        f"   ratio Nimbus / plain, median of {len(wall_ratios)} adjacent pairs: "
        f"{median(wall_ratios):.3f} wall clock ({spread(wall_ratios, '', 3)}; target >= 0.95), "
        f"{median(cpu_ratios):.3f} in CPU time ({spread(cpu_ratios, '', 3)})"
    )
    print(
        f"   fastest epoch: job {fastest_job:.2f} s, plain {fastest_plain:.2f} s: ratio "
        f"{fastest_plain / fastest_job:.3f} (the least disturbed by other processes)"
    )
    print(
        f"   the server's own CPU while a job ran (submit to end): median "
        f"{median(server_shares) * 100:.1f}% of a core"
    )
    if plain_job_runs:
        inside = [(median(walls), cpu) for walls, cpu in plain_job_runs]
        env_ratios = [p[0] / q[0] for i, q in enumerate(inside) for p in plains[i : i + 2]]
        env_cpu = [p[1] / q[1] for i, q in enumerate(inside) for p in plains[i : i + 2]]
        trainer = [q[0] / j[0] for j, q in zip(jobs, inside, strict=True)]
        print(
            f"   the plain loop as a custom script job (same code, in the job's sandbox): "
            f"median {median([q[0] for q in inside]):.2f} s/epoch; ratio to the plain "
            f"process {median(env_ratios):.3f} wall ({spread(env_ratios, '', 3)}), "
            f"{median(env_cpu):.3f} CPU: what the job's environment costs; built-in job / "
            f"plain loop job {median(trainer):.3f} ({spread(trainer, '', 3)}): what the "
            f"built-in trainer costs"
        )


# -- 2. submit -> first step ------------------------------------------------------------------


def value(points: list[MetricPoint]) -> float:
    """The first value of a metric series that the bench's script logged (always finite)."""
    if points[0].value is None:
        raise RuntimeError("a timing metric arrived as null")
    return points[0].value


def upload_digits(api: Client, work: Path) -> str:
    data = write_digits_zip(work / "digits.zip")
    version = api.upload_dataset("bench-digits", data.path)
    return f"{version.dataset}:{version.version}"


def latency(api: Client, work: Path, jobs: int) -> None:
    ref = upload_digits(api, work)
    script = work / "first_step.py"
    script.write_text(LATENCY_SCRIPT)
    code = api.upload_code(script).ref
    api.wait_job(api.submit_job(ref, code).id, timeout=300)  # warm the node's blob cache
    figures, starts, scripts, datasets = [], [], [], []
    for _ in range(jobs):
        submitted = time.time()
        job = api.submit_job(ref, code)
        done = api.wait_job(job.id, timeout=300)
        metrics = api.job_metrics(job.id)
        points = metrics.get("first_step_at") or []
        if done.state != "succeeded" or not points or done.started_at is None:
            print(f"   job {job.id} {done.state}: {done.exit_reason}")
            continue
        figures.append(value(points) - submitted)
        starts.append(done.started_at.timestamp() - submitted)
        scripts.append(value(metrics["script_start_at"]) - submitted)
        datasets.append(value(metrics["dataset_at"]) - submitted)
    if not figures:
        print("2. submit -> first step: no job succeeded")
        return
    print(
        f"2. submit -> first training step (user script: nr.dataset(), one SGD step), "
        f"{len(figures)} jobs one after another:"
    )
    print(
        f"   median {median(figures):.3f} s (min {min(figures):.3f}, max {max(figures):.3f}; "
        f"target <= 0.5 s)"
    )
    print(
        f"   medians: submit -> attempt started (server clock) {median(starts):.3f} s, "
        f"-> the script's first line {median(scripts):.3f} s, -> nr.dataset() returned "
        f"{median(datasets):.3f} s, -> first step "
        f"{median(figures):.3f} s"
    )


# -- 3. the queue -----------------------------------------------------------------------------


def queue(api: Client, work: Path, jobs: int) -> None:
    script = work / "noop.py"
    script.write_text(NOOP_SCRIPT)
    code = api.upload_code(script).ref
    ref = upload_digits(api, work)  # a job names a dataset, even one it does not read
    api.wait_job(api.submit_job(ref, code).id, timeout=300)  # warm up
    begin = time.perf_counter()
    ids = [api.submit_job(ref, code).id for _ in range(jobs)]
    submit_s = time.perf_counter() - begin
    pending = set(ids)
    while pending:
        time.sleep(1.0)
        for state in ("succeeded", "failed", "cancelled"):
            pending -= {j.id for j in api.list_jobs(state=state, limit=1000)}
    drained = time.perf_counter() - begin
    found = [api.get_job(job_id) for job_id in ids]
    states = statistics.multimode(str(j.state) for j in found)
    created = [j.created_at.timestamp() for j in found]
    started = sorted(j.started_at.timestamp() for j in found if j.started_at)
    finished = sorted(j.finished_at.timestamp() for j in found if j.finished_at)
    runs = [
        j.finished_at.timestamp() - j.started_at.timestamp()
        for j in found
        if j.started_at and j.finished_at
    ]
    slots = max(1, sum(1 for s in started if s < finished[0]))  # ran at once at the start
    span = finished[-1] - min(created)
    gaps = [started[k] - finished[k - slots] for k in range(slots, len(started))]
    idle = (span * slots - sum(runs)) / len(found)
    print(f"3. {jobs} no-op jobs (user script `pass`, cpus=1 each, {slots} slots):")
    print(
        f"   submitted in {submit_s:.1f} s ({jobs / submit_s:.0f} jobs/s); all ended "
        f"({', '.join(states)}) {drained:.1f} s after the first submit"
    )
    print(
        f"   drained {len(found) / span:.1f} jobs/s (first submit -> last finish, server "
        f"clock); attempt run time (start -> end) median {median(runs):.3f} s"
    )
    print(
        f"   scheduler overhead per job: slot freed -> next start median "
        f"{median(gaps) * 1000:.0f} ms (p90 {np.percentile(gaps, 90) * 1000:.0f} ms); "
        f"slot time outside job processes {idle * 1000:.0f} ms per job"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="jobs, between rounds+1 plain runs")
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--noop-jobs", type=int, default=500)
    parser.add_argument("--skip", default="", help="comma-separated: throughput,latency,queue")
    parser.add_argument(
        "--plain-in-job",
        action="store_true",
        help="also run the plain loop as a custom script job each round (the environment's "
        "cost apart from the built-in trainer's)",
    )
    parser.add_argument(
        "--executor",
        choices=("forkserver", "local"),
        default=None,
        help="the server's executor [default: the server's default]",
    )
    parser.add_argument(
        "--tune-plain-allocator",
        action="store_true",
        help="give the plain loop the job's allocator settings (nimbus.runtime.allocator)",
    )
    parser.add_argument(
        "--isolation",
        choices=("sandbox", "none"),
        default="none",
        help="the server's job isolation [default: none]",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NIMBUS_X=V",
        help="a setting for the server, e.g. NIMBUS_EXECUTOR_PRELOAD='[\"torch\"]'",
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-", dir=os.environ.get("BENCH_DIR")))
    env = {"NIMBUS_EXECUTOR": args.executor} if args.executor else {}
    env["NIMBUS_JOB_ISOLATION"] = args.isolation
    if args.tune_plain_allocator:
        keep_freed_memory()
    if args.isolation == "sandbox":
        work.chmod(0o711)  # the jobs' uids pass through to their work directories
    env.update(pair.split("=", 1) for pair in args.server_env)
    server = ServerProcess(work / "home", env=env).start()
    print(
        f"server executor: {args.executor or 'default'}, isolation {args.isolation} "
        f"{' '.join(args.server_env)}; plain loop's allocator "
        f"{'tuned as the job' if args.tune_plain_allocator else 'as the C library sets it'}; "
        f"torch threads here: {args.threads}"
    )
    try:
        with Client(server.url, server.admin_token, settings=Settings(home=work)) as api:
            if "throughput" not in skip:
                throughput(
                    api,
                    server.proc.pid if server.proc else os.getpid(),
                    work,
                    args.samples,
                    args.epochs,
                    args.threads,
                    args.rounds,
                    args.plain_in_job,
                )
            if "latency" not in skip:
                latency(api, work, args.latency_jobs)
            if "queue" not in skip:
                queue(api, work, args.noop_jobs)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
