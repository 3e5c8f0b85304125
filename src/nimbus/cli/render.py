"""Rich tables for API objects, shared by the commands and ``nimbus demo``.

User-provided strings go in as :class:`rich.text.Text` so brackets in class names are never
read as markup.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from nimbus.cli.common import human_bytes, iso
from nimbus.cli.render_fairness import DISPARITIES, fairness_view, worst

if TYPE_CHECKING:
    from nimbus.wire.datasets import DatasetSummary, DatasetVersion, Split
    from nimbus.wire.jobs import Job, JobDataset, MetricPoint
    from nimbus.wire.tokens import Token

MAX_CLASS_ROWS = 40


def _t(value: Any) -> Text:
    return Text("-" if value is None or value == "" else str(value))


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _schema(schema: Any) -> str:
    if isinstance(schema, dict) and {"shape", "dtype"} <= schema.keys():
        shape = "x".join(str(d) for d in schema["shape"])
        rest = {k: v for k, v in schema.items() if k not in ("shape", "dtype")}
        return f"{shape} {schema['dtype']}" + (f"  {_short(rest)}" if rest else "")
    return _short(schema)


def version_table(version: DatasetVersion) -> RenderableType:
    """A dataset version: its facts, then a class x split table of counts."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    classes = list(version.classes)
    source = version.files.get("source")
    source_name = (source.name if source else None) or "-"
    rows: list[tuple[str, Any]] = [
        ("dataset", f"{version.dataset}:{version.version}"),
        ("task", version.task),
        ("format", version.format),
        ("classes", f"{len(classes)}: {_short(', '.join(classes), 80)}" if classes else None),
        ("schema", _schema(version.data_schema)),
        ("size", human_bytes(version.size_bytes)),
        ("content hash", version.content_hash),
        (
            "source",
            f"{source_name} ({human_bytes(source.size if source else None)}), "
            f"sha256 {version.source_hash[:16]}…",
        ),
        ("split source", version.split_source),
        ("stats", _short(version.stats) if version.stats else None),
        ("created", f"{iso(version.created_at)} by {version.created_by or '-'}"),
    ]
    for key, value in rows:
        facts.add_row(key, _t(value))
    return Group(facts, "", splits_table(version.splits, classes))


def splits_table(splits: dict[str, Split], classes: Sequence[str]) -> Table:
    """Rows are classes, columns splits; the last row holds each split's size."""
    names = list(splits)
    table = Table(box=box.SIMPLE_HEAD, title="examples per split and class", title_justify="left")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    shown = list(classes)[:MAX_CLASS_ROWS]
    for cls in shown:
        table.add_row(_t(cls), *(_t(splits[n].per_class.get(cls, 0)) for n in names))
    if len(classes) > len(shown):
        table.add_row(Text(f"… {len(classes) - len(shown)} more classes"), *("" for _ in names))
    table.add_section()
    table.add_row(Text("total", style="bold"), *(_t(splits[n].size) for n in names))
    return table


def datasets_table(datasets: Sequence[DatasetSummary]) -> Table:
    """``GET /datasets``: one row per dataset."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "latest", "versions", "created"):
        table.add_column(column)
    for item in datasets:
        table.add_row(
            _t(item.name), _t(item.latest_version), _t(item.versions), _t(iso(item.created_at))
        )
    return table


def tokens_table(tokens: Sequence[Token]) -> Table:
    """``GET /tokens``: one row per token (secrets are never listed)."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "name", "role", "tenant", "created", "revoked"):
        table.add_column(column)
    for tok in tokens:
        table.add_row(
            *map(
                _t,
                (tok.id, tok.name, tok.role, tok.tenant, iso(tok.created_at), iso(tok.revoked_at)),
            )
        )
    return table


# -- jobs ----------------------------------------------------------------------------------

