"""``nimbus models register|list|show|alias|download|delete`` (the model registry)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from nimbus.cli.common import JsonOption, client, emit, human_bytes, transfer

app = typer.Typer(
    help="Register trained models as versions, alias, download and delete them.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="Model name")]
RefArgument = Annotated[
    str,
    typer.Argument(metavar="NAME[:V|@ALIAS]", help="A model, NAME:VERSION or NAME@ALIAS"),
]


def _t(value: Any) -> Text:
    return Text("-" if value is None or value == "" else str(value))


def _accuracy(version: dict[str, Any]) -> Text:
    value = (version.get("metrics") or {}).get("accuracy")
    return Text(f"{value:.4f}" if isinstance(value, int | float) else "-")


def _aliases(aliases: Any) -> str:
    if isinstance(aliases, dict):
        return ", ".join(f"{a}→{v}" for a, v in aliases.items())
    return ", ".join(str(a) for a in aliases or [])


def models_table(models: Sequence[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "latest", "versions", "aliases", "created"):
        table.add_column(column)
    for m in models:
        table.add_row(
            _t(m.get("name")),
            _t(m.get("latest_version")),
            _t(m.get("versions")),
            _t(_aliases(m.get("aliases"))),
            _t(m.get("created_at")),
        )
    return table


def versions_table(versions: Sequence[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("version", "job", "dataset", "accuracy", "aliases", "created"):
        table.add_column(column)
    for v in versions:
        dataset = v.get("dataset") or {}
        table.add_row(
            _t(v.get("version")),
            _t(v.get("job")),
            _t(f"{dataset.get('name')}:{dataset.get('version')}" if dataset else None),
            _accuracy(v),
            _t(_aliases(v.get("aliases"))),
            _t(v.get("created_at")),
        )
    return table


def version_view(version: dict[str, Any]) -> RenderableType:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    dataset = version.get("dataset") or {}
    spec = version.get("spec") or {}
    files = version.get("files") or {}
    rows: list[tuple[str, Any]] = [
        ("model", f"{version.get('model')}:{version.get('version')}"),
        ("aliases", _aliases(version.get("aliases"))),
        ("job", version.get("job")),
        ("dataset", f"{dataset.get('name')}:{dataset.get('version')}" if dataset else None),
        ("task", spec.get("task")),
        ("architecture", spec.get("architecture")),
        ("classes", ", ".join(str(c) for c in spec.get("classes") or []) or None),
        ("accuracy", _accuracy(version)),
        ("params", version.get("params")),
        ("code hash", version.get("code_hash") or "built-in model"),
        ("files", ", ".join(f"{n} ({human_bytes(m.get('size'))})" for n, m in files.items())),
        ("created", f"{version.get('created_at', '-')} by {version.get('created_by') or '-'}"),
    ]
    for key, value in rows:
        facts.add_row(key, value if isinstance(value, Text) else _t(value))
    return facts


def model_view(model: dict[str, Any]) -> RenderableType:
    title = Text(f"{model.get('name')}  aliases: {_aliases(model.get('aliases')) or '-'}")
    return Group(title, versions_table(model.get("versions") or []))


@app.command("register")
def register(
    name: NameArgument,
    from_job: Annotated[
        str, typer.Option("--from-job", metavar="ID", help="A succeeded training job")
    ],
    as_json: JsonOption = False,
) -> None:
    """Register the model a succeeded job trained as a new version of NAME."""
    with client() as api:
        version = api.register_model(name, from_job)

    def render(out: Console) -> None:
        out.print(
            f"Registered {version['model']}:{version['version']} from job {version.get('job')}",
            style="green",
            markup=False,
        )
        out.print(version_view(version))

    emit(version, as_json, render)


@app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """List models with their latest version and aliases."""
    with client() as api:
        items = api.list_models()
    emit({"models": items}, as_json, lambda out: out.print(models_table(items)))


@app.command("show")
def show(ref: RefArgument, as_json: JsonOption = False) -> None:
    """Show a model (NAME: its versions and aliases) or one version (NAME:V, NAME@ALIAS)."""
    with client() as api:
        if ":" in ref or "@" in ref:
            version = api.get_model_version(ref)
            emit(version, as_json, lambda out: out.print(version_view(version)))
            return
        model = api.get_model(ref)
    emit(model, as_json, lambda out: out.print(model_view(model)))


@app.command("alias")
def alias(
    name: NameArgument,
    alias_: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. production")],
    version: Annotated[int, typer.Argument(metavar="V", help="The version it points to")],
    as_json: JsonOption = False,
) -> None:
    """Point ALIAS of model NAME at version V."""
    with client() as api:
        result = api.set_alias(name, alias_, version)
    before = result.get("from_version")
    moved = f" (was {before})" if before is not None and before != result["version"] else ""
    message = f"{result['model']}@{result['alias']} -> version {result['version']}{moved}"
    emit(result, as_json, lambda out: out.print(message, markup=False))


@app.command("download")
def download(
    ref: RefArgument,
    dir: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write the files")],
    as_json: JsonOption = False,
) -> None:
    """Download a version's files (spec, safetensors weights, ONNX; hash-checked) into DIR."""
    with client() as api, transfer(f"downloading {ref}", not as_json) as progress:
        version = api.get_model_version(ref)
        exact = f"{version['model']}:{version['version']}"
        paths = api.download_model(exact, dir, progress=progress)
    result = {
        "model": version["model"],
        "version": version["version"],
        "dir": str(dir),
        "files": [str(p) for p in paths],
    }

    def render(out: Console) -> None:
        out.print(f"Downloaded {exact} into {dir}:", markup=False)
        for p in paths:
            out.print(f"  {p.name}  {human_bytes(p.stat().st_size)}", markup=False)

    emit(result, as_json, render)


@app.command("delete")
def delete(
    ref: Annotated[str, typer.Argument(metavar="NAME:V", help="The version to delete")],
    as_json: JsonOption = False,
) -> None:
    """Delete one version (refused while a deployment serves it); aliases to it go too."""
    with client() as api:
        result = api.delete_model_version(ref)
    message = f"Deleted {result.get('model')}:{result.get('version')}"
    emit(result, as_json, lambda out: out.print(message, markup=False))
