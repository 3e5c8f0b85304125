"""The console's strongest peer, measured: the MLflow UI's runs table against Nimbus's jobs
list, the same 10,000 runs in each, timed in the same run under the same load.

Nimbus's store is filled as ``bench/console.py`` fills it (10,000 jobs, 10 epochs of
``loss``/``val_loss``/``val_accuracy`` each but the queued ones, 1,000 model versions).
The very same jobs are then read back and written into a real MLflow tracking server's
SQLite store as runs: the job's id as the run name, its state as the run status
(succeeded FINISHED, failed FAILED, cancelled KILLED, queued SCHEDULED, running RUNNING),
started/finished as start/end time (created for a queued job), ``model``, ``dataset``,
``epochs`` and ``lr`` as params, every metric point with its step and time. The fill runs
in the peer's own Python (``bench/_mlflow_fill.py``): MLflow's ``SqlAlchemyStore`` creates
its schema and experiment, the rows go in as bulk inserts through its ORM models (no REST
round trips). Then ``mlflow server --backend-store-uri sqlite:///... --workers 1`` serves
them (one worker: Nimbus serves from one process, and one sequential client uses one).

What is timed is what each console asks its server for, client-seen on loopback,
sequential, p50/p95 over ``--requests`` (one warm-up first), each server against its own
bare route (MLflow ``/health``, Nimbus ``/healthz``) in the same round; the rounds alternate
which server goes first and the table gives the median over ``--rounds`` of each figure:

- MLflow: ``POST /ajax-api/2.0/mlflow/runs/search`` as the UI's experiment runs table
  sends it (checked in MLflow 3.17's built UI: ``max_results`` 100, ``run_view_type``
  ``ACTIVE_ONLY``, ``order_by`` ``["attributes.start_time DESC"]`` by default or
  ``["metrics.`KEY` DESC|ASC"]`` when a metric column is sorted, no filter): newest first;
  the 100th page (the page tokens of pages 1-99 are followed first, only the last request
  is timed); by ``val_accuracy`` descending; by ``loss`` ascending. A run's page:
  ``GET runs/get`` + ``GET metrics/get-history`` of each of the 3 metrics, timed together.
- Nimbus: ``/jobs?per_page=100`` (the same 100 rows a page): newest first, ``page=100``,
  ``metric=best:val_accuracy&sort=metric``, ``metric=last:loss&sort=metric&order=asc``;
  a job's page ``/jobs/{id}`` (one request).

They do not return the same thing. MLflow answers JSON for a single-page app to render in
the browser (every run's info, all its latest metrics, params and tags; the browser then
builds the table, so the user waits longer than this figure); Nimbus answers the finished
HTML page (rendered server-side; the browser only lays it out). MLflow sorts a metric by
its latest value; Nimbus's ``best:`` is the maximum over the series (the same order here:
``val_accuracy`` rises every epoch). A Nimbus job page is one request; MLflow's run page
here is four (its browser makes them, some in parallel; summed here).

A page is timed over ``--requests``, or as many (at least 5) as fit in ``--budget`` seconds:
at 10,000 runs MLflow's metric sorts take ~10 s a request on SQLite (its query left-joins
``runs`` to a subquery of ``latest_metrics`` that SQLite materializes and scans once per
run), and 60 of them per round would take an hour. Results of 4 December 2026 in
``docs/console.md``.

A file of its own rather than ``bench/console.py --peer mlflow``: ``console.py`` stays the
quick check of issue 14's targets, runnable without the peer's venv, and both stay small;
this one reuses its ``fill``.

The peer lives in its own venv, outside the repository, never in Nimbus's::

    python3.11 -m venv /work/benchenv/mlflow
    /work/benchenv/mlflow/bin/pip install mlflow     # full package (server + UI), 3.17.2 here

    .venv/bin/python bench/console_peer.py [--peer-python /work/benchenv/mlflow/bin/python]
        [--jobs 10000] [--requests 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
from _common import ServerProcess, wait_quiet
from sqlalchemy import select
from tests.helpers import wait_http

from console import fill
from nimbus.db.engine import Database
from nimbus.db.tables import JobMetricRow, JobRow
from nimbus.system import free_port

HERE = Path(__file__).resolve().parent
STATUS = {
    "succeeded": "FINISHED",
    "failed": "FAILED",
    "cancelled": "KILLED",
    "queued": "SCHEDULED",
    "running": "RUNNING",
}
SEARCH = "/ajax-api/2.0/mlflow/runs/search"
METRICS = ("loss", "val_loss", "val_accuracy")
Send = Callable[[httpx.Client], list[httpx.Response]]
Figure = tuple[float, float, int, int]  # p50 ms, p95 ms, bytes, requests timed


def _ms(at: Any) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def export_runs(db: Database) -> list[dict[str, Any]]:
    """The jobs of Nimbus's store as MLflow runs (see the module's docstring)."""
    runs: dict[str, dict[str, Any]] = {}
    with db.session() as session:
        for job in session.scalars(select(JobRow).order_by(JobRow.created_at)):
            spec = job.spec
            runs[job.id] = {
                "run_id": uuid.uuid4().hex,
                "name": job.id,
                "status": STATUS[job.state],
                "start_time": _ms(job.started_at or job.created_at),
                "end_time": _ms(job.finished_at),
                "params": {
                    "model": spec["model"],
                    "dataset": spec["dataset"],
                    **{key: str(value) for key, value in spec["params"].items()},
                },
                "metrics": [],
            }
        for metric in session.scalars(select(JobMetricRow)):
            runs[metric.job_id]["metrics"].append(
                (metric.name, metric.step, _ms(metric.created_at), metric.value)
            )
    return list(runs.values())


@contextmanager
def mlflow_server(python: str, tmp: Path, runs: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """A filled MLflow tracking server: (its URL, the experiment's id)."""
    source = tmp / "runs.json"
    source.write_text(json.dumps(runs))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    artifacts = str(tmp / "mlartifacts")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    # Its background job runner (7 Huey consumers polling their queues) off, as Nimbus's
    # scheduler is: neither server runs work in the background while the pages are timed.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    done = subprocess.run(
        [python, str(HERE / "_mlflow_fill.py"), str(source), uri, artifacts],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"MLflow fill failed:\n{done.stderr[-3000:]}")
    filled = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"MLflow: filled {filled['runs']} runs, {filled['metrics']} metric points in "
        f"{filled['seconds']} s (its SqlAlchemyStore's schema, bulk inserts via its ORM models)"
    )
    port = free_port()
    log = (tmp / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [
            *(python, "-m", "mlflow", "server", "--backend-store-uri", uri),
            *("--default-artifact-root", artifacts, "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        wait_http(f"{url}/health", 180, proc)
        print(f"MLflow: server up in {time.perf_counter() - started:.1f} s", flush=True)
        wait_quiet(proc.pid, timeout=30)
        yield url, filled["experiment_id"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        with suppress(ProcessLookupError):  # whatever of its group outlived the TERM
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def timed(client: httpx.Client, send: Send, n: int, budget: float) -> Figure:
    """p50 and p95 in ms of ``send`` (its requests together; one warm-up first) over ``n``
    requests, or as many (at least 5) as fit in ``budget`` seconds; the bytes its responses
    carry and how many were timed."""
    first = send(client)
    for response in first:
        assert response.status_code == 200, (response.url, response.text[:300])
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < n and (len(times) < 5 or time.perf_counter() < deadline):
        started = time.perf_counter()
        responses = send(client)
        times.append((time.perf_counter() - started) * 1000)
        assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    times.sort()
    p95 = times[max(0, int(len(times) * 0.95) - 1)]
    return statistics.median(times), p95, sum(len(r.content) for r in first), len(times)


def search(experiment: str, order: str, token: str | None = None) -> dict[str, Any]:
    """The body the MLflow UI's runs table posts."""
    body: dict[str, Any] = {
        "experiment_ids": [experiment],
        "run_view_type": "ACTIVE_ONLY",
        "max_results": 100,
        "order_by": [order],
    }
    if token:
        body["page_token"] = token
    return body


def mlflow_pages(client: httpx.Client, experiment: str, run_id: str, page: int) -> dict[str, Send]:
    newest = "attributes.start_time DESC"
    token = None
    for _ in range(page - 1):
        page = client.post(SEARCH, json=search(experiment, newest, token)).json()
        token = page["next_page_token"]
    last = client.post(SEARCH, json=search(experiment, newest, token)).json()
    assert len(last["runs"]) == 100, len(last["runs"])

    def post(body: dict[str, Any]) -> Send:
        return lambda c: [c.post(SEARCH, json=body)]

    def run_page(c: httpx.Client) -> list[httpx.Response]:
        got = [c.get("/ajax-api/2.0/mlflow/runs/get", params={"run_id": run_id})]
        for key in METRICS:
            got.append(
                c.get(
                    "/ajax-api/2.0/mlflow/metrics/get-history",
                    params={"run_id": run_id, "metric_key": key},
                )
            )
        return got

    return {
        "bare": lambda c: [c.get("/health")],
        "newest": post(search(experiment, newest)),
        "page100": post(search(experiment, newest, token)),
        "best": post(search(experiment, "metrics.`val_accuracy` DESC")),
        "loss": post(search(experiment, "metrics.`loss` ASC")),
        "run": run_page,
    }


def nimbus_pages(job: str, page: int) -> dict[str, Send]:
    def get(path: str) -> Send:
        return lambda c: [c.get(path)]

    return {
        "bare": get("/healthz"),
        "newest": get("/jobs?per_page=100"),
        "page100": get(f"/jobs?per_page=100&page={page}"),
        "best": get("/jobs?per_page=100&metric=best:val_accuracy&sort=metric"),
        "loss": get("/jobs?per_page=100&metric=last:loss&sort=metric&order=asc"),
        "run": get(f"/jobs/{job}"),
    }


LABELS = {
    "bare": "bare route",
    "newest": "list, newest first",
    "page100": "list, page 100",
    "best": "list, best val_accuracy",
    "loss": "list, last loss asc",
    "run": "a run's / job's page",
}


def signed_in(server: ServerProcess) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=60)
    nonce = client.get("/login").text.split('name="nonce" value="', 1)[1].split('"', 1)[0]
    signed = client.post("/login", data={"token": server.admin_token, "nonce": nonce})
    assert signed.status_code == 303, signed.text[:300]
    return client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default="/work/benchenv/mlflow/bin/python")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--budget", type=float, default=40.0, help="seconds one page may be timed (>= 5 requests)"
    )
    args = parser.parse_args()
    if not Path(args.peer_python).exists():
        parser.error(f"--peer-python {args.peer_python} does not exist (see the docstring)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = ServerProcess(tmp / "home", env={"NIMBUS_SCHEDULER_ENABLED": "false"}).start()
        try:
            db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
            started = time.perf_counter()
            ids = fill(db, args.jobs, 1_000)
            print(f"Nimbus: filled {args.jobs} jobs in {time.perf_counter() - started:.1f} s")
            runs = export_runs(db)
            db.dispose()
            middle = len(ids) // 2
            page = max(1, min(100, len(ids) // 100))  # 100 unless --jobs is under 10,000
            with mlflow_server(args.peer_python, tmp, runs) as (url, experiment):
                wait_quiet(server.proc.pid if server.proc else 0, timeout=20)
                own_client = closing(signed_in(server))
                with httpx.Client(base_url=url, timeout=180) as peer, own_client as own:
                    sides = {
                        "mlflow": (
                            peer,
                            mlflow_pages(peer, experiment, runs[middle]["run_id"], page),
                        ),
                        "nimbus": (own, nimbus_pages(ids[middle], page)),
                    }
                    for page_name in ("newest", "page100", "best", "loss"):
                        same = same_rows(sides, page_name)
                        print(f"{LABELS[page_name]}: the same 100 runs in both: {same}")
                    results = measure_rounds(sides, args.requests, args.budget, args.rounds)
        finally:
            server.stop()
    print_table(results, args.requests, args.rounds)
    return 0


def same_rows(sides: dict[str, tuple[httpx.Client, dict[str, Send]]], page: str) -> bool:
    """Whether MLflow's page lists the runs of the jobs Nimbus's page lists."""
    peer, peer_pages = sides["mlflow"]
    own, own_pages = sides["nimbus"]
    names = [run["info"]["run_name"] for run in peer_pages[page](peer)[0].json()["runs"]]
    html = own_pages[page](own)[0].text
    return len(names) == 100 and all(f"/jobs/{name}" in html for name in names)


Figures = dict[str, dict[str, list[Figure]]]


def measure_rounds(
    sides: dict[str, tuple[httpx.Client, dict[str, Send]]], n: int, budget: float, rounds: int
) -> Figures:
    results: Figures = {side: {page: [] for page in LABELS} for side in sides}
    order = list(sides)
    for number in range(rounds):
        for side in order if number % 2 == 0 else order[::-1]:
            client, pages = sides[side]
            for page, send in pages.items():
                results[side][page].append(timed(client, send, n, budget))
        print(f"round {number + 1}/{rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    return results


def print_table(results: Figures, n: int, rounds: int) -> None:
    def med(side: str, page: str, field: int) -> float:
        return statistics.median(figure[field] for figure in results[side][page])

    print(
        f"\n{'page (100 rows a list page)':26} | {'MLflow p50':>10} {'p95':>7} {'x bare':>6} "
        f"{'KB':>5} {'n':>3} | {'Nimbus p50':>10} {'p95':>7} {'x bare':>6} {'KB':>5} {'n':>3} | "
        f"{'N/M p50':>7} {'p95':>5}"
    )
    bare = {side: med(side, "bare", 0) for side in results}
    for page, label in LABELS.items():
        cells = []
        for side in ("mlflow", "nimbus"):
            p50, p95 = med(side, page, 0), med(side, page, 1)
            size, timed_n = med(side, page, 2) / 1024, min(f[3] for f in results[side][page])
            cells.append(f"{p50:10.1f} {p95:7.1f} {p50 / bare[side]:6.1f} {size:5.0f} {timed_n:3d}")
        ratio50 = med("nimbus", page, 0) / med("mlflow", page, 0)
        ratio95 = med("nimbus", page, 1) / med("mlflow", page, 1)
        print(f"{label:26} | {cells[0]} | {cells[1]} | {ratio50:7.3f} {ratio95:5.3f}")
    print(
        f"(ms, client-seen on loopback, sequential; n = requests timed (up to {n}; fewer where "
        f"--budget ran out), median of {rounds} rounds; MLflow's run page = runs/get + 3 x "
        f"metrics/get-history; load {Path('/proc/loadavg').read_text().split()[:3]}, "
        f"{os.cpu_count()} CPUs)"
    )
    for side in results:
        for page in LABELS:
            per_round = ", ".join(f"{f[0]:.1f}" for f in results[side][page])
            print(f"  {side} {page} p50 per round: {per_round}")


if __name__ == "__main__":
    sys.exit(main())