STATE_STYLES = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}
MAX_MATRIX_CLASSES = 20
SUMMARY_METRICS = (
    ("accuracy", "accuracy"),
    ("precision_macro", "precision (macro)"),
    ("recall_macro", "recall (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("precision_weighted", "precision (weighted)"),
    ("recall_weighted", "recall (weighted)"),
    ("f1_weighted", "F1 (weighted)"),
)
CURVE_COLUMNS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def _num(value: Any, digits: int = 4) -> Text:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _t(value)
    return Text(f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def _state(state: Any) -> Text:
    return Text(str(state or "-"), style=STATE_STYLES.get(str(state), ""))


def duration(start: datetime | None, end: datetime | None) -> str:
    """'1m 05s' between two times ('-' when either is missing)."""
    if start is None or end is None:
        return "-"
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _gib(size: Any) -> Any:
    """Memory as the binary units jobs are asked for in (4G means 4 GiB)."""
    if not isinstance(size, int | float) or isinstance(size, bool):
        return size
    for unit, scale in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size >= scale:
            return f"{size / scale:.3g}{unit}"
    return f"{size:g}"


def dataset_label(dataset: JobDataset | None) -> str:
    """``name:version`` of a job's dataset."""
    return "-" if dataset is None else f"{dataset.name}:{dataset.version}"


def model_label(model: str) -> str:
    text = model or "-"
    return f"{text[:19]}…" if text.startswith("code:") and len(text) > 20 else text


def jobs_table(jobs: Sequence[Job]) -> Table:
    """``GET /jobs``: one row per job, newest first."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "state", "model", "dataset", "attempts", "created", "took", "accuracy"):
        table.add_column(column, justify="right" if column == "accuracy" else "left")
    for job in jobs:
        evaluation = job.evaluation or {}
        table.add_row(
            _t(job.id),
            _state(job.state),
            _t(model_label(job.model)),
            _t(dataset_label(job.dataset)),
            _t(job.attempts),
            _t(iso(job.created_at)),
            _t(duration(job.started_at, job.finished_at)),
            _num(evaluation.get("accuracy")),
        )
    return table


def job_view(job: Job) -> RenderableType:
    """``nimbus jobs show``: facts, timings, params, then the evaluation (if any)."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    res = job.resources
    shown = {"cpus": res.cpus, "gpus": res.gpus, "memory": res.memory, "workers": res.workers}
    resources = ", ".join(
        f"{key} {_gib(value) if key == 'memory' else value}"
        for key, value in shown.items()
        if value
    )
    resources += "".join(f", {name} {amount:g}" for name, amount in res.custom.items())
    if res.spread:
        resources += ", spread"
    rows: list[tuple[str, Any]] = [
        ("job", job.id),
        ("state", None),
        ("model", job.model),
        ("dataset", dataset_label(job.dataset)),
        ("resources", resources or None),
        ("priority", job.priority),
        ("attempts", f"{job.attempts} (retries allowed: {job.max_retries})"),
        ("seed", job.seed),
        ("created", iso(job.created_at)),
        ("started", iso(job.started_at)),
        ("finished", iso(job.finished_at)),
        ("took", duration(job.started_at, job.finished_at)),
        ("deadline", iso(job.deadline_at)),
        ("exit reason", job.exit_reason),
    ]
    if job.isolation == "none":
        rows.append(("isolation", "NONE: jobs run unisolated as the server's user"))
    for key, value in rows:
        facts.add_row(key, _state(job.state) if key == "state" else _t(value))
    if job.params:
        facts.add_row(
            "params", Text(", ".join(f"{k}={_short(v, 40)}" for k, v in job.params.items()))
        )
    if job.environment is not None:
        facts.add_row("requirements", Text(", ".join(job.environment.requirements)))
        lock = job.environment.lock
        facts.add_row("resolved", Text(" ".join(lock) if lock else "not yet"))
    if job.artifacts:
        names = ", ".join(f"{a.name} ({human_bytes(a.size)})" for a in job.artifacts)
        facts.add_row("artifacts", Text(names))
    for w in job.workers:  # where each worker ran, per attempt (the Ray executor's nodes)
        facts.add_row(
            "worker", Text(f"attempt {w.attempt} rank {w.rank}: node {w.node} ({w.address})")
        )
    parts: list[RenderableType] = [facts]
    evaluation = job.evaluation
    if evaluation:
        parts += ["", evaluation_view(evaluation)]
        if isinstance(evaluation.get("automl"), dict):  # an AutoML job's leaderboard
            parts += ["", leaderboard_view(evaluation["automl"])]
    else:
        parts += ["", Text("no evaluation yet", style="dim")]
    return Group(*parts)


def evaluation_view(evaluation: dict[str, Any]) -> RenderableType:
    """Scores on the test split: summary, per-class figures and the confusion matrix."""
    summary = Table(box=box.SIMPLE_HEAD, title="evaluation on the test split", title_justify="left")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key, label in SUMMARY_METRICS:
        if key in evaluation:
            summary.add_row(label, _num(evaluation[key]))
    if "support" in evaluation:
        summary.add_row("examples", _t(evaluation["support"]))
    parts: list[RenderableType] = [summary]
    per_class = evaluation.get("per_class") or {}
    if per_class:
        parts.append(per_class_table(per_class))
    classes = [str(c) for c in evaluation.get("classes") or per_class]
    matrix = evaluation.get("confusion_matrix")
    if matrix and classes:
        parts.append(confusion_table(matrix, classes))
    if evaluation.get("fairness"):
        parts.append(fairness_view(evaluation["fairness"]))
    return Group(*parts)


def per_class_table(per_class: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="per class", title_justify="left")
    table.add_column("class")
    for column in ("precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    names = list(per_class)
    for name in names[:MAX_CLASS_ROWS]:
        row = per_class[name] or {}
        table.add_row(
            _t(name),
            _num(row.get("precision")),
            _num(row.get("recall")),
            _num(row.get("f1")),
            _t(row.get("support")),
        )
    if len(names) > MAX_CLASS_ROWS:
        table.add_row(Text(f"… {len(names) - MAX_CLASS_ROWS} more classes"), "", "", "", "")
    return table


def confusion_table(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> RenderableType:
    """Rows: the true class; columns: the predicted one. The diagonal is what went right."""
    if len(classes) > MAX_MATRIX_CLASSES:
        return Text(
            f"confusion matrix: {len(classes)} classes, too many to draw (see --json)",
            style="dim",
        )
    table = Table(
        box=box.SIMPLE_HEAD,
        title="confusion matrix (rows: true class, columns: predicted)",
        title_justify="left",
    )
    table.add_column("true \\ pred")
    for name in classes:
        table.add_column(Text(_short(name, 12)), justify="right")
    for i, (name, row) in enumerate(zip(classes, matrix, strict=False)):
        cells = [
            Text(str(n), style="bold green" if i == j else ("red" if n else "dim"))
            for j, n in enumerate(row)
        ]
        table.add_row(Text(_short(name, 16)), *cells)
    return table


def metric_rows(
    metrics: dict[str, list[MetricPoint]],
) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """Per step, each metric's value from the latest attempt that logged it.

    Returns the metric names (training curves first) and ``{step: {name: value}}``.
    """
    rows: dict[int, dict[str, Any]] = {}
    attempt_of: dict[tuple[int, str], int] = {}
    for name, points in metrics.items():
        for point in points:
            step, attempt = point.step, point.attempt
            if attempt >= attempt_of.get((step, name), -1):
                attempt_of[(step, name)] = attempt
                rows.setdefault(step, {})[name] = point.value
    names = [n for n in CURVE_COLUMNS if n in metrics]
    names += sorted(n for n in metrics if n not in names)
    return names, dict(sorted(rows.items()))


def metrics_table(metrics: dict[str, list[MetricPoint]]) -> RenderableType:
    """``nimbus jobs metrics``: one row per epoch, one column per metric."""
    names, rows = metric_rows(metrics)
    if not rows:
        return Text("no metrics yet", style="dim")
    table = Table(box=box.SIMPLE_HEAD, title="training curves", title_justify="left")
    table.add_column("epoch", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for step, values in rows.items():
        table.add_row(str(step), *(_num(values.get(n)) for n in names))
    return table


def compare_table(jobs: Sequence[Job]) -> Table:
    """``nimbus jobs compare``: one column per job; key scores, then params (differing ones
    in bold); the best score of each row is green."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("")
    for job in jobs:
        table.add_column(Text(job.id), justify="right")

    def facts(label: str, values: list[Any]) -> None:
        table.add_row(Text(label, style="bold"), *(_t(v) for v in values))

    facts("state", [j.state for j in jobs])
    facts("model", [model_label(j.model) for j in jobs])
    facts("dataset", [dataset_label(j.dataset) for j in jobs])
    facts("attempts", [j.attempts for j in jobs])
    facts("took", [duration(j.started_at, j.finished_at) for j in jobs])
    table.add_section()
    for key, label in SUMMARY_METRICS:
        values = [(j.evaluation or {}).get(key) for j in jobs]
        numbers = [v for v in values if isinstance(v, int | float)]
        best = max(numbers) if len(numbers) > 1 else None
        cells = [_num(v) for v in values]
        for cell, value in zip(cells, values, strict=True):
            if best is not None and value == best:
                cell.stylize("bold green")
        table.add_row(Text(label, style="bold"), *cells)
    for key, label in DISPARITIES:  # smaller is fairer
        gaps = worst([j.evaluation for j in jobs], key)
        if any(g is not None for g in gaps):
            known = [g for g in gaps if g is not None]
            cells = [_num(g) for g in gaps]
            for cell, gap in zip(cells, gaps, strict=True):
                if len(known) > 1 and gap == min(known):
                    cell.stylize("bold green")
            table.add_row(Text(label, style="bold"), *cells)
    table.add_section()
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.params if k not in keys]
    for key in keys:
        values = [j.params.get(key) for j in jobs]
        differs = len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1
        table.add_row(
            Text(key, style="bold yellow" if differs else ""),
            *(_t(_short(v, 30) if v is not None else None) for v in values),
        )
    return table


def leaderboard_view(board: dict[str, Any], top: int = 15) -> RenderableType:
    """An AutoML job's leaderboard: the best ``top`` trials, best first."""
    title = (
        f"leaderboard: {board.get('trials')} trials in {board.get('search_seconds')} s "
        f"(budget {board.get('budget_seconds')} s), {board.get('metric')} on "
        f"{board.get('validation', 'the val split')}"
    )
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left")
    for column in ("rank", "trial", "family", "score", "fit s", "params"):
        table.add_column(column, justify="left" if column in ("family", "params") else "right")
    rows = list(board.get("leaderboard") or [])
    winner = (board.get("best") or {}).get("trial")
    for rank, row in enumerate(rows[:top], start=1):
        score = row.get("score")
        params = ", ".join(f"{k}={v}" for k, v in (row.get("params") or {}).items())
        table.add_row(
            f"{rank}*" if row.get("trial") == winner else str(rank),
            str(row.get("trial")),
            str(row.get("family")),
            "failed" if score is None else f"{score:.4f}",
            f"{row.get('fit_seconds', 0):.3f}",
            Text(params),
        )
    parts: list[RenderableType] = [table]
    if len(rows) > top:
        parts.append(Text(f"... and {len(rows) - top} more", style="dim"))
    if winner is not None and board.get("chosen_by"):
        parts.append(Text(f"* the model: trial {winner}, {board['chosen_by']}"))
    if board.get("resumed_trials"):
        parts.append(Text(f"{board['resumed_trials']} trials carried from an earlier attempt"))
    registered = board.get("registered") or {}
    name = registered.get("model")
    if "version" in registered:
        parts.append(Text(f"registered as {name}:{registered['version']}"))
    elif registered:
        parts.append(Text(f"not registered as {name}: {registered.get('error')}"))
    return Group(*parts)
