"""Trial start overhead through a real server (part 3 of bench/tune.py).

One ``nimbus.server`` with the production defaults where the machine allows them (forkserver
executor, jobs sandboxed, 2 warm sandboxes; without root and bubblewrap, unsandboxed, and
said so), the study tick at its default. The same CSV is uploaded as a member of tenant
``bench``; one plain job warms the tenant up (not counted). Then, in the same run:

- plain jobs of the built-in ``mlp`` through ``POST /jobs``, as many as the study has trials,
  kept ``parallel`` in flight (the next submitted when one ends, as a study does), with params
  from the study's space;
- a study (``POST /studies``) of that many trials at that parallelism, TPE and ASHA as a
  user gets them.

Each job's times are read afterwards from what the platform records, in the metadata store
(one clock, the server's): ``queued`` (the job row's created_at: for a trial, the study's
round that asked for it), ``started`` (an attempt placed), the first log line (the job
process runs its code: it fetched its spec), the first ``val_accuracy`` point (epoch 1
ended: stored when the job API received it), and the **first training step**, estimated as
that point's time minus epoch 1's wall time, which the job prints on its epoch line (from
the start of its training loop, after the data is loaded and the model built, to the end
of epoch 1's validation). The first optimizer step ends a few milliseconds after the loop
starts (one batch of a small MLP); the estimate errs late by the metric's delivery time.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import tune_sim
from _common import ServerProcess
from sqlalchemy import select
from tests.api.conftest import API, make_token

from nimbus.db.engine import Database
from nimbus.db.tables import JobLogRow, JobMetricRow, JobRow

EPOCH_ONE = re.compile(r"^epoch 1/\d+ .*\((\d+(?:\.\d+)?) s, ", re.MULTILINE)
PLAIN_PARAMS = {"lr": 0.001, "hidden": 128, "dropout": 0.25, "batch_size": 32}
STAGES = ("started", "first log", "first step", "first metric")
PAUSE = 15.0  # seconds before each paced job and before the study: the warm pool refills
PACED = 5


@dataclass(frozen=True)
class JobTimes:
    """Seconds from a job's queueing to each stage; None where it never got there."""

    job_id: str
    queued: datetime
    finished: datetime | None
    stages: dict[str, float | None]


def sandbox_env() -> tuple[dict[str, str], str]:
    """The server's settings: production defaults where this machine can run them."""
    env = {"NIMBUS_EXECUTOR": "forkserver"}
    if os.geteuid() == 0 and shutil.which("bwrap"):
        # Set in the bench's environment, passed on: false measures every attempt in a
        # sandbox of its own (the platform before 2026-12-05), in the same tree.
        reuse = os.environ.get("NIMBUS_JOB_SANDBOX_REUSE", "true")
        return {
            **env,
            "NIMBUS_JOB_ISOLATION": "sandbox",
            "NIMBUS_JOB_WARM_SANDBOXES": "2",
            "NIMBUS_JOB_SANDBOX_REUSE": reuse,
        }, f"sandboxed, forkserver, 2 warm sandboxes, NIMBUS_JOB_SANDBOX_REUSE={reuse}"
    return {**env, "NIMBUS_JOB_ISOLATION": "none"}, "UNSANDBOXED (not root or no bwrap)"


