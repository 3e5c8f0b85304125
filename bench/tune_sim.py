"""Studies replayed in-process with Nimbus's own decision code and training code (for
bench/tune.py): what a study's trials would score and how many epochs they would train,
without a server.

Each decision is the service's (:mod:`nimbus.studies.search`), made on the records the
service keeps (:class:`TrialRecord`: searched params, state, the metric per epoch, the
sampler's and the pruner's system attributes), in the order
:class:`nimbus.services.studies.StudyService` makes them at parallelism 1: ask the next
trial's params from the settled records, run its job, after each epoch the job reports ask
the pruner about it (the service asks at each tick; here every epoch has a tick), and end
it complete with :func:`final_value` (the metric at the epoch the job kept) or pruned.

Each trial is trained by the job's own code: :func:`nimbus.runtime.trainer.train`, the
function a built-in job calls, on the splits that uploading the CSV makes
(:func:`nimbus.datasets.ingest.ingest`, the upload's defaults), with the params the study
would give the job (the fixed ones and the asked ones; no seed: a trial's job trains with
the job's default seed, as the service submits it).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from sklearn.datasets import load_breast_cancer, load_wine

import nimbus.studies.search as search
from nimbus.datasets.domain import IngestLimits, IngestOptions, Task
from nimbus.datasets.ingest import ingest
from nimbus.runtime.data import DataSplits
from nimbus.runtime.reporter import MemoryReporter
from nimbus.runtime.trainer import train
from nimbus.studies.search import (
    SearchConfig,
    TrialRecord,
    TrialState,
    curve,
    final_value,
    next_params,
    prune_decision,
)
from nimbus.studies.space import Space, parse_space

METRIC = "val_accuracy"
LOADERS = {"breast_cancer": load_breast_cancer, "wine": load_wine}


def space_words(epochs: int, *fixed: str) -> list[str]:
    """The space a user would type (``nimbus tune --param ...``), epochs fixed."""
    return [
        *fixed,
        "lr=loguniform(1e-4,1e-1)",
        "hidden=choice(64,128,256)",
        "dropout=uniform(0,0.5)",
        "batch_size=int(16,128,log)",
        f"epochs={epochs}",
    ]


def user_space(epochs: int, *fixed: str) -> Space:
    return parse_space(space_words(epochs, *fixed))


def write_csv(name: str, path: Path) -> Path:
    """scikit-learn's bundled set as the CSV a user would upload (class names as labels)."""
    bunch = LOADERS[name]()
    lines = [",".join([*(f"f{i}" for i in range(bunch.data.shape[1])), "label"])]
    for row, target in zip(bunch.data, bunch.target, strict=True):
        lines.append(",".join([*(f"{v:.6g}" for v in row), str(bunch.target_names[target])]))
    path.write_text("\n".join(lines) + "\n")
    return path


def job_splits(name: str, work: Path) -> DataSplits:
    """The splits a job trains on after ``nimbus datasets upload NAME file.csv --task
    tabular-classification`` (the upload's default seed and fractions)."""
    source = write_csv(name, work / f"{name}.csv")
    prepared = ingest(
        source, source.name, IngestOptions(task=Task.TABULAR), IngestLimits(), work / name
    )
    return DataSplits.load(
        work / name, prepared.task, prepared.classes, prepared.schema.get("features")
    )


@dataclass(frozen=True)
class TrialRun:
    record: TrialRecord
    epochs: int  # epochs actually trained (reported) before it completed or was pruned
    test_accuracy: float | None  # its job's score on the test split (complete trials)


@dataclass(frozen=True)
class StudyRun:
    config: SearchConfig
    trials: list[TrialRun]

    @property
    def best(self) -> TrialRun | None:
        found = search.best(self.config.direction, [t.record for t in self.trials])
        return None if found is None else self.trials[found.number]

    @property
    def best_value(self) -> float:
        best = self.best
        return float("nan") if best is None or best.record.value is None else best.record.value

    @property
    def epochs(self) -> int:
        return sum(t.epochs for t in self.trials)

    def count(self, state: TrialState) -> int:
        return sum(1 for t in self.trials if t.record.state is state)

    def mean_value(self) -> float:
        """The mean value of the complete trials (how much of the budget went to good ones)."""
        values = [t.record.value for t in self.trials if t.record.value is not None]
        return statistics.mean(values) if values else float("nan")


class _Pruned(Exception):
    """The pruner gave the trial up: its job is cancelled (here, its training stops)."""


