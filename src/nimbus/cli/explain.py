"""``nimbus explain DEPLOYMENT (FILE|--text TEXT|--features ...)``: a prediction and why."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nimbus.cli.common import JsonOption, client, emit

MAX_ROWS = 15


def explain(
    deployment: Annotated[str, typer.Argument(metavar="DEPLOYMENT", help="Deployment name")],
    file: Annotated[
        Path | None, typer.Argument(metavar="FILE", help="An image file to explain")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="A text to explain")] = None,
    features: Annotated[
        str | None,
        typer.Option(
            "--features", metavar="X,Y,..|NAME=X,..", help="A row of a tabular model's features"
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="integrated_gradients (default for images and text), occlusion (images, "
            "text), smoothgrad (images), shapley (default for tables)"
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option(metavar="CLASS", help="The class to explain (default: the label)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Integrated Gradients' steps")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="PNG", help="Write an image's heat overlay")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Send one example to a deployment's /explain: its label, and what it rests on (an
    image's heat map with --out, a text's words, a table's features)."""
    if sum(x is not None for x in (file, text, features)) != 1:
        raise typer.BadParameter("give one of FILE, --text or --features", param_hint="'FILE'")
    if out is not None and file is None:
        raise typer.BadParameter("--out writes an image's overlay: give FILE", param_hint="--out")
    row = _features(features) if features is not None else None
    options: dict[str, Any] = {"method": method, "target": target, "steps": steps}
    with client() as api:
        answer = api.explain(
            deployment, file, text=text, features=row, overlay=out is not None, **options
        )
    if out is not None:
        out.write_bytes(base64.b64decode(answer.pop("overlay_png")))
    emit(answer, as_json, lambda console: _render(console, answer, out))


def _features(given: str) -> list[float] | dict[str, float]:
    parts = [p.strip() for p in given.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(
            "features are numbers: X,Y,... or NAME=X,...", param_hint="--features"
        ) from None


def _render(out: Console, answer: dict[str, Any], overlay: Path | None) -> None:
    probability = float((answer.get("probabilities") or {}).get(answer.get("target"), 0.0))
    out.print(Text.assemble((str(answer.get("label")), "bold"), f"  ({answer.get('method')})"))
    out.print(Text(f"explaining {answer.get('target')} (p = {probability:.4f})"))
    if "words" in answer:
        line = Text()
        for word, score in answer["words"]:
            line.append(word, style="green" if score > 0 else "red" if score < 0 else "")
            line.append(f"({score:+.3f}) ")
        out.print(line)
    elif "features" in answer:
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("feature")
        table.add_column("attribution", justify="right")
        ranked = sorted(answer["features"].items(), key=lambda kv: -abs(float(kv[1])))
        for name, score in ranked[:MAX_ROWS]:
            table.add_row(Text(str(name)), f"{float(score):+.4f}")
        out.print(table)
    elif overlay is not None:
        out.print(f"heat overlay written to {overlay} (red: for the class, blue: against)")
    else:
        out.print("attributions per pixel: --json shows them, --out PNG draws them")
    delta = answer.get("completeness_delta")
    if delta is not None:
        out.print(f"completeness error {float(delta):+.2e}", style="dim")
