"""``nimbus predict DEPLOYMENT (FILE|--text TEXT)``: one prediction from a deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nimbus.cli.common import JsonOption, client, emit

MAX_ROWS = 10


def predict(
    deployment: Annotated[str, typer.Argument(metavar="DEPLOYMENT", help="Deployment name")],
    file: Annotated[
        Path | None, typer.Argument(metavar="FILE", help="An image file to classify")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="A text to classify")] = None,
    as_json: JsonOption = False,
) -> None:
    """Send FILE (an image) or --text TEXT to a deployment's /predict; print the label."""
    if (file is None) == (text is None):
        raise typer.BadParameter("give either FILE or --text TEXT", param_hint="'FILE'")
    with client() as api:
        answer = api.predict(deployment, file=file, text=text)

    def render(out: Console) -> None:
        out.print(Text(str(answer.get("label")), style="bold"))
        probabilities = answer.get("probabilities") or {}
        ranked = sorted(probabilities.items(), key=lambda kv: -float(kv[1]))[:MAX_ROWS]
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("class")
        table.add_column("probability", justify="right")
        for label, p in ranked:
            table.add_row(Text(str(label)), f"{float(p):.4f}")
        out.print(table)

    emit(answer, as_json, render)