class TrialReporter(MemoryReporter):
    """What a trial's job reports, with a decision after each epoch's metric. Checkpoints
    are not kept: nothing here resumes, and encoding them would only cost time."""

    def __init__(self, metric: str, on_epoch: Callable[[int, dict[str, float]], None]) -> None:
        super().__init__()
        self.metric, self.on_epoch = metric, on_epoch

    def log(self, step: int, **metrics: float) -> None:
        super().log(step, **metrics)
        if self.metric in metrics and "train_loss" in metrics:  # an epoch's record
            self.on_epoch(step, metrics)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.saves += 1


def run_study(
    data: DataSplits,
    config: SearchConfig,
    trials: int,
    metric: str = METRIC,
    *,
    decide_every: int = 1,
    tiebreak: bool = True,
) -> StudyRun:
    """One study of ``trials`` trials, one at a time, decided as the service decides, on
    the job's ``metric`` (an epoch metric: val_accuracy, val_loss, ...). The pruner is asked
    after every ``decide_every`` epochs: 1, a study tick shorter than an epoch; more, a tick
    that sees several new epochs at once (the service asks once per tick, at the last).
    ``tiebreak``: the records carry the job's other metric (:func:`search.tie_breaker`), as
    the service's do; without, the pruner judges the plain metric (the service before)."""
    other = search.tie_breaker(metric) if tiebreak else None
    records: list[TrialRecord] = []
    runs: list[TrialRun] = []
    for number in range(trials):
        asked = next_params(config, records)
        searched = {k: v for k, v in asked.params.items() if k in config.space.searched}
        records.append(
            TrialRecord(number, searched, TrialState.RUNNING, system_attrs=asked.system_attrs)
        )
        points: list[tuple[int, int, float]] = []
        seconds: list[tuple[int, int, float]] = []

        def on_epoch(
            step: int,
            metrics: dict[str, float],
            number: int = number,
            points: list[Any] = points,
            seconds: list[Any] = seconds,
        ) -> None:
            points.append((1, step, metrics[metric]))  # (attempt, step, value), as stored
            if other is not None and other[0] in metrics:
                seconds.append((1, step, other[1] * metrics[other[0]]))
            records[number] = replace(
                records[number], intermediate=curve(points), tiebreak=curve(seconds)
            )
            if step % decide_every:
                return
            decision = prune_decision(config, records, number)
            records[number] = replace(records[number], system_attrs=decision.system_attrs)
            if decision.prune:
                raise _Pruned

        reporter = TrialReporter(metric, on_epoch)
        test_accuracy = None
        try:
            result = train("mlp", data, dict(asked.params), reporter)
        except _Pruned:
            records[number] = replace(records[number], state=TrialState.PRUNED)
        else:
            kept = reporter.series("best_epoch")
            value = final_value(curve(points), int(kept[-1]) if kept else None)
            state = TrialState.COMPLETE if value is not None else TrialState.FAILED
            records[number] = replace(records[number], state=state, value=value)
            test_accuracy = result.metrics.get("test_accuracy")
        runs.append(TrialRun(records[number], len(points), test_accuracy))
    return StudyRun(config, runs)


@contextmanager
def asha_settings(**settings: Any) -> Iterator[None]:
    """The service's decisions with other ASHA settings than its own (a what-if, for the
    report: the service builds ``SuccessiveHalvingPruner()`` with Optuna's defaults)."""
    own = search._pruner

    def pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
        if config.pruner == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(**settings)
        return own(config)

    search._pruner = pruner
    try:
        yield
    finally:
        search._pruner = own


@contextmanager
def tpe_settings(**settings: Any) -> Iterator[None]:
    """The service's decisions with other TPE settings than its own (a what-if, for the
    report: :func:`search.tpe_options` with ``settings`` over its own)."""
    own = search.tpe_options

    def options(config: SearchConfig) -> dict[str, Any]:
        return {**own(config), **settings}

    search.tpe_options = options
    try:
        yield
    finally:
        search.tpe_options = own


def seed_overlap(space: Space, seed: int, trials: int) -> int:
    """How many of a random study's trials with seed ``seed + 1`` ask for exactly the
    params of trial ``n + 1`` of the study with seed ``seed`` (no training: the values fed
    back are the trial numbers)."""

    def asked(seed: int) -> list[dict[str, Any]]:
        config = SearchConfig(space, sampler="random", pruner="none", seed=seed)
        records: list[TrialRecord] = []
        for number in range(trials):
            params = next_params(config, records).params
            records.append(TrialRecord(number, params, TrialState.COMPLETE, value=float(number)))
        return [dict(r.params) for r in records]

    first, second = asked(seed), asked(seed + 1)
    return sum(1 for n in range(trials - 1) if second[n] == first[n + 1])
