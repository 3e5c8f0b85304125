"""``nimbus train``: submit a training job; with ``--follow``, stream it to its end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from nimbus.cli.common import JsonOption, client, console, emit, print_json
from nimbus.cli.follow import bar_console, check_outcome, follow, summary
from nimbus.errors import InvalidInput
from nimbus.jobs.domain import JobState, parse_resource


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``["epochs=3", "lr=0.01"]`` -> ``{"epochs": "3", "lr": "0.01"}``; values stay strings
    (the server coerces them against the model's schema)."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"invalid --param {pair!r}: use KEY=VALUE")
        if key in params:
            raise InvalidInput(f"--param {key} given twice")
        params[key] = value.strip()
    return params


def read_requirements(path: Path | None, pips: Sequence[str]) -> list[str]:
    """The lines of ``--requirements FILE`` then each ``--pip SPEC``; the server checks
    each (names with version specifiers only) and names a bad one."""
    lines: list[str] = []
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read --requirements {path}: {exc}") from None
    return [*lines, *pips]


def train(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            metavar="cnn|text|mlp|PATH.py|PATH.ipynb|DIR",
            help="A built-in model, or your training code: a .py, a notebook (.ipynb, run with "
            "papermill, --param values injected after its 'parameters' cell), or a directory "
            "with main.py",
        ),
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="NAME[:V]",
            help="The dataset (its latest version) or NAME:V; required for every model but a "
            "notebook (.ipynb)",
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", metavar="K=V", help="A hyper-parameter (repeatable)"),
    ] = None,
    cpus: Annotated[float, typer.Option(help="CPU cores per worker")] = 1,
    gpus: Annotated[int, typer.Option(help="GPUs per worker")] = 0,
    memory: Annotated[
        str | None, typer.Option(metavar="SIZE", help="Memory per worker, e.g. 4G")
    ] = None,
    workers: Annotated[int, typer.Option(help="Data-parallel worker processes")] = 1,
    resource: Annotated[
        list[str] | None,
        typer.Option(
            "--resource",
            metavar="NAME=AMOUNT",
            help="A custom resource of the cluster's nodes per worker (Ray), repeatable",
        ),
    ] = None,
    spread: Annotated[
        bool, typer.Option("--spread", help="Each worker on a different node (Ray)")
    ] = False,
    priority: Annotated[int, typer.Option(help="Higher starts first (-1000..1000)")] = 0,
    max_retries: Annotated[
        int | None,
        typer.Option(metavar="K", help="Retries after a crash [default: the server's]"),
    ] = None,
    deadline: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Fail the job after this, e.g. 2h")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run")] = None,
    requirements: Annotated[
        Path | None,
        typer.Option(
            "--requirements",
            metavar="FILE",
            help="Packages to add to the platform's (names with version specifiers)",
        ),
    ] = None,
    pip: Annotated[
        list[str] | None,
        typer.Option(
            "--pip", metavar="SPEC", help="A package to add, e.g. 'tomli==2.0.1', repeatable"
        ),
    ] = None,
    follow_: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Stream logs and progress; exit with the job's outcome"
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Submit a training job and print its id (--json: the job).

    With --follow: stream its logs and progress, then exit 0 if it succeeded, 8 if it failed, 9 if it was cancelled.
    """  # noqa: E501 (one line: rich reflows the help text)
    if dataset is None and not model.endswith(".ipynb") and not model.startswith("code:"):
        raise InvalidInput(  # a code ref may be a notebook's: the server tells
            "--dataset is required: cnn, text, mlp, automl, a script and a directory train "
            "on one; only a notebook (.ipynb) may run without one"
        )
    params = parse_params(param or [])
    packages = read_requirements(requirements, pip or [])
    with client() as api:
        job = api.submit_job(
            dataset,
            model,
            params=params,
            cpus=cpus,
            gpus=gpus,
            memory=memory,
            workers=workers,
            resources=dict(parse_resource(item) for item in resource or []),
            spread=spread,
            priority=priority,
            max_retries=max_retries,
            deadline=deadline,
            seed=seed,
            requirements=packages or None,
        )
        if not follow_:
            emit(job, as_json, lambda _: typer.echo(job.id))  # its id for scripts
            return
        if not as_json:
            console().print(f"Submitted job {job.id} ({job.state}); following it.", markup=False)
        job = follow(api, job.id, logs=not as_json, bars=bar_console(not as_json))
    if as_json:
        print_json(job)
    else:
        ok = job.state is JobState.SUCCEEDED
        console().print(
            summary(job), style="bold green" if ok else "bold red", markup=False, soft_wrap=True
        )
    check_outcome(job)