def run(work: Path, dataset: str, trials: int, parallel: int, *, quick: bool) -> dict[str, Any]:
    """Plain jobs then a study on one server; prints the table, returns the figures."""
    epochs = 2 if quick else 5
    root = work / "platform"
    root.mkdir(mode=0o711)
    work.chmod(0o711)  # the sandboxed jobs' uids reach the home through it
    env, how = sandbox_env()
    print(f"\n3. Trial start overhead through a real server ({how}), {load()}")
    server = ServerProcess(root / "home", env=env).start()
    try:
        http = server.client(make_token(server, "member", "bench"))
        csv = tune_sim.write_csv(dataset, root / f"{dataset}.csv")
        uploaded = http.post(
            f"{API}/datasets/tune/versions",
            params={"filename": csv.name, "task": "tabular-classification"},
            content=csv.read_bytes(),
        )
        uploaded.raise_for_status()
        job = {"dataset": "tune", "model": "mlp"}
        body = {**job, "params": {**PLAIN_PARAMS, "epochs": epochs}}
        _wait_jobs(http, [_submit(http, body)])
        pause = 2.0 if quick else PAUSE
        paced = []
        for _ in range(1 if quick else PACED):
            time.sleep(pause)
            paced.append(_submit(http, body))
            _wait_jobs(http, paced[-1:])
        plain = _plain_jobs(http, body, trials, parallel)
        time.sleep(pause)
        study_jobs, study = _study(http, job, epochs, trials, parallel)
    finally:
        server.stop()
    db = Database(f"sqlite:///{root / 'home' / 'nimbus.db'}")
    try:
        figures = report(db, {"plain, paced": paced, "plain": plain, "trial": study_jobs}, parallel)
    finally:
        db.dispose()
    figures["study"] = {k: study.get(k) for k in ("state", "counts", "reason")}
    print(f"the study: {study['state']}, its trials {study['counts']} ({study['reason']})")
    figures["server"] = how
    return figures


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _submit(http: httpx.Client, body: dict[str, Any]) -> str:
    response = http.post(f"{API}/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def _ended(http: httpx.Client, job_id: str) -> bool:
    state = http.get(f"{API}/jobs/{job_id}").json()["state"]
    return state in ("succeeded", "failed", "cancelled")


def _wait_jobs(http: httpx.Client, ids: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not all(_ended(http, j) for j in ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs {ids} did not end in {timeout:.0f} s")
        time.sleep(0.2)


def _plain_jobs(http: httpx.Client, body: dict[str, Any], count: int, parallel: int) -> list[str]:
    """``count`` plain jobs, ``parallel`` in flight: the next one when one ends."""
    ids: list[str] = []
    running: list[str] = []
    while len(ids) < count or running:
        running = [j for j in running if not _ended(http, j)]
        while len(running) < parallel and len(ids) < count:
            ids.append(_submit(http, body))
            running.append(ids[-1])
        time.sleep(0.05)
    return ids


def _study(
    http: httpx.Client, job: dict[str, Any], epochs: int, trials: int, parallel: int
) -> tuple[list[str], dict[str, Any]]:
    space = tune_sim.user_space(epochs).to_dict()
    body = {
        **job,
        "params": space,
        "metric": "val_accuracy",
        "trials": trials,
        "parallel": parallel,
        "seed": 0,
    }
    created = http.post(f"{API}/studies", json=body)
    created.raise_for_status()
    study_id = created.json()["id"]
    deadline = time.monotonic() + 900
    while (study := http.get(f"{API}/studies/{study_id}").json())["state"] == "running":
        if time.monotonic() > deadline:
            raise SystemExit(f"study {study_id} did not end in 900 s: {study}")
        time.sleep(0.5)
    listed = http.get(f"{API}/studies/{study_id}/trials").json()["trials"]
    return [t["job"] for t in sorted(listed, key=lambda t: t["number"])], study


def job_times(db: Database, job_id: str) -> JobTimes:
    with db.session() as session:
        row = session.get(JobRow, job_id)
        assert row is not None, job_id
        logs = list(
            session.scalars(
                select(JobLogRow)
                .where(JobLogRow.job_id == job_id, JobLogRow.attempt_number == 1)
                .order_by(JobLogRow.seq)
            )
        )
        metric = session.scalars(
            select(JobMetricRow)
            .where(JobMetricRow.job_id == job_id, JobMetricRow.name == "val_accuracy")
            .order_by(JobMetricRow.attempt_number, JobMetricRow.step, JobMetricRow.id)
        ).first()
        queued, started, finished = row.created_at, row.started_at, row.finished_at

    def since(at: datetime | None) -> float | None:
        return None if at is None else (at - queued).total_seconds()

    epoch_one = EPOCH_ONE.search("".join(chunk.data for chunk in logs))
    first_metric = since(metric.created_at if metric is not None else None)
    first_step = None
    if first_metric is not None and epoch_one is not None:
        first_step = first_metric - float(epoch_one.group(1))
    stages = {
        "started": since(started),
        "first log": since(logs[0].created_at if logs else None),
        "first step": first_step,
        "first metric": first_metric,
    }
    return JobTimes(job_id, queued, finished, stages)


def _median(times: list[JobTimes], stage: str) -> float:
    values = [v for t in times if (v := t.stages[stage]) is not None]
    return statistics.median(values) if values else float("nan")


def _gaps(times: list[JobTimes], parallel: int) -> list[float]:
    """For each trial after the first ``parallel``: seconds from the latest end of an
    earlier trial's job to its queueing (the study's round noticing a free slot)."""
    gaps = []
    for t in times[parallel:]:
        ends = [o.finished for o in times if o.finished is not None and o.finished <= t.queued]
        if ends:
            gaps.append((t.queued - max(ends)).total_seconds())
    return gaps


def report(db: Database, jobs: dict[str, list[str]], parallel: int) -> dict[str, Any]:
    """The table: medians per kind of job and stage, the trials' ratio to plain jobs."""
    rows = {name: [job_times(db, j) for j in ids] for name, ids in jobs.items()}
    counts = ", ".join(f"{len(ids)} {name}" for name, ids in jobs.items())
    print(f"medians ({counts}), seconds from the job's queueing:")
    print(f"{'':>13} | " + " | ".join(f"{s:>12}" for s in STAGES))
    medians = {}
    for name, times in rows.items():
        medians[name] = {s: _median(times, s) for s in STAGES}
        print(f"{name:>13} | " + " | ".join(f"{medians[name][s]:12.3f}" for s in STAGES))
    ratios = {}
    for base in ("plain", "plain, paced"):
        ratios[base] = {s: medians["trial"][s] / medians[base][s] for s in STAGES}
        label = f"trial/{base.split(',')[-1].strip()}"
        print(f"{label:>13} | " + " | ".join(f"{ratios[base][s]:12.2f}" for s in STAGES))
    for name, times in rows.items():
        print(
            f"{name}, each job, queued -> first log / first step: "
            + " ".join(
                f"{_fmt(t.stages['first log'])}/{_fmt(t.stages['first step'])}" for t in times
            )
        )
    gaps = _gaps(rows["trial"], parallel)
    if gaps:
        print(
            f"between trials: an earlier trial's job ended -> the next trial queued, median "
            f"{statistics.median(gaps):.3f} s ({min(gaps):.2f}-{max(gaps):.2f}): the study's "
            "round (its tick) notices the free slot; not in the figures above"
        )
    print(
        f"trial queued -> first step: median {medians['trial']['first step']:.3f} s "
        f"(target <= 0.5 s); {load()}"
    )
    return {
        "medians": medians,
        "ratios": ratios,
        "stages": {name: [t.stages for t in times] for name, times in rows.items()},
        "gaps": gaps,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
