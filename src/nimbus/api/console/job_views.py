"""What the job pages draw, as plain functions of the job's data: which chart a metric goes
in, the charts' series, the evaluation's rows, the confusion matrix's shading, and the
side-by-side rows of a comparison with their differences marked."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nimbus.services.card_content import OVERALL
from nimbus.services.job_watch import MetricPoint
from nimbus.wire import jobs as wire

CHARTS = ("loss", "accuracy", "other")
_ACCURACY_LIKE = ("acc", "f1", "precision", "recall", "auc", "score")
# The evaluation's figures in the order people look for them (a model card's overall
# figures, then the support); others follow by name.
EVALUATION_ORDER = (*OVERALL, "support")


def chart_of(name: str) -> str:
    """The chart a metric is drawn in: ``loss`` (loss-like), ``accuracy`` (scores in
    [0, 1] that grow), or ``other`` (learning rate, best epoch, ...). Mirrored in job.js."""
    lowered = name.lower()
    if "loss" in lowered:
        return "loss"
    if any(word in lowered for word in _ACCURACY_LIKE):
        return "accuracy"
    return "other"


def series_label(name: str, attempt: int) -> str:
    """A series per metric and attempt (a retried job's later attempts restart or resume
    their steps: their own line). Mirrored in job.js."""
    return name if attempt <= 1 else f"{name} (attempt {attempt})"


def _point(value: float) -> float | None:
    return value if math.isfinite(value) else None


def job_charts(points: Iterable[MetricPoint]) -> dict[str, dict[str, Any]]:
    """The job page's three chart specs (NimbusCharts), each ``{x_label, y_label, series}``."""
    series: dict[str, dict[str, list[list[Any]]]] = {chart: {} for chart in CHARTS}
    for p in points:
        label = series_label(p.name, p.attempt_number)
        series[chart_of(p.name)].setdefault(label, []).append([p.step, _point(p.value)])
    return {
        chart: {
            "x_label": "step",
            "y_label": chart if chart != "other" else "value",
            "series": [{"label": label, "points": pts} for label, pts in found.items()],
        }
        for chart, found in series.items()
    }


def last_per_step(points: Iterable[MetricPoint]) -> dict[str, dict[int, float | None]]:
    """Per metric, its value at each step, a later attempt's replacing an earlier one's."""
    found: dict[str, dict[int, float | None]] = {}
    for p in sorted(points, key=lambda p: (p.attempt_number, p.id)):
        found.setdefault(p.name, {})[p.step] = _point(p.value)
    return found


def compare_charts(runs: Sequence[tuple[str, Sequence[MetricPoint]]]) -> list[dict[str, Any]]:
    """One chart per metric, one series per job (``runs``: (label, points) per job)."""
    per_job = [(label, last_per_step(points)) for label, points in runs]
    names: list[str] = []
    for _, metrics in per_job:
        names.extend(n for n in metrics if n not in names)
    names.sort(key=lambda n: (CHARTS.index(chart_of(n)), n))
    return [
        {
            "metric": name,
            "x_label": "step",
            "y_label": name,
            "series": [
                {"label": label, "points": [[s, v] for s, v in sorted(metrics[name].items())]}
                for label, metrics in per_job
                if name in metrics
            ],
        }
        for name in names
    ]


def evaluation_rows(evaluation: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """The evaluation's scalar figures, known ones first, then the calibration's ECE."""
    if not evaluation:
        return []
    rows = [(k, evaluation[k]) for k in EVALUATION_ORDER if k in evaluation]
    rows += sorted(
        (k, v)
        for k, v in evaluation.items()
        if k not in EVALUATION_ORDER and isinstance(v, int | float) and not isinstance(v, bool)
    )
    calibration = evaluation.get("calibration")
    if isinstance(calibration, Mapping) and "ece" in calibration:
        rows.append(("calibration error (ECE)", calibration["ece"]))
    return rows


@dataclass(frozen=True)
class HeatCell:
    count: int
    share: float  # of its row (the true class's examples)
    style: str


@dataclass(frozen=True)
class Confusion:
    classes: list[str]
    rows: list[tuple[str, list[HeatCell]]]


def confusion(evaluation: Mapping[str, Any] | None) -> Confusion | None:
    """The confusion matrix with each cell shaded by its share of the true class's
    examples (the diagonal is each class's recall), or None without one."""
    if not evaluation:
        return None
    matrix, classes = evaluation.get("confusion_matrix"), evaluation.get("classes")
    if not isinstance(matrix, list) or not isinstance(classes, list) or not matrix:
        return None
    rows = []
    for name, counts in zip(classes, matrix, strict=False):
        total = sum(counts) or 1
        cells = []
        for count in counts:
            share = count / total
            ink = "#fff" if share > 0.55 else "#111827"
            style = f"background-color: rgba(37, 99, 235, {share:.3f}); color: {ink}"
            cells.append(HeatCell(int(count), share, style))
        rows.append((str(name), cells))
    return Confusion([str(c) for c in classes], rows)


def per_class(evaluation: Mapping[str, Any] | None) -> list[tuple[str, Mapping[str, Any]]]:
    if not evaluation or not isinstance(evaluation.get("per_class"), Mapping):
        return []
    return [(str(k), v) for k, v in evaluation["per_class"].items() if isinstance(v, Mapping)]


@dataclass(frozen=True)
class SideRow:
    name: str
    values: list[Any]
    differs: bool


def _same(values: Sequence[Any]) -> bool:
    return all(v == values[0] for v in values[1:])


def side_rows(named: Sequence[Mapping[str, Any]]) -> list[SideRow]:
    """Rows of a side-by-side table: every key any column has, its value in each column
    (None where absent), and whether the columns differ."""
    keys: list[str] = []
    for values in named:
        keys.extend(k for k in values if k not in keys)
    rows = []
    for key in keys:
        found = [column.get(key) for column in named]
        rows.append(SideRow(key, found, not _same(found)))
    return rows


def metric_summary(job: wire.Job, points: Sequence[MetricPoint]) -> dict[str, Any]:
    """A job's figures for the comparison: its evaluation's, then each metric's last and
    best value (least for loss-like ones, greatest otherwise)."""
    summary: dict[str, Any] = {k: v for k, v in evaluation_rows(job.evaluation)}
    for name, steps in sorted(last_per_step(points).items()):
        values = [v for _, v in sorted(steps.items()) if v is not None]
        if not values:
            continue
        best = min(values) if chart_of(name) == "loss" else max(values)
        summary[f"{name} (last)"] = values[-1]
        summary[f"{name} (best)"] = best
    return summary


def param_summary(job: wire.Job) -> dict[str, Any]:
    """What a job was asked to do, flat: model, dataset, seed, resources, then its params."""
    dataset = f"{job.dataset.name}:{job.dataset.version}" if job.dataset else None
    found: dict[str, Any] = {"model": job.model, "dataset": dataset, "seed": job.seed}
    found |= {"cpus": job.resources.cpus, "gpus": job.resources.gpus}
    found |= {"workers": job.resources.workers}
    found |= {f"params.{k}": v for k, v in sorted(job.params.items())}
    return found


def finite_or_none(value: float) -> float | None:
    """A metric value JSON can carry (NaN and infinities become null)."""
    return _point(value)
