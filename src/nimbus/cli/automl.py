"""``nimbus automl``: start an AutoML job; with ``--follow`` (or ``--register``), wait for it,
show its leaderboard and register its best model."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from nimbus.cli.common import JsonOption, client, console, emit, print_json
from nimbus.cli.follow import bar_console, check_outcome, follow, summary
from nimbus.cli.render import leaderboard_view
from nimbus.client.automl import leaderboard_of
from nimbus.jobs.domain import JobState
from nimbus.wire.jobs import Job


def automl(
    dataset: Annotated[str, typer.Option("--dataset", metavar="NAME[:V]", help="The dataset")],
    budget: Annotated[
        str, typer.Option(metavar="DURATION", help="Time for the search: 90s, 10m, 1h")
    ],
    metric: Annotated[
        str | None,
        typer.Option(help="accuracy (default), macro_f1 or balanced_accuracy, on the val split"),
    ] = None,
    register: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Wait, then register the best model under NAME"),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the search")] = None,
    cpus: Annotated[float, typer.Option(help="CPU cores for the job")] = 1,
    memory: Annotated[str | None, typer.Option(metavar="SIZE", help="Memory, e.g. 4G")] = None,
    priority: Annotated[int, typer.Option(help="Higher starts first (-1000..1000)")] = 0,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream its logs; show the leaderboard")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Search the model families that fit the dataset within a time budget (one job); print
    its id. With --follow or --register: wait for it, show the leaderboard (and register the
    best model); exit 0 if it succeeded, 8 if it failed, 9 if it was cancelled."""
    job_options: dict[str, Any] = {"cpus": cpus, "priority": priority}
    if memory is not None:
        job_options["memory"] = memory
    with client() as api:
        job = api.start_automl(dataset, budget, metric=metric, seed=seed, **job_options)
        if not (follow_ or register):
            emit(job, as_json, lambda _: typer.echo(job.id))  # its id for scripts
            return
        if not as_json:
            console().print(f"Started AutoML job {job.id}; waiting for it.", markup=False)
        show_logs = follow_ and not as_json
        job = follow(api, job.id, logs=show_logs, bars=bar_console(show_logs))
        version = None
        if register and job.state is JobState.SUCCEEDED:
            version = api.register_model(register, job.id)
    if as_json:
        out: dict[str, Any] = job.model_dump(mode="json")
        if version is not None:
            out["registered"] = version.model_dump(mode="json")
        print_json(out)
    else:
        _print(console(), job, register if version is not None else None)
    check_outcome(job)


def _print(out: Console, job: Job, registered: str | None) -> None:
    board = leaderboard_of(job)
    if board is not None:
        out.print(leaderboard_view(board))
    ok = job.state is JobState.SUCCEEDED
    out.print(summary(job), style="bold green" if ok else "bold red", markup=False, soft_wrap=True)
    if registered is not None:
        out.print(f"Registered the best model as {registered}.", markup=False)
