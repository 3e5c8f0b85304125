"""``nimbus jobs list|show|logs|metrics|artifact|cancel|compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from nimbus.cli.common import JsonOption, client, emit, err_console, print_json
from nimbus.cli.follow import bar_console, follow, summary
from nimbus.cli.render import compare_table, job_view, jobs_table, metrics_table
from nimbus.errors import InvalidInput
from nimbus.jobs.domain import JobState

app = typer.Typer(help="Inspect, follow, compare and cancel training jobs.", no_args_is_help=True)

JobArgument = Annotated[str, typer.Argument(metavar="ID", help="A job id (job_…)")]


@app.command("list")
def list_(
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many")] = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    with client() as api:
        jobs = api.list_jobs(state=state, limit=limit)
    emit({"jobs": jobs}, as_json, lambda out: out.print(jobs_table(jobs)))


@app.command("show")
def show(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Show a job: state, timings, attempts, params and its evaluation."""
    with client() as api:
        job = api.get_job(job_id)
    emit(job, as_json, lambda out: out.print(job_view(job)))


@app.command("logs")
def logs(
    job_id: JobArgument,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Print a job's logs (-f: stream them, with progress bars, until the job ends).

    With --json: the stored chunks; with -f --json: one JSON event per line.
    """
    with client() as api:
        if not follow_:
            chunks = list(api.iter_logs(job_id))
            if as_json:
                print_json({"chunks": chunks})
            else:
                attempt = None
                for chunk in chunks:
                    if attempt is not None and chunk.attempt != attempt:
                        typer.echo(f"--- attempt {chunk.attempt} ---")
                    attempt = chunk.attempt
                    typer.echo(chunk.data, nl=False)
            return
        if as_json:
            for event in api.follow_logs(job_id):
                print_json({"event": event.event, "data": event}, line=True)
            return
        job = follow(api, job_id, bars=bar_console(True))
    if err_console().is_terminal:
        err_console().print(summary(job), style="dim", markup=False)


@app.command("metrics")
def metrics(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Show a job's training curves: train/val loss and accuracy per epoch."""
    with client() as api:
        series = api.job_metrics(job_id)
    emit({"metrics": series}, as_json, lambda out: out.print(metrics_table(series)))


@app.command("artifact")
def artifact(
    job_id: JobArgument,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The artifact, e.g. notebook.ipynb")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="PATH", help="Where to write it [default: ./NAME]"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Download one of a job's artifacts (a notebook job's executed notebook: notebook.ipynb)."""
    with client() as api:
        path = api.download_job_artifact(job_id, name, path=out)
    result = {"job": job_id, "artifact": name, "path": str(path), "size": path.stat().st_size}
    emit(result, as_json, lambda o: o.print(f"Wrote {name} of {job_id} to {path}", markup=False))


@app.command("cancel")
def cancel(job_id: JobArgument, as_json: JsonOption = False) -> None:
    """Cancel a job: a queued one never starts, a running one is stopped."""
    with client() as api:
        job = api.cancel_job(job_id)

    def render(out: Console) -> None:
        state = job.state
        if state is JobState.CANCELLED:
            out.print(f"Cancelled job {job.id}.", markup=False)
        elif state in (JobState.SUCCEEDED, JobState.FAILED):
            out.print(f"Job {job.id} had already {state}.", markup=False)
        else:
            out.print(f"Cancelling job {job.id} (still {state}).", markup=False)

    emit(job, as_json, render)


@app.command("compare")
def compare(
    job_ids: Annotated[list[str], typer.Argument(metavar="ID ID...", help="Two or more jobs")],
    as_json: JsonOption = False,
) -> None:
    """Compare jobs side by side: scores on the test split and params."""
    if len(job_ids) < 2:
        raise InvalidInput("compare needs at least two job ids")
    with client() as api:
        jobs = api.compare_jobs(job_ids)
    emit({"jobs": jobs}, as_json, lambda out: out.print(compare_table(jobs)))
