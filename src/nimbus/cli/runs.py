"""``nimbus runs list|show|compare``: runs logged by MLflow clients (docs/mlflow.md), and
jobs read as runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from nimbus.cli.common import JsonOption, client, emit
from nimbus.errors import InvalidInput

if TYPE_CHECKING:
    from nimbus.wire.tracking import TrackedRun

app = typer.Typer(help="Runs logged through the MLflow API.", no_args_is_help=True)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@app.command("list")
def list_runs(
    experiment: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only this experiment's runs")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
    as_json: JsonOption = False,
) -> None:
    """The tenant's runs, newest first, with their latest metrics."""
    with client() as api:
        runs = api.list_runs(experiment, limit=limit)

    def render(out: Console) -> None:
        table = Table()
        for column in ("id", "experiment", "name", "status", "started", "metrics"):
            table.add_column(column)
        for r in runs:
            metrics = ", ".join(f"{k}={_figure(v)}" for k, v in sorted(r.metrics.items()))
            started = r.started_at.strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(r.id, r.experiment, r.name, r.status, started, metrics)
        out.print(table)

    emit({"runs": runs}, as_json, render)


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(metavar="ID", help="A run id, or a job id")],
    as_json: JsonOption = False,
) -> None:
    """One run: status, params, tags, latest metrics and files."""
    with client() as api:
        run = api.get_run(run_id)
    emit(run, as_json, lambda out: out.print(compare_table([run])))


@app.command("compare")
def compare(
    run_ids: Annotated[
        list[str], typer.Argument(metavar="ID ID...", help="Two or more run or job ids")
    ],
    as_json: JsonOption = False,
) -> None:
    """Runs and jobs side by side: status, latest metrics and params."""
    if len(run_ids) < 2:
        raise InvalidInput("compare needs at least two run or job ids")
    with client() as api:
        runs = api.compare_runs(run_ids)
    emit({"runs": runs}, as_json, lambda out: out.print(compare_table(runs)))


def compare_table(runs: list[TrackedRun]) -> Table:
    """One column per run; one row per status, metric and param."""
    table = Table()
    table.add_column("")
    for r in runs:
        table.add_column(r.id)
    table.add_row("experiment", *(r.experiment for r in runs))
    table.add_row("status", *(r.status for r in runs))
    for name in sorted({k for r in runs for k in r.metrics}):
        table.add_row(name, *(_figure(r.metrics.get(name)) for r in runs))
    for name in sorted({k for r in runs for k in r.params}):
        table.add_row(f"param {name}", *(r.params.get(name, "-") for r in runs))
    files = [", ".join(r.artifacts) or "-" for r in runs]
    if any(f != "-" for f in files):
        table.add_row("files", *files)
    return table
