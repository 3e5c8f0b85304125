"""``nimbus automl``: start an AutoML job (with ``--register``, the server registers its best
model when it succeeds); with ``--follow``, wait for it and show its leaderboard and what the
server registered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from nimbus.cli.common import JsonOption, client, console, emit, print_json
from nimbus.cli.follow import bar_console, check_outcome, follow, summary
from nimbus.cli.render import leaderboard_view
from nimbus.jobs.domain import JobState

if TYPE_CHECKING:
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
        typer.Option(
            metavar="NAME", help="The server registers the best model under NAME when it succeeds"
        ),
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
    its id. With --register the server registers the best model when the job succeeds. With
    --follow: wait for it, show the leaderboard (and what was registered); exit 0 if it
    succeeded, 8 if it failed, 9 if it was cancelled."""
    job_options: dict[str, Any] = {"cpus": cpus, "priority": priority}
    if memory is not None:
        job_options["memory"] = memory
    with client() as api:
        job = api.start_automl(
            dataset, budget, metric=metric, seed=seed, register=register, **job_options
        )
        if not follow_:
            emit(job, as_json, lambda _: typer.echo(job.id))  # its id for scripts
            return
        if not as_json:
            console().print(f"Started AutoML job {job.id}; waiting for it.", markup=False)
        job = follow(api, job.id, logs=not as_json, bars=bar_console(not as_json))
        job, registered = api.wait_automl_registration(job.id)
    if as_json:
        print_json(job.model_dump(mode="json"))  # evaluation.automl.registered included
    else:
        _print(console(), job, registered)
    check_outcome(job)


def _print(out: Console, job: Job, registered: dict[str, Any] | None) -> None:
    from nimbus.client.automl import leaderboard_of

    board = leaderboard_of(job)
    if board is not None:
        out.print(leaderboard_view(board))
    ok = job.state is JobState.SUCCEEDED
    out.print(summary(job), style="bold green" if ok else "bold red", markup=False, soft_wrap=True)
    if registered is None:
        if ok and job.params.get("register"):
            out.print("The server has not registered the best model yet.", markup=False)
    elif "version" in registered:
        out.print(
            f"The server registered the best model as {registered['model']}:"
            f"{registered['version']}.",
            markup=False,
        )
    else:
        out.print(
            f"The server could not register the best model as {registered['model']}: "
            f"{registered.get('error')}",
            style="bold red",
            markup=False,
        )
