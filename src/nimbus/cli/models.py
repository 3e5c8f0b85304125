"""``nimbus models register|import|list|show|card|alias|download|delete`` (the model
registry)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from nimbus.cli.common import JsonOption, client, emit, human_bytes, iso, print_json, transfer

if TYPE_CHECKING:
    from nimbus.wire.models import Model, ModelSummary, ModelVersion

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


def _accuracy(version: ModelVersion) -> Text:
    value = (version.metrics or {}).get("accuracy")
    return Text(f"{value:.4f}" if isinstance(value, int | float) else "-")


def _aliases(aliases: dict[str, int] | list[str]) -> str:
    if isinstance(aliases, dict):
        return ", ".join(f"{a}→{v}" for a, v in aliases.items())
    return ", ".join(str(a) for a in aliases)


def _dataset(version: ModelVersion) -> str | None:
    if version.dataset.name is None:
        return None
    return f"{version.dataset.name}:{version.dataset.version}"


def _job(version: ModelVersion) -> str:
    return version.job if version.job is not None else "imported (no job)"


def models_table(models: Sequence[ModelSummary]) -> Table:
    """``GET /models``: one row per model."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "latest", "versions", "aliases", "created"):
        table.add_column(column)
    for m in models:
        table.add_row(
            _t(m.name),
            _t(m.latest_version),
            _t(m.versions),
            _t(_aliases(m.aliases)),
            _t(iso(m.created_at)),
        )
    return table


def versions_table(versions: Sequence[ModelVersion]) -> Table:
    """A model's versions: one row each, with lineage and accuracy."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("version", "job", "dataset", "accuracy", "aliases", "created"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            _t(v.version),
            _t(_job(v)),
            _t(_dataset(v)),
            _accuracy(v),
            _t(_aliases(v.aliases)),
            _t(iso(v.created_at)),
        )
    return table


def version_view(version: ModelVersion) -> RenderableType:
    """``nimbus models show NAME:V``: one version's facts."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    spec = version.spec
    rows: list[tuple[str, Any]] = [
        ("model", f"{version.model}:{version.version}"),
        ("aliases", _aliases(version.aliases)),
        ("job", _job(version)),
        ("dataset", _dataset(version)),
        ("task", spec.get("task")),
        ("architecture", spec.get("architecture")),
        ("classes", ", ".join(str(c) for c in spec.get("classes") or []) or None),
        ("accuracy", _accuracy(version)),
        ("params", version.params),
        ("code hash", version.code_hash or ("built-in model" if version.job else "-")),
        ("files", ", ".join(f"{n} ({human_bytes(m.size)})" for n, m in version.files.items())),
        ("created", f"{iso(version.created_at)} by {version.created_by or '-'}"),
    ]
    for key, value in rows:
        facts.add_row(key, value if isinstance(value, Text) else _t(value))
    return facts


def model_view(model: Model) -> RenderableType:
    """``nimbus models show NAME``: its aliases, then its versions."""
    title = Text(f"{model.name}  aliases: {_aliases(model.aliases) or '-'}")
    return Group(title, versions_table(model.versions))


DescriptionOption = Annotated[
    str | None, typer.Option("--description", metavar="TEXT", help="Model card: what it is")
]
IntendedUseOption = Annotated[
    str | None,
    typer.Option("--intended-use", metavar="TEXT", help="Model card: what it is for (and not)"),
]
LimitationsOption = Annotated[
    str | None,
    typer.Option("--limitations", metavar="TEXT", help="Model card: known limitations"),
]
EthicsOption = Annotated[
    str | None,
    typer.Option(
        "--ethical-considerations", metavar="TEXT", help="Model card: ethical considerations"
    ),
]


class CardFormat(StrEnum):
    MD = "md"
    JSON = "json"
    HTML = "html"


