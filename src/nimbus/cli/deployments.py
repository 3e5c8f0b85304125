"""``nimbus deployments list|show|update|delete``, and the views ``nimbus deploy`` shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from nimbus.cli.common import JsonOption, client, emit, iso

if TYPE_CHECKING:
    from nimbus.wire.deployments import Deployment

app = typer.Typer(
    help="Inspect, update (rolling) and delete model deployments.", no_args_is_help=True
)

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="Deployment name")]
ModelArgument = Annotated[
    str, typer.Argument(metavar="MODEL[:V|@ALIAS]", help="NAME:VERSION, NAME@ALIAS or NAME")
]
WaitOption = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Wait until every replica is ready.")
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", metavar="SECONDS", help="How long --wait waits.")
]


def _t(value: Any) -> Text:
    return Text("-" if value is None or value == "" else str(value))


def _model(deployment: Deployment) -> str:
    return f"{deployment.model}:{deployment.model_version}"


def _replicas(deployment: Deployment) -> str:
    ready = sum(1 for r in deployment.replicas if r.state == "ready")
    return f"{ready}/{deployment.desired_replicas}"


def deployments_table(deployments: Sequence[Deployment]) -> Table:
    """``GET /deployments``: one row per deployment."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "model", "asked", "state", "ready", "endpoint", "public"):
        table.add_column(column)
    for d in deployments:
        table.add_row(
            _t(d.name),
            _t(_model(d)),
            _t(d.model_ref),
            _t(d.state),
            _t(_replicas(d)),
            _t(d.endpoint),
            _t("yes" if d.public else "no"),
        )
    return table


def deployment_view(deployment: Deployment) -> RenderableType:
    """``nimbus deployments show``: its facts, then one row per replica."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    rows: list[tuple[str, Any]] = [
        ("deployment", deployment.name),
        ("model", f"{_model(deployment)} (asked {deployment.model_ref})"),
        ("state", deployment.state),
        ("endpoint", deployment.endpoint),
        ("replicas", f"{_replicas(deployment)} ready"),
        (
            "batching",
            f"up to {deployment.max_batch_size} requests, {deployment.max_delay_ms} ms",
        ),
        ("runtime", deployment.runtime),
        ("public", "yes" if deployment.public else "no (a tenant token is needed)"),
        ("created", iso(deployment.created_at)),
        ("updated", iso(deployment.updated_at)),
    ]
    for key, value in rows:
        facts.add_row(key, _t(value))
    replicas = Table(box=box.SIMPLE_HEAD, title="replicas", title_justify="left")
    for column in ("index", "state", "version", "pid", "restarts"):
        replicas.add_column(column)
    for r in deployment.replicas:
        replicas.add_row(
            _t(r.index),
            _t(r.state),
            _t(r.model_version),
            _t(r.pid),
            _t(r.restarts),
        )
    return Group(facts, "", replicas)


@app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """List deployments: model version, state, ready replicas, endpoint."""
    with client() as api:
        items = api.list_deployments()
    emit({"deployments": items}, as_json, lambda out: out.print(deployments_table(items)))


@app.command("show")
def show(name: NameArgument, as_json: JsonOption = False) -> None:
    """Show a deployment and its replicas."""
    with client() as api:
        deployment = api.get_deployment(name)
    emit(deployment, as_json, lambda out: out.print(deployment_view(deployment)))


@app.command("update")
def update(
    name: NameArgument,
    model: ModelArgument,
    replicas: Annotated[int | None, typer.Option(min=1, max=32, help="Replica count")] = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Roll deployment NAME to MODEL, replica by replica (an alias is resolved now)."""
    with client() as api:
        deployment = api.update_deployment(name, model, replicas=replicas)
        if wait:
            deployment = api.wait_deployment(
                name, timeout=timeout, version=deployment.model_version
            )

    def render(out: Console) -> None:
        out.print(
            f"Deployment {name} now serves {_model(deployment)} ({deployment.state})",
            markup=False,
        )

    emit(deployment, as_json, render)


@app.command("rollback")
def rollback(name: NameArgument, as_json: JsonOption = False) -> None:
    """Serve again the model version served before the last model change."""
    with client() as api:
        deployment = api.rollback_deployment(name)
    message = f"Rolling back deployment {name} to {deployment.model}:{deployment.model_version}"
    emit(deployment, as_json, lambda out: out.print(message, markup=False))


@app.command("delete")
def delete(name: NameArgument, as_json: JsonOption = False) -> None:
    """Stop a deployment: its replicas drain and exit, the port is freed."""
    with client() as api:
        deployment = api.delete_deployment(name)
    message = f"Deleted deployment {name} ({deployment.state})"
    emit(deployment, as_json, lambda out: out.print(message, markup=False))
