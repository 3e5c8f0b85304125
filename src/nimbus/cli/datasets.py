"""``nimbus datasets upload|list|show|datasheet|download|delete``."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from nimbus.cli.common import (
    JsonOption,
    client,
    console,
    emit,
    human_bytes,
    print_json,
    settings,
    transfer,
)
from nimbus.cli.render import datasets_table, version_table
from nimbus.datasets.domain import Format, Task
from nimbus.digests import FileDigest

app = typer.Typer(help="Upload, inspect, download and delete datasets.", no_args_is_help=True)


class SheetFormat(StrEnum):
    MD = "md"
    JSON = "json"
    HTML = "html"


# The datasheet's text (Gebru et al.'s sections): what only a person knows.
MotivationOption = Annotated[
    str | None,
    typer.Option(
        "--motivation", metavar="TEXT", help="Datasheet: why it was made, by whom, for what"
    ),
]
CompositionOption = Annotated[
    str | None,
    typer.Option(
        "--composition",
        metavar="TEXT",
        help="Datasheet: what an example is; what is missing, noisy or sensitive",
    ),
]
CollectionOption = Annotated[
    str | None,
    typer.Option(
        "--collection-process",
        metavar="TEXT",
        help="Datasheet: how it was collected, sampled and labelled, and when",
    ),
]
UsesOption = Annotated[
    str | None,
    typer.Option("--uses", metavar="TEXT", help="Datasheet: what it is for, and not for"),
]
LicenseOption = Annotated[
    str | None,
    typer.Option("--license", metavar="TEXT", help="Datasheet: its licence and terms of use"),
]


RefArgument = Annotated[
    str, typer.Argument(metavar="NAME[:V]", help="A dataset (its latest version) or NAME:VERSION")
]


@app.command("upload")
def upload(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Dataset name (a-z, 0-9, '.', '_', '-')")
    ],
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="A file (zip, tar, csv, npz, …) or a directory")
    ],
    task: Annotated[Task | None, typer.Option(help="[default: detected]")] = None,
    format: Annotated[Format | None, typer.Option(help="[default: detected]")] = None,
    label: Annotated[str | None, typer.Option(help="Label column of tabular data")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the train/val/test split")] = None,
    image_size: Annotated[
        str | None,
        typer.Option(
            metavar="HxW", help="Size images are brought to [default: from the data's median]"
        ),
    ] = None,
    image_fit: Annotated[
        str | None,
        typer.Option(metavar="crop|pad", help="How images of another shape fit [default: crop]"),
    ] = None,
    group_column: Annotated[
        str | None,
        typer.Option(
            metavar="COLUMN",
            help="A sensitive attribute's column (tables, text): metrics per group, not a feature",
        ),
    ] = None,
    motivation: MotivationOption = None,
    composition: CompositionOption = None,
    collection_process: CollectionOption = None,
    uses: UsesOption = None,
    license: LicenseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload PATH as a new version of dataset NAME (a directory is sent as a .tar), its
    datasheet starting with the text given."""
    config = settings()
    # A large file's hash begins now, on the second core, while the SDK loads: a direct
    # upload needs it before its first part.
    digest = FileDigest.begin(path, config.direct_min_bytes)
    with (
        client(config) as api,
        transfer(
            f"uploading {path.name}", not as_json, after="server is preparing the data"
        ) as progress,
    ):
        version = api.upload_dataset(
            name,
            path,
            task=task,
            format=format,
            label=label,
            seed=seed,
            progress=progress,
            image_size=image_size,
            image_fit=image_fit,
            group_column=group_column,
            motivation=motivation,
            composition=composition,
            collection_process=collection_process,
            uses=uses,
            license=license,
            digest=digest,
        )

    def render(out: Console) -> None:
        out.print(f"Uploaded {version.dataset}:{version.version}", style="green", markup=False)
        out.print(version_table(version))

    emit(version, as_json, render)


