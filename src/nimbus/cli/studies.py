"""``nimbus tune`` (start a study) and ``nimbus studies list|show|best|cancel``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from nimbus.cli.common import JsonOption, client, console, emit
from nimbus.jobs.domain import parse_resource

if TYPE_CHECKING:
    from nimbus.wire.studies import Importances, Study, Trial

app = typer.Typer(help="Studies: hyperparameter searches.", no_args_is_help=True)


def tune(
    dataset: Annotated[str, typer.Option("--dataset", metavar="NAME[:V]", help="The dataset")],
    model: Annotated[
        str,
        typer.Option(
            "--model", metavar="cnn|text|mlp|PATH.py|DIR", help="A built-in model or your script"
        ),
    ],
    param: Annotated[
        list[str],
        typer.Option(
            "--param",
            metavar="K=SPACE",
            help="uniform(a,b), loguniform(a,b), int(a,b[,log]), choice(x,...) or a fixed "
            "value (repeatable)",
        ),
    ],
    metric: Annotated[str, typer.Option(help="The metric the trials are scored by")] = (
        "val_accuracy"
    ),
    direction: Annotated[str, typer.Option(help="maximize or minimize")] = "maximize",
    trials: Annotated[int, typer.Option(help="How many trials in all")] = 20,
    parallel: Annotated[int, typer.Option(help="Trials running at once at most")] = 1,
    sampler: Annotated[str, typer.Option(help="tpe, random, grid or cmaes")] = "tpe",
    pruner: Annotated[str, typer.Option(help="asha, median or none")] = "asha",
    seed: Annotated[int | None, typer.Option(help="Seed of the search")] = None,
    timeout: Annotated[
        str | None, typer.Option(metavar="DURATION", help="End the study after this, e.g. 1h")
    ] = None,
    register: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Register the best trial's model under this name"),
    ] = None,
    cpus: Annotated[float, typer.Option(help="CPU cores per trial worker")] = 1,
    gpus: Annotated[int, typer.Option(help="GPUs per trial worker")] = 0,
    memory: Annotated[str | None, typer.Option(metavar="SIZE", help="Memory per worker")] = None,
    resource: Annotated[
        list[str] | None,
        typer.Option("--resource", metavar="NAME=AMOUNT", help="A custom resource (Ray)"),
    ] = None,
    priority: Annotated[int, typer.Option(help="The trials' priority (-1000..1000)")] = 0,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Wait for the study's end and show it")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start a hyperparameter study whose trials are jobs; prints its id (--json: the study)."""
    job: dict[str, object] = {"cpus": cpus, "gpus": gpus, "priority": priority}
    if memory is not None:
        job["memory"] = memory
    if resource:
        job["resources"] = dict(parse_resource(item) for item in resource)
    with client() as api:
        study = api.start_study(
            dataset,
            model,
            param,
            metric=metric,
            direction=direction,
            trials=trials,
            parallel=parallel,
            sampler=sampler,
            pruner=pruner,
            seed=seed,
            timeout=timeout,
            register_as=register,
            **job,
        )
        if follow_:
            if not as_json:
                console().print(f"Started study {study.id}; waiting for its end.", markup=False)
            study = api.wait_study(study.id)
            found = api.study_trials(study.id).trials
            shares = api.study_importances(study.id)
    if not follow_:
        emit(study, as_json, lambda _: typer.echo(study.id))  # its id for scripts
        return
    emit(study, as_json, lambda out: _show(out, study, found, shares))


@app.command("list")
def list_studies(as_json: JsonOption = False) -> None:
    """The tenant's studies, newest first."""
    with client() as api:
        studies = api.list_studies()

    def render(out: Console) -> None:
        table = Table()
        for column in ("id", "state", "model", "dataset", "metric", "trials", "best"):
            table.add_column(column)
        for s in studies:
            done = sum(n for state, n in s.counts.items() if state != "running")
            top = s.best
            best = f"{top.value:.4g} (#{top.number})" if top and top.value is not None else "-"
            table.add_row(s.id, s.state, s.model, s.dataset, s.metric, f"{done}/{s.trials}", best)
        out.print(table)

    emit({"studies": studies}, as_json, render)


