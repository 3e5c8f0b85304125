"""The console under load: a fresh server's store filled with 10,000 jobs (each with metric
series) and 1,000 model versions, then the server time of the jobs list (several sorts and
filters) and of a job's page, p50/p95 over repeated requests, with a bare route measured in
the same run as the baseline; and the JS + CSS bytes the console ships.

The fill writes straight into the store through the db layer's tables (bulk inserts of job
rows as ``nimbus.db.jobs.submit`` writes them, metric rows, model versions): submitting
10,000 jobs through the API would take minutes and measure something else. The server's
scheduler is off, so nothing runs.

    .venv/bin/python bench/console.py [--jobs 10000] [--versions 1000] [--requests 60]

Targets (issue 14): jobs list p95 <= 300 ms, job page p95 <= 200 ms, JS + CSS <= 300 KB.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, ServerProcess, wait_quiet
from sqlalchemy import insert

from nimbus.db import jobs as repo
from nimbus.db import registry, tenants
from nimbus.db.engine import Database
from nimbus.db.tables import JobMetricRow, JobRow, ModelVersionRow, StudyRow, StudyTrialRow
from nimbus.jobs.domain import JobSpec, JobState

STATIC = ROOT / "src" / "nimbus" / "api" / "console" / "static"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = ("cnn", "text", "mlp")
DATASETS = ("photos", "reviews", "census", "digits", "tweets")
EPOCHS = 10
STATES = [JobState.SUCCEEDED] * 6 + [JobState.FAILED, JobState.CANCELLED, JobState.QUEUED]
STATES += [JobState.RUNNING]


def fill(db: Database, jobs: int, versions: int, seed: int = 1) -> list[str]:
    """``jobs`` jobs of tenant ``default`` with loss/val_loss/val_accuracy per epoch (some
    trials of a study), and ``versions`` model versions; the job ids."""
    rng = random.Random(seed)
    ids: list[str] = []
    with db.session(write=True) as session:
        tenant = tenants.get_or_create(session, "default").id
        rows: list[dict[str, Any]] = []
        for i in range(jobs):
            state = STATES[i % len(STATES)]
            started = T0 + timedelta(seconds=i + 5)
            spec = JobSpec(
                model=MODELS[i % 3],
                dataset=f"{DATASETS[i % 5]}:{1 + i % 4}",
                params={"epochs": EPOCHS, "lr": round(rng.uniform(1e-4, 1e-2), 5)},
            )
            ids.append(repo.new_job_id())
            rows.append(
                {
                    "id": ids[-1],
                    "tenant_id": tenant,
                    "spec": spec.to_dict(),
                    "model": spec.model,
                    "dataset_name": DATASETS[i % 5],
                    "dataset_version": 1 + i % 4,
                    "state": state.value,
                    "priority": 0,
                    "cpus": 1.0,
                    "gpus": 0,
                    "memory_bytes": 1 << 30,
                    "workers": 1,
                    "attempts": 0 if state is JobState.QUEUED else 1,
                    "max_retries": 2,
                    "cancel_requested": False,
                    "log_seq": 0,
                    "created_at": T0 + timedelta(seconds=i),
                    "started_at": None if state is JobState.QUEUED else started,
                    "finished_at": (
                        started + timedelta(seconds=rng.randint(30, 900))
                        if state.terminal
                        else None
                    ),
                    "progress": (
                        None
                        if state is JobState.QUEUED
                        else {"epoch": EPOCHS, "epochs": EPOCHS, "batch": 1, "batches": 1}
                    ),
                }
            )
        session.execute(insert(JobRow), rows)
        metrics = []
        for i, job_id in enumerate(ids):
            if STATES[i % len(STATES)] is JobState.QUEUED:
                continue
            skill = rng.random()
            for epoch in range(1, EPOCHS + 1):
                loss = (1.5 - skill) / epoch + rng.random() * 0.05
                at = T0 + timedelta(seconds=i + epoch)
                for name, value in (
                    ("loss", loss),
                    ("val_loss", loss * 1.1),
                    ("val_accuracy", min(1.0, skill * (1 - 1 / (epoch + 1)) + 0.1)),
                ):
                    metrics.append(
                        {
                            "job_id": job_id,
                            "attempt_number": 1,
                            "step": epoch,
                            "name": name,
                            "value": value,
                            "created_at": at,
                        }
                    )
        session.execute(insert(JobMetricRow), metrics)
        session.add(
            StudyRow(
                id="study_bench",
                tenant_id=tenant,
                state="completed",
                search={},
                job={},
                created_at=T0,
            )
        )
        session.flush()
        session.execute(
            insert(StudyTrialRow),
            [
                {
                    "study_id": "study_bench",
                    "number": n,
                    "job_id": job_id,
                    "params": {},
                    "state": "complete",
                    "system_attrs": {},
                    "created_at": T0,
                }
                for n, job_id in enumerate(ids[::50])
            ],
        )
        rows = []
        for n in range(versions):
            model = registry.get_or_create_model(session, tenant, f"model-{n % 20}", T0)
            rows.append(
                {
                    "model_id": model.id,
                    "version": 1 + n // 20,
                    "job_id": ids[n % len(ids)],
                    "dataset": {"name": "photos", "version": 1, "content_hash": "0" * 64},
                    "params": {},
                    "spec": {},
                    "files": {},
                    "metrics": {"accuracy": rng.random()},
                    "created_at": T0 + timedelta(seconds=n),
                }
            )
        session.execute(insert(ModelVersionRow), rows)
    return ids


def measure(client: httpx.Client, path: str, n: int) -> tuple[float, float, float]:
    """p50 and p95 of the client-seen time in ms (one warm-up first), and the bytes."""
    first = client.get(path)
    assert first.status_code == 200, (path, first.status_code, first.text[:300])
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], len(first.content)


def shipped_bytes() -> int:
    """JS and CSS that base.html references (every console page loads them)."""
    base = (STATIC.parent / "templates" / "base.html").read_text()
    files = re.findall(r'(?:src|href)="/static/([^"]+\.(?:js|css))"', base)
    return sum((STATIC / name).stat().st_size for name in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            Path(tmp) / "home", env={"NIMBUS_SCHEDULER_ENABLED": "false"}
        ).start()
        try:
            db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
            started = time.perf_counter()
            ids = fill(db, args.jobs, args.versions)
            db.dispose()
            print(
                f"filled {args.jobs} jobs and {args.versions} model versions "
                f"in {time.perf_counter() - started:.1f} s (direct inserts)"
            )
            wait_quiet(server.proc.pid if server.proc else 0, timeout=20)
            return report(server, ids, args.requests)
        finally:
            server.stop()


def report(server: ServerProcess, ids: list[str], n: int) -> int:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        form = client.get("/login").text
        nonce = re.search(r'name="nonce" value="([^"]+)"', form)
        assert nonce, "no sign-in form"
        signed = client.post("/login", data={"token": server.admin_token, "nonce": nonce[1]})
        assert signed.status_code == 303, signed.text[:300]
        job = ids[len(ids) // 2]
        paths = [
            ("bare route (/healthz)", "/healthz"),
            ("jobs list, newest first", "/jobs"),
            ("jobs list, page 100", "/jobs?page=100"),
            ("jobs list, state=failed", "/jobs?state=failed"),
            ("jobs list, model=cnn dataset=photos", "/jobs?model=cnn&dataset=photos"),
            ("jobs list, by state", "/jobs?sort=state&order=asc"),
            ("jobs list, best val_accuracy", "/jobs?metric=best:val_accuracy&sort=metric"),
            ("jobs list, last loss asc", "/jobs?metric=last:loss&sort=metric&order=asc"),
            ("jobs list, study, best val_loss", "/jobs?study=study_bench&metric=best:val_loss"),
        ]
        job_page = client.get(f"/jobs/{job}")
        if job_page.status_code == 200:
            paths.append(("job page /jobs/{id}", f"/jobs/{job}"))
        else:
            print(f"job page /jobs/{{id}}: not in this tree ({job_page.status_code}), not measured")
        print(f"\n{'page':40} {'p50 ms':>8} {'p95 ms':>8} {'KB':>7}")
        worst_list = worst_job = 0.0
        for label, path in paths:
            p50, p95, size = measure(client, path, n)
            print(f"{label:40} {p50:8.1f} {p95:8.1f} {size / 1024:7.1f}")
            if path.startswith("/jobs?") or path == "/jobs":
                worst_list = max(worst_list, p95)
            elif path.startswith("/jobs/"):
                worst_job = p95
        shipped = shipped_bytes()
        print(f"\nJS + CSS shipped by base.html: {shipped / 1024:.1f} KB (target <= 300 KB)")
        print(f"jobs list worst p95: {worst_list:.1f} ms (target <= 300 ms)")
        if worst_job:
            print(f"job page p95: {worst_job:.1f} ms (target <= 200 ms)")
        print(
            f"({n} requests each, sequential, one client on the same machine; load "
            f"{Path('/proc/loadavg').read_text().split()[:3]})"
        )
    ok = worst_list <= 300 and shipped <= 300 * 1024 and worst_job <= 200
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
