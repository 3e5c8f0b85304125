"""Job tables, follow output and parameter parsing, without a server."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from nimbus.cli import follow as follow_mod
from nimbus.cli.follow import EpochBars, JobCancelled, JobFailed, check_outcome, summary
from nimbus.cli.render import (
    compare_table,
    duration,
    evaluation_view,
    job_view,
    jobs_table,
    leaderboard_view,
    metric_rows,
    metrics_table,
)
from nimbus.cli.train import parse_params
from nimbus.errors import InvalidInput
from nimbus.wire.jobs import Job, MetricPoint, Progress

EVALUATION = {
    "accuracy": 0.9625,
    "support": 80,
    "precision_macro": 0.91,
    "recall_macro": 0.92,
    "f1_macro": 0.915,
    "precision_weighted": 0.95,
    "recall_weighted": 0.96,
    "f1_weighted": 0.955,
    "per_class": {
        "[cat]": {"precision": 1.0, "recall": 0.9, "f1": 0.947, "support": 40},
        "dog": {"precision": 0.9, "recall": 1.0, "f1": 0.947, "support": 40},
    },
    "classes": ["[cat]", "dog"],
    "confusion_matrix": [[36, 4], [0, 40]],
}


def make_job(**extra: Any) -> Job:
    return Job.model_validate(
        {
            "id": "job_1",
            "state": "succeeded",
            "model": "cnn",
            "dataset": {"name": "pets", "version": 2, "content_hash": "c" * 64},
            "params": {"epochs": 3, "lr": 0.001},
            "priority": 0,
            "max_retries": 2,
            "attempts": 2,
            "resources": {"cpus": 1.0, "gpus": 0, "memory": 1073741824, "workers": 1},
            "created_at": "2024-01-01T00:00:00Z",
            "started_at": "2024-01-01T00:00:01Z",
            "finished_at": "2024-01-01T00:01:06Z",
            "deadline_at": None,
            "exit_reason": "succeeded",
            "cancel_requested": False,
            "progress": None,
            "evaluation": EVALUATION,
            "artifacts": [{"name": "spec.json", "key": "k", "size": 900}],
            "seed": 0,
            **extra,
        }
    )


def render(renderable: object, width: int = 160) -> str:
    out = Console(file=io.StringIO(), width=width, color_system=None)
    out.print(renderable)
    assert isinstance(out.file, io.StringIO)
    return out.file.getvalue()


def rows_of(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}


def test_parse_params() -> None:
    assert parse_params(["epochs=3", " lr = 0.01", "hidden=64,32", "note=a=b"]) == {
        "epochs": "3",
        "lr": "0.01",
        "hidden": "64,32",
        "note": "a=b",
    }
    for bad, match in (
        (["epochs"], "KEY=VALUE"),
        (["=3"], "KEY=VALUE"),
        (["a=1", "a=2"], "given twice"),
    ):
        with pytest.raises(InvalidInput, match=match):
            parse_params(bad)


def test_durations() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert duration(start, datetime(2024, 1, 1, 0, 0, 2, 500000, tzinfo=UTC)) == "2.5s"
    assert duration(start, datetime(2024, 1, 1, 0, 1, 5, tzinfo=UTC)) == "1m 05s"
    assert duration(start, datetime(2024, 1, 1, 2, 3, tzinfo=UTC)) == "2h 03m"
    assert duration(start, None) == "-"


def test_job_view_shows_facts_params_and_the_evaluation() -> None:
    text = render(job_view(make_job()))
    for fact in (
        "job_1",
        "succeeded",
        "2024-01-01T00:00:01Z",  # times as the API writes them
        "pets:2",
        "cpus 1.0",
        "memory 1G",
        "epochs=3",
        "lr=0.001",
        "1m 05s",
        "spec.json (900 bytes)",
        "2 (retries allowed: 2)",
    ):
        assert fact in text, fact
    assert "no evaluation yet" in render(job_view(make_job(evaluation=None)))
    # Issue 15: what the requirements resolved to (the job's lock), once resolved.
    asked = {"requirements": ["tomli>=2"], "lock": ["tomli==2.0.1"]}
    text = render(job_view(make_job(environment=asked)))
    assert "tomli>=2" in text and "tomli==2.0.1" in text, text
    text = render(job_view(make_job(environment={"requirements": ["tomli>=2"]})))
    assert "not yet" in text, text


def test_evaluation_tables() -> None:
    text = render(evaluation_view(EVALUATION))
    assert "0.9625" in text and "F1 (macro)" in text and "0.9150" in text
    cat = [line.split()[1:] for line in text.splitlines() if line.split()[:1] == ["[cat]"]]
    dog = [line.split()[1:] for line in text.splitlines() if line.split()[:1] == ["dog"]]
    assert cat[0] == ["1.0000", "0.9000", "0.9470", "40"]  # per class (brackets not markup)
    assert cat[1] == ["36", "4"] and dog[1] == ["0", "40"]  # the confusion matrix
    many = [str(i) for i in range(30)]
    big = {"accuracy": 0.5, "classes": many, "confusion_matrix": [[0] * 30] * 30}
    assert "too many to draw" in render(evaluation_view(big))


def point(step: int, value: float, attempt: int) -> MetricPoint:
    return MetricPoint(step=step, value=value, attempt=attempt)


def test_metrics_keep_the_latest_attempt_of_each_epoch() -> None:
    metrics = {
        "train_loss": [point(1, 0.9, 1), point(2, 0.5, 1), point(2, 0.4, 2), point(3, 0.3, 2)],
        "val_accuracy": [point(1, 0.7, 1), point(3, 0.9, 2)],
        "test_accuracy": [point(3, 0.91, 2)],
    }
    names, rows = metric_rows(metrics)
    assert names == ["train_loss", "val_accuracy", "test_accuracy"]
    assert rows == {
        1: {"train_loss": 0.9, "val_accuracy": 0.7},
        2: {"train_loss": 0.4},
        3: {"train_loss": 0.3, "val_accuracy": 0.9, "test_accuracy": 0.91},
    }
    text = render(metrics_table(metrics))
    assert rows_of(text)["2"] == ["0.4000", "-", "-"]
    assert "no metrics yet" in render(metrics_table({}))


def test_list_and_compare_tables() -> None:
    other = make_job(
        id="job_2",
        model="code:sha256/" + "a" * 64,
        params={"epochs": 5},
        evaluation={**EVALUATION, "accuracy": 0.99},
        attempts=1,
    )
    listed = rows_of(render(jobs_table([make_job(), other])))
    assert listed["job_1"][:4] == ["succeeded", "cnn", "pets:2", "2"]
    assert listed["job_2"][-1] == "0.9900"
    compared = rows_of(render(compare_table([make_job(), other])))
    assert compared["accuracy"] == ["0.9625", "0.9900"]
    assert compared["epochs"] == ["3", "5"]
    assert compared["lr"] == ["0.001", "-"]


def test_outcomes() -> None:
    check_outcome(make_job())
    with pytest.raises(JobFailed, match="job_1 failed: deadline exceeded") as failed:
        check_outcome(make_job(state="failed", exit_reason="deadline exceeded"))
    assert failed.value.exit_code == 8
    with pytest.raises(JobCancelled) as cancelled:
        check_outcome(make_job(state="cancelled"))
    assert cancelled.value.exit_code == 9
    line = summary(make_job())
    assert line == "job job_1 succeeded in 1m 05s (2 attempts); test accuracy 0.9625"


def test_epoch_bars_draw_one_bar_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = io.StringIO()
    terminal = Console(file=sink, force_terminal=True, width=100)
    with EpochBars(terminal) as bars:
        bars.echo("")  # before any progress: plain output, no bar yet
        for epoch in (1, 2):
            for batch in (1, 2, 3):
                bars.update(Progress(epoch=epoch, epochs=2, batch=batch, batches=3))
        bars.echo("epoch 2 done\n")
    out = sink.getvalue()
    assert "epoch 1/2" in out and "epoch 2/2" in out and "3/3" in out
    assert "epoch 2 done" in out
    assert bar_less() == ""


def bar_less() -> str:
    """No console (pipes, --json): updates are ignored and nothing is drawn."""
    with EpochBars(None) as bars:
        bars.update(Progress(epoch=1, epochs=1, batch=1, batches=1))
    return "" if bars.progress is None else "drawn"


def test_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow_mod, "err_console", lambda: Console(file=io.StringIO()))
    assert follow_mod.bar_console(True) is None
    tty = Console(file=io.StringIO(), force_terminal=True)
    monkeypatch.setattr(follow_mod, "err_console", lambda: tty)
    assert follow_mod.bar_console(True) is tty
    assert follow_mod.bar_console(False) is None


def test_the_leaderboard_marks_the_model_when_it_is_not_the_top_score() -> None:
    row = {"family": "svm", "params": {}, "fit_seconds": 0.1}
    board = {
        "trials": 2,
        "metric": "accuracy",
        "leaderboard": [{**row, "trial": 1, "score": 0.97}, {**row, "trial": 2, "score": 0.96}],
        "best": {**row, "trial": 2, "score": 0.96},
        "chosen_by": "the lowest log loss among the trials within one standard error",
    }
    text = render(leaderboard_view(board))
    assert rows_of(text)["2*"][:1] == ["2"] and "1*" not in text
    assert "* the model: trial 2, the lowest log loss among" in text