@app.command("show")
def show(study_id: str, as_json: JsonOption = False) -> None:
    """A study: its trials, its best trial, the parameters' importances and the search's
    history."""
    with client() as api:
        study = api.get_study(study_id)
        found = api.study_trials(study_id).trials
        shares = api.study_importances(study_id)
    emit(
        {"study": study, "trials": found, "importances": shares},
        as_json,
        lambda out: _show(out, study, found, shares),
    )


@app.command("best")
def best(study_id: str, as_json: JsonOption = False) -> None:
    """The best trial so far: its parameters, value and job."""
    with client() as api:
        study = api.get_study(study_id)
    if study.best is None:
        raise typer.Exit(_none(study))
    top = study.best
    emit(top, as_json, lambda out: out.print(_trial_line(study, top), markup=False))


@app.command("cancel")
def cancel(study_id: str, as_json: JsonOption = False) -> None:
    """End a study now; its running trials' jobs are cancelled."""
    with client() as api:
        study = api.cancel_study(study_id)
    emit(study, as_json, lambda out: out.print(f"{study.id} {study.state}", markup=False))


def _none(study: Study) -> int:
    console().print(f"study {study.id} has no complete trial yet ({study.state})", markup=False)
    return 1


def _trial_line(study: Study, trial: Trial) -> str:
    params = " ".join(f"{k}={v}" for k, v in trial.params.items())
    return f"trial {trial.number}: {study.metric} {trial.value:.6g}  {params}  (job {trial.job})"


def _show(out: Console, study: Study, trials: list[Trial], shares: Importances) -> None:
    out.print(
        f"Study {study.id}: {study.state}; {study.model} on {study.dataset}, {study.direction} "
        f"{study.metric}, {study.sampler} sampler, {study.pruner} pruner",
        markup=False,
    )
    if study.reason:
        out.print(f"  {study.reason}", markup=False)
    names = sorted({k for t in trials for k in t.params})
    table = Table()
    for column in ("#", "state", study.metric, *names, "job"):
        table.add_column(column)
    for t in trials:
        value = f"{t.value:.4g}" if t.value is not None else "-"
        if t.state == "pruned" and t.pruned_step is not None:
            value = f"pruned at {t.pruned_step} ({value})"
        table.add_row(
            str(t.number),
            t.state,
            value,
            *(_cell(t.params.get(n)) for n in names),
            t.job,
        )
    out.print(table)
    if study.best is not None:
        out.print("Best: " + _trial_line(study, study.best), style="bold green", markup=False)
    out.print(_importances(shares), markup=False)
    out.print(_history(study, trials), markup=False)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _importances(shares: Importances, width: int = 40) -> str:
    """Each searched parameter's share of the metric's variance, as bars."""
    if not shares.importances:
        return (
            f"Parameter importances: after {shares.needed} complete trials "
            f"({shares.complete} so far)."
        )
    lines = [f"Parameter importances (fANOVA over {shares.complete} complete trials):"]
    pad = max(len(name) for name in shares.importances)
    for name, share in shares.importances.items():
        bar = "█" * max(round(share * width), 1)
        lines.append(f"  {name:<{pad}} {bar:<{width}} {share:6.1%}")
    return "\n".join(lines)


def _history(study: Study, trials: list[Trial], width: int = 40) -> str:
    """The best value so far after each complete trial, as bars: the search's progress at a
    glance (a pruned trial's value is where it was stopped, never a score)."""
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    if not done:
        return "History: no complete trial yet."
    sign = 1.0 if study.direction == "maximize" else -1.0
    values = [t.value for t in done if t.value is not None]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    lines = [f"History (best {study.metric} so far):"]
    best_so_far: float | None = None
    for t in done:
        assert t.value is not None
        if best_so_far is None or sign * t.value > sign * best_so_far:
            best_so_far = t.value
        # Bars grow as the best so far improves, whichever the direction.
        gained = (best_so_far - low) if sign > 0 else (high - best_so_far)
        filled = round(gained / span * width)
        lines.append(f"  #{t.number:<4} {'█' * max(filled, 1):<{width}} {best_so_far:.4g}")
    return "\n".join(lines)
