"""The job pages' decisions, without a browser: which chart a metric goes in, the charts'
series, the confusion matrix's shading, side-by-side differences, and where a resumed
event stream starts."""

from __future__ import annotations

import pytest

from nimbus.api.console import job_views as views
from nimbus.api.console.job_page import _position, poll_events
from nimbus.errors import InvalidInput
from nimbus.jobs.domain import JobState
from nimbus.services.job_watch import MetricPoint, WatchPoll


def point(id: int, name: str, step: int, value: float, attempt: int = 1) -> MetricPoint:
    return MetricPoint(id, attempt, step, name, value)


def test_metrics_go_to_the_loss_the_accuracy_or_the_other_chart() -> None:
    assert views.chart_of("val_loss") == "loss"
    assert views.chart_of("train_accuracy") == "accuracy"
    assert views.chart_of("f1_macro") == "accuracy"
    assert views.chart_of("best_epoch") == "other"
    charts = views.job_charts(
        [
            point(1, "train_loss", 1, 0.9),
            point(2, "val_accuracy", 1, 0.5),
            point(3, "train_loss", 2, float("nan")),
            point(4, "train_loss", 1, 0.8, attempt=2),
        ]
    )
    assert charts["loss"]["series"] == [
        {"label": "train_loss", "points": [[1, 0.9], [2, None]]},
        {"label": "train_loss (attempt 2)", "points": [[1, 0.8]]},
    ]
    assert charts["accuracy"]["series"] == [{"label": "val_accuracy", "points": [[1, 0.5]]}]
    assert charts["other"]["series"] == []


def test_compare_draws_one_series_per_job_and_a_later_attempt_wins() -> None:
    a = [point(1, "loss", 1, 0.9), point(2, "loss", 1, 0.7, attempt=2)]
    b = [point(3, "loss", 1, 0.5), point(4, "accuracy", 1, 0.8)]
    charts = views.compare_charts([("A", a), ("B", b)])
    assert [c["metric"] for c in charts] == ["loss", "accuracy"]
    assert charts[0]["series"] == [
        {"label": "A", "points": [[1, 0.7]]},
        {"label": "B", "points": [[1, 0.5]]},
    ]
    assert charts[1]["series"] == [{"label": "B", "points": [[1, 0.8]]}]


def test_the_confusion_matrix_is_shaded_by_the_share_of_each_true_class() -> None:
    matrix = views.confusion({"classes": ["a", "b"], "confusion_matrix": [[3, 1], [0, 0]]})
    assert matrix is not None and matrix.classes == ["a", "b"]
    (first, cells), (_, empty) = matrix.rows
    assert first == "a" and [c.share for c in cells] == [0.75, 0.25]
    assert "rgba(37, 99, 235, 0.750)" in cells[0].style and "#fff" in cells[0].style
    assert [c.share for c in empty] == [0.0, 0.0]  # a class never seen: no division by zero
    assert views.confusion({"accuracy": 1.0}) is None and views.confusion(None) is None


def test_side_rows_mark_what_differs() -> None:
    rows = views.side_rows([{"lr": 0.1, "epochs": 3}, {"lr": 0.1, "epochs": 5, "extra": 1}])
    assert [(r.name, r.values, r.differs) for r in rows] == [
        ("lr", [0.1, 0.1], False),
        ("epochs", [3, 5], True),
        ("extra", [None, 1], True),
    ]


def test_evaluation_rows_put_the_known_figures_first() -> None:
    rows = views.evaluation_rows(
        {"zeta": 2, "f1_macro": 0.5, "accuracy": 0.9, "calibration": {"ece": 0.1}, "x": "s"}
    )
    assert rows == [
        ("accuracy", 0.9),
        ("f1_macro", 0.5),
        ("zeta", 2),
        ("calibration error (ECE)", 0.1),
    ]


def test_a_resumed_stream_starts_after_what_the_browser_saw() -> None:
    assert _position(None, 3, 4) == (3, 4)
    assert _position("10-20", 3, 4) == (10, 20)
    for bad in ("x", "1-2-3", "-1-2", "1-" + "9" * 20):
        with pytest.raises(InvalidInput, match="Last-Event-ID"):
            _position(bad, 0, 0)


def test_a_poll_sends_state_changes_points_and_the_end() -> None:
    poll = WatchPoll(
        JobState.SUCCEEDED, "succeeded", None, [], [point(7, "loss", 2, float("inf"))], True
    )
    names = [name for name, _ in poll_events(poll, "running", None)]
    assert names == ["state", "metrics", "end"]
    assert poll_events(poll, "running", None)[1][1] == {"points": [[1, 2, "loss", None]]}
    quiet = WatchPoll(JobState.RUNNING, None, None, [], [], False)
    assert poll_events(quiet, "running", None) == []