@app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """List datasets with their latest version."""
    with client() as api:
        items = api.list_datasets()
    emit({"datasets": items}, as_json, lambda out: out.print(datasets_table(items)))


@app.command("show")
def show(ref: RefArgument, as_json: JsonOption = False) -> None:
    """Show a version: task, format, classes, split sizes, per-class counts, schema, hash."""
    with client() as api:
        version = api.get_version(ref)
    emit(version, as_json, lambda out: out.print(version_table(version)))


@app.command("download")
def download(
    ref: RefArgument,
    dir: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write the files")],
    as_json: JsonOption = False,
) -> None:
    """Download a version's source and prepared files (hash-checked) into DIR."""
    with client() as api, transfer(f"downloading {ref}", not as_json) as progress:
        version = api.get_version(ref)
        exact = f"{version.dataset}:{version.version}"
        paths = api.download_dataset(exact, dir, progress=progress)
    result = {
        "dataset": version.dataset,
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
    ref: RefArgument,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Erase NAME:V and what was made from it: its jobs' artifacts, checkpoints "
            "and logs, the model versions registered from them (listed, then confirmed)",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm the purge without asking")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete one version (NAME:V) or a whole dataset with all its versions (NAME)."""
    if purge:
        _purge(ref, yes, as_json)
        return
    from nimbus.wire.datasets import DatasetDeleted

    with client() as api:
        result = api.delete_dataset(ref)
    if isinstance(result, DatasetDeleted):
        versions = ", ".join(str(v) for v in result.deleted_versions)
        message = f"Deleted dataset {result.name} (versions {versions or 'none'})"
    else:
        message = f"Deleted {result.dataset}:{result.version}"
    emit(result, as_json, lambda out: out.print(message, markup=False))


def _purge(ref: str, yes: bool, as_json: bool) -> None:
    with client() as api:
        listed = api.derived_from(ref)
        if not yes:
            shown = console()
            shown.print(f"Purging {listed.dataset} deletes:", markup=False)
            for label, items in (
                ("jobs' artifacts, checkpoints and logs", listed.jobs),
                ("model versions", listed.model_versions),
            ):
                shown.print(f"  {label}: {', '.join(items) or 'none'}", markup=False)
            if listed.deployments:
                shown.print(f"  (served by {', '.join(listed.deployments)}: refused)")
            if not typer.confirm("Delete all of it?", default=False):
                typer.echo("error: not confirmed; nothing was deleted", err=True)
                raise typer.Exit(1)
        purged = api.purge_dataset_version(ref, listed.fingerprint)
    message = (
        f"Purged {purged.dataset}: {len(purged.jobs)} job(s)' outputs, "
        f"{len(purged.model_versions)} model version(s), {purged.deleted_blobs} blob(s) deleted"
    )
    emit(purged, as_json, lambda out: out.print(message, markup=False))


@app.command("datasheet")
def datasheet(
    ref: RefArgument,
    format: Annotated[
        SheetFormat, typer.Option("--format", help="Markdown (Hugging Face layout), JSON or HTML")
    ] = SheetFormat.MD,
    motivation: MotivationOption = None,
    composition: CompositionOption = None,
    collection_process: CollectionOption = None,
    uses: UsesOption = None,
    license: LicenseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a version's datasheet: source, format, size, per-class counts, splits and how
    they were made, hashes, who uploaded it and when; with --motivation, --composition,
    --collection-process, --uses or --license, first set that text ("" clears it)."""
    edits = {
        "motivation": motivation,
        "composition": composition,
        "collection_process": collection_process,
        "uses": uses,
        "license": license,
    }
    with client() as api:
        found = None
        if any(value is not None for value in edits.values()):
            found = api.edit_datasheet(ref, **edits)
        if as_json or format is SheetFormat.JSON:
            print_json(found if found is not None else api.datasheet(ref))
            return
        text = api.datasheet_markdown(ref, "md" if format is SheetFormat.MD else "html")
    sys.stdout.write(text)
