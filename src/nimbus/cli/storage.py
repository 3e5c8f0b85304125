"""``nimbus storage sweep``: collect the blob store's garbage now (operators)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nimbus.cli.common import JsonOption, client, emit

if TYPE_CHECKING:
    from nimbus.wire.storage import SweepReport

app = typer.Typer(help="Look after the blob store.", no_args_is_help=True)


def report_table(report: SweepReport) -> Table:
    table = Table(title=f"Blob sweep (grace {report.grace_seconds:g} s)", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, value in report.model_dump().items():
        if name != "grace_seconds":
            table.add_row(name.replace("_", " "), str(value))
    return table


@app.command("sweep")
def sweep(
    grace: Annotated[
        float | None,
        typer.Option(
            "--grace",
            min=0,
            help="Seconds a blob must have been unreferenced (and an upload pin held) before "
            "it goes [default: the server's NIMBUS_BLOB_GRACE_SECONDS]; 0 fails uploads in flight",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Delete blobs nothing refers to, upload pins left by crashes and stale staging files
    (operators: admins of tenant 'default')."""
    with client() as api:
        report = api.sweep_storage(grace)
    emit(report, as_json, lambda out: out.print(report_table(report)))