@app.command("register")
def register(
    name: NameArgument,
    from_job: Annotated[
        str, typer.Option("--from-job", metavar="ID", help="A succeeded training job")
    ],
    description: DescriptionOption = None,
    intended_use: IntendedUseOption = None,
    limitations: LimitationsOption = None,
    ethical_considerations: EthicsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register the model a succeeded job trained as a new version of NAME (its model card
    starting with the text given)."""
    with client() as api:
        version = api.register_model(
            name,
            from_job,
            description=description,
            intended_use=intended_use,
            limitations=limitations,
            ethical_considerations=ethical_considerations,
        )

    def render(out: Console) -> None:
        out.print(
            f"Registered {version.model}:{version.version} from job {version.job}",
            style="green",
            markup=False,
        )
        out.print(version_view(version))

    emit(version, as_json, render)


def _classes(given: str) -> list[str]:
    """``--classes``: a file of class names, one a line, or names separated by commas."""
    path = Path(given)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [name for name in names if name]
    return [name.strip() for name in given.split(",") if name.strip()]


@app.command("import")
def import_(
    name: NameArgument,
    path: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="An ONNX model file")],
    task: Annotated[
        str,
        typer.Option(
            "--task", help="image-classification, text-classification or tabular", metavar="T"
        ),
    ],
    classes: Annotated[
        str,
        typer.Option(
            "--classes",
            metavar="FILE|a,b,c",
            help="Class names in the order of the model's scores: a file (one a line) or a list",
        ),
    ],
    input_layout: Annotated[
        str | None, typer.Option("--input-layout", metavar="NCHW|NHWC", help="Images")
    ] = None,
    scale: Annotated[
        str | None, typer.Option("--scale", metavar="X", help="Pixel factor, e.g. 1/255")
    ] = None,
    mean: Annotated[
        str | None, typer.Option("--mean", metavar="M[,M,M]", help="Subtracted per channel")
    ] = None,
    std: Annotated[
        str | None, typer.Option("--std", metavar="S[,S,S]", help="Divided by per channel")
    ] = None,
    size: Annotated[
        str | None, typer.Option("--size", metavar="HxW", help="Image input size")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Import an ONNX model trained elsewhere (Caffe models: convert to ONNX first) as a new
    version of NAME, checked first (docs/import.md)."""
    names = _classes(classes)
    with client() as api, transfer(f"Importing {path.name}", not as_json) as progress:
        version = api.import_model(
            name,
            path,
            task=task,
            classes=names,
            input_layout=input_layout,
            scale=scale,
            mean=mean,
            std=std,
            size=size,
            progress=progress,
        )

    def render(out: Console) -> None:
        out.print(
            f"Imported {path.name} as {version.model}:{version.version}",
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
    before = result.from_version
    moved = f" (was {before})" if before is not None and before != result.version else ""
    message = f"{result.model}@{result.alias} -> version {result.version}{moved}"
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
        exact = f"{version.model}:{version.version}"
        paths = api.download_model(exact, dir, progress=progress)
    result = {
        "model": version.model,
        "version": version.version,
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
    message = f"Deleted {result.model}:{result.version}"
    emit(result, as_json, lambda out: out.print(message, markup=False))


@app.command("card")
def card(
    ref: RefArgument,
    format: Annotated[
        CardFormat, typer.Option("--format", help="Markdown (Hugging Face layout), JSON or HTML")
    ] = CardFormat.MD,
    description: DescriptionOption = None,
    intended_use: IntendedUseOption = None,
    limitations: LimitationsOption = None,
    ethical_considerations: EthicsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a version's model card; with --description, --intended-use, --limitations or
    --ethical-considerations, first set that text ("" clears it)."""
    edits = {
        "description": description,
        "intended_use": intended_use,
        "limitations": limitations,
        "ethical_considerations": ethical_considerations,
    }
    with client() as api:
        found = None
        if any(value is not None for value in edits.values()):
            found = api.edit_model_card(ref, **edits)
        if as_json or format is CardFormat.JSON:
            print_json(found if found is not None else api.model_card(ref))
            return
        text = api.model_card_text(ref, "md" if format is CardFormat.MD else "html")
    sys.stdout.write(text)
